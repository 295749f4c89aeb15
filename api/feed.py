"""The live alert feed's fan-out: one Redis reader per API process, many open consoles.

Each console used to hold its own Redis connection and read the whole city's stream, blocking 5 s
on XREAD against redis-py 8's 5 s socket timeout, so an idle feed closed after about 5 s. Here one
task per process reads the stream (blocking well under its socket timeout) and hands each entry to
the subscribers whose jurisdiction contains the alert's office. A subscriber that reconnects with
`Last-Event-ID` first replays what it missed from the stream (XRANGE), then joins the live flow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.exceptions

from store import redisconn
from store.settings import Settings

log = logging.getLogger(__name__)

BLOCK_MS = 2_000  # well under the socket timeout below: an idle stream never times the socket out
SOCKET_TIMEOUT_S = 30.0
QUEUE_MAX = 1_000  # a console this far behind resumes from the stream instead


def stream_id(s: str) -> tuple[int, int]:
    """A Redis stream id as a sortable pair ("1700000000000-3" → (1700000000000, 3))."""
    ms, _, seq = s.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True)
class FeedEvent:
    """One stream entry, decoded once for every subscriber."""

    id: str
    topic: str
    office_id: int | None
    data: bytes

    def sse(self) -> bytes:
        """The Server-Sent Events frame."""
        return f"id: {self.id}\nevent: {self.topic}\ndata: ".encode() + self.data + b"\n\n"


def decode(entry_id: bytes | str, fields: dict[bytes, bytes]) -> FeedEvent:
    """A stream entry as written by the alert worker's relay (alerts/worker.py)."""
    payload: dict[str, Any] = orjson.loads(fields[b"payload"])
    payload["outbox_id"] = int(fields[b"outbox_id"])
    eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    office = payload.get("office_id")
    return FeedEvent(eid, fields[b"topic"].decode(), office if isinstance(office, int) else None,
                     orjson.dumps(payload))


@dataclass(eq=False)
class Subscriber:
    """One open console: its jurisdiction and the events waiting for it."""

    units: frozenset[int]
    queue: asyncio.Queue[FeedEvent] = field(default_factory=lambda: asyncio.Queue(QUEUE_MAX))
    overflowed: bool = False

    def offer(self, ev: FeedEvent) -> None:
        if ev.office_id not in self.units:
            return
        try:
            self.queue.put_nowait(ev)
        except asyncio.QueueFull:
            self.overflowed = True  # it replays from the stream (see FeedHub.follow)


class FeedHub:
    """Reads the alert stream once per process and fans each entry out to the subscribers."""

    def __init__(self, settings: Settings, key: str) -> None:
        self.key = key
        self.redis = redisconn.async_client(settings, socket_timeout=SOCKET_TIMEOUT_S,
                                            health_check_interval=15)
        self.subscribers: set[Subscriber] = set()
        self.loop = asyncio.get_running_loop()
        self._task: asyncio.Task[None] | None = None
        self.position = "$"

    async def _read(self, start: str) -> None:
        # From the first subscriber's own starting point: an entry added between its replay and
        # this reader's first read is read here (the subscriber drops what it already has).
        last = start
        while self.subscribers:
            try:
                resp: Any = await self.redis.xread({self.key: last}, count=500, block=BLOCK_MS)
            except (redis.exceptions.RedisError, OSError):
                log.warning("live feed: Redis read failed; retrying in 1 s", exc_info=True)
                await asyncio.sleep(1)
                continue
            for _stream, entries in resp or ():
                for entry_id, fields in entries:
                    ev = decode(entry_id, fields)
                    last = ev.id
                    for sub in list(self.subscribers):
                        sub.offer(ev)
            self.position = last
        self._task = None

    def add(self, sub: Subscriber, start: str) -> None:
        self.subscribers.add(sub)
        if self._task is None:
            self._task = asyncio.create_task(self._read(start))

    def remove(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    async def replay(self, sub: Subscriber, after: str) -> tuple[list[FeedEvent], bool]:
        """Entries after `after` in the subscriber's jurisdiction; False when some were trimmed."""
        out: list[FeedEvent] = []
        complete = True
        first: Any = await self.redis.xrange(self.key, count=1)
        if after != "0-0" and first and stream_id(first[0][0].decode()) > stream_id(after):
            # The stream was trimmed past the console's last event: it must reload its queue.
            complete = False
        cursor = after
        while True:
            rows: Any = await self.redis.xrange(self.key, min=f"({cursor}", count=1000)
            if not rows:
                break
            for entry_id, fields in rows:
                ev = decode(entry_id, fields)
                cursor = ev.id
                if ev.office_id in sub.units:
                    out.append(ev)
        return out, complete

    async def follow(self, sub: Subscriber, after: str,
                     heartbeat_s: float) -> AsyncIterator[FeedEvent | None]:
        """The subscriber's events after `after`, in order; None at each heartbeat with nothing
        to send."""
        self.add(sub, after)
        try:
            last = after
            missed, complete = await self.replay(sub, after)
            if not complete:
                yield FeedEvent(after, "feed.reset", None, b'{"reason": "events were trimmed"}')
            for ev in missed:
                last = ev.id
                yield ev
            while True:
                if sub.overflowed:
                    sub.overflowed = False
                    while not sub.queue.empty():
                        sub.queue.get_nowait()
                    missed, _ = await self.replay(sub, last)
                    for ev in missed:
                        last = ev.id
                        yield ev
                try:
                    ev = await asyncio.wait_for(sub.queue.get(), timeout=heartbeat_s)
                except TimeoutError:
                    yield None
                    continue
                if stream_id(ev.id) <= stream_id(last):
                    continue  # already sent by the replay
                last = ev.id
                yield ev
        finally:
            self.remove(sub)

    async def close(self) -> None:
        self.subscribers.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self.redis.aclose()
