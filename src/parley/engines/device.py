"""Picks CUDA when a GPU is present and the engine's runtime can use it, CPU otherwise."""

from __future__ import annotations

import functools
import os
from typing import Literal

Resolved = Literal["cpu", "cuda"]


@functools.cache
def cuda_available_for_ctranslate2() -> bool:
    try:
        import ctranslate2

        return int(ctranslate2.get_cuda_device_count()) > 0
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
