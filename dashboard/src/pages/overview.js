// The gateway live: rates and latency from two successive scrapes of the
// metrics, charted over the last minutes.
import { useEffect, useRef, useState } from "preact/hooks";
import { html } from "htm/preact";
import { api, metricsText } from "../api.js";
import { parse, sum, by, quantile } from "../metrics.js";
import { Spark, fmt } from "../charts.js";

const EVERY_MS = 2000;
const KEEP = 90;
const ADMISSIONS = ["fast", "queued", "brownout", "rejected"];

export function Overview() {
  const [series, setSeries] = useState([]);
  const [latest, setLatest] = useState(null);
  const [capacity, setCapacity] = useState(null);
  const [error, setError] = useState("");
  const previous = useRef(null);
  useEffect(() => {
    let stop = false;
    const tick = async () => {
      try {
        const samples = parse(await metricsText());
        const at = Date.now();
        const before = previous.current;
        previous.current = { samples, at };
        api.get("/capacity").then(setCapacity).catch(() => setCapacity(null));
        setLatest(samples);
        setError("");
        if (!before) return;
        const dt = (at - before.at) / 1000;
        const delta = (name, where) => Math.max(0, sum(samples, name, where) - sum(before.samples, name, where)) / dt;
        const point = {
          rate: delta("obleth_http_requests_total"),
          e4: delta("obleth_http_requests_total", { status_class: "4xx" }),
          e5: delta("obleth_http_requests_total", { status_class: "5xx" }),
          p50: (quantile(before.samples, samples, "obleth_http_request_duration_seconds", 0.5) ?? 0) * 1000,
          p99: (quantile(before.samples, samples, "obleth_http_request_duration_seconds", 0.99) ?? 0) * 1000,
          inFlight: sum(samples, "obleth_in_flight") || sum(samples, "obleth_http_in_flight"),
          queued: sum(samples, "obleth_queue_depth"),
        };
        for (const a of ADMISSIONS) point[a] = delta("obleth_requests_total", { admission: a });
        setSeries((s) => [...s.slice(-(KEEP - 1)), point]);
      } catch (e) {
        setError(e.message);
      }
    };
    tick();
    const timer = setInterval(() => !stop && tick(), EVERY_MS);
    return () => {
      stop = true;
      clearInterval(timer);
    };
  }, []);
  const col = (k) => series.map((p) => p[k]);
  const samples = latest || [];
  const dropped = Object.values(by(samples, "obleth_telemetry_dropped", "reason")).reduce((a, b) => a + b, 0);
  const health = {};
  for (const s of samples.filter((s) => s.name === "obleth_upstream_server_healthy")) {
    const h = (health[s.labels.pool] ||= { up: 0, all: 0 });
    h.all += 1;
    h.up += s.value;
  }
  const ceiling = capacity ? capacity.global_max_in_flight : null;
  return html`<section aria-live="polite">
    ${error && html`<p class="error" role="alert">${error}</p>`}
    <div class="cards">
      <${Spark} label="Requests/s" points=${col("rate")} />
      <${Spark} label="4xx/s" points=${col("e4")} />
      <${Spark} label="5xx/s" points=${col("e5")} />
      <${Spark} label="p50 latency" unit=" ms" digits=${2} points=${col("p50")} />
      <${Spark} label="p99 latency" unit=" ms" digits=${2} points=${col("p99")} />
      <${Spark} label="In flight" points=${col("inFlight")} digits=${0} />
      <${Spark} label="Queue depth" points=${col("queued")} digits=${0} />
    </div>
    <h2>Capacity</h2>
    <p>
      ${"In flight "}<b data-figure="in-flight">${fmt(sum(samples, "obleth_in_flight"), 0)}</b>${" of "}
      <b data-figure="capacity">${ceiling ?? "–"}</b>${", queued "}<b>${fmt(sum(samples, "obleth_queue_depth"), 0)}</b>
    </p>
    <h2>Admission outcomes (per second)</h2>
    <div class="cards">${ADMISSIONS.map((a) => html`<${Spark} label=${a} points=${col(a)} />`)}</div>
    <h2>Usage log</h2>
    <p>
      ${"Backlog "}<b>${fmt(sum(samples, "obleth_telemetry_backlog_bytes") / 1024, 1)} KiB</b>
      ${", durable "}<b>${fmt(sum(samples, "obleth_telemetry_durable_total"), 0)}</b>
      ${", shipped "}<b>${fmt(sum(samples, "obleth_telemetry_shipped_total"), 0)}</b>
      ${", dropped "}<b class=${dropped > 0 ? "bad" : ""}>${fmt(dropped, 0)}</b>
    </p>
    <h2>Upstream health</h2>
    <table>
      <thead><tr><th scope="col">Pool</th><th scope="col">Servers in rotation</th></tr></thead>
      <tbody>
        ${Object.entries(health).map(
          ([pool, h]) => html`<tr><td>${pool}</td><td class=${h.up < h.all ? "bad" : "good"}>${h.up} / ${h.all}</td></tr>`,
        )}
      </tbody>
    </table>
  </section>`;
}
