// Calls the admin API through the dashboard's own /ui/api/v1 (the session
// cookie authenticates; the admin token stays on the server). Every
// mutation carries the session's CSRF token.

let csrf = "";

export function setCsrf(token) {
  csrf = token || "";
}

/** An API error with the message (and field) the API answered with. */
export class ApiError extends Error {
  constructor(status, message, field) {
    super(message);
    this.status = status;
    this.field = field;
  }
}

async function request(method, path, body) {
  const headers = { accept: "application/json" };
  if (body !== undefined) headers["content-type"] = "application/json";
  if (method !== "GET") headers["x-csrf-token"] = csrf;
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  if (res.status === 204) return null;
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (!res.ok) {
    const err = data && data.error ? data.error : { message: String(data || res.statusText) };
    throw new ApiError(res.status, err.message, err.field);
  }
  return data;
}

export const api = {
  get: (p) => request("GET", `/ui/api/v1${p}`),
  post: (p, b) => request("POST", `/ui/api/v1${p}`, b ?? {}),
  put: (p, b) => request("PUT", `/ui/api/v1${p}`, b),
  patch: (p, b) => request("PATCH", `/ui/api/v1${p}`, b),
  del: (p) => request("DELETE", `/ui/api/v1${p}`),
};

export const session = {
  get: () => request("GET", "/ui/session"),
  signIn: (password, operator) => request("POST", "/ui/login", { password, operator }),
  signOut: () => request("POST", "/ui/logout"),
};

export async function metricsText() {
  const res = await fetch("/ui/metrics", { credentials: "same-origin" });
  if (!res.ok) throw new ApiError(res.status, "cannot read the metrics");
  return res.text();
}
