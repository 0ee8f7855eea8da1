// Validates ServiceMonitor and PrometheusRule documents (a JSON list, as
// manifests.py writes them) with validators generated from the Prometheus
// Operator's API types: types, patterns such as durations, required fields.
// They accept unknown fields, so tests/deploy_chart.rs asserts the fields
// the chart relies on.
//
// usage: node crds.mjs DOCUMENTS.json NODE_MODULES
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [documents, nodeModules] = process.argv.slice(2);
const models = join(nodeModules, "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1");
const load = async (kind) =>
  (await import(pathToFileURL(join(models, `${kind}.js`)).href))[kind];
const kinds = {
  ServiceMonitor: await load("ServiceMonitor"),
  PrometheusRule: await load("PrometheusRule"),
};

const docs = JSON.parse(readFileSync(documents, "utf8"));
const problems = [];
for (const doc of docs) {
  const name = `${doc.kind}/${doc.metadata?.name}`;
  const Kind = kinds[doc.kind];
  if (!Kind) {
    problems.push(`${name}: no validator for this kind`);
    continue;
  }
  try {
    new Kind(doc).validate();
  } catch (e) {
    problems.push(`${name}: ${e.message}`);
  }
}
for (const problem of problems) console.log(`  ${problem}`);
const names = docs.map((d) => d.kind).join(", ") || "none";
console.log(`${problems.length ? "FAIL" : "ok"}: Prometheus Operator resources (${names})`);
process.exit(problems.length ? 1 : 0);
