"""A remote LLM behind any OpenAI-compatible chat completions API (vLLM, a llama.cpp
server, Ollama, OpenAI): the way past one machine's CPU, and a deterministic stand-in
provider for tests that must script the model's output over a real HTTP connection."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx

from parley.config import LLMSettings
from parley.engines.base import ChatMessage, EngineError
from parley.engines.completion import JSONCompletion


class OpenAICompatibleLLM:
    device = "remote"

    def __init__(self, settings: LLMSettings) -> None:
        self._settings = settings
        headers = {}
        if settings.api_key is not None:
            headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
        self._http = httpx.AsyncClient(
            base_url=settings.base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(settings.timeout, connect=5.0),
        )

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

    async def stream_chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[str]:
        try:
            async with self._http.stream(
                "POST", "chat/completions", json=self._body(messages, stream=True)
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise EngineError(_http_error(response))
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # SSE comments, keep-alives, blank separators
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    delta = _choice(json.loads(data)).get("delta") or {}
                    if delta.get("content"):
                        yield str(delta["content"])
        except httpx.TimeoutException as exc:
            raise EngineError(f"the LLM provider timed out ({type(exc).__name__})") from exc
        except (httpx.HTTPError, json.JSONDecodeError, KeyError, IndexError) as exc:
            raise EngineError(f"the LLM provider failed: {exc!r}") from exc

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
            raise EngineError(
                f"no reply from the LLM provider within {self._settings.timeout:.0f} s"
            ) from exc
        except httpx.HTTPError as exc:
            raise EngineError(f"the LLM provider is unreachable: {exc!r}") from exc
        if response.status_code != 200:
            raise EngineError(_http_error(response))
        try:
            choice = _choice(response.json())
            content = choice["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise EngineError(f"the LLM provider answered an unexpected body: {exc!r}") from exc
        reason = choice.get("finish_reason")
        return JSONCompletion(str(content or ""), reason if isinstance(reason, str) else None)

    async def check_reachable(self, timeout: float = 2.0) -> None:
        """Raise :class:`EngineError` unless the provider's server answers (``GET
        models``, no tokens spent). A server without that listing (404, 405, 501) is
        there all the same; refused credentials or an unavailable upstream are not."""
        try:
            response = await self._http.get("models", timeout=timeout)
        except httpx.TimeoutException as exc:
            raise EngineError(f"the LLM provider did not answer within {timeout:g} s") from exc
        except httpx.HTTPError as exc:
            raise EngineError(f"the LLM provider is unreachable: {exc!r}") from exc
        if response.status_code in (401, 403):
            raise EngineError(
                f"the LLM provider refused the credentials (HTTP {response.status_code})"
            )
        if response.status_code >= 500 and response.status_code != 501:
            raise EngineError(f"the LLM provider answered HTTP {response.status_code}")

    async def aclose(self) -> None:
        await self._http.aclose()


def _choice(body: dict[str, Any]) -> dict[str, Any]:
    choice = body["choices"][0]
    assert isinstance(choice, dict)
    return choice


def _http_error(response: httpx.Response) -> str:
    return f"the LLM provider answered HTTP {response.status_code}: {response.text[:200]}"
