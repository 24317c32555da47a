"""Picks CUDA when a GPU is present and the engine's runtime can use it, CPU otherwise."""

from __future__ import annotations

import functools
import os
from types import ModuleType
from typing import Literal

Resolved = Literal["cpu", "cuda"]


@functools.cache
def ctranslate2_module() -> ModuleType:
    """Import CTranslate2 with its OpenMP threads set to sleep, not spin, when idle.

    CTranslate2 ships its own libgomp, which reads OMP_WAIT_POLICY once, when it loads.
    Spinning threads after each transcription took a core from the stage that follows
    on a 2-core machine. The variable is set only while CTranslate2 loads: llama.cpp
    links the system libgomp, and passive waiting made its token loop 2.5x slower.
    A policy the user set is left alone.
    """
    if "OMP_WAIT_POLICY" in os.environ:
        import ctranslate2

        return ctranslate2
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        import ctranslate2
    finally:
        del os.environ["OMP_WAIT_POLICY"]
    return ctranslate2


@functools.cache
def cuda_available_for_ctranslate2() -> bool:
    try:
        return int(ctranslate2_module().get_cuda_device_count()) > 0
    except Exception:
        return False


@functools.cache
def cuda_available_for_onnxruntime() -> bool:
    try:
        import onnxruntime

        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    except Exception:
        return False


def resolve(requested: str, available: bool) -> Resolved:
    if requested == "cuda":
        return "cuda"
    if requested == "cpu":
        return "cpu"
    return "cuda" if available else "cpu"


def onnx_providers(requested: str) -> list[str]:
    if resolve(requested, cuda_available_for_onnxruntime()) == "cuda":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def cpu_count() -> int:
    return max(1, len(os.sched_getaffinity(0)))
