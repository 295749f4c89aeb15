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
import random
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

# The scripts name a device's keys from its id (`{prefix}st:{id}`, `{prefix}own:{id}`) instead of
# taking them in KEYS: half the arguments to send per device on the hot path. Declared with
# `no-cluster`: the state store runs on one Redis primary (with Sentinel), never Redis Cluster.

# Take owner leases and read states in one pass. ARGV: prefix, token, lease ms, 'own'/'read'/
# 'both', then per device its id and the "<fix time> <version>" the caller holds ('' for none).
# Reply per device: 0 not owned (another writer holds it); 1 the held state is current; 2 no
# state stored; else the stored value. 'own' only takes leases (1 = owned), 'read' only reads.
# A held state is compared on the value's first bytes only (GETRANGE): the usual batch finds
# its cache current without copying the state out of Redis.
_OWN_LOAD = """#!lua flags=no-cluster
local pfx, token, ttl, mode = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local out = {}
local n = 0
for i = 5, #ARGV, 2 do
  n = n + 1
  local id = ARGV[i]
  local ok = true
  if mode ~= 'read' then
    local own = pfx .. 'own:' .. id
    if not redis.call('SET', own, token, 'NX', 'PX', ttl) then
      if redis.call('GET', own) == token then
        redis.call('PEXPIRE', own, ttl)
      else
        ok = false
      end
    end
  end
  if not ok then
    out[n] = 0
  elseif mode == 'own' then
    out[n] = 1
  else
    local key = pfx .. 'st:' .. id
    local have = ARGV[i + 1]
    if have ~= '' and redis.call('GETRANGE', key, 0, #have) == have .. ' ' then
      out[n] = 1
    else
      local cur = redis.call('GET', key)
      if cur then out[n] = cur else out[n] = 2 end
    end
  end
end
return out
"""

