"""Rate limits in Redis, shared by every API process: `allow(r, key, limit, window_s)`.

The algorithm is GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp):
`limit` requests per `window_s` on average, up to `burst` of them back to back (default: `limit`).
One Lua script reads and moves the key's "theoretical arrival time", so concurrent callers on any
process are counted exactly; the time is Redis's own clock, so skewed API hosts agree. A key that
has been quiet for a whole window expires by itself.

Used for per-device HTTP ingest; reusable for anything keyed (failed logins per address ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import redis

__all__ = ["RateDecision", "allow", "allow_many"]

# KEYS[1] the bucket; ARGV: emission interval (µs per request), tolerance (µs of burst).
# Returns {allowed 0/1, µs until the next request would be allowed, requests left in the burst}.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local wait = new_tat - tolerance - now
if wait > 0 then
  return {0, wait, 0}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, 0, math.floor((tolerance - (new_tat - now)) / interval)}
"""


@dataclass(frozen=True, slots=True)
class RateDecision:
    """The limiter's answer for one request."""

    allowed: bool
    retry_after_s: float  # 0 when allowed; else how long until a request would pass
    remaining: int  # requests still allowed right now (0 when refused)

    @property
    def retry_after_header(self) -> str:
        """`Retry-After` in whole seconds, never 0 for a refusal."""
        return str(max(1, math.ceil(self.retry_after_s)))


def _params(limit: int, window_s: float, burst: int | None) -> tuple[float, float]:
    """The script's emission interval and tolerance (µs)."""
    if limit <= 0 or window_s <= 0:
        raise ValueError("limit and window_s must be positive")
    burst = limit if burst is None else burst
    if burst < 1:
        raise ValueError("burst must be at least 1")
    interval = window_s * 1_000_000 / limit
    return interval, interval * burst


def allow(r: redis.Redis, key: str, limit: int, window_s: float, burst: int | None = None) -> RateDecision:
    """Count one request against `key`: at most `limit` per `window_s` on average, `burst` at once.

    A refused request is not counted, so a client that keeps retrying too fast is let through
    again as soon as its rate drops.
    """
    return allow_many(r, [key], limit, window_s, burst)[0]


def allow_many(r: redis.Redis, keys: list[str], limit: int, window_s: float,
               burst: int | None = None) -> list[RateDecision]:
    """`allow` for each key in turn (a key may come more than once: each counts), in one round
    trip."""
    if not keys:
        return []
    interval, tolerance = _params(limit, window_s, burst)
    pipe = r.pipeline(transaction=False)
    for key in keys:  # EVAL, not a registered script: that checks SCRIPT EXISTS first, a round trip
        pipe.eval(_GCRA, 1, key, interval, tolerance)
    return [RateDecision(bool(a), float(w) / 1_000_000, int(n)) for a, w, n in pipe.execute()]
