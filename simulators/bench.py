"""Sustained-load benchmark of the ingest pipeline: `python -m simulators.bench [--quick]`.

Builds a fresh database `ccs_bench` (migrations, demo seed, simulated fleet), clears the Redis
prefix `ccs-bench:`, starts the ingest worker and the alert worker as subprocesses, publishes
at a target aggregate rate from several publisher processes, waits for the pipeline to drain
and prints what got through and how fast. Everything talks to 127.0.0.1 only.

Definitions (fix time = the wall-clock time of its publish):
  committed rate  stored positions / (first publish -> the moment every published fix was
                  seen stored, polled every 0.25 s): the headline, with the backlog when
                  publishing ended beside it
  receive rate    stored positions / (last received_at - first received_at): how fast the
                  workers took messages off the broker, not how fast they committed them
  lost fixes      published (PUBACKed) fixes with no positions row, matched by (device, time)
  receive latency positions.received_at - fix time (publish -> the worker's MQTT callback;
                  it does not include the wait in the worker's queue nor the commit)
  commit latency  publish -> committed and the device state saved, sampled on ~32 devices
  alert latency   fix time of the fix that opened/updated an alert -> the bench reading the
                  alert from the Redis feed stream (XREAD, blocking, in a thread)
  delivery latency fix time of the fix that opened an alert -> the notification arriving at
                  the bench's own webhook receiver (HTTP) and SMTP server (aiosmtpd), sent by
                  the delivery worker to every office officer (one webhook and one e-mail
                  channel each)
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import multiprocessing as mp
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import numpy as np
import orjson
import paho.mqtt.client as mqtt
import psycopg
import redis
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sqlalchemy.engine import make_url

from simulators.fleet import device_id
from store.backup import free_port

ROOT = Path(__file__).resolve().parents[1]
BENCH_DB = "ccs_bench"
BENCH_PREFIX = "ccs-bench:"
INGEST_CLIENT_ID = "ccs-bench-ingest"
INGEST_WORKER_ID = "1"  # the worker's session: INGEST_CLIENT_ID-INGEST_WORKER_ID
BENCH_TOPIC_PREFIX = "ccs-bench/"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
PROBE_DEVICE = "bench-probe"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# ------------------------------------------------------------------------------------------
# Options and settings
# ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m simulators.bench",
                                description="Sustained-load benchmark of the ingest pipeline")
    p.add_argument("--rate", type=float, help="offered reports/s in total (default 5000)")
    p.add_argument("--duration", type=float, help="seconds of publishing (default 60)")
    p.add_argument("--phones", type=int,
                   help="simulated phones (default: = rate, i.e. one report per phone per s)")
    p.add_argument("--publishers", type=int, default=2, help="publisher processes (default 2)")
    p.add_argument("--ingest-workers", type=int, default=1,
                   help="MQTT ingest workers, each its partition of the devices (default 1)")
    p.add_argument("--wander", type=float, default=0.1,
                   help="share of phones that leave their district (default 0.1)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--profile-s", type=float, default=20.0,
                   help="py-spy the workers and a publisher for this long in the middle of the "
                        "run (default 20; 0: no profile)")
    p.add_argument("--publisher", choices=("prebuilt", "raw", "paho"), default="prebuilt",
                   help="load generator: every packet encoded before the run and sent on raw "
                        "sockets (default), encoded as it goes on raw sockets "
                        "(simulators/rawmqtt.py), or paho-mqtt")
    p.add_argument("--payload", choices=("native", "owntracks"), default="native",
                   help="what the phones send: the native JSON on devices/<id>/location "
                        "(default), or OwnTracks' location JSON on owntracks/bench/<id> as its "
                        "apps publish it (WGS-84, whole seconds, every other phone the older "
                        "iOS app's -1 for what it lacks; prebuilt publisher)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 500 reports/s for 30 s (long enough to decide the wanderers)")
    p.add_argument("--drain-timeout", type=float, default=120.0,
                   help="max seconds to wait for the pipeline to catch up (default 120)")
    p.add_argument("--maintenance", action="store_true",
                   help="while publishing, retire old days back to back as the scheduler's "
                        "positions maintenance does (archive at CCS_POSITIONS_ARCHIVE_ROWS_PER_S, "
                        "verify, detach, drop; a partition made ahead each time): 200,000 rows "
                        "a day, prepared before the load starts")
    p.add_argument("--keep", action="store_true",
                   help="also leave the Redis keys (the ccs_bench database is always left "
                        "for inspection; the next run drops it)")
    a = p.parse_args(argv)
    a.rate = a.rate or (500.0 if a.quick else 5000.0)
    a.duration = a.duration or (30.0 if a.quick else 60.0)
    a.phones = a.phones or max(1, round(a.rate))
    a.interval = a.phones / a.rate
    if a.interval <= 0.001 or a.duration <= 0 or a.publishers < 1:
        p.error("need phones/rate > 1 ms, duration > 0 and at least one publisher")
    if a.payload != "native" and a.publisher != "prebuilt":
        p.error("--payload owntracks needs the prebuilt publisher")
    if a.payload == "owntracks" and a.interval < 1.0:
        p.error("--payload owntracks: OwnTracks states whole seconds, so each phone may report "
                "at most once a second (phones >= rate)")
    return a


@dataclass(frozen=True)
class BenchEnv:
    """Where the bench's services are."""

    admin_dsn: str
    dsn: str  # psycopg DSN of ccs_bench
    url: str  # SQLAlchemy URL of ccs_bench
    redis_url: str
    mqtt_host: str
    mqtt_port: int
    mqtt_username: str | None
    mqtt_password: str | None
    topic_prefix: str  # the bench's own MQTT namespace, when the workers support one


def bench_env() -> BenchEnv:
    """The bench's URLs, derived from the CCS_* settings; refuses anything not on loopback."""
    from store.settings import Settings

    s = Settings()
    base = make_url(s.database_url)
    hosts = {"database": base.host or "", "redis": make_url(s.redis_url).host or "",
             "mqtt": s.mqtt_host}
    for name, host in hosts.items():
        if host not in LOOPBACK:
            raise SystemExit(f"the bench only talks to 127.0.0.1; {name} host is {host!r}")
    url = base.set(database=BENCH_DB).render_as_string(hide_password=False)
    admin = base.set(database="postgres", drivername="postgresql")
    return BenchEnv(
        admin_dsn=admin.render_as_string(hide_password=False),
        dsn=url.replace("postgresql+psycopg://", "postgresql://", 1), url=url,
        redis_url=s.redis_url, mqtt_host=s.mqtt_host, mqtt_port=s.mqtt_port,
        mqtt_username=s.mqtt_username, mqtt_password=s.mqtt_password,
        # Its own topic namespace keeps the bench's traffic away from any other ingest worker
        # (and from their persistent sessions) on the same broker.
        topic_prefix=BENCH_TOPIC_PREFIX if "mqtt_topic_prefix" in Settings.model_fields else "",
    )


