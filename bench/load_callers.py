"""Many lean callers for the load benchmark, in one process.

``parley.client.CallClient`` keeps every event and audio frame and runs a microphone task
per call: right for a test, too heavy to drive 60 calls from the cores the worker under
test also uses. Here one microphone clock sends the next 20 ms frame of every live call
each tick, and a call's reader keeps only what voice-to-voice needs: when its agent starts
to be heard after the caller's last word, and when the agent listens again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx
import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.typing import Subprotocol

from parley.audio.pcm import FRAME_SAMPLES, SAMPLE_RATE, dbfs
from parley.client import SILENCE, speech_frames
from parley.testing import caller_speech
from v2v_prompts import INTRO_COUNT, UTTERANCES, WEBRTC_UTTERANCES, caller_intro

FRAME_SECS = FRAME_SAMPLES / SAMPLE_RATE
LOUD_DBFS = -40.0
CLOSE_SERVER_FULL = 4503


def refused(exc: BaseException) -> bool:
    """Whether a failed connect is the worker saying it is full (503 / 4503)."""
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code == 503
    if isinstance(exc, InvalidStatus):
        return exc.response.status_code == 503
    return False


@dataclass
class Clip:
    frames: list[bytes]
    last_speech_frame: int


def clip(text: str) -> Clip:
    frames, _, last = speech_frames(caller_speech(text))
    return Clip(frames, last)


@dataclass
class Turn:
    said: str
    sent_at: float = float("inf")
    """Loop time the frame with the caller's last speech sample was sent."""
    voice_to_voice_ms: float | None = None
    stages: dict[str, Any] | None = None
    """The server's own figures for the turn (its ``turn.metrics`` event)."""
    eou_delay: float | None = None
    """The silence the end-of-turn rule chose to wait (``turn.ended``), in seconds."""

    @property
    def beyond_silence_ms(self) -> float | None:
        """Voice-to-voice less the end-of-turn silence the rule chose: what the worker
        and engines took on top of the wait the caller's words called for."""
        if self.voice_to_voice_ms is None or self.eou_delay is None:
            return None
        return round(self.voice_to_voice_ms - self.eou_delay * 1000, 1)


