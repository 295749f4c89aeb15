"""HTTP entry points for phones: OwnTracks HTTP mode and Traccar Client (OsmAnd protocol).

Both authenticate the device, then hand the message to the same pipeline as MQTT. The answer
tells the app whether to keep the message and send it again (both apps keep what the server
refuses, and retry it, in order):

* 200 once the message is recorded: its fixes committed, or the message kept as a dead letter
  because it can never be used (a bad fix, an oversized body). Answering 4xx there would block
  the phone's queue for good; the `X-CCS-Dead-Letter` header names the reason.
* 503 with `Retry-After` when the message could not be recorded now: database or Redis
  unreachable or refusing writes, `http_ingest_queue_max` requests already waiting, the request
  waited `QUEUE_WAIT_S` for its batch, its device held by another writer past `DEVICE_WAIT_S`,
  or the server shutting down. After `ANSWER_WAIT_S` without an outcome, or a failure after
  part of the batch was committed, a request answered 503 may have been recorded: the phone's
  resend is then a duplicate (the same device and fix time), stored once.
* 429 with `Retry-After` over the rate limit; 401 for unknown credentials.

Requests with unknown credentials are rate-limited per source address; within the limit each is
kept as a dead letter cut to a short sample, beyond it only counted.

Requests are recorded in batches (group commit, `_Batcher`): each request waits in one queue of
the process; `http_ingest_pipelines` threads, each with a pipeline of its own, take whatever
waits (up to `batch_max_messages`) and authenticate, rate-limit, judge and commit it together,
one transaction and a few round trips for the whole batch, as the MQTT worker does; then each
request is answered with its own message's outcome. A request arriving alone is taken at once.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field, replace
from typing import Annotated, Any
from urllib.parse import parse_qsl

import orjson
import psycopg
from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse

from api.authz import declared
from api.errors import DomainError, TooManyRequests, Unauthorized, Unavailable
from api.security import hash_device_secret, secret_matches
from ingest.pipeline import BUSY, Channel, MessageResult, Pipeline, RawMessage, transient_reason
from store.ratelimit import allow_many
from store.settings import Settings, get_settings

router = APIRouter(prefix="/ingest", tags=["ingest (phones)"])
log = logging.getLogger(__name__)

RETRY_AFTER_S = 5  # what a phone is told to wait when the database or Redis is unreachable
DEAD_LETTER_HEADER = "X-CCS-Dead-Letter"
# A request that waited this long for a batch is answered 503 instead of recorded (a phone's
# own timeout is about this; it sends the fix again)...
QUEUE_WAIT_S = 10.0
# ...and one that got no answer this long after it came (a database that hangs without closing
# the connection) too; if it is recorded after all, its resend is a duplicate.
ANSWER_WAIT_S = 60.0
# How long a batch waits for a device another writer holds (the phone's own resend on another
# thread or API process, the clock's follow-up; such a writer's batch takes a few tens of ms):
# not the MQTT worker's 15 s, which would hold every other phone of the batch. The messages of
# such a device are answered 503.
DEVICE_WAIT_S = 0.25


def _busy(detail: str) -> Unavailable:
    """Transient: nothing was recorded, the phone keeps the fix and sends it again."""
    return Unavailable(detail, headers={"Retry-After": str(RETRY_AFTER_S)})


def _unavailable() -> Unavailable:
    return _busy("the server cannot record this now; send it again later")


@dataclass(slots=True)
class Pending:
    """One request waiting for its batch: the message (its device not yet known), the
    credentials to authenticate it by, and where its outcome goes."""

    msg: RawMessage
    body: _Body
    unauthorized: str  # the 401's text for this endpoint
    secret: str | None = None  # OsmAnd: the secret in the path
    authorization: str | None = None  # OwnTracks: the Basic header
    outcome: Future[MessageResult] = field(default_factory=Future)
    queued: float = field(default_factory=time.monotonic)


_STOP = object()


class _Batcher:
    """The process's HTTP ingest: one queue, `http_ingest_pipelines` threads each owning a
    pipeline (its connections, caches, and the zones' map projections, which pyproj builds once
    per thread: ≈ 13 ms each), started on the first request and again after `close`."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def submit(self, req: Pending) -> Future[MessageResult]:
        """Queue a request for the next batch; its future holds the outcome (a MessageResult,
        or the DomainError to answer with)."""
        s = get_settings()
        with self._lock:  # with close(): never into a queue no thread reads any more
            if not self._threads:
                self._threads = [None] * s.http_ingest_pipelines  # type: ignore[list-item]
            for i, t in enumerate(self._threads):
                if t is None or not t.is_alive():  # the first request, or a thread that died
                    t = self._threads[i] = threading.Thread(
                        target=self._run, args=(self._queue, s), daemon=True,
                        name=f"ingest-pipeline-{i}")
                    t.start()
            if self._queue.qsize() >= s.http_ingest_queue_max:
                req.outcome.set_exception(_busy("too many reports wait to be recorded; retry"))
            else:
                self._queue.put(req)
        return req.outcome

    def close(self) -> None:
        """Stop the threads (each after its current batch) and close their pipelines; requests
        still queued are answered 503 (the phones send them again)."""
        with self._lock:  # the next request starts new threads on a new queue
            threads, self._threads = self._threads, []
            q, self._queue = self._queue, queue.SimpleQueue()
            for _ in threads:
                q.put(_STOP)
        deadline = time.monotonic() + 30
        for t in threads:
            if t is not None:  # (a thread whose start failed)
                t.join(timeout=max(0.0, deadline - time.monotonic()))
        stops = 0
        while True:
            try:
                item = q.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Pending):
                _settle(item, exc=_unavailable())
            else:
                stops += 1
        for _ in range(stops):  # a thread still in its batch stops after it
            q.put(_STOP)

    @staticmethod
    def _take(q: queue.SimpleQueue[Any], first: Pending, limit: int
              ) -> tuple[list[Pending], bool]:
        """`first` and whatever else waits, up to `limit`; and whether a stop was taken."""
        batch = [first]
        while len(batch) < limit:
            try:
                item = q.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    def _run(self, q: queue.SimpleQueue[Any], settings: Settings) -> None:
        p: Pipeline | None = None
        stop = False
        token = (f"http:{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}:"
                 f"{uuid.uuid4().hex[:8]}")
        try:
            while not stop:
                item = q.get()
                if item is _STOP:
                    break
                batch, stop = self._take(q, item, max(1, settings.batch_max_messages))
                # Too late to help the phone (it timed out and will send the fix again), or
                # already answered (the client went away, or waited ANSWER_WAIT_S).
                late = time.monotonic() - QUEUE_WAIT_S
                for req in batch:
                    if req.queued < late:
                        _settle(req, exc=_busy("the server is too busy to record this now; "
                                               "send it again later"))
                batch = [req for req in batch if not req.outcome.done()]
                if not batch:
                    continue
                try:
                    if p is None:  # the same lease token for the thread's next pipeline:
                        # it takes over at once leases a failed one could not give back
                        p = Pipeline.connect(get_settings(), owner_token=token)
                    record_batch(p, batch)
                except Exception as e:
                    _discard(p)
                    p = None
                    if transient_reason(e) is not None:
                        log.warning("%d ingest request(s) not recorded, services unavailable: "
                                    "%s", len(batch), e)
                        for req in batch:
                            _settle(req, exc=_unavailable())
                    else:  # a bug: those not answered yet get an error (500)
                        log.exception("HTTP ingest batch failed")
                        for req in batch:
                            _settle(req, exc=RuntimeError(f"HTTP ingest batch failed: {e!r}"))
        finally:
            _discard(p)


