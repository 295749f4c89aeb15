"""`python -m simulators`: a fleet of simulated phones reporting over MQTT.

    python -m simulators --phones 50 --interval 5 --wander 0.2 --duration 0 --seed 1 --provision

The broker and database come from the CCS_* settings. With --provision the supervisees and
devices are created first (in the seeded demo organisation); without it, missing devices are
reported, since the ingest worker dead-letters fixes of unknown devices.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time

import redis
from sqlalchemy import func, select

from simulators.fleet import DemoOrgMissing, device_id, provision_fleet
from simulators.phone import PhoneConfig, PhoneFleet, districts_from_geojson
from simulators.publisher import MqttTarget, publish_fleet
from store.db import session_factory
from store.demo import load_regions
from store.models import Device
from store.settings import get_settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m simulators", description=__doc__.split("\n")[0])
    p.add_argument("--phones", type=int, default=50, help="number of phones (default 50)")
    p.add_argument("--interval", type=float, default=5.0,
                   help="seconds between two reports of one phone (default 5)")
    p.add_argument("--wander", type=float, default=0.2,
                   help="share of phones that leave their district (default 0.2)")
    p.add_argument("--gcj02", type=float, default=0.3,
                   help="share of phones reporting GCJ-02 coordinates (default 0.3)")
    p.add_argument("--duration", type=float, default=0.0,
                   help="seconds to run; 0 runs until Ctrl-C (default)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--provision", action="store_true",
                   help="create the simulated supervisees and devices first")
    p.add_argument("--client-id", default="ccs-simulator", help="MQTT client id")
    args = p.parse_args(argv)
    if args.phones < 1 or args.interval <= 0.001 or args.duration < 0:
        p.error("--phones must be >= 1, --interval > 0.001 and --duration >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the simulator; returns the process exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    s = get_settings()
    ids = [device_id(i) for i in range(args.phones)]
    with session_factory()() as session:
        if args.provision:
            r = redis.Redis.from_url(s.redis_url)
            try:
                res = provision_fleet(session, args.phones, r, s.redis_prefix)
            except DemoOrgMissing as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            finally:
                r.close()
            print(f"provisioned {res.phones} phones ({res.supervisees_written} supervisees and "
                  f"{res.devices_written} devices written)")
        known = session.scalar(
            select(func.count()).select_from(Device).where(Device.id.in_(ids), Device.active)
        ) or 0
    if known < args.phones:
        print(f"warning: only {known} of {args.phones} devices are enrolled; fixes of the others "
              "will be dead-lettered (use --provision)", file=sys.stderr)

    cfg = PhoneConfig(wander_share=args.wander, gcj02_share=args.gcj02)
    t0 = time.time() + 0.2
    fleet = PhoneFleet(districts_from_geojson(load_regions()), args.phones, args.seed, cfg, t0)
    stop_at = t0 + args.duration if args.duration else float("inf")
    tty = sys.stdout.isatty()
    shown = {"t": 0.0, "sent": 0}

    def progress(sent: int, acked: int, out: int) -> None:
        now = time.time()
        if now - shown["t"] < (1.0 if tty else 5.0):
            return
        rate = (sent - shown["sent"]) / (now - shown["t"]) if shown["t"] else 0.0
        shown.update(t=now, sent=sent)
        line = (f"elapsed {now - t0:7.1f} s  fixes sent {sent:9d}  acked {acked:9d}  "
                f"rate {rate:8.1f}/s  wanderers out {out:5d}/{int(fleet.wanderer.sum())}")
        print("\r" + line if tty else line, end="" if tty else "\n", flush=True)

    print(f"{args.phones} phones, one report every {args.interval:g} s "
          f"({args.phones / args.interval:.1f}/s), wander {args.wander:g}, seed {args.seed}, "
          f"broker {s.mqtt_host}:{s.mqtt_port}; Ctrl-C stops")
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())  # finish cleanly, print the summary
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    target = MqttTarget(s.mqtt_host, s.mqtt_port, args.client_id, s.mqtt_username,
                        s.mqtt_password, getattr(s, "mqtt_topic_prefix", ""))
    try:
        log = publish_fleet(fleet, args.phones, args.interval, t0, stop_at, target, progress, stop)
    except ConnectionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    span = max(log.finished - log.started, 1e-9)
    print(f"\nsent {log.sent} fixes in {span:.1f} s ({log.sent / span:.1f}/s), "
          f"{log.acked} acknowledged by the broker; wanderers out at the end: "
          f"{fleet.wanderers_out()}/{int(fleet.wanderer.sum())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
