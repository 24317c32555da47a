"""The HTTP client of a remote (OpenAI-compatible) provider: one per provider, so its
connections are reused, with the provider's key and timeouts."""

from __future__ import annotations

import httpx

from parley.engine_settings import RemoteProviderFields

PROBE_HEADERS = {"X-Parley-Probe": "1"}
"""Marks a breaker's probe, so a provider's operator (and the tests) can tell it from
traffic."""


def provider_client(
    settings: RemoteProviderFields, timeout: float, connect: float = 2.0
) -> httpx.AsyncClient:
    headers = {}
    api_key = settings.resolved_api_key()
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    return httpx.AsyncClient(
        base_url=settings.base_url.rstrip("/") + "/",
        headers=headers,
        timeout=httpx.Timeout(timeout, connect=connect),
    )
