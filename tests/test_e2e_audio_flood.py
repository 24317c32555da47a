"""On the real server and models: a client streaming audio at ten times real time gets
``audio_too_fast`` and then a close (4429), while another caller's turns go on at their
usual latency (every session's audio shares one VAD lane)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from parley.client import CallClient, create_session
from voice_helpers import flood, wait_reply_done

pytestmark = pytest.mark.e2e

QUESTION = "What is the capital of France"


async def flood_noise(ws_url: str) -> tuple[list[dict[str, Any]], int | None]:
    """A session fed noise at 10x real time until the server closes it."""
    session = await create_session(ws_url)
    rng = np.random.default_rng(7)
    noise = (rng.standard_normal(320) * 3000).astype("<i2").tobytes()  # 20 ms
    return await flood(ws_url, session["token"], noise, timeout=20)


async def turn_latency(call: CallClient, speech: Any, after: float) -> tuple[float, float]:
    """Seconds from the caller's last speech frame to the agent starting to speak, and
    when the reply was done."""
    sent = await call.say(speech)
    spoke_at, done_at = await wait_reply_done(call, after=sent, timeout=60)
    return spoke_at - sent, done_at


@pytest.mark.usefixtures("frozen_heap")
async def test_a_ten_times_real_time_stream_is_cut_off_without_slowing_others(server, caller):
    speech = caller(QUESTION)
    async with CallClient(server.ws_url) as steady:
        _, greeted_at = await wait_reply_done(steady, after=0)
        baseline, done_at = await turn_latency(steady, speech, greeted_at)
        flooding = asyncio.create_task(flood_noise(server.ws_url))
        await asyncio.sleep(0.5)  # past the flood's burst allowance: it is being dropped
        during, _ = await turn_latency(steady, speech, done_at)
        events, close_code = await flooding
    errors = [e for e in events if e["type"] == "error"]
    assert errors and {e["code"] for e in errors} == {"audio_too_fast"}
    assert len(errors) <= 2 and close_code == 4429
    # Within noise: a turn's latency on two shared cores varies by a few hundred ms.
    assert during < baseline * 1.5 + 0.5, (baseline, during)
    assert not steady.of_type("error")
