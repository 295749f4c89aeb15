"""The ingest pipeline's cost per report, without the broker: `python -m simulators.hotpath`.

`make bench` measures the whole system, where eight processes share two cores and every figure
moves with the others. This one feeds pre-encoded native reports of a fleet straight into one
`ingest.pipeline.Pipeline` (as the MQTT worker hands them over, in batches) on a fresh
`ccs_bench` database, and counts the CPU each party spends per report: this process (decoding,
the engine, Redis and PostgreSQL clients), the Redis server and the PostgreSQL backends. The
first report of each phone (cold registry, engine state rebuilt from the database) and the
steady state are reported apart. `--profile` adds a cProfile summary of the steady phase.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from simulators.bench import (
    BENCH_DB,
    BENCH_PREFIX,
    _calibrate,
    _pids_named,
    _proc_cpu,
    bench_env,
    bench_phone_config,
    clear_redis,
    fresh_database,
)
from simulators.fleet import device_id


def _server_cpu() -> dict[str, float]:
    """CPU seconds so far of Redis and of the PostgreSQL processes that work for this bench:
    its database's backends and the server's shared writers (WAL, checkpoints, autovacuum);
    other databases' backends (another bench, a test suite) are left out."""
    out = {"redis": 0.0, "postgres": 0.0}
    for pid in _pids_named("redis-server"):
        out["redis"] += _proc_cpu(pid) or 0.0
    shared = (b"walwriter", b"checkpointer", b"background writer", b"autovacuum")
    for pid in _pids_named("postgres"):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if BENCH_DB.encode() in title or any(w in title for w in shared):
            out["postgres"] += _proc_cpu(pid) or 0.0
    return out


