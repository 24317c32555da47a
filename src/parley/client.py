"""A WebSocket caller for Parley: streams audio like a microphone (real time, silence when
there is nothing to say), records every event and agent audio frame with its arrival time.
With ``reconnect=True`` it follows its session through a drop (a killed worker, a drain's
1012): it refreshes its token through the control plane, connects where that sends it
and keeps one event log across connections (see :mod:`parley.client_reconnect`).

Used by ``parley call``, the benchmark and the end-to-end tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.protocol import State
from websockets.typing import Subprotocol

from parley.audio.pcm import FRAME_SAMPLES, SAMPLE_RATE, dbfs
from parley.client_reconnect import (
    ReconnectFailed,
    ReconnectPolicy,
    RetryLater,
    SessionRefused,
    absolute,
    refresh_token,
    retry,
    session_token,
    should_reconnect,
)

FRAME_SECS = FRAME_SAMPLES / SAMPLE_RATE
SPEECH_SAMPLE_LEVEL = 300  # |int16| above this counts as speech when finding its last sample


def http_base(ws_url: str) -> str:
    """``ws://host:port/anything`` → ``http://host:port`` (wss → https)."""
    parts = urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}"


async def create_session(ws_url: str, **body: Any) -> dict[str, Any]:
    """POST /v1/sessions on the server behind ``ws_url``: the session and its token."""
    async with httpx.AsyncClient(base_url=http_base(ws_url), timeout=10) as http:
        response = await http.post("/v1/sessions", json=body)
        response.raise_for_status()
        return dict(response.json())


def token_subprotocols(token: str) -> list[Subprotocol]:
    """The token travels as a subprotocol, not in the URL: proxies log URLs."""
    return [Subprotocol("parley"), Subprotocol(f"parley.token.{token}")]


SILENCE = bytes(FRAME_SAMPLES * 2)


def speech_frames(pcm: np.ndarray) -> tuple[list[bytes], int, int]:
    """int16 16 kHz speech as 20 ms microphone frames (the last one padded with silence),
    with the indices of the frames holding its first and last speech samples."""
    n = -(-pcm.size // FRAME_SAMPLES)
    padded = np.zeros(n * FRAME_SAMPLES, dtype="<i2")
    padded[: pcm.size] = pcm
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > SPEECH_SAMPLE_LEVEL)
    first = int(loud[0]) // FRAME_SAMPLES if loud.size else 0
    last = int(loud[-1]) // FRAME_SAMPLES if loud.size else n - 1
    frames = [padded[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES].tobytes() for i in range(n)]
    return frames, first, last


@dataclass
class ReceivedAudio:
    at: float
    pcm: bytes

    def level_dbfs(self) -> float:
        return dbfs(np.frombuffer(self.pcm, dtype="<i2"))


@dataclass
class _Utterance:
    frames: list[bytes]
    first_speech_frame: int
    last_speech_frame: int
    started: asyncio.Future[float]
    sent: asyncio.Future[float]


