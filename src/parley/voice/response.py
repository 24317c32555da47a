"""One agent reply: LLM stream → sentence chunker → TTS → paced playout, behind a gate.

A reply may be prepared before the turn is confirmed (preemptive generation): it runs
the LLM and synthesises audio, but plays nothing until :meth:`open_gate` is called.
Cancelling the reply's task stops the LLM and TTS at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from parley.config import Settings
from parley.engines import ChatMessage, EngineError, Engines
from parley.voice.chunker import SentenceChunker
from parley.voice.events import SessionSink, event
from parley.voice.phrases import SpokenPhrase
from parley.voice.playout import AudioPlayout

_DONE = object()


def _now() -> float:
    # The voice loop's one clock (see SessionCore._now).
    return asyncio.get_running_loop().time()


@dataclass
class ReplyMetrics:
    """Loop times (the voice loop's one clock) of each step of a reply."""

    llm_started: float | None = None
    llm_first_token: float | None = None
    tts_started: float | None = None
    tts_first_audio: float | None = None
    filler_at: float | None = None
    """When the filler began (the answer's first audio was late); it is not the answer."""

    def as_ms(self) -> dict[str, float | None]:
        def diff(a: float | None, b: float | None) -> float | None:
            return round((b - a) * 1000, 1) if a is not None and b is not None else None

        return {
            "llm_ttft_ms": diff(self.llm_started, self.llm_first_token),
            "tts_ttfb_ms": diff(self.tts_started, self.tts_first_audio),
        }


@dataclass
class Reply:
    turn_id: int
    user_text: str | None
    """The transcript replied to; None for a scripted reply (the greeting)."""
    playout: AudioPlayout
    metrics: ReplyMetrics = field(default_factory=ReplyMetrics)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    gate_opened_at: float | None = None
    task: asyncio.Task[None] | None = None
    spoken: list[str] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    """The LLM's text as generated (markdown and all): what the history keeps."""
    first_audio: asyncio.Event = field(default_factory=asyncio.Event)
    started_speaking: bool = False
    user_turn: Any = None
    """The session's record of the user turn this replies to (for metrics)."""
    envelope: Any = None
    """The action envelope this reply speaks (when the agent has tools)."""
    envelope_ready: asyncio.Event = field(default_factory=asyncio.Event)
    facts: list[str] = field(default_factory=list)
    """The knowledge file's facts this reply was grounded on (quoted or restated)."""

    @property
    def confirmed(self) -> bool:
        return self.gate.is_set()

    def open_gate(self) -> None:
        if not self.gate.is_set():
            self.gate_opened_at = _now()
        self.gate.set()

    def full_text(self) -> str:
        return " ".join(self.spoken)

    def raw_text(self) -> str:
        return "".join(self.raw).strip()


async def run_reply(
    reply: Reply,
    *,
    engines: Engines,
    settings: Settings,
    sink: SessionSink,
    prompt: Sequence[ChatMessage] | None,
    script: str | None = None,
    decide: Callable[[], Awaitable[Any]] | None = None,
    on_speaking: Callable[[Reply], None],
    filler: SpokenPhrase | None = None,
) -> None:
    """Produce and play ``reply``. Raises EngineError or TimeoutError on failure.

    ``decide``: ask for the whole action envelope (the agent has tools) instead of
    streaming free text; its ``spoken_text`` is then what is said. ``filler``: said once
    if the answer has no audio ``agent.filler_after_ms`` after the gate opened."""
    sentences: asyncio.Queue[object] = asyncio.Queue()
    clips: asyncio.Queue[object] = asyncio.Queue()

    async def think() -> None:
        with _stage("llm"):
            await _think()

    async def _think() -> None:
        chunker = SentenceChunker()
        if script is not None:
            reply.raw.append(script)
            for s in chunker.push(script) + chunker.flush():
                sentences.put_nowait(s)
            sentences.put_nowait(_DONE)
            return
        if decide is not None:
            reply.metrics.llm_started = _now()
            async with asyncio.timeout(settings.llm.timeout):
                reply.envelope = await decide()
            reply.metrics.llm_first_token = _now()
            reply.envelope_ready.set()
            text = reply.envelope.spoken_text
            reply.raw.append(text)
            for s in chunker.push(text) + chunker.flush():
                sentences.put_nowait(s)
            sentences.put_nowait(_DONE)
            return
        assert prompt is not None
        reply.metrics.llm_started = _now()
        stream = engines.llm.stream_chat(prompt)
        try:
            async with asyncio.timeout(settings.llm.timeout):
                async for delta in stream:
                    if reply.metrics.llm_first_token is None:
                        reply.metrics.llm_first_token = _now()
                    reply.raw.append(delta)
                    for s in chunker.push(delta):
                        sentences.put_nowait(s)
                    if sentences.qsize() and not reply.first_audio.is_set():
                        # First-chunk priority: on two cores the LLM writing ahead would
                        # halve the TTS speed exactly when the first audio is awaited.
                        await reply.first_audio.wait()
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        for s in chunker.flush():
            sentences.put_nowait(s)
        sentences.put_nowait(_DONE)

    async def synthesize() -> None:
        with _stage("tts"):
            await _synthesize()

    async def _synthesize() -> None:
        while (text := await sentences.get()) is not _DONE:
            assert isinstance(text, str)
            if reply.metrics.tts_started is None:
                reply.metrics.tts_started = _now()
            # The sentence goes to the speaker with its first audio, and its chunks follow
            # as they come: a streaming TTS is heard after its first chunk, not its last.
            chunks: asyncio.Queue[np.ndarray | None] = asyncio.Queue()
            heard_of = False
            stream = engines.tts.synthesize(text)
            try:
                async for audio in stream:
                    if not audio.size:
                        continue
                    if reply.metrics.tts_first_audio is None:
                        reply.metrics.tts_first_audio = _now()
                    if not heard_of:
                        heard_of = True
                        clips.put_nowait((text, chunks))
                    chunks.put_nowait(audio)
            finally:
                chunks.put_nowait(None)  # its end (also when it failed part-way)
                reply.first_audio.set()  # the LLM may go on, whether this clip worked or not
                await stream.aclose()  # type: ignore[attr-defined]
        reply.first_audio.set()
        clips.put_nowait(_DONE)

    async def next_clip() -> object:
        if filler is None or reply.metrics.filler_at is not None or reply.started_speaking:
            return await clips.get()
        opened = reply.gate_opened_at if reply.gate_opened_at is not None else _now()
        wait = opened + settings.agent.filler_after_ms / 1000 - _now()
        getter = asyncio.ensure_future(clips.get())
        try:
            done, _ = await asyncio.wait({getter}, timeout=max(0.0, wait))
            if not done:
                # The answer is late (a slow provider, a failover): say so, once.
                reply.metrics.filler_at = _now()
                sink.send_event(event("agent.filler", turn_id=reply.turn_id, text=filler.text))
                await reply.playout.play(filler.text, filler.audio)
            return await getter
        finally:
            getter.cancel()

    async def speak() -> None:
        await reply.gate.wait()
        while (clip := await next_clip()) is not _DONE:
            assert isinstance(clip, tuple)
            text: str = clip[0]
            chunks: asyncio.Queue[np.ndarray | None] = clip[1]
            if not reply.started_speaking:
                reply.started_speaking = True
                on_speaking(reply)
            sink.send_event(event("agent.text", turn_id=reply.turn_id, text=text))
            reply.spoken.append(text)
            await reply.playout.play_stream(text, _until_end(chunks))
        await reply.playout.finish()

    async with asyncio.TaskGroup() as group:
        group.create_task(think())
        group.create_task(synthesize())
        group.create_task(speak())


async def _until_end(chunks: asyncio.Queue[np.ndarray | None]) -> AsyncIterator[np.ndarray]:
    """A sentence's audio chunks as synthesis hands them on, up to its end (None)."""
    while (chunk := await chunks.get()) is not None:
        yield chunk


def unwrap_group_error(exc: BaseException) -> BaseException:
    """The first real error inside (nested) ExceptionGroups from a TaskGroup."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


@contextlib.contextmanager
def _stage(name: str) -> Iterator[None]:
    """Tag an engine failure or timeout with the stage it came from (errors and metrics
    name it: ``engine_error`` alone does not say whether the LLM or the TTS failed)."""
    try:
        yield
    except (EngineError, TimeoutError) as exc:
        if getattr(exc, "stage", None) is None:
            setattr(exc, "stage", name)  # noqa: B010 - an attribute the classes lack
        raise


def error_stage(exc: BaseException) -> str | None:
    stage = getattr(exc, "stage", None)
    return stage if isinstance(stage, str) else None


def error_code(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "llm_timeout"
    if isinstance(exc, EngineError):
        return "engine_error"
    return "internal_error"


# What a client is told about a failure: a code and one of these fixed sentences. The
# exception's own text (a provider's response body, a URL, a parser's complaint) is for
# the server's log only.
SAFE_MESSAGES = {
    "llm_timeout": "the agent took too long to answer; please say that again",
    "engine_error": "the agent could not answer this time; please try again",
    "stt_error": "what you said could not be transcribed; please say it again",
    "eou_error": "end-of-turn detection failed; the turn goes on",
    "internal_error": "the server failed on this turn; go on talking",
}
STAGE_MESSAGES = {
    "llm": "the language model failed; please try again",
    "tts": "speech synthesis failed; please try again",
}


def safe_message(code: str, stage: str | None = None) -> str:
    """The message a client gets for an error ``code`` (from ``stage``)."""
    if code == "engine_error" and stage in STAGE_MESSAGES:
        return STAGE_MESSAGES[stage]
    return SAFE_MESSAGES.get(code, SAFE_MESSAGES["internal_error"])
