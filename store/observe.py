"""What every process shows its operators: logs, liveness, readiness and metrics.

- **Logs.** `setup_logging(process)`: plain lines for a terminal, or one JSON object a line
  (`CCS_LOG_FORMAT=json`, what systemd's journal, Loki or Elasticsearch take) with the time,
  level, logger, process and whatever a line adds (`extra=`): `fix_id`, `alert_id`,
  `outbox_id`, `notification_id`, `channel`. A fix keeps one id from ingest to the
  notification it caused: `fix_id(device, fix_time)` (its natural key, the one replays are
  recognised by), carried in the alert's outbox payload (`alerts/service.py`) to the live feed
  and the delivery worker.
- **Health.** `Health(process)` serves, on `CCS_HEALTH_PORT`, `GET /livez` (200 while the
  process' main loop has beaten within `stale_s`: a hung loop is restarted by systemd or
  Kubernetes), `GET /readyz` (200 when the process has what it needs: its `ready()` check) and
  `GET /metrics` (this process' Prometheus registry, with the heartbeat's time). No personal data
  is served; the port is for the host's or the cluster's monitoring, not the internet.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Gauge, generate_latest
from pythonjsonlogger.json import JsonFormatter

HEARTBEAT = Gauge("ccs_process_heartbeat_timestamp_seconds",
                  "Unix time of the process' last main-loop heartbeat", ["process"])


def fix_id(device_id: str | None, fix_time: datetime | str | float | None) -> str:
    """One fix's id in logs: `<device>@<fix time, UTC, ISO 8601 with milliseconds>`."""
    if isinstance(fix_time, (int, float)):
        fix_time = datetime.fromtimestamp(fix_time, UTC)
    elif isinstance(fix_time, str):
        fix_time = datetime.fromisoformat(fix_time)
    when = fix_time.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z") \
        if fix_time is not None else "?"
    return f"{device_id or '?'}@{when}"


def json_formatter(process: str) -> logging.Formatter:
    """One JSON object a record: time, level, logger, process, message and the `extra` fields."""
    return JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s",
                         rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                         static_fields={"process": process}, datefmt="%Y-%m-%dT%H:%M:%S%z")


def setup_logging(process: str, fmt: str = "text", level: int = logging.INFO) -> None:
    """Configure the root logger once for this process (`fmt`: "text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(json_formatter(process))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)


class Health:
    """A process' heartbeat, readiness check and HTTP endpoints (`start(port)`)."""

    def __init__(self, process: str, ready: Callable[[], tuple[bool, str]] | None = None,
                 stale_s: float = 60.0) -> None:
        self.process = process
        self.ready = ready or (lambda: (True, "ok"))
        self.stale_s = stale_s
        self.last_beat = time.time()
        self._gauge = HEARTBEAT.labels(process)
        self._gauge.set(self.last_beat)
        self.server: ThreadingHTTPServer | None = None

    def beat(self) -> None:
        """The main loop is alive (call it at least every `stale_s`, also while idle)."""
        self.last_beat = time.time()
        self._gauge.set(self.last_beat)

    def live(self) -> tuple[bool, str]:
        age = time.time() - self.last_beat
        return (age <= self.stale_s,
                f"last heartbeat {age:.1f} s ago (stale after {self.stale_s:g} s)")

    def check_ready(self) -> tuple[bool, str]:
        try:
            return self.ready()
        except Exception as e:  # noqa: BLE001 (a check that raises means "not ready")
            return False, f"{type(e).__name__}: {e}"

    def start(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve the endpoints on a daemon thread; returns the port (0: a free one)."""
        health = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
                    return
                check = {"/livez": health.live, "/readyz": health.check_ready}.get(path)
                if check is None:
                    self._send(404, b"not found\n", "text/plain")
                    return
                ok, detail = check()
                self._send(200 if ok else 503,
                           f"{'ok' if ok else 'failing'}: {health.process}: {detail}\n".encode(),
                           "text/plain; charset=utf-8")

            def _send(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:  # probes every few seconds: not logged
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name=f"health-{self.process}",
                         daemon=True).start()
        return int(self.server.server_address[1])

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
