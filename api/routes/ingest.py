"""HTTP entry points for phones: OwnTracks HTTP mode and Traccar Client (OsmAnd protocol).

Both authenticate the device, then hand the message to the same pipeline as MQTT. The answer
tells the app whether to keep the message and send it again (both apps keep what the server
refuses, and retry it, in order):

* 200 once the message is recorded: its fixes committed, or the message kept as a dead letter
  because it can never be used (a bad fix, an oversized body). Answering 4xx there would block
  the phone's queue for good; the `X-CCS-Dead-Letter` header names the reason.
* 503 with `Retry-After` when nothing could be recorded now (database or Redis unreachable).
* 429 with `Retry-After` over the rate limit; 401 for unknown credentials.

Requests with unknown credentials are rate-limited per source address; within the limit each is
kept as a dead letter cut to a short sample, beyond it only counted.
"""

from __future__ import annotations

import base64
import binascii
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Annotated, Any, NoReturn, TypeVar
from urllib.parse import parse_qsl

import orjson
import psycopg
import redis
from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api.authz import declared
from api.errors import DomainError, TooManyRequests, Unauthorized, Unavailable
from api.security import hash_device_secret, secret_matches
from ingest.pipeline import Channel, DevicesBusy, MessageResult, Pipeline, RawMessage
from store.ratelimit import allow
from store.settings import Settings, get_settings

router = APIRouter(prefix="/ingest", tags=["ingest (phones)"])
log = logging.getLogger(__name__)

RETRY_AFTER_S = 5  # what a phone is told to wait when the database or Redis is unreachable
# Failures of the services, not of the message: the phone keeps it and sends it again.
TRANSIENT = (psycopg.OperationalError, psycopg.InterfaceError, redis.ConnectionError,
             redis.TimeoutError, OSError)
# The database refuses the message's data itself: retrying would fail the same way.
REFUSED_DATA = (psycopg.errors.DataError, psycopg.errors.IntegrityError)
DEAD_LETTER_HEADER = "X-CCS-Dead-Letter"


def _busy(detail: str) -> Unavailable:
    """Transient: nothing was recorded, the phone keeps the fix and sends it again."""
    return Unavailable(detail, headers={"Retry-After": str(RETRY_AFTER_S)})


_T = TypeVar("_T")


class _Pool:
    """At most `http_ingest_pipelines` pipelines (each with its own connections) shared by the
    request threads; a request waits a while for one, then is told to come back (503).

    Each pipeline does its work on a thread of its own (`run`), not on whichever of the server's
    request threads took it: the zones' map projections (pyproj) are built once per thread that
    uses them, ≈ 13 ms each, and the server's threads come and go (idle ones end after 10 s), so
    pipelines wandering between them paid that again and again (≈ 14 ms of CPU per request
    under load: `python -m simulators.http_bench`)."""

    WAIT_S = 10.0

    def __init__(self) -> None:
        self._idle: queue.LifoQueue[Pipeline] = queue.LifoQueue()
        self._slots: threading.BoundedSemaphore | None = None
        self._lock = threading.Lock()
        self._threads: dict[int, ThreadPoolExecutor] = {}  # id(pipeline) -> its own thread

    def run(self, p: Pipeline, work: Callable[[], _T]) -> _T:
        """Do `work` with pipeline `p` on the pipeline's own thread (waiting for it)."""
        with self._lock:
            ex = self._threads.get(id(p))
            if ex is None:
                ex = self._threads[id(p)] = ThreadPoolExecutor(1, "ingest-pipeline")
        return ex.submit(work).result()

    def call(self, work: Callable[[Pipeline], _T]) -> _T:
        """Take a pipeline and do `work` with it on the pipeline's own thread."""
        with self.acquire() as p:
            return self.run(p, lambda: work(p))

    def _forget(self, p: Pipeline) -> None:
        with self._lock:
            ex = self._threads.pop(id(p), None)
        if ex is not None:
            ex.shutdown(wait=False)

    def _semaphore(self) -> threading.BoundedSemaphore:
        with self._lock:
            if self._slots is None:
                self._slots = threading.BoundedSemaphore(get_settings().http_ingest_pipelines)
            return self._slots

    @contextmanager
    def acquire(self) -> Iterator[Pipeline]:
        slots = self._semaphore()
        if not slots.acquire(timeout=self.WAIT_S):
            raise _busy("every ingest pipeline is busy; retry")
        try:
            try:
                p = self._idle.get_nowait()
            except queue.Empty:
                p = Pipeline.connect(get_settings())
            try:
                yield p
            except DevicesBusy as e:  # another writer holds the device: the phone retries
                self._idle.put(p)
                raise _busy(str(e)) from e
            except DomainError:  # an answer, not a failure: the connections are fine
                self._idle.put(p)
                raise
            except Exception:
                try:
                    p.close()  # possibly broken connections: do not return them to the pool
                finally:
                    self._forget(p)
                raise
            else:
                self._idle.put(p)
        finally:
            slots.release()

    def close(self) -> None:
        while not self._idle.empty():
            p = self._idle.get_nowait()
            try:
                p.close()
            finally:
                self._forget(p)


