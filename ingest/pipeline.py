"""The one ingest pipeline every entry point feeds: decode, validate, decide, persist, alert.

One call handles a batch of raw messages in one database transaction: positions go in with COPY,
dead letters and alerts in the same commit; per-device engine state is written to Redis after
the commit. Callers acknowledge only after `process` returns.

Any number of pipelines (ingest workers, HTTP requests) may hold fixes of one device at once:
each folds only the devices whose owner lease it holds (`store.state`), the others wait for
their turn within the same call, so a device's state is never folded twice from one version.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import orjson
import psycopg
import redis

from alerts import confirm, rollcalls
from alerts.service import AlertTarget, record_events
from alerts.silences import clear_silence_alerts, record_activity
from geofence.engine import evaluate
from geofence.model import Decision, DeviceState, Fix, Source
from ingest.protocols import (
    Decoded,
    DecodeError,
    Limits,
    decode_native,
    decode_osmand_json,
    decode_osmand_query,
    decode_owntracks,
)
from store import redisconn
from store.observe import fix_id
from store.registry import DeviceInfo, Registry
from store.settings import Settings
from store.state import StateStore

log = logging.getLogger(__name__)


class DevicesBusy(Exception):
    """Other writers held some of the batch's devices for longer than the wait allows (a
    transient failure: the caller retries, the fixes are not acknowledged)."""


_REDIS_REFUSALS = ("NOREPLICAS ", "MISCONF ", "READONLY ", "OOM ", "MASTERDOWN ", "LOADING ")

BUSY = "devices_busy"  # MessageResult.reason of a message left unprocessed (process(partial=True))


def transient_reason(e: BaseException) -> str | None:
    """The retry reason of a transient failure (its label in the metrics), None otherwise: a
    service that does not answer or cannot take writes now (a Redis master demoted in a
    failover answers READONLY, one at its memory limit OOM, one short of replicas NOREPLICAS,
    one that cannot persist MISCONF; a PostgreSQL standby refuses writes), or devices other
    writers hold too long. Anything else is a property of the message: retrying it would fail
    the same way, so it is kept as a dead letter."""
    if isinstance(e, (psycopg.OperationalError, psycopg.InterfaceError,
                      psycopg.errors.ReadOnlySqlTransaction)):
        return "database"
    if isinstance(e, (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError,
                      redis.exceptions.ReadOnlyError, redis.exceptions.OutOfMemoryError,
                      redis.exceptions.MasterDownError)):
        return "redis"
    # Refusals redis-py has no class for: a master short of replicas (`min-replicas-to-write`,
    # deploy/redis/redis.conf), one that cannot write its append-only file (a full disk). The
    # code begins Redis's reply; in a pipeline redis-py puts "Command # n (<the command, its
    # arguments>) of pipeline caused error: " before it: read after the last such marker, so
    # that no argument (a device id) can pass for the code.
    if isinstance(e, redis.ResponseError) and str(e).rpartition(
            " of pipeline caused error: ")[2].startswith(_REDIS_REFUSALS):
        return "redis"
    if isinstance(e, DevicesBusy):
        return "devices_busy"
    if isinstance(e, OSError):
        return "network"
    return None


class Channel(StrEnum):
    """How a message reached us: decides the decoder."""

    NATIVE_MQTT = "native_mqtt"
    OWNTRACKS_MQTT = "owntracks_mqtt"
    OWNTRACKS_HTTP = "owntracks_http"
    OSMAND_QUERY = "osmand_query"
    OSMAND_JSON = "osmand_json"


@dataclass(slots=True)
class RawMessage:
    """A message as received, before any decoding."""

    channel: Channel
    payload: bytes
    device_id: str | None  # from the topic, or the authenticated HTTP device
    topic: str | None = None
    received_at: float = field(default_factory=time.time)
    remote: str | None = None
    params: Mapping[str, str] | None = None  # OsmAnd query parameters
    size: int | None = None  # bytes received, when `payload` keeps only the first of them


@dataclass(slots=True)
class MessageResult:
    """What became of one message."""

    ok: bool
    reason: str | None = None
    detail: str = ""
    accepted: int = 0  # fixes newly stored
    duplicates: int = 0  # fixes we already had (redelivery, retries)
    other: int = 0  # non-location messages recorded


# Hot path writes, in one place so the column order is defined once.
_POS_COLS = (
    "device_id", "supervisee_id", "fix_time", "received_at", "lon", "lat", "raw_lon", "raw_lat",
    "crs", "accuracy", "altitude", "speed", "heading", "battery", "provider", "source", "mock",
    "seq", "late", "membership",
)
# pos_in holds times as whole microseconds since the epoch (bigint): a row's text is then made
# of numbers Python writes fast, and PostgreSQL turns them into timestamps exactly.
_TEMP_TABLE = """
CREATE TEMP TABLE IF NOT EXISTS pos_in (
    device_id text, supervisee_id integer, fix_us bigint, received_us bigint,
    lon float8, lat float8, raw_lon float8, raw_lat float8, crs text, accuracy real,
    altitude real, speed real, heading real, battery real, provider text, source text,
    mock boolean, seq bigint, late boolean, membership text
) ON COMMIT DELETE ROWS
"""
_COLS = ", ".join(_POS_COLS)
_IN_COLS = _COLS.replace("fix_time, received_at", "fix_us, received_us")
_MOVE = f"""INSERT INTO positions ({_COLS})
SELECT {_COLS.replace("fix_time, received_at", "timestamptz 'epoch' + fix_us * interval '1 us', "
                      "timestamptz 'epoch' + received_us * interval '1 us'")} FROM pos_in
