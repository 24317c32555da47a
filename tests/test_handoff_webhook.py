"""The handoff webhook on its own: who said what in the transcript, the summary, and a
post that is signed, or that fails without raising (refused, unreachable, unconfigured)."""

from __future__ import annotations

import json
import logging

import pytest

from handoff_receiver import handoff_receiver
from parley.config import HandoffSettings
from parley.engines import ChatMessage
from parley.testing import free_port
from parley.transports.handoff_webhook import (
    handoff_payload,
    post_handoff,
    summary,
    transcript,
    verify_signature,
)

SECRET = "handoff-webhook-secret-0123456789"
MESSAGES = [
    ChatMessage("user", "My order never arrived"),
    ChatMessage("assistant", "Sorry to hear that. What is the order number?"),
    ChatMessage("assistant", "[a human colleague said:] Hello, I can see your order."),
    ChatMessage("user", "I want to talk to a person"),
]


def test_the_transcript_says_who_spoke_and_the_summary_sticks_to_facts() -> None:
    lines = transcript(MESSAGES)
    assert lines == [
        {"role": "caller", "text": "My order never arrived"},
        {"role": "agent", "text": "Sorry to hear that. What is the order number?"},
        {"role": "human", "text": "Hello, I can see your order."},
        {"role": "caller", "text": "I want to talk to a person"},
    ]
    text = summary("the caller pressed 0", lines)
    assert text == (
        "Handoff: the caller pressed 0. 2 caller turns; "
        "the caller's last words: 'I want to talk to a person'."
    )
    assert summary("x", []) == "Handoff: x. The caller has not spoken yet."
    long = summary("x", [{"role": "caller", "text": "word " * 100}])
    assert len(long) < 220 and long.endswith("…'.")


async def test_a_post_is_signed_over_the_timestamp_and_the_exact_body() -> None:
    payload = handoff_payload(
        session_id="s-1", reason="r", by="caller", messages=MESSAGES, call_sid="CA1"
    )
    with handoff_receiver() as hook:
        settings = HandoffSettings(webhook_url=hook.url, webhook_secret=SECRET)
        assert await post_handoff(settings, payload)
    (delivery,) = hook.deliveries
    assert delivery.headers["content-type"] == "application/json"
    ts, signature = delivery.headers["x-parley-timestamp"], delivery.headers["x-parley-signature"]
    assert signature.startswith("sha256=")
    assert verify_signature(SECRET, ts, delivery.body, signature)
    assert not verify_signature(SECRET, ts, delivery.body + b" ", signature)
    assert json.loads(delivery.body) == payload


async def test_a_failed_post_is_logged_and_returns_false(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    payload = {"session_id": "s-1"}
    assert not await post_handoff(HandoffSettings(), payload)  # no URL: nothing to post
    with handoff_receiver() as hook:
        hook.status = 500
        settings = HandoffSettings(webhook_url=hook.url, webhook_secret=SECRET)
        assert not await post_handoff(settings, payload)
        # Unsigned without a secret (and said so), but posted.
        hook.status = 204
        assert await post_handoff(HandoffSettings(webhook_url=hook.url), payload)
        assert "x-parley-signature" not in hook.deliveries[-1].headers
    closed = HandoffSettings(
        webhook_url=f"http://127.0.0.1:{free_port()}/h?token=abc",
        webhook_secret=SECRET,
        webhook_timeout_secs=2,
    )
    assert not await post_handoff(closed, payload)
    messages = [r.getMessage() for r in caplog.records]
    assert "handoff webhook refused" in messages and "handoff webhook failed" in messages
    assert any("unsigned" in m for m in messages)
    logged = repr([vars(r) for r in caplog.records])  # messages and structured fields
    assert SECRET not in logged and "token=abc" not in logged
