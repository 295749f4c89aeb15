"""Fault-injection run: `python -m simulators.chaos [--short] [--patroni]` (`make chaos`,
`make failover`).

Sustained QoS 1 load from simulated phones (some fall silent on purpose, at known times) while
workers are killed with SIGKILL every few seconds and Redis, PostgreSQL and Mosquitto are
restarted; then it counts what the system lost, missed or did twice. It measures the code as
it is and tunes nothing to hide a failure.

Everything runs on this run's own PostgreSQL, Redis (AOF) and Mosquitto
(simulators/chaos_services.py, free loopback ports, a temporary directory), so restarting them
disturbs nothing else on the machine. The database, fleet, workers, publishers, feed reader
and notification receivers are the load bench's (simulators/bench.py).

With --patroni, PostgreSQL is a three-node Patroni cluster (synchronous replication) behind
HAProxy, with etcd (simulators/pg_cluster.py, deploy/patroni/), and the faults are its
primary's: `postgres:kill-primary` SIGKILLs the leader's Patroni and PostgreSQL (its machine
dies), `postgres:rejoin` starts that node's Patroni again (it rewinds and follows the new
primary). Its "down" is the time until a transaction that writes commits through HAProxy.

Definitions:
  acknowledged fixes lost  publishes the broker PUBACKed with neither a positions row (matched
                           by device and fix time) nor a dead letter (its raw payload's time)
  silences not alerted     phones told to stop reporting with no communication-failure alert
  silences alerted twice   ... with more than one alert row, or one renewed (count > 1)
  alerts opened twice      (supervisee, kind) with more than one alert row (nobody resolves
                           alerts during the run), plus alerts with more than one alert.opened
                           event in the outbox
  notifications twice      what a receiver honouring the idempotency key shows twice: one
                           (event, staff, channel, level) notified under two keys. Repeats
                           under one key (at-least-once delivery: a worker killed between a
                           send and its record sends again once the lease runs out) are such a
                           receiver's to drop; they are counted and reported beside it
  recovery                 after each fault, the longest of: fault -> the first probe fix
                           published after it is committed (a dedicated enrolled phone
                           reports every 0.2 s; its newest stored fix time is polled every
                           0.1 s); alert events created from 5 s before to 20 s after the
                           fault: creation -> read on the feed, creation -> notification at
                           the receiver
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psycopg

from simulators.bench import (
    BENCH_DB,
    BENCH_PREFIX,
    ROOT,
    BenchEnv,
    FeedReader,
    PubShared,
    Receivers,
    Worker,
    _drain,
    _publisher_main,
    bench_phone_config,
    bench_profile,
    fresh_database,
    machine_facts,
    start_worker,
    stop_helpers,
    stop_workers,
    wait_ingest_ready,
    wait_logged,
)
from simulators.chaos_services import OwnServices
from simulators.fleet import device_id
from simulators.pg_cluster import PatroniServices
from store import redisconn
from store.enums import AlertKind
from store.settings import Settings

SHARE_GROUP = "ccs-chaos"
# Silence thresholds for the run (the profile's check-in rules; phones report every second):
# a communication failure after interval + max(min buffer, interval) = 15 s of silence.
SILENCE_INTERVAL_S = 5.0
SILENCE_MIN_BUFFER_S = 10.0
RECOVERY_TARGET_S = 10.0
# Redis master killed (issue 15): "recovery <= 15 s".
REDIS_FAILOVER_TARGET_S = 15.0
# Writes after the loss of the PostgreSQL primary (issue 15): Patroni's leader key expires
# (ttl 15 s), a synchronous standby promotes, HAProxy's check finds it.
PG_FAILOVER_TARGET_S = 30.0
WINDOW_BEFORE_S, WINDOW_AFTER_S = 5.0, 20.0
SILENCE_KINDS = (AlertKind.COMMUNICATION_FAILURE.value, AlertKind.LOCATION_FAILURE.value,
                 AlertKind.PHONE_OFF.value)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m simulators.chaos", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, help="offered reports/s (default 2000; --short 300)")
    p.add_argument("--duration", type=float, help="seconds of load (default 300; --short 45)")
    p.add_argument("--publishers", type=int, default=2)
    p.add_argument("--ingest-workers", type=int, default=2,
                   help="MQTT ingest workers, each with its own client id (default 2)")
    p.add_argument("--dispatch", choices=("partition", "share"), default="partition",
                   help="how the ingest workers split the load (CCS_INGEST_DISPATCH): each its "
                        "partition of the devices (default), or a shared subscription "
                        f"$share/{SHARE_GROUP}/...")
    p.add_argument("--silent", type=int, help="phones that stop reporting on purpose "
                                              "(default: 2%% of the fleet, at least 10)")
    p.add_argument("--kill-every", type=float, default=10.0,
                   help="seconds between SIGKILLs of a worker (default 10)")
    p.add_argument("--pause", type=float, default=2.0,
                   help="seconds before a killed worker or stopped service is started again "
                        "(deploy/run_all.py waits 2 s)")
    p.add_argument("--wander", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--short", action="store_true",
                   help="the variant inside `make test`: 300 reports/s for 45 s, one SIGKILL of "
                        "each worker kind and one Redis restart that keeps its data")
    p.add_argument("--redis-failover", action="store_true",
                   help="Redis as a master and a replica under three sentinels (the workers "
                        "find the master through CCS_REDIS_SENTINELS); the one fault is a "
                        "SIGKILL of the master half-way through the run, the killed node restarting "
                        "after --pause s (no worker is killed); recovery target "
                        f"{REDIS_FAILOVER_TARGET_S:g} s")
    p.add_argument("--down-after-ms", type=int,
                   help="with --redis-failover: the sentinels' down-after-milliseconds "
                        "(default: deploy/redis/sentinel.conf's)")
    p.add_argument("--patroni", action="store_true",
                   help="PostgreSQL as three Patroni nodes behind HAProxy; the faults: the "
                        "primary killed (SIGKILL of its Patroni and PostgreSQL) and its node "
                        "started again (default 150 s, --short 40 s with one kill)")
    p.add_argument("--drain-timeout", type=float, default=300.0,
                   help="max seconds to let the system catch up after the load (default 300; "
                        "it also ends after 20 s without progress)")
    p.add_argument("--json", type=Path, help="also write the counts as JSON here")
    p.add_argument("--markdown", type=Path, help="also write the BENCHMARKS.md block here")
    p.add_argument("--keep", action="store_true", help="keep the services' directory")
    p.add_argument("--rejoin-after", type=float, default=5.0,
                   help="--patroni: seconds after writes resumed before the killed node's "
                        "Patroni is started again (default 5)")
    a = p.parse_args(argv)
    a.argv = [x for x in (sys.argv[1:] if argv is None else argv)]
    a.rate = a.rate or (300.0 if a.short else 2000.0)
    a.duration = a.duration or (
        (40.0 if a.short else 150.0) if a.patroni else (45.0 if a.short else 300.0))
    a.phones = max(1, round(a.rate))  # one report per phone per second
    a.interval = a.phones / a.rate
    a.silent = a.silent if a.silent is not None else max(10, a.phones // 50)
    if a.ingest_workers < 1 or a.duration < 30 or a.silent >= a.phones:
        p.error("need at least one ingest worker, 30 s and fewer silent phones than phones")
    return a


# ------------------------------------------------------------------------------------------
# The plan: faults and silent phones
# ------------------------------------------------------------------------------------------


def fault_plan(a: argparse.Namespace) -> list[tuple[float, str]]:
    """(seconds after the start, action); actions: kill:<worker>, redis:keep, redis:wipe,
    postgres:restart, mosquitto:restart, redis:failover; with --patroni postgres:kill-primary,
    postgres:rejoin."""
    if a.patroni:
        # Each killed node is started again --rejoin-after seconds after writes resumed
        # (postgres:rejoin, added when it happens). Full run: two machine losses, the second
        # of the primary that took over from the first, with three nodes running again between.
        if a.short:
            return [(12.0, "postgres:kill-primary")]
        return [(a.duration * 0.25, "postgres:kill-primary"),
                (a.duration * 0.6, "postgres:kill-primary")]
    ingest = [f"ingest-{k}" for k in range(a.ingest_workers)]
    if a.redis_failover:
        return [(round(a.duration * 0.5, 1), "redis:failover")]
    if a.short:
        return [(8.0, f"kill:{ingest[0]}"), (16.0, "kill:alerts"), (24.0, "kill:delivery"),
                (32.0, "redis:keep")]
    victims: list[str] = []
    for k in range(max(len(ingest), 2)):
        victims += [f"kill:{ingest[k % len(ingest)]}", ("kill:alerts", "kill:delivery")[k % 2]]
    plan = [(t, victims[i % len(victims)])
            for i, t in enumerate(np.arange(a.kill_every, a.duration, a.kill_every).tolist())]
    # Service restarts half-way between two kills, spread over the run.
    for frac, action in ((0.2, "redis:keep"), (0.4, "redis:wipe"), (0.6, "postgres:restart"),
                         (0.8, "mosquitto:restart")):
        at = round(a.duration * frac / a.kill_every) * a.kill_every + a.kill_every / 2
        plan.append((min(at, a.duration - 5), action))
    return sorted(plan)


def silence_s() -> float:
    """Allowed silence of every phone under the run's profile."""
    return float(chaos_profile().checkin.deadline_after(SILENCE_INTERVAL_S))