def _discard(p: Pipeline | None) -> None:
    """Close a pipeline whose connections may be broken (never reused)."""
    if p is not None:
        try:
            p.close()
        except Exception:  # already broken: nothing to give back
            log.debug("closing a failed ingest pipeline", exc_info=True)


def _settle(req: Pending, result: MessageResult | None = None,
            exc: BaseException | None = None) -> None:
    """Give a request its outcome, once (a request already answered keeps its answer)."""
    try:
        if exc is not None:
            req.outcome.set_exception(exc)
        else:
            req.outcome.set_result(result)  # type: ignore[arg-type]
    except InvalidStateError:  # answered before, or the client went away (cancelled)
        pass


batcher = _Batcher()


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


def _basic(authorization: str | None) -> tuple[str, str] | None:
    """(device id, secret) of a Basic header; None when absent or malformed."""
    if not authorization or not authorization.lower().startswith("basic "):
        return None
    try:
        user, _, password = base64.b64decode(authorization[6:], validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):  # binascii.Error is a ValueError; so is non-ASCII
        return None
    if not user or "\x00" in user:  # PostgreSQL text cannot hold NUL: no such device
        return None
    return user, password


def _authenticate(p: Pipeline, batch: Sequence[Pending]) -> list[str | None]:
    """The active device each request speaks for (None: unknown credentials), in at most two
    queries for the whole batch."""
    hashes = {r.secret: hash_device_secret(r.secret) for r in batch if r.secret is not None}
    basics = [None if r.secret is not None else _basic(r.authorization) for r in batch]
    by_hash: dict[str, str] = {}
    stored: dict[str, str] = {}  # device id -> its secret's hash
    if hashes:
        by_hash = {h: str(d) for d, h in p.conn.execute(
            "SELECT id, secret_hash FROM devices WHERE secret_hash = ANY(%s) AND active",
            (list(set(hashes.values())),))}
    ids = list({b[0] for b in basics if b is not None})
    if ids:
        stored = {str(d): h for d, h in p.conn.execute(
            "SELECT id, secret_hash FROM devices WHERE id = ANY(%s) AND active", (ids,))}
    p.conn.rollback()
    out: list[str | None] = []
    for r, b in zip(batch, basics, strict=True):
        if r.secret is not None:
            out.append(by_hash.get(hashes[r.secret]))
        elif b is not None and b[0] in stored and secret_matches(b[1], stored[b[0]]):
            out.append(b[0])
        else:
            out.append(None)
    return out


