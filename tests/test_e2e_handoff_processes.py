"""Supervision across processes, through Redis: a supervisor console on one process (this
test's own, an in-process server) sees, listens to and takes over a call living on
another (the suite's ``parley serve`` process, on the real models)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from conftest import REDIS_URL, SUPERVISOR_KEY
from inprocess_server import SECRET, LoudnessVAD, SureEOU, ToneTTS, serve_app
from parley.client import CallClient
from parley.config import Settings
from parley.engines import Engines
from parley.server import create_app
from parley.testing import ServerProcess
from test_e2e_handoff import Console, PromptedLLM, console_token, listen, loud_audio_after
from test_handoff import SaidSTT

pytestmark = pytest.mark.e2e


async def test_a_console_on_one_process_takes_over_a_call_on_another(
    server: ServerProcess, caller: Any, tmp_path: Path
) -> None:
    settings = Settings(
        server={"database_url": f"sqlite:///{tmp_path / 'a.db'}", "token_secret": SECRET},
        agent={"greeting": ""},
        handoff={"supervisor_key": SUPERVISOR_KEY, "redis_url": REDIS_URL},
    )
    engines = Engines(
        stt=SaidSTT("unused"), llm=PromptedLLM(), tts=ToneTTS(), vad=LoudnessVAD(), eou=SureEOU()
    )
    async for a in serve_app(create_app(settings, engines=engines)):  # type: ignore[arg-type]
        here = a.app.state.supervision.process_id
        token = await console_token(a)
        url = f"ws://127.0.0.1:{a.port}/v1/supervisor/ws"
        async with Console(url, token) as console, CallClient(server.ws_url) as call:
            session_id = call.session["session_id"]  # type: ignore[index]

            def lists_it(m: dict[str, Any], sid: str = session_id) -> bool:
                return m["type"] == "sessions" and any(
                    s["session_id"] == sid for s in m["sessions"]
                )

            listed = await console.wait(lists_it, timeout=15)
            (summary,) = [s for s in listed["sessions"] if s["session_id"] == session_id]
            assert summary["process"] != here  # it lives on the other process

            await call.wait_for("agent.state", lambda e: e["state"] == "listening", timeout=60)
            call.say(caller("I want to talk to a person please."))
            flagged = await console.wait(lambda m: m["type"] == "handoff.requested", timeout=60)
            assert flagged["session_id"] == session_id
            assert any(
                line["role"] == "caller" and "person" in line["text"].lower()
                for line in flagged["transcript"]
            )
            await console.send(type="watch", session_id=session_id)
            shown = await console.wait(lambda m: m["type"] == "transcript", timeout=10)
            assert any("person" in line["text"].lower() for line in shown["lines"])

            pc, heard = await listen(a, token, session_id)
            try:
                await console.send(type="take_over", session_id=session_id, id="t")
                result = await console.wait(lambda m: m.get("id") == "t", timeout=10)
                assert result["ok"] is True, result
                _, accepted = await call.wait_for("handoff.accepted", timeout=10)
                assert accepted["by"] == "supervisor:Maria"
                loop = asyncio.get_running_loop()
                taken_at = loop.time()
                # The supervisor's microphone (here) reaches the caller (there)...
                await asyncio.sleep(3.0)
                assert loud_audio_after(call, taken_at) > 25
                # ...and the caller's voice (there) reaches the supervisor (here).
                before = len(heard)
                call.say(caller("Hello? Is anyone there?"))
                await asyncio.sleep(3.0)
                assert max(heard[before:], default=0.0) > 0.02

                await console.send(type="hand_back", session_id=session_id, id="h")
                result = await console.wait(lambda m: m.get("id") == "h", timeout=15)
                assert result["ok"] is True, result
                await call.wait_for("handoff.returned", timeout=10)
            finally:
                await pc.close()
        # The call ended there: it leaves the list here.
        await console_sees_it_end(a, token, session_id)


async def console_sees_it_end(a: Any, token: str, session_id: str) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=a.http) as http, asyncio.timeout(15):
        while True:
            listed = await http.get(
                "/v1/supervisor/sessions", headers={"Authorization": f"Bearer {token}"}
            )
            if all(s["session_id"] != session_id for s in listed.json()["sessions"]):
                return
            await asyncio.sleep(0.2)
