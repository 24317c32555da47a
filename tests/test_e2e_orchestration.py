"""The orchestration endpoint on the real model: a valid envelope, exactly once per key."""

from __future__ import annotations

import httpx
import pytest

from parley.client import create_session

pytestmark = pytest.mark.e2e


async def test_real_model_returns_a_valid_envelope_once_per_key(server):
    session = await create_session(server.ws_url)
    url = f"/v1/sessions/{session['session_id']}/turns"
    headers = {"Authorization": f"Bearer {session['token']}"}
    body = {"text": "What time does the store open tomorrow?", "idempotency_key": "turn-1"}
    async with httpx.AsyncClient(base_url=server.http, timeout=60) as http:
        first = await http.post(url, json=body, headers=headers)
        assert first.status_code == 200, first.text
        envelope = first.json()["envelope"]
        assert envelope["spoken_text"].strip() and isinstance(envelope["escalate"], bool)
        retry = await http.post(url, json=body, headers=headers)
        assert retry.status_code == 200
        assert retry.json()["replayed"] and retry.json()["envelope"] == envelope
        record = await http.get(f"/v1/sessions/{session['session_id']}/timeline", headers=headers)
        (turn,) = record.json()["turns"]
        assert turn["state"] == "completed"
        assert [t["to"] for t in turn["transitions"]] == ["received", "processing", "completed"]
