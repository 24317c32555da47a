"""A WebSocket caller for Parley: streams audio like a microphone (real time, silence when
there is nothing to say), records every event and agent audio frame with its arrival time.

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
from websockets.typing import Subprotocol

from parley.audio.pcm import FRAME_SAMPLES, SAMPLE_RATE, dbfs

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


SILENCE = bytes(FRAME_SAMPLES * 2)


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

    session: dict[str, Any] | None = None
    """The session created for this call (when the URL carried no token)."""
    consent: dict[str, bool] | None = None
    """The consent the created session is given (``POST /v1/sessions``)."""

    async def __aenter__(self) -> CallClient:
        subprotocols: list[Subprotocol] | None = None
        url = self.url
        if "token=" not in self.url:
            self.session = await create_session(self.url, consent=self.consent or {})
            # The token travels as a subprotocol, not in the URL: proxies log URLs.
            subprotocols = [
                Subprotocol("parley"),
                Subprotocol(f"parley.token.{self.session['token']}"),
            ]
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

    async def __aexit__(self, *exc: object) -> None:
        await self._stop_tasks()
        if self._ws is not None:
            await self._ws.close()

    async def _stop_tasks(self) -> None:
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
        n = -(-pcm.size // FRAME_SAMPLES)
        padded = np.zeros(n * FRAME_SAMPLES, dtype="<i2")
        padded[: pcm.size] = pcm
        loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > SPEECH_SAMPLE_LEVEL)
        first = int(loud[0]) // FRAME_SAMPLES if loud.size else 0
        last = int(loud[-1]) // FRAME_SAMPLES if loud.size else n - 1
        frames = [padded[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES].tobytes() for i in range(n)]
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
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            await self.ws.send(self.next_mic_frame(loop.time()))
            next_at += FRAME_SECS
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    # ---- what comes back --------------------------------------------------------------------

    async def _read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for message in self.ws:
                now = loop.time()
                if isinstance(message, bytes):
                    self.audio.append(ReceivedAudio(now, message))
                else:
                    self.events.append((now, json.loads(message)))
                async with self._changed:
                    self._changed.notify_all()
        finally:
            self.close_code = self.ws.close_code
            self.closed.set()
            async with self._changed:
                self._changed.notify_all()

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
