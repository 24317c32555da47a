"""POST /v1/sessions/{id}/turns: a normalized transcript in, the action envelope out —
exactly once per idempotency key."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from contextlib import suppress
from typing import Any, TypeVar

from fastapi import APIRouter, Header, HTTPException, Request
from pydantic import BaseModel, Field

from parley.orchestration import ActionEnvelope, OrchestrationError, Orchestrator
from parley.orchestration.envelope import FALLBACK
from parley.orchestration.ledger import ToolLedger
from parley.server.sessions_api import AUTH_RESPONSES, authorize, require_session
from parley.store import Lease, LeaseLost, Store, TurnState
from parley.store.models import Turn
from parley.telemetry import get_logger
from parley.telemetry.costs import CostSummary
from parley.telemetry.usage import Usage, listening_for_usage
from parley.voice.memory import ConversationMemory

log = get_logger(__name__)

router = APIRouter(prefix="/v1/sessions", tags=["turns"])

REPLAY_WAIT_SECS = 60.0
FINISHED = (TurnState.COMPLETED.value, TurnState.FAILED.value)
T = TypeVar("T")


class TurnRequest(BaseModel):
    text: str = Field(min_length=1, max_length=4000)
    """The turn's final transcript."""
    segment_ids: list[int] = Field(default_factory=list, max_length=100)
    idempotency_key: str = Field(min_length=1, max_length=128)


class ToolResult(BaseModel):
    call_id: str
    tool: str
    status: str
    """succeeded | failed | rejected (bad name or arguments) | unknown (cut off by a
    crash and not retry-safe: never run twice)."""
    result: dict[str, Any]


class TurnResponse(BaseModel):
    turn_seq: int
    idempotency_key: str
    state: str
    envelope: ActionEnvelope
    tool_results: list[ToolResult] = Field(default_factory=list)
    """What each of the envelope's tool calls did (each ran at most once, ever)."""
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
        503: {
            "description": "this server lost its claim on the turn mid-way (taken over, or "
            "the database unreachable until the lease lapsed); nothing half-done was "
            "returned: retry with the same key"
        },
    },
)
async def create_turn(
    session_id: str,
    body: TurnRequest,
    request: Request,
    authorization: str | None = Header(default=None),
) -> TurnResponse:
    """Run one turn: the model's envelope, then its tool calls through the ledger.

    Exactly once per idempotency key: of concurrent requests one claims the turn and the
    rest get its stored result; a turn whose process died mid-way (its lease lapsed) is
    taken over by the next request with its key and resumed from its checkpoint — the
    model is not asked again once it answered, and no tool call runs twice."""
    caller = authorize(request, session_id, authorization)
    store: Store = request.app.state.store
    orchestrator: Orchestrator | None = request.app.state.orchestrator
    if orchestrator is None:
        raise HTTPException(503, "the configured LLM cannot produce structured replies")
    await require_session(request, session_id, caller)
    await store.begin_turn(session_id, body.idempotency_key, user_text=body.text)
    owner: str = request.app.state.instance_id
    lease_secs: float = request.app.state.settings.server.turn_lease_secs
    deadline = time.monotonic() + REPLAY_WAIT_SECS
    while True:
        current = await store.find_turn(session_id, body.idempotency_key)
        if current is None:  # deleted meanwhile
            raise HTTPException(404, f"unknown session {session_id}")
        if current.user_text != store.stored_text(body.text):
            raise HTTPException(409, "this idempotency key was used for a different request")
        if current.state in FINISHED and current.result and "envelope" in current.result:
            return _stored_response(current)
        if current.state not in (TurnState.RECEIVED.value, TurnState.PROCESSING.value):
            raise HTTPException(409, f"the turn with this key ended as {current.state}")
        asked = time.monotonic()
        claimed = await store.claim_turn(current.id, owner, lease_secs)
        if claimed is not None:
            # The database set the lease to expire ``lease_secs`` after it ran the claim,
            # which was after ``asked``: ``asked + lease_secs`` is a safe local bound.
            work = _process(request, claimed.turn, claimed.recovering, body, claimed.lease)
            try:
                return await hold_lease(store, claimed.lease, lease_secs, work, asked + lease_secs)
            except LeaseLost as exc:
                raise HTTPException(
                    503,
                    f"this server lost its claim on the turn ({exc}); "
                    "retry with the same idempotency key",
                ) from exc
        if time.monotonic() > deadline:
            raise HTTPException(409, "the turn with this key is still being processed")
        await asyncio.sleep(0.05)