def make_reports(phones: int, reports: int, interval_s: float, seed: int, t_end: float,
                 wander: float) -> list[tuple[str, bytes]]:
    """`reports` native payloads of `phones` phones reporting every `interval_s`, in time order,
    the last one at `t_end` (all in the past: nothing is refused as from the future)."""
    from simulators.phone import PhoneFleet, districts_from_geojson, fix_payload
    from store.demo import load_regions

    fleet = PhoneFleet(districts_from_geojson(load_regions()), phones, seed,
                       bench_phone_config(wander, reports / phones * interval_s), 0.0)
    rounds = -(-reports // phones)
    t0 = t_end - rounds * interval_s
    chunk = max(1, phones // 20)
    out: list[tuple[str, bytes]] = []
    for r in range(rounds):
        for lo in range(0, phones, chunk):
            idx = np.arange(lo, min(phones, lo + chunk))
            times = t0 + r * interval_s + idx * (interval_s / phones)
            batch = fleet.advance(float(times[-1]), idx)
            out.extend((device_id(int(fleet.phone[i])),
                        orjson.dumps(fix_payload(batch, j, float(times[j]))))
                       for j, i in enumerate(idx))
    return out[:reports]


def run(args: argparse.Namespace) -> None:
    from ingest.pipeline import Channel, Pipeline, RawMessage
    from store.runtime import tune_gc
    from store.settings import Settings, set_settings

    env = bench_env()
    print(f"speed reference: 10 million Python additions in {_calibrate():.2f} s")
    t = time.monotonic()
    fresh_database(env, args.phones, "http://127.0.0.1:9/unused")
    clear_redis(env)
    print(f"database with {args.phones:,} phones in {time.monotonic() - t:.0f} s")
    interval = args.phones / args.rate
    t = time.monotonic()
    reports = make_reports(args.phones, args.reports, interval, args.seed, time.time() - 5,
                           args.wander)
    print(f"{len(reports):,} reports encoded in {time.monotonic() - t:.0f} s "
          f"(every {interval:.1f} s per phone)")
    settings = Settings(database_url=env.url, redis_prefix=BENCH_PREFIX)
    set_settings(settings)
    pipe = Pipeline.connect(settings, owner_token="hotpath")
    print(f"garbage collector as the ingest worker runs it: thresholds "
          f"{tune_gc(settings.gc_threshold)} (CCS_GC_THRESHOLD={settings.gc_threshold})")
    topic = "devices/{}/location"

    def phase(name: str, part: list[tuple[str, bytes]], profile: bool) -> None:
        srv0, cpu0, t0 = _server_cpu(), time.process_time(), time.perf_counter()
        prof = cProfile.Profile() if profile else None
        if prof:
            prof.enable()
        accepted = 0
        batch_ms = []
        for k in range(0, len(part), args.batch):
            now = time.time()
            msgs = [RawMessage(Channel.NATIVE_MQTT, p, d, topic.format(d), now)
                    for d, p in part[k:k + args.batch]]
            b0 = time.perf_counter()
            accepted += sum(r.accepted for r in pipe.process(msgs, now))
            batch_ms.append((time.perf_counter() - b0) * 1000)
        if prof:
            prof.disable()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        srv = {k: v - srv0[k] for k, v in _server_cpu().items()}
        n = len(part)
        us = {"pipeline": cpu, **srv}
        total = sum(us.values())
        print(f"{name}: {n:,} reports, {accepted:,} stored, {n / wall:,.0f} reports/s wall; "
              f"CPU per report: " + ", ".join(f"{k} {v / n * 1e6:.0f} us" for k, v in us.items())
              + f"; together {total / n * 1e6:.0f} us; state cache {pipe.states.cache_hits:,} "
              f"hits, {pipe.states.cache_misses:,} misses so far; batch of {args.batch} p50 "
              f"{np.percentile(batch_ms, 50):.0f} ms, p99 {np.percentile(batch_ms, 99):.0f} ms, "
              f"max {max(batch_ms):.0f} ms")
        if prof:
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(args.profile)
            print(s.getvalue())

    first = min(args.phones, len(reports))
    phase("first report of each phone", reports[:first], False)
    if not args.maintenance:
        phase("steady", reports[first:], args.profile > 0)
    else:
        half = first + (len(reports) - first) // 2
        phase("steady, no maintenance", reports[first:half], False)
        with Maintenance(env.dsn, settings) as m:
            phase("steady, partitions made, archived and dropped meanwhile", reports[half:],
                  args.profile > 0)
        print(f"meanwhile: {m.done}")
    pipe.close()


class Maintenance:
    """While ingest runs: day after day past retention (200,000 rows each, of a person whose
    supervision ended long ago, prepared before) is archived, verified, detached and dropped,
    and a partition is made ahead, as the scheduler's maintenance does once a day."""

    def __init__(self, dsn: str, settings: Any, days: int = 6) -> None:
        import multiprocessing as mp

        self.dsn = dsn
        self.days = days
        self.settings = settings.model_copy(update={
            "positions_archive_dir": ".run/hotpath-archive", "positions_retire_per_run": 1})
        # A process of its own, as the scheduler is in production (not this one's interpreter).
        ctx = mp.get_context("spawn")
        self.stop = ctx.Event()
        self.counts = ctx.Array("i", 4)
        self.proc = ctx.Process(target=_maintenance_loop,
                                args=(dsn, self.settings, self.stop, self.counts), daemon=True)
        self.done: dict[str, int] = {}

    def __enter__(self) -> Maintenance:
        from datetime import UTC, datetime, timedelta

        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as c:
            c.execute("INSERT INTO supervisees (office_id, full_name, case_number, "
                      "supervision_type, active) SELECT id, 'ended', 'HOTPATH-ENDED', "
                      "'probation', false FROM org_units WHERE kind = 'judicial_office' LIMIT 1 "
                      "ON CONFLICT DO NOTHING")
            sid = c.execute("SELECT id FROM supervisees WHERE case_number = 'HOTPATH-ENDED'"
                            ).fetchone()[0]  # type: ignore[index]
            for k in range(self.days):
                day = datetime(2001, 1, 1, tzinfo=UTC) + timedelta(days=k)
                c.execute("SELECT partman.create_partition_time('public.positions', "
                          "ARRAY[%s::timestamptz], false)", (day,))
                c.execute("""INSERT INTO positions (device_id, supervisee_id, fix_time,
                               received_at, lon, lat, raw_lon, raw_lat, crs, accuracy, source)
                             SELECT 'old-' || (g %% 1000), %s, %s + g * interval '400 ms', %s,
                                    114.3, 30.6, 114.3, 30.6, 'wgs84', 10, 'native_mqtt'
                               FROM generate_series(1, 200000) g""", (sid, day, day))
                # Settled before the load starts, as a year-old day is: otherwise autovacuum
                # and the checkpoint of these inserts run during the measurement instead.
                c.execute(f"VACUUM (ANALYZE) positions_p{day:%Y_%m_%d}")
            c.execute("CHECKPOINT")
        self.proc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.proc.join(60)
        self.done = dict(zip(("archived and dropped", "made ahead", "lock waits",
                              "seconds given way to ingest"), self.counts[:], strict=True))


def _maintenance_loop(dsn: str, settings: Any, stop: Any, counts: Any) -> None:
    from datetime import UTC, datetime, timedelta

    import psycopg
    import redis

    from alerts.silences import ingest_busy
    from store import partitions

    now = datetime.now(UTC)
    k = 0
    r = redis.Redis.from_url(settings.redis_url)

    def busy() -> bool:  # as the scheduler does: give way while an ingest worker is saturated
        return ingest_busy(r, settings.redis_prefix, settings.positions_archive_yield_busy)

    with psycopg.connect(dsn, autocommit=True) as c:
        while not stop.is_set():
            k += 1
            report = partitions.retire(c, settings, now, busy=busy)
            counts[3] += int(report.yielded_s)
            counts[0] += len(report.archived)
            counts[2] += report.lock_waits
            c.execute("SELECT partman.create_partition_time('public.positions', "
                      "ARRAY[%s::timestamptz], false)", (now + timedelta(days=30 + k),))
            counts[1] += 1
            if not report.archived:
                stop.wait(0.5)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phones", type=int, default=20_000)
    ap.add_argument("--reports", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=15_000.0,
                    help="reports/s of the fleet (sets each phone's interval)")
    ap.add_argument("--batch", type=int, default=500, help="reports per pipeline call")
    ap.add_argument("--wander", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--maintenance", action="store_true",
                    help="run the second half of the steady phase while partitions are made, "
                         "archived and dropped")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="print the N functions with the most own time in the steady phase")
    run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
