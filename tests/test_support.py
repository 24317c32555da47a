import json
import logging
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from parley.audio import trim_leading_silence
from parley.config import load_settings
from parley.engines.whisper_features import log_mel_features
from parley.telemetry.logs import JsonFormatter
from parley.telemetry.redact import Redactor


def test_redactor_masks_email_phone_card_but_not_addresses():
    r = Redactor()
    out = r(
        "mail bob@example.com or call +1 (555) 123-4567, "
        "card 4111 1111 1111 1111, at 127.0.0.1:8000"
    )
    assert "bob@" not in out and "555" not in out and "4111" not in out
    assert "[REDACTED:email]" in out and "[REDACTED:phone]" in out and "[REDACTED:card]" in out
    assert "127.0.0.1:8000" in out


def test_json_log_lines_carry_ids_and_redact_text_fields():
    record = logging.LogRecord("parley.x", logging.INFO, __file__, 1, "turn ended", None, None)
    record.fields = {"text": "my email is a@b.co", "turn_id": 3}
    record.session_id = "s1"
    line = json.loads(JsonFormatter(Redactor()).format(record))
    assert line["session_id"] == "s1" and line["turn_id"] == 3
    assert line["text"] == "my email is [REDACTED:email]"


def test_no_secret_reaches_a_log_line():
    """Regression: uvicorn logged each WebSocket's path, session token included."""
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzaWQiOiJhYmMifQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    record = logging.LogRecord(
        "uvicorn.error",
        logging.INFO,
        __file__,
        1,
        '%s - "WebSocket %s" %d',
        ("127.0.0.1:5000", f"/v1/ws?token={jwt}&x=1", 101),
        None,
    )
    record.fields = {"url": "http://h/v1?api_key=sk-abcdefghijkl", "auth": f"Bearer {jwt}"}
    line = JsonFormatter(Redactor()).format(record)
    assert jwt not in line and "sk-abcdefghijkl" not in line
    # uvicorn's lines lose the whole query string (where clients put what they should not).
    assert "/v1/ws?[REDACTED:query]" in line
    assert json.loads(line)["auth"] == "Bearer [REDACTED:secret]"


def test_settings_from_toml_and_env(tmp_path, monkeypatch):
    path = tmp_path / "agent.toml"
    path.write_text('[agent]\ngreeting = "Hey"\n[turn]\nmax_endpointing_delay = 2.5\n')
    monkeypatch.setenv("PARLEY_CONFIG", str(path))
    monkeypatch.setenv("PARLEY_TURN__MIN_ENDPOINTING_DELAY", "0.4")
    s = load_settings()
    assert s.agent.greeting == "Hey"
    assert s.turn.max_endpointing_delay == 2.5
    assert s.turn.min_endpointing_delay == 0.4


def test_bad_settings_are_rejected_clearly(tmp_path, monkeypatch):
    path = tmp_path / "agent.toml"
    path.write_text("[turn]\nmin_endpointing_delay = -1\n")
    monkeypatch.setenv("PARLEY_CONFIG", str(path))
    with pytest.raises(ValidationError, match="min_endpointing_delay"):
        load_settings()
    monkeypatch.setenv("PARLEY_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(FileNotFoundError):
        load_settings()


def test_trim_leading_silence_keeps_a_little_before_the_sound():
    audio = np.concatenate([np.zeros(6400), np.full(1600, 8000.0), np.zeros(800)]).astype("<i2")
    out = trim_leading_silence(audio, keep_secs=0.02)
    assert out.size == audio.size - 6400 + 320
    assert trim_leading_silence(np.zeros(1000, dtype="<i2")).size == 0


def test_features_match_the_reference_smart_turn_was_trained_on():
    """Same numbers as the Whisper feature extractor of the pipecat-ai wheel (a copy in
    tests/reference)."""
    import importlib.util

    ref_path = Path(__file__).parent / "reference" / "pipecat_whisper_features.py"
    spec = importlib.util.spec_from_file_location("ref_features", ref_path)
    assert spec and spec.loader
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    x = np.random.default_rng(0).standard_normal(16_000 * 5).astype(np.float32) * 0.1
    ours = log_mel_features(np.pad(x, (16_000 * 3, 0)))
    theirs = ref.compute_whisper_log_mel_features(np.pad(x, (16_000 * 3, 0)))
    assert ours.shape == (80, 800)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_whisper_reads_speech_longer_than_its_window():
    """A 35 s monologue is transcribed in full, not cut at Whisper's 30 s window."""
    from parley.config import STTSettings
    from parley.engines.stt_whisper import WhisperSTT
    from parley.testing import caller_speech

    first = caller_speech("Good morning everyone")
    last = caller_speech("Thank you and goodbye")
    gap = np.zeros(16_000 * 35 - first.size - last.size, dtype="<i2")
    audio = np.concatenate([first, gap, last]).astype(np.float32) / 32768
    stt = WhisperSTT(STTSettings(cpu_threads=1))
    try:
        text = stt._transcribe_blocking(audio)[0].lower()
    finally:
        stt.close()
    assert "morning" in text and "goodbye" in text, text


async def test_a_stuck_inference_call_times_out_for_its_caller():
    import time as _time

    from parley.engines.lanes import InferenceLane

    lane = InferenceLane("test", 1, timeout=0.1)
    try:
        with pytest.raises(TimeoutError):
            await lane.run(_time.sleep, 0.5)
        assert lane.pending == 0
    finally:
        lane.shutdown()


@pytest.mark.parametrize("timeout", [None, 5.0])
async def test_a_call_whose_caller_gave_up_never_runs_later(timeout):
    """A queued call whose caller was cancelled (a superseded draft transcription) is
    dropped from the lane, not run for nobody while live callers wait behind it."""
    import asyncio
    import threading

    from parley.engines.lanes import InferenceLane

    lane = InferenceLane("test", 1, timeout=timeout)
    release = threading.Event()
    ran: list[str] = []
    try:
        busy = asyncio.create_task(lane.run(release.wait, 5))
        await asyncio.sleep(0.05)  # the lane's one thread is busy now
        queued = asyncio.create_task(lane.run(ran.append, "abandoned"))
        await asyncio.sleep(0.05)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        release.set()
        await busy
        await lane.run(ran.append, "next")
        assert ran == ["next"]
    finally:
        release.set()
        lane.shutdown()
