// The session inspector: recent sessions, and each turn of one session as a waterfall.
// Everything comes from the server's stored record (GET /v1/sessions/{id}/inspection);
// the key or token typed in stays in this tab (sessionStorage), never in the URL.
import { fetchInspection, fetchRecentSessions, mintAdminToken } from "/api.js";

const $ = (selector) => document.querySelector(selector);
const sessionId = decodeURIComponent(location.pathname.replace(/^\/inspect\/?/, "")) || null;

function element(tag, attrs = {}, text) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function say(message) {
  const banner = $("#banner");
  banner.textContent = message;
  banner.hidden = !message;
}

// A JWT has three dot-separated parts; anything else is taken for the admin key.
async function tokenFrom(secret) {
  if (secret.split(".").length === 3) return secret;
  const minted = await mintAdminToken(secret);
  return minted.token;
}

// A cost summary (turn or session) as one line and a list of what each provider used.
function usedText(item) {
  const calls = `${item.requests} call${item.requests === 1 ? "" : "s"}`;
  if (item.stage === "llm") return `${calls}, ${item.input_tokens} tokens in, ${item.output_tokens} out`;
  if (item.stage === "tts") return `${calls}, ${item.characters} characters`;
  if (item.stage === "telephony") return `${calls}, ${item.seconds.toFixed(1)} s of call`;
  return `${calls}, ${item.seconds.toFixed(1)} s of audio`;
}

function money(amount, currency) {
  return `${amount.toFixed(6)} ${currency}`;
}

function costBlock(cost, label) {
  const block = element("div", { class: "cost" });
  if (!cost) return block;
  const unpriced = cost.items.filter((i) => i.cost === null);
  // A missing price makes the total unknown: say so, never show a partial sum as the cost.
  const total = cost.complete
    ? `${label}: ${money(cost.total, cost.currency)}`
    : `${label}: unknown — at least ${money(cost.total, cost.currency)}; no price for ${unpriced.map((i) => `${i.stage} ${i.provider}/${i.model}`).join(", ")}`;
  block.append(element("p", { class: cost.complete ? "cost-total" : "cost-total unpriced" }, cost.estimated ? `${total} (some token counts estimated)` : total));
  const list = element("ul", { class: "cost-items" });
  for (const item of cost.items) {
    const price = item.cost === null ? "no price" : money(item.cost, cost.currency);
    list.append(element("li", { "data-stage": item.stage }, `${item.stage} ${item.provider}/${item.model}: ${usedText(item)} — ${price}`));
  }
  block.append(list);
  return block;
}

function showSessions(list) {
  const body = $("#sessions tbody");
  body.replaceChildren();
  for (const s of list.sessions) {
    const row = element("tr");
    const link = element("a", { href: `/inspect/${encodeURIComponent(s.session_id)}` }, s.session_id);
    const cell = element("td");
    cell.append(link);
    const cost = !s.cost ? "—" : s.cost.complete ? money(s.cost.total, s.cost.currency) : "unknown";
    row.append(cell, element("td", {}, s.started_at), element("td", {}, s.status),
      element("td", {}, s.turn_state || "—"), element("td", {}, String(s.reconnects)),
      element("td", { class: "cost" }, cost));
    body.append(row);
  }
  $("#sessions").hidden = false;
}

function scale(turns) {
  // One time axis for the whole page, so turns compare at a glance.
  let lo = 0;
  let hi = 1000;
  for (const t of turns) {
    for (const b of t.bars) { lo = Math.min(lo, b.start_ms); hi = Math.max(hi, b.end_ms); }
    for (const m of t.marks) { lo = Math.min(lo, m.at_ms); hi = Math.max(hi, m.at_ms); }
  }
  return { lo, span: hi - lo || 1 };
}

const pct = (ms, axis) => `${(100 * (ms - axis.lo)) / axis.span}%`;

function barClass(label) {
  if (label === "user speech") return "bar speech";
  if (label === "end-of-turn wait") return "bar wait";
  return "bar";
}

