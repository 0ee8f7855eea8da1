// The audit log, filtered by entity and paged back in time.
import { useEffect, useState } from "preact/hooks";
import { html } from "htm/preact";
import { api } from "../api.js";

const TYPES = ["", "group", "tenant", "key", "model", "mcp_server", "capacity", "server"];
const PAGE = 25;

export function Audit() {
  const [filter, setFilter] = useState({ entity_type: "", entity_id: "" });
  const [pages, setPages] = useState([undefined]);
  const [entries, setEntries] = useState([]);
  const [error, setError] = useState("");
  const before = pages[pages.length - 1];
  useEffect(() => {
    const q = new URLSearchParams({ limit: String(PAGE) });
    if (filter.entity_type) q.set("entity_type", filter.entity_type);
    if (filter.entity_id) q.set("entity_id", filter.entity_id);
    if (before !== undefined) q.set("before", String(before));
    api.get(`/audit?${q}`).then(setEntries).catch((e) => setError(e.message));
  }, [filter, before]);
  const submit = (e) => {
    e.preventDefault();
    setPages([undefined]);
    setFilter(Object.fromEntries(new FormData(e.target)));
  };
  return html`<section>
    <form class="inline" onSubmit=${submit}>
      <label for="a-type">Entity</label>
      <select id="a-type" name="entity_type">${TYPES.map((t) => html`<option value=${t}>${t || "all"}</option>`)}</select>
      <label for="a-id">Id</label><input id="a-id" name="entity_id" />
      <button type="submit">Filter</button>
    </form>
    ${error && html`<p class="error" role="alert">${error}</p>`}
    <table class="audit">
      <thead><tr><th scope="col">When</th><th scope="col">Actor</th><th scope="col">Action</th><th scope="col">Entity</th><th scope="col">Detail</th></tr></thead>
      <tbody>
        ${entries.map(
          (a) => html`<tr><td>${a.at}</td><td>${a.actor}</td><td>${a.action}</td><td>${a.entity_type} ${a.entity_id}</td><td><code>${JSON.stringify(a.detail)}</code></td></tr>`,
        )}
      </tbody>
    </table>
    <div class="pager">
      <button type="button" disabled=${pages.length < 2} onClick=${() => setPages(pages.slice(0, -1))}>Newer</button>
      <button type="button" disabled=${entries.length < PAGE} onClick=${() => setPages([...pages, entries[entries.length - 1].id])}>Older</button>
    </div>
  </section>`;
}
