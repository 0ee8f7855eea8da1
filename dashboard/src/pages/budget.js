// A tenant's or key's budget standing, with a reset.
import { useEffect, useState } from "preact/hooks";
import { html } from "htm/preact";
import { api } from "../api.js";

export function Budget({ path }) {
  const [view, setView] = useState(null);
  const [error, setError] = useState("");
  const load = () => api.get(path).then(setView).catch((e) => setError(e.message));
  useEffect(() => {
    load();
  }, [path]);
  const reset = async () => {
    if (!confirm("Reset this budget's spend to zero?")) return;
    try {
      await api.post(`${path}/reset`);
      load();
    } catch (e) {
      setError(e.message);
    }
  };
  return html`<div class="budget">
    <h3>Budget</h3>
    ${error && html`<p class="error" role="alert">${error}</p>`}
    ${view && html`<pre>${JSON.stringify({ limits: view.limits, standing: view.standing }, null, 2)}</pre>`}
    <button type="button" onClick=${reset}>Reset budget</button>
  </div>`;
}
