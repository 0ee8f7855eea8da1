// A form built from field descriptions, turning inputs into the JSON the
// admin API takes; the API's own validation message is shown as it comes.
// Inputs are uncontrolled (defaultValue): a page refreshing its data never
// wipes what the operator is typing.
import { useState } from "preact/hooks";
import { html } from "htm/preact";

/** The JSON value of a field's input; undefined leaves the field out. */
function valueOf(field, form) {
  const raw = form.get(field.name);
  if (field.type === "bool") return form.get(field.name) === "on";
  if (raw === null || raw === "") return field.nullable ? null : undefined;
  if (field.type === "number") return Number(raw);
  if (field.type === "list") return String(raw).split(",").map((s) => s.trim()).filter(Boolean);
  return String(raw);
}

/** What `item` shows in a field's input. */
function shown(field, item) {
  const v = item ? item[field.name] : field.initial;
  if (v === null || v === undefined) return "";
  return Array.isArray(v) ? v.join(", ") : String(v);
}

export function ResourceForm({ fields, item, submitLabel, onSubmit, onDone, id }) {
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e) => {
    e.preventDefault();
    const form = new FormData(e.target);
    const body = {};
    for (const f of fields) {
      if (item && f.create_only) continue;
      const v = valueOf(f, form);
      if (v !== undefined) body[f.name] = v;
    }
    setBusy(true);
    setError(null);
    try {
      const result = await onSubmit(body);
      if (!item) e.target.reset();
      onDone && onDone(result);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return html`<form class="resource" onSubmit=${submit} aria-label=${submitLabel}>
    ${fields
      .filter((f) => !(item && f.create_only))
      .map((f) => {
        const fid = `${id}-${f.name}`;
        const invalid = error && error.field === f.name;
        if (f.type === "bool")
          return html`<label class="check" for=${fid}
            ><input id=${fid} name=${f.name} type="checkbox" defaultChecked=${item ? !!item[f.name] : !!f.initial} /> ${f.label}</label
          >`;
        if (f.options)
          return html`<label for=${fid}>${f.label}</label
            ><select id=${fid} name=${f.name} aria-invalid=${invalid}>
              ${f.options.map((o) => html`<option defaultSelected=${shown(f, item) === o}>${o}</option>`)}
            </select>`;
        return html`<label for=${fid}>${f.label}</label
          ><input
            id=${fid}
            name=${f.name}
            type=${f.type === "number" ? "number" : f.secret ? "password" : "text"}
            step=${f.type === "number" ? "any" : undefined}
            placeholder=${f.placeholder || ""}
            required=${!!f.required && !item}
            defaultValue=${f.secret ? "" : shown(f, item)}
            aria-invalid=${invalid}
          />`;
      })}
    ${error && html`<p class="error" role="alert">${error.field ? `${error.field}: ` : ""}${error.message}</p>`}
    <button type="submit" disabled=${busy}>${submitLabel}</button>
  </form>`;
}