# ------------------------------------------------------------------------------------------
# Machine facts and CPU accounting
# ------------------------------------------------------------------------------------------


def machine_facts() -> list[tuple[str, str]]:
    """nproc, memory, CPU model, kernel and service versions."""
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return [
        ("CPUs (nproc)", str(os.cpu_count())),
        ("CPU model", cpu),
        ("memory", mem),
        ("kernel", platform.release()),
        ("python", platform.python_version()),
        ("CPU speed", f"a pure-Python loop of 10 million additions took {_calibrate():.2f} s "
                      "(compare runs by it: this machine's speed varies)"),
    ]


def _calibrate() -> float:
    """Seconds for a fixed pure-Python loop, best of three (a cheap speed reference)."""
    best = float("inf")
    for _ in range(3):
        t, acc = time.perf_counter(), 0
        for i in range(10_000_000):
            acc += i
        best = min(best, time.perf_counter() - t)
    return best


_TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) used so far by a process."""
    t = _proc_times(pid)
    return None if t is None else t[0]


def _proc_times(pid: int) -> tuple[float, float] | None:
    """CPU seconds (user + system) of a process so far, and of its children it has reaped (a
    PostgreSQL server's parallel and autovacuum workers end up in the postmaster's)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return ((int(fields[11]) + int(fields[12])) / _TICK,
            (int(fields[13]) + int(fields[14])) / _TICK)


def _machine_busy() -> float:
    """CPU seconds the whole machine has spent busy so far (all cores; /proc/stat, everything
    but idle and I/O wait)."""
    parts = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(x) for x in parts[:8]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / _TICK


def _pids_named(name: str) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip() == name:
                    out.append(int(d.name))
            except OSError:
                continue
    return out


def _other_ingest_workers() -> list[int]:
    """Pids of `python -m ingest` processes already running (not started by this bench)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"-m" in argv and (b"ingest" in argv or b"ingest.mqtt_worker" in argv):
            out.append(int(d.name))
    return out


class CpuMeter:
    """CPU seconds of named process groups between `start()` and `stop()`, and of the machine.

    A process that starts in between counts from zero. In a group named by process name, one
    that ends in between counts through its parent's reaped-children time (the postmaster for
    PostgreSQL's parallel and autovacuum workers), less what it had used before `start()`; a
    group of given pids counts only them (the bench's own reaped children are publishers and
    workers, listed on their own).
    """

    def __init__(self, groups: dict[str, list[int] | str]) -> None:
        self.groups = groups  # label -> pids, or a process name (comm) looked up each time
        self.t0: dict[str, dict[int, tuple[float, float]]] = {}
        self.used: dict[str, float] = {}
        self.wall = 0.0
        self.machine = 0.0  # CPU seconds the machine was busy (all cores)
        self._w0 = 0.0
        self._m0 = 0.0

    def _read(self) -> dict[str, dict[int, tuple[float, float]]]:
        out = {}
        for label, who in self.groups.items():
            pids = _pids_named(who) if isinstance(who, str) else who
            out[label] = {p: v for p in pids if (v := _proc_times(p)) is not None}
        return out

    def start(self) -> None:
        """Take the first reading."""
        self.t0, self._w0, self._m0 = self._read(), time.monotonic(), _machine_busy()

    def stop(self) -> None:
        """Take the second reading."""
        t1 = self._read()
        self.wall = time.monotonic() - self._w0
        self.machine = _machine_busy() - self._m0
        self.used = {}
        for label, now in t1.items():
            before = self.t0.get(label, {})
            own = sum(v[0] - before.get(p, (0.0, 0.0))[0] for p, v in now.items())
            if not isinstance(self.groups[label], str):
                self.used[label] = own
                continue
            reaped = sum(v[1] - before[p][1] for p, v in now.items() if p in before)
            gone = sum(v[0] for p, v in before.items() if p not in now)
            self.used[label] = own + max(0.0, reaped - gone)


# ------------------------------------------------------------------------------------------
# Setup
# ------------------------------------------------------------------------------------------


def recreate_database(env: BenchEnv) -> None:
    """Drop and create ccs_bench with PostGIS, point the settings at it and migrate."""
    from store.db import migrate, reset_engine
    from store.settings import Settings, set_settings

    with psycopg.connect(env.admin_dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {BENCH_DB}")
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
    set_settings(Settings(database_url=env.url, redis_prefix=BENCH_PREFIX))
    reset_engine()
    migrate(env.url)


def fresh_database(env: BenchEnv, phones: int, hook_url: str) -> None:
    """Drop and create ccs_bench, migrate, seed the demo organisation and the fleet."""
    from simulators.fleet import provision_fleet
    from store.db import reset_engine, session_factory
    from store.demo import seed_demo

    recreate_database(env)
    with session_factory()() as session:
        seed_demo(session, supervisees_per_office=0)
        session.commit()
        provision_fleet(session, phones)  # fresh Redis prefix: no workers to tell yet
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        # Planner statistics on the enrolled fleet, as a database in service has them
        # (autovacuum would take them within a minute of the enrolment, in the middle of the
        # measured run). Not the empty positions tables: planned as empty, the probe's look-ups
        # scan them whole for the minute until autovacuum sees them full.
        conn.execute("ANALYZE devices, supervisees, supervisee_zones, zones")
        # Phones report every second here, not every minute: the profile's time spans are
        # compressed to match, so that exits are decided within the run (3 fixes over 2 s,
        # the canyon guard 6 over 5 s), and no random roll-calls or silences get in the way.
        body = bench_profile().to_dict()
        conn.execute("INSERT INTO rule_profiles (name, version, body, active) "
                     "VALUES (%s, %s, %s, true)",
                     (body["name"], body["version"], orjson.dumps(body).decode()))
        # Every office's staff hear of their alerts by webhook and by e-mail.
        from alerts.delivery import new_webhook_secret

        conn.execute("""INSERT INTO webhook_endpoints (org_unit_id, name, url, secret)
                        SELECT id, 'bench receiver', %s, %s FROM org_units
                         WHERE parent_id IS NULL""", (hook_url, new_webhook_secret()))
        conn.execute("""INSERT INTO staff_channels (staff_id, channel, address, webhook_id)
                        SELECT s.id, 'webhook', s.username, w.id
                          FROM staff s JOIN org_units u ON u.id = s.org_unit_id
                         CROSS JOIN webhook_endpoints w WHERE u.kind = 'judicial_office'""")
        conn.execute("""INSERT INTO staff_channels (staff_id, channel, address)
                        SELECT s.id, 'email', s.username || '@bench.example'
                          FROM staff s JOIN org_units u ON u.id = s.org_unit_id
                         WHERE u.kind = 'judicial_office'""")
    reset_engine()


def bench_profile() -> Any:
    """The national default with every time span divided by 60 (fixes every second)."""
    from dataclasses import replace

    from geofence.profile import DEFAULT_PROFILE

    levels = {k: replace(v, exit_span_s=v.exit_span_s / 60, return_span_s=v.return_span_s / 60,
                         exclusion_span_s=v.exclusion_span_s / 60,
                         shallow_span_s=v.shallow_span_s / 60, repeat_s=v.repeat_s / 60,
                         still_window_s=v.still_window_s / 60,
                         confirm_retry_s=v.confirm_retry_s / 60,
                         confirm_window_s=v.confirm_window_s / 60,
                         follow_up_s=v.follow_up_s / 60, follow_up_until_s=v.follow_up_until_s / 60)
              for k, v in DEFAULT_PROFILE.levels.items()}
    checkin = replace(DEFAULT_PROFILE.checkin, rollcalls_strict=0, rollcalls_normal=0,
                      rollcalls_lenient=0)
    return replace(DEFAULT_PROFILE, name="bench-1s", levels=levels, checkin=checkin)


def clear_redis(env: BenchEnv) -> None:
    """Delete every key under the bench prefix."""
    r = redis.Redis.from_url(env.redis_url)
    keys = list(r.scan_iter(match=BENCH_PREFIX + "*", count=1000))
    for k in range(0, len(keys), 1000):
        r.delete(*keys[k:k + 1000])
    r.close()


def ingest_client_ids(n: int) -> list[str]:
    """The MQTT client ids of the bench's n ingest workers (CCS_INGEST_WORKER_ID 1-k)."""
    return [f"{INGEST_CLIENT_ID}-{INGEST_WORKER_ID}-{k}" for k in range(n)]


