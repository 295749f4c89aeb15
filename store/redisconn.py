"""Every Redis client of the system, from one place: a plain URL, or the master that Redis
Sentinel names (docs/high-availability.md).

With `CCS_REDIS_SENTINELS` empty a client is `Redis.from_url(CCS_REDIS_URL)`, as it always was.
With sentinels, redis-py's own `Sentinel(...).master_for(CCS_REDIS_SENTINEL_MASTER)` builds it:
each new connection asks the sentinels where the master is now, and a connection to a master
that was demoted fails with `ConnectionError` ("The previous master is now a slave"), which
every worker already treats as a transient outage (retried; ingest/pipeline.py,
`transient_reason`). The URL still gives the database number, username, password and TLS of
the data nodes; its host and port are ignored then.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.connection import parse_url
from redis.sentinel import Sentinel

from store.settings import Settings


def sentinel_addresses(settings: Settings) -> list[tuple[str, int]]:
    """The configured sentinels as (host, port) pairs; empty: no Sentinel."""
    out = []
    for item in settings.redis_sentinels.split(","):
        item = item.strip()
        if not item:
            continue
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"CCS_REDIS_SENTINELS: {item!r} is not host:port")
        out.append((host.strip("[]"), int(port)))
    return out


def _node_options(settings: Settings, kw: dict[str, Any]) -> dict[str, Any]:
    """Connection options for the data nodes: the URL's database, credentials and TLS, the
    caller's options, and a socket timeout unless the caller chose one (a master that vanished
    from the network must not hang a worker for the kernel's TCP timeout)."""
    from_url = {k: v for k, v in parse_url(settings.redis_url).items()
                if k not in ("host", "port", "path", "connection_class")}
    if settings.redis_url.startswith("rediss://"):
        from_url["ssl"] = True
    timeouts = {"socket_timeout": settings.redis_sentinel_socket_timeout_s,
                "socket_connect_timeout": settings.redis_sentinel_socket_timeout_s}
    return {**timeouts, **from_url, **kw}


def _sentinel_options(settings: Settings) -> dict[str, Any]:
    opts: dict[str, Any] = {"socket_timeout": settings.redis_sentinel_socket_timeout_s,
                            "socket_connect_timeout": settings.redis_sentinel_socket_timeout_s}
    if settings.redis_sentinel_password:
        opts["password"] = settings.redis_sentinel_password
    return opts


def sync_client(settings: Settings, **kw: Any) -> redis.Redis:
    """A Redis client of the current master (`kw`: redis-py options such as socket_timeout,
    decode_responses, health_check_interval)."""
    sentinels = sentinel_addresses(settings)
    if not sentinels:
        return redis.Redis.from_url(settings.redis_url, **kw)
    s = Sentinel(sentinels, sentinel_kwargs=_sentinel_options(settings))
    return s.master_for(settings.redis_sentinel_master, **_node_options(settings, kw))


def async_client(settings: Settings, **kw: Any) -> aioredis.Redis:
    """The asyncio twin of `sync_client` (the API's live feed reader)."""
    sentinels = sentinel_addresses(settings)
    if not sentinels:
        return aioredis.Redis.from_url(settings.redis_url, **kw)
    s = AsyncSentinel(sentinels, sentinel_kwargs=_sentinel_options(settings))
    return s.master_for(settings.redis_sentinel_master, **_node_options(settings, kw))


__all__ = ["async_client", "sentinel_addresses", "sync_client"]
