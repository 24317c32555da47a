"""Session tokens as a fleet uses them: a token dispatched to a worker names it, and only
that worker (or a process that is no worker: the control plane) accepts it."""

from __future__ import annotations

import pytest

from parley.server.tokens import TokenError, TokenIssuer

SECRET = "fleet-secret-0123456789abcdef0123456789abcdef"


def test_a_worker_accepts_only_tokens_dispatched_to_it() -> None:
    control = TokenIssuer(SECRET, 60)
    worker_a = TokenIssuer(SECRET, 60, worker_id="worker-a")
    worker_b = TokenIssuer(SECRET, 60, worker_id="worker-b")
    token = control.mint("s1", "r1", "user", worker="worker-a")
    assert worker_a.verify(token.token, "s1").worker == "worker-a"
    assert control.verify(token.token, "s1").worker == "worker-a"
    with pytest.raises(TokenError) as refused:
        worker_b.verify(token.token, "s1")
    assert refused.value.status == 403 and "another worker" in refused.value.message
    # A token that names no worker (minted by `parley serve`) is a token of any process.
    plain = control.mint("s1", "r1", "user")
    assert plain.worker is None and worker_b.verify(plain.token, "s1").worker is None


def test_the_worker_claim_cannot_be_changed_without_the_secret() -> None:
    import jwt

    token = TokenIssuer(SECRET, 60).mint("s1", "r1", "user", worker="worker-a").token
    claims = jwt.decode(token, options={"verify_signature": False})
    forged = jwt.encode({**claims, "wkr": "worker-b"}, "another-secret-of-32-bytes-at-least!!")
    with pytest.raises(TokenError) as refused:
        TokenIssuer(SECRET, 60, worker_id="worker-b").verify(forged, "s1")
    assert refused.value.status == 401
