// API keys of a tenant: create and rotate (the secret is shown once),
// disable, delete, and each key's budget with a reset.
import { useEffect, useState } from "preact/hooks";
import { html } from "htm/preact";
import { api } from "../api.js";
import { ResourceForm } from "../form.js";
import { Budget } from "./budget.js";

const KEY_FIELDS = [
  { name: "name", label: "Name", required: true },
  { name: "weight", label: "Weight", type: "number", initial: 100 },
  { name: "tokens_per_minute", label: "Tokens per minute", type: "number", nullable: true },
  { name: "max_in_flight", label: "Max in flight", type: "number", nullable: true },
  { name: "budget_tokens", label: "Token budget", type: "number", nullable: true },
  { name: "budget_usd", label: "Budget (USD)", type: "number", nullable: true },
  { name: "expires_at", label: "Expires at (RFC 3339)", nullable: true },
];

export function Keys() {
  const [tenants, setTenants] = useState([]);
  const [tenant, setTenant] = useState("");
  const [keys, setKeys] = useState([]);
  const [secret, setSecret] = useState(null);
  const [open, setOpen] = useState(null);
  const [error, setError] = useState("");
  useEffect(() => {
    api
      .get("/tenants")
      .then((t) => {
        setTenants(t);
        if (t.length) setTenant(t[0].id);
      })
      .catch((e) => setError(e.message));
  }, []);
  const load = () => tenant && api.get(`/tenants/${tenant}/keys`).then(setKeys).catch((e) => setError(e.message));
  useEffect(() => {
    load();
  }, [tenant]);
  const act = (fn) => async () => {
    setError("");
    try {
      const r = await fn();
      if (r && r.secret) setSecret(r.secret);
      load();
    } catch (e) {
      setError(e.message);
    }
  };
  return html`<section>
    <label for="key-tenant">Tenant</label>
    <select id="key-tenant" value=${tenant} onChange=${(e) => setTenant(e.target.value)}>
      ${tenants.map((t) => html`<option value=${t.id}>${t.name}</option>`)}
    </select>
    ${secret &&
    html`<div class="secret" role="status">
      <p>The key's secret, shown this once; store it now:</p>
      <code data-secret>${secret}</code>
      <button type="button" onClick=${() => navigator.clipboard && navigator.clipboard.writeText(secret)}>Copy</button>
      <button type="button" onClick=${() => setSecret(null)}>Done</button>
    </div>`}
    ${error && html`<p class="error" role="alert">${error}</p>`}
    <table>
      <thead><tr><th scope="col">Name</th><th scope="col">Prefix</th><th scope="col">Weight</th><th scope="col">Tokens/min</th><th scope="col">Token budget</th><th scope="col">Expires</th><th scope="col">Disabled</th><th scope="col">Actions</th></tr></thead>
      <tbody>
        ${keys.map(
          (k) => html`<tr data-row=${k.id}>
              <td>${k.name}</td><td><code>${k.prefix}</code></td><td>${k.weight}</td><td>${k.tokens_per_minute ?? "–"}</td>
              <td>${k.budget_tokens ?? "–"}</td><td>${k.expires_at ?? "–"}</td><td>${k.disabled ? "yes" : "no"}</td>
              <td class="actions">
                <button type="button" onClick=${() => setOpen(open === k.id ? null : k.id)}>Edit</button>
                <button type="button" onClick=${act(() => api.post(`/keys/${k.id}/rotate`))}>Rotate</button>
                <button type="button" onClick=${act(() => api.patch(`/keys/${k.id}`, { disabled: !k.disabled }))}>${k.disabled ? "Enable" : "Disable"}</button>
                <button type="button" class="danger" onClick=${act(() => confirm(`Delete key ${k.name}?`) && api.del(`/keys/${k.id}`))}>Delete</button>
              </td>
            </tr>
            ${open === k.id &&
            html`<tr class="editing"><td colspan="8">
              <${ResourceForm} id="edit-key" fields=${KEY_FIELDS} item=${k} submitLabel="Save key" onSubmit=${(b) => api.patch(`/keys/${k.id}`, b)} onDone=${() => { setOpen(null); load(); }} />
              <${Budget} path=${`/keys/${k.id}/budget`} />
            </td></tr>`}`,
        )}
      </tbody>
    </table>
    <h2>New key</h2>
    ${tenant &&
    html`<${ResourceForm}
      id="new-key"
      fields=${KEY_FIELDS}
      submitLabel="Create key"
      onSubmit=${(b) => api.post(`/tenants/${tenant}/keys`, b)}
      onDone=${(r) => {
        if (r && r.secret) setSecret(r.secret);
        load();
      }}
    />`}
  </section>`;
}
