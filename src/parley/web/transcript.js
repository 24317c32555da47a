// The live transcript: the user's words (partials provisional, replaced by finals,
// revised finals patched in place) and the agent's spoken text, turn by turn.

export class TranscriptView {
  constructor(list) {
    this.list = list;
    this.userItems = new Map(); // turn id → <li>
    this.agentItems = new Map();
    this.lastTurn = 0; // the latest turn seen: where a notice without a turn goes
  }

  clear() {
    this.list.replaceChildren();
    this.userItems.clear();
    this.agentItems.clear();
    this.lastTurn = 0;
  }

  #item(map, turnId, who) {
    let li = map.get(turnId);
    if (!li) {
      li = document.createElement("li");
      li.className = who;
      li.dataset.turn = String(turnId);
      const label = document.createElement("span");
      label.className = "who";
      label.textContent = who === "user" ? "You" : "Agent";
      li.append(label);
      map.set(turnId, li);
      this.#place(li, turnId);
    }
    return li;
  }

  #place(li, turnId) {
    // Keep turn order (the user's words before the agent's reply to them, and before
    // a person's words or a notice in that turn; those in the order they came).
    const rank = (el) => Number(el.dataset.turn) * 2 + (el.classList.contains("user") ? 0 : 1);
    this.lastTurn = Math.max(this.lastTurn, turnId);
    const after = [...this.list.children].find((el) => rank(el) > rank(li));
    this.list.insertBefore(li, after || null);
  }

  #segment(li, segmentId) {
    let span = li.querySelector(`[data-segment="${segmentId}"]`);
    if (!span) {
      span = document.createElement("span");
      span.dataset.segment = String(segmentId);
      const later = [...li.querySelectorAll("[data-segment]")].find((s) => Number(s.dataset.segment) > segmentId);
      li.insertBefore(span, later || null);
    }
    return span;
  }

  partial(turnId, segmentId, text) {
    const span = this.#segment(this.#item(this.userItems, turnId, "user"), segmentId);
    if (span.classList.contains("final")) return; // a late partial never replaces a final
    span.className = "partial";
    span.textContent = `${text} `;
  }

  final(turnId, segmentId, text) {
    const span = this.#segment(this.#item(this.userItems, turnId, "user"), segmentId);
    span.className = "final";
    span.textContent = `${text} `;
  }

  // A revised final: the server heard the whole turn again and changed this segment's
  // words. Shown in place, marked, with the words first heard on hover.
  revised(turnId, segmentId, text, previousText) {
    const li = this.#item(this.userItems, turnId, "user");
    const span = this.#segment(li, segmentId);
    span.className = "final revised";
    span.textContent = `${text} `;
    span.title = previousText ? `revised — first heard as “${previousText}”` : "revised";
    this.#markRevised(li);
  }

  #markRevised(li) {
    li.classList.add("revised");
    if (li.querySelector(".revised-badge")) return;
    const badge = document.createElement("span");
    badge.className = "revised-badge";
    badge.textContent = "revised";
    badge.title = "the server heard the whole turn again and corrected its words";
    li.querySelector(".who").after(badge);
  }

  ended(turnId) {
    // The turn's words are its finals: partials left in its row are stale (a turn the
    // server dropped for having no words gives its number to the next one).
    const li = this.userItems.get(turnId);
    if (li) for (const span of li.querySelectorAll(".partial")) span.remove();
  }

  userText(turnId, text) {
    const li = this.#item(this.userItems, turnId, "user");
    if (!li.querySelector(".final")) this.final(turnId, 0, text);
  }

  agentText(turnId, text) {
    const li = this.#item(this.agentItems, turnId, "agent");
    const span = document.createElement("span");
    span.className = "said";
    span.textContent = `${text} `;
    li.insertBefore(span, li.querySelector(".latency"));
  }

  // What a person who took the conversation over said (transcribed on the server).
  humanText(turnId, text) {
    const li = document.createElement("li");
    li.className = "human";
    li.dataset.turn = String(turnId ?? this.lastTurn);
    const label = document.createElement("span");
    label.className = "who";
    label.textContent = "Person";
    const said = document.createElement("span");
    said.className = "said";
    said.textContent = `${text} `;
    li.append(label, said);
    this.#place(li, Number(li.dataset.turn));
  }

  // A line about the conversation itself (a person asked for, joining, leaving).
  notice(text, kind) {
    const li = document.createElement("li");
    li.className = `notice ${kind}`;
    li.dataset.turn = String(this.lastTurn);
    li.textContent = text;
    this.#place(li, this.lastTurn);
  }

  latency(turnId, ms) {
    const li = this.#item(this.agentItems, turnId, "agent");
    let badge = li.querySelector(".latency");
    if (!badge) {
      badge = document.createElement("span");
      badge.className = "latency";
      li.append(badge);
    }
    badge.textContent = `${Math.round(ms)} ms`;
    badge.title =
      "server-side voice-to-voice: the server's last received speech sample to its first " +
      "reply frame sent (network and playback add to what you hear)";
  }

  interrupted(turnId, heardText) {
    const li = this.agentItems.get(turnId);
    if (!li) return;
    li.classList.add("interrupted");
    li.dataset.heard = heardText || "";
  }

  fromTimeline(timeline) {
    // Rebuilt from the server's record, not from what this page remembered.
    this.clear();
    for (const turn of timeline.turns) {
      if (turn.user_text) this.final(turn.seq, 0, turn.user_text);
      const result = turn.result || {};
      const said = result.spoken || result.heard;
      if (said) {
        this.agentText(turn.seq, said);
        if (turn.state === "interrupted") this.interrupted(turn.seq, result.heard);
      }
    }
    for (const e of timeline.events || []) {
      if (e.stage === "human.said" && e.data && e.data.text) this.humanText(e.turn ?? this.lastTurn, e.data.text);
    }
    // The stored user text of a revised turn is already the revision: mark it so.
    for (const s of timeline.segments || []) {
      const li = s.kind === "revised" ? this.userItems.get(s.turn) : null;
      if (li) this.#markRevised(li);
    }
  }
}
