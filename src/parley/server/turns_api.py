"""POST /v1/sessions/{id}/turns: a normalized transcript in, the action envelope out —
exactly once per idempotency key."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Header, HTTPException, Request
from pydantic import BaseModel, Field

from parley.orchestration import ActionEnvelope, OrchestrationError, Orchestrator
from parley.orchestration.envelope import FALLBACK
from parley.server.sessions_api import AUTH_RESPONSES, authorize
from parley.store import Store, TurnState

router = APIRouter(prefix="/v1/sessions", tags=["turns"])

REPLAY_WAIT_SECS = 60.0
FINISHED = (TurnState.COMPLETED.value, TurnState.FAILED.value)


class TurnRequest(BaseModel):
    text: str = Field(min_length=1, max_length=4000)
    """The turn's final transcript."""
    segment_ids: list[int] = Field(default_factory=list, max_length=100)
    idempotency_key: str = Field(min_length=1, max_length=128)


class TurnResponse(BaseModel):
    turn_seq: int
    idempotency_key: str
    state: str
    envelope: ActionEnvelope
    replayed: bool
    """True when this is the stored result of an earlier request with the same key."""
    error: str | None = None
    """Why the turn failed (state "failed"; the envelope is then a spoken apology)."""


@router.post(
    "/{session_id}/turns",
    response_model=TurnResponse,
    responses={
        **AUTH_RESPONSES,
        404: {"description": "unknown session"},
        409: {"description": "key reused for another request, or the turn is still running"},
    },
)
async def create_turn(
    session_id: str,
    body: TurnRequest,
    request: Request,
    authorization: str | None = Header(default=None),
) -> TurnResponse:
    authorize(request, session_id, authorization)
    store: Store = request.app.state.store
    orchestrator: Orchestrator | None = request.app.state.orchestrator
    if orchestrator is None:
        raise HTTPException(503, "the configured LLM cannot produce structured replies")
    if await store.get_session(session_id) is None:
        raise HTTPException(404, f"unknown session {session_id}")
    turn, created = await store.begin_turn(session_id, body.idempotency_key, user_text=body.text)
    if not created:
        return await _replay(store, session_id, body)
    history, _ = await store.conversation(session_id, before_seq=turn.seq)
    await store.transition(turn.id, TurnState.PROCESSING)
    state = TurnState.COMPLETED
    error: str | None = None
    try:
        envelope = await orchestrator.respond(history, body.text)
    except OrchestrationError as exc:
        # The user hears a short apology, never the malformed output; the turn is failed.
        state, envelope, error = TurnState.FAILED, FALLBACK, str(exc)
    except BaseException:
        await store.transition(turn.id, TurnState.CANCELLED, result={"error": "request aborted"})
        raise
    result: dict[str, Any] = {"envelope": envelope.model_dump(), "spoken": envelope.spoken_text}
    if error is not None:
        result["error"] = error
    await store.transition(turn.id, state, result=result)
    return TurnResponse(
        turn_seq=turn.seq,
        idempotency_key=body.idempotency_key,
        state=state.value,
        envelope=envelope,
        replayed=False,
        error=error,
    )


async def _replay(store: Store, session_id: str, body: TurnRequest) -> TurnResponse:
    """The stored outcome of the first request with this key, once it is final."""
    deadline = time.monotonic() + REPLAY_WAIT_SECS
    while True:
        turn = await store.find_turn(session_id, body.idempotency_key)
        if turn is None:  # deleted meanwhile
            raise HTTPException(404, f"unknown session {session_id}")
        if turn.user_text != store.stored_text(body.text):
            raise HTTPException(409, "this idempotency key was used for a different request")
        if turn.state in FINISHED and turn.result and "envelope" in turn.result:
            return TurnResponse(
                turn_seq=turn.seq,
                idempotency_key=body.idempotency_key,
                state=turn.state,
                envelope=ActionEnvelope.model_validate(turn.result["envelope"]),
                replayed=True,
                error=turn.result.get("error"),
            )
        if turn.state not in (TurnState.RECEIVED.value, TurnState.PROCESSING.value):
            raise HTTPException(409, f"the turn with this key ended as {turn.state}")
        if time.monotonic() > deadline:
            raise HTTPException(409, "the turn with this key is still being processed")
        await asyncio.sleep(0.05)
