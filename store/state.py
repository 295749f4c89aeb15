"""Per-device engine state in Redis, written with compare-and-set on fix time.

One string key per device, `{prefix}st:{device_id}` = "<fix time> <state JSON>": a batch reads
all its devices with one MGET, and a Lua script writes them only if still newer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, cast

import orjson
import redis

from geofence.model import DeviceState

# Write a state only if it is newer than the stored one (fixes), or, for time-driven updates
# that do not move the fix time (curfew ticks), only if nobody stored a newer fix meanwhile.
_CAS = """
local mode = ARGV[1]
local written = {}
for i, key in ipairs(KEYS) do
  local t = tonumber(ARGV[2 * i])
  local cur = redis.call('GET', key)
  local old = nil
  if cur then old = tonumber(string.match(cur, '^(%S+)')) end
  local ok
  if mode == 'newer' then ok = (old == nil or t > old) else ok = (old == nil or t == old) end
  if ok then
    redis.call('SET', key, ARGV[2 * i] .. ' ' .. ARGV[2 * i + 1])
    written[i] = 1
  else
    written[i] = 0
  end
end
return written
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
    """Loads and saves DeviceState per device."""

    def __init__(self, r: redis.Redis, prefix: str) -> None:
        self.redis = r
        self.prefix = prefix
        self._cas = r.register_script(_CAS)
        self._drop = r.register_script(_DROP_PENDING)

    def key(self, device_id: str) -> str:
        """Redis key of a device's engine state."""
        return f"{self.prefix}st:{device_id}"

    def load(self, devices: Iterable[str]) -> dict[str, DeviceState]:
        """States of the given devices (absent ones are left out), in one round trip."""
        devices = list(devices)
        if not devices:
            return {}
        out = {}
        values: list[Any] = cast(Any, self.redis.mget([self.key(d) for d in devices]))
        for d, raw in zip(devices, values, strict=True):
            if raw is not None:
                out[d] = DeviceState.from_dict(orjson.loads(raw.split(b" ", 1)[1]))
        return out

    def save(self, states: Mapping[str, DeviceState], *, same_time: bool = False) -> list[bool]:
        """Compare-and-set: newer fix time wins; `same_time` for updates that keep the fix time."""
        if not states:
            return []
        keys = [self.key(d) for d in states]
        args: list[str | bytes] = ["same" if same_time else "newer"]
        for st in states.values():
            t = st.last_fix_time
            args += [repr(t if t != float("-inf") else -1.0), orjson.dumps(st.to_dict())]
        return [bool(x) for x in self._cas(keys=keys, args=args)]

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