# Write each state only if its stored version is still the one read (0: no state stored), then
# give back owner leases still ours. ARGV: prefix, token, number of states, per state its id,
# the version read and the new value (written by the caller as "<fix time> <version + 1>
# <state JSON>": the fix time stays the first field, so readers that only want it need not
# parse JSON), then the ids whose leases to give back. Reply: per state its new version, or 0
# where another writer stored one since.
_SAVE = """#!lua flags=no-cluster
local pfx, token, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local out = {}
for i = 1, n do
  local j = 1 + 3 * i
  local key = pfx .. 'st:' .. ARGV[j]
  local want = tonumber(ARGV[j + 1])
  local v = tonumber(string.match(redis.call('GETRANGE', key, 0, 63), '^%S+ (%d+) ')) or 0
  if v == want then
    redis.call('SET', key, ARGV[j + 2])
    out[i] = v + 1
  else
    out[i] = 0
  end
end
for j = 4 + 3 * n, #ARGV do
  local own = pfx .. 'own:' .. ARGV[j]
  if redis.call('GET', own) == token then redis.call('DEL', own) end
end
return out
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
        self._own_load = r.register_script(_OWN_LOAD)
        self._save = r.register_script(_SAVE)
        self._drop = r.register_script(_DROP_PENDING)
        # device -> ("<fix time> <version>" as stored, the decoded state), at most `cache`
        self.cache_size = cache
        self._cache: dict[str, tuple[bytes, DeviceState]] = {}
        self._evict = random.Random()
        self.cache_hits = self.cache_misses = 0
        self.rewound = 0  # states found older than this store last wrote (Redis lost writes)

    def key(self, device_id: str) -> str:
        """Redis key of a device's engine state."""
        return f"{self.prefix}st:{device_id}"

    def own(self, devices: Iterable[str]) -> set[str]:
        """Take the owner lease of every device no other writer holds now (one round trip);
        returns the devices now owned by this store. Never waits: the caller handles the others
        later, so two writers with overlapping devices both make progress."""
        devices = list(dict.fromkeys(devices))
        if not devices:
            return set()
        got = self._own_load(args=[self.prefix, self.token, self.owner_ttl_ms, "own",
                                   *itertools.chain.from_iterable((d, "") for d in devices)])
        return {d for d, ok in zip(devices, got, strict=True) if ok}

    def release(self, devices: Iterable[str]) -> None:
        """Give the owner leases back (only those still ours)."""
        ids = list(devices)
        if ids:
            self._save(args=[self.prefix, self.token, 0, *ids])

    def load(self, devices: Iterable[str]) -> dict[str, DeviceState]:
        """States of the given devices (absent ones are left out), in one round trip."""
        return self.load_versioned(devices)[0]

    def load_versioned(self, devices: Iterable[str]
                       ) -> tuple[dict[str, DeviceState], dict[str, int]]:
        """States and their versions (0 for every device without a stored state). A state
        older than the one this store's cache last wrote is left out (with its version), as if
        lost: Redis forgot writes it had acknowledged (a failover, docs/high-availability.md)."""
        _, states, versions = self._own_and_load(list(devices), "read")
        return states, versions

    def own_and_load(self, devices: Iterable[str]
                     ) -> tuple[set[str], dict[str, DeviceState], dict[str, int]]:
        """`own` and `load_versioned` in one round trip: the devices now owned, and the states
        and versions of those (a device another writer holds is neither loaded nor versioned)."""
        return self._own_and_load(list(dict.fromkeys(devices)), "both")

    def _own_and_load(self, devices: list[str], mode: str
                      ) -> tuple[set[str], dict[str, DeviceState], dict[str, int]]:
        if not devices:
            return set(), {}, {}
        held: list[tuple[bytes, DeviceState] | None] = (
            [self._cache.get(d) for d in devices] if self.cache_size else [None] * len(devices))
        args: list[Any] = [self.prefix, self.token, self.owner_ttl_ms, mode]
        for d, h in zip(devices, held, strict=True):
            args += (d, h[0] if h else b"")
        values: list[Any] = cast(Any, self._own_load(args=args))
        try:
            return self._loaded(devices, held, values)
        except BaseException:  # e.g. a state that no longer decodes: give the leases back
            if mode != "read":
                self.release([d for d, raw in zip(devices, values, strict=True) if raw != 0])
            raise

    def _loaded(self, devices: list[str], held: list[tuple[bytes, DeviceState] | None],
                values: list[Any]) -> tuple[set[str], dict[str, DeviceState], dict[str, int]]:
        """The script's replies decoded: owned devices, their states and versions."""
        states: dict[str, DeviceState] = {}
        versions: dict[str, int] = {}
        cache = self._cache
        owned: set[str] = set()
        held_versions: dict[str, int] = {}
        rewound: list[str] = []
        for d, h, raw in zip(devices, held, values, strict=True):
            if raw == 0:
                continue  # another writer's
            owned.add(d)
            versions[d] = 0
            if raw == 1:
                if h is None:  # 'read' of a device without a cached state never answers 1
                    raise RuntimeError(f"state of {d!r}: Redis says current, none is held")
                stamp, states[d] = h
                versions[d] = int(stamp.rsplit(b" ", 1)[1])
                continue
            if h is not None:
                held_versions[d] = int(h[0].rsplit(b" ", 1)[1])
                # Perhaps already forgotten: an earlier device of this batch, remembered, made
                # room by forgetting entries at random.
                cache.pop(d, None)
            if raw == 2:
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
        if self.cache_size:
            hits = sum(1 for raw in values if raw == 1)
            self.cache_hits += hits
            self.cache_misses += len(owned) - hits
        if rewound:
            self.rewound += len(rewound)
            log.warning("engine state of %d device(s) older than last written (Redis lost "
                        "writes, e.g. in a failover): folded again from positions: %s",
                        len(rewound), ", ".join(rewound[:10]))
        return owned, states, versions

    def _remember(self, device: str, stamp: bytes, state: DeviceState) -> None:
        cache = self._cache
        if device not in cache and len(cache) >= self.cache_size:
            # Full: forget a random tenth, not one at a time. Not the oldest: phones report in
            # a cycle, so with more devices than room, forgetting in insertion order forgets
            # each device just before it reports again and nothing is ever found (0 hits at
            # 700,000 devices in a 400,000 cache); forgetting at random keeps some of them
            # (about a quarter found at 1.75 devices per place).
            for d in self._evict.sample(list(cache), max(1, self.cache_size // 10)):
                del cache[d]
        cache[device] = (stamp, state)

    def save(self, states: Mapping[str, DeviceState], versions: Mapping[str, int],
             release: Iterable[str] = ()) -> list[bool]:
        """Compare-and-set on the version read: True where written, False where another writer
        stored a state since (the caller re-reads and folds again). Then, in the same round
        trip, give back the leases of `release` still ours."""
        ids = list(release)
        if not states and not ids:
            return []
        args: list[str | bytes | int] = [self.prefix, self.token, len(states)]
        stamps = []
        for d, st in states.items():
            t = st.last_fix_time
            want = versions.get(d, 0)
            stamp = f"{repr(t if t != float('-inf') else -1.0)} {want + 1}".encode()
            stamps.append(stamp)
            args += (d, want, stamp + b" " + orjson.dumps(st.to_dict()))
        args += ids
        written = self._save(args=args)
        if self.cache_size:
            for (d, st), stamp, v in zip(states.items(), stamps, written, strict=True):
                if v:
                    self._remember(d, stamp, st)
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
