// HTTP access to the Launchbay API, with the optional bearer token.
//
// The default path needs no token. When the API answers 401 (LAUNCHBAY_TOKEN is set), the
// page asks once, keeps the token in localStorage and sends it as a header (HTTP) or as
// ?token= (WebSocket and EventSource, which cannot set headers).

export const API = "/api/v1";
const TOKEN_KEY = "lb.token";

let onUnauthorized = () => {};

/** Register what to do when the API refuses us for want of a token. */
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

export function getToken() {
  try {
    return localStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

export function setToken(value) {
  try {
    if (value) localStorage.setItem(TOKEN_KEY, value);
    else localStorage.removeItem(TOKEN_KEY);
  } catch {
    /* storage disabled: the token lives for this page only */
  }
}

/** An HTTP answer that was not 2xx; ``body`` is the parsed problem JSON when there is one. */
export class HttpError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

/** Call the API; resolves with the parsed JSON body, rejects with HttpError or TypeError. */
export async function request(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  const res = await fetch(API + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { error: text };
    }
  }
  if (res.status === 401) onUnauthorized();
  if (!res.ok) throw new HttpError(res.status, data);
  return data;
}

export const get = (path) => request("GET", path);
export const post = (path, body) => request("POST", path, body);

/** ``url`` with ?token= added when a token is set (for WebSocket, EventSource, downloads). */
export function withToken(url) {
  const token = getToken();
  if (!token) return url;
  return `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
}

export function wsUrl(path) {
  const u = new URL(API + path, window.location.href);
  u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
  return withToken(u.toString());
}

export function apiUrl(path) {
  return withToken(API + path);
}
