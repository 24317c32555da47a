"""A recognizer whose words the test sets, behind Parley's own OpenAI-compatible
transcription endpoint (``parley.engine_server``: the multipart form, the WAV decoding,
the JSON answer), served by uvicorn on 127.0.0.1 in a thread of its own, so that a
server process and the test's event loop reach it alike.

It stands in for a larger model's words only; the request it is sent and everything on
Parley's side of the HTTP connection are real. It keeps the audio of every request."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import uvicorn

from parley.engine_server import ServedEngines, create_engine_app
from parley.engines import Transcript
from parley.testing import free_port


@dataclass
class ScriptedRecognizer:
    text: str
    """What it says it heard, whatever the audio."""
    heard: list[np.ndarray] = field(default_factory=list)
    busy = False

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        self.heard.append(audio)
        return Transcript(self.text, 1.0)


@contextmanager
def scripted_stt_server(text: str) -> Iterator[tuple[str, ScriptedRecognizer]]:
    """Serve a recognizer that hears ``text``; yields its API root (``…/v1``) and it."""
    recognizer = ScriptedRecognizer(text)
    app = create_engine_app(ServedEngines(stt=recognizer), "stt")

    class Server(uvicorn.Server):
        def capture_signals(self) -> Any:
            return nullcontext()  # signals are the test runner's

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off")
    server = Server(config)
    thread = threading.Thread(target=server.run, name="scripted-stt", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the scripted transcription server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/v1", recognizer
    finally:
        server.should_exit = True
        thread.join(10)
