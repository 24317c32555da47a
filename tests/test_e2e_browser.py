"""The browser client in real headless Chromium (Debian's), driven by Playwright: a fake
microphone plays a caller utterance generated at test time with espeak-ng; the page
talks to Parley over WebRTC.

Checked through what the page shows (transcript, agent text, interrupted turns, banners)
and what it measures (a WebAudio analyser on the agent's remote track)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from parley.audio import write_wav
from parley.testing import ServerProcess, caller_speech, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
AUDIBLE_RMS = 0.01
"""Agent audio on the remote track above this RMS (full scale 1.0) counts as heard."""
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"

if shutil.which(CHROMIUM) is None:  # `make test` installs it; a bare pytest may not have
    pytest.skip("Debian chromium is not installed (make test installs it)", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")


def microphone_file(tmp_path: Path, text: str, lead_secs: float = 4.0) -> Path:
    """What the fake microphone plays: silence while the page connects and the greeting
    plays, the caller's utterance, then silence (played once: ``%noloop``)."""
    speech = caller_speech(text)
    pcm = np.concatenate(
        [np.zeros(int(lead_secs * 16_000), "<i2"), speech, np.zeros(30 * 16_000, "<i2")]
    )
    path = tmp_path / "caller.wav"
    write_wav(path, pcm)
    return path


def chromium_args(wav: Path | None, *, grant_microphone: bool = True) -> list[str]:
    """Chromium's flags for a page test: a fake microphone playing ``wav`` once (none:
    silence), granted without asking unless ``grant_microphone`` is false."""
    args = [
        "--use-fake-device-for-media-stream",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--autoplay-policy=no-user-gesture-required",
    ]
    if grant_microphone:
        args.append("--use-fake-ui-for-media-stream")
    if wav is not None:
        args.append(f"--use-file-for-fake-audio-capture={wav}%noloop")
    return args


@pytest.fixture
def chromium(tmp_path) -> Iterator:
    """Launches Debian's chromium (never a downloaded one) with a fake microphone."""
    with sync_api.sync_playwright() as playwright:

        def launch(wav: Path | None, *, grant_microphone: bool = True):
            args = chromium_args(wav, grant_microphone=grant_microphone)
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
            launched.append(browser)
            return browser.new_page()

        launched: list = []
        yield launch
        for browser in launched:
            browser.close()


def start_call(page, url: str) -> None:
    page.goto(url)
    page.check("#consent-check")
    page.click("#start")


def wait_agent_reply(page, timeout_ms: int = 60_000) -> None:
    """A user turn (number >= 1) has a final transcript and an agent reply."""
    page.wait_for_selector("#transcript li.user .final", timeout=timeout_ms)
    page.wait_for_selector("#transcript li.agent:not([data-turn='0']) .said", timeout=timeout_ms)


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def test_page_talks_with_the_agent_over_webrtc(server, chromium, tmp_path):
    said = "What is the capital city of France"
    page = chromium(microphone_file(tmp_path, said))
    start_call(page, server.http)
    wait_agent_reply(page)
    user_text = page.inner_text("#transcript li.user")
    assert len(words(said) & words(user_text)) >= 4, user_text
    agent_text = page.inner_text("#transcript li.agent:not([data-turn='0'])")
    assert len(agent_text.split()) >= 3
    page.wait_for_function(f"window.parley.agentRmsMax > {AUDIBLE_RMS}", timeout=10_000)
    page.wait_for_function("window.parley.latencies.length >= 1", timeout=10_000)
    assert "voice-to-voice" in page.inner_text("#latency")
    assert "server-side" in page.inner_text("#latency")
    badge = page.inner_text("#transcript li.agent:not([data-turn='0']) .latency")
    assert re.fullmatch(r"\d+ ms", badge.strip()), badge
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-conversation.png"), full_page=True)
    inspect_the_conversation(page, server, page.evaluate("window.parley.sessionId"))


def inspect_the_conversation(page, server, session_id: str) -> None:
    """The inspector draws the conversation's turn as a waterfall with each stage."""
    from conftest import ADMIN_KEY

    page.goto(f"{server.http}/inspect/{session_id}")
    page.fill("#secret", ADMIN_KEY)
    page.click("#credentials button")
    page.wait_for_selector("#turns li.turn[data-seq='1']", timeout=10_000)
    turn = page.locator("#turns li.turn[data-seq='1']")
    stages = turn.locator(".row").evaluate_all("rows => rows.map(r => r.dataset.stage)")
    for stage in (
        "user speech",
        "end-of-turn wait",
        "stt (final)",
        "llm (to first token)",
        "tts (to first audio)",
        "events",
    ):
        assert stage in stages, stages
    # Plausible numbers: each bar has a width and a duration under ten seconds, and the
    # first audio went out after the turn was confirmed, within a few seconds.
    for text in turn.locator(".bar .ms").all_inner_texts():
        assert 0 <= int(text.removesuffix(" ms")) < 10_000, text
    facts = {
        s.get_attribute("data-mark"): int(re.search(r"(-?\d+) ms", s.inner_text()).group(1))
        for s in turn.locator(".facts span[data-mark]").all()
    }
    assert 0 < facts["turn confirmed"] <= facts["first audio sent"] < 5_000, facts
    # Smart Turn's verdict, or that the words decided without it; and the silence waited.
    eou = turn.locator(".facts .eou").inner_text()
    fact = r"end of turn: audio (\d\.\d\d|not asked), words \d\.\d\d, waited \d+ ms"
    assert re.match(fact, eou), eou
    assert page.locator("#session-events li[data-stage='transport.connected']").count() >= 1
    # What the turn's calls used and cost: the embedded models, free by default.
    assert turn.locator(".cost .cost-total").inner_text() == "cost: 0.000000 USD"
    used = {
        li.get_attribute("data-stage"): li.inner_text()
        for li in turn.locator(".cost-items li").all()
    }
    assert re.match(
        r"stt whisper/tiny\.en: \d+ calls?, \d+\.\d s of audio — 0\.000000 USD", used["stt"]
    )
    assert re.match(
        r"llm llama/\S+: \d+ calls?, \d+ tokens in, \d+ out — 0\.000000 USD", used["llm"]
    )
    assert re.match(r"tts piper/en_US-joe-medium: \d+ calls?, \d+ characters", used["tts"])
    session_cost = page.locator("#session-cost .cost-total").inner_text()
    assert session_cost == "session cost: 0.000000 USD", session_cost
    page.screenshot(path=str(ARTIFACTS / "inspector-waterfall.png"), full_page=True)


