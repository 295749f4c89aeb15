"""Two API instances behind HAProxy (deploy/haproxy/api.cfg): one is killed under open consoles,
which reconnect through HAProxy to the other and miss no alert event (issue 15, part 4)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from playwright.sync_api import Browser, Response

from alerts.worker import AlertWorker
from store.settings import Settings
from tests.browser import open_console
from tests.conftest import PASSWORD, Org
from tests.services import free_port, in_thread, worker_env
from tests.test_delivery import raise_alert

ROOT = Path(__file__).resolve().parents[1]
CFG = ROOT / "deploy" / "haproxy" / "api.cfg"


def _wait_port(port: int, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {port}")


@contextlib.contextmanager
def cluster(settings: Settings, tmp: Path) -> Iterator[tuple[str, dict[str, subprocess.Popen[bytes]]]]:
    """api1 and api2 (uvicorn processes on the test database) behind HAProxy with the shipped
    configuration, only its addresses changed; yields HAProxy's URL and the instances."""
    front, ports = free_port(), {"api1": free_port(), "api2": free_port()}
    cfg = CFG.read_text().replace("bind 127.0.0.1:8080", f"bind 127.0.0.1:{front}") \
        .replace("log stdout format raw local0", "log stderr format raw local0 notice") \
        .replace("maxconn 20000", "maxconn 1000") \
        .replace("server api1 127.0.0.1:8001", f"server api1 127.0.0.1:{ports['api1']}") \
        .replace("server api2 127.0.0.1:8002", f"server api2 127.0.0.1:{ports['api2']}")
    assert f":{ports['api2']} check" in cfg
    (tmp / "haproxy.cfg").write_text(cfg)
    env = worker_env(settings, f"{settings.mqtt_client_id}-failover")
    apis = {name: subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "api.app:app", "--host", "127.0.0.1", "--port",
         str(port), "--no-access-log"], env=env, cwd=ROOT,
        stdout=(tmp / f"{name}.log").open("wb"), stderr=subprocess.STDOUT)
        for name, port in ports.items()}
    proxy = subprocess.Popen(["haproxy", "-db", "-f", str(tmp / "haproxy.cfg")],
                             stdout=(tmp / "haproxy.log").open("wb"), stderr=subprocess.STDOUT)
    try:
        for port in (*ports.values(), front):
            _wait_port(port)
        base = f"http://127.0.0.1:{front}"
        seen = set()
        for _ in range(100):  # both instances in rotation (checked every second)
            r = httpx.get(f"{base}/api/v1/readyz")
            if r.status_code == 200:
                seen.add(r.headers["x-ccs-instance"])
            if seen == set(ports):
                break
            time.sleep(0.1)
        assert seen == set(ports), (seen, (tmp / "haproxy.log").read_text()[-2000:])
        yield base, apis
    finally:
        for p in (*apis.values(), proxy):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in (*apis.values(), proxy):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.mark.long
def test_an_api_instance_killed_under_open_consoles_loses_them_no_alert_event(
        settings: Settings, org: Org, browser: Browser, db: psycopg.Connection, tmp_path: Path):
    with cluster(settings, tmp_path) as (base, apis), in_thread(AlertWorker(settings)):
        c = open_console(browser, base)
        feeds: list[tuple[str, str]] = []  # (instance, status) of each live-feed response

        def on_response(r: Response) -> None:
            if "/alerts/stream/live" in r.url:
                feeds.append((r.headers.get("x-ccs-instance", "?"), str(r.status)))

        c.page.on("response", on_response)
        c.sign_in("jiangan-officer", PASSWORD)
        c.open_duty()
        queue = c.page.locator("#alert-queue li.queue-item")
        first = raise_alert(db, org, severity="high")
        c.page.locator(f"#alert-queue li[data-alert-id='{first}']").wait_for(timeout=15_000)
        assert len(feeds) == 1 and feeds[0][1] == "200", feeds
        serving = feeds[0][0]
        survivor = next(n for n in apis if n != serving)

        # The instance holding the officer's feed dies at once (no goodbye to anyone).
        apis[serving].send_signal(signal.SIGKILL)
        apis[serving].wait(10)
        killed_at = time.monotonic()
        # An alert raised while the console has no feed at all.
        during = raise_alert(db, org, severity="medium", kind="exclusion_entry")
        c.page.locator(f"#alert-queue li[data-alert-id='{during}']").wait_for(timeout=30_000)
        back_after = time.monotonic() - killed_at
        c.page.wait_for_selector("#feed-status.live", timeout=10_000)
        after = raise_alert(db, org, severity="low", kind="curfew_breach")
        c.page.locator(f"#alert-queue li[data-alert-id='{after}']").wait_for(timeout=15_000)
        c.shot("failover-console")

        # The console reconnected through HAProxy to the survivor, and shows each alert once.
        assert feeds[-1] == (survivor, "200"), feeds
        ids = [int(x) for x in queue.evaluate_all(
            "els => els.map(e => e.getAttribute('data-alert-id'))")]
        assert sorted(ids) == sorted([first, during, after]), ids
        assert back_after < 15, back_after
        print(f"\n{serving} killed under an open console; the alert raised meanwhile was on its "
              f"screen {back_after:.1f} s later, through {survivor}")
        # The sign-in and the duty watch outlived the instance (PostgreSQL and Redis hold them):
        # the survivor resumed the same watch, one opening, one audit row, no second sign-in.
        assert db.execute("SELECT count(*) FROM audit_log WHERE action = 'alert.stream_subscribe'"
                          ).fetchone() == (1,)
        assert c.page.locator("#username").count() == 0
        assert c.problems == [] or all("stream/live" in p or "ERR_" in p for p in c.problems), \
            c.problems
        c.context.close()
    assert os.path.exists(tmp_path / f"{serving}.log")