_Rejected = tuple[Pending, RawMessage, str, str]  # a dead letter to keep: request, message, reason, detail


def _unknowns(p: Pipeline, reqs: Sequence[Pending], s: Settings, rejected: list[_Rejected]
              ) -> list[tuple[Pending, DomainError]]:
    """Requests with unknown credentials, the batch's together (two Redis round trips, their
    dead letters in the batch's one transaction of rejections): each counted; kept (a dead
    letter cut to a sample, added to `rejected`) only within its source address's rate, so
    that nobody can fill the disk by guessing. Returns each request's answer (401, or 429
    beyond the rate), to give once the dead letters are committed."""
    if not reqs:
        return []
    sources = [r.msg.remote or "unknown" for r in reqs]
    decisions = allow_many(p.redis, [f"{p.prefix}ratelimit:ingest-unknown:{src}" for src in sources],
                           s.ingest_unknown_rate_per_min, 60.0, s.ingest_unknown_rate_burst)
    pipe = p.redis.pipeline(transaction=False)  # in arrival order, as one request after another
    pipe.incrby(f"{p.prefix}ingest:unknown_credentials", len(reqs))  # every one, for the record
    for src, decision in zip(sources, decisions, strict=True):
        unsampled = f"{p.prefix}ingest:unknown_unsampled:{src}"
        if decision.allowed:
            pipe.getdel(unsampled)
        else:
            pipe.incr(unsampled)
            pipe.expire(unsampled, 86400)  # a source that stops sending is forgotten in a day
    replies = iter(pipe.execute()[1:])
    answers: list[tuple[Pending, DomainError]] = []
    for req, src, decision in zip(reqs, sources, decisions, strict=True):
        if not decision.allowed:
            next(replies), next(replies)
            answers.append((req, TooManyRequests(
                f"too many requests with unknown credentials from this address; retry after "
                f"{decision.retry_after_header} s", "rate_limited",
                headers={"Retry-After": decision.retry_after_header})))
            continue
        skipped = int(next(replies) or 0)
        msg = req.msg
        raw = (orjson.dumps(dict(msg.params)) if msg.channel == Channel.OSMAND_QUERY and msg.params
               else msg.payload)
        detail = "no valid device credentials" + (
            f"; {skipped} more request(s) from {src} since the last one kept were only counted"
            if skipped else "")
        rejected.append((req, replace(msg, payload=raw[: s.ingest_unknown_sample_bytes],
                                      params=None, size=msg.size or len(raw)),
                         "unknown_device", detail))
        answers.append((req, Unauthorized(req.unauthorized)))
    return answers


