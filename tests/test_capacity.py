"""A process's capacity comes from its engines and cores unless ``server.max_sessions``
says otherwise; a container's CPU quota counts, not the host's cores."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from parley.config import Settings
from parley.engines import capacity
from parley.engines.capacity import (
    EMBEDDED_SESSIONS_PER_CORE,
    REMOTE_SESSIONS_PER_CORE,
    available_cores,
    session_capacity,
)
from parley.transports.admission import Admission


@pytest.fixture(autouse=True)
def derived(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite's conftest fixes a capacity for its servers: not here."""
    monkeypatch.delenv("PARLEY_SERVER__MAX_SESSIONS", raising=False)


def remote(**server: object) -> Settings:
    stage = {"provider": "openai", "base_url": "http://127.0.0.1:9/v1"}
    return Settings(stt=stage, llm=stage, tts=stage, server=server)


def test_embedded_models_on_the_cpu_take_what_make_bench_holds_per_core() -> None:
    settings = Settings(stt={"device": "cpu"}, llm={"device": "cpu"}, tts={"device": "cpu"})
    got = session_capacity(settings, cores=2)
    assert (got.sessions, got.basis) == (int(2 * EMBEDDED_SESSIONS_PER_CORE), "embedded-cpu")
    # One embedded stage is enough to bound it: the others being remote does not help.
    mixed = remote().model_copy(update={"tts": Settings().tts.model_copy(update={"device": "cpu"})})
    assert session_capacity(mixed, cores=4).basis == "embedded-cpu"


def test_all_stages_remote_take_what_the_load_bench_holds_per_core() -> None:
    got = session_capacity(remote(), cores=2)
    assert (got.sessions, got.basis) == (int(2 * REMOTE_SESSIONS_PER_CORE), "remote")
    assert session_capacity(remote(), cores=0.5).sessions == int(0.5 * REMOTE_SESSIONS_PER_CORE)


def test_a_configured_figure_wins() -> None:
    got = session_capacity(remote(max_sessions=3), cores=16)
    assert (got.sessions, got.basis) == (3, "configured")


def test_a_containers_cpu_quota_caps_the_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(capacity.device, "cpu_count", lambda: 8)
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")
    assert available_cores(cpu_max) == 1.5
    cpu_max.write_text("max 100000\n")
    assert available_cores(cpu_max) == 8
    assert available_cores(tmp_path / "absent") == 8


def test_admission_counts_against_the_apps_figure() -> None:
    state = SimpleNamespace(sessions={}, webrtc_peers={})
    admission = Admission(state, remote().server, capacity=30)
    assert admission.max_sessions == 30
