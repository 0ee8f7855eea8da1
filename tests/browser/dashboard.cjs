// Drives the dashboard in Debian's headless Chromium (playwright-core from
// dashboard/node_modules) against a running obleth, as tests/dashboard.rs
// starts it: sign-in refused and accepted, live figures that move with
// traffic, a tenant and key created (the secret shown once and then used
// through the gateway), the capacity changed, the audit log naming the
// operator, a cross-site form post refused, sign-out, forged and expired
// cookies refused. Every page is screenshotted into $SCREENSHOTS; any
// console error or failed page request fails the run.
//
//   DASHBOARD_URL GATEWAY_URL ADMIN_URL ADMIN_TOKEN DASHBOARD_PASSWORD
//   DASHBOARD_SESSION_SECRET SCREENSHOTS   (all set by tests/dashboard.rs)

const assert = require("node:assert/strict");
const path = require("node:path");
const { chromium } = require("playwright-core");

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const UI = env("DASHBOARD_URL");
const GATEWAY = env("GATEWAY_URL");
const ADMIN = env("ADMIN_URL");
const TOKEN = env("ADMIN_TOKEN");
const PASSWORD = env("DASHBOARD_PASSWORD");
const SHOTS = env("SCREENSHOTS");
const SECRET = env("DASHBOARD_SESSION_SECRET");

