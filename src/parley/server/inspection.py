"""The session inspector: each turn of a stored session as a waterfall of its stages.

Built only from the stored record (turns, transitions, timeline events, costs; never
audio): ``turn.metrics`` carries each step's time relative to the user's last speech, which is
the waterfall's zero — "the caller stopped talking" — so the speech itself runs at
negative times and everything the agent did after it at positive ones. The same model
feeds the page (``/inspect``, ``/inspect/{session_id}``), ``GET
/v1/sessions/{id}/inspection`` and ``parley inspect``.

For a supervisor of the session or an operator's admin token only: a user token is
refused (it may read its own raw timeline, not the inspector).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import FileResponse

from parley.server.sessions_api import AUTH_RESPONSES, authorize, require_session, session_record

router = APIRouter()
WEB_ROOT = Path(__file__).resolve().parent.parent / "web"

BARS: tuple[tuple[str, str, str], ...] = (
    # label, start mark, end mark (turn.metrics' timeline_ms, or "0": the last speech)
    ("user speech", "speech_started", "0"),
    ("end-of-turn wait", "0", "confirmed"),
    ("stt (final)", "stt_started", "stt_done"),
    ("end-of-turn models", "eou_started", "eou_done"),
    ("llm (to first token)", "llm_started", "llm_first_token"),
    ("tts (to first audio)", "tts_started", "tts_first_audio"),
)
MARKS: tuple[tuple[str, str], ...] = (
    ("first partial", "first_partial"),
    ("vad stop", "vad_stopped"),
    ("final transcript", "stt_done"),
    ("turn confirmed", "confirmed"),
    ("llm first token", "llm_first_token"),
    ("tts first audio", "tts_first_audio"),
    ("filler said", "filler"),
    ("first audio sent", "first_frame"),
)


def _at(timeline: dict[str, Any], name: str) -> float | None:
    if name == "0":
        return 0.0
    value = timeline.get(name)
    return float(value) if isinstance(value, int | float) else None


def turn_waterfall(turn: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    """One stored turn and its timeline events as bars and marks (ms from the last speech)."""
    data = {e["stage"]: e.get("data") or {} for e in events}
    metrics = data.get("turn.metrics", {})
    raw = metrics.get("timeline_ms")
    timeline: dict[str, Any] = raw if isinstance(raw, dict) else {}
    bars = []
    for label, start, end in BARS:
        a, b = _at(timeline, start), _at(timeline, end)
        if a is not None and b is not None:
            bars.append({"label": label, "start_ms": round(a, 1), "end_ms": round(max(a, b), 1)})
    marks = [
        {"label": label, "at_ms": round(v, 1)}
        for label, name in MARKS
        if (v := _at(timeline, name)) is not None
    ]
    ended = data.get("turn.ended", {})
    decision = {
        k: ended.get(k)
        for k in ("eou_probability", "eou_text_probability", "eou_delay")
        if ended.get(k) is not None
    }
    out: dict[str, Any] = {
        "seq": turn["seq"],
        "state": turn["state"],
        "user_text": turn.get("user_text"),
        "agent_text": (turn.get("result") or {}).get("spoken"),
        # What the caller heard of an interrupted reply (the history keeps only that).
        "heard": (turn.get("result") or {}).get("heard"),
        # The knowledge file's facts the reply was grounded on (quoted or restated).
        "facts": list((turn.get("result") or {}).get("facts") or []),
        "voice_to_voice_ms": metrics.get("voice_to_voice_ms"),
        "end_of_turn": decision,
        "bars": bars,
        "marks": marks,
        "tools": [
            {k: e["data"].get(k) for k in ("tool", "status", "duration_ms")}
            for e in events
            if e["stage"] == "tool.result"
        ],
        "errors": [e["data"] for e in events if e["stage"] == "error"],
        # A provider that failed inside the turn, and where the request went instead.
        "failovers": [
            {k: e["data"].get(k) for k in ("stage", "from", "to", "kind")}
            for e in events
            if e["stage"] == "provider.failover"
        ],
        # What the turn's provider calls used and cost (None: it made none).
        "cost": (turn.get("result") or {}).get("cost"),
        "interrupted": data.get("turn.interrupted"),
        "overlaps_ignored": [e["data"] for e in events if e["stage"] == "overlap.ignored"],
        # The turn heard again after its reply (stt.revise): how that went.
        "revision": data.get("transcript.revision"),
        "started_at": turn["transitions"][0]["at"] if turn.get("transitions") else None,
    }
    return out


def inspection(record: dict[str, Any]) -> dict[str, Any]:
    """A session's record as the inspector shows it."""
    by_turn: dict[int | None, list[dict[str, Any]]] = {}
    for e in record["events"]:
        # An event of work begun before its turn was stored (a preemptive draft's
        # failover) carries the voice turn's number instead.
        turn = e["turn"] if e["turn"] is not None else (e["data"] or {}).get("voice_turn")
        by_turn.setdefault(turn, []).append(e)
    turns = [turn_waterfall(t, by_turn.get(t["seq"], [])) for t in record["turns"]]
    session_events = [
        {"stage": e["stage"], "at": e["at"], "data": e["data"]}
        for e in by_turn.get(None, [])
        if e["stage"].startswith(("transport.", "session.", "handoff."))
    ]
    return {
        "session_id": record["session_id"],
        "turns": turns,
        "session_events": session_events,
        "memory": record.get("memory") or {"summary": "", "covered": 0, "state": {}},
        "cost": record.get("cost"),
    }


@router.get("/v1/sessions/{session_id}/inspection", responses=AUTH_RESPONSES)
async def session_inspection(
    session_id: str, request: Request, authorization: str | None = Header(default=None)
) -> dict[str, Any]:
    """Each turn of the session as a waterfall (supervisor or admin token)."""
    caller = authorize(
        request, session_id, authorization, roles=frozenset({"supervisor"}), admin=True
    )
    await require_session(request, session_id, caller)
    return inspection(await session_record(request.app.state.store, session_id))


@router.get("/inspect", include_in_schema=False)
@router.get("/inspect/{session_id}", include_in_schema=False)
async def inspector_page(session_id: str | None = None) -> FileResponse:
    # The page itself holds no data: it asks for a token, then calls the API above.
    return FileResponse(WEB_ROOT / "inspect.html")
