"""uvicorn's server, with ``SIGTERM`` draining the app before it stops.

An orchestrator (Kubernetes, systemd, docker stop) sends ``SIGTERM`` and waits a grace
period before it kills the process. Plain uvicorn would shut down at once, cutting every
live call; here ``SIGTERM`` starts the app's :class:`parley.server.drain.Drain` and the
server stops once it has drained (exit status 0). A second ``SIGTERM``, or ``SIGINT``
(Ctrl-C), stops at once as uvicorn does.

Once started, it freezes the heap start-up made (see :meth:`DrainingServer.startup`).
"""

from __future__ import annotations

import asyncio
import gc
import signal
import socket
from types import FrameType
from typing import Any

import uvicorn

from parley.server.drain import Drain


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self._drain = drain
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)  # the app's lifespan: its engines are loaded
        freeze_startup_heap()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        loop = self._loop
        if sig == signal.SIGTERM and not self._drain.started and not self.should_exit and loop:
            # A signal handler runs between two bytecodes of the loop's thread: the drain
            # starts from the loop itself, as its next callback.
            loop.call_soon_threadsafe(self._start_drain)
            return
        super().handle_exit(sig, frame)

    def _start_drain(self) -> None:
        self._drain.on_drained(self._stop)
        self._drain.start(by="SIGTERM")

    def _stop(self) -> None:
        self.should_exit = True


def freeze_startup_heap() -> None:
    """Put what start-up made out of the garbage collector's reach.

    Start-up leaves ~220,000 objects that live as long as the process (modules, the
    models' tokenizers and sessions, the app); a full collection walks them all, with
    every call on the event loop stopped: ~40 ms on an idle worker, ~105 ms at p50 with
    40–50 live sessions (`make bench-load`; ~19 ms with them frozen). Frozen, they are
    never walked again: a full collection walks only what the calls made since. Cycles
    start-up left are collected first.
    """
    gc.collect()
    gc.freeze()


def serve(app: Any, **config: Any) -> None:
    """Run ``app`` (a Parley app: its ``state.drain``) like ``uvicorn.run``."""
    # No permessage-deflate: what crosses Parley's sockets is mostly PCM audio, which
    # compresses poorly, and compressing every 20 ms frame was the largest single cost of
    # the event loop under load (bench/load.py's profile: 15 % of the loop's samples).
    config.setdefault("ws_per_message_deflate", False)
    server = DrainingServer(uvicorn.Config(app, **config), app.state.drain)
    server.run()
