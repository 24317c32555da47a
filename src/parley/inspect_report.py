"""``parley inspect SESSION_ID``: the session inspector's waterfall, in the terminal.

Reads ``GET /v1/sessions/{id}/inspection`` from a running server with a supervisor or
admin token, or mints an admin token with the admin key (``--admin-key``, else
``PARLEY_TELEMETRY__ADMIN_KEY``)."""

from __future__ import annotations

from typing import Any

import httpx

from parley.admin_token import mint_admin_token

WIDTH = 50


def fetch(url: str, session_id: str, token: str | None, admin_key: str | None) -> dict[str, Any]:
    with httpx.Client(base_url=url.rstrip("/"), timeout=10) as http:
        if token is None:
            if not admin_key:
                raise SystemExit("give --token, or --admin-key / PARLEY_TELEMETRY__ADMIN_KEY")
            token = mint_admin_token(http, admin_key)
        response = http.get(
            f"/v1/sessions/{session_id}/inspection", headers={"Authorization": f"Bearer {token}"}
        )
        if response.status_code != 200:
            detail = response.json().get("detail", response.text) if response.content else ""
            raise SystemExit(f"cannot inspect {session_id}: {response.status_code} {detail}")
        data: dict[str, Any] = response.json()
        return data


def _axis(turns: list[dict[str, Any]]) -> tuple[float, float]:
    lo, hi = 0.0, 1000.0
    for t in turns:
        for b in t["bars"]:
            lo, hi = min(lo, b["start_ms"]), max(hi, b["end_ms"])
        for m in t["marks"]:
            lo, hi = min(lo, m["at_ms"]), max(hi, m["at_ms"])
    return lo, (hi - lo) or 1.0


def _bar(start: float, end: float, lo: float, span: float) -> str:
    a = round((start - lo) / span * WIDTH)
    b = max(a + 1, round((end - lo) / span * WIDTH))
    zero = round(-lo / span * WIDTH)
    cells = [" "] * (WIDTH + 1)
    if 0 <= zero <= WIDTH:
        cells[zero] = "|"
    for i in range(a, min(b, WIDTH + 1)):
        cells[i] = "#"
    return "".join(cells)


def _used(item: dict[str, Any]) -> str:
    stage = item.get("stage")
    if stage == "llm":
        used = f"{item.get('input_tokens', 0)} tokens in, {item.get('output_tokens', 0)} out"
    elif stage == "tts":
        used = f"{item.get('characters', 0)} characters"
    elif stage == "telephony":
        used = f"{item.get('seconds', 0):.1f} s of call"
    else:
        used = f"{item.get('seconds', 0):.1f} s of audio"
    calls = item.get("requests", 0)
    return f"{calls} call{'s' if calls != 1 else ''}, {used}"


def cost_lines(cost: dict[str, Any] | None, label: str = "cost", indent: str = "  ") -> list[str]:
    """A cost summary as text: the total (or why it is unknown), then each provider."""
    if not cost:
        return []
    total = f"{cost.get('total', 0):.6f} {cost.get('currency', '')}"
    items = cost.get("items") or []
    if cost.get("complete", True):
        head = f"{indent}{label}: {total}"
    else:
        unpriced = [
            f"{i['stage']} {i['provider']}/{i['model']}" for i in items if i.get("cost") is None
        ]
        head = f"{indent}{label}: unknown, at least {total} (no price for {', '.join(unpriced)})"
    if cost.get("estimated"):
        head += "; some token counts estimated"
    lines = [head]
    for item in items:
        price = "no price" if item.get("cost") is None else f"{item['cost']:.6f}"
        lines.append(
            f"{indent}  {item['stage']} {item['provider']}/{item['model']}: {_used(item)}: {price}"
        )
    return lines


def format_inspection(data: dict[str, Any]) -> str:
    """Each turn as text: its bars on one time axis (0 = the caller stopped talking)."""
    lines = [f"session {data['session_id']}"]
    lines += cost_lines(data.get("cost"), label="session cost")
    for e in data.get("session_events", []):
        detail = ", ".join(f"{k} {v}" for k, v in (e.get("data") or {}).items())
        lines.append(f"  {e['at']}  {e['stage']}  {detail}")
    memory = data.get("memory") or {}
    if memory.get("summary"):
        covered = memory.get("covered")
        lines.append(f"  remembered (first {covered} caller turns): {memory['summary']}")
    for key, value in (memory.get("state") or {}).items():
        lines.append(f"  state {key}: {value}")
    lo, span = _axis(data["turns"])
    for t in data["turns"]:
        v2v = t.get("voice_to_voice_ms")
        head = f"\nturn {t['seq']}: {t['state']}"
        lines.append(head + (f", voice-to-voice {v2v:.0f} ms" if v2v is not None else ""))
        if t.get("user_text"):
            lines.append(f"  caller: {t['user_text']}")
        if t.get("agent_text"):
            lines.append(f"  agent:  {t['agent_text']}")
        for fact in t.get("facts") or []:
            lines.append(f"  fact:   {fact}")
        for b in t["bars"]:
            took = b["end_ms"] - b["start_ms"]
            bar = _bar(b["start_ms"], b["end_ms"], lo, span)
            lines.append(f"  {b['label']:<22}{bar} {took:6.0f} ms")
        for m in t["marks"]:
            lines.append(f"  {'· ' + m['label']:<22}at {m['at_ms']:+.0f} ms")
        eot = t.get("end_of_turn") or {}
        if eot:
            lines.append("  end of turn: " + ", ".join(f"{k} {v}" for k, v in eot.items()))
        for tool in t.get("tools", []):
            lines.append(f"  tool {tool['tool']}: {tool['status']} in {tool['duration_ms']} ms")
        for f in t.get("failovers", []):
            lines.append(
                f"  failover {f.get('stage')}: {f.get('from')} ({f.get('kind')})"
                f" -> {f.get('to') or 'none left'}"
            )
        lines += cost_lines(t.get("cost"))
        for err in t.get("errors", []):
            lines.append(f"  error {err.get('code')} ({err.get('stage', '-')})")
        if t.get("interrupted"):
            cut = t["interrupted"]
            lines.append(
                f"  interrupted ({cut.get('reason')}, {cut.get('words')} words from the caller);"
                f" the caller heard: {t.get('heard')!r}"
            )
    return "\n".join(lines)
