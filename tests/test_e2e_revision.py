"""Revised finals end to end, on the real models over the real WebSocket and in the
browser page: after a turn's reply, its whole audio goes to the reviser, and a revision
patches the stored record, the history and what the caller's page shows.

A revision that differs on cue needs words the live recognizer did not say: the reviser
here is a remote OpenAI-compatible provider (``stt.reviser``, configured as a user
would) whose words the test sets (tests/scripted_stt_provider.py: Parley's own
transcription endpoint over a scripted recognizer). The shipped default — the live
embedded recognizer hearing the turn again — is run too, on a turn said in two parts."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from conftest import ADMIN_KEY, ARTIFACTS, ROOT, TOKEN_SECRET, silence
from inprocess_server import SECRET, serve_app
from parley.client import CallClient
from parley.config import Settings
from parley.engines import Engines
from parley.engines.chains import build_reviser
from parley.engines.loader import background_work
from parley.server import create_app
from parley.testing import ServerProcess
from parley.testing import trim_silence as trim
from scripted_stt_provider import ScriptedRecognizer, scripted_stt_server
from voice_helpers import stored_record, wait_reply_done

pytestmark = pytest.mark.e2e

ASKED = "Please book a table for two at seven"
REVISED = "Please book a table for two at seven thirty."
"""What the larger recognizer hears: words the caller's live finals cannot have."""
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def larger() -> Iterator[tuple[str, ScriptedRecognizer]]:
    with scripted_stt_server(REVISED) as served:
        yield served


@pytest.fixture(scope="module")
def revising_server(larger, tmp_path_factory) -> Iterator[ServerProcess]:
    """``parley serve`` on the embedded models, revising with the remote ``larger``."""
    url, _ = larger
    db = tmp_path_factory.mktemp("revision") / "revision.db"
    srv = ServerProcess(
        {
            "PARLEY_CONFIG": str(ROOT / "tests" / "parley.test.toml"),
            "PARLEY_SERVER__DATABASE_URL": f"sqlite:///{db}",
            "PARLEY_SERVER__TOKEN_SECRET": TOKEN_SECRET,
            "PARLEY_TELEMETRY__ADMIN_KEY": ADMIN_KEY,
            "PARLEY_SERVER__SESSION_CREATE_RATE": "0",
            "PARLEY_STT__REVISE": "true",
            "PARLEY_STT__REVISER__PROVIDER": "openai",
            "PARLEY_STT__REVISER__BASE_URL": url,
            "PARLEY_STT__REVISER__MODEL": "whisper-large",
            "PARLEY_STT__REVISER__NAME": "larger",
        },
        ARTIFACTS / "revision-server.log",
        cwd=ROOT,
    )
    yield srv
    srv.stop()


def revision_entry(record: dict[str, Any]) -> dict[str, Any] | None:
    entries = [e for e in record["events"] if e["stage"] == "transcript.revision"]
    return entries[0] if entries else None


