"""Supervision across processes, over Redis pub/sub.

Every process publishes what its live sessions do, and listens for commands meant for
them; a console connected to any process sees every session and acts on any of them.

Channels (``parley:sv:`` prefix):

- ``sessions``: a session's summary changed, or it ended (JSON). Each process keeps the
  others' summaries in memory; every process repeats its sessions' summaries every
  ``HEARTBEAT_SECS``, and one silent for ``PROCESS_TTL_SECS`` (killed) has its sessions
  forgotten.
- ``events``: a session's events for watching consoles (JSON).
- ``ctl:<process>``: a command for a session of that process (take over, hand back,
  transcript, listen), answered on ``reply:<process>`` of the asker.
- ``mic:<process>``: a supervisor's microphone for a session there (binary: a JSON
  header line, then PCM16 16 kHz).
- ``audio:<session>``: a session's caller and agent audio (binary: one byte ``c`` or
  ``a``, then PCM), published only while someone elsewhere listens (a lease, renewed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from parley.telemetry import get_logger
from parley.transports.supervision import AudioListener, SupervisionHub, Supervisor
from parley.voice.events import Event

log = get_logger(__name__)

PREFIX = "parley:sv:"
HEARTBEAT_SECS = 2.0
PROCESS_TTL_SECS = 6
"""A process silent this long is gone: its sessions leave every console."""
COMMAND_TIMEOUT_SECS = 5.0
OUTBOX = 2_000
"""Messages waiting for Redis: beyond this, audio is dropped first (it is live anyway)."""
LISTEN_LEASE_SECS = 6.0
"""A remote listener renews its lease every third of this; audio stops when it lapses."""


class RedisSupervisionBus:
    def __init__(self, client: aioredis.Redis, hub: SupervisionHub) -> None:
        self.redis = client
        self.hub = hub
        self.me = hub.process_id
        self.pubsub = client.pubsub(ignore_subscribe_messages=True)
        self.remote: dict[str, dict[str, Any]] = {}
        """Other processes' live sessions, by session id."""
        self._seen: dict[str, float] = {}
        """When each remote session's summary was last heard (repeated every heartbeat)."""
        self._outbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(OUTBOX)
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._leases: dict[str, float] = {}
        """Sessions here someone elsewhere listens to, until when."""
        self._listening: dict[str, set[AudioListener]] = {}
        self._renewing: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: set[asyncio.Task[Any]] = set()

    @classmethod
    async def connect(cls, url: str, hub: SupervisionHub) -> RedisSupervisionBus:
        client = aioredis.from_url(url, decode_responses=False)
        await client.ping()  # fail at start-up, not at the first supervisor
        bus = cls(client, hub)
        await bus.pubsub.subscribe(
            PREFIX + "sessions", PREFIX + "events", PREFIX + f"ctl:{bus.me}",
            PREFIX + f"reply:{bus.me}", PREFIX + f"mic:{bus.me}",
        )  # fmt: skip
        hub.bus = bus
        bus._tasks = [
            asyncio.create_task(bus._read(), name="supervision-bus"),
            asyncio.create_task(bus._heartbeat(), name="supervision-heartbeat"),
            asyncio.create_task(bus._publish_loop(), name="supervision-publish"),
        ]
        log.info("supervision bus connected", process=bus.me)
        return bus

    async def close(self) -> None:
        self.hub.bus = None
        for task in self._tasks:
            task.cancel()
        for task in [*self._tasks, *self._pending]:
            with contextlib.suppress(BaseException):
                await task
        with contextlib.suppress(Exception):
            for session_id in list(self.hub.local):
                await self._publish_json("sessions", {"process": self.me, "ended": session_id})
            await self.pubsub.aclose()
            await self.redis.aclose()

    # ---- publishing (never blocks the voice loop: each publish is a task) -----------------

    def _fire(self, channel: str, payload: bytes) -> None:
        """Queue a publish: one task sends them in order on one connection (a session's
        events and audio arrive in the order they happened)."""
        try:
            self._outbox.put_nowait((channel, payload))
        except asyncio.QueueFull:
            if channel.startswith("audio:"):
                return  # live audio that cannot keep up is dropped
            log.warning("supervision outbox full; an update is lost", channel=channel)

    async def _publish_loop(self) -> None:
        while True:
            channel, payload = await self._outbox.get()
            try:
                await self.redis.publish(PREFIX + channel, payload)
            except RedisError as exc:  # a lost update; the next one carries the state
                log.warning("supervision publish failed", channel=channel, error=repr(exc))

    async def _publish_json(self, channel: str, message: dict[str, Any]) -> None:
        await self.redis.publish(PREFIX + channel, json.dumps(message).encode())

    def session_changed(self, summary: dict[str, Any]) -> None:
        self._fire("sessions", json.dumps({"process": self.me, "summary": summary}).encode())

    def session_ended(self, session_id: str) -> None:
        self._leases.pop(session_id, None)
        self._fire("sessions", json.dumps({"process": self.me, "ended": session_id}).encode())

    def session_event(self, session_id: str, ev: Event, lines: list[dict[str, Any]]) -> None:
        message = {"process": self.me, "session_id": session_id, "event": ev, "lines": lines}
        self._fire("events", json.dumps(message).encode())

    def remote_sessions(self) -> list[dict[str, Any]]:
        return list(self.remote.values())

    # ---- acting on another process's session ----------------------------------------------

    async def command(
        self, summary: dict[str, Any], action: str, who: Supervisor, force: bool
    ) -> dict[str, Any]:
        reply_id = uuid.uuid4().hex
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[reply_id] = answer
        message = {
            "action": action,
            "session_id": summary["session_id"],
            "by": who.by,
            "holder": who.holder,
            "force": force,
            "reply_to": self.me,
            "reply_id": reply_id,
        }
        try:
            await self._publish_json(f"ctl:{summary['process']}", message)
            return await asyncio.wait_for(answer, COMMAND_TIMEOUT_SECS)
        except TimeoutError:
            return {"ok": False, "error": "the session's process did not answer"}
        except RedisError as exc:
            log.warning("supervision command not sent", action=action, error=repr(exc))
            return {"ok": False, "error": "the other processes cannot be reached"}
        finally:
            self._replies.pop(reply_id, None)

    def listen(self, summary: dict[str, Any], listener: AudioListener) -> Callable[[], None]:
        session_id = summary["session_id"]
        listeners = self._listening.setdefault(session_id, set())
        first = not listeners
        listeners.add(listener)
        if first:
            self._spawn(self.pubsub.subscribe(PREFIX + f"audio:{session_id}"))
            if session_id not in self._renewing:  # a quick stop and listen: one loop
                self._renewing.add(session_id)
                self._spawn(self._renew_lease(summary))

        def stop() -> None:
            current = self._listening.get(session_id)
            if current is None:
                return
            current.discard(listener)
            if not current:
                del self._listening[session_id]
                self._spawn(self.pubsub.unsubscribe(PREFIX + f"audio:{session_id}"))

        return stop

    async def _renew_lease(self, summary: dict[str, Any]) -> None:
        session_id = summary["session_id"]
        try:
            await self._renew(summary)
        finally:
            self._renewing.discard(session_id)

    async def _renew(self, summary: dict[str, Any]) -> None:
        session_id = summary["session_id"]
        while session_id in self._listening:
            message = {"action": "listen", "session_id": session_id, "reply_to": None}
            with contextlib.suppress(Exception):
                await self._publish_json(f"ctl:{summary['process']}", message)
            await asyncio.sleep(LISTEN_LEASE_SECS / 3)

    def human_audio(self, summary: dict[str, Any], holder: str, pcm: bytes) -> None:
        header = json.dumps({"session_id": summary["session_id"], "holder": holder}).encode()
        self._fire(f"mic:{summary['process']}", header + b"\n" + pcm)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    # ---- what arrives ---------------------------------------------------------------------

    async def _read(self) -> None:
        while True:
            try:
                message = await self.pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a dropped connection: redis-py reconnects
                log.warning("supervision bus read failed", error=repr(exc))
                await asyncio.sleep(1.0)
                continue
            if message is None or message.get("type") != "message":
                continue
            channel = message["channel"].decode()[len(PREFIX) :]
            try:
                await self._dispatch(channel, message["data"])
            except Exception as exc:  # one bad message never stops the bus
                log.warning("supervision message failed", channel=channel, error=repr(exc))

    async def _dispatch(self, channel: str, data: bytes) -> None:
        if channel.startswith("audio:"):
            session_id = channel[len("audio:") :]
            side = "caller" if data[:1] == b"c" else "agent"
            for listener in list(self._listening.get(session_id, ())):
                listener(side, data[1:])
            return
        if channel.startswith("mic:"):
            header, _, pcm = data.partition(b"\n")
            meta = json.loads(header)
            supervised = self.hub.local.get(meta["session_id"])
            if supervised is not None:  # who holds it is checked there
                supervised.human_audio(str(meta["holder"]), pcm)
            return
        message = json.loads(data)
        if channel == "sessions":
            self._on_sessions(message)
        elif channel == "events":
            if message.get("process") != self.me:
                self.hub.deliver(message["session_id"], message["event"], message["lines"])
        elif channel.startswith("ctl:"):
            # Its own task: a hand-back waits for a transcription, and the reader must
            # go on carrying audio and replies meanwhile.
            self._spawn(self._on_command(message))
        elif channel.startswith("reply:"):
            answer = self._replies.get(message.pop("reply_id", ""))
            if answer is not None and not answer.done():
                answer.set_result(message)

    def _on_sessions(self, message: dict[str, Any]) -> None:
        if message.get("process") == self.me:
            return
        if "ended" in message:
            self._seen.pop(message["ended"], None)
            if self.remote.pop(message["ended"], None) is not None:
                self.hub.session_gone(message["ended"])
        elif "summary" in message:
            session_id = message["summary"]["session_id"]
            changed = self.remote.get(session_id) != message["summary"]
            self.remote[session_id] = message["summary"]
            self._seen[session_id] = time.monotonic()
            if changed:
                self.hub.remote_changed()

    async def _on_command(self, message: dict[str, Any]) -> None:
        session_id = message["session_id"]
        supervised = self.hub.local.get(session_id)
        if message["action"] == "listen":
            if supervised is not None:
                if session_id not in self._leases:
                    supervised.listeners.add(self._audio_publisher(session_id))
                self._leases[session_id] = time.monotonic() + LISTEN_LEASE_SECS
            return
        if supervised is None:
            result: dict[str, Any] = {"ok": False, "error": "no such live session"}
        else:
            who = Supervisor(str(message["by"]), str(message["holder"]))
            result = await supervised.command(message["action"], who, bool(message["force"]))
        if message.get("reply_to"):
            await self._publish_json(
                f"reply:{message['reply_to']}", {"reply_id": message["reply_id"], **result}
            )

    def _audio_publisher(self, session_id: str) -> AudioListener:
        def publish(side: str, pcm: bytes) -> None:
            until = self._leases.get(session_id)
            if until is None or until < time.monotonic():
                self._leases.pop(session_id, None)
                supervised = self.hub.local.get(session_id)
                if supervised is not None:
                    supervised.listeners.discard(publish)
                return
            self._fire(f"audio:{session_id}", (b"c" if side == "caller" else b"a") + pcm)

        return publish

    async def _heartbeat(self) -> None:
        """Tell the others this process's sessions live (their summaries, again), and
        forget remote sessions nobody repeated lately: their process died, or their end
        was lost on the way."""
        while True:
            for supervised in list(self.hub.local.values()):
                self.session_changed(supervised.summary())
            now = time.monotonic()
            for session_id, seen in list(self._seen.items()):
                if now - seen > PROCESS_TTL_SECS:
                    del self._seen[session_id]
                    if self.remote.pop(session_id, None) is not None:
                        self.hub.session_gone(session_id)
            await asyncio.sleep(HEARTBEAT_SECS)