pool = _Pool()


@dataclass(frozen=True, slots=True)
class _Body:
    """A request body read up to the payload limit."""

    data: bytes  # all of it, or the first `max_payload_bytes` of an oversized one
    size: int  # bytes sent: declared by Content-Length, else counted (a lower bound if oversized)
    oversized: bool
    counted: bool  # `size` was counted, not declared

    @property
    def stored_size(self) -> int | None:
        """The size a dead letter of this body records, when `data` is not all of it."""
        return self.size if self.oversized else None


async def _body(request: Request) -> _Body:
    """Read at most one byte past the limit: an oversized body is kept truncated (like an
    oversized MQTT payload), never held whole; the rest is not read."""
    limit = get_settings().max_payload_bytes
    header = request.headers.get("content-length", "")
    declared_size = int(header) if header.isdigit() else None
    chunks, size = [], 0
    async for chunk in request.stream():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    data = b"".join(chunks)
    if size <= limit:
        return _Body(data, size, False, True)
    return _Body(data[:limit], max(size, declared_size or 0), True, declared_size is None)


def _device_by_secret(p: Pipeline, secret: str) -> str | None:
    row = p.conn.execute(
        "SELECT id FROM devices WHERE secret_hash = %s AND active", (hash_device_secret(secret),)
    ).fetchone()
    p.conn.rollback()
    return None if row is None else str(row[0])


