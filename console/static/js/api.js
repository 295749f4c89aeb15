// Calls to the project's own /api/v1, authenticated by the HttpOnly session cookie. Requests
// that change something carry the console's CSRF header (api/deps.py check_console_request).
// An answer other than success: `status` 0 when the server was not reached; `code` the API's
// machine-readable `error`; `body` the whole answer (facts such as the lockout policy);
// `errors` the field-by-field list of a request validation error. ui.js errorText words it.
export class ApiError extends Error {
  constructor(status, code, detail, body, errors) {
    super(detail || `HTTP ${status}`);
    this.status = status;
    this.code = code;
    this.detail = detail;
    this.body = body && typeof body === "object" ? body : {};
    this.errors = errors || null;
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
  let r, data;
  try {
    r = await fetch(url, { method, headers, body: payload, credentials: "same-origin" });
    if (r.status === 204) return null;
    const type = r.headers.get("content-type") || "";
    data = type.includes("json") ? await r.json() : await r.text();
  } catch (e) {
    // No answer (network down, server gone) or a cut-off one.
    throw new ApiError(r ? r.status : 0, "network", String(e));
  }
  if (!r.ok) {
    let detail = data && data.detail;
    const errors = Array.isArray(detail) ? detail : null;
    if (errors) {
      // FastAPI's validation errors: name the field and what is wrong with it.
      detail = errors.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
    }
    const err = new ApiError(r.status, data && data.error, detail || (typeof data === "string" ? data : ""),
      data, errors);
    // A wrong current password (password change) is refused with 401 too, but the session lives.
    if (r.status === 401 && !path.startsWith("/auth/console") && err.code !== "wrong_password") onUnauthorized(err);
    throw err;
  }
  return data;
}

// A URL for a download (exports): the browser sends the cookie; nothing else is needed.
export function downloadUrl(path, query) {
  const q = new URLSearchParams(query || {});
  return `/api/v1${path}?${q}`;
}
