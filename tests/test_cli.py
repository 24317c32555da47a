"""``parley call`` fails clearly on bad input, without a traceback."""

from __future__ import annotations

import subprocess
import sys

from parley.testing import free_port


def run_call(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "parley", "call", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_call_rejects_a_file_that_is_not_wav(tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_text("this is not audio")
    result = run_call(str(bad))
    assert result.returncode == 2
    assert "cannot read" in result.stderr and "Traceback" not in result.stderr


def test_call_reports_an_unreachable_server(tmp_path):
    import numpy as np

    from parley.audio import write_wav

    wav = tmp_path / "hello.wav"
    write_wav(wav, np.zeros(1600, dtype="<i2"))
    result = run_call(str(wav), "--url", f"ws://127.0.0.1:{free_port()}/v1/ws")
    assert result.returncode == 1
    assert "cannot reach" in result.stderr and "Traceback" not in result.stderr
