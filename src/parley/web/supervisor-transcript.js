// The watched session's live transcript on the supervisor console: the caller's words
// (a live, greyed partial while they speak, a line once the turn ends), the agent's
// replies, a person's words, and the handoff notices, in the order they happen.

const name = (by) => String(by || "").replace(/^supervisor:/, "");

export const WHO = { caller: "Caller", agent: "Agent", human: "Person" };

export function element(tag, attrs = {}, text) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

export function transcriptLine(line) {
  const li = element("li", { class: line.role + (line.revised ? " revised" : ""), "data-turn": String(line.turn_id ?? "") });
  li.append(element("span", { class: "who" }, WHO[line.role] || line.role), element("span", { class: "text" }, line.text));
  return li;
}

export class LiveTranscript {
  constructor(list) {
    this.list = list;
    this.partials = new Map(); // turn id → { finals: Map(segment → text), partial }
  }

  clear() {
    this.list.replaceChildren();
    this.partials.clear();
  }

  // The server's transcript so far (the answer to "watch").
  lines(lines) {
    this.clear();
    for (const line of lines) {
      const li = this.line(line.role, line.text, line.turn_id);
      if (line.revised) li.classList.add("revised");
    }
  }

  #livePartial() {
    return this.list.querySelector("li.caller.live");
  }

  line(role, text, turnId, by) {
    const last = [...this.list.children].filter((el) => !el.classList.contains("live")).pop();
    if (role === "agent" && last && last.classList.contains("agent") && last.dataset.turn === String(turnId)) {
      last.querySelector(".text").textContent += ` ${text}`;
      return last;
    }
    const li = transcriptLine({ role, text, turn_id: turnId });
    if (by) {
      li.querySelector(".who").textContent = `${WHO[role]} (${name(by)})`;
      li.dataset.by = by;
    }
    // A caller speaking right now stays at the bottom.
    this.list.insertBefore(li, this.#livePartial());
    li.scrollIntoView({ block: "nearest" });
    return li;
  }

  notice(text, kind = "notice") {
    this.list.insertBefore(element("li", { class: `event ${kind}` }, text), this.#livePartial());
  }

  #drawPartial(turnId) {
    const entry = this.partials.get(turnId);
    let li = this.list.querySelector(`li.caller.live[data-turn="${turnId}"]`);
    if (!entry) {
      if (li) li.remove();
      return;
    }
    if (!li) {
      li = element("li", { class: "caller live", "data-turn": String(turnId) });
      this.list.append(li);
    }
    li.replaceChildren(element("span", { class: "who" }, "Caller"));
    const finals = [...entry.finals.entries()].sort((a, b) => a[0] - b[0]).map((e) => e[1]).join(" ");
    if (finals) li.append(element("span", { class: "final" }, `${finals} `));
    if (entry.partial) li.append(element("span", { class: "partial" }, entry.partial));
  }

  // One of the caller protocol's events of the watched session.
  event(ev) {
    const turnId = ev.turn_id;
    switch (ev.type) {
      case "transcript.revised": {
        // After the turn: its caller line gets the turn's corrected words.
        const lines = this.list.querySelectorAll(`li.caller:not(.live)[data-turn="${turnId}"]`);
        const li = lines[lines.length - 1];
        if (li) {
          li.querySelector(".text").textContent = ev.turn_text;
          li.classList.add("revised");
          li.title = "revised: the server heard the whole turn again";
        }
        break;
      }
      case "transcript.partial":
      case "transcript.final": {
        const entry = this.partials.get(turnId) || { finals: new Map(), partial: "" };
        if (ev.type === "transcript.partial") entry.partial = ev.text;
        else {
          entry.finals.set(ev.segment_id, ev.text);
          entry.partial = "";
        }
        this.partials.set(turnId, entry);
        this.#drawPartial(turnId);
        break;
      }
      case "turn.ended":
        this.partials.delete(turnId);
        this.#drawPartial(turnId);
        if (ev.text) this.line("caller", ev.text, turnId);
        break;
      case "agent.text":
        this.line("agent", ev.text, turnId);
        break;
      case "human.text":
        this.line("human", ev.text, turnId, ev.by);
        break;
      case "turn.interrupted": {
        const items = this.list.querySelectorAll(`li.agent[data-turn="${turnId}"]`);
        if (items.length) items[items.length - 1].classList.add("interrupted");
        break;
      }
      case "handoff.requested":
        this.notice(`A person is asked for (by ${ev.by || "the caller"}): ${ev.reason || ""}`, "handoff");
        break;
      case "handoff.accepted":
        this.notice(`${name(ev.by) || "A person"} took over the conversation.`, "handoff");
        break;
      case "handoff.returned":
        this.notice(`${name(ev.by) || "The person"} handed the conversation back to the agent.`, "handoff");
        break;
      case "call.ending":
        this.notice("The agent is ending the call.");
        break;
    }
  }
}
