// The supervisor console: every live session, the ones asking for a person flagged at
// the top with the transcript so far; one session watched at a time (its live transcript
// and its audio, the caller and the agent mixed); taking it over (the supervisor's
// microphone then reaches the caller) and handing it back to the agent.
// The key or token typed in stays in this tab (sessionStorage), never in the URL.

import { mintSupervisorToken, TokenRejected } from "/api.js";
import { LevelMeter, ListenConnection } from "/supervisor-listen.js";
import { LiveTranscript, element, transcriptLine } from "/supervisor-transcript.js";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "parley-supervisor-token";
const RECONNECT_DELAYS_MS = [250, 500, 1000, 2000, 3000];
const REFUSED_CODES = new Set([4401, 4403]);

// What a test (or a curious supervisor in the console) can read: plain values.
const status = {
  connected: false,
  me: null,
  sessions: [],
  requests: [],
  watching: null,
  listening: "off",
  micAvailable: null,
  micOn: false,
  micStartedAt: null,
  remoteRms: 0,
  remoteRmsMax: 0,
  results: [],
};
window.parleySupervisor = status;

let token = null;
let socket = null;
let reconnectAttempt = 0;
let nextCommandId = 1;
const pending = new Map(); // command id → { action, sessionId }
const sessions = new Map(); // session id → summary
const requests = new Map(); // session id → { reason, by, transcript }
let holding = null; // the session this supervisor took over (until handed back)
let listen = null;
let mic = null;
let micTried = false;
const transcript = new LiveTranscript($("live-transcript"));
const meter = new LevelMeter((rms) => {
  status.remoteRms = rms;
  status.remoteRmsMax = Math.max(status.remoteRmsMax, rms);
  $("level").value = rms;
});

function banner(message, kind = "error") {
  const el = $("banner");
  el.textContent = message;
  el.className = kind;
  el.hidden = !message;
}

const shortId = (id) => (id.length > 14 ? `${id.slice(0, 12)}…` : id);

// ---- credentials -----------------------------------------------------------------------

function claimsOf(jwt) {
  try {
    const part = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
  } catch {
    return {};
  }
}

async function mintToken(key, name) {
  return (await mintSupervisorToken(key, name)).token;
}