def clear_mqtt_session(env: BenchEnv, client_id: str) -> None:
    """End any persistent session (and its queued messages) of `client_id` at the broker."""
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                    protocol=mqtt.MQTTv5)
    if env.mqtt_username:
        c.username_pw_set(env.mqtt_username, env.mqtt_password)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    done = threading.Event()
    c.on_connect = lambda *a: done.set()
    c.connect(env.mqtt_host, env.mqtt_port, clean_start=True, properties=props)
    c.loop_start()
    done.wait(5)
    c.disconnect()
    c.loop_stop()


def _die_with_parent() -> None:
    # Linux: SIGTERM the worker if the bench itself is killed, so nothing is left running.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Worker:
    """A worker subprocess and its log."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, n: int = 5) -> str:
        """Last lines of its log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def start_worker(name: str, module: str, env: BenchEnv, logdir: Path,
                 extra: dict[str, str] | None = None) -> Worker:
    """`python -m module` with the bench's settings, logging to logdir/name.log."""
    child_env = dict(os.environ)
    child_env.update({
        "CCS_DATABASE_URL": env.url,
        "CCS_REDIS_URL": env.redis_url,
        "CCS_REDIS_PREFIX": BENCH_PREFIX,
        "CCS_MQTT_HOST": env.mqtt_host,
        "CCS_MQTT_PORT": str(env.mqtt_port),
        "CCS_MQTT_CLIENT_ID": INGEST_CLIENT_ID,
        "CCS_INGEST_WORKER_ID": INGEST_WORKER_ID,
        "CCS_MQTT_TOPIC_PREFIX": env.topic_prefix,
        "PYTHONUNBUFFERED": "1",
        **(extra or {}),
    })
    log = logdir / f"{name}.log"
    fh = log.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", module], cwd=ROOT, env=child_env, stdout=fh,
        stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent,
    )
    fh.close()
    return Worker(name, proc, log)


def stop_workers(workers: list[Worker], timeout: float = 20.0) -> None:
    """SIGTERM each worker (they finish their batch), then SIGKILL what is left."""
    for w in workers:
        if w.proc.poll() is None:
            w.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for w in workers:
        try:
            w.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"  {w.name} did not stop in {timeout:.0f} s: killing it", file=sys.stderr)
            w.proc.kill()
            w.proc.wait(5)


def stop_helpers(stop: Any, procs: list[Any], threads: list[Any]) -> None:
    """Signal the publisher processes to stop and wait for them; stop the reader threads."""
    stop.set()
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.terminate()
            p.join(5)
    for th in threads:
        if th is not None:
            th.stopping.set()
            th.join(timeout=5)


def wait_logged(worker: Worker, text: str, timeout: float = 60.0) -> None:
    """Until the worker's log has a line with `text`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.proc.poll() is not None:
            raise RuntimeError(f"{worker.log.name} exited:\n{worker.log_tail(20)}")
        with contextlib.suppress(OSError):
            if text in worker.log.read_text(errors="replace"):
                return
        time.sleep(0.1)
    raise RuntimeError(f"no {text!r} in {worker.log} after {timeout:.0f} s")


def wait_ingest_ready(env: BenchEnv, ingest: Worker, timeout: float = 60.0) -> None:
    """Publish a probe from an unknown device until its dead letter shows up in the database."""
    from simulators.publisher import MqttTarget, connect

    client = connect(MqttTarget(env.mqtt_host, env.mqtt_port, "ccs-bench-probe",
                                env.mqtt_username, env.mqtt_password, env.topic_prefix))
    deadline = time.monotonic() + timeout
    try:
        with psycopg.connect(env.dsn, autocommit=True) as conn:
            while time.monotonic() < deadline:
                if ingest.proc.poll() is not None:
                    raise RuntimeError(f"ingest worker exited:\n{ingest.log_tail(20)}")
                payload = orjson.dumps({"time": time.time(), "lat": 30.6, "lon": 114.3})
                client.publish(f"{env.topic_prefix}devices/{PROBE_DEVICE}/location", payload,
                               qos=1)
                for _ in range(10):
                    time.sleep(0.2)
                    if conn.execute("SELECT 1 FROM dead_letters WHERE device_id = %s",
                                    (PROBE_DEVICE,)).fetchone():
                        return
        raise RuntimeError(f"ingest worker not ready after {timeout:.0f} s:\n{ingest.log_tail(20)}")
    finally:
        client.disconnect()
        client.loop_stop()


# ------------------------------------------------------------------------------------------
# Alert feed reader and notification receivers
# ------------------------------------------------------------------------------------------


class Receivers:
    """A webhook endpoint and an SMTP server on loopback; record when each notification came."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from aiosmtpd.controller import Controller

        self.arrivals: list[tuple[float, str, str]] = []  # (time, channel, idempotency key)
        arrivals = self.arrivals

        class Hook(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a production receiver would

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                self.rfile.read(int(self.headers.get("content-length", 0)))
                arrivals.append((time.time(), "webhook", self.headers.get("webhook-id", "")))
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        class Mail:
            async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:  # noqa: N802
                t = time.time()
                key = next((ln.split(b":", 1)[1].strip().decode() for ln in
                            envelope.content.splitlines()
                            if ln.lower().startswith(b"x-ccs-idempotency-key:")), "")
                arrivals.append((t, "email", key))
                return "250 OK"

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
        self.http.daemon_threads = True
        threading.Thread(target=self.http.serve_forever, name="bench-webhook", daemon=True).start()
        self.smtp_port = free_port()
        self.smtp = Controller(Mail(), hostname="127.0.0.1", port=self.smtp_port)
        self.smtp.start()

    @property
    def hook_url(self) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}/bench-hook"

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()
        self.smtp.stop()