@dataclass
class Caller:
    index: int
    ws: ClientConnection
    turns: list[Turn]
    speaking: list[bytes] = field(default_factory=list)
    last_frame: int = -1
    turn: Turn | None = None
    heard: asyncio.Event = field(default_factory=asyncio.Event)
    listening: asyncio.Event = field(default_factory=asyncio.Event)
    spoke: bool = False
    closed: bool = False

    def next_frame(self, now: float) -> bytes:
        if not self.speaking:
            return SILENCE
        frame = self.speaking.pop(0)
        if self.last_frame == 0 and self.turn is not None:
            self.turn.sent_at = now
        self.last_frame -= 1
        return frame

    def say(self, text: str, c: Clip) -> Turn:
        self.turn = Turn(text)
        self.turns.append(self.turn)
        self.heard.clear()
        self.listening.clear()
        self.speaking = list(c.frames)
        self.last_frame = c.last_speech_frame
        return self.turn

    async def read(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for message in self.ws:
                if isinstance(message, bytes):
                    turn = self.turn
                    if (
                        turn is not None
                        and turn.voice_to_voice_ms is None
                        and loop.time() >= turn.sent_at
                        and dbfs(np.frombuffer(message, dtype="<i2")) > LOUD_DBFS
                    ):
                        turn.voice_to_voice_ms = round((loop.time() - turn.sent_at) * 1000, 1)
                        self.heard.set()
                    continue
                event = json.loads(message)
                if event.get("type") == "turn.ended":
                    if self.turn is not None and self.turn.eou_delay is None:
                        self.turn.eou_delay = event.get("eou_delay")
                elif event.get("type") == "turn.metrics":
                    if self.turn is not None and self.turn.stages is None:
                        self.turn.stages = event
                elif event.get("type") == "agent.state":
                    if event["state"] == "speaking":
                        self.spoke = True
                    elif event["state"] == "listening" and self.spoke:
                        self.listening.set()
        except WebSocketException:
            pass
        finally:
            self.closed = True
            self.heard.set()
            self.listening.set()


class CallerPool:
    """Live callers against one server, each saying a turn about every ``turn_every``
    seconds once its agent listens; every turn's record lands in ``turns``."""

    def __init__(
        self, http: str, turn_every: float, turn_timeout: float, rng: random.Random
    ) -> None:
        self.http = http
        self.ws_url = http.replace("http", "ws", 1) + "/v1/ws"
        self.turn_every = turn_every
        self.turn_timeout = turn_timeout
        self.rng = rng
        self.turns: list[Turn] = []
        self.refused = 0
        self.errors: list[str] = []
        """Sessions that could not start for another reason (a 500, a refused upgrade)."""
        self.callers: list[Caller] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._started = 0
        pool = UTTERANCES + WEBRTC_UTTERANCES
        self._clips = {text: clip(text) for text in pool}
        self._pool = pool

    async def __aenter__(self) -> CallerPool:
        self._client = httpx.AsyncClient(base_url=self.http, timeout=30)
        self._tasks.append(asyncio.create_task(self._microphones()))
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        for caller in self.callers:
            with contextlib.suppress(Exception):
                await caller.ws.close()
        await self._client.aclose()

    @property
    def live(self) -> int:
        return sum(1 for c in self.callers if not c.closed)

    async def _microphones(self) -> None:
        """One clock for every call's microphone: 20 ms frames in real time."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            now = loop.time()
            for caller in self.callers:
                if not caller.closed:
                    with contextlib.suppress(WebSocketException):
                        await caller.ws.send(caller.next_frame(now))
            next_at += FRAME_SECS
            # A late tick sends the next frames sooner, as a microphone's buffer does.
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    def _text(self, caller: Caller, k: int) -> str:
        if k == 0 and caller.index < INTRO_COUNT:
            return caller_intro(caller.index)  # each session's prompts differ (LLM cache)
        return self._pool[(caller.index + k) % len(self._pool)]

    async def _connect(self) -> Caller | None:
        index = self._started
        self._started += 1
        try:
            answer = await self._client.post("/v1/sessions", json={})
            answer.raise_for_status()
            token = answer.json()["token"]
            ws = await connect(
                self.ws_url,
                max_size=2**22,
                subprotocols=[Subprotocol("parley"), Subprotocol(f"parley.token.{token}")],
            )
        except (httpx.HTTPStatusError, InvalidStatus) as exc:
            if refused(exc):
                self.refused += 1
            else:  # an overloaded worker's error is a figure of the step, not the end
                self.errors.append(f"{type(exc).__name__}: {exc}".splitlines()[0])
            return None
        caller = Caller(index, ws, self.turns)
        self.callers.append(caller)
        self._tasks.append(asyncio.create_task(caller.read()))
        return caller

    async def _converse(self, caller: Caller, first_delay: float, turns: int | None) -> None:
        loop = asyncio.get_running_loop()
        # The greeting first; a worker at capacity closes with 4503 instead.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(caller.listening.wait(), 30)
        if caller.closed:
            if caller.ws.close_code == CLOSE_SERVER_FULL:
                self.refused += 1
                self.callers.remove(caller)
            return
        await asyncio.sleep(first_delay)
        k = 0
        while turns is None or k < turns:
            started = loop.time()
            text = self._text(caller, k)
            spoken = self._clips.get(text) or self._clip(text)
            caller.say(text, spoken)
            k += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.turn_timeout + len(spoken.frames) * FRAME_SECS):
                    await caller.heard.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(caller.listening.wait(), 30)
            if caller.closed:
                return
            if turns is not None:  # back to back
                await asyncio.sleep(0.8)
                continue
            wait = started + self.turn_every * self.rng.uniform(0.8, 1.2) - loop.time()
            await asyncio.sleep(max(0.5, wait))

    def _clip(self, text: str) -> Clip:
        self._clips[text] = clip(text)
        return self._clips[text]

    async def single(self, turns: int) -> list[Turn]:
        """One caller, ``turns`` turns back to back; its turns (not kept in ``turns``)."""
        caller = await self._connect()
        if caller is None:
            raise RuntimeError("the worker refused the single session")
        mark = len(self.turns)
        await self._converse(caller, 0.5, turns)
        await caller.ws.close()
        self.callers.remove(caller)
        mine = self.turns[mark:]
        del self.turns[mark:]
        return mine

    async def grow_to(self, sessions: int) -> None:
        """Start callers until ``sessions`` were tried in this pool's ramp (refused ones
        count): each first speaks at a random moment of its first ``turn_every``."""
        while len(self.callers) + self.refused + len(self.errors) < sessions:
            caller = await self._connect()
            if caller is not None:
                delay = self.rng.uniform(0, self.turn_every)
                self._tasks.append(asyncio.create_task(self._converse(caller, delay, None)))
            await asyncio.sleep(0.1)  # callers arrive one by one, not in one burst
