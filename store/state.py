"""Per-device engine state in Redis: versioned compare-and-set, one owner per device at a time.

One string key per device, `{prefix}st:{device_id}` = "<fix time> <version> <state JSON>": a
batch reads all its devices in one round trip and writes each back only if its version is still
the one it read. A store may keep the states it read or wrote decoded in memory (`cache`): the
read then sends Redis the "<fix time> <version>" it holds, and gets the value back only for
devices whose state another writer has changed since.

Every writer (the ingest pipeline of any worker or HTTP request, the clock's `tick`) first
takes the device's owner lease `{prefix}own:{device_id}` (SET NX PX with a token), so two
writers never fold the same device from the same state; the version check fences a writer
whose lease ran out. A state Redis lost is folded again from the device's recent
positions in PostgreSQL (`rebuild`): the engine is pure, the same fixes give the same state.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, cast

import orjson
import psycopg
import redis

from geofence.model import CRS, DeviceState, Fix, Source

log = logging.getLogger(__name__)

# Write each state only if its stored version is still the one read (0: no state stored); the
# fix time stays the value's first field, so readers that only want it need not parse JSON.
_CAS = """
local out = {}
for i, key in ipairs(KEYS) do
  local want = tonumber(ARGV[3 * i - 2])
  local cur = redis.call('GET', key)
  local v = 0
  if cur then v = tonumber(string.match(cur, '^%S+ (%d+) ')) or 0 end
  if v == want then
    redis.call('SET', key, ARGV[3 * i - 1] .. ' ' .. (v + 1) .. ' ' .. ARGV[3 * i])
    out[i] = v + 1
  else
    out[i] = 0
  end
end
return out
"""

# Read states, skipping those the caller already holds: ARGV[i] is the "<fix time> <version>"
# the caller has of KEYS[i] ('' for none); the reply is that value's 1 when it is still
# current, the whole value when not, and nil when no state is stored.
_LOAD = """
local out = {}
for i, key in ipairs(KEYS) do
  local cur = redis.call('GET', key)
  local have = ARGV[i]
  if not cur then
    out[i] = false
  elseif have ~= '' and string.sub(cur, 1, #have + 1) == have .. ' ' then
    out[i] = 1
  else
    out[i] = cur
  end
end
return out
"""

# Owner leases: take every free one (or renew one already ours); returns 1/0 per key.
_TAKE = """
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, ARGV[1], 'NX', 'PX', ARGV[2]) then
    out[i] = 1
  elseif redis.call('GET', key) == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""
_GIVE = """
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then n = n + redis.call('DEL', key) end
end
return n
"""

PENDING_EXITS = "exit:pending"  # devices with an undecided exit streak: the clock follows them up


# Leave the follow-up set only if the state is still the one the caller judged (same fix time):
# a pipeline that stored a fresher streak meanwhile keeps its device in the set.
_DROP_PENDING = """
local dropped = 0
for i, key in ipairs(KEYS) do
  local cur = redis.call('GET', key)
  local t = cur and tonumber(string.match(cur, '^(%S+)')) or nil
  if t == nil or t == tonumber(ARGV[i + 1]) then
    dropped = dropped + redis.call('SREM', ARGV[1], ARGV[#KEYS + i + 1])
  end
end
return dropped
"""


