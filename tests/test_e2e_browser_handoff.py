"""Human handoff in two real browsers (Debian's headless Chromium, two instances: the fake
microphone file is a launch flag): a caller on the caller page asks for a person; a
supervisor on the supervisor console sees the request with the caller's words, listens
in, takes the conversation over and speaks to the caller, then hands it back, and the
agent answers the caller's next question. Both microphones are espeak-ng speech played
by Chromium's fake capture device, each from the moment its page opens the microphone.

Checked through what the pages show (the request, the live transcripts, who has the
conversation), what the caller's page measures (a WebAudio analyser on the remote
track: the supervisor's voice reaches the caller), the caller's protocol events (no
agent reply while a person has the conversation) and the session's stored record over
HTTP (the supervisor's words, marked as a person's)."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from parley.audio import write_wav
from parley.testing import ServerProcess, caller_speech
from test_e2e_browser import chromium_args

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
AUDIBLE_RMS = 0.01
"""Audio on a remote track above this RMS (full scale 1.0) counts as heard."""
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
SUPERVISOR_KEY = "e2e-supervisor-key-0123456789abcdef"
RATE = 16_000

# The caller's microphone, in seconds from the moment the caller page opens it (the
# Start click): silence while the page connects and the greeting plays, the request
# for a person, a remark while the person has the conversation, and, well after the
# test has handed the conversation back, a question for the agent.
ASK = "I want to talk to a person."
ASK_AT = 6.0
DURING = "Okay, thank you very much."
DURING_AT = 28.0
QUESTION = "What is the capital city of France?"
QUESTION_AT = 42.0
# The supervisor's microphone, from the moment the console opens it (opening a session):
# silence while it connects and takes over, then the supervisor speaks.
SUPERVISOR_SAYS = "Hello, this is Maria from the support team. Your order ships tomorrow."
SUPERVISOR_AT = 7.0

if shutil.which(CHROMIUM) is None:  # `make test` installs it; a bare pytest may not have
    pytest.skip("Debian chromium is not installed (make test installs it)", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")


def microphone(
    path: Path, parts: list[tuple[float, str]], tail_secs: float
) -> tuple[Path, dict[str, tuple[float, float]]]:
    """A fake-microphone file: each text spoken by espeak-ng at its second, silence
    around; returns the file and each text's (start, end) in seconds."""
    pcm = np.zeros(0, "<i2")
    spans = {}
    for at, text in parts:
        assert at * RATE >= pcm.size, f"{text!r} would start before the previous one ends"
        speech = caller_speech(text)
        pcm = np.concatenate([pcm, np.zeros(int(at * RATE) - pcm.size, "<i2"), speech])
        spans[text] = (at, pcm.size / RATE)
    pcm = np.concatenate([pcm, np.zeros(int(tail_secs * RATE), "<i2")])
    write_wav(path, pcm)
    return path, spans


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


@pytest.fixture(scope="module")
def handoff_server(tmp_path_factory) -> Iterator[ServerProcess]:
    from conftest import ADMIN_KEY, ROOT, TOKEN_SECRET

    db = tmp_path_factory.mktemp("handoff") / "handoff.db"
    srv = ServerProcess(
        {
            "PARLEY_CONFIG": str(ROOT / "tests" / "parley.test.toml"),
            "PARLEY_SERVER__DATABASE_URL": f"sqlite:///{db}",
            "PARLEY_SERVER__TOKEN_SECRET": TOKEN_SECRET,
            "PARLEY_TELEMETRY__ADMIN_KEY": ADMIN_KEY,
            "PARLEY_HANDOFF__SUPERVISOR_KEY": SUPERVISOR_KEY,
            "PARLEY_SERVER__SESSION_CREATE_RATE": "0",
        },
        ARTIFACTS / "browser-handoff.log",
        cwd=ROOT,
    )
    yield srv
    srv.stop()


@pytest.fixture
def browsers() -> Iterator:
    """Launches Debian's chromium (never a downloaded one), one instance per fake
    microphone file."""
    with sync_api.sync_playwright() as playwright:
        launched: list = []
        page_errors: list[str] = []

        def launch(wav: Path):
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=chromium_args(wav)
            )
            launched.append(browser)
            page = browser.new_page()
            page.on("pageerror", lambda error: page_errors.append(f"{wav.name}: {error}"))
            return page

        yield launch
        for browser in launched:
            browser.close()
        assert not page_errors, page_errors  # no uncaught script error on either page


def record_levels(page, rms: str) -> None:
    """Keep (wall-clock ms, RMS) of a page's remote track every 50 ms (both browsers
    run on this machine: one clock)."""
    page.evaluate(
        f"() => {{ window.levels = []; setInterval(() => "
        f"window.levels.push([Date.now(), {rms}]), 50); }}"
    )


def loudest(page, start_ms: float, end_ms: float) -> float:
    levels = page.evaluate(
        "([a, b]) => window.levels.filter(([t]) => t >= a && t <= b).map(([, v]) => v)",
        [start_ms, end_ms],
    )
    assert levels, f"no level samples between {start_ms} and {end_ms}"
    return max(levels)


