"""The deployment files, validated statically: CI has no Docker and no Kubernetes, so what
can be checked without them is — the Compose file against the Compose specification's
schema, the manifests against the Kubernetes API schemas (strict: no unknown field),
and against Parley itself: every ``PARLEY_*`` variable is a setting that validates, every
command a ``parley`` command, every probe a route the app serves, the drain deadline
inside the grace period. None of this proves the image builds or the pods start."""

from __future__ import annotations

import argparse
import json
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from parley.config import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
KUBERNETES_VERSION = "1.30"
SERVER_COMMANDS = {"serve", "worker", "control"}


def parley_commands() -> set[str]:
    """The subcommands ``parley`` has, read from its own argument parser."""
    from parley.cli import build_parser

    (commands,) = [
        action.choices
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    ]
    return set(commands)


def app_paths() -> set[str]:
    from parley.server import create_app

    return set(create_app(Settings()).openapi()["paths"])


def settings_from(env: dict[str, str]) -> Settings:
    """The settings these ``PARLEY_*`` variables give at start-up (placeholders filled
    in), read from the environment as the server reads them: an unknown or invalid one
    fails here as it would there."""
    values = {
        name: re.sub(r"\$\{[^}]*\}|\$\([^)]*\)", "x" * 32, value)
        for name, value in env.items()
        if name.startswith("PARLEY_")
    }
    for name in values:
        model: Any = Settings
        for part in name.removeprefix("PARLEY_").lower().split("__"):
            # pydantic-settings ignores a variable that names no setting: check each.
            assert model is not None and part in model.model_fields, f"{name}: no such setting"
            annotation = model.model_fields[part].annotation
            model = (
                annotation
                if isinstance(annotation, type) and hasattr(annotation, "model_fields")
                else None
            )
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("PARLEY_")]:
            patch.delenv(name)
        for name, value in values.items():
            patch.setenv(name, value)
        return Settings()


def test_the_compose_file_follows_the_compose_specification() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    vendored = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(vendored.read_text())
    jsonschema.validate(compose, schema)

    services = compose["services"]
    assert {"control", "worker-a", "worker-b", "postgres", "redis"} <= set(services)
    for name, service in services.items():
        if "build" not in service:
            continue
        assert service["command"][0] in SERVER_COMMANDS & parley_commands(), name
        settings = settings_from(service["environment"])
        assert settings.fleet.redis_url is not None and settings.server.token_secret
        assert settings.server.database_url.startswith("postgresql")
        grace = float(service["stop_grace_period"].removesuffix("s"))
        assert grace > settings.server.drain_deadline_secs, name
        assert "/health" in " ".join(service["healthcheck"]["test"])
    workers = [s for s in services.values() if s.get("command") == ["worker"]]
    ids = {settings_from(w["environment"]).fleet.worker_id for w in workers}
    assert len(ids) == len(workers) == 2  # each worker its own name in the registry


def manifests() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.mark.parametrize("doc", manifests(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_each_manifest_follows_the_kubernetes_api(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_manifests_fit_parley() -> None:
    docs = manifests()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {
        ("Deployment", "parley-control"),
        ("Deployment", "parley-worker"),
        ("PodDisruptionBudget", "parley-worker"),
        ("HorizontalPodAutoscaler", "parley-worker"),
    } <= kinds
    commands, paths = parley_commands(), app_paths()
    for doc in docs:
        if doc["kind"] != "Deployment":
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        (container,) = pod["containers"]
        assert container["args"][0] in SERVER_COMMANDS & commands
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/health"
        assert {"/ready", "/health"} <= paths
        env = {e["name"]: e.get("value", "$(secret)") for e in container["env"]}
        settings = settings_from(env)
        assert settings.fleet.redis_url is not None and settings.server.token_secret
        if container["args"] == ["worker"]:
            pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
            assert pre_stop[:2] == ["parley", "drain"] and "drain" in commands
            assert "PARLEY_TELEMETRY__ADMIN_KEY" in env  # what `parley drain` signs in with
            grace = pod["terminationGracePeriodSeconds"]
            assert grace > settings.server.drain_deadline_secs
    hpa = next(d for d in docs if d["kind"] == "HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == "parley_active_sessions"
    from parley.telemetry.metrics import VoiceMetrics

    assert "parley_active_sessions" in {m.name for m in VoiceMetrics([]).registry.collect()}


def test_the_dockerfile_builds_in_stages_and_runs_as_a_user() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith(("#", " "))]
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) >= 2, "multi-stage"
    runtime = text.rsplit("\nFROM ", 1)[1]
    user = re.search(r"^USER (\S+)", runtime, re.M)
    assert user and user.group(1).split(":")[0] not in {"0", "root"}
    assert re.search(r'^ENTRYPOINT \["parley"\]', runtime, re.M)
    assert "EXPOSE 8000" in runtime and "PARLEY_SERVER__PORT=8000" in runtime
    # What the build stage copies exists; nothing in the image is downloaded at run time.
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for path in source.split():
            assert (ROOT / path).exists(), path
    assert not re.search(r"\b(curl|wget)\b", text)
