"""Supervision: what supervisors see of live sessions, and how they act on them.

Each live voice session is attached here while a transport holds it
(:class:`SupervisedSession`): its events keep a summary (state, handoff, latest turn)
and a transcript, and its audio (the caller's and the agent's) reaches whoever listens
in. Supervisor consoles (:class:`Console`) get the session list, every handoff request
with the transcript so far, and the live events of the session they watch; they take a
session over and hand it back.

With Redis configured (``handoff.redis_url``) a :class:`SupervisionBus` joins the hubs of
every process: a console on one process sees and takes over sessions living on another
(``transports/supervision_bus.py``). Without it this process's sessions are all there is.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from parley.telemetry import get_logger
from parley.voice.events import Event
from parley.voice.session import VoiceSession

log = get_logger(__name__)

TRANSCRIPT_LINES = 500
"""Lines of transcript kept per live session for a supervisor who opens it late."""
BROADCAST_SECS = 0.25
"""Session-list updates to consoles are batched this long (states change every turn)."""
WATCHED_EVENTS = frozenset(
    {
        "transcript.partial",
        "transcript.final",
        "transcript.revised",
        "turn.ended",
        "agent.text",
        "agent.state",
        "human.text",
        "turn.interrupted",
        "handoff.requested",
        "handoff.accepted",
        "handoff.returned",
        "handoff.pending",
        "call.ending",
    }
)
"""What a watching console is sent of the caller's protocol (no metrics, no audio)."""

AudioListener = Callable[[str, bytes], None]
"""Called with ("caller" | "agent", PCM16 16 kHz) as a session's audio passes."""


@dataclass(frozen=True)
class Supervisor:
    """Who acts: ``by`` names them in events and records (``supervisor:Maria``);
    ``holder`` tells apart two with one name (it comes from their token)."""

    by: str
    holder: str


class Console(Protocol):
    """A connected supervisor console."""

    who: Supervisor
    watching: str | None

    def send(self, message: dict[str, Any]) -> None: ...


class SupervisionBus(Protocol):
    """The link between processes (Redis), as the hub uses it."""

    def session_changed(self, summary: dict[str, Any]) -> None: ...
    def session_ended(self, session_id: str) -> None: ...
    def session_event(self, session_id: str, ev: Event, lines: list[dict[str, Any]]) -> None: ...
    def remote_sessions(self) -> list[dict[str, Any]]: ...
    async def command(
        self, summary: dict[str, Any], action: str, who: Supervisor, force: bool
    ) -> dict[str, Any]: ...
    def listen(self, summary: dict[str, Any], listener: AudioListener) -> Callable[[], None]: ...
    def human_audio(self, summary: dict[str, Any], holder: str, pcm: bytes) -> None: ...


