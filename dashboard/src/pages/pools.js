// Pools and their servers: health, state, weight, and drain/maint/ready.
import { useEffect, useState } from "preact/hooks";
import { html } from "htm/preact";
import { api } from "../api.js";

export function Pools() {
  const [pools, setPools] = useState([]);
  const [error, setError] = useState("");
  const load = () => api.get("/pools").then(setPools).catch((e) => setError(e.message));
  useEffect(() => {
    load();
    const t = setInterval(load, 3000);
    return () => clearInterval(t);
  }, []);
  const set = (pool, server, state) => async () => {
    setError("");
    try {
      await api.put(`/pools/${encodeURIComponent(pool)}/servers/${encodeURIComponent(server)}`, { state });
      load();
    } catch (e) {
      setError(e.message);
    }
  };
  return html`<section>
    ${error && html`<p class="error" role="alert">${error}</p>`}
    ${pools.map(
      (p) => html`<article>
        <h2>${p.name} <small>${typeof p.algorithm === "string" ? p.algorithm : JSON.stringify(p.algorithm)}</small></h2>
        <table>
          <thead><tr><th scope="col">Server</th><th scope="col">Address</th><th scope="col">Health</th><th scope="col">State</th><th scope="col">Weight</th><th scope="col">In flight</th><th scope="col">Actions</th></tr></thead>
          <tbody>
            ${p.servers.map(
              (s) => html`<tr>
                <td>${s.name}</td><td>${s.address}</td>
                <td class=${s.in_rotation ? "good" : "bad"}>${typeof s.health === "string" ? s.health : JSON.stringify(s.health)}</td>
                <td>${s.state}</td><td>${s.weight}</td><td>${s.in_flight}</td>
                <td class="actions">${["ready", "drain", "maint"].map(
                  (st) => html`<button type="button" disabled=${s.state === st} onClick=${set(p.name, s.name, st)}>${st}</button>`,
                )}</td>
              </tr>`,
            )}
          </tbody>
        </table>
      </article>`,
    )}
  </section>`;
}
