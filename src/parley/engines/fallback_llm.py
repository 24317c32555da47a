"""The LLM over a fallback chain.

A reply that fails before its first token goes whole to the next provider. A reply
that dies mid-stream, after some of its text was handed on (and perhaps spoken),
continues on the next provider with that text as an assistant prefix; what the next
provider writes is checked against it, and a repeat of text already handed on is
dropped, so no sentence reaches the caller twice. The action envelope (the agent with
tools) is one non-streamed call: it moves to the next provider whole, and tools run only
after it is decided, so a failover never re-runs a tool.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from parley.engines.base import ChatMessage, EngineError, LanguageModel
from parley.engines.completion import JSONCompletion
from parley.engines.fallback import (
    AllProvidersFailed,
    Provider,
    ProviderChain,
    attempt_timeout,
    each_within,
)


class RepeatFilter:
    """Drops the start of a continuation that repeats text already said.

    Compared without case, spacing or punctuation. The continuation is held back until
    it either departs from what was said (a true continuation: released whole) or has
    repeated all of it (the repeat is dropped, the rest released)."""

    def __init__(self, said: str) -> None:
        self._said = _letters(said)
        self._held = ""
        self._open = not self._said

    def push(self, delta: str) -> str:
        if self._open:
            return delta
        self._held += delta
        letters = _letters(self._held)
        if not self._said.startswith(letters[: len(self._said)]):
            self._open = True  # it departs: nothing was repeated
            out, self._held = self._held, ""
            return out
        if len(letters) < len(self._said):
            return ""
        # All of it repeated: release what follows the repeat.
        self._open = True
        out = _after_letters(self._held, len(self._said))
        self._held = ""
        return out

    def flush(self) -> str:
        """At the end of the stream: what was held back and is not a (partial) repeat."""
        self._open = True
        out, self._held = self._held, ""
        if self._said.startswith(_letters(out)):
            return ""
        return out


def _letters(text: str) -> str:
    return "".join(c for c in text.lower() if c.isalnum())


def _after_letters(text: str, n: int) -> str:
    """``text`` after its first ``n`` letters and digits (and the spacing and punctuation
    that closed them)."""
    seen = 0
    for i, c in enumerate(text):
        if c.isalnum():
            seen += 1
            if seen == n:
                rest = text[i + 1 :]
                return rest.lstrip(".,;:!?") if rest[:1] in ".,;:!?" else rest
    return ""


def spaced(said: str, text: str) -> str:
    """The first text of a continuation, spaced from what was said where it starts a new
    word or sentence (chat servers given a trailing assistant message often start a new
    one); a cut word continued ("Par" + "is") stays joined."""
    if said and text and not said[-1].isspace() and not text[0].isspace():
        if said[-1] in ".!?,;:" or text[0].isupper():
            return " " + text
    return text


class FallbackLLM(ProviderChain[LanguageModel]):
    async def prefill(self, messages: Sequence[ChatMessage]) -> None:
        for provider in self.providers:
            if provider.breaker.allows:
                await provider.engine.prefill(messages)
                return

    async def stream_chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[str]:
        said = ""  # what this reply has handed on so far
        failures: list[tuple[str, str]] = []
        candidates = list(self.candidates())
        for provider in candidates:
            timeout = attempt_timeout(provider, candidates)
            prompt = list(messages)
            if said:
                prompt.append(ChatMessage("assistant", said))
            repeats = RepeatFilter(said)
            junction = bool(said)  # this provider continues what another said
            started = time.monotonic()
            stream = provider.engine.stream_chat(prompt)
            try:
                async for delta in each_within(stream, timeout):
                    if text := repeats.push(delta):
                        if junction:
                            text, junction = spaced(said, text), False
                        said += text
                        yield text
                if tail := repeats.flush():
                    if junction:
                        tail = spaced(said, tail)
                    said += tail
                    yield tail
            except (EngineError, TimeoutError) as exc:
                kind = self.failed(provider, exc, started=started)
                failures.append((provider.name, kind))
                self.moved_on(provider, kind, {"chars_said": len(said)}, candidates)
                continue
            finally:
                await stream.aclose()  # type: ignore[attr-defined]
            self.succeeded(provider)
            return
        raise AllProvidersFailed(self.stage, failures)

    async def complete_json(
        self, messages: Sequence[ChatMessage], schema: dict[str, Any]
    ) -> JSONCompletion:
        failures: list[tuple[str, str]] = []
        candidates = [
            p for p in self.candidates() if getattr(p.engine, "complete_json", None) is not None
        ]
        for provider in candidates:
            complete = provider.engine.complete_json  # type: ignore[attr-defined]
            timeout = attempt_timeout(provider, candidates)
            started = time.monotonic()
            try:
                # The whole envelope is the first result here.
                async with asyncio.timeout(
                    None if timeout is None else timeout + _envelope_allowance(provider)
                ):
                    result: JSONCompletion = await complete(messages, schema)
            except (EngineError, TimeoutError) as exc:
                kind = self.failed(provider, exc, started=started)
                failures.append((provider.name, kind))
                self.moved_on(provider, kind, {"envelope": True}, candidates)
                continue
            self.succeeded(provider)
            return result
        raise AllProvidersFailed(self.stage, failures)

    async def check_reachable(self, timeout: float = 2.0) -> None:
        """Readiness: reachable while any provider is (each is shown in ``/ready``)."""
        for provider in self.providers:
            check = getattr(provider.engine, "check_reachable", None)
            if provider.breaker.allows and (check is None or await _answers(check, timeout)):
                return
        raise EngineError("no LLM provider is reachable")


def _envelope_allowance(provider: Provider[LanguageModel]) -> float:
    # An envelope comes whole, not streamed: its first result is its last token. Give it
    # the time of a short reply on top of the first-token timeout.
    return 2.0 * provider.timeout


async def _answers(check: Any, timeout: float) -> bool:
    try:
        await check(timeout)
    except EngineError:
        return False
    return True