def test_a_supervisor_takes_over_and_hands_back(handoff_server, browsers, tmp_path):
    srv = handoff_server
    caller_wav, caller_spans = microphone(
        tmp_path / "caller.wav", [(ASK_AT, ASK), (DURING_AT, DURING), (QUESTION_AT, QUESTION)], 30
    )
    supervisor_wav, supervisor_spans = microphone(
        tmp_path / "supervisor.wav", [(SUPERVISOR_AT, SUPERVISOR_SAYS)], 90
    )

    # The console: a wrong key is refused in words; the right one opens it.
    console = browsers(supervisor_wav)
    console.goto(f"{srv.http}/supervisor")
    console.fill("#secret", "not-the-key")
    console.click("#credentials button")
    console.wait_for_selector("#banner:has-text('Cannot open the console')", timeout=10_000)
    assert console.is_visible("#credentials")
    console.fill("#secret", SUPERVISOR_KEY)
    console.fill("#name", "Maria")
    console.click("#credentials button")
    console.wait_for_selector("#console-state[data-state='online']", timeout=10_000)
    assert "Maria" in console.inner_text("#whoami")
    assert SUPERVISOR_KEY not in console.url and "token" not in console.url

    # The caller starts talking; the console lists the session.
    caller = browsers(caller_wav)
    caller.goto(srv.http)
    caller.check("#consent-check")
    caller.click("#start")
    t0 = time.monotonic()  # the caller's microphone opens on this click (within ~0.3 s)
    t0_ms = caller.evaluate("Date.now()")
    caller.wait_for_function("window.parley.sessionId !== null", timeout=15_000)
    session_id = caller.evaluate("window.parley.sessionId")
    record_levels(caller, "window.parley.agentRms")
    row = f"#session-rows tr.session[data-session='{session_id}']"
    console.wait_for_selector(row, timeout=15_000)

    def at(label: str, seconds: float) -> None:
        """The test is on time for the caller's microphone (a slower machine would have
        the caller speak to the wrong party)."""
        late = time.monotonic() - t0
        assert late < seconds, (
            f"{label} {late:.1f}s after the caller's start: too slow for this timeline"
        )

    try:
        # 1. The request, flagged at the top, with the reason and the caller's words.
        request = f"#request-list li.request[data-session='{session_id}']"
        console.wait_for_selector(request, timeout=(ASK_AT + 30) * 1000)
        assert "person" in console.inner_text(f"{request} .reason").lower()
        asked = console.inner_text(f"{request} .request-transcript li.caller")
        assert len(words(ASK) & words(asked)) >= 3, asked
        console.wait_for_selector(f"{row}[data-handoff='requested']", timeout=5_000)
        assert caller.evaluate("window.parley.handoff") == "requested"
        caller.wait_for_selector("#transcript li.notice.handoff-requested")

        # 2. Open it (watch + listen live), take over.
        console.click(f"{request} button[data-testid='open-request']")
        console.wait_for_selector("#listen-state[data-state='live']", timeout=15_000)
        record_levels(console, "window.parleySupervisor.remoteRms")
        assert console.evaluate("window.parleySupervisor.micAvailable") is True
        assert console.is_enabled("#take-over") and console.is_disabled("#hand-back")
        console.click("#take-over")
        console.wait_for_selector("#holder[data-holder='human'].mine", timeout=10_000)
        assert "You have the conversation" in console.inner_text("#holder")
        assert console.evaluate("window.parleySupervisor.micOn") is True
        caller.wait_for_selector("#transcript li.notice.handoff-accepted", timeout=5_000)
        assert caller.evaluate("window.parley.handoff") == "human"
        taken_ms = caller.evaluate("Date.now()")
        events_at_takeover = caller.evaluate("window.parley.events.length")
        at("taken over", DURING_AT - 2)

        # 3. The supervisor speaks: the caller hears it, both transcripts show it.
        mic_ms = console.evaluate("window.parleySupervisor.micStartedAt")
        start, end = supervisor_spans[SUPERVISOR_SAYS]
        human = console.wait_for_selector(
            "#live-transcript li.human", timeout=(SUPERVISOR_AT + 25) * 1000
        )
        said = human.inner_text()
        assert len(words(SUPERVISOR_SAYS) & words(said)) >= 4, said
        assert console.inner_text("#live-transcript li.human .who") == "Person (Maria)"
        assert console.inner_text(f"{row} td.holder") == "you"
        assert console.get_attribute(row, "data-handoff") == "human"
        caller.wait_for_selector("#transcript li.human", timeout=5_000)
        heard = caller.inner_text("#transcript li.human")
        assert heard.startswith("Person") and len(words(SUPERVISOR_SAYS) & words(heard)) >= 4, heard
        voice = loudest(caller, mic_ms + start * 1000 + 300, mic_ms + end * 1000)
        assert voice > AUDIBLE_RMS, f"the caller did not hear the supervisor (max RMS {voice:.4f})"
        # Before the supervisor spoke, after the take-over: the agent was silenced.
        quiet_from, quiet_to = taken_ms + 1500, mic_ms + start * 1000 - 200
        if quiet_to - quiet_from >= 1000:
            hush = loudest(caller, quiet_from, quiet_to)
            assert hush < AUDIBLE_RMS / 2, (
                f"the agent still spoke after the take-over (RMS {hush:.4f})"
            )
        ARTIFACTS.mkdir(exist_ok=True)
        console.screenshot(path=str(ARTIFACTS / "supervisor-console.png"), full_page=True)

        # 4. The caller speaks while the person has the conversation: the console shows
        # it live; the agent does not answer.
        console.wait_for_function(
            """words => [...document.querySelectorAll('#live-transcript li.caller:not(.live)')]
                 .some(li => words.filter(w => li.innerText.toLowerCase().includes(w))
                   .length >= 2)""",
            arg=sorted(words(DURING)),
            timeout=max(1_000, (DURING_AT + 20 - (time.monotonic() - t0)) * 1000),
        )
        time.sleep(3)  # an agent reply would have started by now
        since = caller.evaluate(f"window.parley.events.slice({events_at_takeover})")
        assert "agent.text" not in since and "agent.filler" not in since, since
        assert caller.evaluate("window.parley.agentState") != "speaking"
        start, end = caller_spans[DURING]
        heard_caller = loudest(console, t0_ms + start * 1000 + 500, t0_ms + end * 1000)
        assert heard_caller > AUDIBLE_RMS, (
            f"the supervisor did not hear the caller ({heard_caller})"
        )

        # 5. Hand back, before the caller's question.
        at("handing back", QUESTION_AT - 2)
        console.click("#hand-back")
        console.wait_for_selector("#holder[data-holder='agent']", timeout=15_000)
        assert console.is_enabled("#take-over") and console.is_disabled("#hand-back")
        assert console.evaluate("window.parleySupervisor.micOn") is False
        caller.wait_for_selector("#transcript li.notice.handoff-returned", timeout=5_000)
        assert caller.evaluate("window.parley.handoff") == "agent"
        events_at_return = caller.evaluate("window.parley.events.length")
        at("handed back", QUESTION_AT - 0.5)

        # 6. The agent answers the caller's next question.
        caller.wait_for_function(
            f"window.parley.events.slice({events_at_return}).includes('agent.text')",
            timeout=(QUESTION_AT + 30 - (time.monotonic() - t0)) * 1000,
        )
        caller.wait_for_function("window.parley.agentState === 'listening'", timeout=30_000)
        asked_last = caller.locator("#transcript li.user").last.inner_text()
        assert len(words(QUESTION) & words(asked_last)) >= 3, asked_last
        console.wait_for_selector("#live-transcript li.event.handoff ~ li.agent", timeout=10_000)
        console.screenshot(
            path=str(ARTIFACTS / "supervisor-console-handed-back.png"), full_page=True
        )
        caller.screenshot(path=str(ARTIFACTS / "browser-handoff-caller.png"), full_page=True)
    except Exception:
        ARTIFACTS.mkdir(exist_ok=True)
        console.screenshot(path=str(ARTIFACTS / "supervisor-console-failed.png"), full_page=True)
        caller.screenshot(path=str(ARTIFACTS / "browser-handoff-caller-failed.png"), full_page=True)
        raise

    # 7. The session's record: who asked, who took over and what they said (a person's
    # words), the caller's turn during the take-over handled by that person, the
    # hand-back, and the agent's answer after it.
    record = stored_record(srv, session_id)
    for _ in range(20):  # the reply's record is written just after its last audio
        if record["turns"][-1]["state"] != "processing":
            break
        time.sleep(0.25)
        record = stored_record(srv, session_id)
    events = record["events"]
    stages = [e["stage"] for e in events]
    for stage in ("handoff.requested", "handoff.accepted", "human.said", "handoff.returned"):
        assert stage in stages, stages
    assert (
        stages.index("handoff.accepted")
        < stages.index("human.said")
        < stages.index("handoff.returned")
    )
    accepted = next(e for e in events if e["stage"] == "handoff.accepted")
    assert accepted["data"]["by"] == "supervisor:Maria", accepted
    human_said = [e for e in events if e["stage"] == "human.said"]
    assert all(e["data"]["by"] == "supervisor:Maria" for e in human_said), human_said
    spoken = " ".join(e["data"]["text"] for e in human_said)
    assert len(words(SUPERVISOR_SAYS) & words(spoken)) >= 4, spoken
    turns = record["turns"]
    by_person = [t for t in turns if (t["result"] or {}).get("handled_by") == "human"]
    assert by_person and len(words(DURING) & words(by_person[0]["user_text"] or "")) >= 2, turns
    answered = [
        t for t in turns if t["seq"] > by_person[-1]["seq"] and (t["result"] or {}).get("spoken")
    ]
    assert answered, turns


def stored_record(srv: ServerProcess, session_id: str) -> dict:
    from conftest import ADMIN_KEY

    admin = httpx.post(
        f"{srv.http}/v1/admin/tokens", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10
    )
    admin.raise_for_status()
    token = admin.json()["token"]
    answer = httpx.get(
        f"{srv.http}/v1/sessions/{session_id}/timeline",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    answer.raise_for_status()
    return dict(answer.json())
