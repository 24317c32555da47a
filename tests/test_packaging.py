"""What `pip install parley[piper]` brings is enough to start the server, and
`make test-fast` needs neither PostgreSQL nor the models."""

from __future__ import annotations

import hashlib
import importlib.util
import re
import shlex
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "parley"
SMART_TURN_SHA256 = "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"


def test_the_end_of_turn_model_comes_with_parley_itself(monkeypatch):
    from parley.engines import turn_smart

    real_find_spec = importlib.util.find_spec

    def without_pipecat(name: str, *args: object):  # type: ignore[no-untyped-def]
        return None if name.split(".")[0] == "pipecat" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_pipecat)
    path = turn_smart.default_model_path()
    assert path.is_relative_to(PACKAGE)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SMART_TURN_SHA256


def test_the_model_and_its_licence_are_package_data():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["parley"]
    shipped = PACKAGE / "engines" / "models" / "smart_turn"
    licence = (shipped / "LICENSE").read_text()
    assert "BSD 2-Clause" in licence and "Daily" in licence
    for name in ("smart-turn-v3.2-cpu.onnx", "LICENSE"):
        relative = (shipped / name).relative_to(PACKAGE).as_posix()
        assert any(fnmatch(relative, p) for p in patterns), relative


def _makefile_recipe(target: str) -> list[str]:
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"^{re.escape(target)}:", line))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def test_the_makefile_installs_only_the_package_and_its_extras():
    """No Makefile step installs a file that the server loads (a plain `pip install` of the
    package would lack it)."""
    installs = [line for line in _makefile_recipe("$(STAMP)") if "pip install" in line]
    for line in installs:
        args = [a for a in shlex.split(line) if not a.startswith("-")]
        packages = args[args.index("install") + 1 :]
        assert packages in (["pip", "wheel"], [".[piper,dev]"]), line


def test_test_fast_selects_no_postgresql_and_no_model_tests():
    (command,) = [line for line in _makefile_recipe("test-fast") if "pytest" in line]
    args = shlex.split(command)
    marks = args[len(args) - 1 - args[::-1].index("-m") + 1]  # pytest's -m, not python's
    files = ["tests/test_store.py", "tests/test_support.py", "tests/test_e2e_voice.py"]
    pytest = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
    collected = subprocess.run(
        [*pytest, "-m", marks, *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    ids = [line for line in collected.stdout.splitlines() if "::" in line]
    assert ids, collected.stdout + collected.stderr
    assert not [i for i in ids if "postgresql" in i], ids
    assert any("[sqlite]" in i for i in ids), ids
    assert not [i for i in ids if "test_e2e_voice" in i], ids
    # It transcribes espeak-ng speech with the real Whisper model.
    assert not [i for i in ids if "test_whisper_reads_speech_longer_than_its_window" in i], ids
    assert any("test_settings_from_toml_and_env" in i for i in ids), ids
