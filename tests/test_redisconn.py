"""One factory for every Redis client (store/redisconn.py): the URL as before, or the master
the sentinels name. The failover itself is tests/test_redis_failover.py."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelPool
from redis.sentinel import SentinelConnectionPool

from store import redisconn
from store.settings import Settings


def test_without_sentinels_a_client_is_the_url_s_with_the_caller_s_options():
    s = Settings(redis_url="redis://127.0.0.1:6390/3", redis_sentinels="")
    r = redisconn.sync_client(s, socket_timeout=2, decode_responses=True)
    kw = r.connection_pool.connection_kwargs
    assert (kw["host"], kw["port"], kw["db"]) == ("127.0.0.1", 6390, 3)
    assert kw["socket_timeout"] == 2 and kw["decode_responses"] is True
    assert "socket_connect_timeout" not in kw  # nothing added: behaviour as before
    assert not isinstance(r.connection_pool, SentinelConnectionPool)


def test_with_sentinels_a_client_follows_the_named_master_with_the_url_s_db_and_password():
    s = Settings(redis_url="redis://:s3cret@ignored-host:1/2", redis_sentinel_master="ccs-x",
                 redis_sentinels="10.0.0.1:26379, 10.0.0.2:26380,[::1]:26381",
                 redis_sentinel_password="sentinel-pw")
    assert redisconn.sentinel_addresses(s) == [("10.0.0.1", 26379), ("10.0.0.2", 26380),
                                               ("::1", 26381)]
    r = redisconn.sync_client(s, decode_responses=True, health_check_interval=15)
    pool = r.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "ccs-x"
    kw = pool.connection_kwargs
    assert kw["db"] == 2 and kw["password"] == "s3cret" and "host" not in kw
    assert kw["decode_responses"] is True and kw["health_check_interval"] == 15
    assert kw["socket_timeout"] == 5.0  # a vanished master must not hang a worker
    sentinel = pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs
    assert sentinel["password"] == "sentinel-pw" and sentinel["port"] == 26379
    # A caller's own timeout wins.
    r2 = redisconn.sync_client(s, socket_timeout=2)
    assert r2.connection_pool.connection_kwargs["socket_timeout"] == 2


def test_the_async_client_follows_the_same_settings():
    s = Settings(redis_url="redis://127.0.0.1:6379/4", redis_sentinels="127.0.0.1:26379")

    async def make() -> None:
        r = redisconn.async_client(s, socket_timeout=20)
        assert isinstance(r.connection_pool, AsyncSentinelPool)
        assert r.connection_pool.connection_kwargs["db"] == 4
        assert r.connection_pool.connection_kwargs["socket_timeout"] == 20
        await r.aclose()
    asyncio.run(make())


def test_a_sentinel_without_a_port_is_refused():
    with pytest.raises(ValueError, match="host:port"):
        redisconn.sentinel_addresses(Settings(redis_sentinels="10.0.0.1"))