def silent_phones(a: argparse.Namespace) -> dict[int, float]:
    """{phone: seconds after the start when it stops}, spread so each alert is due in the run."""
    rng = np.random.default_rng(a.seed + 7)
    phones = rng.choice(a.phones, size=a.silent, replace=False)
    latest = max(6.0, a.duration - silence_s() - 15.0)
    stops = rng.uniform(5.0, latest, size=a.silent)
    return {int(p): round(float(s), 3) for p, s in zip(phones, stops, strict=True)}


def chaos_profile() -> Any:
    """The bench's 1-second profile with short silence thresholds (all levels alike)."""
    p = bench_profile()
    checkin = replace(p.checkin, interval_strict_s=SILENCE_INTERVAL_S,
                      interval_normal_s=SILENCE_INTERVAL_S, interval_lenient_s=SILENCE_INTERVAL_S,
                      key_person_factor=1.0, buffer_factor=1.0, min_buffer_s=SILENCE_MIN_BUFFER_S)
    return replace(p, name="chaos-1s", checkin=checkin)


# ------------------------------------------------------------------------------------------
# Workers under supervision, and the probe
# ------------------------------------------------------------------------------------------


@dataclass
class Slot:
    """One supervised worker: restarted after `pause` when it dies, as deploy/run_all.py does."""

    name: str
    module: str
    extra: dict[str, str]
    worker: Worker | None = None
    generation: int = 0
    restart_at: float | None = None
    unplanned_exits: int = 0


@dataclass
class Fault:
    """One injected fault: when it hit and when the thing was running again."""

    action: str
    at: float
    back: float = float("nan")


