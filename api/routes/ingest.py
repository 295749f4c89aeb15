"""HTTP entry points for phones: OwnTracks HTTP mode and Traccar Client (OsmAnd protocol).

Both authenticate the device, then hand the message to the same pipeline as MQTT; the phone gets
200 only after its fixes are committed, so an accepted fix is never lost.
"""

from __future__ import annotations

import base64
import binascii
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import parse_qsl

import psycopg
from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api.authz import declared
from api.errors import DomainError, TooManyRequests, Unauthorized
from api.security import hash_device_secret, secret_matches
from ingest.pipeline import Channel, DevicesBusy, MessageResult, Pipeline, RawMessage
from store.ratelimit import allow
from store.settings import get_settings

router = APIRouter(prefix="/ingest", tags=["ingest (phones)"])


class PayloadRejected(DomainError):
    status_code = 400
    code = "payload_rejected"


class PayloadTooLarge(DomainError):
    status_code = 413
    code = "oversized"


class Busy(DomainError):
    """Transient: nothing was recorded, the phone keeps the fix and sends it again."""

    status_code = 503
    code = "busy"


@dataclass(frozen=True, slots=True)
class _Limited:
    """A request refused by the device's rate limit (already dead-lettered)."""

    detail: str
    retry_after: str


class _Pool:
    """At most `http_ingest_pipelines` pipelines (each with its own connections) shared by the
    request threads; a request waits a while for one, then is told to come back (503)."""

    WAIT_S = 10.0

    def __init__(self) -> None:
        self._idle: queue.LifoQueue[Pipeline] = queue.LifoQueue()
        self._slots: threading.BoundedSemaphore | None = None
        self._lock = threading.Lock()

    def _semaphore(self) -> threading.BoundedSemaphore:
        with self._lock:
            if self._slots is None:
                self._slots = threading.BoundedSemaphore(get_settings().http_ingest_pipelines)
            return self._slots

    @contextmanager
    def acquire(self) -> Iterator[Pipeline]:
        slots = self._semaphore()
        if not slots.acquire(timeout=self.WAIT_S):
            raise Busy("every ingest pipeline is busy; retry", headers={"Retry-After": "5"})
        try:
            try:
                p = self._idle.get_nowait()
            except queue.Empty:
                p = Pipeline.connect(get_settings())
            try:
                yield p
            except (psycopg.Error, OSError):
                p.close()  # broken connection: do not return it to the pool
                raise
            except DevicesBusy as e:
                self._idle.put(p)
                raise Busy(str(e), headers={"Retry-After": "5"}) from e
            else:
                self._idle.put(p)
        finally:
            slots.release()

    def close(self) -> None:
        while not self._idle.empty():
            self._idle.get_nowait().close()


pool = _Pool()


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


def _process(p: Pipeline, msg: RawMessage) -> MessageResult | _Limited | None:
    """One message: dead-lettered as unknown without a device, as `rate_limited` when the device
    sends too fast (nothing decoded, raw bytes kept), otherwise through the pipeline."""
    if msg.device_id is None:
        p.process([msg])  # unknown credentials: dead-lettered, device None
        return None
    s = get_settings()  # not p.settings: pooled pipelines outlive a settings change
    decision = allow(p.redis, f"{p.prefix}ratelimit:ingest:{msg.device_id}",
                     s.ingest_rate_per_min, 60.0, s.ingest_rate_burst)
    if not decision.allowed:
        detail = (f"over {s.ingest_rate_per_min} requests/min (burst {s.ingest_rate_burst}); "
                  f"retry after {decision.retry_after_header} s")
        p.reject(msg, "rate_limited", detail)
        return _Limited(detail, decision.retry_after_header)
    return p.process([msg])[0]


def _answer(res: MessageResult | _Limited | None, unauthorized: str) -> MessageResult:
    if res is None:
        raise Unauthorized(unauthorized)
    if isinstance(res, _Limited):
        raise TooManyRequests(res.detail, "rate_limited", headers={"Retry-After": res.retry_after})
    return _result_or_error(res)


async def _body(request: Request) -> bytes:
    limit = get_settings().max_payload_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes exceeds {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _result_or_error(res: MessageResult) -> MessageResult:
    if not res.ok:
        raise PayloadRejected(f"{res.reason}: {res.detail}", code=f"rejected.{res.reason}")
    return res


def _remote(request: Request) -> str | None:
    return request.client.host if request.client else None


@router.post("/owntracks", **declared("device", "device"))
async def owntracks_http(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> JSONResponse:
    """OwnTracks HTTP mode: Basic auth with device id and secret; replies with an empty list."""
    body = await _body(request)
    def work() -> MessageResult | _Limited | None:
        with pool.acquire() as p:
            device = _device_by_basic(p, authorization)
            msg = RawMessage(Channel.OWNTRACKS_HTTP, body, device, request.url.path,
                             time.time(), _remote(request))
            return _process(p, msg)

    res = await run_in_threadpool(work)
    _answer(res, "device credentials are missing or wrong (Basic device_id:secret)")
    return JSONResponse([])


async def _osmand(request: Request, secret: str) -> dict[str, Any]:
    body = await _body(request)
    ctype = request.headers.get("content-type", "")
    params = dict(request.query_params)
    channel = Channel.OSMAND_QUERY
    if body and "json" in ctype:
        channel = Channel.OSMAND_JSON
    elif body:
        try:
            params.update(parse_qsl(body.decode(), keep_blank_values=True))
        except UnicodeDecodeError as e:
            raise PayloadRejected("form body is not UTF-8", code="rejected.bad_encoding") from e
    def work() -> MessageResult | _Limited | None:
        with pool.acquire() as p:
            device = _device_by_secret(p, secret)
            msg = RawMessage(channel, body, device, request.url.path.rsplit("/", 1)[0] + "/***",
                             time.time(), _remote(request), params)
            return _process(p, msg)

    res = await run_in_threadpool(work)
    r = _answer(res, "unknown or revoked device secret")
    return {"accepted": r.accepted, "duplicates": r.duplicates}


@router.post("/osmand/{secret}", **declared("device", "device"))
async def osmand_post(secret: str, request: Request) -> dict[str, Any]:
    """Traccar Client: query-string/form parameters or the JSON body of the current app."""
    return await _osmand(request, secret)


@router.get("/osmand/{secret}", **declared("device", "device"))
async def osmand_get(secret: str, request: Request) -> dict[str, Any]:
    """Traccar Client with GET requests (older versions, some settings)."""
    return await _osmand(request, secret)