async function chat(key) {
  const res = await fetch(`${GATEWAY}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: JSON.stringify({ model: "mock-model", messages: [{ role: "user", content: "hi" }], max_tokens: 4 }),
  });
  return res.status;
}

let page;
let problems = [];

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
  });
  problems = [];
  const context = await browser.newContext({ viewport: { width: 1366, height: 900 } });
  page = await context.newPage();
  page.on("console", (m) => m.type() === "error" && !expected(m.text()) && problems.push(`console: ${m.text()}`));
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("requestfailed", (r) => problems.push(`request failed: ${r.url()}`));
  page.on("response", (r) => r.status() >= 400 && problems.push(`answer ${r.status()}: ${r.request().method()} ${r.url()}`));
  const shot = (name) => page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
  const open = async (name, label) => {
    await page.getByRole("link", { name: label, exact: true }).click();
    await page.getByRole("heading", { level: 1, name: label }).waitFor();
  };

  // Sign-in: the wrong password is refused with the API's message.
  await page.goto(UI);
  await page.getByLabel("Your name (for the audit log)").fill("dana");
  await page.getByLabel("Dashboard password").fill("wrong");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("alert").filter({ hasText: "wrong password" }).waitFor();
  await shot("sign-in");
  await page.getByLabel("Dashboard password").fill(PASSWORD);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByText("Signed in as").waitFor();
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === "obleth_session");
  assert.ok(session && session.httpOnly && session.sameSite === "Strict", JSON.stringify(cookies));
  const readable = await page.evaluate(() => document.cookie);
  assert.ok(!readable.includes("obleth_session"), "the session cookie is HttpOnly");

  // Overview: live figures move when traffic is sent.
  await page.getByRole("heading", { level: 1, name: "Overview" }).waitFor();
  const rate = page.locator('[data-figure="Requests/s"]');
  await page.waitForTimeout(2500);
  const stop = Date.now() + 7000;
  const load = (async () => {
    while (Date.now() < stop) await chat("obk_nobody").catch(() => {});
  })();
  let moved = false;
  for (let i = 0; i < 30 && !moved; i++) {
    await page.waitForTimeout(250);
    moved = Number((await rate.textContent()).replace(/,/g, "")) > 0;
  }
  await load;
  assert.ok(moved, "the request rate never moved under traffic");
  const fourXX = Number((await page.locator('[data-figure="4xx/s"]').textContent()).replace(/,/g, ""));
  assert.ok(fourXX > 0, "unknown keys show as 4xx");
  await shot("overview");

  // Tenants: create one; the API's validation message shows for a duplicate.
  await open("tenants", "Tenants");
  const newTenant = page.getByRole("form", { name: "Create tenant" });
  await newTenant.getByLabel("Name", { exact: true }).fill("browser-tenant");
  await newTenant.getByRole("button", { name: "Create tenant" }).click();
  await page.getByRole("cell", { name: "browser-tenant", exact: true }).waitFor();
  await newTenant.getByLabel("Name", { exact: true }).fill("browser-tenant");
  await newTenant.getByRole("button", { name: "Create tenant" }).click();
  await newTenant.getByRole("alert").waitFor();
  await shot("tenants");

  // Keys: create one for it; the secret is shown once and works.
  await open("keys", "Keys");
  await page.getByLabel("Tenant", { exact: true }).selectOption({ label: "browser-tenant" });
  const newKey = page.getByRole("form", { name: "Create key" });
  await newKey.getByLabel("Name", { exact: true }).fill("browser-key");
  await newKey.getByRole("button", { name: "Create key" }).click();
  const secret = (await page.locator("[data-secret]").textContent()).trim();
  assert.match(secret, /^obk_/);
  await page.getByRole("cell", { name: "browser-key", exact: true }).waitFor();
  await shot("keys");
  await page.getByRole("button", { name: "Done" }).click();
  assert.equal(await page.locator("[data-secret]").count(), 0, "the secret is shown once");
  assert.equal(await chat(secret), 200, "the new key works through the gateway");

  // Fair share: change the global ceiling and see it in the API.
  await open("fair-share", "Fair share");
  await page.getByLabel("Global ceiling (in flight)").fill("37");
  await page.getByRole("button", { name: "Change" }).click();
  await page.getByRole("status").filter({ hasText: "Global ceiling is now 37" }).waitFor();
  const capacity = await (await fetch(`${ADMIN}/api/v1/capacity`, { headers: { authorization: `Bearer ${TOKEN}` } })).json();
  assert.equal(capacity.global_max_in_flight, 37, JSON.stringify(capacity));
  await shot("fair-share");

  for (const [name, label] of [["groups", "Groups"], ["models", "Models"], ["pools", "Pools"]]) {
    await open(name, label);
    await page.waitForTimeout(400);
    await shot(name);
  }
  // Usage from ClickHouse: the new key's request, per tenant and in the
  // tenant's request log.
  await open("usage", "Usage");
  let shown = false;
  for (let i = 0; i < 40 && !shown; i++) {
    await page.getByRole("button", { name: "Show", exact: true }).click();
    await page.waitForTimeout(250);
    shown = (await page.getByRole("cell", { name: "browser-tenant", exact: true }).count()) > 0;
  }
  assert.ok(shown, "the new tenant's usage never showed");
  await page.getByLabel("Tenant", { exact: true }).selectOption({ label: "browser-tenant" });
  await page.getByRole("button", { name: "Show requests" }).click();
  await page.getByRole("cell", { name: "mock-model", exact: true }).first().waitFor();
  await shot("usage");

  // Audit: the changes, made by the signed-in operator.
  await open("audit", "Audit log");
  for (const action of ["tenant.create", "key.create", "capacity"]) {
    await page.getByRole("row").filter({ hasText: "dashboard:dana" }).filter({ hasText: action }).first().waitFor();
  }
  await shot("audit");

  // A phone-sized screen gets the same pages.
  await page.setViewportSize({ width: 390, height: 844 });
  await open("overview", "Overview");
  await page.waitForTimeout(500);
  await shot("phone-overview");
  await page.setViewportSize({ width: 1366, height: 900 });

  // Keyboard: the navigation is reachable with Tab.
  await page.keyboard.press("Tab");
  const focused = await page.evaluate(() => document.activeElement && document.activeElement.tagName);
  assert.ok(["A", "BUTTON"].includes(focused), `focus went to ${focused}`);

  // Every page so far loaded without a console error or a failed request;
  // what follows provokes refusals on purpose.
  const unexpected = problems.filter((p) => !p.startsWith("answer "));
  assert.deepEqual(unexpected, [], problems.join("\n"));

  // A page of another origin on this host (the gateway's port) posting a
  // form to the dashboard: the browser sends the session cookie (same
  // site), and obleth refuses the change all the same.
  const ui = new URL(UI);
  await page.goto(`${GATEWAY}/v1/models`);
  const crossSite = page.waitForResponse((r) => r.url().includes("/ui/api/v1/tenants"));
  await page.evaluate((action) => {
    const form = document.createElement("form");
    form.method = "POST";
    form.action = action;
    form.enctype = "text/plain";
    const field = document.createElement("input");
    field.name = '{"name":"csrf-victim","x":"';
    field.value = '"}';
    form.appendChild(field);
    document.body.appendChild(form);
    form.submit();
  }, `${ui.origin}/ui/api/v1/tenants`);
  assert.equal((await crossSite).status(), 403, "a cross-site POST is refused");
  await page.waitForURL(/\/ui\/api\/v1\/tenants/);
  const victims = await (await fetch(`${ADMIN}/api/v1/tenants`, { headers: { authorization: `Bearer ${TOKEN}` } })).json();
  assert.ok(!victims.some((t) => t.name === "csrf-victim"), "nothing was created");
  await page.goto(`${UI}overview`);
  await page.getByText("Signed in as").waitFor();

  // Sign out: the session is gone.
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByLabel("Dashboard password").waitFor();
  const after = await page.evaluate(async () => (await fetch("/ui/api/v1/tenants")).status);
  assert.equal(after, 401);

  // A forged cookie, and an expired one signed with the real secret, get
  // the sign-in page.
  const sign = (body) => require("node:crypto").createHmac("sha256", SECRET).update(`session|${body}`).digest("hex");
  const operator = Buffer.from("dana").toString("hex");
  const expiredBody = `${operator}.${Math.floor(Date.now() / 1000) - 5}.${"cd".repeat(16)}`;
  const forgedBody = `${Buffer.from("admin").toString("hex")}.${Math.floor(Date.now() / 1000) + 3600}.${"cd".repeat(16)}`;
  for (const value of [`${expiredBody}.${sign(expiredBody)}`, `${forgedBody}.${sign(expiredBody)}`]) {
    await context.clearCookies();
    await context.addCookies([{ name: "obleth_session", value, url: UI }]);
    await page.goto(UI);
    await page.getByLabel("Dashboard password").waitFor();
    const status = await page.evaluate(async () => (await fetch("/ui/api/v1/tenants")).status);
    assert.equal(status, 401);
  }

  // The first load stays small.
  const sizes = await page.evaluate(() =>
    performance.getEntriesByType("resource").reduce((n, r) => n + (r.transferSize || r.encodedBodySize || 0), 0),
  );
  assert.ok(sizes < 300 * 1024, `assets ${sizes} bytes`);

  await browser.close();
  console.log("dashboard: every browser check passed");
}

// Answers the pages expect and show: a wrong password, the request made
// after signing out, a duplicate name.
function expected(text) {
  return /status of (401|503|409)/.test(text);
}

main().catch(async (e) => {
  console.error(e);
  if (page) {
    await page.screenshot({ path: path.join(SHOTS, "failure.png"), fullPage: true }).catch(() => {});
    console.error(`page text at the failure (failure.png):\n${await page.innerText("body").catch(() => "")}`);
    console.error(`console and requests:\n${problems.join("\n")}`);
  }
  process.exit(1);
});
