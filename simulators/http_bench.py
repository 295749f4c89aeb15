"""HTTP ingest under load: `python -m simulators.http_bench`.

`make bench` measures phones on MQTT, where the ingest workers commit thousands of reports per
transaction. Phones on HTTP (Traccar Client and other OsmAnd-protocol apps, OwnTracks in HTTP
mode) each wait for their own answer: a request is authenticated, decoded, judged and committed
before it is answered, as the app needs it (an app keeps and resends what was not accepted);
the requests waiting in an API process at the same moment are recorded together, as a batch.
This bench measures that path end to end on this machine: the real API under
uvicorn, on a fresh `ccs_bench` database with a fleet whose device secrets it knows, and wrk
(Debian's package; installed when missing, as root) sending the Traccar Client's OsmAnd GET
requests as fast as `--connections` keep-alive connections allow (closed loop: each connection
sends its next request when the answer came). It reports the requests answered per second, the
fixes stored (each answered 200 must be stored), the answer latency, and the CPU of the API,
PostgreSQL and Redis per stored fix.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg

from simulators.bench import (
    BENCH_PREFIX,
    ROOT,
    _machine_busy,
    _pids_named,
    _proc_times,
    bench_env,
    clear_redis,
    fresh_database,
    machine_facts,
)
from store.backup import free_port

# The secret of simulated phone i: derived, so that the load generator can name it; the database
# keeps only its hash, as for every phone.
_KEY = b"ccs-http-bench"


def phone_secret(device: str) -> str:
    """The bench's secret of a simulated phone (never a real phone's: those are random)."""
    return hmac.new(_KEY, device.encode(), "sha256").hexdigest()


def set_known_secrets(dsn: str, phones: int) -> None:
    """Give simulated phones 0..phones-1 the secrets `phone_secret` derives."""
    from api.security import hash_device_secret
    from simulators.fleet import device_id

    rows = [(hash_device_secret(phone_secret(device_id(i))), device_id(i)) for i in range(phones)]
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany("UPDATE devices SET secret_hash = %s WHERE id = %s", rows)


def request_paths(phones: int, seed: int = 1) -> list[str]:
    """Each phone's OsmAnd GET path without its timestamp (wrk's script adds it): the Traccar
    Client's parameters, at a place inside the phone's own district (WGS-84), a few metres of
    accuracy, no speed (the phone stands still), its battery."""
    from geofence.crs import to_wgs84_mixed
    from simulators.fleet import device_id
    from simulators.phone import PhoneFleet, districts_from_geojson
    from store.demo import load_regions

    fleet = PhoneFleet(districts_from_geojson(load_regions()), phones, seed, None, 0.0,
                       np.arange(phones))
    batch = fleet.advance(0.0, np.arange(phones))
    lon, lat = to_wgs84_mixed(batch.lon, batch.lat, batch.crs)
    out = []
    for i in range(phones):
        dev = device_id(i)
        out.append(f"/api/v1/ingest/osmand/{phone_secret(dev)}?id={dev}&lat={lat[i]:.6f}"
                   f"&lon={lon[i]:.6f}&accuracy={batch.accuracy[i]:.1f}&speed=-1&bearing=-1"
                   f"&altitude=-1&batt={batch.battery[i]:.0f}&timestamp=")
    return out


# wrk's script: every thread takes the phones in turn (thread t: phones t, t + T, ...), each
# request stamped with the current second in milliseconds (Lua's os.time() has whole seconds),
# one millisecond later than that phone's last stamp where it would not be later.
_LUA = r"""
local paths = {}
local n = 0
for line in io.lines("%(paths)s") do n = n + 1; paths[n] = line end
local threads = {}
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("tid", counter - 1)
  thread:set("tcount", %(threads)d)
  table.insert(threads, thread)
end
local k, last, step
function init(args)
  k = tid + 1
  last = {}
  step = tcount
end
function request()
  local i = k
  k = k + step
  if k > n then k = tid + 1 end
  local ms = math.floor(os.time() * 1000)
  if last[i] ~= nil and ms <= last[i] then ms = last[i] + 1 end
  last[i] = ms
  return wrk.format("GET", paths[i] .. ms)
end
"""


def ensure_wrk() -> str:
    """The wrk binary, installed from Debian's packages when missing (as root)."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit("wrk is missing: apt-get install wrk (as root)")
    apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=apt_env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=apt_env,
                   stdout=subprocess.DEVNULL)
    return shutil.which("wrk") or "wrk"


def _wait_up(port: int, timeout: float = 60.0) -> None:
    import http.client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/api/v1/healthz")
            if c.getresponse().status < 500:
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the API did not answer on port {port} within {timeout:g} s")


