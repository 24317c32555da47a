"""The action envelope: everything one agent turn decides, as a strict schema.

It is shared by the HTTP orchestration endpoint and (next) the voice loop: spoken text,
tool calls, state updates, UI directives, follow-up prompts, a confirmation request and
an escalation signal. Model output that does not fit is never passed on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, Protocol, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=128)
    name: str = Field(min_length=1, max_length=128)
    arguments: dict[str, Any] = Field(default_factory=dict)


class UIDirective(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str = Field(min_length=1, max_length=64)
    payload: dict[str, Any] = Field(default_factory=dict)


class ActionEnvelope(BaseModel):
    model_config = ConfigDict(extra="forbid")
    spoken_text: str = Field(min_length=1, max_length=2000)
    tool_calls: list[ToolCall] = Field(default_factory=list, max_length=8)
    state_updates: dict[str, Any] = Field(default_factory=dict)
    ui_directives: list[UIDirective] = Field(default_factory=list, max_length=8)
    follow_up_prompts: list[str] = Field(default_factory=list, max_length=4)
    confirmation_request: str | None = None
    escalate: bool = False
    escalation_reason: str | None = None
    end_call: bool = False
    """The agent ends the conversation once this reply is spoken (a phone call is hung up
    through the carrier's API)."""


SPOKEN_MAX_CHARS = 400
"""Longest spoken text the model may write in an envelope (a few sentences). With the
grammar a model that rambles must close its words here instead of running into the
token budget, where its output would be cut off and asked for again (seconds of a small
model's time on two cores for nonsense input, and still no tool call)."""
FOLLOW_UP_MAX_CHARS = 120
STATE_VALUE_MAX_CHARS = 200

# What the model is asked to write (and, with llama.cpp, constrained to by a grammar):
# the envelope's fields that a small model can fill sensibly, within the bounds the
# envelope is validated against (the grammar must never allow what validation rejects).
MODEL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "spoken_text": {"type": "string", "maxLength": SPOKEN_MAX_CHARS},
        "follow_up_prompts": {
            "type": "array",
            "items": {"type": "string", "maxLength": FOLLOW_UP_MAX_CHARS},
            "maxItems": 4,
        },
        "escalate": {"type": "boolean"},
    },
    "required": ["spoken_text", "escalate"],
}

MODEL_INSTRUCTIONS = (
    "Reply only with a JSON object: spoken_text (what you say, one or two short "
    "sentences), follow_up_prompts (optional list of short suggestions) and escalate "
    "(true only if the user asks for a human)."
)


class ToolSpec(Protocol):
    """What the model is told about a tool (``parley.orchestration.tools.Tool`` fits)."""

    @property
    def name(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def parameters(self) -> dict[str, Any]: ...


def model_schema(tools: Sequence[ToolSpec] = (), *, state: bool = True) -> dict[str, Any]:
    """MODEL_SCHEMA, plus ``tool_calls`` when the agent has tools: each call names one of
    them and carries arguments of that tool's schema (a grammar then keeps the model to
    real tool names). Call ids are not the model's to write: see :func:`parse_envelope`.
    ``state``: the model may also write ``state_updates`` (not the embedded 135M model,
    which filled them with schema fragments and dates nobody said)."""
    if not tools:
        return MODEL_SCHEMA
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": t.parameters},
            "required": ["name", "arguments"],
        }
        for t in tools
    ]
    schema = json.loads(json.dumps(MODEL_SCHEMA))
    schema["properties"]["tool_calls"] = {"type": "array", "items": {"anyOf": calls}}
    if state:
        # Last, after the calls: what the turn settled, kept as the conversation's state.
        schema["properties"]["state_updates"] = {
            "type": "object",
            "additionalProperties": {"type": "string", "maxLength": STATE_VALUE_MAX_CHARS},
        }
    return cast(dict[str, Any], schema)


def model_instructions(tools: Sequence[ToolSpec] = (), *, state: bool = True) -> str:
    if not tools:
        return MODEL_INSTRUCTIONS
    listed = "; ".join(
        f"{t.name}({json.dumps(t.parameters.get('properties', {}))}): {t.description}"
        for t in tools
    )
    settled = (
        " What the caller and you settle (a name, a date, a party size), add as "
        "state_updates: an object of short strings."
        if state
        else ""
    )
    return (
        f"{MODEL_INSTRUCTIONS} To act, add tool_calls: a list of {{name, arguments}} "
        f"objects. Tools: {listed}.{settled}"
    )


class EnvelopeError(ValueError):
    """Model output that is not a valid action envelope, even after repair."""