def _device_by_basic(p: Pipeline, authorization: str | None) -> str | None:
    if not authorization or not authorization.lower().startswith("basic "):
        return None
    try:
        user, _, password = base64.b64decode(authorization[6:], validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    if not user or "\x00" in user:  # PostgreSQL text cannot hold NUL: no such device
        return None
    row = p.conn.execute(
        "SELECT secret_hash FROM devices WHERE id = %s AND active", (user,)
    ).fetchone()
    p.conn.rollback()
    return user if row is not None and secret_matches(password, row[0]) else None


def _unknown(p: Pipeline, msg: RawMessage, s: Settings, unauthorized: str) -> NoReturn:
    """Unknown credentials: counted always; kept (a dead letter cut to a sample) only within the
    source address's rate, so that nobody can fill the disk by guessing."""
    source = msg.remote or "unknown"
    p.redis.incr(f"{p.prefix}ingest:unknown_credentials")  # every such request, for the record
    unsampled = f"{p.prefix}ingest:unknown_unsampled:{source}"
    decision = allow(p.redis, f"{p.prefix}ratelimit:ingest-unknown:{source}",
                     s.ingest_unknown_rate_per_min, 60.0, s.ingest_unknown_rate_burst)
    if not decision.allowed:
        with p.redis.pipeline() as r:
            r.incr(unsampled)
            r.expire(unsampled, 86400)  # a source that stops sending is forgotten in a day
            r.execute()
        raise TooManyRequests(
            f"too many requests with unknown credentials from this address; retry after "
            f"{decision.retry_after_header} s", "rate_limited",
            headers={"Retry-After": decision.retry_after_header})
    skipped = int(p.redis.getdel(unsampled) or 0)
    raw = (orjson.dumps(dict(msg.params)) if msg.channel == Channel.OSMAND_QUERY and msg.params
           else msg.payload)
    detail = "no valid device credentials" + (
        f"; {skipped} more request(s) from {source} since the last one kept were only counted"
        if skipped else "")
    p.reject(replace(msg, payload=raw[: s.ingest_unknown_sample_bytes], params=None,
                     size=msg.size or len(raw)), "unknown_device", detail)
    raise Unauthorized(unauthorized)


def _record(p: Pipeline, msg: RawMessage, body: _Body, unauthorized: str) -> MessageResult:
    """Record one request: its fixes stored, or the message dead-lettered with its reason.

    Raises `Unauthorized` (unknown credentials) or `TooManyRequests` (over a rate; the message
    is kept as a `rate_limited` dead letter, not decoded, and the phone sends it again).
    """
    s = get_settings()  # not p.settings: pooled pipelines outlive a settings change
    if msg.device_id is None:
        _unknown(p, msg, s, unauthorized)
    decision = allow(p.redis, f"{p.prefix}ratelimit:ingest:{msg.device_id}",
                     s.ingest_rate_per_min, 60.0, s.ingest_rate_burst)
    if not decision.allowed:
        detail = (f"over {s.ingest_rate_per_min} requests/min (burst {s.ingest_rate_burst}); "
                  f"retry after {decision.retry_after_header} s")
        p.reject(msg, "rate_limited", detail)
        raise TooManyRequests(detail, "rate_limited",
                              headers={"Retry-After": decision.retry_after_header})
    if body.oversized:
        detail = (f"{'more than ' if body.counted else ''}{body.size} bytes > limit "
                  f"{s.max_payload_bytes}; the first {s.max_payload_bytes} bytes are kept")
        p.reject(msg, "oversized", detail)
        return MessageResult(ok=False, reason="oversized", detail=detail)
    try:
        return p.process([msg])[0]
    except REFUSED_DATA as e:  # the batch's transaction is rolled back; keep the message alone
        log.error("message from %s cannot be stored: %s", msg.device_id, e)
        p.reject(msg, "storage_error", str(e))
        return MessageResult(ok=False, reason="storage_error", detail=str(e)[:2000])


async def _in_thread(work: Callable[[], _T]) -> _T:
    """Run the blocking part; a service outage becomes 503 with Retry-After (the phone retries)."""
    try:
        return await run_in_threadpool(work)
    except TRANSIENT as e:
        log.warning("ingest request not recorded, services unavailable: %s", e)
        raise Unavailable("the server cannot record this now; send it again later",
                          headers={"Retry-After": str(RETRY_AFTER_S)}) from e


def _dead_letter_header(res: MessageResult, response: Response) -> None:
    if not res.ok and res.reason:
        response.headers[DEAD_LETTER_HEADER] = res.reason


def _remote(request: Request) -> str | None:
    return request.client.host if request.client else None


@router.post("/owntracks", **declared("device", "device"))
@router.post("/owntracks/", include_in_schema=False, **declared("device", "device"))
async def owntracks_http(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> JSONResponse:
    """OwnTracks HTTP mode: Basic auth with device id and secret; replies with an empty list
    once the message is recorded (stored, or kept as a dead letter)."""
    body = await _body(request)

    def record(p: Pipeline) -> MessageResult:
        device = _device_by_basic(p, authorization)
        msg = RawMessage(Channel.OWNTRACKS_HTTP, body.data, device, request.url.path,
                         time.time(), _remote(request), size=body.stored_size)
        return _record(p, msg, body,
                       "device credentials are missing or wrong (Basic device_id:secret)")

    res = await _in_thread(lambda: pool.call(record))
    response = JSONResponse([])
    _dead_letter_header(res, response)
    return response


async def _osmand(request: Request, secret: str, response: Response) -> dict[str, Any]:
    body = await _body(request)
    ctype = request.headers.get("content-type", "")
    params = dict(request.query_params)
    channel = Channel.OSMAND_QUERY
    if body.data and "json" in ctype:
        channel = Channel.OSMAND_JSON
    elif body.data and not body.oversized:
        # Undecodable bytes become U+FFFD, as in the query string: the decoder judges the values.
        params.update(parse_qsl(body.data.decode("utf-8", "replace"), keep_blank_values=True))
    # The secret is in the path: what is stored (a dead letter's topic) never holds it.
    where = request.url.path.rstrip("/").rsplit("/", 1)[0] + "/***"

    def record(p: Pipeline) -> MessageResult:
        device = _device_by_secret(p, secret)
        # An oversized body is kept as its first bytes, not as the query parameters.
        msg = RawMessage(channel, body.data, device, where, time.time(), _remote(request),
                         None if body.oversized else params, size=body.stored_size)
        return _record(p, msg, body, "unknown or revoked device secret")

    res = await _in_thread(lambda: pool.call(record))
    _dead_letter_header(res, response)
    if not res.ok:
        return {"accepted": 0, "duplicates": 0,
                "dead_letter": {"reason": res.reason, "detail": res.detail}}
    return {"accepted": res.accepted, "duplicates": res.duplicates}


@router.post("/osmand/{secret}", **declared("device", "device"))
@router.post("/osmand/{secret}/", include_in_schema=False, **declared("device", "device"))
async def osmand_post(secret: str, request: Request, response: Response) -> dict[str, Any]:
    """Traccar Client: query-string/form parameters or the JSON body of the current app."""
    return await _osmand(request, secret, response)


@router.get("/osmand/{secret}", **declared("device", "device"))
@router.get("/osmand/{secret}/", include_in_schema=False, **declared("device", "device"))
async def osmand_get(secret: str, request: Request, response: Response) -> dict[str, Any]:
    """Traccar Client with GET requests (older versions, some settings)."""
    return await _osmand(request, secret, response)