async function signIn(secret, name) {
  banner("");
  try {
    // A JWT has three dot-separated parts; anything else is taken for the key.
    token = secret.split(".").length === 3 ? secret : await mintToken(secret, name);
  } catch (err) {
    banner(`Cannot open the console: ${err.message}`);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  // Who the server takes this console for: a supervisor token's room is
  // "supervisor:<name>" (what sessions show as their supervisor); an admin is "admin".
  const claims = claimsOf(token);
  status.me = claims.role === "admin" ? "admin" : claims.room || null;
  showIdentity();
  $("credentials").hidden = true;
  connect();
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  token = null;
  if (socket) socket.close();
  socket = null;
  stopListening();
  $("credentials").hidden = false;
  banner(message);
}

const displayName = (by) => String(by || "").replace(/^supervisor:/, "");

function showIdentity() {
  $("whoami").textContent = status.me ? `signed in as ${displayName(status.me)}` : "";
}

// ---- the console's WebSocket -----------------------------------------------------------

function setConnected(connected) {
  status.connected = connected;
  const el = $("console-state");
  el.dataset.state = connected ? "online" : "offline";
  el.textContent = connected ? "connected" : "offline";
  updateWatch();
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  // The token as a subprotocol (never in the URL); the server answers "parley".
  const ws = new WebSocket(`${scheme}://${location.host}/v1/supervisor/ws`, ["parley", `parley.token.${token}`]);
  socket = ws;
  ws.addEventListener("open", () => {
    reconnectAttempt = 0;
    setConnected(true);
    banner("");
    if (status.watching) send({ type: "watch", session_id: status.watching });
  });
  ws.addEventListener("message", (e) => {
    let message;
    try {
      message = JSON.parse(e.data);
    } catch {
      return;
    }
    onMessage(message);
  });
  ws.addEventListener("close", (e) => {
    if (socket !== ws) return;
    socket = null;
    setConnected(false);
    for (const [id, command] of pending) commandDone(id, command, false, "the console lost its connection");
    if (REFUSED_CODES.has(e.code)) {
      signOut(`The server refused this console (${e.reason || e.code}): enter the key again.`);
      return;
    }
    banner("Connection to the server lost — reconnecting…", "info");
    const delay = RECONNECT_DELAYS_MS[Math.min(reconnectAttempt++, RECONNECT_DELAYS_MS.length - 1)];
    setTimeout(() => token && !socket && connect(), delay);
  });
}

function send(message) {
  if (socket && socket.readyState === WebSocket.OPEN) {
    socket.send(JSON.stringify(message));
    return true;
  }
  return false;
}

function onMessage(message) {
  switch (message.type) {
    case "sessions":
      setSessions(message.sessions || []);
      break;
    case "handoff.requested":
      requests.set(message.session_id, {
        reason: message.reason || "",
        by: message.by || "",
        transcript: message.transcript || [],
      });
      drawRequests();
      break;
    case "transcript":
      if (message.session_id === status.watching) transcript.lines(message.lines || []);
      break;
    case "session.event":
      if (message.session_id === status.watching) onSessionEvent(message.event || {});
      break;
    case "session.ended":
      sessionEnded(message.session_id);
      break;
    case "result":
      onResult(message);
      break;
    case "error":
      banner(`Server: ${message.message || message.code}`);
      break;
  }
}

// ---- the session list and the handoff requests -----------------------------------------

function setSessions(list) {
  sessions.clear();
  for (const s of list) sessions.set(s.session_id, s);
  status.sessions = list;
  for (const [id, s] of sessions) {
    if (s.handoff === "requested" && !requests.has(id)) {
      requests.set(id, { reason: s.handoff_reason, by: s.handoff_by, transcript: [] });
    }
    // A list sent just before the request (or from another process, a moment old) may
    // still say "agent": a request goes once a list has shown it and then the agent.
    const r = requests.get(id);
    if (r && s.handoff !== "agent") r.listed = true;
    if (r && r.listed && s.handoff === "agent") requests.delete(id);
    if (holding === id && s.handoff === "human" && s.supervisor && !status.me) {
      status.me = s.supervisor;
      showIdentity();
    }
    if (holding === id && s.handoff !== "human") holding = null;
  }
  for (const id of [...requests.keys()]) if (!sessions.has(id)) requests.delete(id);
  drawSessions();
  drawRequests();
  updateWatch();
}

// Who has the conversation: "you", a supervisor's name, or "agent".
function holderOf(s) {
  if (s.handoff !== "human") return "agent";
  return s.supervisor === status.me || holding === s.session_id ? "you" : displayName(s.supervisor) || "a person";
}

function holderText(s) {
  if (!s) return "The session has ended";
  const who = holderOf(s);
  if (who === "you") return "You have the conversation";
  if (who !== "agent") return `${who} has the conversation`;
  return s.handoff === "requested" ? "The agent has the conversation — a person is asked for" : "The agent has the conversation";
}

function drawSessions() {
  const rows = $("session-rows");
  rows.replaceChildren();
  for (const s of sessions.values()) {
    const row = element("tr", { class: `session handoff-${s.handoff}`, "data-session": s.session_id, "data-handoff": s.handoff, tabindex: "0" });
    if (s.session_id === status.watching) row.classList.add("watched");
    const latest = element("td", { class: "latest" });
    if (s.latest_user) latest.append(element("div", { class: "caller" }, `Caller: ${s.latest_user}`));
    if (s.latest_agent) latest.append(element("div", { class: "agent" }, `Agent: ${s.latest_agent}`));
    row.append(
      element("td", { class: "id", title: s.session_id }, shortId(s.session_id)),
      element("td", {}, s.transport || ""),
      element("td", {}),
      element("td", { class: "holder" }, holderOf(s)),
      element("td", {}, String(s.turns ?? 0)),
      latest,
    );
    row.children[2].append(element("span", { class: "state", "data-state": s.state }, s.state));
    if (s.handoff === "requested") row.children[3].prepend(element("span", { class: "flag" }, "needs a person"), " ");
    row.addEventListener("click", () => openSession(s.session_id));
    row.addEventListener("keydown", (e) => e.key === "Enter" && openSession(s.session_id));
    rows.append(row);
  }
  $("no-sessions").hidden = sessions.size > 0;
  $("sessions").hidden = false;
}

function drawRequests() {
  const list = $("request-list");
  list.replaceChildren();
  for (const [id, r] of requests) {
    const s = sessions.get(id);
    const li = element("li", { class: "request", "data-session": id, "data-handoff": s ? s.handoff : "requested" });
    const head = element("div", { class: "head" });
    head.append(element("strong", { title: id }, `Session ${shortId(id)}`), element("span", { class: "reason" }, ` — ${r.reason || "a person is asked for"}`));
    if (r.by) head.append(element("span", { class: "by" }, ` (asked by ${displayName(r.by)})`));
    if (s && s.handoff === "human") head.append(element("span", { class: "taken" }, ` — ${holderText(s)}`));
    const open = element("button", { type: "button", "data-testid": "open-request" }, id === status.watching ? "Watching" : "Open");
    open.addEventListener("click", () => openSession(id));
    head.append(open);
    const lines = element("ol", { class: "request-transcript" });
    for (const line of r.transcript) lines.append(transcriptLine(line));
    li.append(head, lines);
    list.append(li);
  }
  status.requests = [...requests.keys()];
  $("requests").hidden = requests.size === 0;
}

function sessionEnded(sessionId) {
  sessions.delete(sessionId);
  requests.delete(sessionId);
  status.sessions = [...sessions.values()];
  if (holding === sessionId) holding = null;
  if (status.watching === sessionId) {
    stopListening();
    transcript.notice("The session has ended.");
  }
  drawSessions();
  drawRequests();
  updateWatch();
}

// ---- watching one session ----------------------------------------------------------------

function onSessionEvent(ev) {
  transcript.event(ev);
  if (ev.type === "agent.state") {
    const s = sessions.get(status.watching);
    if (s) s.state = ev.state;
    drawSessions();
    updateWatch();
  }
}

async function microphone() {
  if (micTried) return mic;
  micTried = true;
  try {
    mic = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    status.micStartedAt = Date.now();
    status.micAvailable = true;
  } catch (err) {
    mic = null;
    status.micAvailable = false;
    $("mic-note").textContent = `No microphone (${err && err.name ? err.name : err}): you can listen, but the caller cannot hear you.`;
  }
  return mic;
}

function stopListening() {
  if (listen) listen.close();
  listen = null;
  meter.stop();
  status.listening = "off";
  status.remoteRms = 0;
  $("session-audio").srcObject = null;
  updateWatch();
}

async function startListening(sessionId) {
  stopListening();
  const stream = await microphone();
  if (status.watching !== sessionId || !token) return;
  const connection = new ListenConnection(sessionId);
  listen = connection;
  status.listening = "connecting";
  updateWatch();
  connection.addEventListener("track", (e) => {
    $("session-audio").srcObject = e.detail;
    meter.watch(e.detail);
  });
  connection.addEventListener("state", (e) => {
    if (listen !== connection) return;
    status.listening = e.detail === "connected" ? "live" : e.detail;
    updateWatch();
  });
  connection.addEventListener("dropped", () => {
    if (listen !== connection) return;
    listen = null;
    meter.stop();
    status.listening = "off";
    updateWatch();
    if (sessions.has(sessionId) && status.watching === sessionId) setTimeout(() => status.watching === sessionId && !listen && startListening(sessionId), 1000);
  });
  try {
    await connection.open(token, stream);
  } catch (err) {
    if (listen !== connection) return;
    listen = null;
    status.listening = "failed";
    updateWatch();
    if (err instanceof TokenRejected) signOut(`Your supervisor token was refused (${err.message}): enter the key again.`);
    else banner(`Cannot listen to this session: ${err.message}`);
  }
}

function openSession(sessionId) {
  if (status.watching === sessionId && listen) return;
  status.watching = sessionId;
  $("watch-title").textContent = `Session ${sessionId}`;
  $("watch-title").dataset.session = sessionId;
  transcript.clear();
  $("watch").hidden = false;
  send({ type: "watch", session_id: sessionId });
  drawSessions();
  drawRequests();
  updateWatch();
  startListening(sessionId);
}

// ---- take over, hand back ----------------------------------------------------------------

function command(action, force = false) {
  const sessionId = status.watching;
  if (!sessionId) return;
  const id = `c${nextCommandId++}`;
  if (!send({ type: action, session_id: sessionId, id, force })) {
    banner("Not connected to the server: try again in a moment.");
    return;
  }
  pending.set(id, { action, sessionId });
  updateWatch();
}

function commandDone(id, cmd, ok, error) {
  pending.delete(id);
  status.results.push({ id, action: cmd.action, session_id: cmd.sessionId, ok, error: error || null });
  if (ok && cmd.action === "take_over") holding = cmd.sessionId;
  if (ok && cmd.action === "hand_back" && holding === cmd.sessionId) holding = null;
  if (!ok) banner(`${cmd.action === "take_over" ? "Take over" : "Hand back"} failed: ${error || "refused"}`);
  else banner("");
  // A colleague holds the call (and may have left without handing back): taking it from
  // them is a deliberate second step, never a click's side effect.
  if (!ok && error === "another supervisor has it" && status.watching === cmd.sessionId &&
      window.confirm(`${cmd.action === "take_over" ? "Take this call over" : "Hand this call back"} from the colleague who has it?`)) {
    command(cmd.action, true);
  }
  updateWatch();
}

function onResult(message) {
  const cmd = pending.get(message.id);
  if (cmd) commandDone(message.id, cmd, Boolean(message.ok), message.error);
}

function updateWatch() {
  const s = status.watching ? sessions.get(status.watching) : null;
  const busy = [...pending.values()].some((c) => c.sessionId === status.watching);
  const mine = Boolean(s && s.handoff === "human" && (holding === s.session_id || (status.me && s.supervisor === status.me)));
  const holder = $("holder");
  holder.textContent = status.watching ? holderText(s) : "";
  holder.dataset.holder = s ? s.handoff : "ended";
  holder.dataset.by = s && s.handoff === "human" ? s.supervisor || "" : "";
  holder.classList.toggle("mine", mine);
  $("take-over").disabled = !status.connected || !s || busy || s.handoff === "human";
  $("hand-back").disabled = !status.connected || !s || busy || s.handoff !== "human" || (!mine && Boolean(s.supervisor) && Boolean(status.me));
  const state = $("listen-state");
  state.dataset.state = status.listening;
  state.textContent = { off: "not listening", connecting: "connecting audio…", live: "listening live", failed: "audio failed" }[status.listening] || `audio ${status.listening}`;
  // The microphone is live only while this supervisor has the conversation.
  status.micOn = Boolean(mic && mine && listen);
  if (mic) for (const t of mic.getAudioTracks()) t.enabled = status.micOn;
  if (status.micAvailable) $("mic-note").textContent = status.micOn ? "Your microphone is on: the caller hears you." : "Your microphone is off until you take over.";
}

$("take-over").addEventListener("click", () => command("take_over"));
$("hand-back").addEventListener("click", () => command("hand_back"));
$("credentials").addEventListener("submit", (ev) => {
  ev.preventDefault();
  signIn($("secret").value.trim(), $("name").value.trim());
  $("secret").value = "";
});
const saved = sessionStorage.getItem(TOKEN_KEY);
if (saved) signIn(saved, "");
