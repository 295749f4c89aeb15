"""The duty view under load: 1,000 supervisees in view of one console, in Debian's Chromium.

Everything is real and on this machine: a fresh `ccs_bench` database, the API (uvicorn), the
ingest and alert workers as processes, the project's Mosquitto. 1,000 phones of 13 Wuhan
districts each report one fix over MQTT; the city bureau's administrator (who sees all of them)
signs in and opens the duty view. Measured:

* first contentful paint and "usable map" (the duty data loaded and every person drawn: the
  console's own `ccs-map-ready` performance mark), from navigation start;
* alert to screen: phones leave their district one at a time (a fix well outside, at good
  accuracy, an hour after the last one inside: one strong fix decides), and the time from the
  alert's commit (alerts.opened_at, database clock) and from the fix's publication to the
  alert's row appearing in the console's queue (a MutationObserver, browser clock; one machine,
  one clock).

`python -m simulators.console_bench [--people 1000] [--alerts 20]`
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from simulators.bench import (
    BENCH_PREFIX,
    ROOT,
    BenchEnv,
    bench_env,
    clear_redis,
    machine_facts,
    recreate_database,
    start_worker,
    stop_workers,
    wait_ingest_ready,
)
from simulators.fleet import device_id, district_adcodes, district_index

PASSWORD = secrets.token_urlsafe(16)


def fresh_world(env: BenchEnv, people: int) -> None:
    """Drop and create ccs_bench, migrate, seed Wuhan's organisation and `people` phones."""
    from api.security import hash_password
    from simulators.fleet import provision_fleet
    from store.db import reset_engine, session_factory
    from store.demo import seed_demo

    recreate_database(env)
    with session_factory()() as session:
        seed_demo(session, supervisees_per_office=0)
        session.commit()
        provision_fleet(session, people)
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        conn.execute("UPDATE staff SET password_hash = %s WHERE username = 'admin'",
                     (hash_password(PASSWORD),))
    reset_engine()


def district_points() -> tuple[dict[str, tuple[float, float]], dict[str, tuple[float, float]]]:
    """Per district (GCJ-02): a point deep inside, and a point deep inside a far district."""
    from shapely import maximum_inscribed_circle
    from shapely.geometry import shape

    from store.demo import load_regions

    feats = {f["properties"]["adcode"]: shape(f["geometry"]) for f in load_regions()["features"]
             if f["properties"]["level"] == "district"}
    inside = {}
    for code, geom in feats.items():
        line = maximum_inscribed_circle(geom, 1e-4)
        inside[code] = (line.coords[0][0], line.coords[0][1])
    away = {}
    for code, (x, y) in inside.items():
        # The district whose inner point is furthest: kilometres beyond the border.
        far = max(inside, key=lambda c: (inside[c][0] - x) ** 2 + (inside[c][1] - y) ** 2)
        away[code] = inside[far]
    return inside, away


def publish(env: BenchEnv, fixes: list[tuple[str, float, float, float]]) -> None:
    """(device, lon, lat, time) fixes over MQTT, QoS 1, each acknowledged by the broker."""
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                    client_id=f"console-bench-{os.getpid()}", protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(500)
    c.connect(env.mqtt_host, env.mqtt_port)
    c.loop_start()
    try:
        infos = [c.publish(f"{env.topic_prefix}devices/{dev}/location",
                           orjson.dumps({"time": t, "lon": lon, "lat": lat, "accuracy": 8.0,
                                         "crs": "gcj02", "provider": "gps"}), qos=1)
                 for dev, lon, lat, t in fixes]
        for info in infos:
            info.wait_for_publish(30)
    finally:
        c.disconnect()
        c.loop_stop()


def start_api(env: BenchEnv, port: int, logdir: Path) -> subprocess.Popen[bytes]:
    child = dict(os.environ)
    child.update({"CCS_DATABASE_URL": env.url, "CCS_REDIS_URL": env.redis_url,
                  "CCS_REDIS_PREFIX": BENCH_PREFIX, "CCS_MQTT_TOPIC_PREFIX": env.topic_prefix})
    fh = (logdir / "api.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "api.app:app", "--host", "127.0.0.1",
                             "--port", str(port), "--no-access-log"], cwd=ROOT, env=child,
                            stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    fh.close()
    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v1/healthz").status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit("the API did not start (see api.log)")


