// Parley's browser client: consent, microphone, one WebRTC connection to a session,
// the live transcript, the agent's state and each turn's latency — and reconnecting to
// the same session when the connection drops.

import { createSession, fetchTimeline, refreshToken, ServerUnreachable, TokenRejected } from "./api.js";
import { VoiceConnection } from "./connection.js";
import { TranscriptView } from "./transcript.js";

const $ = (id) => document.getElementById(id);
const ui = {
  state: $("agent-state"),
  banner: $("banner"),
  consent: $("consent-check"),
  start: $("start"),
  stop: $("stop"),
  mute: $("mute"),
  interrupt: $("interrupt"),
  latency: $("latency"),
  audio: $("agent-audio"),
};
const transcript = new TranscriptView($("transcript"));
const RECONNECT_DELAYS_MS = [250, 500, 1000, 2000, 3000];
const SERVER_LATENCY_NOTE =
  "Measured on the server: from the last speech sample it received to the first reply " +
  "audio it sent. The network both ways and your browser's buffering add to what you hear.";

// What a test (or a curious user in the console) can read: plain values, no control.
const status = {
  sessionId: null,
  workerId: null, // the fleet worker the session was dispatched to (null: this server)
  connected: false,
  reconnects: 0,
  restoredFromServer: false,
  agentState: "idle",
  handoff: "agent", // who answers: "agent", "requested" (a person is asked for), "human"
  agentRms: 0,
  agentRmsMax: 0,
  latencies: [],
  events: [],
};
window.parley = status;

let session = null; // { session_id, token, expires_at }
let mic = null;
let connection = null;
let running = false;
let muted = false;
let refreshTimer = null;
let audioContext = null;
let meterTimer = null;

function banner(message, kind = "error") {
  ui.banner.textContent = message;
  ui.banner.className = kind;
  ui.banner.hidden = !message;
}

function setAgentState(state) {
  status.agentState = state;
  ui.state.textContent = state;
  ui.state.dataset.state = state;
}

function setControls() {
  ui.start.disabled = running || !ui.consent.checked;
  ui.stop.disabled = !running;
  ui.mute.disabled = !status.connected;
  ui.interrupt.disabled = !status.connected;
}

function scheduleRefresh() {
  clearTimeout(refreshTimer);
  const msLeft = session.expires_at * 1000 - Date.now();
  refreshTimer = setTimeout(refresh, Math.max(1000, msLeft * 0.8));
}

async function refresh() {
  try {
    const renewed = await refreshToken(session.session_id, session.token);
    session = { ...session, ...renewed };
    scheduleRefresh();
  } catch (err) {
    if (err instanceof TokenRejected) {
      banner(`Your session has expired (${err.message}). Press Start to begin a new one.`);
      stop();
    } else {
      refreshTimer = setTimeout(refresh, 2000); // server briefly away: try again
    }
  }
}

function onServerEvent(message) {
  status.events.push(message.type);
  switch (message.type) {
    case "session.started":
      if (message.resumed) restoreTranscript();
      break;
    case "agent.state":
      setAgentState(message.state);
      break;
    case "transcript.partial":
      transcript.partial(message.turn_id, message.segment_id, message.text);
      break;
    case "transcript.final":
      transcript.final(message.turn_id, message.segment_id, message.text);
      break;
    case "transcript.revised":
      transcript.revised(message.turn_id, message.segment_id, message.text, message.previous_text);
      break;
    case "turn.ended":
      transcript.ended(message.turn_id);
      break;
    case "agent.text":
      transcript.agentText(message.turn_id, message.text);
      break;
    case "handoff.requested":
      status.handoff = "requested";
      transcript.notice("Asking for a person…", "handoff-requested");
      break;
    case "handoff.accepted":
      status.handoff = "human";
      transcript.notice("A person has joined the conversation.", "handoff-accepted");
      break;
    case "handoff.returned":
      status.handoff = "agent";
      transcript.notice("The person has left; the agent answers again.", "handoff-returned");
      break;
    case "human.text":
      transcript.humanText(message.turn_id, message.text);
      break;
    case "turn.interrupted":
      transcript.interrupted(message.turn_id, message.heard_text);
      break;
    case "turn.metrics":
      if (message.voice_to_voice_ms != null) {
        status.latencies.push(message.voice_to_voice_ms);
        transcript.latency(message.turn_id, message.voice_to_voice_ms);
        // The server's figure (its last speech sample in to its first reply frame out):
        // network, jitter buffer and playback come on top, so the page says so.
        ui.latency.textContent = `turn ${message.turn_id}: ${Math.round(message.voice_to_voice_ms)} ms voice-to-voice (server-side)`;
        ui.latency.title = SERVER_LATENCY_NOTE;
      }
      break;
    case "error":
      if (message.code === "session_taken_over") {
        // Another tab or window holds the session now: reconnecting from here would
        // take it back from there, and the two would fight. Stop; the user decides.
        stop({ end: false });
        banner("This session was opened in another tab or window — press Start to take it back.", "info");
        break;
      }
      if (message.code === "server_restarting") {
        // A draining server closes the connection next; the session is intact and the
        // reconnect (through the load balancer) resumes it on another process.
        banner("The server is restarting — reconnecting…", "info");
        break;
      }
      banner(`Server: ${message.message}`);
      break;
  }
}