ON CONFLICT DO NOTHING RETURNING device_id, (extract(epoch FROM fix_time) * 1000000)::bigint"""


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _us(t: float) -> int:
    """Fix time in whole microseconds: PostgreSQL's resolution, so keys round-trip exactly."""
    return round(t * 1_000_000)


def _ts(t: float) -> datetime:
    return EPOCH + timedelta(microseconds=_us(t))


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_text(value: str) -> str:
    """A text value in COPY's text format: backslash and the separators escaped (a device id or
    provider name normally has none: one check, no copy)."""
    if value.isprintable() and "\\" not in value:
        return value
    return value.translate(_COPY_ESCAPES)


class Pipeline:
    """Owns a database connection and a Redis client; not thread-safe (one per worker thread)."""

    def __init__(self, settings: Settings, conn: psycopg.Connection, r: redis.Redis,
                 owner_token: str | None = None) -> None:
        self.settings = settings
        self.conn = conn
        self.redis = r
        self.prefix = settings.redis_prefix
        self.registry = Registry(r, self.prefix)
        self.limits = Limits(
            max_bytes=settings.max_payload_bytes,
            max_fixes=settings.max_fixes_per_message,
            max_future_s=settings.max_future_s,
            max_age_s=settings.max_age_s,
        )
        self.states = StateStore(r, self.prefix, settings.device_owner_ttl_s, owner_token,
                                 cache=settings.state_cache_devices)
        if not conn.autocommit:
            raise ValueError("the pipeline needs an autocommit connection")
        conn.execute(_TEMP_TABLE)
        # Every query here is a batch's small look-up or write: a parallel plan (a registry
        # look-up before the planner has statistics on a freshly enrolled fleet chose one) starts
        # worker processes per batch that cost more CPU than the query (8.8 s of CPU in one
        # 100,000-phone bench start, BENCHMARKS.md).
        conn.execute("SET max_parallel_workers_per_gather = 0")

    @classmethod
    def connect(cls, settings: Settings, owner_token: str | None = None) -> Pipeline:
        """A pipeline with its own connections. `owner_token` names it in device owner leases:
        give one only to a writer of which one instance runs at a time (an MQTT worker's
        client id), so that its next instance takes the leases of a killed one over at once."""
        # Autocommit: look-ups run alone, and each batch is one explicit transaction.
        conn = psycopg.connect(settings.psycopg_dsn, autocommit=True)
        return cls(settings, conn, redisconn.sync_client(settings), owner_token)

    def close(self) -> None:
        """Release the connections."""
        self.conn.close()
        self.redis.close()

    def state_key(self, device_id: str) -> str:
        """Redis key of a device's engine state."""
        return self.states.key(device_id)

    def _decode(self, msg: RawMessage, now: float) -> Decoded:
        if len(msg.payload) > self.limits.max_bytes:
            raise DecodeError("oversized", f"{len(msg.payload)} bytes > {self.limits.max_bytes}")
        if msg.channel == Channel.NATIVE_MQTT:
            return decode_native(msg.device_id or "", msg.payload, now, self.limits)
        if msg.channel == Channel.OWNTRACKS_MQTT:
            return decode_owntracks(
                msg.device_id or "", msg.payload, now, self.limits, Source.OWNTRACKS_MQTT
            )
        if msg.channel == Channel.OWNTRACKS_HTTP:
            return decode_owntracks(
                msg.device_id or "", msg.payload, now, self.limits, Source.OWNTRACKS_HTTP
            )
        if msg.channel == Channel.OSMAND_QUERY:
            return decode_osmand_query(msg.params or {}, now, self.limits, msg.received_at)
        return decode_osmand_json(msg.payload, now, self.limits)

    def process(self, messages: Sequence[RawMessage], now: float | None = None,
                wait_s: float | None = None, partial: bool = False) -> list[MessageResult]:
        """Handle a batch end to end; returns one result per message, in order.

        The messages of the devices this pipeline can own now go first; those of devices
        another writer holds follow as soon as it lets go (each device's messages stay together
        and in arrival order). After `wait_s` (default `device_owner_wait_s`) raises
        DevicesBusy; with `partial`, returns instead, the messages still waiting marked
        MessageResult(ok=False, reason=BUSY): not processed, nothing recorded of them.
        """
        now = time.time() if now is None else now
        results: list[MessageResult | None] = [None] * len(messages)
        todo = list(range(len(messages)))
        deadline = time.monotonic() + (self.settings.device_owner_wait_s if wait_s is None
                                       else wait_s)
        pause = 0.002
        while todo:
            # Leases and engine states in one round trip; leases given back after the batch.
            owned, states, versions = self.states.own_and_load(
                {d for i in todo if (d := messages[i].device_id) is not None})
            turn = [i for i in todo if messages[i].device_id is None
                    or messages[i].device_id in owned]
            if turn:
                try:
                    for i, res in zip(turn, self._process_owned(
                            [messages[i] for i in turn], now, states, versions), strict=True):
                        results[i] = res
                finally:
                    # After the follow-up set and the silence deadlines are written too: a
                    # writer that took the device over could otherwise see its new exit streak
                    # dropped from the follow-up set by this batch's late removal.
                    self.states.release(owned)
                todo = [i for i in todo if results[i] is None]
                pause = 0.002
                continue
            if time.monotonic() > deadline:
                detail = f"{len(todo)} message(s) wait for devices other writers hold"
                if not partial:
                    raise DevicesBusy(detail)
                for i in todo:
                    results[i] = MessageResult(ok=False, reason=BUSY, detail=detail)
                break
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        return [r for r in results if r is not None]

    def _process_owned(self, messages: Sequence[RawMessage], now: float,
                       loaded: Mapping[str, DeviceState], loaded_versions: Mapping[str, int],
                       ) -> list[MessageResult]:
        """Handle messages of devices this pipeline owns (or of no device), given their states
        as read with the leases."""
        self.registry.refresh_if_changed()
        results = [MessageResult(ok=True) for _ in messages]
        dead: list[tuple[int, str, str]] = []
        decoded: list[tuple[int, Decoded]] = []
        for i, msg in enumerate(messages):
            if msg.device_id is None:
                dead.append((i, "unknown_device", "no valid device credentials or topic"))
                continue
            try:
                d = self._decode(msg, now)
            except DecodeError as e:
                dead.append((i, e.reason, e.detail))
                continue
            if d.claimed_device_id is not None and d.claimed_device_id != msg.device_id:
                dead.append(
                    (i, "device_mismatch",
                     f"payload names {d.claimed_device_id!r}, credentials are {msg.device_id!r}")
                )
                continue
            # Fixes carry the authenticated device id, whatever the payload said.
            decoded.append((i, d))
        infos = self.registry.lookup(self.conn, {messages[i].device_id or "" for i, _ in decoded})
        fixes: list[Fix] = []
        owner: list[int] = []
        others: list[tuple[int, dict[str, object]]] = []
        for i, d in decoded:
            dev = messages[i].device_id
            if dev not in infos:
                dead.append((i, "unknown_device", f"device {dev!r} is not enrolled or is revoked"))
                continue
            for f in d.fixes:
                fixes.append(f if f.device_id == dev else _with_device(f, dev))
                owner.append(i)  # decisions[k].index == k: fix k came in message owner[k]
            others.extend((i, o) for o in d.other)

        devices = sorted({f.device_id for f in fixes})
        subjects = self.registry.subjects(infos)
        states = {d: loaded[d] for d in devices if d in loaded}
        versions = {d: loaded_versions.get(d, 0) for d in devices}
        lost = [d for d in devices if d not in states]
        rebuilt = {}
        if lost:  # never stored, or Redis lost it: fold the device's recent positions again
            rebuilt = self.states.rebuild(self.conn, lost, subjects, self.registry.zones,
                                          self.settings.state_rebuild_window_s,
                                          self.settings.state_rebuild_max_fixes)
            states.update(rebuilt)
        result = evaluate(fixes, subjects, self.registry.zones, states, now)
        result.states = {**rebuilt, **result.states}  # a rebuilt state is kept even if unchanged

        with self.conn.transaction():
            inserted = self._write_positions(result.decisions, infos, messages, owner)
            # A redelivered message is late against the state it already advanced: what its
            # fixes revealed was reported the first time.
            result.events = [e for e in result.events
                             if not e.retro or (e.device_id, _us(e.fix_time)) in inserted]
            self._write_dead_letters(messages, dead)
            self._write_others(messages, others)
            targets = {d: AlertTarget(i.supervisee_id, i.office_id) for d, i in infos.items()}
            emitted = record_events(self.conn, result.events, targets, self.redis, self.prefix)
        for step in emitted:  # committed: one line per alert step, keyed by the fix that caused it
            log.info("alert %s (%s) of supervisee %s", step.get("alert_id", "-"),
                     step.get("kind", "roll call"), step.get("supervisee_id"), extra={
                         "fix_id": fix_id(step.get("device_id"), step.get("fix_time")),
                         "alert_id": step.get("alert_id"), "supervisee_id": step.get("supervisee_id")})

        saved = self.states.save(result.states, versions)
        if not all(saved):
            # Only when a lease ran out mid-batch (a stalled writer): the newer state stays, and
            # a redelivery is late against it. Say so: it should never happen.
            log.warning("engine state of %s changed under this batch (owner lease expired)",
                        [d for d, ok in zip(result.states, saved, strict=True) if not ok])
        # Only states that won the compare-and-set speak for the device's streak.
        self.states.track_pending_exits(
            states, {d: st for (d, st), ok in zip(result.states.items(), saved, strict=True) if ok})
        self._track_silences(messages, decoded, dead, result.decisions, owner, infos)
        for dec in result.decisions:
            i = owner[dec.index]
            key = (dec.fix.device_id, _us(dec.fix.time))
            if key in inserted:
                results[i].accepted += 1
                inserted.discard(key)
            else:
                results[i].duplicates += 1
        for i, _ in others:
            results[i].other += 1
        for i, reason, detail in dead:
            results[i] = MessageResult(ok=False, reason=reason, detail=detail)
        return results

    def reject(self, msg: RawMessage, reason: str, detail: str) -> None:
        """Dead-letter one message on its own (used when a batch cannot be stored)."""
        self.reject_many([(msg, reason, detail)])

    def reject_failed(self, msg: RawMessage, e: BaseException) -> MessageResult:
        """Dead-letter a message that makes processing raise (not an outage), alone, with the
        error as its reason: `storage_error` when the database refused it, else
        `processing_error`."""
        reason = "storage_error" if isinstance(e, psycopg.Error) else "processing_error"
        detail = f"{type(e).__name__}: {e}"[:2000]
        self.reject(msg, reason, detail)
        return MessageResult(ok=False, reason=reason, detail=detail)

    def reject_many(self, rejected: Sequence[tuple[RawMessage, str, str]]) -> None:
        """Dead-letter messages without processing them, in one transaction: (message,
        reason, detail) each."""
        if not rejected:
            return
        with self.conn.transaction():
            self._write_dead_letters([m for m, _, _ in rejected],
                                     [(i, reason, detail[:2000])
                                      for i, (_, reason, detail) in enumerate(rejected)])

    def _track_silences(
        self, messages: Sequence[RawMessage], decoded: Sequence[tuple[int, Decoded]],
        dead: Sequence[tuple[int, str, str]], decisions: Sequence[Decision],
        owner: Sequence[int], infos: Mapping[str, DeviceInfo],
    ) -> None:
        """Move the silence deadlines of every device that spoke; clear ended silences."""
        messaged: dict[str, float] = {}
        for i in [i for i, _ in decoded] + [i for i, _, _ in dead]:
            dev = messages[i].device_id
            if dev is not None and dev in infos:
                messaged[dev] = max(messaged.get(dev, 0.0), messages[i].received_at)
        located: dict[str, float] = {}
        fresh: list[tuple[str, float]] = []
        answers: list[confirm.Answer] = []
        for dec in decisions:
            f = dec.fix
            if dec.usable:  # as the engine judged it: decided once, used here
                t = messages[owner[dec.index]].received_at
                located[f.device_id] = max(located.get(f.device_id, 0.0), t)
                if not f.mock:  # a mock location answers no roll-call, no location request
                    fresh.append((f.device_id, f.time))
                    answers.append(confirm.Answer(f.device_id, f.time, t, f.accuracy))
        if fresh:
            rollcalls.answer(self.conn, self.redis, self.prefix, fresh)
            confirm.answer(self.conn, self.redis, self.prefix, answers)
        back = record_activity(self.redis, self.prefix, messaged, located,
                               {d: infos[d].silence_s for d in messaged},
                               self.registry.phone_off_s())
        if back:
            clear_silence_alerts(self.conn, back)

    def _write_positions(
        self,
        decisions: Sequence[Decision],
        infos: Mapping[str, object],
        messages: Sequence[RawMessage],
        owner: Sequence[int],
    ) -> set[tuple[str, int]]:
        if not decisions:
            return set()
        # COPY's text format written here (psycopg's write_row costs ~3x more per row): numbers
        # as Python prints them (shortest exact), \\N for null, text escaped (_copy_text).
        null = "\\N"
        lines = []
        for dec in decisions:
            f = dec.fix
            a, al, sp, hd, bt, pr, sq = (f.accuracy, f.altitude, f.speed, f.heading, f.battery,
                                         f.provider, f.seq)
            lines.append(
                f"{_copy_text(f.device_id)}\t{infos[f.device_id].supervisee_id}"  # type: ignore[attr-defined]
                f"\t{round(f.time * 1_000_000)}"
                f"\t{round(messages[owner[dec.index]].received_at * 1_000_000)}"
                f"\t{dec.lon}\t{dec.lat}\t{f.lon}\t{f.lat}\t{f.crs.value}"
                f"\t{null if a is None else a}\t{null if al is None else al}"
                f"\t{null if sp is None else sp}\t{null if hd is None else hd}"
                f"\t{null if bt is None else bt}\t{null if pr is None else _copy_text(pr)}"
                f"\t{f.source.value}\t{'t' if f.mock else 'f'}\t{null if sq is None else sq}"
                f"\t{'f' if dec.evaluated else 't'}\t{dec.membership.value}\n")
        with self.conn.cursor() as cur:
            with cur.copy(f"COPY pos_in ({_IN_COLS}) FROM STDIN") as cp:
                cp.write("".join(lines))
            cur.execute(_MOVE)
            return set(cur.fetchall())

    def _write_dead_letters(
        self, messages: Sequence[RawMessage], dead: Sequence[tuple[int, str, str]]
    ) -> None:
        if not dead:
            return
        rows = []
        for i, reason, detail in dead:
            m = messages[i]
            raw = m.payload
            if m.channel == Channel.OSMAND_QUERY and m.params is not None:
                raw = orjson.dumps(dict(m.params))
            rows.append((
                _ts(m.received_at), m.channel.value, m.topic, m.device_id, reason, detail,
                raw[: self.limits.max_bytes], m.size or len(raw), m.remote,
            ))
        # COPY here too: a flood of junk must not slow the pipeline more than good fixes do.
        with self.conn.cursor() as cur, cur.copy(
            "COPY dead_letters (received_at, source, topic, device_id, reason, detail, raw,"
            " raw_size, remote) FROM STDIN"
        ) as cp:
            for row in rows:
                cp.write_row(row)
        log.info("dead-lettered %d message(s): %s", len(dead), sorted({r for _, r, _ in dead}))

    def _write_others(
        self, messages: Sequence[RawMessage], others: Sequence[tuple[int, dict[str, object]]]
    ) -> None:
        if not others:
            return
        with self.conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO device_messages (received_at, device_id, source, msg_type, payload)
                   VALUES (%s, %s, %s, %s, %s)""",
                [
                    (
                        _ts(messages[i].received_at), messages[i].device_id,
                        messages[i].channel.value,
                        str(o.get("_type", "unknown")).replace("\x00", "\ufffd"),
                        # jsonb refuses NUL characters: keep the message, mark where they were.
                        orjson.dumps(o).decode().replace("\\u0000", "\\ufffd"),
                    )
                    for i, o in others
                ],
            )


def _with_device(f: Fix, device_id: str) -> Fix:
    return replace(f, device_id=device_id)
