"""Plays scenarios over the real WebSocket, one session per scenario, like a person
would: each turn is spoken in real time once the agent listens, and the turn is scored
when the agent has finished answering it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from parley.audio.wav import read_wav
from parley.client import CallClient
from parley.evaluation.judge import Judge
from parley.evaluation.scenarios import Scenario, ScenarioTurn
from parley.evaluation.scoring import calls_made, word_errors
from parley.knowledge.answer_check import states_facts

Speaker = Callable[[str, str], np.ndarray]
"""Speech for (words, voice): int16 mono 16 kHz."""

SETTLE_SECS = 2.0
"""After an answer, how long the caller stays silent before the next turn: longer than
the longest end-of-turn wait, so a turn the agent split in two shows here."""

GREETING_GRACE_SECS = 3.0
"""How long a new session is given to start its greeting before the caller speaks."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    heard: float = 30.0
    """From the end of the caller's speech to the agent's end of turn."""
    answered: float = 60.0
    """From the end of turn to the end of the agent's answer."""


def espeak_speaker(words: str, voice: str) -> np.ndarray:
    from parley.testing import caller_speech, trim_silence

    return trim_silence(caller_speech(words, voice=voice))


async def play_scenarios(
    url: str,
    scenarios: list[Scenario],
    *,
    speak: Speaker = espeak_speaker,
    judge: Judge | None = None,
    timeouts: Timeouts = Timeouts(),
) -> list[dict[str, Any]]:
    """Each scenario's result, in order; a scenario that fails to run (the server is
    unreachable, a turn is never answered) is reported with its error, not raised."""
    results = []
    for scenario in scenarios:
        turns: list[dict[str, Any]] = []  # the turns played, also when one then fails
        session: dict[str, Any] = {}
        error = None
        try:
            await _play(url, scenario, speak, judge, timeouts, turns, session)
        except Exception as exc:  # one scenario's failure is its result
            # (the server unreachable or refusing, a turn never heard or answered)
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        results.append(
            {
                "name": scenario.name,
                # For `parley inspect` and `parley replay` of the same call.
                "session_id": session.get("session_id"),
                "passed": error is None and all(t["passed"] for t in turns),
                "error": error,
                "turns": turns,
            }
        )
    return results


async def _play(
    url: str,
    scenario: Scenario,
    speak: Speaker,
    judge: Judge | None,
    timeouts: Timeouts,
    turns: list[dict[str, Any]],
    session: dict[str, Any],
) -> None:
    async with CallClient(url) as call:
        session["session_id"] = (call.session or {}).get("session_id")
        await _after_greeting(call)
        for turn in scenario.turns:
            pcm = speak(turn.say, scenario.voice) if turn.say is not None else None
            if pcm is None:
                assert turn.wav is not None
                pcm = read_wav(turn.wav)
            result = await _turn(call, turn, pcm, timeouts)
            if judge is not None and turn.say is not None:
                result["judge"] = await judge.grade(turn.say, result["answer"], turn.question)
            turns.append(result)


async def _after_greeting(call: CallClient) -> None:
    """Returns once the caller may speak: after the greeting, if there is one."""
    try:
        spoke_at, _ = await call.wait_for(
            "agent.state", _state("speaking"), timeout=GREETING_GRACE_SECS
        )
    except TimeoutError:
        return  # no greeting
    await call.wait_for("agent.state", _state("listening"), after=spoke_at)


async def _turn(
    call: CallClient, turn: ScenarioTurn, pcm: np.ndarray, timeouts: Timeouts
) -> dict[str, Any]:
    started, _ = call.say_timed(pcm)
    first_at = await started  # only what ends after the caller began belongs to this turn
    ended_at, ended = await call.wait_for("turn.ended", after=first_at, timeout=timeouts.heard)
    turn_id = ended["turn_id"]
    spoke_at, _ = await call.wait_for(
        "agent.state", _state("speaking"), after=ended_at, timeout=timeouts.answered
    )
    done_at, _ = await call.wait_for(
        "agent.state", _state("listening"), after=spoke_at, timeout=timeouts.answered
    )
    # The rest of the caller's words may still end a second turn (the agent cut in):
    # it is counted here, and answered, before the next turn is spoken.
    await asyncio.sleep(SETTLE_SECS)
    states = [ev for at, ev in call.events if at > done_at and ev["type"] == "agent.state"]
    if states and states[-1].get("state") == "speaking":
        done_at, _ = await call.wait_for(
            "agent.state", _state("listening"), after=done_at + 1e-6, timeout=timeouts.answered
        )
    done_at = max(done_at, asyncio.get_running_loop().time())
    _, metrics = await call.wait_for(
        "turn.metrics", lambda e: e.get("turn_id") == turn_id, after=first_at, timeout=5.0
    )
    window = [ev for at, ev in call.events if first_at <= at <= done_at]
    answer = " ".join(
        ev["text"] for ev in window if ev["type"] == "agent.text" and ev["turn_id"] == turn_id
    )
    made = [
        call_
        for ev in window
        if ev["type"] == "agent.envelope" and ev.get("turn_id") == turn_id
        for call_ in ev.get("tool_calls", [])
    ]
    heard = " ".join(ev["text"] for ev in window if ev["type"] == "turn.ended")
    edits, words = word_errors(turn.say, heard) if turn.say is not None else (0, 0)
    correct = states_facts(answer, turn.question) if turn.question.expect else None
    tools_ok = calls_made(turn.tools, made) if turn.tools else None
    result: dict[str, Any] = {
        "say": turn.say if turn.say is not None else str(turn.wav),
        "heard": heard,
        "wer": round(edits / words, 3) if words else None,
        "answer": answer,
        "correct": correct,
        "tool_calls": made,
        "tools_ok": tools_ok,
        "voice_to_voice_ms": metrics.get("voice_to_voice_ms"),
        # Turn-taking: the caller said one thing and waited, so more than one end of
        # turn is the agent cutting in, and an interruption is one the caller never made.
        "turns_heard": sum(ev["type"] == "turn.ended" for ev in window),
        "interruptions": sum(ev["type"] == "turn.interrupted" for ev in window),
        "errors": [ev.get("code") for ev in window if ev["type"] == "error"],
    }
    result["passed"] = (
        correct is not False
        and tools_ok is not False
        and result["turns_heard"] == 1
        and result["interruptions"] == 0
        and not result["errors"]
    )
    return result


def _state(name: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("state") == name
