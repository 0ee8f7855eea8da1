// Reads the Prometheus exposition obleth serves and turns two samples of it
// into what the overview shows: rates, latency quantiles, gauges.

/** Parses the text format into [{name, labels, value}]. */
export function parse(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    if (m[3]) {
      for (const l of m[3].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    }
    samples.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return samples;
}

/** The sum of `name`'s samples whose labels match `where`. */
export function sum(samples, name, where = {}) {
  let total = 0;
  for (const s of samples) {
    if (s.name !== name) continue;
    if (Object.entries(where).every(([k, v]) => s.labels[k] === v)) total += s.value;
  }
  return total;
}

/** Sums of `name` by the value of `label`. */
export function by(samples, name, label) {
  const out = {};
  for (const s of samples) if (s.name === name) out[s.labels[label]] = (out[s.labels[label]] || 0) + s.value;
  return out;
}

/** A quantile of a histogram over the requests between two samples. */
export function quantile(before, after, name, q) {
  const buckets = (samples) => {
    const b = {};
    for (const s of samples) if (s.name === `${name}_bucket`) b[s.labels.le] = (b[s.labels.le] || 0) + s.value;
    return b;
  };
  const a = buckets(after);
  const p = before ? buckets(before) : {};
  const les = Object.keys(a).sort((x, y) => Number(x) - Number(y));
  const counts = les.map((le) => [Number(le), a[le] - (p[le] || 0)]);
  const total = counts.length ? counts[counts.length - 1][1] : 0;
  if (total <= 0) return null;
  const rank = q * total;
  let prevLe = 0;
  let prevCount = 0;
  for (const [le, count] of counts) {
    if (count >= rank) {
      if (!isFinite(le)) return prevLe;
      const inBucket = count - prevCount;
      return inBucket > 0 ? prevLe + ((le - prevLe) * (rank - prevCount)) / inBucket : le;
    }
    prevLe = le;
    prevCount = count;
  }
  return prevLe;
}