async function restoreTranscript() {
  try {
    transcript.fromTimeline(await fetchTimeline(session.session_id, session.token));
    status.restoredFromServer = true;
  } catch (err) {
    banner(`Reconnected, but the transcript could not be loaded: ${err.message}`);
  }
}

function watchAgentAudio(stream) {
  ui.audio.srcObject = stream;
  if (!audioContext) return;
  // Chrome feeds a remote track to WebAudio only while it also plays in a media element.
  const source = audioContext.createMediaStreamSource(stream);
  const analyser = audioContext.createAnalyser();
  analyser.fftSize = 1024;
  source.connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  clearInterval(meterTimer);
  meterTimer = setInterval(() => {
    analyser.getFloatTimeDomainData(samples);
    let sum = 0;
    for (const v of samples) sum += v * v;
    status.agentRms = Math.sqrt(sum / samples.length);
    status.agentRmsMax = Math.max(status.agentRmsMax, status.agentRms);
  }, 50);
}

async function connect() {
  connection = new VoiceConnection({ iceServers: [] });
  connection.addEventListener("server-event", (e) => onServerEvent(e.detail));
  connection.addEventListener("agent-track", (e) => watchAgentAudio(e.detail));
  connection.addEventListener("open", () => {
    status.connected = true;
    banner("");
    if (muted) connection.send({ type: "mute" });
    setControls();
  });
  connection.addEventListener("dropped", () => {
    status.connected = false;
    setControls();
    if (running) reconnect();
  });
  await connection.open(session.webrtc_offer_url, session.token, mic);
}

async function reconnect() {
  // The same session, a fresh connection: the server restores the conversation.
  banner("Connection lost — reconnecting…", "info");
  setAgentState("idle");
  for (let attempt = 0; running; attempt++) {
    await new Promise((r) => setTimeout(r, RECONNECT_DELAYS_MS[Math.min(attempt, RECONNECT_DELAYS_MS.length - 1)]));
    if (!running) return;
    try {
      if (session.worker_id) {
        // A fleet: the worker may be gone. The control plane (this page's server) sends
        // the session back to its worker while it lives, else to another one, where it
        // resumes from the shared database.
        session = { ...session, ...(await refreshToken(session.session_id, session.token)) };
        status.workerId = session.worker_id;
      }
      await connect();
      status.reconnects += 1;
      return;
    } catch (err) {
      if (err instanceof TokenRejected) {
        banner(`Your session has expired (${err.message}). Press Start to begin a new one.`);
        stop();
        return;
      }
      const why = err instanceof ServerUnreachable ? "the server is unreachable" : err.message;
      banner(`Connection lost — ${why}; retrying…`, "info");
    }
  }
}

async function start() {
  banner("");
  try {
    mic = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
  } catch (err) {
    const denied = err && (err.name === "NotAllowedError" || err.name === "SecurityError");
    banner(
      denied
        ? "Microphone access was denied. Allow the microphone for this page in your browser's site settings, then press Start again."
        : `No microphone could be opened (${err && err.name ? err.name : err}).`,
    );
    return;
  }
  audioContext = audioContext || new AudioContext();
  running = true;
  setControls();
  try {
    session = session || (await createSession({ microphone: true, store_transcripts: true }));
    status.sessionId = session.session_id;
    status.workerId = session.worker_id || null;
    scheduleRefresh();
    await connect();
  } catch (err) {
    if (err instanceof ServerUnreachable) {
      banner("The Parley server is unreachable. Check that it is running, then press Start again.");
    } else if (err instanceof TokenRejected) {
      banner(`Your session has expired (${err.message}). Press Start to begin a new one.`);
      session = null;
    } else {
      banner(`Could not connect: ${err.message}`);
    }
    stop();
  }
}

// ``end``: end the session on the server too (the Stop button); false when the
// session lives on elsewhere (taken over by another tab).
function stop({ end = true } = {}) {
  running = false;
  status.connected = false;
  if (connection) {
    if (end) {
      connection.send({ type: "end" });
      // Ended on the server, its tokens revoked: the next Start creates a new session.
      session = null;
    }
    connection.close();
    connection = null;
  }
  if (mic) {
    mic.getTracks().forEach((t) => t.stop());
    mic = null;
  }
  clearTimeout(refreshTimer);
  clearInterval(meterTimer);
  setAgentState("idle");
  setControls();
}

ui.consent.addEventListener("change", setControls);
ui.start.addEventListener("click", start);
ui.stop.addEventListener("click", () => stop());
ui.mute.addEventListener("click", () => {
  muted = !muted;
  ui.mute.setAttribute("aria-pressed", String(muted));
  ui.mute.textContent = muted ? "Unmute" : "Mute";
  if (mic) mic.getAudioTracks().forEach((t) => (t.enabled = !muted));
  connection && connection.send({ type: muted ? "mute" : "unmute" });
});
ui.interrupt.addEventListener("click", () => connection && connection.send({ type: "interrupt" }));
setControls();
