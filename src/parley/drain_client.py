"""``parley drain``: drain a running Parley process through its admin API, and wait.

What a Kubernetes ``preStop`` hook runs: the process stops taking sessions (and a
worker says so in the registry at its next beat), live calls go on until they end or
the deadline, and the hook returns once nothing is live — then the kubelet's ``SIGTERM``
finds an idle process that stops at once.
"""

from __future__ import annotations

import time

import httpx

from parley.admin_token import mint_admin_token


def drain(
    url: str, admin_key: str, *, deadline_secs: float | None, wait: bool, poll_secs: float = 0.5
) -> dict[str, object]:
    """Start the drain of the server at ``url``; with ``wait``, return once it has
    drained (or the server went away). The last status the server gave is returned."""
    with httpx.Client(base_url=url.rstrip("/"), timeout=10) as http:
        auth = {"Authorization": f"Bearer {mint_admin_token(http, admin_key)}"}
        body = {} if deadline_secs is None else {"deadline_secs": deadline_secs}
        started = http.post("/v1/admin/drain", json=body, headers=auth)
        if started.status_code != 202:
            raise SystemExit(f"the drain was refused ({started.status_code}): {started.text}")
        status: dict[str, object] = started.json()
        while wait and not status.get("drained"):
            time.sleep(poll_secs)
            try:
                status = http.get("/v1/admin/drain", headers=auth).json()
            except httpx.TransportError:
                break  # the process finished draining and exited
        return status
