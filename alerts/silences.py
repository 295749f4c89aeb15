"""Three silences, three alerts, from Redis sorted sets of deadlines (no scan of positions).

Every batch moves each reporting device's deadlines forward (ZADD GT): communication failure
(no message for the interval plus a buffer), location failure (messages, but no usable fix for
as long), phone off (no message for H hours). The scheduler asks only for deadlines already
passed (ZRANGEBYSCORE), so one check costs what is due, not what is tracked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, cast

import psycopg
import redis

from alerts import service
from store.enums import AlertKind

log = logging.getLogger(__name__)

COMM, LOC, OFF = "dl:comm", "dl:loc", "dl:off"
# Devices with an open silence alert, per kind: a message ends a communication failure or a
# phone-off silence, only a usable fix ends a location failure.
SILENT = {COMM: "silent:comm", LOC: "silent:loc", OFF: "silent:off"}
KINDS = {COMM: AlertKind.COMMUNICATION_FAILURE, LOC: AlertKind.LOCATION_FAILURE,
         OFF: AlertKind.PHONE_OFF}
SEVERITY = {COMM: "medium", LOC: "medium", OFF: "high"}
RULES = {COMM: "communication_failure.no_message_for_interval_plus_buffer",
         LOC: "location_failure.messages_without_a_usable_fix",
         OFF: "phone_off.no_message_for_hours"}

# Remove a member only if its deadline is still the one that passed (a report may have moved it).
_TAKE_DUE = """
local taken = {}
for i, member in ipairs(ARGV) do
  if i > 1 then
    local s = tonumber(redis.call('ZSCORE', KEYS[1], member))
    if s ~= nil and s <= tonumber(ARGV[1]) then
      redis.call('ZREM', KEYS[1], member)
      redis.call('SADD', KEYS[2], member)
      table.insert(taken, member)
    end
  end