class FeedReader(threading.Thread):
    """Reads the alert feed stream with blocking XREAD; records when each entry arrived.

    retry: keep reading through a Redis outage (the fault-injection run restarts Redis).
    """

    def __init__(self, r: redis.Redis, key: str, retry: bool = False) -> None:
        super().__init__(name="feed-reader", daemon=True)
        self.r = r
        self.key = key
        self.retry = retry
        self.entries: list[tuple[float, dict[bytes, bytes]]] = []
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        last = "0-0"
        try:
            while not self.stopping.is_set():
                try:
                    resp: Any = self.r.xread({self.key: last}, count=1000, block=200)
                except (redis.ConnectionError, redis.TimeoutError):
                    if not self.retry:
                        raise
                    self.stopping.wait(0.1)
                    continue
                now = time.time()
                for _key, items in resp or []:
                    for entry_id, fields in items:
                        self.entries.append((now, fields))
                        last = entry_id
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            self.error = e
        finally:
            self.r.close()


class CommitProbe(threading.Thread):
    """Samples when fixes are through the pipeline: publish -> committed latency.

    The pipeline saves each device's engine state (`store.state.StateStore`: the value starts
    with its newest fix time) right after the batch's commit. Every `period_s` the probe reads it
    for a few devices (one pipelined round trip, far cheaper than asking PostgreSQL); when a
    device's newest fix changes, now - fix time is one sample (resolution: the period).
    """

    def __init__(self, redis_url: str, devices: list[str], period_s: float = 0.02) -> None:
        super().__init__(name="commit-probe", daemon=True)
        self.redis_url, self.devices, self.period_s = redis_url, devices, period_s
        self.samples: list[float] = []
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        last: dict[str, float] = {}
        r = redis.Redis.from_url(self.redis_url)
        from store.state import StateStore

        keys = [StateStore(r, BENCH_PREFIX).key(d) for d in self.devices]
        try:
            while not self.stopping.wait(self.period_s):
                values: list[Any] = cast(Any, r.mget(keys))
                now = time.time()
                for dev, raw in zip(self.devices, values, strict=True):
                    if raw is None:
                        continue
                    t = float(raw.split(b" ", 1)[0])
                    if t > last.get(dev, 0.0):
                        if dev in last:  # the first sight may be long after the commit
                            self.samples.append(now - t)
                        last[dev] = t
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            self.error = e
        finally:
            r.close()


# ------------------------------------------------------------------------------------------
# Publisher processes
# ------------------------------------------------------------------------------------------


@dataclass
class PubShared:
    """Shared counters and signals between the bench and one publisher process."""

    sent: Any
    acked: Any
    out: Any
    wanderers: Any