class SupervisedSession:
    """One live session as supervisors see it (fed by its transport's sink)."""

    def __init__(self, hub: SupervisionHub, session: VoiceSession, transport: str) -> None:
        self.hub = hub
        self.session = session
        self.transport = transport
        self.transcript: deque[dict[str, Any]] = deque(maxlen=TRANSCRIPT_LINES)
        self.listeners: set[AudioListener] = set()
        self.latest_user = ""
        self.latest_agent = ""
        self.handoff_reason = ""
        self.handoff_by = ""
        self.detached = False
        """The session closed: what it still says (while closing) is nobody's business."""
        self.published: dict[str, Any] | None = None
        """The summary last told to consoles and other processes."""
        self._agent_turn: int | None = None
        for message in session.history.messages:  # a resumed conversation's earlier turns
            role = "caller" if message.role == "user" else "agent"
            if message.content.startswith("[a human colleague said:]"):
                role = "human"
            self.transcript.append({"role": role, "text": message.content, "turn_id": None})

    @property
    def session_id(self) -> str:
        return self.session.session_id

    def summary(self) -> dict[str, Any]:
        s = self.session
        return {
            "session_id": s.session_id,
            "transport": self.transport,
            "state": s.state,
            "handoff": s.handoff_state,
            "handoff_reason": self.handoff_reason,
            "handoff_by": self.handoff_by,
            "supervisor": getattr(s, "_supervisor", None),
            "turns": s._turn_count,
            "latest_user": self.latest_user,
            "latest_agent": self.latest_agent,
            "process": self.hub.process_id,
        }

    # ---- fed by the session's sink -------------------------------------------------------

    def event(self, ev: Event) -> None:
        kind = ev.get("type", "")
        if kind not in WATCHED_EVENTS or self.detached:
            return
        if kind == "transcript.revised":
            self._revise_line(ev)
        line = self._line(ev)
        if line is not None:
            self.transcript.append(line)
        if kind == "handoff.requested":
            self.handoff_reason = str(ev.get("reason", ""))
            self.handoff_by = str(ev.get("by", ""))
        elif kind == "handoff.returned":
            self.handoff_reason = self.handoff_by = ""
        self.hub.session_event(self, ev)

    def _line(self, ev: Event) -> dict[str, Any] | None:
        kind = ev["type"]
        turn_id = ev.get("turn_id")
        if kind == "turn.ended":
            self.latest_user = str(ev.get("text", ""))
            return {"role": "caller", "text": self.latest_user, "turn_id": turn_id}
        if kind == "agent.text":
            # One reply says several sentences: the summary shows the reply so far.
            text = str(ev.get("text", ""))
            if self._agent_turn == turn_id and self.latest_agent:
                self.latest_agent = f"{self.latest_agent} {text}"
            else:
                self.latest_agent = text
            self._agent_turn = turn_id
            return {"role": "agent", "text": text, "turn_id": turn_id}
        if kind == "human.text":
            return {"role": "human", "text": str(ev.get("text", "")), "turn_id": turn_id}
        return None

    def _revise_line(self, ev: Event) -> None:
        """A revised final replaces the words of its turn's caller line (a console that
        opens the session later reads the corrected words)."""
        text = str(ev.get("turn_text", ""))
        for line in reversed(self.transcript):
            if line["role"] == "caller" and line["turn_id"] == ev.get("turn_id"):
                if line["text"] == self.latest_user:
                    self.latest_user = text
                line["text"] = text
                line["revised"] = True
                return

    def caller_audio(self, pcm: bytes) -> None:
        if self.detached:
            return
        for listener in list(self.listeners):
            listener("caller", pcm)

    def agent_audio(self, pcm: bytes) -> None:
        if self.detached:
            return
        for listener in list(self.listeners):
            listener("agent", pcm)

    # ---- acted on by a supervisor (here, or through the bus) ------------------------------

    async def command(self, action: str, who: Supervisor, force: bool = False) -> dict[str, Any]:
        session = self.session
        if action == "take_over":
            if session.take_over(who.by, who.holder, force=force):
                return {"ok": True}
            if session.holder is not None and session.holder != who.holder:
                return {
                    "ok": False,
                    "error": "another supervisor has it",
                    "held_by": session._supervisor,
                }
            return {"ok": False, "error": "it cannot be taken over now"}
        if action == "hand_back":
            if session.holder is None:
                return {"ok": False, "error": "no person has it"}
            if session.holder != who.holder and not force:
                return {
                    "ok": False,
                    "error": "another supervisor has it",
                    "held_by": session._supervisor,
                }
            ok = await session.hand_back(who.by)
            return {"ok": True} if ok else {"ok": False, "error": "it is being handed back"}
        if action == "transcript":
            return {"ok": True, "lines": list(self.transcript)}
        return {"ok": False, "error": f"unknown action {action!r}"}

    def human_audio(self, holder: str, pcm: bytes) -> None:
        """A supervisor's microphone: to the caller only while ``holder`` has the session."""
        if self.session.holder == holder:
            self.session.human_audio(pcm)


def _held_by_another(by: str | None) -> dict[str, Any]:
    return {"ok": False, "error": "another supervisor has it", "held_by": by}


