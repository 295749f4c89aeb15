"""Time-driven work (silences, curfews, permit ends) in exactly one active process at a time.

Every alert worker runs an APScheduler; only the holder of a Redis lease executes the jobs.
The lease (SET NX PX with a random token, renewed every second, 5 s long) passes to another
worker within seconds when its holder dies. Each job is idempotent (an alert is committed with
its "done" mark, or its deadline is taken off only after the commit), so a job that a dying
leader had half done is finished by the next one and nothing fires twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import psycopg
import redis
from apscheduler.schedulers.background import BackgroundScheduler

from alerts import confirm, monthly_reports, retention, rollcalls
from alerts.checks import CurfewChecker, check_overdue_returns
from alerts.service import escalate_overdue
from alerts.silences import check_silences, ingest_busy, reseed_if_lost
from store import partitions, redisconn
from store.registry import load_profile
from store.settings import Settings

log = logging.getLogger("alerts.scheduler")

LEASE_KEY = "scheduler:leader"
LEASE_TTL_MS = 5000

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Lease:
    """Leadership through a Redis key holding this process's token."""

    def __init__(self, r: redis.Redis, prefix: str, ttl_ms: int = LEASE_TTL_MS) -> None:
        self.redis, self.key, self.ttl_ms = r, prefix + LEASE_KEY, ttl_ms
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._renew = r.register_script(_RENEW)
        self._release = r.register_script(_RELEASE)
        self._valid_until = 0.0

    def renew(self) -> bool:
        """Take or extend the lease; True while this process leads."""
        started = time.monotonic()
        try:
            ok = bool(self._renew(keys=[self.key], args=[self.token, self.ttl_ms]))
        except redis.RedisError:
            ok = False
        # Count validity from before the call, with a margin: never believe we lead too long.
        self._valid_until = started + self.ttl_ms / 1000 * 0.8 if ok else 0.0
        return ok

    def held(self) -> bool:
        """Whether this process may run jobs now."""
        return time.monotonic() < self._valid_until

    def release(self) -> None:
        """Give the lease up at once (clean shutdown)."""
        self._valid_until = 0.0
        with contextlib.suppress(redis.RedisError):  # it expires on its own anyway
            self._release(keys=[self.key], args=[self.token])


AUDIT_VERIFIED = "audit:verified"  # Redis hash: ok, at, rows, head_seq, problem


def verify_audit_chain(conn: psycopg.Connection, r: redis.Redis, settings: Settings) -> bool:
    """Recompute the audit chain and publish the outcome for monitoring; a broken chain is
    logged as an error with its first problem."""
    from store import audit

    result = audit.verify(settings.psycopg_dsn)
    first = result.problems[0].message if result.problems else ""
    r.hset(settings.redis_prefix + AUDIT_VERIFIED, mapping={
        "ok": int(result.ok), "at": time.time(), "rows": result.rows,
        "head_seq": result.last_seq, "problem": first})
    if result.ok:
        log.info("audit chain verified: %d rows, head seq %d", result.rows, result.last_seq)
    else:
        log.error("AUDIT CHAIN BROKEN: %d problem(s) in %d rows; first: %s",
                  len(result.problems), result.rows, first)
    return result.ok


