"""A remote LLM behind any OpenAI-compatible chat completions API (vLLM, a llama.cpp
server, Ollama, OpenAI): the way past one machine's CPU, and a deterministic stand-in
provider for tests that must script the model's output over a real HTTP connection."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx

from parley.config import LLMSettings
from parley.engine_settings import provider_name
from parley.engines.base import ChatMessage, first_item
from parley.engines.completion import JSONCompletion
from parley.engines.provider_errors import (
    ProviderError,
    http_failure,
    transport_failure,
)
from parley.engines.provider_http import PROBE_HEADERS, provider_client
from parley.telemetry.usage import Usage, estimated_tokens, report_usage

WHAT = "the LLM provider"


class OpenAICompatibleLLM:
    device = "remote"

    def __init__(self, settings: LLMSettings) -> None:
        self._settings = settings
        self._http = provider_client(settings, settings.timeout, connect=5.0)
        self._name = provider_name(settings)

    def _body(self, messages: Sequence[ChatMessage], **extra: Any) -> dict[str, Any]:
        return {
            "model": self._settings.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "max_tokens": self._settings.max_tokens,
            "temperature": self._settings.temperature,
            **extra,
        }

    async def prefill(self, messages: Sequence[ChatMessage]) -> None:
        """The provider caches prompts (or not) on its side."""

    async def stream_chat(
        self, messages: Sequence[ChatMessage], *, probe: bool = False
    ) -> AsyncIterator[str]:
        extra: dict[str, Any] = {"max_tokens": 1} if probe else {}
        if self._settings.stream_usage and not probe:
            # The token counts come in a last chunk of their own (no choices).
            extra["stream_options"] = {"include_usage": True}
        body = self._body(messages, stream=True, **extra)
        accepted = False
        counted: dict[str, Any] | None = None
        said: list[str] = []
        try:
            async with self._http.stream(
                "POST", "chat/completions", json=body, headers=PROBE_HEADERS if probe else None
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise http_failure(WHAT, response)
                accepted = not probe
                finished = False
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # SSE comments, keep-alives, blank separators
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    chunk = json.loads(data)
                    counted = _usage(chunk) or counted
                    if chunk.get("choices") == []:
                        continue  # the usage chunk (or a provider's note, no text)
                    choice = _choice(chunk)
                    finished = finished or bool(choice.get("finish_reason"))
                    delta = choice.get("delta") or {}
                    if delta.get("content"):
                        said.append(str(delta["content"]))
                        yield said[-1]
            if not finished:
                # Neither [DONE] nor a finish reason: the stream was cut (the server
                # died or dropped the connection mid-reply).
                raise ProviderError(f"{WHAT} ended its stream mid-reply", "stream_cut")
        except httpx.HTTPError as exc:
            raise transport_failure(WHAT, exc) from exc
        except (json.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise ProviderError(f"{WHAT} sent a malformed chunk: {exc!r}", "malformed") from exc
        finally:
            if accepted:
                # Also for a reply closed early (a barge-in, a draft dropped): what was
                # generated until then is billed, and estimated when the counts never came.
                self._report(messages, counted, "".join(said))

    async def probe(self) -> None:
        """The breaker's tiny request: one token of a real completion."""
        await first_item(self.stream_chat([ChatMessage("user", "Hi")], probe=True))

    async def complete_json(
        self, messages: Sequence[ChatMessage], schema: dict[str, Any]
    ) -> JSONCompletion:
        """JSON mode where the provider has it; the schema itself travels in the prompt
        (strict schema modes differ between providers), and the answer is validated.
        There is no grammar to keep the JSON whole, so the envelope gets its own token
        budget, and the finish reason comes back: output cut off by it is not acted on."""
        body = self._body(
            messages,
            max_tokens=self._settings.envelope_max_tokens,
            response_format={"type": "json_object"},
        )
        try:
            response = await self._http.post("chat/completions", json=body)
        except httpx.TimeoutException as exc:
            raise ProviderError(
                f"no reply from {WHAT} within {self._settings.timeout:.0f} s", "timeout"
            ) from exc
        except httpx.HTTPError as exc:
            raise transport_failure(WHAT, exc) from exc
        if response.status_code != 200:
            raise http_failure(WHAT, response)
        try:
            answer = response.json()
            choice = _choice(answer)
            content = choice["message"]["content"]
            counted = _usage(answer)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ProviderError(
                f"{WHAT} answered an unexpected body: {exc!r}", "malformed"
            ) from exc
        self._report(messages, counted, str(content or ""))
        reason = choice.get("finish_reason")
        return JSONCompletion(str(content or ""), reason if isinstance(reason, str) else None)

    def _report(
        self, messages: Sequence[ChatMessage], counted: dict[str, Any] | None, text: str
    ) -> None:
        """The call's usage: the provider's counts, else estimated from the text."""
        model = self._settings.model
        if counted is not None:
            tokens_in, tokens_out = counted["prompt_tokens"], counted["completion_tokens"]
            report_usage(
                Usage("llm", self._name, model, input_tokens=tokens_in, output_tokens=tokens_out)
            )
            return
        prompt = "".join(m.content for m in messages)
        report_usage(
            Usage(
                "llm",
                self._name,
                model,
                input_tokens=estimated_tokens(prompt),
                output_tokens=estimated_tokens(text),
                estimated=True,
            )
        )

    async def check_reachable(self, timeout: float = 2.0) -> None:
        """Raise :class:`EngineError` unless the provider's server answers (``GET
        models``, no tokens spent). A server without that listing (404, 405, 501) is
        there all the same; refused credentials or an unavailable upstream are not."""
        try:
            response = await self._http.get("models", timeout=timeout)
        except httpx.HTTPError as exc:
            raise transport_failure(WHAT, exc) from exc
        if response.status_code in (401, 403):
            raise ProviderError(
                f"{WHAT} refused the credentials (HTTP {response.status_code})",
                f"http_{response.status_code}",
            )
        if response.status_code >= 500 and response.status_code != 501:
            raise http_failure(WHAT, response)

    async def aclose(self) -> None:
        await self._http.aclose()


def _choice(body: dict[str, Any]) -> dict[str, Any]:
    choice = body["choices"][0]
    assert isinstance(choice, dict)
    return choice


def _usage(body: dict[str, Any]) -> dict[str, Any] | None:
    """A body's token counts, where it has them (OpenAI's ``usage``; Groq's in
    ``x_groq``), with both counts as integers."""
    if not isinstance(body, dict):
        return None
    groq = body.get("x_groq")
    usage = body.get("usage") or (groq.get("usage") if isinstance(groq, dict) else None)
    if not isinstance(usage, dict):
        return None
    tokens_in, tokens_out = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not isinstance(tokens_in, int) or not isinstance(tokens_out, int):
        return None
    return {"prompt_tokens": tokens_in, "completion_tokens": tokens_out}
