import { html } from "htm/preact";

/** A small line chart of the last points of a series, with its latest value. */
export function Spark({ points, label, unit = "", digits = 1 }) {
  const w = 160;
  const h = 36;
  const max = Math.max(1e-9, ...points);
  const step = points.length > 1 ? w / (points.length - 1) : w;
  const d = points.map((v, i) => `${i ? "L" : "M"}${(i * step).toFixed(1)},${(h - (v / max) * (h - 2) - 1).toFixed(1)}`).join(" ");
  const last = points.length ? points[points.length - 1] : 0;
  return html`<figure class="spark">
    <figcaption>${label}</figcaption>
    <strong data-figure=${label}>${fmt(last, digits)}${unit}</strong>
    <svg viewBox="0 0 ${w} ${h}" width=${w} height=${h} role="img" aria-label="${label}, last minutes">
      <path d=${d || `M0,${h - 1} L${w},${h - 1}`} />
    </svg>
  </figure>`;
}

/** Horizontal bars for a table of labelled values. */
export function Bars({ rows, value, label }) {
  const max = Math.max(1e-9, ...rows.map(value));
  return html`<div class="bars" role="img" aria-label="chart">
    ${rows.map(
      (r) => html`<div class="bar">
        <span>${label(r)}</span>
        <span class="fill" style=${{ width: `${((value(r) / max) * 100).toFixed(1)}%` }}></span>
        <span>${fmt(value(r), 4)}</span>
      </div>`,
    )}
  </div>`;
}

export function fmt(v, digits = 1) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString("en");
  return Number(v.toFixed(digits)).toString();
}
