"""The benchmark's method, with a scripted client and server (no models, no real time):
failed turns count, no run replays another's prompts, each concurrency step has 30 turns."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import voice_to_voice as vv


def ok_turn(text: str, ms: float = 800.0) -> dict[str, Any]:
    return {"said": text, "heard": text, "failed": None, "client_voice_to_voice_ms": ms}


def test_a_turn_without_agent_audio_counts_in_the_percentiles():
    turns = [ok_turn(f"u{i}", 700.0 + i) for i in range(9)]
    turns.append(
        {"said": "u9", "heard": None, "failed": "no reply", "client_voice_to_voice_ms": None}
    )
    summary = vv.summarize(turns)
    row = summary["client_voice_to_voice_ms"]
    assert summary["failures"] == row["failures"] == 1
    assert row["n"] == 10
    # p95 falls between the slowest answered turn and the failure: not a number.
    assert row["p95"] == "timeout"
    assert row["p50"] == 704.5  # the failure sorts last: the median is of all ten turns


class ScriptedCall:
    """Stands in for CallClient: the agent answers every utterance except those in
    ``silent`` (no event ever comes: a lost turn) and closes the connection at ``hang_up``."""

    silent: ClassVar[set[str]] = set()
    hang_up: ClassVar[str | None] = None

    def __init__(self, url: str) -> None:
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.audio_at: list[float] = []
        self.turn_id = 0

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    async def __aenter__(self) -> ScriptedCall:
        t = self._now()
        self.events += [
            (t, {"type": "agent.state", "state": "speaking"}),
            (t + 0.01, {"type": "agent.state", "state": "listening"}),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def say(self, text: str) -> asyncio.Future[float]:
        t = self._now()
        if text == self.hang_up:
            raise ConnectionError("connection closed")
        if text not in self.silent:
            self.turn_id += 1
            self.events += [
                (t + 0.01, {"type": "turn.ended", "turn_id": self.turn_id, "text": text}),
                (t + 0.02, {"type": "agent.state", "state": "speaking"}),
                (t + 0.04, {"type": "agent.state", "state": "listening"}),
            ]
            self.audio_at.append(t + 0.03)
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        fut.set_result(t)
        return fut

    async def wait_for(self, type_, predicate=lambda e: True, *, timeout=30.0, after=0.0):  # type: ignore[no-untyped-def]
        for at, ev in self.events:
            if at >= after and ev["type"] == type_ and predicate(ev):
                return at, ev
        raise TimeoutError  # a scripted agent never answers later

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [ev for _, ev in self.events if ev["type"] == type_]

    def first_loud_audio_after(self, at: float) -> float | None:
        return next((a for a in self.audio_at if a >= at), None)


@pytest.fixture
def scripted(monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(vv, "caller_speech", lambda text: text)
    monkeypatch.setattr(ScriptedCall, "silent", set())
    monkeypatch.setattr(ScriptedCall, "hang_up", None)
    return ScriptedCall


async def test_a_turn_that_gets_no_reply_is_recorded_as_failed(scripted):
    scripted.silent = {"b"}
    turns = await vv.run_session("ws://x", ["a", "b", "c"], client=scripted)
    assert [t["said"] for t in turns] == ["a", "b", "c"]
    assert [bool(t["failed"]) for t in turns] == [False, True, False]
    assert turns[0]["client_voice_to_voice_ms"] == pytest.approx(30, abs=1)
    assert vv.summarize(turns)["failures"] == 1


async def test_what_a_dropped_session_never_said_fails_too(scripted):
    scripted.hang_up = "b"
    turns = await vv.run_session("ws://x", ["a", "b", "c"], client=scripted)
    assert [bool(t["failed"]) for t in turns] == [False, True, True]
    assert vv.summarize(turns)["client_voice_to_voice_ms"]["p95"] == "timeout"


class FakeServer:
    def __init__(self, *args: object, **kwargs: object) -> None:
        self.ws_url, self.http = "ws://fake/v1/ws", "http://fake"

    def stop(self) -> None:
        return None


def test_runs_never_share_prompts_and_each_concurrency_step_has_30_turns(monkeypatch, tmp_path):
    calls: list[tuple[str, list[str], Any]] = []

    async def recording_session(url, utterances, start_delay=0.0, client=vv.CallClient):  # type: ignore[no-untyped-def]
        calls.append((url, list(utterances), client))
        return [ok_turn(u) for u in utterances]

    monkeypatch.setattr(vv, "run_session", recording_session)

    async def recording_phone(http, utterances):  # type: ignore[no-untyped-def]
        calls.append((http, list(utterances), "phone"))
        return [ok_turn(u) for u in utterances]

    monkeypatch.setattr(vv, "run_phone_session", recording_phone)
    monkeypatch.setattr(vv, "ServerProcess", FakeServer)
    monkeypatch.setattr(vv, "ROOT", tmp_path)
    monkeypatch.setattr(vv, "RESULTS", tmp_path)
    argv = ["voice_to_voice.py", "--max-sessions", "3", "--no-telemetry-overhead"]
    monkeypatch.setattr(sys, "argv", argv)
    vv.main()

    websocket, webrtc, phone = calls[0][1], calls[1][1], calls[2][1]
    assert calls[1][2] is vv.WebRTCCallClient and calls[2][2] == "phone"
    assert len(websocket) == len(webrtc) == len(phone) == 10
    assert not set(websocket) & set(webrtc), "WebRTC replays the WebSocket run's prompts"
    assert not (set(websocket) | set(webrtc)) & set(phone), "the phone run replays prompts"
    # A conversation's prompts differ from every other's once their first utterances do.
    openings = [utterances[0] for _, utterances, _ in calls]
    assert len(openings) == len(set(openings))

    (result,) = tmp_path.glob("voice_to_voice-*.json")
    report = json.loads(result.read_text())
    assert set(report["concurrency"]) == {"1", "2", "3"}
    for level in report["concurrency"].values():
        assert level["turns"] >= 30
    assert report["sessions_held_p95_le_1500ms"] == 3