end
return taken
"""


# How far the MQTT ingest has heard (written by each worker, ingest/mqtt_worker.py): a hash
# of worker -> "<watermark> <written at>". Everything a worker received before its watermark is
# committed; a deadline later than the lowest watermark waits, because a report that would
# have moved it may still be queued (a killed worker's reports wait at the broker, a busy one's
# in its pending list). Our own backlog is not a supervisee's silence.
INGEST_WATERMARKS = "ingest:wm"


def write_watermark(r: redis.Redis, prefix: str, worker: str, watermark: float,
                    now: float | None = None) -> None:
    """An ingest worker says: everything I received before `watermark` is committed."""
    now = time.time() if now is None else now
    r.hset(prefix + INGEST_WATERMARKS, worker, f"{watermark!r} {now!r}")


INGEST_LOAD = "ingest:load"


def write_load(r: redis.Redis, prefix: str, worker: str, busy: float,
               now: float | None = None) -> None:
    """An ingest worker says: over the last seconds I spent this share of my time processing
    batches (1.0: saturated, the broker holds a backlog for me)."""
    now = time.time() if now is None else now
    r.hset(prefix + INGEST_LOAD, worker, f"{busy!r} {now!r}")


def ingest_busy(r: redis.Redis, prefix: str, threshold: float, now: float | None = None,
                fresh_s: float = 15.0) -> bool:
    """Whether any ingest worker that reported in the last `fresh_s` is busier than
    `threshold`: background work (the positions archive) then gives way."""
    now = time.time() if now is None else now
    for value in cast(Any, r.hgetall(prefix + INGEST_LOAD)).values():
        try:
            busy_s, at_s = value.split()
            if now - float(at_s) <= fresh_s and float(busy_s) >= threshold:
                return True
        except ValueError:
            continue
    return False


def ingest_watermark(r: redis.Redis, prefix: str, now: float, max_lag_s: float
                     ) -> tuple[float, list[str]]:
    """The time up to which silences can be judged: the lowest watermark of the ingest workers
    that wrote one in the last `max_lag_s` (none: `now`, an HTTP-only system), never after
    `now`. Returns it with the workers holding it back by more than a minute (logged by the
    caller). A worker silent for longer is taken as gone (removed, or down for good): its field
    is dropped, so that silences are judged again."""
    fields: dict[bytes, bytes] = cast(Any, r.hgetall(prefix + INGEST_WATERMARKS))
    lowest, behind, gone = now, [], []
    for worker, value in fields.items():
        try:
            wm_s, at_s = value.split()
            wm, at = float(wm_s), float(at_s)
        except ValueError:
            gone.append(worker)
            continue
        if now - at > max_lag_s:
            gone.append(worker)
            continue
        lowest = min(lowest, wm)
        if now - wm > 60:
            behind.append(worker.decode())
    if gone:
        r.hdel(prefix + INGEST_WATERMARKS, *gone)
    return lowest, behind


def record_activity(
    r: redis.Redis, prefix: str, messaged: Mapping[str, float], located: Mapping[str, float],
    silence_s: Mapping[str, float], phone_off_s: float,
) -> list[tuple[str, str]]:
    """Move deadlines forward after a committed batch; return (device, kind) silences just ended.

    `messaged`: device -> newest receive time; `located`: device -> newest receive time of a
    usable fix; `silence_s`: device -> allowed silence.
    """
    if not messaged:
        return []
    devices = list(messaged)
    pipe = r.pipeline(transaction=False)
    pipe.zadd(prefix + COMM, {d: messaged[d] + silence_s[d] for d in devices}, gt=True)
    pipe.zadd(prefix + OFF, {d: messaged[d] + phone_off_s for d in devices}, gt=True)
    if located:
        pipe.zadd(prefix + LOC, {d: located[d] + silence_s[d] for d in located}, gt=True)
    unlocated = [d for d in devices if d not in located]
    if unlocated:
        # Messages without a usable fix: start the location clock if it is not running.
        pipe.zadd(prefix + LOC, {d: messaged[d] + silence_s[d] for d in unlocated}, nx=True)
    pipe.smismember(prefix + SILENT[COMM], devices)
    pipe.smismember(prefix + SILENT[OFF], devices)
    located_list = list(located)
    if located_list:
        pipe.smismember(prefix + SILENT[LOC], located_list)
    out = pipe.execute()
    flags = out[-2:] if not located_list else out[-3:-1]
    back: list[tuple[str, str]] = []
    for key, fl in zip((COMM, OFF), flags, strict=True):
        back += [(d, KINDS[key].value) for d, f in zip(devices, fl, strict=True) if f]
    if located_list:
        back += [(d, KINDS[LOC].value) for d, f in zip(located_list, out[-1], strict=True) if f]
    if back:
        pipe = r.pipeline(transaction=False)
        for d, kind in back:
            key = next(k for k, v in KINDS.items() if v.value == kind)
            pipe.srem(prefix + SILENT[key], d)
        pipe.execute()
    return back


def clear_silence_alerts(conn: psycopg.Connection, ended: Iterable[tuple[str, str]]) -> int:
    """Mark the open silence alerts that just ended as cleared: (device, alert kind) pairs."""
    return service.clear_device_alerts(conn, ended)


def check_silences(conn: psycopg.Connection, r: redis.Redis, prefix: str,
                   now: float | None = None, limit: int = 5000,
                   max_lag_s: float = 300.0) -> int:
    """Raise an alert for every deadline passed; returns how many alerts were raised or renewed.

    A deadline counts as passed once it is before both the clock and the ingest watermark
    (`ingest_watermark`): while a worker is behind, restarting or cut off from the broker, the
    phones whose reports it holds are not called silent.

    The alert is committed before the deadline is taken off the set, so a crash in between
    repeats the check (which finds the open alert and changes nothing) instead of losing it.
    """
    clock = time.time() if now is None else now
    now, behind = ingest_watermark(r, prefix, clock, max_lag_s)
    if behind:
        log.warning("silence checks held back %.0f s by ingest worker(s) %s", clock - now,
                    ", ".join(sorted(behind)))
    take = r.register_script(_TAKE_DUE)
    raised = 0
    for key in (OFF, COMM, LOC):
        due: list[tuple[bytes, float]] = cast(Any, r.zrangebyscore(
            prefix + key, "-inf", now, start=0, num=limit, withscores=True))
        if not due:
            continue
        if key == LOC:
            # Location failure means messages *are* arriving: a fully silent phone is a
            # communication failure, and its location clock restarts with its next message.
            comm: list[float | None] = cast(Any, r.zmscore(prefix + COMM, [m.decode() for m, _ in due]))
            talking = [c is not None and c > now for c in comm]
            silent = [m for (m, _), t in zip(due, talking, strict=True) if not t]
            if silent:
                r.zrem(prefix + key, *silent)
            due = [d for d, t in zip(due, talking, strict=True) if t]
            if not due:
                continue
        now_dt = datetime.fromtimestamp(clock, UTC)
        heard = datetime.fromtimestamp(now, UTC).isoformat()
        items = []
        for member, deadline in due:
            device = member.decode() if isinstance(member, bytes) else str(member)
            reason = {"rule": RULES[key], "deadline": datetime.fromtimestamp(deadline, UTC).isoformat(),
                      "checked_at": now_dt.isoformat(), "ingest_heard_until": heard}
            items.append((device, datetime.fromtimestamp(deadline, UTC), reason))
        with conn.transaction():
            raised += service.raise_for_devices(conn, KINDS[key].value, SEVERITY[key], items, now_dt)
        take(keys=[prefix + key, prefix + SILENT[key]], args=[now, *[m for m, _ in due]])
    return raised


SEEDED = "dl:seeded"  # set last by `reseed`: the deadline sets hold every active device

_ACTIVITY = """
SELECT d.id,
       extract(epoch FROM greatest(d.created_at, p.last_message, m.last_message,
                                   x.last_message))::float8,
       extract(epoch FROM greatest(d.created_at, p.last_located))::float8
  FROM devices d JOIN supervisees s ON s.id = d.supervisee_id
  LEFT JOIN LATERAL (
      SELECT max(received_at) AS last_message,
             max(received_at) FILTER (WHERE membership IS DISTINCT FROM 'undecidable')
                 AS last_located
        FROM positions WHERE device_id = d.id AND fix_time > %(since)s) p ON true
  LEFT JOIN LATERAL (
      SELECT max(received_at) AS last_message FROM device_messages
       WHERE device_id = d.id AND received_at > %(since)s) m ON true
  LEFT JOIN LATERAL (
      SELECT max(received_at) AS last_message FROM dead_letters
       WHERE device_id = d.id AND received_at > %(since)s) x ON true
 WHERE d.active AND s.active