class SupervisionHub:
    """Every live session of this process, every console connected to it, and (with a
    bus) the sessions of the other processes."""

    def __init__(self, bus: SupervisionBus | None = None) -> None:
        self.process_id = uuid.uuid4().hex[:12]
        self.bus = bus
        self.local: dict[str, SupervisedSession] = {}
        self.consoles: set[Console] = set()
        self._broadcast: asyncio.TimerHandle | None = None
        self._gone_hooks: dict[str, set[Callable[[], None]]] = {}
        """Called once a session ends here or elsewhere (its listeners close)."""

    # ---- sessions coming and going -------------------------------------------------------

    def attach(self, session: VoiceSession, transport: str) -> SupervisedSession:
        supervised = SupervisedSession(self, session, transport)
        self.local[session.session_id] = supervised
        session.caller_audio_tap = supervised.caller_audio
        self.sessions_changed(supervised)
        return supervised

    def detach(self, supervised: SupervisedSession) -> None:
        supervised.detached = True
        if self.local.get(supervised.session_id) is supervised:
            del self.local[supervised.session_id]
            supervised.session.caller_audio_tap = None
            supervised.listeners.clear()
            if self.bus is not None:
                self.bus.session_ended(supervised.session_id)
            self.session_gone(supervised.session_id)

    def on_gone(self, session_id: str, hook: Callable[[], None]) -> Callable[[], None]:
        """Call ``hook`` once the session ends; returns the way to forget it."""
        hooks = self._gone_hooks.setdefault(session_id, set())
        hooks.add(hook)

        def forget() -> None:
            hooks.discard(hook)
            if not hooks and self._gone_hooks.get(session_id) is hooks:
                del self._gone_hooks[session_id]

        return forget

    def session_gone(self, session_id: str) -> None:
        """A session ended here or on another process."""
        for hook in list(self._gone_hooks.pop(session_id, ())):
            hook()
        for console in list(self.consoles):
            console.send({"type": "session.ended", "session_id": session_id})
        self._schedule_broadcast()

    # ---- what consoles see ----------------------------------------------------------------

    def sessions(self) -> list[dict[str, Any]]:
        mine = [s.summary() for s in self.local.values()]
        seen = {s["session_id"] for s in mine}
        remote = self.bus.remote_sessions() if self.bus is not None else []
        return mine + [s for s in remote if s["session_id"] not in seen]

    def find(self, session_id: str) -> dict[str, Any] | None:
        for summary in self.sessions():
            if summary["session_id"] == session_id:
                return summary
        return None

    def session_event(self, supervised: SupervisedSession, ev: Event) -> None:
        lines = list(supervised.transcript) if ev["type"] == "handoff.requested" else []
        self.deliver(supervised.session_id, ev, lines)
        if self.bus is not None:
            self.bus.session_event(supervised.session_id, ev, lines)
        self.sessions_changed(supervised)

    def sessions_changed(self, supervised: SupervisedSession) -> None:
        """Tell consoles and other processes, when the summary changed (a partial
        transcript, say, changes nothing in it)."""
        summary = supervised.summary()
        if summary == supervised.published:
            return
        supervised.published = summary
        if self.bus is not None:
            self.bus.session_changed(summary)
        self._schedule_broadcast()

    def deliver(self, session_id: str, ev: Event, lines: list[dict[str, Any]]) -> None:
        """A session's event (from here or another process) to the consoles concerned:
        a handoff request to all, with the transcript so far; the rest to its watchers."""
        for console in list(self.consoles):
            if ev["type"] == "handoff.requested":
                console.send(
                    {
                        "type": "handoff.requested",
                        "session_id": session_id,
                        "reason": ev.get("reason", ""),
                        "by": ev.get("by", ""),
                        "transcript": lines,
                    }
                )
            if console.watching == session_id:
                console.send({"type": "session.event", "session_id": session_id, "event": ev})

    def _schedule_broadcast(self) -> None:
        if self._broadcast is not None or not self.consoles:
            return
        loop = asyncio.get_running_loop()
        self._broadcast = loop.call_later(BROADCAST_SECS, self._send_sessions)

    def remote_changed(self) -> None:
        """The bus saw another process's sessions change."""
        self._schedule_broadcast()

    def _send_sessions(self) -> None:
        self._broadcast = None
        message = {"type": "sessions", "sessions": self.sessions()}
        for console in list(self.consoles):
            console.send(message)

    # ---- what consoles do -----------------------------------------------------------------

    async def command(
        self, session_id: str, action: str, who: Supervisor, *, force: bool = False
    ) -> dict[str, Any]:
        """``take_over`` / ``hand_back`` / ``transcript`` on a session, wherever it lives;
        ``force``: from whoever holds it (they left without handing back)."""
        supervised = self.local.get(session_id)
        if supervised is not None:
            return await supervised.command(action, who, force)
        summary = self.find(session_id)
        if summary is None or self.bus is None:
            return {"ok": False, "error": "no such live session"}
        return await self.bus.command(summary, action, who, force)

    def listen(self, session_id: str, listener: AudioListener) -> Callable[[], None] | None:
        """Hear a session's caller and agent; returns the way to stop (None: not live)."""
        supervised = self.local.get(session_id)
        if supervised is not None:
            supervised.listeners.add(listener)
            return lambda: supervised.listeners.discard(listener)
        summary = self.find(session_id)
        if summary is None or self.bus is None:
            return None
        return self.bus.listen(summary, listener)

    def human_audio(self, session_id: str, holder: str, pcm: bytes) -> None:
        """The supervisor's microphone: reaches the caller only while ``holder`` has it
        (checked where the session lives)."""
        supervised = self.local.get(session_id)
        if supervised is not None:
            supervised.human_audio(holder, pcm)
            return
        if self.bus is not None:
            summary = self.find(session_id)
            if summary is not None and summary.get("handoff") == "human":
                self.bus.human_audio(summary, holder, pcm)

    async def close(self) -> None:
        if self._broadcast is not None:
            self._broadcast.cancel()
            self._broadcast = None