def _publisher_main(
    k: int, n_procs: int, args: dict[str, Any], env: BenchEnv, shared: PubShared,
    ready: Any, go: Any, t0: Any, stop: Any, out_path: str,
) -> None:
    """One publisher process: build its share of the fleet, then publish in real time.

    args["silent"] (optional): {phone: seconds after the start} when that phone stops reporting.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the bench decides when to stop
    from simulators.phone import PhoneFleet, districts_from_geojson
    from simulators.publisher import MqttTarget, publish_fleet
    from store.demo import load_regions

    phones = np.arange(k, args["phones"], n_procs)
    districts = districts_from_geojson(load_regions())
    # args["wander_over"] (optional): spread departures over longer than the bench's run.
    cfg = bench_phone_config(args["wander"], args.get("wander_over", args["duration"]))
    # Phones are built for start time 0 and shifted once t0 is known (it is set after all
    # publishers are ready, so the start is simultaneous).
    fleet = PhoneFleet(districts, args["phones"], args["seed"], cfg, 0.0, phones)
    shared.wanderers.value = int(fleet.wanderer.sum())
    kind = args.get("publisher", "paho")  # chaos: paho, which reconnects
    after = np.full(fleet.n, np.inf)  # seconds after the start when each phone falls silent
    for phone, after_s in (args.get("silent") or {}).items():
        if phone % n_procs == k:
            after[fleet.local_index([phone])] = after_s
    pre = None
    if kind == "prebuilt":  # the whole run encoded now, in virtual time from 0 (rawmqtt.py)
        from simulators.rawmqtt import prebuild
        pre = prebuild(fleet, args["phones"], args["interval"], args["duration"],
                       env.topic_prefix, after, args.get("payload", "native"))
    ready.release()
    go.wait()
    start = t0.value
    fleet.rebase(start)

    def progress(sent: int, acked: int, out: int) -> None:
        shared.sent.value, shared.acked.value, shared.out.value = sent, acked, out

    target = MqttTarget(env.mqtt_host, env.mqtt_port, f"ccs-bench-pub-{k}", env.mqtt_username,
                        env.mqtt_password, env.topic_prefix)
    silent_at = start + after
    cpu0 = time.process_time()
    if pre is not None:
        from simulators.rawmqtt import publish_prebuilt
        log = publish_prebuilt(pre, fleet.phone, start, start + args["duration"], target,
                               progress, stop, ack_wait_s=args["ack_wait"])
    elif kind == "raw":  # hand-encoded packets on raw sockets (simulators/rawmqtt.py)
        from simulators.rawmqtt import publish_fleet_raw
        log = publish_fleet_raw(fleet, args["phones"], args["interval"], start,
                                start + args["duration"], target, progress, stop,
                                ack_wait_s=args["ack_wait"], silent_at=silent_at)
    else:  # paho: reconnects after a broker restart (the fault-injection run)
        log = publish_fleet(fleet, args["phones"], args["interval"], start,
                            start + args["duration"], target, progress, stop,
                            ack_wait_s=args["ack_wait"], silent_at=silent_at)
    np.savez(out_path, phone=log.phone, time_ms=log.time_ms, acked=log.acked_mask,
             meta=np.array([log.acked, log.started, log.finished, time.process_time() - cpu0]))


def bench_phone_config(wander: float, duration: float) -> Any:
    """Phone model tuned so wanderers leave within the run: they start near the border."""
    from simulators.phone import PhoneConfig

    return PhoneConfig(
        wander_share=wander,
        gcj02_share=0.3,
        wander_depart_s=(1.0, max(1.5, 0.25 * duration)),
        wander_lead_m=(10.0, 100.0),
        wander_speed_ms=(10.0, 20.0),
    )


# ------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------


def _pct(a: np.ndarray, q: float) -> float:
    return float(np.percentile(a, q)) if a.size else float("nan")


def _ms(seconds: float) -> str:
    return "n/a" if seconds != seconds else f"{seconds * 1000:,.0f} ms"


def _iso_to_ms(iso: str) -> int:
    return round((datetime.fromisoformat(iso) - EPOCH) / timedelta(microseconds=1) / 1000)


@dataclass
class Results:
    """Everything measured, for the table."""

    rows: list[tuple[str, str]] = field(default_factory=list)
    ok: bool = True

    def add(self, name: str, value: str) -> None:
        """One table row."""
        self.rows.append((name, value))


def run(args: argparse.Namespace) -> int:
    """The whole bench; returns the exit status (1 if fixes were lost)."""
    env = bench_env()
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    print(f"CCS ingest bench, {stamp}")
    for fact, value in machine_facts():
        print(f"  {fact:14} {value}")
    print(f"  {'plan':14} {args.phones} phones x 1 report / {args.interval:g} s = "
          f"{args.rate:,.0f} reports/s for {args.duration:g} s, {args.publishers} publisher "
          f"process(es), wander {args.wander:g}, seed {args.seed}")
    print(f"  {'MQTT topics':14} {env.topic_prefix or '(no prefix)'}"
          + ("owntracks/bench/+ (OwnTracks location JSON; every latency below counts from the "
             "whole second the app states, 0-1 s before the report leaves)"
             if args.payload == "owntracks" else "devices/+/location (native JSON)"))
    others = _other_ingest_workers()
    if others and not env.topic_prefix:
        print(f"  WARNING: other ingest workers are running (pids {others}); every ingest worker "
              "subscribes to devices/+/location, so they will receive (and dead-letter) the "
              "bench's traffic and share the CPU")
    logdir = ROOT / ".run" / "bench"
    logdir.mkdir(parents=True, exist_ok=True)

    t = time.monotonic()
    print("setup: fresh database ccs_bench, Redis prefix ccs-bench:, fleet ...", flush=True)
    clear_redis(env)
    receivers = Receivers()
    fresh_database(env, args.phones, receivers.hook_url)
    print(f"setup done in {time.monotonic() - t:.1f} s; starting workers (logs in {logdir})",
          flush=True)

    workers: list[Worker] = []
    procs: list[Any] = []
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    reader: FeedReader | None = None
    probe: CommitProbe | None = None
    maintenance: Any = None
    try:
        n_ingest = args.ingest_workers
        # A run starts from empty broker sessions: what an earlier run (perhaps interrupted, or
        # with another number of workers) left queued for these client ids is not this run's.
        for cid in ingest_client_ids(n_ingest):
            clear_mqtt_session(env, cid)
        ingests = [start_worker(f"ingest-{k}" if n_ingest > 1 else "ingest", "ingest", env,
                                logdir, {"CCS_INGEST_WORKERS": str(n_ingest),
                                         "CCS_INGEST_WORKER_INDEX": str(k),
                                         "CCS_INGEST_WORKER_ID": f"{INGEST_WORKER_ID}-{k}"})
                   for k in range(n_ingest)]
        ingest = ingests[0]
        alerts = start_worker("alerts", "alerts", env, logdir)
        delivery = start_worker("delivery", "alerts.delivery", env, logdir, {
            "CCS_SMTP_HOST": "127.0.0.1", "CCS_SMTP_PORT": str(receivers.smtp_port),
            "CCS_WEBHOOK_ALLOW_PRIVATE": "true"})  # the bench's receiver is on loopback
        workers = [*ingests, alerts, delivery]
        for w in ingests:  # each worker's session subscribed before anything is published
            wait_logged(w, "MQTT subscribed")
        wait_ingest_ready(env, ingest)
        reader = FeedReader(redis.Redis.from_url(env.redis_url), BENCH_PREFIX + "feed")
        reader.start()
        step = max(1, args.phones // 32)
        probe = CommitProbe(env.redis_url, [device_id(i) for i in range(0, args.phones, step)])
        probe.start()

        # Publishers: build fleets in parallel, then start together.
        ready = ctx.Semaphore(0)
        go = ctx.Event()
        t0 = ctx.Value("d", 0.0)
        shared = [PubShared(*(ctx.Value("q", 0) for _ in range(4)))
                  for _ in range(args.publishers)]
        outs = [str(logdir / f"published-{k}.npz") for k in range(args.publishers)]
        for o in outs:
            Path(o).unlink(missing_ok=True)
        pargs = {"phones": args.phones, "interval": args.interval, "duration": args.duration,
                 "wander": args.wander, "seed": args.seed, "ack_wait": args.drain_timeout,
                 "publisher": args.publisher, "payload": args.payload}
        for k in range(args.publishers):
            p = ctx.Process(target=_publisher_main, name=f"publisher-{k}",
                            args=(k, args.publishers, pargs, env, shared[k], ready, go, t0,
                                  stop, outs[k]))
            p.start()
            procs.append(p)
        for _ in procs:
            if not ready.acquire(timeout=120):
                raise RuntimeError("a publisher process did not get ready")
        n_wanderers = sum(s.wanderers.value for s in shared)

        cpu = CpuMeter({
            f"ingest worker{'s' if n_ingest > 1 else ''}": [w.proc.pid for w in ingests],
            "alert worker": [alerts.proc.pid],
            "delivery worker": [delivery.proc.pid],
            "mosquitto": "mosquitto",
            "postgres (all)": "postgres",
            "redis": "redis-server",
            "bench (this)": [os.getpid()],
        })
        mem_before = _memory(env, ingests)
        if args.maintenance:
            from simulators.hotpath import Maintenance
            from store.settings import Settings

            print("setup: old days to retire during the load ...", flush=True)
            maintenance = Maintenance(
                env.dsn, Settings(database_url=env.url, redis_url=env.redis_url,
                                  redis_prefix=BENCH_PREFIX),
                days=max(6, int(args.duration // 8) + 2))
            maintenance.__enter__()
            cpu.groups["maintenance"] = [cast(int, maintenance.proc.pid)]
        t0.value = time.time() + 0.5
        go.set()
        cpu.start()
        profiler = None
        if args.profile_s > 0 and not args.quick:
            from simulators.profile import Profiler
            length = min(args.profile_s, args.duration * 0.5)
            pids = {w.name: w.proc.pid for w in [*ingests, alerts, delivery]}
            pids["publisher-0"] = procs[0].pid
            profiler = Profiler(pids, t0.value + (args.duration - length) / 2, length, logdir)
            profiler.start()
        publish_end = t0.value + args.duration
        marks: dict[str, float] = {}
        _progress_loop(args, env, shared, reader, t0.value, publish_end, procs, workers, marks)
        for p in procs:
            p.join(timeout=60)
        cpu.stop()
        if maintenance is not None:
            maintenance.__exit__()
            print(f"maintenance while publishing: {maintenance.done}", flush=True)
        failed = [p.name for p in procs if p.exitcode != 0]
        if failed:
            raise RuntimeError(f"publisher process(es) failed: {failed}")

        logs = [np.load(o) for o in outs]
        pub_phone = np.concatenate([g["phone"] for g in logs])
        pub_ms = np.concatenate([g["time_ms"] for g in logs])
        acked = int(sum(g["meta"][0] for g in logs))
        cpu.used["publishers (self-reported)"] = float(sum(g["meta"][3] for g in logs))

        drain_s = _drain(env, pub_phone.size, reader, receivers, args.drain_timeout, workers,
                         marks)
        probe.stopping.set()
        probe.join(timeout=5)
        res = _measure(env, args, pub_phone, pub_ms, acked, reader, receivers, probe,
                       n_wanderers, sum(s.out.value for s in shared), drain_s, cpu, marks)
        if maintenance is not None:
            d = maintenance.done
            res.add("maintenance while publishing",
                    f"{d['archived and dropped']} day(s) of 200,000 rows archived (paced "
                    f"{maintenance.settings.positions_archive_rows_per_s:,} rows/s), verified, "
                    f"detached and dropped; {d['made ahead']} partition(s) made ahead; "
                    f"{d['lock waits']} lock wait(s); archive paused {d['seconds given way to ingest']} s "
                    "while an ingest worker was saturated")
        mem_after = _memory(env, ingests)
        redis_b = mem_after["redis"] - mem_before["redis"]
        rss = [mem_after[w.name] for w in ingests]
        rss_b = sum(mem_after[w.name] - mem_before[w.name] for w in ingests)
        res.add("memory per device (after the run)",
                f"Redis {redis_b / args.phones:,.0f} B ({redis_b / 2**20:,.1f} MiB for "
                f"{args.phones:,} phones, used_memory growth); ingest worker"
                f"{'s' if len(ingests) > 1 else ''} {rss_b / args.phones:,.0f} B (RSS growth; RSS "
                f"now {', '.join(f'{v / 2**20:,.0f} MiB' for v in rss)})")
        if profiler is not None:
            profiler.join(timeout=120)
            _add_profiles(res, profiler)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping publishers and workers", file=sys.stderr)
        return 130
    finally:
        stop_helpers(stop, procs, [reader, probe])
        if maintenance is not None and maintenance.proc.is_alive():
            maintenance.__exit__()
        stop_workers(workers)
        receivers.close()
        with contextlib.suppress(OSError):
            for cid in ingest_client_ids(args.ingest_workers):
                clear_mqtt_session(env, cid)
        for w in workers:
            print(f"  {w.name} worker exited with {w.proc.returncode}; last log line: "
                  f"{w.log_tail(1)}")
    _print_table(res)
    if not args.keep:
        clear_redis(env)
    return 0 if res.ok else 1


def _progress_loop(
    args: argparse.Namespace, env: BenchEnv, shared: list[PubShared], reader: FeedReader,
    t0: float, publish_end: float, procs: list[Any], workers: list[Worker],
    marks: dict[str, float] | None = None,
) -> None:
    """Print progress while the publishers run. From the end of publishing on, poll for the
    committed-rate marks (see `_drain`): the publishers' sent counts are final then, though
    they still wait for their last PUBACKs.

    Counting the stored rows scans the positions table, and that CPU is taken from the system
    being measured: one count every 0.25 s over a 900,000-row table kept PostgreSQL's parallel
    workers busy for about a quarter of a core while the backlog drained. So the drain is
    polled by its expected end: every 0.25 s only when the remaining backlog would be stored
    within a second at the rate just seen, less often the further it is (at most 5 s)."""
    tty = sys.stdout.isatty()
    every = 1.0 if tty else 5.0
    last_t, last_sent, last_print = t0, 0, time.time()
    marks = {} if marks is None else marks
    stored, next_poll = 0, 0.0
    polled: tuple[float, int] | None = None  # (time, stored) of the previous drain poll
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        conn.execute("SET max_parallel_workers_per_gather = 0")  # no helper processes either
        while any(p.is_alive() for p in procs) or (
                "all_stored_at" not in marks and time.time() < publish_end + args.drain_timeout):
            now = time.time()
            time.sleep(0.25 if now >= publish_end + 0.1 else
                       min(every, max(publish_end + 0.1 - now, 0.05)))
            for w in workers:
                if w.proc.poll() is not None:
                    raise RuntimeError(f"{w.name} worker died:\n{w.log_tail(20)}")
            now = time.time()
            if now >= publish_end + 0.1 and "all_stored_at" not in marks and now >= next_poll:
                final = sum(s.sent.value for s in shared)
                stored = _count_stored(conn)
                now = time.time()
                marks.setdefault("backlog", float(max(final - stored, 0)))
                if stored >= final:
                    marks["all_stored_at"] = now
                next_poll = now + _next_poll_s(polled, (now, stored), final)
                polled = (now, stored)
            if time.time() - last_print < every - 0.01:
                continue
            last_print = time.time()
            for w in workers:
                if w.proc.poll() is not None:
                    raise RuntimeError(f"{w.name} worker died:\n{w.log_tail(20)}")
            if reader.error is not None:
                raise RuntimeError(f"alert feed reader failed: {reader.error!r}")
            now = time.time()
            sent = sum(s.sent.value for s in shared)
            out = sum(s.out.value for s in shared)
            if polled is None or now - polled[0] > 1.0:
                stored = _count_stored(conn)
            rate = (sent - last_sent) / max(now - last_t, 1e-9)
            last_t, last_sent = now, sent
            line = (f"elapsed {max(now - t0, 0):6.1f} s  sent {sent:9,d}  rate {rate:8,.0f}/s  "
                    f"stored {stored:9,d}  alerts read {len(reader.entries):5d}  "
                    f"wanderers out {out:5d}")
            print("\r" + line if tty else line, end="" if tty else "\n", flush=True)
    if tty:
        print()


def _count_stored(conn: psycopg.Connection) -> int:
    """The simulated phones' positions stored so far (a scan of the positions table: the
    callers' connections plan it without parallel workers, and poll it sparingly)."""
    return conn.execute("SELECT count(*) FROM positions WHERE device_id LIKE 'sim%'"
                        ).fetchone()[0]  # type: ignore[index]