def record_batch(p: Pipeline, batch: Sequence[Pending]) -> None:
    """Record a batch of requests and settle each: its fixes stored, or the message
    dead-lettered with its reason (a MessageResult); or the error to answer with
    (`Unauthorized` for unknown credentials, `TooManyRequests` over a rate: the message is then
    kept as a `rate_limited` dead letter, not decoded, and the phone sends it again; 503 when
    other writers hold a device too long). A service outage propagates (the caller answers
    every request not settled yet with 503)."""
    s = get_settings()  # not p.settings: pipelines outlive a settings change
    devices = _authenticate(p, batch)
    known = [(req, replace(req.msg, device_id=dev))
             for req, dev in zip(batch, devices, strict=True) if dev is not None]
    rejected: list[_Rejected] = []  # dead letters, kept before any answer
    answers = _unknowns(p, [req for req, dev in zip(batch, devices, strict=True) if dev is None],
                        s, rejected)
    rates = allow_many(p.redis, [f"{p.prefix}ratelimit:ingest:{m.device_id}" for _, m in known],
                       s.ingest_rate_per_min, 60.0, s.ingest_rate_burst)
    todo: list[tuple[Pending, RawMessage]] = []
    results: list[tuple[Pending, MessageResult]] = []
    for (req, msg), decision in zip(known, rates, strict=True):
        if not decision.allowed:
            detail = (f"over {s.ingest_rate_per_min} requests/min (burst {s.ingest_rate_burst}); "
                      f"retry after {decision.retry_after_header} s")
            rejected.append((req, msg, "rate_limited", detail))
            answers.append((req, TooManyRequests(
                detail, "rate_limited", headers={"Retry-After": decision.retry_after_header})))
        elif req.body.oversized:
            detail = (f"{'more than ' if req.body.counted else ''}{req.body.size} bytes > limit "
                      f"{s.max_payload_bytes}; the first {s.max_payload_bytes} bytes are kept")
            rejected.append((req, msg, "oversized", detail))
            results.append((req, MessageResult(ok=False, reason="oversized", detail=detail)))
        else:
            todo.append((req, msg))
    _keep(p, rejected)
    for req, e in answers:
        _settle(req, exc=e)
    for req, res in results:
        _settle(req, res)
    _process(p, todo)


def _keep(p: Pipeline, rejected: Sequence[_Rejected]) -> None:
    """The batch's dead letters in one transaction; if that fails for a reason other than an
    outage, each alone, and a request whose own cannot be kept is answered 500 (as before
    batching: its phone sends it again)."""
    try:
        p.reject_many([(m, reason, detail) for _, m, reason, detail in rejected])
        return
    except Exception as e:
        if transient_reason(e) is not None:
            raise
        log.warning("the batch's %d dead letter(s) failed together (%r); keeping them one by one",
                    len(rejected), e)
    for req, m, reason, detail in rejected:
        try:
            p.reject(m, reason, detail)
        except Exception as e:
            if transient_reason(e) is not None:
                raise
            log.error("dead letter (%s) of %s from %s cannot be kept: %r", reason,
                      m.device_id or "an unknown device", m.remote, e)
            _settle(req, exc=RuntimeError(f"the message cannot be kept: {e!r}"))


# The database refuses the message's own data (a value out of range, a constraint): no retry
# can help, whatever else happens to the batch.
_REFUSED_DATA = (psycopg.errors.DataError, psycopg.errors.IntegrityError)


