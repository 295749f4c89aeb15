"""Staff sessions in Redis: opened at login, rotated on refresh, ended on logout or disabling.

A session is `{prefix}sess:{sid}` = "staff_id:created" (Unix seconds) and lasts one shift
(`CCS_REFRESH_TOKEN_TTL_S`) from sign-in, however often it is refreshed. A staff member's
session ids are also kept in a set without expiry (dead ids are pruned at each sign-in), so
ending them all never depends on that set having outlived them.
"""

from __future__ import annotations

import time

import redis

from api.security import (
    issue_access_token,
    new_token,
    refresh_key,
    session_key,
    staff_sessions_key,
    used_refresh_key,
)
from store.settings import Settings


def open_session(r: redis.Redis, settings: Settings, staff_id: int, role: str) -> tuple[str, str, str]:
    """Start a session; returns (session id, access token, refresh token)."""
    p, ttl = settings.redis_prefix, settings.refresh_token_ttl_s
    sid = new_token()
    refresh = new_token()
    set_key = staff_sessions_key(p, staff_id)
    old = [s.decode() for s in r.smembers(set_key)]  # type: ignore[union-attr]
    pipe = r.pipeline()
    for s in old:
        pipe.exists(session_key(p, s))
    dead = [s for s, alive in zip(old, pipe.execute(), strict=True) if not alive]
    pipe = r.pipeline()
    if dead:
        pipe.srem(set_key, *dead)
    pipe.set(session_key(p, sid), f"{staff_id}:{int(time.time())}", ex=ttl)
    pipe.sadd(set_key, sid)
    pipe.set(refresh_key(p, refresh), f"{staff_id}:{sid}", ex=ttl)
    pipe.execute()
    return sid, issue_access_token(settings, staff_id, role, sid), refresh


def session_info(r: redis.Redis, settings: Settings, session_id: str) -> tuple[int, int] | None:
    """(staff id, sign-in time) of a live session, or None once it has ended."""
    v = r.get(session_key(settings.redis_prefix, session_id))
    if v is None:
        return None
    staff_id, _, created = v.decode().partition(":")  # type: ignore[union-attr]
    return int(staff_id), int(created or 0)


_ROTATE = """
local v = redis.call('GET', KEYS[1])
if not v then
    return {0, redis.call('GET', KEYS[2]) or false}
end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], v, 'EX', ARGV[1])
return {1, v}
"""


class RefreshRefused(Exception):
    """The refresh token is unknown, expired, or was used before (then its session is ended)."""


def refresh_session(r: redis.Redis, settings: Settings, refresh: str) -> tuple[int, str, str]:
    """Exchange a refresh token (single use) for (staff id, session id, new refresh token).

    A token presented a second time means two holders: the whole session is ended. The new
    refresh token lives only as long as the session has left: a shift does not slide.
    """
    p, ttl = settings.redis_prefix, settings.refresh_token_ttl_s
    ok, value = r.eval(_ROTATE, 2, refresh_key(p, refresh), used_refresh_key(p, refresh), ttl)  # type: ignore[misc]
    if not ok:
        if value:
            staff_id, _, sid = value.decode().partition(":")
            end_session(r, settings, int(staff_id), sid)
            raise RefreshRefused("refresh token already used: the session is ended")
        raise RefreshRefused("refresh token is invalid or expired")
    staff_id_s, _, sid = value.decode().partition(":")
    staff_id = int(staff_id_s)
    info = session_info(r, settings, sid)
    if info is None or info[0] != staff_id:
        raise RefreshRefused("the session has ended")
    left = info[1] + ttl - int(time.time())
    if left <= 0:
        end_session(r, settings, staff_id, sid)
        raise RefreshRefused("the session has ended (sign in again)")
    new_refresh = new_token()
    r.set(refresh_key(p, new_refresh), f"{staff_id}:{sid}", ex=left)
    return staff_id, sid, new_refresh


def end_session(r: redis.Redis, settings: Settings, staff_id: int, session_id: str) -> None:
    """End one session: its access tokens stop working on their next use."""
    p = settings.redis_prefix
    r.delete(session_key(p, session_id))
    r.srem(staff_sessions_key(p, staff_id), session_id)


def end_all_sessions(r: redis.Redis, settings: Settings, staff_id: int) -> int:
    """End every session of a staff member (account disabled, role or password changed)."""
    p = settings.redis_prefix
    sids = [s.decode() for s in r.smembers(staff_sessions_key(p, staff_id))]  # type: ignore[union-attr]
    if sids:
        r.delete(*[session_key(p, s) for s in sids])
    r.delete(staff_sessions_key(p, staff_id))
    return len(sids)