"""

# Silences already reported: an open alert (its device waits in the SILENT set for its next
# message) or any alert of that kind whose deadline is not older than the recomputed one.
_REPORTED = """
SELECT device_id, kind, bool_or(status <> 'resolved' AND cleared_at IS NULL),
       extract(epoch FROM max(first_fix_time))::float8
  FROM alerts WHERE device_id = ANY(%s) AND kind = ANY(%s)
 GROUP BY device_id, kind
"""


def seed_enrolled(r: redis.Redis, prefix: str, silence_s: Mapping[str, float],
                  phone_off_s: float, now: float | None = None) -> None:
    """Start the silence clocks of newly enrolled devices: one that never reports still alerts."""
    if not silence_s:
        return
    now = time.time() if now is None else now
    pipe = r.pipeline(transaction=False)
    for key in (COMM, LOC):
        pipe.zadd(prefix + key, {d: now + s for d, s in silence_s.items()}, nx=True)
    pipe.zadd(prefix + OFF, dict.fromkeys(silence_s, now + phone_off_s), nx=True)
    pipe.execute()


def reseed(conn: psycopg.Connection, r: redis.Redis, prefix: str, window_s: float,
           now: float | None = None) -> int:
    """Rebuild the deadline and SILENT sets from PostgreSQL (after Redis lost them): each
    active device's clocks restart from its last message (positions, other messages, dead
    letters, at most `window_s` back; its enrolment at the earliest). A deadline already
    reported by an alert is not set again; an open silence alert puts its device back in the
    SILENT set. A deadline present is kept (ZADD NX): whoever wrote it since knew more.
    Returns how many devices were seeded."""
    from store.registry import Registry

    now = time.time() if now is None else now
    since = datetime.fromtimestamp(now - window_s, UTC)
    rows = conn.execute(_ACTIVITY, {"since": since}).fetchall()
    registry = Registry(r, prefix)
    infos = registry.lookup(conn, [d for d, _, _ in rows])
    phone_off_s = registry.phone_off_s()
    reported: dict[tuple[str, str], tuple[bool, float | None]] = {
        (d, k): (bool(o), t) for d, k, o, t in conn.execute(
            _REPORTED, ([d for d, _, _ in rows], [k.value for k in KINDS.values()]))}
    due: dict[str, dict[str, float]] = {COMM: {}, LOC: {}, OFF: {}}
    silent: dict[str, list[str]] = {COMM: [], LOC: [], OFF: []}
    for dev, messaged, located in rows:
        if dev not in infos:
            continue
        s = infos[dev].silence_s
        for key, deadline in ((COMM, messaged + s), (LOC, located + s),
                              (OFF, messaged + phone_off_s)):
            is_open, last = reported.get((dev, KINDS[key].value), (False, None))
            if is_open:
                silent[key].append(dev)
            elif last is None or last < deadline - 1e-3:
                due[key][dev] = deadline
    pipe = r.pipeline(transaction=False)
    for key in (COMM, LOC, OFF):
        if due[key]:
            pipe.zadd(prefix + key, due[key], nx=True)
        if silent[key]:
            pipe.sadd(prefix + SILENT[key], *silent[key])
    pipe.set(prefix + SEEDED, str(now))
    pipe.execute()
    return len(infos)


def reseed_if_lost(conn: psycopg.Connection, r: redis.Redis, prefix: str,
                   window_s: float) -> int:
    """`reseed` when the marker is gone (first start, or Redis lost its data); else nothing."""
    if r.exists(prefix + SEEDED):
        return 0
    return reseed(conn, r, prefix, window_s)
