// Calls to the project's own /api/v1, authenticated by the HttpOnly session cookie. Requests
// that change something carry the console's CSRF header (api/deps.py check_console_request).
export class ApiError extends Error {
  constructor(status, code, detail) {
    super(detail || `HTTP ${status}`);
    this.status = status;
    this.code = code;
    this.detail = detail;
  }
}

let onUnauthorized = () => {};
export function setUnauthorizedHandler(fn) { onUnauthorized = fn; }

export async function api(path, { method = "GET", body, form, query } = {}) {
  let url = `/api/v1${path}`;
  if (query) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
    const s = q.toString();
    if (s) url += `?${s}`;
  }
  const headers = { Accept: "application/json" };
  let payload;
  if (method !== "GET") headers["X-Requested-With"] = "ccs-console";
  if (form) {
    payload = new URLSearchParams(form);
  } else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const r = await fetch(url, { method, headers, body: payload, credentials: "same-origin" });
  if (r.status === 204) return null;
  const type = r.headers.get("content-type") || "";
  const data = type.includes("json") ? await r.json() : await r.text();
  if (!r.ok) {
    let detail = data && data.detail;
    if (Array.isArray(detail)) {
      // FastAPI's validation errors: name the field and what is wrong with it.
      detail = detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
    }
    const err = new ApiError(r.status, data && data.error, detail || (typeof data === "string" ? data : ""));
    if (r.status === 401 && !path.startsWith("/auth/console")) onUnauthorized(err);
    throw err;
  }
  return data;
}

// A URL for a download (exports): the browser sends the cookie; nothing else is needed.
export function downloadUrl(path, query) {
  const q = new URLSearchParams(query || {});
  return `/api/v1${path}?${q}`;
}
