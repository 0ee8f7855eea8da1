import { useState } from "preact/hooks";
import { html } from "htm/preact";
import { session } from "../api.js";

export function SignIn({ onSignedIn }) {
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);
  const submit = async (e) => {
    e.preventDefault();
    const form = new FormData(e.target);
    setBusy(true);
    setError("");
    try {
      onSignedIn(await session.signIn(form.get("password"), form.get("operator")));
    } catch (err) {
      setError(err.message);
    } finally {
      setBusy(false);
    }
  };
  return html`<main class="sign-in">
    <form onSubmit=${submit} aria-labelledby="sign-in-title">
      <h1 id="sign-in-title">obleth</h1>
      <p>Sign in to the operator dashboard.</p>
      <label for="operator">Your name (for the audit log)</label>
      <input id="operator" name="operator" autocomplete="username" placeholder="operator" />
      <label for="password">Dashboard password</label>
      <input id="password" name="password" type="password" autocomplete="current-password" required />
      ${error && html`<p class="error" role="alert">${error}</p>`}
      <button type="submit" disabled=${busy}>Sign in</button>
    </form>
  </main>`;
}
