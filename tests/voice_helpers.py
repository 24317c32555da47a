"""Helpers for end-to-end conversations over the real WebSocket."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from parley.audio import trim_leading_silence
from parley.client import CallClient


def speaking(e: dict[str, Any]) -> bool:
    return e.get("state") == "speaking"


def listening(e: dict[str, Any]) -> bool:
    return e.get("state") == "listening"


async def wait_reply_done(client: CallClient, after: float, timeout: float = 40.0) -> tuple[float, float]:
    """Wait until the agent starts and then stops speaking; returns both arrival times."""
    spoke_at, _ = await client.wait_for("agent.state", speaking, after=after, timeout=timeout)
    done_at, _ = await client.wait_for("agent.state", listening, after=spoke_at, timeout=timeout)
    return spoke_at, done_at


def trim(pcm: np.ndarray) -> np.ndarray:
    """Trim near-silence at both ends of a clip."""
    head = trim_leading_silence(pcm, keep_secs=0.0)
    return trim_leading_silence(head[::-1], keep_secs=0.0)[::-1].copy()


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def word_recall(expected: str, heard: str) -> float:
    """Share of the expected words that appear in what was heard."""
    exp = words(expected)
    got = set(words(heard))
    return sum(w in got for w in exp) / max(1, len(exp))
