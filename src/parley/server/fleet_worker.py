"""This process as a worker of a fleet (``parley worker``): its announcement in the worker
registry, read from its admission control at every heartbeat."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from parley.config import Settings
from parley.transports.admission import Admission
from parley.transports.worker_registry import WorkerHeartbeat, WorkerInfo, WorkerRegistry


@dataclass(frozen=True)
class WorkerIdentity:
    worker_id: str
    url: str
    """The public base URL clients reach this worker at."""

    @classmethod
    def for_server(cls, settings: Settings, host: str, port: int) -> WorkerIdentity:
        """From ``fleet.worker_id`` / ``fleet.public_url``, or this machine's name and port
        (an address to listen on all interfaces is no address to reach it at)."""
        fleet = settings.fleet
        reachable = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
        return cls(
            worker_id=fleet.worker_id or f"{socket.gethostname()}-{port}",
            url=(fleet.public_url or f"http://{reachable}:{port}").rstrip("/"),
        )


def start_heartbeat(state: Any, settings: Settings, identity: WorkerIdentity) -> WorkerHeartbeat:
    """Announce this worker now and every ``fleet.heartbeat_secs``: its capacity, its live
    sessions and whether it drains, as its admission control counts them."""
    fleet = settings.fleet
    assert fleet.redis_url is not None
    registry = WorkerRegistry.from_url(
        fleet.redis_url.get_secret_value(), expiry_secs=fleet.expiry_secs
    )
    admission: Admission = state.admission

    def describe() -> WorkerInfo:
        return WorkerInfo(
            worker_id=identity.worker_id,
            url=identity.url,
            capacity=admission.max_sessions,
            live=admission.live,
            draining=admission.draining,
        )

    heartbeat = WorkerHeartbeat(registry, describe, fleet.heartbeat_secs)
    heartbeat.start()
    return heartbeat