_OBJECT = re.compile(r"\{.*\}", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


FALLBACK = ActionEnvelope(
    spoken_text="Sorry, I didn't get that. Could you say it again?",
)
"""What is said when the model gives no valid envelope: never its malformed output."""


def close_truncated(text: str) -> str:
    """Close the strings, arrays and objects left open by output cut off mid-way (the
    model ran out of tokens): the words written so far are kept, nothing is invented."""
    return _close(text)[0]


def _close(text: str) -> tuple[str, bool]:
    """:func:`close_truncated`, and whether anything was left open (the output was cut
    off: it must not be acted on, see :func:`parse_envelope`)."""
    stack: list[str] = []
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]" and stack:
            stack.pop()
    tail = ('\\"' if escaped else "") if in_string else ""
    closed = text + tail + ('"' if in_string else "")
    return closed.rstrip().rstrip(",") + "".join(reversed(stack)), in_string or bool(stack)


def _normalise(data: dict[str, Any]) -> None:
    """Tidy what a model writes or leaves out. Call ids are always the server's, by
    position (``call_1``…), whatever the model wrote: two calls can then never share an
    id (the ledger would answer the second with the first one's result), and a stored
    envelope names each call the same way on every replay."""
    if isinstance(data.get("spoken_text"), str):
        data["spoken_text"] = _whole_sentences(data["spoken_text"].strip())
    calls = data.get("tool_calls")
    if isinstance(calls, list):
        for index, call in enumerate(calls, start=1):
            if isinstance(call, dict):
                call["id"] = f"call_{index}"


_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def _whole_sentences(spoken: str) -> str:
    """Spoken text that reached :data:`SPOKEN_MAX_CHARS` (the grammar closed it there,
    likely mid-word): only its whole sentences are said, when it has any."""
    if len(spoken) < SPOKEN_MAX_CHARS:
        return spoken
    ends = [m.end() for m in _SENTENCE_END.finditer(spoken)]
    return spoken[: ends[-1]] if ends else spoken


class CutOffError(EnvelopeError):
    """Output the model did not finish that would act: it is never acted on (retry)."""


# Fields that act, not speak. Present at all in cut-off output they reject it, even when
# empty: ``"tool_calls": [`` closes to an empty list, and the speech written before it
# ("Booked!") would then promise what was never done.
_ACTING_FIELDS = ("tool_calls", "state_updates", "ui_directives")


def _speech_only(data: dict[str, Any], envelope: ActionEnvelope) -> ActionEnvelope:
    """What may be kept of output that was cut off: the words, to be spoken."""
    acting = [name for name in _ACTING_FIELDS if name in data]
    if envelope.confirmation_request is not None:
        acting.append("confirmation_request")
    if envelope.escalate:
        acting.append("escalate")
    if envelope.end_call:
        acting.append("end_call")
    if acting:
        raise CutOffError(
            f"output cut off before the model finished it, with {', '.join(acting)}: not acted on"
        )
    # Follow-up prompts go too: the last one may be a half-written word on the screen.
    return ActionEnvelope(spoken_text=envelope.spoken_text)


def parse_envelope(raw: str, *, cut_off: bool = False) -> ActionEnvelope:
    """Validate model output; repair what is safely repairable (surrounding prose or code
    fences, trailing commas), reject everything else with the reason.

    Output cut off mid-way (``cut_off``: the engine says the token budget stopped it; or
    the repair had to close strings or brackets) may be repaired for speech only: its
    spoken text is kept, and if it would act (tool calls, state updates, UI directives, a
    confirmation request, an escalation) it is rejected with :class:`CutOffError` — a
    cut-off ``"time": "7`` closes to ``"time": "7"``, which fits the tool's schema."""
    candidates = [(raw, False)]
    match = _OBJECT.search(raw)
    if match and match.group(0) != raw:
        candidates.append((match.group(0), False))
    start = raw.find("{")
    if start >= 0:
        candidates.append(_close(raw[start:]))
    candidates += [(_TRAILING_COMMA.sub(r"\1", c), left_open) for c, left_open in candidates]
    last_error = "no JSON object in the output"
    for text, left_open in candidates:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            last_error = f"invalid JSON: {exc.msg}"
            continue
        if isinstance(data, dict):
            _normalise(data)
        try:
            envelope = ActionEnvelope.model_validate(data)
        except ValidationError as exc:
            last_error = (
                f"does not fit the envelope: {exc.errors()[0]['msg']} at {exc.errors()[0]['loc']}"
            )
            continue
        if cut_off or left_open:
            return _speech_only(data, envelope)
        return envelope
    raise EnvelopeError(last_error)
