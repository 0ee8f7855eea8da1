// Tokens and cost per tenant, key or model over a range (from ClickHouse),
// and a tenant's recent requests.
import { useEffect, useState } from "preact/hooks";
import { html } from "htm/preact";
import { api } from "../api.js";
import { Bars, fmt } from "../charts.js";

const day = (offset) => new Date(Date.now() + offset * 86400000).toISOString().slice(0, 10);

export function Usage() {
  const [query, setQuery] = useState({ from: day(-7), to: day(1), group_by: "tenant" });
  const [usage, setUsage] = useState(null);
  const [error, setError] = useState("");
  const [tenants, setTenants] = useState([]);
  const [log, setLog] = useState(null);
  useEffect(() => {
    api.get("/tenants").then(setTenants).catch(() => {});
  }, []);
  useEffect(() => {
    setError("");
    const q = new URLSearchParams({ ...query, from: `${query.from}T00:00:00Z`, to: `${query.to}T00:00:00Z` }).toString();
    api.get(`/usage?${q}`).then(setUsage).catch((e) => {
      setUsage(null);
      setError(e.message);
    });
  }, [query]);
  const submit = (e) => {
    e.preventDefault();
    setQuery(Object.fromEntries(new FormData(e.target)));
  };
  const rows = usage ? usage.rows : [];
  // Rows name tenants by id; show their names.
  const tenantNames = Object.fromEntries(tenants.map((t) => [t.id, t.name]));
  const name = (r) => (usage && usage.group_by === "tenant" && tenantNames[r.name]) || r.name;
  return html`<section>
    <form class="inline" onSubmit=${submit}>
      <label for="u-from">From</label><input id="u-from" name="from" type="date" defaultValue=${query.from} />
      <label for="u-to">To</label><input id="u-to" name="to" type="date" defaultValue=${query.to} />
      <label for="u-by">Per</label>
      <select id="u-by" name="group_by">${["tenant", "key", "model"].map((g) => html`<option defaultSelected=${query.group_by === g}>${g}</option>`)}</select>
      <button type="submit">Show</button>
    </form>
    ${error && html`<p class="notice" role="status">${error}</p>`}
    ${usage &&
    html`<h2>Tokens</h2>
      <${Bars} rows=${rows} label=${name} value=${(r) => (r.input_tokens || 0) + (r.output_tokens || 0)} />
      <h2>Cost (USD)</h2>
      <${Bars} rows=${rows} label=${name} value=${(r) => r.cost_usd || 0} />
      <table>
        <thead><tr><th scope="col">${query.group_by}</th><th scope="col">Requests</th><th scope="col">Input tokens</th><th scope="col">Output tokens</th><th scope="col">Cost (USD)</th></tr></thead>
        <tbody>${rows.map((r) => html`<tr><td>${name(r)}</td><td>${fmt(r.requests, 0)}</td><td>${fmt(r.input_tokens, 0)}</td><td>${fmt(r.output_tokens, 0)}</td><td>${fmt(r.cost_usd, 6)}</td></tr>`)}</tbody>
      </table>`}
    <h2>Recent requests of a tenant</h2>
    <form
      class="inline"
      onSubmit=${(e) => {
        e.preventDefault();
        const t = new FormData(e.target).get("tenant");
        api.get(`/usage/requests?tenant=${encodeURIComponent(t)}&limit=50`).then(setLog).catch((err) => setLog({ error: err.message }));
      }}
    >
      <label for="u-tenant">Tenant</label>
      <select id="u-tenant" name="tenant">${tenants.map((t) => html`<option value=${t.id}>${t.name}</option>`)}</select>
      <button type="submit">Show requests</button>
    </form>
    ${log && log.error && html`<p class="notice" role="status">${log.error}</p>`}
    ${log &&
    !log.error &&
    html`<table>
      <thead><tr><th scope="col">Time</th><th scope="col">Request</th><th scope="col">Key</th><th scope="col">Model</th><th scope="col">Admission</th><th scope="col">Queue (ms)</th><th scope="col">First byte (ms)</th><th scope="col">Total (ms)</th><th scope="col">Status</th><th scope="col">Tokens in/out</th><th scope="col">Cost (USD)</th></tr></thead>
      <tbody>
        ${log.map(
          (r) => html`<tr><td>${new Date(r.time_ms).toISOString()}</td><td><code>${r.request_id}</code></td><td>${r.key}</td><td>${r.model}</td><td>${r.admission}</td><td>${r.queue_wait_ms}</td><td>${r.ttfb_ms}</td><td>${r.total_ms}</td><td>${r.status}</td><td>${r.input_tokens} / ${r.output_tokens}</td><td>${fmt(r.cost_usd, 6)}</td></tr>`,
        )}
      </tbody>
    </table>`}
  </section>`;
}
