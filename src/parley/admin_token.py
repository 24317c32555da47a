"""An operator's admin token, minted from the admin key (``POST /v1/admin/tokens``), for
the command-line tools that call a running server's admin endpoints."""

from __future__ import annotations

import httpx


def mint_admin_token(http: httpx.Client, admin_key: str) -> str:
    """An admin token from the server ``http`` talks to; exits with a clear message when
    the key is refused."""
    minted = http.post("/v1/admin/tokens", headers={"Authorization": f"Bearer {admin_key}"})
    if minted.status_code != 201:
        raise SystemExit(f"the admin key was refused ({minted.status_code})")
    return str(minted.json()["token"])
