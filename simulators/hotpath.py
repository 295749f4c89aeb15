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

import numpy as np
import orjson

from simulators.bench import (
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
    out = {"redis": 0.0, "postgres": 0.0}
    for name, key in (("redis-server", "redis"), ("postgres", "postgres")):
        for pid in _pids_named(name):
            out[key] += _proc_cpu(pid) or 0.0
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
    topic = "devices/{}/location"

    def phase(name: str, part: list[tuple[str, bytes]], profile: bool) -> None:
        srv0, cpu0, t0 = _server_cpu(), time.process_time(), time.perf_counter()
        prof = cProfile.Profile() if profile else None
        if prof:
            prof.enable()
        accepted = 0
        for k in range(0, len(part), args.batch):
            now = time.time()
            msgs = [RawMessage(Channel.NATIVE_MQTT, p, d, topic.format(d), now)
                    for d, p in part[k:k + args.batch]]
            accepted += sum(r.accepted for r in pipe.process(msgs, now))
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
              f"hits, {pipe.states.cache_misses:,} misses so far")
        if prof:
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(args.profile)
            print(s.getvalue())

    first = min(args.phones, len(reports))
    phase("first report of each phone", reports[:first], False)
    phase("steady", reports[first:], args.profile > 0)
    pipe.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phones", type=int, default=20_000)
    ap.add_argument("--reports", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=15_000.0,
                    help="reports/s of the fleet (sets each phone's interval)")
    ap.add_argument("--batch", type=int, default=500, help="reports per pipeline call")
    ap.add_argument("--wander", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="print the N functions with the most own time in the steady phase")
    run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
