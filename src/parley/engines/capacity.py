"""How many live sessions a process can carry, from its engines and its cores.

``server.max_sessions`` set: that. Unset (the default): derived here, from what the
benchmarks measured on a 2-core machine (AMD EPYC), scaled by the cores this process may
use (its CPU affinity, and a container's CPU quota when it has one):

- **embedded models on the CPU** (Whisper, the llama.cpp model or Piper in this
  process): ``make bench`` holds 2 concurrent sessions with voice-to-voice p95 within
  1.5 s on 2 cores, so 1 per core;
- **every stage remote** (STT, LLM and TTS behind OpenAI-compatible servers): the
  worker's own work per session is VAD, end of turn, framing and events, and
  ``make bench-load`` holds :data:`REMOTE_SESSIONS_PER_CORE` per core: at 30 sessions on
  2 cores voice-to-voice p50 stays within 20 ms of a single session's, and what comes
  beyond the end-of-turn silence at p95 within 100 ms in two runs of three (+114 ms in
  the third; 40 held in one run of three, 50 in none);
- **embedded models on a GPU**: not measured here; :data:`GPU_SESSIONS` until a team
  measures its own (``make bench`` with ``server.max_sessions`` raised) and sets it.

A figure from a benchmark is a starting point: the readiness endpoint, the registry and
the metrics say how full a process is, and the team sets ``server.max_sessions`` from its
own measurement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from parley.engines import device

if TYPE_CHECKING:
    from parley.config import Settings

EMBEDDED_SESSIONS_PER_CORE = 1.0
REMOTE_SESSIONS_PER_CORE = 15.0
GPU_SESSIONS = 8

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


@dataclass(frozen=True)
class Capacity:
    sessions: int
    basis: str
    """Where the figure comes from: ``configured``, ``embedded-cpu``, ``remote`` or
    ``embedded-gpu``."""


def available_cores(cpu_max: Path = CGROUP_CPU_MAX) -> float:
    """The cores this process may use: its affinity, capped by a cgroup v2 CPU quota
    (``cpu.max`` = ``"<quota> <period>"``, or ``"max <period>"`` for none)."""
    cores = float(device.cpu_count())
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return cores
    if quota == "max":
        return cores
    try:
        return max(0.1, min(cores, int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return cores


def _embedded_devices(settings: Settings) -> list[str]:
    """The devices the embedded primary providers run on (empty: all remote)."""
    found: list[str] = []
    if settings.stt.provider == "whisper":
        found.append(device.resolve(settings.stt.device, device.cuda_available_for_ctranslate2()))
    if settings.llm.provider == "llama":
        from parley.engines.llm_llama import llama_supports_gpu

        found.append(device.resolve(settings.llm.device, llama_supports_gpu()))
    if settings.tts.provider == "piper":
        found.append(device.resolve(settings.tts.device, device.cuda_available_for_onnxruntime()))
    return found


def session_capacity(settings: Settings, cores: float | None = None) -> Capacity:
    """The live sessions this process takes on (``server.max_sessions`` when set)."""
    if settings.server.max_sessions is not None:
        return Capacity(settings.server.max_sessions, "configured")
    cores = available_cores() if cores is None else cores
    devices = _embedded_devices(settings)
    if "cpu" in devices:
        return Capacity(max(1, math.floor(cores * EMBEDDED_SESSIONS_PER_CORE)), "embedded-cpu")
    if devices:
        return Capacity(GPU_SESSIONS, "embedded-gpu")
    return Capacity(max(1, math.floor(cores * REMOTE_SESSIONS_PER_CORE)), "remote")