async def test_a_larger_recognizer_revises_the_turn_over_the_socket(
    revising_server: ServerProcess, larger: tuple[str, ScriptedRecognizer], caller: Any
) -> None:
    _, recognizer = larger
    before = len(recognizer.heard)
    speech = trim(caller(ASKED))
    async with CallClient(revising_server.ws_url) as call:
        _, greeted_at = await wait_reply_done(call, after=0)
        await call.say(speech)
        ended_at, ended = await call.wait_for("turn.ended", after=greeted_at, timeout=30)
        turn_id = ended["turn_id"]
        _, done_at = await wait_reply_done(call, after=ended_at)
        at, _ = await call.wait_for("transcript.revised", after=ended_at, timeout=30)
        assert at > done_at  # never beside the reply: after it was over
        assert "thirty" not in ended["text"].lower(), ended  # the live finals' words
        # One event per segment that changed; the client's transcript of the turn (its
        # finals, with the revised segments replaced) is now the revision.
        await asyncio.sleep(0.5)  # any other segment's event (sent at once with it)
        revisions = [e for e in call.of_type("transcript.revised") if e["turn_id"] == turn_id]
        finals = {
            e["segment_id"]: e["text"]
            for e in call.of_type("transcript.final")
            if e["turn_id"] == turn_id
        }
        for e in revisions:
            assert e["previous_text"] == finals[e["segment_id"]]
            assert e["turn_text"] == REVISED and e["recognizer"] == "larger"
        shown = finals | {e["segment_id"]: e["text"] for e in revisions}
        assert " ".join(shown[i] for i in sorted(shown)) == REVISED
        # The provider heard the whole turn once, as one WAV over HTTP.
        (heard,) = recognizer.heard[before:]
        heard_secs, said_secs = heard.size / 16_000, speech.size / 16_000
        assert 0.7 * said_secs <= heard_secs <= said_secs + 1.5, (heard_secs, said_secs)
        # Later turns see the corrected words.
        await call.send_json({"type": "status"})
        _, status = await call.wait_for("session.status", after=at)
        assert [m["content"] for m in status["history"] if m["role"] == "user"] == [REVISED]
        # The record is patched: the turn's user text, its segments (marked revised),
        # and the timeline says what was heard first, and by whom it was revised.
        record = await stored_record(revising_server, call, lambda r: revision_entry(r))
    (turn,) = [t for t in record["turns"] if t["seq"] == turn_id]
    assert turn["user_text"] == REVISED
    segments = [s for s in record["segments"] if s["turn"] == turn_id]
    assert " ".join(s["text"] for s in segments) == REVISED
    assert {s["segment_id"] for s in segments if s["kind"] == "revised"} == {
        e["segment_id"] for e in revisions
    }
    entry = revision_entry(record)
    assert entry is not None and entry["turn"] == turn_id
    assert entry["data"]["outcome"] == "revised" and entry["data"]["recognizer"] == "larger"
    assert entry["data"]["previous_text"] == ended["text"]


async def test_the_live_recognizer_hears_a_turn_said_in_two_parts_again_as_one(
    embedded_engines: Engines, caller: Any, tmp_path: Path
) -> None:
    """The shipped default: the embedded recognizer itself revises, when the process is
    quiet. Whether its words then differ depends on the clip; either way the whole turn
    was heard, and what the caller and the record have agree."""
    settings = Settings(
        server={"database_url": f"sqlite:///{tmp_path / 'parley.db'}", "token_secret": SECRET},
        stt={"revise": True},
    )
    reviser = await build_reviser(settings, embedded_engines.stt)
    assert reviser is not None and reviser.name == "live" and reviser.local
    engines = dataclasses.replace(
        embedded_engines, reviser=reviser, background=background_work(embedded_engines.tts)
    )
    # A dangling "with" holds the turn open over the pause (as in test_e2e_voice's
    # mid-sentence pause): two segments, one turn.
    first = trim(caller("I would like to order a cup of coffee with"))
    second = trim(caller("milk and sugar please"))
    async with (
        contextlib.asynccontextmanager(serve_app)(create_app(settings, engines=engines)) as srv,
        CallClient(srv.ws_url) as call,
    ):
        _, greeted_at = await wait_reply_done(call, after=0)
        await call.say(np.concatenate([first, silence(0.7), second]))
        ended_at, ended = await call.wait_for("turn.ended", after=greeted_at, timeout=30)
        turn_id = ended["turn_id"]
        finals = [e for e in call.of_type("transcript.final") if e["turn_id"] == turn_id]
        assert len(finals) >= 2, (
            ended,
            call.of_type("transcript.final"),
        )  # the premise: the turn was said in two parts
        await wait_reply_done(call, after=ended_at)
        record = await stored_record(srv, call, lambda r: revision_entry(r))
        entry = revision_entry(record)
        assert entry is not None
        data = entry["data"]
        assert data["recognizer"] == "live" and data["outcome"] in ("revised", "unchanged"), data
        said_secs = (first.size + second.size) / 16_000
        assert data["audio_secs"] >= said_secs, (data, said_secs)  # both parts, one window
        await call.send_json({"type": "status"})
        _, status = await call.wait_for("session.status", after=ended_at)
        revisions = [e for e in call.of_type("transcript.revised") if e["turn_id"] == turn_id]
    users = [m["content"] for m in status["history"] if m["role"] == "user"]
    (turn,) = [t for t in record["turns"] if t["seq"] == turn_id]
    if data["outcome"] == "revised":
        assert revisions and {e["turn_text"] for e in revisions} == {turn["user_text"]}
        assert users == [turn["user_text"]] and data["previous_text"] == ended["text"]
    else:
        assert not revisions and users == [ended["text"]] == [turn["user_text"]]


