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


def _threads_after_numpy(env_value: str | None) -> int:
    """Threads of a fresh process that went through the CLI's start-up, then numpy."""
    import os

    code = (
        "import os\n"
        "from parley import cli\n"
        "cli.one_blas_thread()\n"
        "import numpy\n"
        "numpy.ones((64, 64)) @ numpy.ones((64, 64))\n"
        "print(len(os.listdir('/proc/self/task')))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if env_value is not None:
        env["OPENBLAS_NUM_THREADS"] = env_value
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


def test_the_server_commands_run_numpy_without_spinning_blas_threads():
    # OpenBLAS keeps a thread per core spinning after each product: on a busy worker that
    # is CPU taken from every session. One thread unless the operator says otherwise.
    import os

    assert _threads_after_numpy(None) == 1
    # The operator's own setting wins (where there are cores for a second thread).
    assert _threads_after_numpy("2") == min(2, len(os.sched_getaffinity(0)))
