"""The phone path of the voice-to-voice benchmark: a fake Twilio (tests/fake_twilio.py,
which speaks the exact Media Streams protocol) places a signed call to the server and
streams the caller's speech as μ-law 8 kHz in real time; the agent's μ-law comes back
and is decoded at the client. voice-to-voice = the first agent audio louder than
-40 dBFS minus the send time of the frame holding the caller's last speech sample, as
for the WebSocket and WebRTC runs."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from parley.testing import caller_speech

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fake_twilio import FakeTwilioCall, place_call  # noqa: E402

AUTH_TOKEN = "bench-twilio-auth-token-0123456789"
"""The server of the benchmark is started with it (PARLEY_TELEPHONY__TWILIO__AUTH_TOKEN)."""
TURN_TIMEOUT_S = 60.0
QUIET_SECS = 1.2


async def _quiet(phone: FakeTwilioCall) -> None:
    """Until the agent has said nothing for ``QUIET_SECS`` (the line has no state events)."""
    async with asyncio.timeout(TURN_TIMEOUT_S):
        while True:
            last = max((a.at for a in phone.audio if a.level_dbfs() > -40), default=0.0)
            if asyncio.get_running_loop().time() - last >= QUIET_SECS:
                return
            await asyncio.sleep(0.05)


async def run_phone_session(http: str, utterances: list[str]) -> list[dict[str, Any]]:
    """One call: the greeting, then each utterance after the agent fell silent."""
    stream = await place_call(http, AUTH_TOKEN)
    ws_base = http.replace("http://", "ws://")
    turns: list[dict[str, Any]] = []
    async with FakeTwilioCall(stream, ws_base) as phone:
        await phone.wait_for("media", timeout=TURN_TIMEOUT_S)  # the greeting
        await _quiet(phone)
        for text in utterances:
            sent = await asyncio.wait_for(phone.say(caller_speech(text)), TURN_TIMEOUT_S)
            try:
                async with asyncio.timeout(TURN_TIMEOUT_S):
                    while (first := phone.first_loud_audio_after(sent)) is None:  # noqa: ASYNC110
                        await asyncio.sleep(0.02)
            except TimeoutError:
                turns.append({"said": text, "failed": "no reply", "client_voice_to_voice_ms": None})
                continue
            turns.append(
                {
                    "said": text,
                    "failed": None,
                    "client_voice_to_voice_ms": round((first - sent) * 1000, 1),
                }
            )
            await _quiet(phone)
            await asyncio.sleep(0.5)
        await phone.hang_up()
    return turns