class StateStore:
    """Loads and saves DeviceState per device; owns devices while it folds their fixes."""

    def __init__(self, r: redis.Redis, prefix: str, owner_ttl_s: float = 10.0,
                 token: str | None = None, cache: int = 0) -> None:
        self.redis = r
        self.prefix = prefix
        # A writer's name in its leases: random, or a stable name of a writer of which one
        # instance runs at a time (its next instance then holds what a killed one held).
        self.token = token or uuid.uuid4().hex
        self.owner_ttl_ms = int(owner_ttl_s * 1000)
        self._cas = r.register_script(_CAS)
        self._take = r.register_script(_TAKE)
        self._give = r.register_script(_GIVE)
        self._drop = r.register_script(_DROP_PENDING)
        self._load = r.register_script(_LOAD)
        # device -> ("<fix time> <version>" as stored, the decoded state), at most `cache`
        self.cache_size = cache
        self._cache: dict[str, tuple[bytes, DeviceState]] = {}
        self.cache_hits = self.cache_misses = 0
        self.rewound = 0  # states found older than this store last wrote (Redis lost writes)

    def key(self, device_id: str) -> str:
        """Redis key of a device's engine state."""
        return f"{self.prefix}st:{device_id}"

    def _owner_key(self, device_id: str) -> str:
        return f"{self.prefix}own:{device_id}"

    def own(self, devices: Iterable[str]) -> set[str]:
        """Take the owner lease of every device no other writer holds now (one round trip);
        returns the devices now owned by this store. Never waits: the caller handles the others
        later, so two writers with overlapping devices both make progress."""
        devices = list(dict.fromkeys(devices))
        if not devices:
            return set()
        got = self._take(keys=[self._owner_key(d) for d in devices],
                         args=[self.token, self.owner_ttl_ms])
        return {d for d, ok in zip(devices, got, strict=True) if ok}

    def release(self, devices: Iterable[str]) -> None:
        """Give the owner leases back (only those still ours)."""
        keys = [self._owner_key(d) for d in devices]
        if keys:
            self._give(keys=keys, args=[self.token])

    def load(self, devices: Iterable[str]) -> dict[str, DeviceState]:
        """States of the given devices (absent ones are left out), in one round trip."""
        return self.load_versioned(devices)[0]

    def load_versioned(self, devices: Iterable[str]
                       ) -> tuple[dict[str, DeviceState], dict[str, int]]:
        """States and their versions (0 for every device without a stored state). A state
        older than the one this store's cache last wrote is left out (with its version), as if
        lost: Redis forgot writes it had acknowledged (a failover, docs/high-availability.md)."""
        devices = list(devices)
        states: dict[str, DeviceState] = {}
        versions = dict.fromkeys(devices, 0)
        if not devices:
            return states, versions
        keys = [self.key(d) for d in devices]
        held_versions: dict[str, int] = {}
        rewound: list[str] = []
        if not self.cache_size:
            values: list[Any] = cast(Any, self.redis.mget(keys))
        else:
            cache = self._cache
            held = [cache.get(d) for d in devices]
            values = cast(Any, self._load(keys=keys, args=[h[0] if h else b"" for h in held]))
            for i, (d, raw) in enumerate(zip(devices, values, strict=True)):
                if raw == 1:
                    stamp, states[d] = held[i]  # type: ignore[misc]
                    versions[d] = int(stamp.rsplit(b" ", 1)[1])
                    values[i] = None
                elif held[i] is not None:
                    held_versions[d] = int(held[i][0].rsplit(b" ", 1)[1])  # type: ignore[index]
                    del cache[d]
            self.cache_hits += len(states)
            self.cache_misses += len(devices) - len(states)
        for d, raw in zip(devices, values, strict=True):
            if raw is None:
                continue
            t, rest = raw.split(b" ", 1)
            v = None
            if not rest.startswith(b"{"):  # "<version> <json>" (older values: JSON only)
                v, rest = rest.split(b" ", 1)
                versions[d] = int(v)
                if versions[d] < held_versions.get(d, 0):
                    # Older than the state this store last wrote: Redis lost writes (a failover
                    # to a replica that had not received them). Left out, so the caller folds it
                    # again from positions, and written over this version.
                    rewound.append(d)
                    continue
            states[d] = DeviceState.from_dict(orjson.loads(rest))
            if self.cache_size and v is not None:
                self._remember(d, t + b" " + v, states[d])
        if rewound:
            self.rewound += len(rewound)
            log.warning("engine state of %d device(s) older than last written (Redis lost "
                        "writes, e.g. in a failover): folded again from positions: %s",
                        len(rewound), ", ".join(rewound[:10]))
        return states, versions

    def _remember(self, device: str, stamp: bytes, state: DeviceState) -> None:
        cache = self._cache
        if device not in cache and len(cache) >= self.cache_size:
            # Full: forget the oldest tenth (insertion order), not one at a time.
            for d in list(itertools.islice(cache, max(1, self.cache_size // 10))):
                del cache[d]
        cache[device] = (stamp, state)

    def save(self, states: Mapping[str, DeviceState], versions: Mapping[str, int]) -> list[bool]:
        """Compare-and-set on the version read: True where written, False where another writer
        stored a state since (the caller re-reads and folds again)."""
        if not states:
            return []
        args: list[str | bytes | int] = []
        times = []
        for d, st in states.items():
            t = st.last_fix_time
            times.append(repr(t if t != float("-inf") else -1.0))
            args += [versions.get(d, 0), times[-1], orjson.dumps(st.to_dict())]
        written = self._cas(keys=[self.key(d) for d in states], args=args)
        if self.cache_size:
            for (d, st), stamp, v in zip(states.items(), times, written, strict=True):
                if v:
                    self._remember(d, f"{stamp} {int(v)}".encode(), st)
                else:
                    self._cache.pop(d, None)
        return [bool(x) for x in written]

    def rebuild(self, conn: psycopg.Connection, devices: Iterable[str],
                subjects: Mapping[str, Any], zones: Mapping[int, Any],
                window_s: float, limit: int = 200) -> dict[str, DeviceState]:
        """Engine states Redis lost, folded again from each device's recent positions (at most
        `limit` fixes of the last `window_s` seconds, in fix-time order; late fixes never moved
        a state and are left out). The events of that fold were reported the first time."""
        from geofence.engine import evaluate

        devices = [d for d in devices if d in subjects]
        if not devices:
            return {}
        since = datetime.fromtimestamp(time.time() - window_s, UTC)
        rows = conn.execute(
            """SELECT p.device_id, extract(epoch FROM p.fix_time)::float8, p.raw_lon, p.raw_lat,
                      p.crs, p.accuracy, p.altitude, p.speed, p.heading, p.battery, p.provider,
                      p.mock, p.seq, p.source, extract(epoch FROM p.received_at)::float8
                 FROM unnest(%s::text[]) AS d(id)
                 CROSS JOIN LATERAL (
                     SELECT * FROM positions p
                      WHERE p.device_id = d.id AND p.fix_time > %s AND NOT p.late
                      ORDER BY p.fix_time DESC LIMIT %s) p""",
            (devices, since, limit)).fetchall()
        if not rows:
            return {}
        fixes = [Fix(dev, t, lon, lat, CRS(crs), acc, alt, speed, heading, battery, provider,
                     bool(mock), seq, Source(source))
                 for dev, t, lon, lat, crs, acc, alt, speed, heading, battery, provider, mock,
                 seq, source, _ in rows]
        now = max(r[-1] for r in rows)
        return evaluate(fixes, subjects, zones, {}, now).states

    def track_pending_exits(self, before: Mapping[str, DeviceState],
                            after: Mapping[str, DeviceState]) -> None:
        """Keep the set of devices whose exit streak is undecided: add those in a streak now,
        remove those that were in one `before` and no longer are (one round trip, and none
        when no streak began or ended)."""
        from geofence.engine import pending_exit

        add = [d for d, st in after.items() if pending_exit(st)]
        drop = [d for d, st in after.items()
                if not pending_exit(st) and d in before and pending_exit(before[d])]
        if not add and not drop:
            return
        pipe = self.redis.pipeline(transaction=False)
        if add:
            pipe.sadd(self.prefix + PENDING_EXITS, *add)
        if drop:
            pipe.srem(self.prefix + PENDING_EXITS, *drop)
        pipe.execute()

    def pending_exits(self) -> list[str]:
        """Devices the pipeline last saw in an undecided exit streak."""
        members: Any = self.redis.smembers(self.prefix + PENDING_EXITS)
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)

    def drop_pending_exits(self, judged: Mapping[str, DeviceState | None]) -> int:
        """Remove devices from the follow-up set, each only if its stored state is still the one
        judged (`None`: no state was stored); returns how many left."""
        if not judged:
            return 0
        devices = list(judged)
        times = []
        for d in devices:
            st = judged[d]
            t = st.last_fix_time if st is not None else float("-inf")
            times.append(repr(t if t != float("-inf") else -1.0))
        return int(self._drop(keys=[self.key(d) for d in devices],
                              args=[self.prefix + PENDING_EXITS, *times, *devices]))