function drawTurn(turn, axis) {
  const li = element("li", { class: `turn ${turn.state}`, "data-seq": String(turn.seq) });
  const v2v = turn.voice_to_voice_ms == null ? "" : ` — voice-to-voice ${Math.round(turn.voice_to_voice_ms)} ms`;
  li.append(element("h3", {}, `Turn ${turn.seq}: ${turn.state}${v2v}`));
  if (turn.user_text) li.append(element("p", { class: "said user" }, `caller: ${turn.user_text}`));
  if (turn.agent_text) li.append(element("p", { class: "said agent" }, `agent: ${turn.agent_text}`));
  if (turn.facts && turn.facts.length) li.append(element("p", { class: "said facts" }, `grounded on: ${turn.facts.join(" | ")}`));

  const fall = element("div", { class: "waterfall" });
  for (const bar of turn.bars) {
    const row = element("div", { class: "row", "data-stage": bar.label });
    row.append(element("span", { class: "name" }, bar.label));
    const track = element("div", { class: "track" });
    const b = element("div", { class: barClass(bar.label) });
    b.style.left = pct(bar.start_ms, axis);
    b.style.width = `${(100 * (bar.end_ms - bar.start_ms)) / axis.span}%`;
    b.append(element("span", { class: "ms" }, `${Math.round(bar.end_ms - bar.start_ms)} ms`));
    track.append(b);
    const zero = element("div", { class: "zero" });
    zero.style.left = pct(0, axis);
    track.append(zero);
    row.append(track);
    fall.append(row);
  }
  const marksRow = element("div", { class: "row", "data-stage": "events" });
  marksRow.append(element("span", { class: "name" }, "events"));
  const track = element("div", { class: "track" });
  for (const m of turn.marks) {
    const tick = element("div", { class: "mark", title: `${m.label}: ${Math.round(m.at_ms)} ms`, "data-mark": m.label });
    tick.style.left = pct(m.at_ms, axis);
    track.append(tick);
  }
  marksRow.append(track);
  fall.append(marksRow);
  li.append(fall);

  const facts = element("p", { class: "facts" });
  for (const m of turn.marks) facts.append(element("span", { "data-mark": m.label }, `${m.label} ${Math.round(m.at_ms)} ms`));
  const eot = turn.end_of_turn || {};
  // The audio model is not asked when the words decide alone: say so rather than hide it.
  const evidence = [
    eot.eou_probability != null ? `audio ${eot.eou_probability.toFixed(2)}` : "audio not asked",
    eot.eou_text_probability != null ? `words ${eot.eou_text_probability.toFixed(2)}` : null,
    eot.eou_delay != null ? `waited ${Math.round(eot.eou_delay * 1000)} ms` : null,
  ].filter(Boolean);
  if (eot.eou_probability != null || eot.eou_text_probability != null || eot.eou_delay != null) {
    facts.append(element("span", { class: "eou" }, `end of turn: ${evidence.join(", ")}`));
  }
  for (const tool of turn.tools) facts.append(element("span", { class: "tool" }, `tool ${tool.tool}: ${tool.status} in ${tool.duration_ms ?? "?"} ms`));
  for (const f of turn.failovers || []) facts.append(element("span", { class: "error" }, `failover ${f.stage}: ${f.from} (${f.kind}) → ${f.to ?? "none left"}`));
  for (const err of turn.errors) facts.append(element("span", { class: "error" }, `error ${err.code}${err.stage ? ` (${err.stage})` : ""}`));
  if (turn.interrupted) facts.append(element("span", { class: "interruption" }, `interrupted (${turn.interrupted.reason}, ${turn.interrupted.words ?? 0} words from the caller); the caller heard: “${turn.heard ?? ""}”`));
  for (const o of turn.overlaps_ignored) facts.append(element("span", { class: "overlap" }, `ignored ${o.kind}`));
  const rev = turn.revision;
  if (rev) {
    const took = rev.revise_ms != null ? ` in ${Math.round(rev.revise_ms)} ms` : "";
    const text = rev.outcome === "revised"
      ? `transcript revised by ${rev.recognizer}${took}; first heard: “${rev.previous_text ?? ""}”`
      : `transcript revision: ${rev.outcome}${rev.reason ? ` (${rev.reason})` : ""}`;
    facts.append(element("span", { class: "revision", "data-outcome": rev.outcome }, text));
  }
  li.append(facts);
  if (turn.cost) li.append(costBlock(turn.cost, "cost"));
  return li;
}

// The summary of the turns that left the prompt's window, and the conversation's state.
function showMemory(memory) {
  const state = Object.entries(memory.state || {});
  $("#memory-summary").textContent = memory.summary
    ? `summary of the first ${memory.covered} caller turns: ${memory.summary}`
    : "";
  $("#memory-state").replaceChildren(
    ...state.flatMap(([k, v]) => [
      element("dt", {}, k),
      element("dd", {}, typeof v === "string" ? v : JSON.stringify(v)),
    ]),
  );
  $("#memory").hidden = !memory.summary && !state.length;
}

function showSession(data) {
  $("#session-title").textContent = `Session ${data.session_id}`;
  const events = $("#session-events");
  events.replaceChildren();
  for (const e of data.session_events) {
    const detail = Object.entries(e.data || {}).map(([k, v]) => `${k} ${v}`).join(", ");
    events.append(element("li", { "data-stage": e.stage }, `${e.at} ${e.stage} ${detail}`));
  }
  showMemory(data.memory || {});
  const sessionCost = $("#session-cost");
  sessionCost.replaceChildren();
  if (data.cost) sessionCost.append(costBlock(data.cost, "session cost"));
  const axis = scale(data.turns);
  $("#turns").replaceChildren(...data.turns.map((t) => drawTurn(t, axis)));
  $("#session").hidden = false;
}

async function open(secret) {
  say("");
  try {
    const token = await tokenFrom(secret);
    sessionStorage.setItem("parley-inspector-token", token);
    if (sessionId) showSession(await fetchInspection(sessionId, token));
    else showSessions(await fetchRecentSessions(token));
    $("#credentials").hidden = true;
  } catch (err) {
    sessionStorage.removeItem("parley-inspector-token");
    say(`Cannot open the inspector: ${err.message}`);
  }
}

$("#credentials").addEventListener("submit", (ev) => {
  ev.preventDefault();
  open($("#secret").value.trim());
});
const saved = sessionStorage.getItem("parley-inspector-token");
if (saved) open(saved);
window.parleyInspector = { open };
