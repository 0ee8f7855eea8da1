// The dashboard's shell: sign-in, navigation between pages, sign-out.
import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import { html } from "htm/preact";
import { session, setCsrf } from "./api.js";
import { SignIn } from "./pages/sign_in.js";
import { Overview } from "./pages/overview.js";
import { FairShare } from "./pages/fair_share.js";
import { Tenants, Groups, Models } from "./pages/resources.js";
import { Keys } from "./pages/keys.js";
import { Usage } from "./pages/usage.js";
import { Audit } from "./pages/audit.js";
import { Pools } from "./pages/pools.js";
import "./style.css";

const PAGES = [
  ["overview", "Overview", Overview],
  ["fair-share", "Fair share", FairShare],
  ["tenants", "Tenants", Tenants],
  ["groups", "Groups", Groups],
  ["keys", "Keys", Keys],
  ["models", "Models", Models],
  ["usage", "Usage", Usage],
  ["audit", "Audit log", Audit],
  ["pools", "Pools", Pools],
];

function currentPage() {
  const name = location.pathname.replace(/^\/ui\/?/, "").split("/")[0];
  return PAGES.find(([n]) => n === name) ? name : "overview";
}

function App() {
  const [who, setWho] = useState(undefined);
  const [page, setPage] = useState(currentPage());
  useEffect(() => {
    session
      .get()
      .then((s) => {
        setCsrf(s.csrf);
        setWho(s);
      })
      .catch(() => setWho(null));
    const onPop = () => setPage(currentPage());
    addEventListener("popstate", onPop);
    return () => removeEventListener("popstate", onPop);
  }, []);
  if (who === undefined) return html`<p class="loading">Loading…</p>`;
  if (who === null)
    return html`<${SignIn}
      onSignedIn=${(s) => {
        setCsrf(s.csrf);
        setWho(s);
      }}
    />`;
  const go = (name) => (e) => {
    e.preventDefault();
    history.pushState(null, "", `/ui/${name}`);
    setPage(name);
  };
  const signOut = async () => {
    await session.signOut().catch(() => {});
    setCsrf("");
    setWho(null);
  };
  const [, title, Page] = PAGES.find(([n]) => n === page);
  return html`<div class="shell">
    <header>
      <span class="brand">obleth</span>
      <nav aria-label="Pages">
        ${PAGES.map(
          ([name, label]) =>
            html`<a href="/ui/${name}" aria-current=${name === page ? "page" : undefined} onClick=${go(name)}>${label}</a>`,
        )}
      </nav>
      <span class="who">Signed in as <b>${who.operator}</b></span>
      <button type="button" onClick=${signOut}>Sign out</button>
    </header>
    <main id="main">
      <h1>${title}</h1>
      ${who.llm_plane || ["overview", "pools"].includes(page)
        ? html`<${Page} />`
        : html`<p class="notice">No route declares <code>llm:</code>, so this obleth runs no LLM plane: only the overview and pools apply.</p>`}
    </main>
  </div>`;
}

render(html`<${App} />`, document.getElementById("app"));