def _next_poll_s(prev: tuple[float, int] | None, cur: tuple[float, int], final: int) -> float:
    """Seconds until the next count of stored rows: half the time the backlog needs at the
    rate between the last two counts, from 0.25 to 5 s (0.25 s without a rate yet)."""
    if prev is None or cur[1] >= final:
        return 0.25
    rate = (cur[1] - prev[1]) / max(cur[0] - prev[0], 1e-9)
    if rate <= 0:
        return 0.25  # no progress seen: stay close (the drain's stall check needs counts)
    return min(5.0, max(0.25, 0.5 * (final - cur[1]) / rate))


def _drain(env: BenchEnv, published: int, reader: FeedReader, receivers: Receivers,
           timeout: float, workers: list[Worker], marks: dict[str, float] | None = None
           ) -> float:
    """Wait until every published fix is stored, every alert is on the feed and read, and
    every notification delivered. `marks` receives the backlog when the wait began
    ("backlog": published fixes not yet stored) and the wall-clock time at which every
    published fix was first seen stored ("all_stored_at", polled every 0.25 s)."""
    t = time.monotonic()
    deadline = t + timeout
    last, last_change = -1, time.monotonic()
    stored = -1
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        conn.execute("SET max_parallel_workers_per_gather = 0")
        while time.monotonic() < deadline:
            if stored < published:  # all stored stays all stored: no more scans of positions
                stored = _count_stored(conn)
            if marks is not None:
                marks.setdefault("backlog", float(max(published - stored, 0)))
                if stored >= published:
                    marks.setdefault("all_stored_at", time.time())
            # Device commands go to the phones, not to the feed.
            pending, total = conn.execute(
                "SELECT count(*) FILTER (WHERE published_at IS NULL), "
                "count(*) FILTER (WHERE topic <> 'device.command') FROM outbox"
            ).fetchone()  # type: ignore[misc]
            undelivered, notes = conn.execute(
                "SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FROM notifications"
            ).fetchone()  # type: ignore[misc]
            if stored >= published and pending == 0 and len(reader.entries) >= total \
                    and undelivered == 0 and len(receivers.arrivals) >= notes:
                return time.monotonic() - t
            if stored != last:
                last, last_change = stored, time.monotonic()
            elif time.monotonic() - last_change > 20:
                print(f"drain: no progress for 20 s ({stored:,} of {published:,} stored)",
                      file=sys.stderr)
                break
            if any(w.proc.poll() is not None for w in workers):
                break
            time.sleep(0.25)
    return time.monotonic() - t