async def _process(
    request: Request, turn: Turn, recovering: bool, body: TurnRequest, lease: Lease
) -> TurnResponse:
    """The claimed turn's work; every write it makes shows ``lease`` (``LeaseLost`` once
    another process took the turn over)."""
    store: Store = request.app.state.store
    orchestrator: Orchestrator = request.app.state.orchestrator
    ledger: ToolLedger = request.app.state.ledger
    try:
        checkpoint = turn.result or {}
        error: str | None = None
        cost = checkpoint.get("cost")
        if "envelope" in checkpoint:  # the model answered before a crash: do not ask again
            envelope = ActionEnvelope.model_validate(checkpoint["envelope"])
        else:
            history, _ = await store.conversation(turn.session_id, before_seq=turn.seq)
            record = await store.get_session(turn.session_id)
            memory = ConversationMemory.from_record(
                None if record is None else record.memory,
                None if record is None else record.orchestration_state,
            )
            calls: list[Usage] = []
            try:
                with listening_for_usage(calls.append):
                    envelope = await orchestrator.respond(
                        history, body.text, memory.system_prompt("").strip()
                    )
            except OrchestrationError as exc:
                # The user hears a short apology, never the malformed output.
                envelope, error = FALLBACK, str(exc)
            cost = _priced(request, calls)
            if error is None:
                await store.checkpoint(turn.id, _result(envelope, [], cost), lease=lease)
        results: list[ToolResult] = []
        for call in envelope.tool_calls:  # in order: a later call may depend on an earlier
            done = await ledger.run(turn.id, call, recovering=recovering, lease=lease)
            results.append(
                ToolResult(call_id=call.id, tool=call.name, status=done.status, result=done.result)
            )
        outcome = _result(envelope, results, cost)
        state = TurnState.COMPLETED
        if error is not None:
            state, outcome["error"] = TurnState.FAILED, error
        if envelope.state_updates:
            # Before the turn completes: a retry after a crash here merges them again,
            # to the same state.
            await store.update_state(turn.session_id, envelope.state_updates)
        # The turn's cost joins the session's with its final state: once, even when a
        # takeover resumed it from the checkpoint.
        await store.transition(turn.id, state, result=outcome, lease=lease, session_cost=cost)
    except LeaseLost:
        raise  # not ours to free any more
    except BaseException:
        # Aborted (client gone, shutdown, lease lost): free the claim so a retry resumes at
        # once. Fenced: a claim that was lost frees nothing.
        with suppress(Exception):
            await asyncio.shield(store.renew(lease, 0.0))
        raise
    return TurnResponse(
        turn_seq=turn.seq,
        idempotency_key=body.idempotency_key,
        state=state.value,
        envelope=envelope,
        tool_results=results,
        replayed=False,
        error=error,
    )


async def hold_lease(
    store: Store, lease: Lease, lease_secs: float, work: Awaitable[T], valid_until: float
) -> T:
    """Run ``work`` while renewing ``lease`` every third of ``lease_secs``; ``valid_until``
    (``time.monotonic()``) is a safe bound on when the claim lapses if never renewed.

    When the claim is lost — another process took the turn over, or renewals kept failing
    until the lease would have lapsed — the work is cancelled (it must not go on writing
    or calling tools as if it still owned the turn) and ``LeaseLost`` is raised."""
    task = asyncio.ensure_future(work)
    keeper = asyncio.create_task(_keep_lease(store, lease, lease_secs, valid_until))
    try:
        await asyncio.wait({task, keeper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        keeper.cancel()
        if not task.done():
            task.cancel()
            # Let the work unwind (its own cleanup) before answering.
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled() and keeper.done() and not keeper.cancelled():
        raise LeaseLost(f"claim on turn {lease.turn_id} lost while working on it")
    return task.result()


async def _keep_lease(store: Store, lease: Lease, lease_secs: float, valid_until: float) -> None:
    """Renew until the claim is lost, then return (the caller cancels the work)."""
    delay = lease_secs / 3
    while True:
        await asyncio.sleep(max(0.0, min(delay, valid_until - time.monotonic())))
        asked = time.monotonic()
        if asked >= valid_until:
            log.error(
                "lease lapsed while the database could not be reached; stopping the turn",
                turn_id=lease.turn_id,
            )
            return
        try:
            # A renewal that hangs past the lease is as good as a failed one.
            renewed = await asyncio.wait_for(store.renew(lease, lease_secs), valid_until - asked)
        except Exception as exc:  # the database: keep trying while the lease holds
            log.warning(
                "lease renewal failed; retrying while the lease holds",
                turn_id=lease.turn_id,
                error=f"{type(exc).__name__}: {exc}",
                secs_left=round(valid_until - time.monotonic(), 3),
            )
            delay = lease_secs / 10
            continue
        if not renewed:
            log.warning(
                "lost the claim on a turn (taken over); stopping its work",
                turn_id=lease.turn_id,
                owner=lease.owner,
                fence=lease.token,
            )
            return
        valid_until, delay = asked + lease_secs, lease_secs / 3


def _result(
    envelope: ActionEnvelope, tools: list[ToolResult], cost: dict[str, Any] | None = None
) -> dict[str, Any]:
    out = {
        "envelope": envelope.model_dump(),
        "spoken": envelope.spoken_text,
        "tool_results": [t.model_dump() for t in tools],
    }
    if cost is not None:
        out["cost"] = cost
    return out


def _priced(request: Request, calls: list[Usage]) -> dict[str, Any] | None:
    """The turn's calls priced (None if it made none), each counted in the metrics."""
    if not calls:
        return None
    prices = request.app.state.prices
    priced = [prices.price(u) for u in calls]
    telemetry = request.app.state.telemetry
    if telemetry.enabled:
        for call in priced:
            telemetry.metrics.usage.count(call)
    return CostSummary.of(priced, prices.currency).to_json()


def _stored_response(turn: Turn) -> TurnResponse:
    assert turn.result is not None
    return TurnResponse(
        turn_seq=turn.seq,
        idempotency_key=turn.idempotency_key,
        state=turn.state,
        envelope=ActionEnvelope.model_validate(turn.result["envelope"]),
        tool_results=[ToolResult.model_validate(t) for t in turn.result.get("tool_results", [])],
        replayed=True,
        error=turn.result.get("error"),
    )