@pytest.mark.browser
@pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="Debian chromium is not installed")
def test_the_page_shows_the_revised_transcript(
    revising_server: ServerProcess, tmp_path: Path
) -> None:
    """The caller's page (Debian's chromium, a fake microphone playing espeak-ng speech,
    WebRTC) shows the turn's words as revised, in place and marked; so does the
    transcript it rebuilds from the server's record on a reconnect; the inspector says
    what was heard first and who revised it."""
    # Imported here: that module skips itself where chromium or Playwright is missing,
    # which must not skip this file's other tests.
    from test_e2e_browser import chromium_args, microphone_file, start_call

    sync_api = pytest.importorskip("playwright.sync_api")
    wav = microphone_file(tmp_path, ASKED)
    errors: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=chromium_args(wav)
        )
        try:
            page = browser.new_page()
            page.on("pageerror", lambda error: errors.append(str(error)))
            start_call(page, revising_server.http)
            user = "#transcript li.user:not([data-turn='0'])"
            page.wait_for_selector(f"{user} .final", timeout=60_000)
            first_heard = page.inner_text(user)
            assert "thirty" not in first_heard.lower(), first_heard
            page.wait_for_selector(f"{user}.revised .revised", timeout=60_000)
            row = page.locator(user)
            assert row.locator(".revised-badge").inner_text() == "revised"
            spans = row.locator("[data-segment]").all_inner_texts()
            assert " ".join(s.strip() for s in spans) == REVISED
            titles = row.locator(".revised").evaluate_all("els => els.map(e => e.title)")
            assert all(t.startswith("revised — first heard as “") for t in titles), titles
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "browser-revised.png"), full_page=True)
            session_id = page.evaluate("window.parley.sessionId")
            rebuilt_from_the_record(page, revising_server, session_id)
            inspect_revision(page, revising_server, session_id)
        finally:
            browser.close()
    assert not errors, errors


def admin_token(server: ServerProcess) -> str:
    answer = httpx.post(
        f"{server.http}/v1/admin/tokens", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    answer.raise_for_status()
    return str(answer.json()["token"])


def rebuilt_from_the_record(page: Any, server: ServerProcess, session_id: str) -> None:
    """What the page shows after a reconnect — the transcript rebuilt from the server's
    timeline by its own module — has the revised words, marked."""
    token = admin_token(server)
    url = f"{server.http}/v1/sessions/{session_id}/timeline"
    auth = {"Authorization": f"Bearer {token}"}
    for _ in range(50):  # the store is written behind the conversation
        record = httpx.get(url, headers=auth).json()
        if revision_entry(record) is not None:
            break
        time.sleep(0.1)
    rebuilt = page.evaluate(
        """async ([url, token]) => {
            const { TranscriptView } = await import("/transcript.js");
            const headers = { Authorization: `Bearer ${token}` };
            const timeline = await (await fetch(url, { headers })).json();
            const view = new TranscriptView(document.createElement("ul"));
            view.fromTimeline(timeline);
            const li = view.list.querySelector("li.user[data-turn='1']");
            return {
                revised: li.classList.contains("revised"),
                badge: !!li.querySelector(".revised-badge"),
                text: li.querySelector(".final").textContent.trim(),
            };
        }""",
        [url, token],
    )
    assert rebuilt == {"revised": True, "badge": True, "text": REVISED}, rebuilt


def inspect_revision(page: Any, server: ServerProcess, session_id: str) -> None:
    """The inspector shows the turn's revision: by whom, and the words first heard."""
    page.goto(f"{server.http}/inspect/{session_id}")
    page.fill("#secret", ADMIN_KEY)
    page.click("#credentials button")
    page.wait_for_selector("#turns li.turn[data-seq='1']", timeout=10_000)
    fact = page.locator("#turns li.turn[data-seq='1'] .facts .revision")
    text = fact.inner_text()
    assert fact.get_attribute("data-outcome") == "revised", text
    assert text.startswith("transcript revised by larger"), text
    assert "first heard: “" in text
    assert page.locator("#turns li.turn[data-seq='1'] .said.user").inner_text().endswith(REVISED)
    page.screenshot(path=str(ARTIFACTS / "inspector-revised.png"), full_page=True)
