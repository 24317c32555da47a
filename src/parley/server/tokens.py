"""Short-lived session tokens: scoped to one session, its room and a role.

HS256 JWTs. A token carries ``sid`` (session id), ``room``, ``role`` and ``exp``; every
session-scoped call checks all of them. A token minted by a control plane for a session
it dispatched to a worker also carries ``wkr`` (that worker's id): a worker refuses a
token dispatched to another (403), so a session is only ever served where it was sent.
Failures map to HTTP: 401 when the token is missing, malformed, forged or expired; 403
when it is valid but for another session, a role without the right or another worker.
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Literal

import jwt

Role = Literal["user", "agent", "supervisor", "admin"]
ROLES: tuple[Role, ...] = ("user", "agent", "supervisor")
"""The roles within one session."""
ADMIN: Role = "admin"
"""An operator's role, over every session: minted only with the admin key
(``POST /v1/admin/tokens``), and accepted only where an endpoint says so."""
ANY_SESSION = "*"
# Which roles a holder of each role may mint tokens for (refresh or delegate).
MAY_MINT: dict[str, frozenset[str]] = {
    "user": frozenset({"user"}),
    "agent": frozenset({"agent", "user"}),
    "supervisor": frozenset(ROLES),
}
ALGORITHM = "HS256"
ISSUER = "parley"


class TokenError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class SessionToken:
    session_id: str
    room_id: str
    role: Role
    expires_at: int
    token: str
    worker: str | None = None
    """The worker the session was dispatched to (tokens of a control plane)."""


class TokenIssuer:
    def __init__(self, secret: str | None, ttl_secs: int, worker_id: str | None = None) -> None:
        self._secret = secret or secrets.token_urlsafe(32)
        self.ttl_secs = ttl_secs
        self.worker_id = worker_id
        """This process as a worker of a fleet: tokens dispatched elsewhere are refused."""

    def mint(
        self,
        session_id: str,
        room_id: str,
        role: Role,
        *,
        ttl_secs: int | None = None,
        worker: str | None = None,
    ) -> SessionToken:
        now = int(time.time())
        exp = now + (ttl_secs if ttl_secs is not None else self.ttl_secs)
        claims = {
            "iss": ISSUER,
            "sid": session_id,
            "room": room_id,
            "role": role,
            "iat": now,
            "exp": exp,
            "jti": uuid.uuid4().hex,
        }
        if worker is not None:
            claims["wkr"] = worker
        token = jwt.encode(claims, self._secret, algorithm=ALGORITHM)
        return SessionToken(session_id, room_id, role, exp, token, worker)

    def verify(
        self,
        token: str | None,
        session_id: str | None,
        roles: frozenset[str] = frozenset(ROLES),
    ) -> SessionToken:
        """The token's claims, if it is valid for ``session_id`` (any session when None:
        the caller then acts on the token's own session) and one of ``roles``."""
        if not token:
            raise TokenError(401, "a session token is required (Authorization: Bearer <token>)")
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                options={"require": ["exp", "sid", "room", "role", "iss"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenError(401, "the session token has expired; refresh it") from exc
        except jwt.InvalidSignatureError as exc:
            raise TokenError(401, "the session token's signature is not valid") from exc
        except jwt.InvalidTokenError as exc:
            raise TokenError(401, f"the session token is not valid: {exc}") from exc
        is_admin = claims["role"] == ADMIN and claims["sid"] == ANY_SESSION
        if session_id is not None and claims["sid"] != session_id and not is_admin:
            raise TokenError(403, "the session token is for another session")
        if claims["role"] not in roles:
            raise TokenError(403, f"role {claims['role']!r} may not do this")
        worker = claims.get("wkr")
        if worker is not None and self.worker_id is not None and worker != self.worker_id:
            raise TokenError(
                403, "the session is dispatched to another worker; reconnect through the "
                "control plane"
            )  # fmt: skip
        return SessionToken(
            claims["sid"], claims["room"], claims["role"], int(claims["exp"]), token, worker
        )