def _stored(dsn: str) -> tuple[int, dict[str, int]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        (n,) = conn.execute("SELECT count(*) FROM positions WHERE device_id LIKE 'sim%'").fetchone()  # type: ignore[misc]
        dead: dict[str, int] = dict(conn.execute(
            "SELECT reason, count(*) FROM dead_letters GROUP BY reason").fetchall())
    return int(n), dead


def _latency_ms(text: str, pct: str) -> float | None:
    m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not m:
        return None
    v = float(m.group(1))
    return v / 1000 if m.group(2) == "us" else v * 1000 if m.group(2) == "s" else v


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phones", type=int, default=5000)
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of load (default 30)")
    ap.add_argument("--connections", type=int, default=64,
                    help="keep-alive connections, each a phone after another (default 64)")
    ap.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    ap.add_argument("--api-workers", type=int, default=2, help="uvicorn workers (default 2)")
    ap.add_argument("--warmup", type=float, default=20.0,
                    help="seconds of the same load before the measured run, not counted: every "
                         "pipeline's zones, registry and state caches filled, as in a server "
                         "that has been running (default 20; 0: measure from cold)")
    a = ap.parse_args(argv)
    if a.threads > a.phones or a.connections < a.threads:
        ap.error("need at least one phone and one connection per wrk thread")

    env = bench_env()
    wrk = ensure_wrk()
    print(f"HTTP ingest bench, {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC")
    for fact, value in machine_facts():
        print(f"  {fact:14} {value}")
    print(f"  {'plan':14} {a.phones} phones (Traccar Client, OsmAnd GET), {a.connections} "
          f"connections, {a.duration:g} s, {a.api_workers} API workers")
    clear_redis(env)
    fresh_database(env, a.phones, "http://127.0.0.1:9/unused")
    set_known_secrets(env.dsn, a.phones)
    port = free_port()
    child_env = {**os.environ, "CCS_DATABASE_URL": env.url, "CCS_REDIS_URL": env.redis_url,
                 "CCS_REDIS_PREFIX": BENCH_PREFIX, "CCS_MQTT_HOST": env.mqtt_host,
                 "CCS_MQTT_PORT": str(env.mqtt_port), "PYTHONUNBUFFERED": "1"}
    logdir = ROOT / ".run" / "bench"
    logdir.mkdir(parents=True, exist_ok=True)
    with (logdir / "http-api.log").open("wb") as fh:
        api = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "api.app:app", "--host", "127.0.0.1", "--port",
             str(port), "--workers", str(a.api_workers), "--no-access-log"],
            cwd=ROOT, env=child_env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_up(port)
        with tempfile.TemporaryDirectory() as tmp:
            paths = Path(tmp) / "paths.txt"
            paths.write_text("\n".join(request_paths(a.phones)) + "\n")
            script = Path(tmp) / "osmand.lua"
            script.write_text(_LUA % {"paths": paths, "threads": a.threads})
            def procs() -> dict[str, list[int]]:
                return {"api": [api.pid, *_children(api.pid)], "postgres": _pids_named("postgres"),
                        "redis": _pids_named("redis-server")}

            def cpu_of(pids: dict[str, list[int]]) -> dict[str, dict[int, float]]:
                # a process's own CPU and its reaped children's (PostgreSQL's ended workers)
                return {k: {p: sum(_proc_times(p) or (0.0, 0.0)) for p in v}
                        for k, v in pids.items()}

            def load(seconds: float) -> subprocess.CompletedProcess[str]:
                # --timeout 15 s: a slow answer is measured, not dropped
                return subprocess.run(
                    [wrk, "-t", str(a.threads), "-c", str(a.connections), "-d", f"{seconds:g}s",
                     "--timeout", "15s", "--latency", "-s", str(script),
                     f"http://127.0.0.1:{port}"], capture_output=True, text=True, check=False)

            if a.warmup > 0:
                load(a.warmup)
                time.sleep(1.0)
            stored0, _ = _stored(env.dsn)
            cpu0 = cpu_of(procs())
            busy0, t0 = _machine_busy(), time.monotonic()
            run = load(a.duration)
            wall = time.monotonic() - t0
            busy = _machine_busy() - busy0
            # Processes that started within the run (PostgreSQL backends of new connections)
            # count from zero.
            cpu = {k: sum(t - cpu0[k].get(p, 0.0) for p, t in v.items())
                   for k, v in cpu_of(procs()).items()}
        out = run.stdout
        print(out.rstrip())
        m = re.search(r"(\d+) requests in", out)
        sent = int(m.group(1)) if m else 0
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        refused = int(non2xx.group(1)) if non2xx else 0
        errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                           r"timeout (\d+)", out)
        socket_errors = sum(int(x) for x in errors.groups()) if errors else 0
        time.sleep(1.0)  # answered means committed; this is only for the count's own read
        stored, dead = _stored(env.dsn)
        stored -= stored0  # the warm-up's are not this run's
        print()
        print(f"requests answered        {sent:,} in {wall:.1f} s = {sent / wall:,.0f}/s "
              f"({refused:,} not 2xx, {socket_errors:,} socket errors or timeouts; after "
              f"{a.warmup:g} s of warm-up, not counted)")
        print(f"fixes stored             {stored:,} = {stored / wall:,.0f}/s "
              f"(answered 2xx: {sent - refused:,}; dead letters {dead or 'none'})")
        print(f"answer latency p50 / p99 {_latency_ms(out, '50')} / {_latency_ms(out, '99')} ms")
        per = {k: v / max(stored, 1) * 1e6 for k, v in cpu.items()}
        print("CPU per stored fix       " + ", ".join(f"{k} {v:,.0f} us" for k, v in per.items())
              + f"; the whole machine {busy / max(stored, 1) * 1e6:,.0f} us "
              f"({busy / wall * 100:.0f} % of {(os.cpu_count() or 1) * 100} %; wrk and "
              "every PostgreSQL process of the host included)")
        print(json.dumps({"requests": sent, "not_2xx": refused, "socket_errors": socket_errors,
                          "stored": stored, "wall_s": round(wall, 2)}))
        return 0 if stored >= sent - refused and stored > 0 and not socket_errors else 1
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(api.pid, signal.SIGTERM)
        try:
            api.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(api.pid, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    """uvicorn's worker processes."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, ValueError, IndexError):
                continue
    return out


if __name__ == "__main__":
    raise SystemExit(main())
