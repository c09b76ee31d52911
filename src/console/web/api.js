// The admin API from the page: the token lives in sessionStorage (this tab only) and goes out
// as a bearer header on every request; never in a cookie or a URL.

const KEY = 'switchyard.admin-token';

export const token = {
  get: () => sessionStorage.getItem(KEY),
  set: (t) => sessionStorage.setItem(KEY, t),
  clear: () => sessionStorage.removeItem(KEY),
};

/** The admin API answered with an error (`status`, `message`, `reasons`, `errors`). */
export class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message || `HTTP ${status}`);
    this.status = status;
    this.code = body?.error?.code;
    this.reasons = body?.reasons || [];
    this.errors = body?.errors || [];
  }
}

/** The token was refused (wrong or revoked). */
export class AuthError extends Error {}

/** Switchyard could not be reached. */
export class NetworkError extends Error {}

/** One admin API call; resolves to the JSON answer. */
export async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${token.get() || ''}`, Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let resp;
  try {
    resp = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
      credentials: 'omit',
      referrerPolicy: 'no-referrer',
    });
  } catch (e) {
    throw new NetworkError(`cannot reach Switchyard: ${e.message}`);
  }
  let data = null;
  try {
    data = await resp.json();
  } catch {
    data = null;
  }
  if (resp.status === 401) throw new AuthError(data?.error?.message || 'the admin token was refused');
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

export const get = (path) => api('GET', path);
