"""store/observe.py: the probes a hung or disconnected worker fails, and the fix id in logs."""

from __future__ import annotations

import inspect
import io
import json
import logging
import subprocess
import sys
from datetime import UTC, datetime

import httpx

from alerts import worker
from ingest import mqtt_worker
from store.observe import Health, fix_id, json_formatter


def test_liveness_fails_when_the_loop_stops_beating_and_readiness_follows_its_check():
    state = {"ready": True}

    def ready() -> tuple[bool, str]:
        if state["ready"] is None:
            raise ConnectionError("database gone")
        return (bool(state["ready"]), "connected" if state["ready"] else "no broker")

    h = Health("probe-test", ready, stale_s=60)
    port = h.start(0, "127.0.0.1")
    base = f"http://127.0.0.1:{port}"
    try:
        assert httpx.get(f"{base}/livez").status_code == 200
        assert httpx.get(f"{base}/readyz").text == "ok: probe-test: connected\n"
        h.last_beat -= 61  # the main loop hung a minute ago
        r = httpx.get(f"{base}/livez")
        assert r.status_code == 503 and "last heartbeat 61" in r.text
        h.beat()
        assert httpx.get(f"{base}/livez").status_code == 200
        state["ready"] = False
        assert (httpx.get(f"{base}/readyz").status_code, httpx.get(f"{base}/readyz").text) == (
            503, "failing: probe-test: no broker\n")
        state["ready"] = None  # a check that raises is "not ready", not a crashed probe
        r = httpx.get(f"{base}/readyz")
        assert r.status_code == 503 and "ConnectionError: database gone" in r.text
        m = httpx.get(f"{base}/metrics")
        assert m.status_code == 200
        assert 'ccs_process_heartbeat_timestamp_seconds{process="probe-test"}' in m.text
        assert httpx.get(f"{base}/other").status_code == 404
    finally:
        h.close()


def test_a_json_log_line_carries_the_fix_id_and_extra_fields():
    t = datetime(2026, 12, 6, 8, 30, 15, 250000, tzinfo=UTC)
    assert fix_id("dev-1", t) == "dev-1@2026-12-06T08:30:15.250Z"
    assert fix_id("dev-1", t.timestamp()) == fix_id("dev-1", "2026-12-06T16:30:15.25+08:00")
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(json_formatter("ingest"))
    log = logging.getLogger("observe-test")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("alert %s opened", 7, extra={"fix_id": fix_id("dev-1", t), "alert_id": 7})
    finally:
        log.removeHandler(handler)
    line = json.loads(out.getvalue())
    assert line["message"] == "alert 7 opened" and line["level"] == "WARNING"
    assert (line["process"], line["logger"], line["fix_id"], line["alert_id"]) == (
        "ingest", "observe-test", "dev-1@2026-12-06T08:30:15.250Z", 7)
    assert datetime.strptime(line["time"], "%Y-%m-%dT%H:%M:%S%z")


def test_the_workers_collector_runs_every_threshold_allocations_with_start_up_frozen():
    # In a child process: the thresholds and the frozen heap are the process's own.
    code = ("import gc; from store.runtime import tune_gc; d = gc.get_threshold(); "
            "print(d[0], tune_gc(0)[0], tune_gc(12345)[0], gc.get_threshold()[0], "
            "gc.get_freeze_count() > 1000)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    default = out[0]
    assert out[1] == default  # 0 keeps the interpreter's default
    assert out[2:] == ["12345", "12345", "True"]
    # ... and the workers start with the setting's value (the main of each calls tune_gc)
    for main in (mqtt_worker.main, worker.main):
        assert "tune_gc(settings.gc_threshold)" in inspect.getsource(main)
