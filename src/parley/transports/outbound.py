"""The outbound queue every transport drains: events and audio frames in order."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Literal

from parley.voice.events import Event

Item = tuple[Literal["event"], Event] | tuple[Literal["audio"], bytes]


class OutboundOverflow(RuntimeError):
    """The client is not reading: the queue hit its bound."""


class OutboundFinished(Exception):
    """Everything queued before :meth:`OutboundQueue.finish` has been taken."""


class OutboundQueue:
    """Implements :class:`parley.voice.events.SessionSink` for a transport's sender task."""

    def __init__(self, max_items: int) -> None:
        self._items: deque[Item] = deque()
        self._ready = asyncio.Event()
        self._max = max_items
        self.overflowed = False
        self._finished = False

    def _put(self, item: Item) -> None:
        if len(self._items) >= self._max:
            self.overflowed = True
            self._ready.set()
            return
        self._items.append(item)
        self._ready.set()

    def send_event(self, event: Event) -> None:
        self._put(("event", event))

    def send_audio(self, pcm: bytes) -> None:
        self._put(("audio", pcm))

    def clear_audio(self) -> None:
        kept = [item for item in self._items if item[0] == "event"]
        self._items.clear()
        self._items.extend(kept)

    def finish(self) -> None:
        """No more items: :meth:`get` hands out what is queued, then raises
        :class:`OutboundFinished` (the sender's cue to stop once the last word is out)."""
        self._finished = True
        self._ready.set()

    async def get(self) -> Item:
        while not self._items:
            if self.overflowed:
                raise OutboundOverflow("client is not reading its messages")
            if self._finished:
                raise OutboundFinished
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()