def test_interrupt_stops_playback_and_marks_the_turn(server, chromium, tmp_path):
    page = chromium(microphone_file(tmp_path, "Tell me a long story about a brave little dragon"))
    start_call(page, server.http)
    page.wait_for_selector("#transcript li.agent:not([data-turn='0']) .said", timeout=60_000)
    page.wait_for_function(f"window.parley.agentRms > {AUDIBLE_RMS}", timeout=10_000)
    page.click("#interrupt")
    page.wait_for_selector("#transcript li.agent.interrupted", timeout=5_000)
    # Playback stops: the remote track goes quiet (allowing for the jitter buffer).
    page.wait_for_function(
        f"window.parley.agentRms < {AUDIBLE_RMS / 5} && window.parley.agentState !== 'speaking'",
        timeout=3_000,
    )
    page.wait_for_timeout(500)
    assert page.evaluate("window.parley.agentRms") < AUDIBLE_RMS / 5
    page.screenshot(path=str(ARTIFACTS / "browser-interrupted.png"), full_page=True)


def test_page_resumes_the_session_after_the_connection_drops(chromium, tmp_path):
    """The server goes away (its peer connections close) and comes back on the same
    database: the page reconnects to the same session and rebuilds the transcript from
    the server's record."""
    from conftest import ROOT, TOKEN_SECRET

    env = {
        "PARLEY_CONFIG": str(ROOT / "tests" / "parley.test.toml"),
        "PARLEY_SERVER__DATABASE_URL": f"sqlite:///{tmp_path / 'resume.db'}",
        "PARLEY_SERVER__TOKEN_SECRET": TOKEN_SECRET,
    }
    port = free_port()
    first = ServerProcess(env, ARTIFACTS / "browser-resume-1.log", cwd=ROOT, port=port)
    try:
        page = chromium(microphone_file(tmp_path, "Please book a table for two at seven"))
        start_call(page, first.http)
        wait_agent_reply(page)
        page.wait_for_function("window.parley.agentState === 'listening'", timeout=30_000)
        before = page.inner_text("#transcript")
        session_id = page.evaluate("window.parley.sessionId")
    finally:
        first.stop()
    page.wait_for_function("window.parley.connected === false", timeout=10_000)
    page.wait_for_selector("#banner:has-text('reconnecting'), #banner:has-text('retrying')")
    second = ServerProcess(env, ARTIFACTS / "browser-resume-2.log", cwd=ROOT, port=port)
    try:
        page.wait_for_function(
            "window.parley.connected && window.parley.restoredFromServer", timeout=60_000
        )
        assert page.evaluate("window.parley.sessionId") == session_id
        assert page.evaluate("window.parley.reconnects") >= 1
        # Rebuilt from the server's record: the same user words and agent reply.
        after = page.inner_text("#transcript")
        user_before = before.split("\n")[1]
        assert user_before in after.split("\n"), (before, after)
        assert page.inner_text("#transcript li.agent:not([data-turn='0'])").strip()
        assert page.is_hidden("#banner")
        page.screenshot(path=str(ARTIFACTS / "browser-resumed.png"), full_page=True)
    finally:
        second.stop()


def test_a_denied_microphone_gets_a_clear_message(server, chromium):
    page = chromium(None, grant_microphone=False)
    page.context.grant_permissions([], origin=server.http)
    start_call(page, server.http)
    page.wait_for_selector("#banner:has-text('Microphone access was denied')", timeout=10_000)
    assert page.evaluate("window.parley.sessionId") is None  # nothing was created


def test_an_unreachable_server_gets_a_clear_message(server, chromium):
    page = chromium(None)
    page.goto(server.http)
    page.route("**/v1/**", lambda route: route.abort("connectionrefused"))
    page.check("#consent-check")
    page.click("#start")
    page.wait_for_selector("#banner:has-text('unreachable')", timeout=10_000)


def test_an_expired_token_gets_a_clear_message(server, chromium, tmp_path):
    """The server's answer to an expired token, as it words it, shown to the user (the
    route replays the server's own 401 body: the page cannot wait ten minutes)."""
    page = chromium(microphone_file(tmp_path, "Hello"))
    page.goto(server.http)
    page.route(
        "**/webrtc",
        lambda route: route.fulfill(
            status=401,
            content_type="application/json",
            body='{"detail": "the session token has expired; refresh it"}',
        ),
    )
    page.check("#consent-check")
    page.click("#start")
    page.wait_for_selector("#banner:has-text('Your session has expired')", timeout=10_000)
    assert "the session token has expired" in page.inner_text("#banner")