def _measure(
    env: BenchEnv, args: argparse.Namespace, pub_phone: np.ndarray, pub_ms: np.ndarray,
    acked: int, reader: FeedReader, receivers: Receivers, probe: CommitProbe, n_wanderers: int,
    wanderers_out: int, drain_s: float, cpu: CpuMeter, marks: dict[str, float] | None = None,
) -> Results:
    res = Results()
    base_ms = int(pub_ms.min()) if pub_ms.size else 0

    def keys(phone: np.ndarray, ms: np.ndarray) -> np.ndarray:
        return phone.astype(np.int64) * 10**10 + (ms.astype(np.int64) - base_ms)

    with psycopg.connect(env.dsn, autocommit=True) as conn:
        rows = conn.execute(
            """SELECT substr(device_id, 4)::bigint,
                      round(extract(epoch FROM fix_time) * 1000)::bigint,
                      extract(epoch FROM received_at)::float8
                 FROM positions WHERE device_id LIKE 'sim%'"""
        ).fetchall()
        dead = conn.execute(
            "SELECT reason, count(*) FROM dead_letters WHERE device_id LIKE 'sim%' "
            "GROUP BY reason").fetchall()
        foreign = conn.execute(
            "SELECT count(*), count(DISTINCT device_id) FROM dead_letters "
            "WHERE device_id IS DISTINCT FROM %s AND device_id NOT LIKE 'sim%%'",
            (PROBE_DEVICE,)).fetchone()
        n_alerts, n_outbox = conn.execute(
            "SELECT (SELECT count(*) FROM alerts), (SELECT count(*) FROM outbox)").fetchone()  # type: ignore[misc]
        # The fix behind each notification: its outbox row carries the device and fix time.
        note_fix = {key: (dev, fix, status, tries) for key, dev, fix, status, tries in conn.execute(
            """SELECT n.idempotency_key, o.payload->>'device_id', o.payload->>'fix_time',
                      n.status, n.attempts
                 FROM notifications n JOIN outbox o ON o.id = n.outbox_id""")}
    st = np.array(rows, dtype=np.float64).reshape(-1, 3)
    st_phone, st_ms, st_recv = st[:, 0].astype(np.int64), st[:, 1].astype(np.int64), st[:, 2]
    pub_keys = keys(pub_phone, pub_ms)
    st_keys = keys(st_phone, st_ms)
    missing = np.setdiff1d(pub_keys, st_keys).size
    unexpected = np.setdiff1d(st_keys, pub_keys).size
    span = float(st_recv.max() - st_recv.min()) if st_recv.size > 1 else float("nan")
    recv_lat = st_recv - st_ms / 1000.0

    # Alerts: match (device, fix time) to a published fix; latency = read time - fix time.
    pub_set = set(pub_keys.tolist())
    lat: list[float] = []
    unmatched = 0
    seen: set[bytes] = set()
    topics: dict[str, int] = {}
    for read_at, fields in reader.entries:
        oid = fields.get(b"outbox_id", b"")
        if oid in seen:
            continue
        seen.add(oid)
        payload = orjson.loads(fields[b"payload"])
        topic = fields.get(b"topic", b"?").decode()
        topics[topic] = topics.get(topic, 0) + 1
        dev = str(payload.get("device_id") or "")
        try:
            ms = _iso_to_ms(payload["fix_time"])
            key = int(dev[3:]) * 10**10 + (ms - base_ms)
        except (KeyError, ValueError):
            unmatched += 1
            continue
        if key not in pub_set:
            unmatched += 1
            continue
        lat.append(read_at - ms / 1000.0)
    alert_lat = np.array(lat)

    # Notifications: first arrival of each key at the receivers - the fix time behind it.
    first: dict[str, tuple[float, str]] = {}
    for at, via, nkey in receivers.arrivals:
        if nkey not in first or at < first[nkey][0]:
            first[nkey] = (at, via)
    deliv: dict[str, list[float]] = {"webhook": [], "email": []}
    for nkey, (at, via) in first.items():
        dev, fix, _, _ = note_fix.get(nkey, (None, None, None, None))
        if dev and fix and dev.startswith("sim"):
            deliv[via].append(at - _iso_to_ms(fix) / 1000.0)
    both = np.array(deliv["webhook"] + deliv["email"])
    repeats = len(receivers.arrivals) - len(first)
    not_delivered = sum(1 for *_, st, _ in note_fix.values() if st != "delivered")
    retried = sum(1 for *_, tries in note_fix.values() if tries > 1)

    published = int(pub_phone.size)
    pub_span = max(float(pub_ms.max() - pub_ms.min()) / 1000 if pub_ms.size else 0.0, 1e-9)
    res.add("offered rate (target)", f"{args.rate:,.0f} reports/s ({args.phones:,} phones, "
            f"every {args.interval:g} s, {args.duration:g} s)")
    res.add("published (QoS 1, PUBACKed)", f"{published:,} in {pub_span:.1f} s = "
            f"{published / pub_span:,.0f}/s ({acked:,} PUBACKs)")
    res.add("stored positions", f"{len(st_keys):,}")
    marks = marks or {}
    first_pub = float(pub_ms.min()) / 1000 if pub_ms.size else float("nan")
    if "all_stored_at" in marks:
        commit_span = marks["all_stored_at"] - first_pub
        res.add("COMMITTED RATE (stored / first publish -> last committed)",
                f"{len(st_keys) / commit_span:,.0f} reports/s ({len(st_keys):,} in "
                f"{commit_span:.1f} s; backlog when publishing ended: "
                f"{marks.get('backlog', 0):,.0f} fixes, stored "
                f"{marks['all_stored_at'] - first_pub - pub_span:.1f} s after the last publish)")
    else:
        res.add("COMMITTED RATE (stored / first publish -> last committed)",
                f"not all stored: {len(st_keys):,} of {published:,} when the drain gave up "
                f"(backlog when publishing ended: {marks.get('backlog', float('nan')):,.0f})")
    res.add("receive rate (stored / span of the worker's receive times)",
            f"{len(st_keys) / span:,.0f} reports/s (span {span:.1f} s; not the headline: "
            "messages are received before they are committed)")
    res.add("lost fixes (published - stored)", f"{published - len(st_keys):,} "
            f"({missing:,} published fixes missing, {unexpected:,} unexpected rows)")
    res.add("publish -> ingest receive p50 / p99",
            f"{_ms(_pct(recv_lat, 50))} / {_ms(_pct(recv_lat, 99))} "
            f"(max {_ms(float(recv_lat.max()) if recv_lat.size else float('nan'))})")
    if recv_lat.size:
        # Where the tail comes from: p99 per 10 s of fix time (a backlog shows as a ramp).
        win = ((st_ms - st_ms.min()) // 10_000).astype(np.int64)
        p99s = [_pct(recv_lat[win == w], 99) for w in range(int(win.max()) + 1)]
        res.add("  receive p99 per 10 s window",
                " ".join(f"{v * 1000:,.0f}" for v in p99s) + " ms")
    committed = np.array(probe.samples)
    res.add("publish -> committed p50 / p99 (sampled)",
            f"{_ms(_pct(committed, 50))} / {_ms(_pct(committed, 99))} (n={committed.size} "
            f"fixes of {len(probe.devices)} devices, polled every {probe.period_s * 1000:.0f} ms)"
            + (f"; probe failed: {probe.error!r}" if probe.error else ""))
    res.add("fix -> alert on feed p50 / p99",
            f"{_ms(_pct(alert_lat, 50))} / {_ms(_pct(alert_lat, 99))} "
            f"(n={alert_lat.size}, max {_ms(float(alert_lat.max()) if alert_lat.size else float('nan'))})")
    for channel, vals in deliv.items():
        a = np.array(vals)
        res.add(f"fix -> {channel} delivered p50 / p99",
                f"{_ms(_pct(a, 50))} / {_ms(_pct(a, 99))} "
                f"(n={a.size}, max {_ms(float(a.max()) if a.size else float('nan'))})")
    res.add("fix -> notification delivered p50 / p99",
            f"{_ms(_pct(both, 50))} / {_ms(_pct(both, 99))} (webhook and e-mail together)")
    res.add("notifications", f"{len(note_fix)} queued, {len(note_fix) - not_delivered} delivered, "
            f"{not_delivered} not delivered, {retried} needed a retry, {repeats} repeated sends")
    res.add("alerts", f"{n_alerts} alerts, {n_outbox} outbox events "
            f"({', '.join(f'{k} {v}' for k, v in sorted(topics.items())) or 'none'}); "
            f"{unmatched} feed entries unmatched")
    res.add("wanderers", f"{wanderers_out} of {n_wanderers} outside their district at the end")
    res.add("dead letters (bench traffic)",
            ", ".join(f"{r} {c}" for r, c in dead) if dead else "0")
    if foreign and foreign[0]:
        res.add("foreign traffic on the broker", f"{foreign[0]:,} messages of {foreign[1]} "
                "devices not from this bench (dead-lettered): another client shares the broker")
    res.add("drain after last publish", f"{drain_s:.1f} s")
    if cpu.wall > 0:
        busy = ", ".join(f"{k} {v / cpu.wall:.0%}" for k, v in cpu.used.items())
        res.add("CPU while publishing+draining",
                f"{busy} (of one core; wall {cpu.wall:.1f} s); the whole machine "
                f"{cpu.machine / cpu.wall:.0%} of {os.cpu_count() or 1}00% (the rest: the "
                f"kernel's network work and processes not listed)")
    res.ok = published > 0 and published == len(st_keys) and missing == 0 and not_delivered == 0
    return res


def _memory(env: BenchEnv, workers: list[Worker]) -> dict[str, float]:
    """Redis used_memory and each worker's resident set, in bytes."""
    r = redis.Redis.from_url(env.redis_url)
    try:
        out = {"redis": float(r.info("memory")["used_memory"])}
    finally:
        r.close()
    for w in workers:
        try:
            status = Path(f"/proc/{w.proc.pid}/status").read_text()
            kb = next(int(line.split()[1]) for line in status.splitlines()
                      if line.startswith("VmRSS:"))
            out[w.name] = kb * 1024.0
        except (OSError, StopIteration, ValueError):
            out[w.name] = float("nan")
    return out


def _add_profiles(res: Results, profiler: Any) -> None:
    """One row per profiled process: where its busy time went (py-spy, non-blocking)."""
    from simulators.profile import summarise

    if profiler.error:
        res.add("profile", f"incomplete: {profiler.error}")
    for name, path in sorted(profiler.files.items()):
        n, top_self, top_incl = summarise(path, top=6)
        if not n:
            continue
        res.add(f"profile {name} ({n} samples, {profiler.duration_s:.0f} s at {profiler.rate} Hz)",
                "self: " + "; ".join(f"{f} {v:.0%}" for f, v in top_self))
        res.add("", "in stack: " + "; ".join(f"{f} {v:.0%}" for f, v in top_incl))


def _print_table(res: Results) -> None:
    width = max(len(k) for k, _ in res.rows)
    print()
    print(f"{'metric':{width}}  value")
    print(f"{'-' * width}  {'-' * 60}")
    for k, v in res.rows:
        print(f"{k:{width}}  {v}")
    print()
    if res.ok:
        print("RESULT: OK, nothing lost")
    else:
        print("RESULT: FIXES LOST (or nothing published). Fixes PUBACKed by the broker but never "
              "stored were dropped by Mosquitto once the ingest worker fell more than its "
              "Receive Maximum + max_queued_messages behind (its log says 'Outgoing messages "
              "are being dropped for client ccs-bench-ingest').")


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    try:
        return run(args)
    except RuntimeError as e:
        print(f"bench failed: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