def _process(p: Pipeline, todo: Sequence[tuple[Pending, RawMessage]]) -> None:
    """The messages judged and committed in one transaction; messages of a device another
    writer holds past DEVICE_WAIT_S are answered 503 (the phone resends).

    If that fails and it is not a service outage (`transient_reason`), the batch's two ends are
    tried alone. Both failing the same way means the failure is the server's, not a message's
    (code and schema out of step in a deployment, a revoked grant, a defect every fix meets):
    the error propagates, nothing is recorded and every phone is answered 500 and keeps its
    fix. Otherwise the rest is tried in halves until each message that fails is alone, and that
    one is kept as a dead letter with the error as its reason (answered 200, so the phone's
    queue moves on), as is any message whose data the database refuses. A lone request that
    fails for another reason is answered 500, as before batching."""
    err = _attempt(p, todo)
    if err is None:
        return
    if len(todo) == 1:
        if not isinstance(err, _REFUSED_DATA):
            raise err
        _dead_letter(p, todo[0], err)
        return
    log.warning("HTTP ingest batch of %d failed (%r); trying its ends alone", len(todo), err)
    ends = [todo[0], todo[-1]]
    errors = [_attempt(p, [item]) for item in ends]
    if all(e is not None and type(e) is type(err) and not isinstance(e, _REFUSED_DATA)
           for e in errors):
        raise err
    for item, e in zip(ends, errors, strict=True):
        if e is not None:
            _dead_letter(p, item, e)
    _halves(p, todo[1:-1])


def _halves(p: Pipeline, todo: Sequence[tuple[Pending, RawMessage]]) -> None:
    """Record the messages in halves until each one that fails is alone: a dead letter."""
    err = _attempt(p, todo)
    if err is None:
        return
    if len(todo) == 1:
        _dead_letter(p, todo[0], err)
        return
    half = len(todo) // 2
    _halves(p, todo[:half])
    _halves(p, todo[half:])


def _attempt(p: Pipeline, todo: Sequence[tuple[Pending, RawMessage]]) -> Exception | None:
    """Judge and commit the messages and answer each; the error if that failed for a reason
    other than a service outage (which propagates). Nothing of a failed attempt is kept."""
    if not todo:
        return None
    try:
        results = p.process([m for _, m in todo], wait_s=DEVICE_WAIT_S, partial=True)
    except Exception as e:
        if transient_reason(e) is not None:
            raise
        if not p.conn.closed:
            p.conn.rollback()
        return e
    for (req, _), res in zip(todo, results, strict=True):
        if res.reason == BUSY and not res.ok:
            _settle(req, exc=_busy(res.detail or "the device is busy; retry"))
        else:
            _settle(req, res)
    return None


def _dead_letter(p: Pipeline, item: tuple[Pending, RawMessage], e: Exception) -> None:
    """Keep a message that fails on its own as a dead letter, the error as its reason."""
    req, msg = item
    log.error("message from %s cannot be stored: %r", msg.device_id, e)
    _settle(req, p.reject_failed(msg, e))


async def _submit(req: Pending) -> MessageResult:
    """Queue the request for a batch and wait for its outcome (raised if an error)."""
    try:
        return await asyncio.wait_for(asyncio.wrap_future(batcher.submit(req)), ANSWER_WAIT_S)
    except TimeoutError:  # the request's future is cancelled: a batch that takes it skips it
        raise _unavailable() from None


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
    msg = RawMessage(Channel.OWNTRACKS_HTTP, body.data, None, request.url.path, time.time(),
                     _remote(request), size=body.stored_size)
    res = await _submit(Pending(
        msg, body, "device credentials are missing or wrong (Basic device_id:secret)",
        authorization=authorization))
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
    # An oversized body is kept as its first bytes, not as the query parameters.
    msg = RawMessage(channel, body.data, None, where, time.time(), _remote(request),
                     None if body.oversized else params, size=body.stored_size)
    res = await _submit(Pending(msg, body, "unknown or revoked device secret", secret=secret))
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