@dataclass
class CallClient:
    url: str
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    audio: list[ReceivedAudio] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    close_code: int | None = None
    _ws: ClientConnection | None = None
    _queue: list[_Utterance] = field(default_factory=list)
    _index: int = 0
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _closing: bool = False

    session: dict[str, Any] | None = None
    """The session created for this call (when the URL carried no token); after a
    reconnect, updated with the refreshed token answer (token, worker)."""
    consent: dict[str, bool] | None = None
    """The consent the created session is given (``POST /v1/sessions``)."""

    reconnect: bool = False
    """Follow the session through a drop (see :mod:`parley.client_reconnect`):
    ``closed`` is then set only when the call is over or the client gave up."""
    control_url: str | None = None
    """Where the token is refreshed on a reconnect (``http(s)://host:port``): the server
    the session was created on. Default: the server of ``url`` (right for a URL without
    a token, and for a plain server; give the control plane's for a worker's URL)."""
    policy: ReconnectPolicy = field(default_factory=ReconnectPolicy)
    reconnects: int = 0
    """Connections made again after a drop."""
    reconnect_error: ReconnectFailed | None = None
    """Why the client gave up reconnecting (``wait_for`` raises it too)."""

    async def __aenter__(self) -> CallClient:
        subprotocols: list[Subprotocol] | None = None
        url = self.url
        if "token=" not in self.url:
            self.session = await create_session(self.url, consent=self.consent or {})
            subprotocols = token_subprotocols(self.session["token"])
            given = str(self.session.get("websocket_url", ""))
            if given.startswith(("ws://", "wss://")):
                # A control plane's answer: the session lives on the worker it names.
                url = given.split("?", 1)[0]
        self._ws = await connect(url, max_size=2**22, subprotocols=subprotocols)
        self._tasks = [
            asyncio.create_task(self._read_loop()),
            asyncio.create_task(self._mic_loop()),
        ]
        return self

    @property
    def refresh_url(self) -> str:
        """The ``http(s)://`` base a reconnect refreshes the token at."""
        return self.control_url or http_base(self.url)

    def session_id(self) -> str | None:
        """The session's id: from its token answer, else from the server's greeting."""
        if self.session and self.session.get("session_id"):
            return str(self.session["session_id"])
        started = self.of_type("session.started")
        return str(started[0]["session_id"]) if started else None

    def note(self, type_: str, **fields: Any) -> None:
        """Put a local event (``client.…``, never from the server) in the event log."""
        self.events.append((asyncio.get_running_loop().time(), {"type": type_, **fields}))
        self._notify_soon()

    def _notify_soon(self) -> None:
        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        self._tasks.append(asyncio.ensure_future(notify()))

    async def __aexit__(self, *exc: object) -> None:
        await self._stop_tasks()
        if self._ws is not None:
            await self._ws.close()

    async def _stop_tasks(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task

    @property
    def ws(self) -> ClientConnection:
        assert self._ws is not None
        return self._ws

    # ---- the microphone ---------------------------------------------------------------------

    def say(self, pcm: np.ndarray) -> asyncio.Future[float]:
        """Queue int16 16 kHz speech; resolves to the loop time at which the frame holding
        its last speech sample was sent."""
        return self.say_timed(pcm)[1]

    def say_timed(self, pcm: np.ndarray) -> tuple[asyncio.Future[float], asyncio.Future[float]]:
        """:meth:`say`, also telling when the frame holding the first speech sample was
        sent: futures of the loop times of its first and last speech frames."""
        frames, first, last = speech_frames(pcm)
        loop = asyncio.get_running_loop()
        utterance = _Utterance(frames, first, last, loop.create_future(), loop.create_future())
        self._queue.append(utterance)
        return utterance.started, utterance.sent

    def next_mic_frame(self, now: float) -> bytes:
        """The next 20 ms of the microphone (queued speech, else silence); ``now`` is the
        loop time it is sent at, which resolves an utterance's future at its last
        speech frame."""
        if not self._queue:
            return SILENCE
        utt = self._queue[0]
        frame = utt.frames[self._index]
        if self._index == utt.first_speech_frame and not utt.started.done():
            utt.started.set_result(now)
        if self._index == utt.last_speech_frame and not utt.sent.done():
            utt.sent.set_result(now)
        self._index += 1
        if self._index == len(utt.frames):
            self._queue.pop(0)
            self._index = 0
        return frame

    async def _mic_loop(self) -> None:
        """Real-time frames while connected; between connections the queue waits (what
        is queued is said once the call is back) and the clock restarts."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not self.closed.is_set():
            ws = self._ws
            if ws is None or ws.state is not State.OPEN:
                await asyncio.sleep(FRAME_SECS)
                next_at = loop.time()
                continue
            with contextlib.suppress(ConnectionClosed):
                await ws.send(self.next_mic_frame(loop.time()))
            next_at += FRAME_SECS
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    # ---- what comes back --------------------------------------------------------------------

    async def _read_loop(self) -> None:
        try:
            while True:
                ws = self.ws
                with contextlib.suppress(ConnectionClosed):
                    async for message in ws:
                        await self._record(message)
                self.close_code = ws.close_code
                if not (self.reconnect and should_reconnect(ws.close_code)):
                    return
                if not await self._reconnect(ws.close_code):
                    return
        finally:
            self.finish()

    def finish(self) -> None:
        """The call is over: ``closed`` is set, and speech still queued, which will never
        be sent, fails its futures (with ``reconnect_error`` when the client gave up;
        cancelled when the caller closed the client)."""
        self.closed.set()
        error = self.reconnect_error or ConnectionError("the call ended before this was said")
        for utterance in self._queue:
            utterance.started.cancel()
            if self._closing:
                utterance.sent.cancel()
            elif not utterance.sent.done():
                utterance.sent.set_exception(error)
        self._queue.clear()
        self._index = 0
        self._notify_soon()

    async def _record(self, message: str | bytes) -> None:
        now = asyncio.get_running_loop().time()
        if isinstance(message, bytes):
            self.audio.append(ReceivedAudio(now, message))
        else:
            self.events.append((now, json.loads(message)))
        async with self._changed:
            self._changed.notify_all()

    # ---- after a drop -----------------------------------------------------------------------

    async def _reconnect(self, close_code: int | None) -> bool:
        """Back on the session (True), or given up (False, ``reconnect_error`` says why)."""
        self.note("client.reconnecting", close_code=close_code)
        sid = self.session_id()
        try:
            if sid is None:
                raise ReconnectFailed("the connection dropped before the session started")
            (ws, first), attempts = await retry(
                lambda: self._connect_again(sid), self.policy, f"reconnecting session {sid}"
            )
        except ReconnectFailed as exc:
            self.reconnect_error = exc
            self.note("client.reconnect_failed", error=str(exc))
            return False
        self._ws = ws
        self.close_code = None
        self.reconnects += 1
        worker = (self.session or {}).get("worker_id")
        self.note("client.reconnected", attempts=attempts, worker_id=worker)
        for message in first:
            await self._record(message)
        return True

    async def _connect_again(self, sid: str) -> tuple[ClientConnection, list[str | bytes]]:
        """One attempt: a fresh token (and worker) from the control plane, a connection
        there, and its first messages (to ``session.started``), or why not."""
        token = session_token(self.session, self.url)
        if token is None:
            raise SessionRefused("no token to refresh")
        answer = await refresh_token(self.refresh_url, sid, token)
        self.session = {**(self.session or {}), **answer}
        url = absolute(answer["websocket_url"], self.refresh_url, websocket=True)
        try:
            ws = await connect(
                url.split("?", 1)[0],
                max_size=2**22,
                subprotocols=token_subprotocols(answer["token"]),
                open_timeout=self.policy.connect_timeout,
            )
        except InvalidStatus as exc:
            raise RetryLater(f"connecting to {url.split('?', 1)[0]}: {exc}") from exc
        except WebSocketException as exc:
            raise RetryLater(f"connecting to {url.split('?', 1)[0]}: {exc!r}") from exc
        try:
            return ws, await self._first_message(ws)
        except BaseException:
            await ws.close()
            raise

    async def _first_message(self, ws: ClientConnection) -> list[str | bytes]:
        """The new connection's messages up to its first that is not an ``error``, unless
        the server refuses it (an ``error``, then a close whose code says whether to try
        again)."""
        messages: list[str | bytes] = []
        try:
            async with asyncio.timeout(self.policy.connect_timeout):
                while True:
                    message = await ws.recv()
                    messages.append(message)
                    if not isinstance(message, str) or json.loads(message).get("type") != "error":
                        return messages
        except ConnectionClosed as exc:
            errors = [json.loads(m).get("message") for m in messages if isinstance(m, str)]
            why = f"the server closed the new connection ({ws.close_code}: {errors})"
            if should_reconnect(ws.close_code):
                raise RetryLater(why) from exc
            raise SessionRefused(why) from exc

    async def send_json(self, obj: Any) -> None:
        await self.ws.send(json.dumps(obj))

    async def wait_for(
        self,
        type_: str,
        predicate: Callable[[dict[str, Any]], bool] = lambda e: True,
        *,
        timeout: float = 30.0,
        after: float = 0.0,
    ) -> tuple[float, dict[str, Any]]:
        """The first event of ``type_`` that arrived after loop time ``after`` and matches."""

        def found() -> tuple[float, dict[str, Any]] | None:
            for at, ev in self.events:
                if at >= after and ev.get("type") == type_ and predicate(ev):
                    return at, ev
            return None

        async with asyncio.timeout(timeout):
            async with self._changed:
                while (hit := found()) is None:
                    if self.reconnect_error is not None:
                        raise self.reconnect_error
                    if self.closed.is_set():
                        raise ConnectionError(f"connection closed while waiting for {type_}")
                    await self._changed.wait()
        return hit

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [ev for _, ev in self.events if ev.get("type") == type_]

    def first_loud_audio_after(self, at: float, threshold_dbfs: float = -40.0) -> float | None:
        for frame in self.audio:
            if frame.at >= at and frame.level_dbfs() > threshold_dbfs:
                return frame.at
        return None

    def audio_between(self, start: float, end: float = float("inf")) -> np.ndarray:
        chunks = [np.frombuffer(f.pcm, dtype="<i2") for f in self.audio if start <= f.at < end]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype="<i2")