def wait_positions(env: BenchEnv, want: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        while True:
            (n,) = conn.execute("SELECT count(DISTINCT device_id) FROM positions").fetchone()  # type: ignore[misc]
            if n >= want or time.monotonic() > deadline:
                return int(n)
            time.sleep(0.5)


OBSERVER = """
() => {
  window.__seen = {};
  const note = () => document.querySelectorAll('#alert-queue li[data-alert-id]').forEach(li => {
    const id = li.dataset.alertId;
    if (!(id in window.__seen)) window.__seen[id] = Date.now();
  });
  new MutationObserver(note).observe(document.getElementById('alert-queue'),
                                     {childList: true, subtree: true});
  note();
}
"""


def run(args: argparse.Namespace) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    from tests.browser import ARGS, CHROMIUM

    env = bench_env()
    logdir = Path(args.logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    print(f"[console-bench] fresh database with {args.people} supervisees", flush=True)
    fresh_world(env, args.people)
    clear_redis(env)
    adcodes = district_adcodes()
    inside, away = district_points()
    home_of = {device_id(i): adcodes[int(district_index(i, len(adcodes)))]
               for i in range(args.people)}
    workers = [start_worker("ingest", "ingest", env, logdir),
               start_worker("alerts", "alerts", env, logdir)]
    api = start_api(env, args.port, logdir)
    base = f"http://127.0.0.1:{args.port}"
    out: dict[str, Any] = {"people": args.people}
    try:
        wait_ingest_ready(env, workers[0])
        t0 = time.time() - 3600
        rng = np.random.default_rng(7)
        fixes = []
        for dev, code in home_of.items():
            lon, lat = inside[code]
            # Spread people around their district's inner point (about ±1 km).
            fixes.append((dev, lon + rng.uniform(-0.01, 0.01), lat + rng.uniform(-0.01, 0.01), t0))
        publish(env, fixes)
        got = wait_positions(env, args.people)
        print(f"[console-bench] {got} phones reported", flush=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(f"{base}/")
            page.fill("#username", "admin")
            page.fill("#password", PASSWORD)
            page.click("#signin")
            page.wait_for_selector("header.top")
            # Open the watch once (the purpose dialog), then measure a clean load of the view.
            page.goto(f"{base}/#/duty")
            page.fill("dialog.dialog input[name=purpose]", "benchmark")
            page.click("dialog.dialog button[type=submit]")
            page.wait_for_function("() => performance.getEntriesByName('ccs-map-ready').length > 0",
                                   timeout=120_000)
            loads = []
            for _ in range(args.loads):
                page.reload()
                page.wait_for_function(
                    "() => performance.getEntriesByName('ccs-map-ready').length > 0", timeout=120_000)
                m = page.evaluate("""() => ({
                    fcp: (performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime,
                    ready: performance.getEntriesByName('ccs-map-ready')[0].startTime,
                    people: document.querySelectorAll('path.person').length / 1})""")
                loads.append(m)
            out["loads"] = loads
            page.wait_for_selector("#feed-status.live")
            page.evaluate(OBSERVER)
            lat_commit, lat_fix = [], []
            with psycopg.connect(env.dsn, autocommit=True) as conn:
                for k in range(args.alerts):
                    dev = device_id(k * 37 % args.people)
                    lon, lat = away[home_of[dev]]
                    sent = time.time()
                    publish(env, [(dev, lon, lat, sent)])
                    deadline = time.monotonic() + 30
                    row = None
                    while time.monotonic() < deadline:
                        row = conn.execute(
                            "SELECT id, extract(epoch FROM opened_at) FROM alerts "
                            "WHERE device_id = %s AND kind = 'area_exit'", (dev,)).fetchone()
                        if row is not None:
                            seen = page.evaluate(f"window.__seen['{row[0]}']")
                            if seen is not None:
                                lat_commit.append(seen / 1000 - float(row[1]))
                                lat_fix.append(seen / 1000 - sent)
                                break
                        time.sleep(0.02)
                    else:
                        print(f"[console-bench] alert for {dev} not on screen in 30 s", flush=True)
            out["alert_to_screen_s"] = lat_commit
            out["fix_to_screen_s"] = lat_fix
            page.screenshot(path=str(logdir / "console-bench.png"))
            browser.close()
    finally:
        api.terminate()
        api.wait(10)
        stop_workers(workers)
    return out


def report(res: dict[str, Any]) -> None:
    loads = res["loads"]
    fcp = np.array([x["fcp"] for x in loads])
    ready = np.array([x["ready"] for x in loads])
    people = {int(x["people"]) for x in loads}
    a = np.array(res["alert_to_screen_s"]) * 1000
    f = np.array(res["fix_to_screen_s"]) * 1000
    print("\n## Duty view, 1,000 supervisees in view (python -m simulators.console_bench)\n")
    for k, v in machine_facts():
        print(f"- {k}: {v}")
    print("\n| measure | median | worst | runs |\n|---|---:|---:|---:|")
    print(f"| first contentful paint | {np.median(fcp):.0f} ms | {fcp.max():.0f} ms | {len(fcp)} |")
    print(f"| usable map ({', '.join(map(str, sorted(people)))} people drawn) | {np.median(ready):.0f} ms "
          f"| {ready.max():.0f} ms | {len(ready)} |")
    if len(a):
        print(f"| alert committed → on screen | {np.median(a):.0f} ms (p95 {np.percentile(a, 95):.0f}) "
              f"| {a.max():.0f} ms | {len(a)} of {res['alerts']} |")
        print(f"| fix published → alert on screen | {np.median(f):.0f} ms "
              f"(p95 {np.percentile(f, 95):.0f}) | {f.max():.0f} ms | {len(f)} of {res['alerts']} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--people", type=int, default=1000)
    ap.add_argument("--alerts", type=int, default=20)
    ap.add_argument("--loads", type=int, default=5, help="duty-view loads measured")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--logdir", default=str(ROOT / "build" / "console-bench"))
    args = ap.parse_args(argv)
    res = run(args)
    res["alerts"] = args.alerts
    (Path(args.logdir) / "result.json").write_text(json.dumps(res, indent=1))
    report(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
