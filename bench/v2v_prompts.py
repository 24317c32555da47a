"""What the benchmark's callers say.

The embedded LLM keeps a RAM cache of prompt states (``LlamaRAMCache``), shared by every
session of the server process. A caller who repeats an earlier caller's exact words after
the same greeting sends the exact same prompt, which the cache answers without evaluating
it, and the figure would flatter the second run. So no two runs, and no two sessions, send
the same conversation: the WebRTC run says reworded versions of the WebSocket run's
utterances (same meaning and length, different words), and every session of the
concurrency steps opens with its own caller introduction, so its prompts differ from every
other session's from the first user message on. The system prompt and greeting stay a
shared, cached prefix, as they are for real callers.
"""

from __future__ import annotations

# The WebSocket run (and the follow-up turns of the concurrency steps).
UTTERANCES = [
    "What time does the store open tomorrow morning",
    "Can you tell me a fun fact about the moon",
    "Please book a table for two at seven tonight",
    "How is the weather looking this weekend",
    "I would like to order a cup of coffee with milk",
    "What is the capital city of France",
    "Can you remind me to call my mother tomorrow",
    "How many minutes are there in one day",
    "Tell me a short joke about computers",
    "What should I cook for dinner tonight",
]

# The WebRTC run: the same requests reworded, so none repeats a WebSocket prompt.
WEBRTC_UTTERANCES = [
    "When does the shop open in the morning tomorrow",
    "Could you share an interesting fact about the moon",
    "I need a table for two people at seven this evening",
    "What will the weather be like on the weekend",
    "Could I get a cup of coffee with some milk please",
    "Which city is the capital of France",
    "Please remind me tomorrow to phone my mother",
    "How many minutes does a single day have",
    "Tell me a quick joke about computers",
    "Any ideas for what to make for dinner tonight",
]

# The phone run (fake Twilio, mu-law both ways): reworded once more.
PHONE_UTTERANCES = [
    "At what time will the store open tomorrow",
    "Tell me something fun about the moon",
    "Book me a table for two tonight at seven",
    "What is the forecast for this weekend",
    "I want a coffee with milk please",
    "Name the capital city of France",
    "Remind me to ring my mother tomorrow",
    "How many minutes make up one day",
    "Do you know a short joke about computers",
    "What could I cook tonight for dinner",
]

_NAMES = [
    "Alice", "Bruno", "Chloe", "Daniel", "Emma", "Felix", "Grace", "Hugo", "Iris", "Jonas",
    "Karen", "Liam", "Maria", "Noah", "Olivia", "Peter", "Quentin", "Rosa", "Samuel", "Tina",
    "Victor", "Wendy", "Xavier", "Yasmin", "Zachary", "Anna", "Brian", "Clara", "David", "Eva",
]  # fmt: skip
_OPENINGS = ["Hi, this is {name} calling", "Hello, my name is {name}"]


def caller_intro(k: int) -> str:
    """The k-th session's first utterance: distinct for k < 60 (30 names x 2 openings)."""
    opening = _OPENINGS[(k // len(_NAMES)) % len(_OPENINGS)]
    return opening.format(name=_NAMES[k % len(_NAMES)])


INTRO_COUNT = len(_NAMES) * len(_OPENINGS)
