"""The readable summary of an evaluation: one line per turn, totals at the end."""

from __future__ import annotations

import statistics
from typing import Any


def totals(results: list[dict[str, Any]]) -> dict[str, Any]:
    turns = [t for r in results for t in r["turns"]]
    checked = [t for t in turns if t["correct"] is not None]
    tooled = [t for t in turns if t["tools_ok"] is not None]
    judged = [t for t in turns if t.get("judge", {}).get("verdict") is not None]
    wers = [t["wer"] for t in turns if t["wer"] is not None]
    v2v = sorted(t["voice_to_voice_ms"] for t in turns if t["voice_to_voice_ms"] is not None)
    return {
        "scenarios": len(results),
        "scenarios_passed": sum(r["passed"] for r in results),
        "turns": len(turns),
        "answers_correct": sum(t["correct"] for t in checked),
        "answers_checked": len(checked),
        "tool_turns_ok": sum(t["tools_ok"] for t in tooled),
        "tool_turns": len(tooled),
        "judge_yes": sum(t["judge"]["verdict"] for t in judged),
        "judged": len(judged),
        "wer_mean": round(statistics.fmean(wers), 3) if wers else None,
        "voice_to_voice_p50_ms": statistics.median(v2v) if v2v else None,
        "voice_to_voice_p95_ms": v2v[min(len(v2v) - 1, round(0.95 * (len(v2v) - 1)))]
        if v2v
        else None,
        "cut_ins": sum(max(0, t["turns_heard"] - 1) for t in turns),
        "interruptions": sum(t["interruptions"] for t in turns),
        "errors": sum(len(t["errors"]) for t in turns),
    }


def summary(results: list[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        session = f"  (session {r['session_id']})" if r.get("session_id") else ""
        lines.append(f"{'PASS' if r['passed'] else 'FAIL'}  {r['name']}{session}")
        if r["error"]:
            lines.append(f"      could not run: {r['error']}")
        for t in r["turns"]:
            marks = []
            if t["correct"] is not None:
                marks.append("facts ok" if t["correct"] else "facts MISSING")
            if t["tools_ok"] is not None:
                marks.append("tools ok" if t["tools_ok"] else "tools MISSING")
            if "judge" in t:
                verdict = t["judge"]["verdict"]
                marks.append("judge: " + ("yes" if verdict else "no" if verdict is False else "?"))
            if t["turns_heard"] != 1:
                marks.append(f"{t['turns_heard']} ends of turn")
            if t["interruptions"]:
                marks.append(f"{t['interruptions']} interruptions")
            if t["errors"]:
                marks.append("errors: " + ", ".join(map(str, t["errors"])))
            wer = "" if t["wer"] is None else f"WER {t['wer']:.0%}, "
            v2v = t["voice_to_voice_ms"]
            lines.append(f"      caller: {t['say']}")
            lines.append(f"      heard:  {t['heard']}")
            lines.append(f"      agent:  {t['answer']}")
            lines.append(
                f"      {wer}voice-to-voice {v2v if v2v is not None else '?'} ms; "
                + "; ".join(marks)
            )
    s = totals(results)
    lines.append("")
    lines.append(
        f"{s['scenarios_passed']}/{s['scenarios']} scenarios passed; "
        f"answers {s['answers_correct']}/{s['answers_checked']} stated the expected facts; "
        f"tool turns {s['tool_turns_ok']}/{s['tool_turns']}; "
        + (f"judge yes {s['judge_yes']}/{s['judged']}; " if s["judged"] else "")
        + f"mean WER {s['wer_mean'] if s['wer_mean'] is not None else '?'}; "
        f"voice-to-voice p50 {s['voice_to_voice_p50_ms']} ms, p95 {s['voice_to_voice_p95_ms']} ms; "
        f"cut-ins {s['cut_ins']}, interruptions {s['interruptions']}, errors {s['errors']}"
    )
    return "\n".join(lines)
