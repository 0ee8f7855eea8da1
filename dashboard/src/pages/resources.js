// Tenants, groups and models: list, create, edit, disable, delete, with
// the validation messages the admin API gives.
import { useEffect, useState } from "preact/hooks";
import { html } from "htm/preact";
import { api } from "../api.js";
import { ResourceForm } from "../form.js";
import { Budget } from "./budget.js";

const TENANT_FIELDS = [
  { name: "name", label: "Name", required: true },
  { name: "group", label: "Group", initial: "default" },
  { name: "weight", label: "Weight", type: "number", initial: 100 },
  { name: "tokens_per_minute", label: "Tokens per minute (0: none)", type: "number", initial: 0 },
  { name: "max_in_flight", label: "Max in flight", type: "number", nullable: true },
  { name: "budget_tokens", label: "Token budget", type: "number", nullable: true },
  { name: "budget_usd", label: "Budget (USD)", type: "number", nullable: true },
  { name: "budget_period", label: "Budget period", options: ["lifetime", "monthly"] },
  { name: "status", label: "Status", options: ["active", "suspended"] },
  { name: "allowed_models", label: "Allowed models (comma separated; empty: all)", type: "list" },
  { name: "allowed_mcp_servers", label: "MCP servers (comma separated, server or server/tool; empty: none)", type: "list" },
];

const GROUP_FIELDS = [
  { name: "name", label: "Name", required: true, create_only: true },
  { name: "weight", label: "Weight", type: "number", initial: 100 },
];

const MODEL_FIELDS = [
  { name: "name", label: "Name", required: true, create_only: true },
  { name: "upstream_model", label: "Upstream model (default: the name)" },
  { name: "pool", label: "Pool", nullable: true },
  { name: "base_url", label: "Base URL (hosted API)", nullable: true },
  { name: "upstream_key", label: "Upstream API key (write-only)", secret: true },
  { name: "input_cost_per_token", label: "Input cost per token (USD)", type: "number" },
  { name: "output_cost_per_token", label: "Output cost per token (USD)", type: "number" },
  { name: "max_in_flight", label: "Max in flight", type: "number" },
  { name: "admission_weight", label: "Admission weight", type: "number" },
  { name: "aliases", label: "Aliases (comma separated)", type: "list" },
  { name: "enabled", label: "Enabled", type: "bool", initial: true },
];

/** A page of one resource: its table, a create form, and per-row actions. */
function ResourcePage({ kind, path, keyOf, fields, columns, update, disable, extra }) {
  const [items, setItems] = useState(null);
  const [editing, setEditing] = useState(null);
  const [error, setError] = useState("");
  const load = () => api.get(path).then(setItems).catch((e) => setError(e.message));
  useEffect(() => {
    load();
  }, []);
  const act = (fn) => async () => {
    setError("");
    try {
      await fn();
      await load();
    } catch (e) {
      setError(e.message);
    }
  };
  return html`<section>
    ${error && html`<p class="error" role="alert">${error}</p>`}
    <table>
      <thead><tr>${columns.map((c) => html`<th scope="col">${c[1]}</th>`)}<th scope="col">Actions</th></tr></thead>
      <tbody>
        ${(items || []).map(
          (item) => html`<tr data-row=${keyOf(item)}>
            ${columns.map((c) => html`<td>${cell(item[c[0]])}</td>`)}
            <td class="actions">
              <button type="button" onClick=${() => setEditing(editing === keyOf(item) ? null : keyOf(item))}>Edit</button>
              ${disable && html`<button type="button" onClick=${act(() => disable(item))}>${disable.label(item)}</button>`}
              <button
                type="button"
                class="danger"
                onClick=${act(async () => {
                  if (confirm(`Delete ${kind} ${keyOf(item)}?`)) await api.del(`${path}/${encodeURIComponent(keyOf(item))}`);
                })}
              >
                Delete
              </button>
            </td>
          </tr>
          ${editing === keyOf(item) &&
          html`<tr class="editing"><td colspan=${columns.length + 1}>
            <${ResourceForm}
              id=${`edit-${kind}`}
              fields=${fields}
              item=${item}
              submitLabel=${`Save ${kind}`}
              onSubmit=${(body) => update(item, body)}
              onDone=${() => {
                setEditing(null);
                load();
              }}
            />
            ${extra && extra(item)}
          </td></tr>`}`,
        )}
      </tbody>
    </table>
    <h2>New ${kind}</h2>
    <${ResourceForm} id=${`new-${kind}`} fields=${fields} submitLabel=${`Create ${kind}`} onSubmit=${(b) => api.post(path, b)} onDone=${load} />
  </section>`;
}

function cell(v) {
  if (v === null || v === undefined) return "–";
  if (Array.isArray(v)) return v.length ? v.join(", ") : "–";
  if (typeof v === "boolean") return v ? "yes" : "no";
  return String(v);
}

export const Tenants = () => html`<${ResourcePage}
  kind="tenant"
  path="/tenants"
  keyOf=${(t) => t.id}
  fields=${TENANT_FIELDS}
  columns=${[["name", "Name"], ["group", "Group"], ["weight", "Weight"], ["tokens_per_minute", "Tokens/min"], ["budget_tokens", "Token budget"], ["budget_usd", "USD budget"], ["status", "Status"], ["allowed_models", "Models"]]}
  update=${(t, body) => api.patch(`/tenants/${t.id}`, body)}
  disable=${Object.assign((t) => api.patch(`/tenants/${t.id}`, { status: t.status === "active" ? "suspended" : "active" }), {
    label: (t) => (t.status === "active" ? "Suspend" : "Activate"),
  })}
  extra=${(t) => html`<${Budget} path=${`/tenants/${t.id}/budget`} />`}
/>`;

export const Groups = () => html`<${ResourcePage}
  kind="group"
  path="/groups"
  keyOf=${(g) => g.name}
  fields=${GROUP_FIELDS}
  columns=${[["name", "Name"], ["weight", "Weight"]]}
  update=${(g, body) => api.put(`/groups/${encodeURIComponent(g.name)}`, { weight: body.weight })}
/>`;

export const Models = () => html`<${ResourcePage}
  kind="model"
  path="/models"
  keyOf=${(m) => m.name}
  fields=${MODEL_FIELDS}
  columns=${[["name", "Name"], ["upstream_model", "Upstream model"], ["pool", "Pool"], ["aliases", "Aliases"], ["input_cost_per_token", "In $/token"], ["output_cost_per_token", "Out $/token"], ["max_in_flight", "Max in flight"], ["upstream_key_set", "Key set"], ["enabled", "Enabled"]]}
  update=${(m, body) => {
    if (body.upstream_key === undefined || body.upstream_key === null) delete body.upstream_key;
    return api.patch(`/models/${encodeURIComponent(m.name)}`, body);
  }}
  disable=${Object.assign((m) => api.patch(`/models/${encodeURIComponent(m.name)}`, { enabled: !m.enabled }), {
    label: (m) => (m.enabled ? "Disable" : "Enable"),
  })}
/>`;
