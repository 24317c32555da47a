// The server's HTTP API, as the page uses it. Failures become typed errors so the page
// can tell the user what happened in words.

export class ServerUnreachable extends Error {}
export class TokenRejected extends Error {}
export class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function call(path, { method = "GET", token, body } = {}) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers["Authorization"] = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ServerUnreachable(`the Parley server cannot be reached (${err.message})`);
  }
  let payload = null;
  try {
    payload = await response.json();
  } catch {
    payload = null;
  }
  if (response.status === 401) {
    throw new TokenRejected((payload && payload.detail) || "the session token was rejected");
  }
  if (!response.ok) {
    const detail = payload && payload.detail;
    throw new HttpError(response.status, typeof detail === "string" ? detail : `HTTP ${response.status}`);
  }
  return payload;
}

export function createSession(consent) {
  return call("/v1/sessions", { method: "POST", body: { mode: "voice", consent } });
}

export function refreshToken(sessionId, token) {
  return call(`/v1/sessions/${sessionId}/tokens`, { method: "POST", token, body: { role: "user" } });
}

// ``offerUrl``: the token answer's webrtc_offer_url: a path on this server, or, from a
// control plane, the absolute URL on the worker the session was dispatched to.
export function sendOffer(offerUrl, token, sdp) {
  return call(offerUrl, { method: "POST", token, body: { sdp, type: "offer" } });
}

export function fetchTimeline(sessionId, token) {
  return call(`/v1/sessions/${sessionId}/timeline`, { token });
}

export function mintAdminToken(adminKey) {
  return call("/v1/admin/tokens", { method: "POST", token: adminKey });
}

export function fetchRecentSessions(token) {
  return call("/v1/admin/sessions", { token });
}

export function fetchInspection(sessionId, token) {
  return call(`/v1/sessions/${sessionId}/inspection`, { token });
}

export function mintSupervisorToken(key, name) {
  return call("/v1/supervisor/tokens", { method: "POST", token: key, body: name ? { name } : {} });
}

export function sendListenOffer(sessionId, token, sdp) {
  const path = `/v1/supervisor/sessions/${encodeURIComponent(sessionId)}/webrtc`;
  return call(path, { method: "POST", token, body: { sdp, type: "offer" } });
}