class Scheduler:
    """The jobs, each on its own connection, run only by the lease holder."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = redisconn.sync_client(settings)
        self.lease = Lease(self.redis, settings.redis_prefix)
        self.aps = BackgroundScheduler(timezone="UTC", job_defaults={
            "coalesce": True, "max_instances": 1, "misfire_grace_time": 30})
        self._conns: dict[str, psycopg.Connection] = {}
        self._lock = threading.Lock()
        self.runs: dict[str, int] = {}

    def _conn(self, name: str) -> psycopg.Connection:
        with self._lock:
            c = self._conns.get(name)
            if c is None or c.closed:
                c = self._conns[name] = psycopg.connect(self.settings.psycopg_dsn, autocommit=True)
            return c

    def _guard(self, name: str, job: Callable[[psycopg.Connection], object]) -> Callable[[], None]:
        def run() -> None:
            if not self.lease.held():
                return
            try:
                job(self._conn(name))
                self.runs[name] = self.runs.get(name, 0) + 1
            except (psycopg.Error, redis.RedisError, OSError):
                log.exception("scheduled job %s failed; it runs again at its next turn", name)
                with self._lock:
                    c = self._conns.pop(name, None)
                if c is not None:
                    c.close()
        return run

    def start(self) -> None:
        """Start renewing the lease and scheduling the jobs."""
        prefix = self.settings.redis_prefix
        checker: list[CurfewChecker] = []

        def curfews(conn: psycopg.Connection) -> None:
            if not checker:
                checker.append(CurfewChecker(self.settings, conn, self.redis))
            # This run's connection: after a lost one (a failover) `_guard` opened a new one,
            # and the checker must not keep the closed one for good.
            checker[0].conn = conn
            checker[0].run()

        was_leader = [False]

        def renew() -> None:
            leads = self.lease.renew()
            if leads != was_leader[0]:
                log.info("scheduler %s %s", self.lease.token, "leads" if leads else "stands by")
                was_leader[0] = leads

        renew()
        self.aps.add_job(renew, "interval", seconds=1, id="lease")
        # Deadlines Redis lost come back from PostgreSQL before the next check reads them.
        window_s = self.settings.state_rebuild_window_s

        def silences(conn: psycopg.Connection) -> None:
            reseed_if_lost(conn, self.redis, prefix, window_s)
            check_silences(conn, self.redis, prefix,
                           max_lag_s=self.settings.ingest_watermark_max_lag_s)

        self.aps.add_job(self._guard("silences", silences), "interval", seconds=1, id="silences")
        self.aps.add_job(self._guard("curfews", curfews), "interval", seconds=10, id="curfews")
        self.aps.add_job(self._guard("overdue", check_overdue_returns), "interval", seconds=30,
                         id="overdue")

        def plan(conn: psycopg.Connection) -> None:
            rollcalls.plan_day(conn, load_profile(conn))

        def send(conn: psycopg.Connection) -> None:
            rollcalls.send_due(conn, self.redis, prefix, load_profile(conn))

        self.aps.add_job(self._guard("rollcall_plan", plan), "interval", minutes=10,
                         id="rollcall_plan", next_run_time=datetime.now(UTC))
        self.aps.add_job(self._guard("rollcall_send", send), "interval", seconds=5,
                         id="rollcall_send")
        self.aps.add_job(self._guard("rollcall_miss", rollcalls.close_missed), "interval",
                         seconds=10, id="rollcall_miss")
        self.aps.add_job(self._guard("confirm_expire",
                                     lambda c: confirm.expire(c, self.redis, prefix)),
                         "interval", seconds=10, id="confirm_expire")
        self.aps.add_job(self._guard("escalation", escalate_overdue), "interval", seconds=10,
                         id="escalation")
        # Old rows of the operational tables, a few small batches per table each run.
        self.aps.add_job(self._guard("retention", lambda c: retention.prune(c, self.settings)),
                         "interval", minutes=5, id="retention")
        def ingest_saturated() -> bool:
            return ingest_busy(self.redis, prefix, self.settings.positions_archive_yield_busy)

        # Positions: partitions ahead, late rows to their day, indexes, archive (giving way to
        # a saturated ingest) and drop.
        self.aps.add_job(self._guard("positions", lambda c: partitions.maintain(
                             c, self.settings, busy=ingest_saturated)),
                         "interval", minutes=15, id="positions", next_run_time=datetime.now(UTC))
        # Last month's compliance reports, from a few hours after it ends (Beijing time): made
        # once, stored, e-mailed once to each channel that chose them (alerts/monthly_reports.py).
        self.aps.add_job(self._guard("monthly_reports",
                                     lambda c: monthly_reports.run(c, self.settings)),
                         "interval", minutes=10, id="monthly_reports")
        # The audit log's hash chain, recomputed whole (store/audit.py); the outcome is what
        # the API's /metrics shows as ccs_audit_chain_ok (deploy/prometheus/rules.yml).
        self.aps.add_job(self._guard("audit_verify",
                                     lambda c: verify_audit_chain(c, self.redis, self.settings)),
                         "interval", seconds=self.settings.audit_verify_every_s,
                         id="audit_verify", next_run_time=datetime.now(UTC))
        self.aps.start()

    def stop(self) -> None:
        """Stop the jobs and hand the lease over at once."""
        self.aps.shutdown(wait=True)
        self.lease.release()
        for c in self._conns.values():
            c.close()
        self.redis.close()