class Probe(threading.Thread):
    """One enrolled phone reporting every `period_s`; notes when its fixes are committed."""

    def __init__(self, env: BenchEnv, phone: int, n_total: int, seed: int,
                 period_s: float = 0.2) -> None:
        super().__init__(name="chaos-probe", daemon=True)
        self.env, self.phone, self.n_total, self.seed = env, phone, n_total, seed
        self.period_s = period_s
        self.sent: list[float] = []  # fix times published
        self.seen: list[tuple[float, float]] = []  # (poll time, newest committed fix time)
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        from simulators.phone import PhoneFleet, districts_from_geojson, fix_payload
        from simulators.publisher import MqttTarget, connect
        from store.demo import load_regions

        fleet = PhoneFleet(districts_from_geojson(load_regions()), self.n_total, self.seed,
                           bench_phone_config(0.0, 60.0), time.time(), np.array([self.phone]))
        topic = f"{self.env.topic_prefix}devices/{device_id(self.phone)}/location"
        conn: psycopg.Connection | None = None
        try:
            client = connect(MqttTarget(self.env.mqtt_host, self.env.mqtt_port, "ccs-chaos-probe",
                                        topic_prefix=self.env.topic_prefix))
            next_pub = time.time()
            while not self.stopping.wait(0.1):
                now = time.time()
                if now >= next_pub:
                    t = round(now, 3)
                    client.publish(topic, orjson.dumps(fix_payload(fleet.advance(t), 0, t)), qos=1)
                    self.sent.append(t)
                    next_pub = now + self.period_s
                try:
                    if conn is None:
                        conn = psycopg.connect(self.env.dsn, autocommit=True, connect_timeout=2)
                    row = conn.execute(
                        "SELECT extract(epoch FROM max(fix_time))::float8 FROM positions "
                        "WHERE device_id = %s", (device_id(self.phone),)).fetchone()
                    if row and row[0] is not None:
                        self.seen.append((time.time(), float(row[0])))
                except psycopg.Error:
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            conn.close()
                    conn = None
            client.disconnect()
            client.loop_stop()
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            self.error = e
        finally:
            if conn is not None:
                conn.close()

    def recovery(self, at: float) -> float | None:
        """Seconds from `at` until the first probe fix published at or after it was committed
        (inf: none was by the end of the run; None: none was published after `at`)."""
        i = bisect.bisect_left(self.sent, at)
        if i == len(self.sent):
            return None
        target = self.sent[i] - 0.0005
        return next((t - at for t, newest in self.seen if t >= at and newest >= target),
                    float("inf"))  # never, within the run


# ------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------


def own_env(svc: OwnServices) -> BenchEnv:
    """The bench's view of this run's own services."""
    url = f"postgresql+psycopg://{svc.pg_user}@127.0.0.1:{svc.pg_port}/{BENCH_DB}"
    return BenchEnv(admin_dsn=f"postgresql://{svc.pg_user}@127.0.0.1:{svc.pg_port}/postgres",
                    dsn=url.replace("+psycopg", ""), url=url,
                    redis_url=f"redis://127.0.0.1:{svc.redis_port}/0", mqtt_host="127.0.0.1",
                    mqtt_port=svc.mqtt_port, mqtt_username=None, mqtt_password=None,
                    topic_prefix="")


@contextlib.contextmanager
def cheap_password_hashing() -> Iterator[None]:
    """The demo staff's argon2 hashes at minimum cost while seeding (nobody logs in during the
    run; at the default cost seeding ~40 accounts takes ~20 s on two busy cores)."""
    from argon2 import PasswordHasher

    import api.security as sec

    kept = sec._hasher
    sec._hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    try:
        yield
    finally:
        sec._hasher = kept


def broker_store_count(env: BenchEnv, wait_s: float = 15.0) -> int | None:
    """Messages Mosquitto holds at the end (queued for sessions, in flight, retained): its
    $SYS/broker/store/messages/count. Acknowledged fixes not yet stored are lost only if the
    broker no longer holds them."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    got: list[int] = []
    done = threading.Event()

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        with contextlib.suppress(ValueError):
            got.append(int(msg.payload))
        done.set()

    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="ccs-chaos-sys")
    c.on_connect = lambda client, *_: client.subscribe("$SYS/broker/store/messages/count")
    c.on_message = on_message
    try:
        c.connect(env.mqtt_host, env.mqtt_port)
    except OSError:
        return None
    c.loop_start()
    done.wait(wait_s)
    c.disconnect()
    c.loop_stop()
    return got[0] if got else None


def install_profile(env: BenchEnv) -> None:
    """Make the run's profile (short silences) the active one."""
    body = chaos_profile().to_dict()
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        conn.execute("UPDATE rule_profiles SET active = false")
        conn.execute("INSERT INTO rule_profiles (name, version, body, active) "
                     "VALUES (%s, %s, %s, true)",
                     (body["name"], body["version"], orjson.dumps(body).decode()))


def restart_silence_clocks(env: BenchEnv, phones: int, at: float) -> None:
    """Start every phone's silence clocks at the load's start, as if it was enrolled then: the
    fleet is enrolled before the workers and publishers start, and on a busy machine that can
    take longer than the allowed silence (one run: 18 s, so 294 of 300 phones were rightly
    alerted as never heard from before their first report was stored). Only moves deadlines
    later (ZADD GT)."""
    import redis

    from alerts.silences import COMM, LOC

    deadlines = {device_id(p): at + silence_s() for p in range(phones)}
    r = redis.Redis.from_url(env.redis_url)
    try:
        for key in (COMM, LOC):
            r.zadd(BENCH_PREFIX + key, deadlines, gt=True)  # type: ignore[arg-type]
    finally:
        r.close()


