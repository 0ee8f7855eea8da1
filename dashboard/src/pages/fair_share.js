// Fair share per model pool, and the global ceiling, changeable live.
import { useEffect, useState } from "preact/hooks";
import { html } from "htm/preact";
import { api } from "../api.js";
import { fmt } from "../charts.js";

export function FairShare() {
  const [share, setShare] = useState(null);
  const [message, setMessage] = useState("");
  const [error, setError] = useState("");
  const load = () => api.get("/fairshare").then(setShare).catch((e) => setError(e.message));
  useEffect(() => {
    load();
    const t = setInterval(load, 3000);
    return () => clearInterval(t);
  }, []);
  const change = async (e) => {
    e.preventDefault();
    const value = Number(new FormData(e.target).get("max_in_flight"));
    setError("");
    try {
      const c = await api.put("/capacity", { max_in_flight: value });
      setMessage(`Global ceiling is now ${c.global_max_in_flight}.`);
      load();
    } catch (err) {
      setError(err.message);
    }
  };
  if (!share) return html`<p>${error || "Loading…"}</p>`;
  return html`<section>
    <form class="inline" onSubmit=${change}>
      <label for="max_in_flight">Global ceiling (in flight)</label>
      <input id="max_in_flight" name="max_in_flight" type="number" min="1" required defaultValue=${share.global} />
      <button type="submit">Change</button>
    </form>
    ${message && html`<p class="ok" role="status">${message}</p>`}
    ${error && html`<p class="error" role="alert">${error}</p>`}
    <p>In flight <b>${share.in_flight}</b> of <b data-figure="global">${share.global}</b>, queued <b>${share.queued}</b></p>
    ${share.pools.map(
      (p) => html`<article>
        <h2>${p.pool} <small>size ${p.size}, in flight ${p.in_flight}, queued ${p.queued}</small></h2>
        <table>
          <thead><tr><th scope="col">Group</th><th scope="col">Tenant</th><th scope="col">Weight</th><th scope="col">Share</th><th scope="col">In flight</th><th scope="col">Queued</th><th scope="col">Tokens served</th></tr></thead>
          <tbody>
            ${(p.groups || []).map(
              (g) => html`<tr class="group"><td>${g.name}</td><td></td><td>${g.weight}</td><td>${fmt(g.share, 3)}</td><td>${g.in_flight}</td><td>${g.queued}</td><td>${fmt(g.service_tokens, 0)}</td></tr>`,
            )}
            ${(p.tenants || []).map(
              (t) => {
                const [group, tenant] = t.name.split("/");
                return html`<tr><td>${group}</td><td>${tenant}</td><td>${t.weight}</td><td>${fmt(t.share, 3)}</td><td>${t.in_flight}</td><td>${t.queued}</td><td>${fmt(t.service_tokens, 0)}</td></tr>`;
              },
            )}
          </tbody>
        </table>
      </article>`,
    )}
  </section>`;
}