class Chaos:
    """Workers, faults and the fault log of one run."""

    def __init__(self, a: argparse.Namespace, svc: OwnServices, env: BenchEnv, logdir: Path,
                 receivers: Receivers) -> None:
        self.a, self.svc, self.env, self.logdir = a, svc, env, logdir
        self.faults: list[Fault] = []
        self.failover: dict[str, Any] = {}
        self.cluster_notes: list[str] = []  # --patroni: what each fault did to the cluster
        self.waiting: list[threading.Thread] = []
        self.share_note = (
            f"shared subscription: CCS_INGEST_DISPATCH=share, CCS_MQTT_SHARE_GROUP={SHARE_GROUP}"
            if a.dispatch == "share" else
            f"partitioned: CCS_INGEST_DISPATCH=partition, CCS_INGEST_WORKERS={a.ingest_workers}")
        self.slots = []
        for k in range(a.ingest_workers):
            extra = {"CCS_MQTT_CLIENT_ID": "ccs-chaos-ingest", "CCS_INGEST_WORKER_ID": str(k),
                     "CCS_INGEST_DISPATCH": a.dispatch, "CCS_MQTT_SHARE_GROUP": SHARE_GROUP,
                     "CCS_INGEST_WORKERS": str(a.ingest_workers),
                     "CCS_INGEST_WORKER_INDEX": str(k)}
            self.slots.append(Slot(f"ingest-{k}", "ingest", extra))
        self.slots += [
            Slot("alerts", "alerts", {}),
            Slot("delivery", "alerts.delivery", {
                "CCS_SMTP_HOST": "127.0.0.1", "CCS_SMTP_PORT": str(receivers.smtp_port),
                "CCS_WEBHOOK_ALLOW_PRIVATE": "true"}),
        ]

    def slot(self, name: str) -> Slot:
        """The supervised worker called `name`."""
        return next(s for s in self.slots if s.name == name)

    def start(self, s: Slot) -> None:
        """Start (or restart) a worker; each generation logs to its own file."""
        s.generation += 1
        s.worker = start_worker(f"{s.name}.{s.generation}", s.module, self.env, self.logdir,
                                s.extra)
        s.restart_at = None

    def workers(self) -> list[Worker]:
        """The running generation of every worker."""
        return [s.worker for s in self.slots if s.worker is not None]

    def supervise(self) -> None:
        """Restart what died (after the pause) and close the faults whose worker is back."""
        now = time.time()
        for s in self.slots:
            if s.worker is not None and s.restart_at is None and s.worker.proc.poll() is not None:
                s.unplanned_exits += 1
                print(f"  {s.name} exited on its own ({s.worker.proc.returncode}); restarting "
                      f"in {self.a.pause:g} s. Last lines:\n{s.worker.log_tail(5)}", flush=True)
                s.restart_at = now + self.a.pause
            if s.restart_at is not None and now >= s.restart_at:
                self.start(s)
                for f in self.faults:
                    if f.action == f"kill:{s.name}" and f.back != f.back:
                        f.back = time.time()

    def inject(self, action: str) -> None:
        """Do one fault now."""
        kind, _, what = action.partition(":")
        f = Fault(action, time.time())
        self.faults.append(f)
        print(f"  fault {action}", flush=True)
        if kind == "kill":
            s = self.slot(what)
            if s.worker is not None and s.worker.proc.poll() is None:
                os.kill(s.worker.proc.pid, signal.SIGKILL)
                s.worker.proc.wait(10)
            s.restart_at = time.time() + self.a.pause
            return
        if action == "redis:failover":
            assert self.svc.sentinels is not None
            old, new, promoted = self.svc.sentinels.kill_master(restart_after=self.a.pause)
            f.back = f.at + promoted  # the sentinels name the new master
            self.failover = {"old_master_port": old, "new_master_port": new,
                             "promoted_after_s": round(promoted, 2),
                             "restart_after_s": self.a.pause,
                             "down_after_ms": self.svc.sentinels.down_after_ms,
                             "failover_timeout_ms": self.svc.sentinels.failover_timeout_ms}
            print(f"  master :{old} killed; :{new} promoted after {promoted:.1f} s", flush=True)
            return
        if kind == "redis":
            self.svc.stop_redis(lose_data=what == "wipe")
            time.sleep(self.a.pause)
            self.svc.start_redis()
        elif isinstance(self.svc, PatroniServices) and kind == "postgres":
            # The load goes on while the cluster recovers: wait for that on a thread.
            wait = threading.Thread(target=self._cluster_fault, args=(self.svc, what, f),
                                    name=f"chaos-{what}", daemon=True)
            wait.start()
            self.waiting.append(wait)
            return
        elif kind == "postgres":
            self.svc.stop_postgres("immediate")
            time.sleep(self.a.pause)
            self.svc.start_postgres()
        elif kind == "mosquitto":
            self.svc.stop_mosquitto()
            time.sleep(self.a.pause)
            self.svc.start_mosquitto()
        f.back = time.time()

    def _cluster_fault(self, svc: PatroniServices, what: str, f: Fault) -> None:
        """Kill the primary until a write commits through HAProxy again; then start the
        killed node again (a fault of its own, postgres:rejoin) until it runs as a replica.
        Notes the cluster's state after each."""
        if what != "kill-primary":
            raise ValueError(f"unknown cluster fault {what}")
        try:
            node = svc.kill_primary()
            svc.wait_writable(120.0)
            f.back = time.time()
            time.sleep(1.0)  # Patroni's view a moment later: who leads, who is synchronous
            self._note(f"{node} killed; writes through HAProxy after {f.back - f.at:.1f} s "
                       f"({svc.state()})")
            time.sleep(self.a.rejoin_after)
            f = Fault("postgres:rejoin", time.time())
            self.faults.append(f)
            print("  fault postgres:rejoin", flush=True)
            svc.rejoin()
            f.back = time.time()
            self._note(f"{node} started again; a replica after {f.back - f.at:.1f} s "
                       f"({svc.state()})")
        except Exception as e:  # noqa: BLE001 - reported in the result, the run goes on
            self._note(f"{what} failed: {e!r}"[:2000])

    def _note(self, note: str) -> None:
        self.cluster_notes.append(note)
        print(f"  {note}", flush=True)


def run(a: argparse.Namespace) -> int:
    """The whole run; returns 0 when every count is 0 and every recovery within target."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    print(f"CCS fault-injection run, {stamp}")
    facts = machine_facts()
    for fact, value in facts:
        print(f"  {fact:14} {value}")
    plan = fault_plan(a)
    silent = silent_phones(a)
    print(f"  {'plan':14} {a.phones} phones x 1 report / {a.interval:g} s = {a.rate:,.0f} "
          f"reports/s for {a.duration:g} s over QoS 1, {a.ingest_workers} ingest worker(s); "
          f"{len(silent)} phones fall silent (alert due after {silence_s():g} s); "
          f"{len(plan)} faults")
    logdir = ROOT / ".run" / "chaos"
    shutil.rmtree(logdir, ignore_errors=True)
    logdir.mkdir(parents=True)
    root = Path(tempfile.mkdtemp(prefix="ccs-chaos-"))
    svc = PatroniServices(root) if a.patroni else OwnServices(
        root, sentinel=a.redis_failover, down_after_ms=a.down_after_ms)
    receivers: Receivers | None = None
    chaos: Chaos | None = None
    procs: list[Any] = []
    reader: FeedReader | None = None
    probe: Probe | None = None
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    try:
        t = time.monotonic()
        svc.start()
        print(f"  services up in {time.monotonic() - t:.1f} s", flush=True)
        env = own_env(svc)
        print(f"  {'services':14} own PostgreSQL :{svc.pg_port}, Redis (AOF) :{svc.redis_port}, "
              f"Mosquitto :{svc.mqtt_port} in {svc.root}", flush=True)
        if isinstance(svc, PatroniServices):
            print(f"  {'cluster':14} HAProxy :{svc.pg_port} (read-write) in front of "
                  f"{svc.state()}; etcd :{svc.etcd_port}", flush=True)
        # This process's settings (the fleet's provisioning, the probe) point there too.
        os.environ.update({"CCS_DATABASE_URL": env.url, "CCS_REDIS_URL": env.redis_url,
                           "CCS_REDIS_PREFIX": BENCH_PREFIX, "CCS_MQTT_PORT": str(svc.mqtt_port),
                           "CCS_REDIS_SENTINELS": svc.sentinels.addresses if svc.sentinels
                           else ""})
        if svc.sentinels is not None:
            print(f"  {'sentinels':14} {svc.sentinels.addresses} watching master "
                  f":{svc.sentinels.node_ports[0]} and replica :{svc.sentinels.node_ports[1]}",
                  flush=True)
        receivers = Receivers()
        with cheap_password_hashing():
            fresh_database(env, a.phones + 1, receivers.hook_url)  # the last phone: the probe
        install_profile(env)
        print(f"  database ready after {time.monotonic() - t:.1f} s", flush=True)
        chaos = Chaos(a, svc, env, logdir, receivers)
        print(f"  {'ingest':14} {chaos.share_note}")
        for s in chaos.slots[:a.ingest_workers]:
            chaos.start(s)
        for s in chaos.slots[:a.ingest_workers]:
            assert s.worker is not None
            wait_logged(s.worker, "MQTT subscribed")  # its session exists before the load
            wait_ingest_ready(env, s.worker)
        # The phones are handed out now: the silence clocks of phones that never reported run
        # from enrolment, and setup took longer than the run's allowed silence. The alert
        # worker, whose scheduler starts them (alerts/silences.py, reseed), starts after this.
        with psycopg.connect(env.dsn, autocommit=True) as conn:
            conn.execute("UPDATE devices SET created_at = now()")
        for s in chaos.slots[a.ingest_workers:]:
            chaos.start(s)
        print(f"setup done in {time.monotonic() - t:.1f} s (logs in {logdir})", flush=True)
        reader = FeedReader(redisconn.sync_client(Settings()), BENCH_PREFIX + "feed", retry=True)
        reader.start()

        ready = ctx.Semaphore(0)
        go = ctx.Event()
        t0 = ctx.Value("d", 0.0)
        shared = [PubShared(*(ctx.Value("q", 0) for _ in range(4))) for _ in range(a.publishers)]
        outs = [str(logdir / f"published-{k}.npz") for k in range(a.publishers)]
        pargs = {"phones": a.phones, "interval": a.interval, "duration": a.duration,
                 "wander": a.wander, "seed": a.seed, "ack_wait": 30.0, "silent": silent,
                 "wander_over": a.duration * 3.6}  # departures over the first 90 %
        for k in range(a.publishers):
            p = ctx.Process(target=_publisher_main, name=f"publisher-{k}",
                            args=(k, a.publishers, pargs, env, shared[k], ready, go, t0, stop,
                                  outs[k]))
            p.start()
            procs.append(p)
        for _ in procs:
            if not ready.acquire(timeout=120):
                raise RuntimeError("a publisher process did not get ready")
        probe = Probe(env, a.phones, a.phones + 1, a.seed)
        t0.value = start = time.time() + 0.5
        restart_silence_clocks(env, a.phones + 1, start)
        go.set()
        probe.start()
        pending = list(plan)
        next_print = start + 5
        while any(p.is_alive() for p in procs):
            time.sleep(0.1)
            now = time.time()
            while pending and now >= start + pending[0][0]:
                chaos.inject(pending.pop(0)[1])
            chaos.supervise()
            if now >= next_print:
                next_print += 5
                sent = sum(s.sent.value for s in shared)
                acked = sum(s.acked.value for s in shared)
                print(f"  elapsed {now - start:6.1f} s  sent {sent:9,d}  acked {acked:9,d}  "
                      f"alerts read {len(reader.entries):5d}", flush=True)
        publish_end = start + a.duration
        for wait in chaos.waiting:
            wait.join(180)
        chaos.faults.sort(key=lambda f: f.at)
        while any(s.restart_at is not None for s in chaos.slots):
            time.sleep(0.1)
            chaos.supervise()
        for p in procs:
            p.join(timeout=60)
        if any(p.exitcode != 0 for p in procs):
            raise RuntimeError("a publisher process failed")
        logs = [np.load(o) for o in outs]
        published = sum(int(g["phone"].size) for g in logs)
        print("publishing done; draining", flush=True)
        drain_s = _drain(env, published + len(probe.sent), reader, receivers, a.drain_timeout,
                         chaos.workers())
        probe.stopping.set()
        probe.join(10)
        res = measure(a, env, logs, silent, publish_end, chaos, probe, reader, receivers)
        res["drain_s"] = round(drain_s, 1)
        res["drain_timed_out"] = drain_s >= a.drain_timeout - 0.5  # still catching up
        res["broker_store_messages"] = broker_store_count(env)
        res["published_rate"] = round(published / a.duration)
        res["cluster_notes"] = chaos.cluster_notes
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        stop_helpers(stop, procs, [reader, probe])
        if chaos is not None:
            stop_workers(chaos.workers())
        if receivers is not None:
            receivers.close()
        svc.stop()
        cluster_logs = svc.logs() if isinstance(svc, PatroniServices) else []
        for log in [svc.root / n for n in ("postgres.log", "redis.log", "sentinel.log",
                                           "mosquitto.log")]:
            with contextlib.suppress(OSError):
                shutil.copy(log, logdir / log.name)
        for log in cluster_logs:
            with contextlib.suppress(OSError):
                shutil.copy(log, logdir / log.name)
        if not a.keep:
            shutil.rmtree(svc.root, ignore_errors=True)
    res["machine"] = dict(facts)
    if chaos is not None and chaos.failover:
        res["failover"] = chaos.failover
    res["stamp"] = stamp
    text = report(a, res, chaos.share_note if chaos else "")
    print(text)
    if a.markdown:
        a.markdown.write_text(text)
    if a.json:
        a.json.write_text(json.dumps(res, indent=1, default=str))
    return 0 if res["ok"] else 1


# ------------------------------------------------------------------------------------------
# Counting
# ------------------------------------------------------------------------------------------


def _keys(phone: np.ndarray, ms: np.ndarray) -> np.ndarray:
    return phone.astype(np.int64) * 10**13 + ms.astype(np.int64) % 10**13


def measure(a: argparse.Namespace, env: BenchEnv, logs: list[Any], silent: dict[int, float],
            publish_end: float, chaos: Chaos, probe: Probe, reader: FeedReader,
            receivers: Receivers) -> dict[str, Any]:
    """Every count and recovery of the run."""
    pub_phone = np.concatenate([g["phone"] for g in logs])
    pub_ms = np.concatenate([g["time_ms"] for g in logs])
    acked_mask = np.concatenate([g["acked"] for g in logs]).astype(bool)
    comm = AlertKind.COMMUNICATION_FAILURE.value
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        stored = np.array(conn.execute(
            """SELECT substr(device_id, 4)::bigint,
                      round(extract(epoch FROM fix_time) * 1000)::bigint
                 FROM positions WHERE device_id LIKE 'sim%'""").fetchall(),
            dtype=np.int64).reshape(-1, 2)
        dead_ms: list[tuple[int, int]] = []
        dead_reasons: Counter[str] = Counter()
        for dev, raw, reason in conn.execute(
                "SELECT device_id, raw, reason FROM dead_letters WHERE device_id LIKE 'sim%'"):
            dead_reasons[reason] += 1
            with contextlib.suppress(ValueError, KeyError, TypeError, orjson.JSONDecodeError):
                dead_ms.append((int(dev[3:]), round(float(orjson.loads(raw)["time"]) * 1000)))
        twice_rows = conn.execute(
            """SELECT count(*) FROM (SELECT 1 FROM alerts GROUP BY supervisee_id, kind
                                      HAVING count(*) > 1) x""").fetchone()[0]  # type: ignore[index]
        twice_events = conn.execute(
            """SELECT count(*) FROM (SELECT 1 FROM outbox WHERE topic = 'alert.opened'
                                      GROUP BY payload->>'alert_id' HAVING count(*) > 1) x"""
        ).fetchone()[0]  # type: ignore[index]
        per_silent = {dev: (n, total, opened) for dev, n, total, opened in conn.execute(
            """SELECT d.id, count(a.id), coalesce(sum(a.count), 0),
                      extract(epoch FROM min(a.opened_at))::float8
                 FROM devices d LEFT JOIN alerts a
                   ON a.supervisee_id = d.supervisee_id AND a.kind = %s
                WHERE d.id = ANY(%s) GROUP BY d.id""",
            (comm, [device_id(p) for p in silent]))}
        false_silences = conn.execute(
            """SELECT count(*) FROM alerts WHERE kind = ANY(%s) AND NOT device_id = ANY(%s)
                  AND opened_at < to_timestamp(%s)""",
            (list(SILENCE_KINDS), [device_id(p) for p in silent], publish_end)).fetchone()[0]  # type: ignore[index]
        n_alerts, n_outbox, n_notes = conn.execute(
            "SELECT (SELECT count(*) FROM alerts), (SELECT count(*) FROM outbox), "
            "(SELECT count(*) FROM notifications)").fetchone()  # type: ignore[misc]
        notes_twice = conn.execute(
            """SELECT count(*) FROM (SELECT 1 FROM notifications
                 GROUP BY outbox_id, staff_id, channel_id, escalation_level
                HAVING count(*) > 1) x""").fetchone()[0]  # type: ignore[index]
        undelivered = conn.execute("SELECT count(*) FROM notifications WHERE status <> 'delivered'"
                                   ).fetchone()[0]  # type: ignore[index]
        # Alert events that go to the feed (device commands go to phones; muted alerts nowhere).
        events = conn.execute(
            """SELECT o.id, extract(epoch FROM o.created_at)::float8 FROM outbox o
                 LEFT JOIN alerts a ON a.id = (o.payload->>'alert_id')::bigint
                WHERE o.topic LIKE 'alert.%' AND NOT coalesce(a.suppressed, false)""").fetchall()
        kinds: dict[str, int] = dict(conn.execute(
            "SELECT kind, count(*) FROM alerts GROUP BY kind ORDER BY 2 DESC").fetchall())
        note_events = conn.execute(
            "SELECT n.idempotency_key, extract(epoch FROM o.created_at)::float8 "
            "FROM notifications n JOIN outbox o ON o.id = n.outbox_id").fetchall()

    # Acknowledged fixes lost.
    acked_keys = _keys(pub_phone[acked_mask], pub_ms[acked_mask])
    kept = np.union1d(_keys(stored[:, 0], stored[:, 1]),
                      _keys(*np.array(dead_ms, dtype=np.int64).reshape(-1, 2).T))
    lost = int(np.setdiff1d(acked_keys, kept).size)
    unacked = int((~acked_mask).sum())

    # Silences.
    last_fix = {}
    for p in silent:
        sel = pub_ms[(pub_phone == p) & acked_mask]
        last_fix[p] = float(sel.max()) / 1000 if sel.size else float("nan")
    missed = [p for p in silent if per_silent.get(device_id(p), (0, 0, None))[0] == 0]
    twice_silence = [p for p in silent if per_silent.get(device_id(p), (0, 0, None))[0] > 1
                     or per_silent.get(device_id(p), (0, 0, None))[1] > 1]
    # A phone whose first alert came before it stopped was falsely alerted first (the pipeline
    # fell more than the allowed silence behind), then again when it really stopped.
    start = publish_end - a.duration
    early = [p for p in silent if (per_silent.get(device_id(p), (0, 0, None))[2] or 1e18)
             < start + silent[p]]
    lags = [per_silent[device_id(p)][2] - (last_fix[p] + silence_s()) for p in silent
            if device_id(p) in per_silent and per_silent[device_id(p)][2] is not None]

    # Notifications sent twice, by idempotency key.
    arrivals: Counter[tuple[str, str]] = Counter((via, key) for _, via, key in receivers.arrivals)
    repeated = {via: sum(1 for (v, _), c in arrivals.items() if v == via and c > 1)
                for via in ("webhook", "email")}

    # Recovery after each fault.
    read_at: dict[int, float] = {}
    for at, fields_ in reader.entries:
        with contextlib.suppress(ValueError):
            read_at.setdefault(int(fields_.get(b"outbox_id", b"")), at)
    first_arrival: dict[str, float] = {}
    for at, _, key in receivers.arrivals:
        first_arrival[key] = min(at, first_arrival.get(key, at))
    faults = []
    for f in chaos.faults:
        lo, hi = f.at - WINDOW_BEFORE_S, f.at + WINDOW_AFTER_S
        feed = [read_at.get(i, float("inf")) - c for i, c in events if lo <= c <= hi]
        deliv = [first_arrival.get(k, float("inf")) - c for k, c in note_events if lo <= c <= hi]
        commit = probe.recovery(f.at)
        parts = [x for x in (commit, max(feed, default=None), max(deliv, default=None))
                 if x is not None]
        faults.append({
            "action": f.action, "at_s": round(f.at - (publish_end - a.duration), 1),
            "down_s": round(f.back - f.at, 1) if f.back == f.back else None,
            "commit_s": _r(commit), "feed_s": _r(max(feed, default=None)), "n_feed": len(feed),
            "delivery_s": _r(max(deliv, default=None)), "n_delivery": len(deliv),
            "recovery_s": _r(max(parts, default=None)),
        })
    by_kind: dict[str, list[float]] = {}
    for fr in faults:
        kind = "kill:ingest" if fr["action"].startswith("kill:ingest") else fr["action"]
        by_kind.setdefault(kind, [])
        if fr["recovery_s"] is not None:
            by_kind[kind].append(fr["recovery_s"])
    longest = {kind: max(v, default=None) for kind, v in by_kind.items()}

    acked_total = int(acked_mask.sum())
    res: dict[str, Any] = {
        "published": int(pub_phone.size), "acked": acked_total, "unacked": unacked,
        "stored": int(stored.shape[0]), "dead_letters": dict(dead_reasons),
        "lost_acked_fixes": lost,
        "silent_phones": len(silent), "silences_not_alerted": len(missed),
        "silences_alerted_twice": len(twice_silence), "silences_alerted_early": len(early),
        "silence_alert_lag_max_s": _r(max(lags, default=None)),
        "false_silence_alerts": int(false_silences),
        "alerts_opened_twice": int(twice_rows) + int(twice_events),
        "alerts_twice_rows": int(twice_rows), "alerts_twice_opened_events": int(twice_events),
        "notifications_sent_twice": sum(repeated.values()), "notifications_twice_by_channel": repeated,
        "notifications_same_event_two_keys": int(notes_twice),
        "alerts": int(n_alerts), "alert_kinds": kinds, "outbox": int(n_outbox), "notifications": int(n_notes),
        "notifications_not_delivered": int(undelivered),
        "faults": faults, "longest_recovery_s": longest,
        "unplanned_worker_exits": {s.name: s.unplanned_exits for s in chaos.slots},
        "probe_error": repr(probe.error) if probe.error else None,
        "rate": a.rate, "duration": a.duration, "ingest_workers": a.ingest_workers,
        "silence_s": silence_s(), "short": a.short,
    }
    res["ok"] = (lost == 0 and not missed and not twice_silence and res["alerts_opened_twice"] == 0
                 and notes_twice == 0
                 and all(v is not None and v <= target_s(k) for k, v in longest.items()))
    return res


def target_s(fault_kind: str) -> float:
    """The recovery target of a fault kind."""
    if fault_kind == "redis:failover":
        return REDIS_FAILOVER_TARGET_S
    if fault_kind == "postgres:kill-primary":
        return PG_FAILOVER_TARGET_S
    return RECOVERY_TARGET_S


def _r(v: float | None) -> float | None:
    return None if v is None else (round(v, 2) if v != float("inf") else float("inf"))


def _s(v: float | None) -> str:
    if v is None:
        return "n/a"
    return "never" if v == float("inf") else f"{v:.1f} s"


def failover_note(res: dict[str, Any]) -> str:
    """What the Redis failover run did, for its report."""
    fo = res.get("failover")
    if not fo:
        return ""
    return (f" Redis: a master and a replica watched by three sentinels (deploy/redis/"
            f"sentinel.conf: quorum 2, down after {fo['down_after_ms']} ms, failover timeout "
            f"{fo['failover_timeout_ms']} ms), every worker connected through them "
            f"(CCS_REDIS_SENTINELS); the master (:{fo['old_master_port']}) SIGKILLed, the "
            f"replica (:{fo['new_master_port']}) named master after {fo['promoted_after_s']} s, "
            f"the killed node started again at least {fo['restart_after_s']:g} s after the kill, "
            "as a replica of the master the sentinels name (deploy/redis/ccs-redis-role.sh).")


def report(a: argparse.Namespace, res: dict[str, Any], share_note: str) -> str:
    """The result as a markdown block (for BENCHMARKS.md)."""
    m = res.get("machine", {})
    held = res.get("broker_store_messages")
    backlog = ""
    if res.get("lost_acked_fixes") and res.get("drain_timed_out") and held:
        backlog = (f"; NOT SETTLED: when the run ended (drain {res.get('drain_s')} s) the broker "
                   f"still held {held:,} messages for the ingest workers' sessions, so these "
                   "fixes were queued or lost; the run could not wait long enough to tell")
    lines = [
        f"Run {res.get('stamp', '')}: `python -m simulators.chaos"
        f" {' '.join(a.argv)}` on {m.get('CPUs (nproc)', '?')} CPUs "
        f"({m.get('CPU model', '?')}, {m.get('memory', '?')}); speed reference: "
        f"{m.get('CPU speed', '?')}.",
        "",
        f"Load: {a.rate:,.0f} reports/s offered ({a.phones:,} phones, QoS 1) for "
        f"{a.duration:g} s, {res.get('published', 0):,} published "
        f"(= {res.get('published_rate', 0):,}/s); "
        f"{a.ingest_workers} ingest workers ({share_note}); {res.get('silent_phones')} phones "
        f"fall silent at known times (run profile: communication failure after "
        f"{res.get('silence_s')} s); "
        + ("PostgreSQL: three Patroni nodes (Debian's /usr/bin/patroni, deploy/patroni/, "
           "synchronous_mode_strict, one synchronous standby, ttl 15 s, loop_wait 2 s) with "
           "one etcd member, the services connected through HAProxy's read-write port "
           "(GET /primary checks every second); own Redis (AOF) and Mosquitto on free ports."
           if a.patroni else
           ("no worker killed" if res.get("failover") else
            f"a SIGKILL every {a.kill_every:g} s, restarts after {a.pause:g} s")
           + ". Own PostgreSQL, Redis (AOF, fsync every second) and Mosquitto "
           "(deploy/mosquitto/mosquitto.conf) on free ports." + failover_note(res)),
        "",
        "| count | result | target |",
        "|---|---|---|",
        f"| acknowledged fixes lost (PUBACKed, in neither positions nor dead_letters) | "
        f"{res.get('lost_acked_fixes')} of {res.get('acked', 0):,} acked "
        f"({res.get('unacked', 0):,} never acked; {res.get('stored', 0):,} stored; dead letters "
        f"{res.get('dead_letters') or 0}){backlog} | 0 |",
        f"| silences that did not alert | {res.get('silences_not_alerted')} of "
        f"{res.get('silent_phones')} (alerted twice: {res.get('silences_alerted_twice')}, of "
        f"which {res.get('silences_alerted_early')} first alerted while still reporting; "
        f"latest alert {_s(res.get('silence_alert_lag_max_s'))} after its deadline) | 0 |",
        f"| alerts opened twice | {res.get('alerts_opened_twice')} "
        f"({res.get('alerts_twice_rows')} supervisee+kind with two rows, "
        f"{res.get('alerts_twice_opened_events')} alerts with two alert.opened events) | 0 |",
        f"| notifications a receiver honouring the idempotency key shows twice (one event, "
        f"staff and channel under two keys) | {res.get('notifications_same_event_two_keys')} "
        f"(repeats under one key, which it drops: {res.get('notifications_sent_twice')}, "
        f"{res.get('notifications_twice_by_channel')}) | 0 |",
    ]
    for key, v in (res.get("longest_recovery_s") or {}).items():
        lines.append(f"| longest recovery after {key} | {_s(v)} | ≤ {target_s(key):g} s |")
    lines += [
        "",
        f"Also: {res.get('false_silence_alerts')} silence alerts for phones that kept reporting "
        f"(opened before the load ended); {res.get('alerts')} alerts ({res.get('alert_kinds')}), "
        f"{res.get('outbox')} alert "
        f"events, {res.get('notifications')} notifications "
        f"({res.get('notifications_not_delivered')} not delivered); worker exits not caused by "
        f"the run: {res.get('unplanned_worker_exits')}; drain {res.get('drain_s')} s"
        + (f"; probe failed: {res['probe_error']}" if res.get("probe_error") else "") + ".",
        "",
        "| t (s) | fault | down | next fix committed | alert events → feed (n) | "
        "→ receiver (n) |",
        "|---|---|---|---|---|---|",
    ]
    for f in res.get("faults", []):
        lines.append(f"| {f['at_s']} | {f['action']} | {_s(f['down_s'])} | {_s(f['commit_s'])} "
                     f"| {_s(f['feed_s'])} ({f['n_feed']}) | {_s(f['delivery_s'])} "
                     f"({f['n_delivery']}) |")
    if res.get("cluster_notes"):
        lines += ["", "The cluster (down = until a write commits through HAProxy again, or the "
                      "node runs as a replica again):", ""]
        lines += [f"- {note}" for note in res["cluster_notes"]]
    lines += ["", "RESULT: " + ("every count 0, every recovery within target" if res.get("ok")
                                else "TARGETS MISSED (see above)")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    a = parse_args(argv)
    try:
        return run(a)
    except (RuntimeError, subprocess.CalledProcessError) as e:
        print(f"chaos run failed: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
