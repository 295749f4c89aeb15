"""The short fault-injection run (`python -m simulators.chaos --short`, ~90 s).

Its own PostgreSQL, Redis and Mosquitto (free loopback ports, a temporary directory) under 300
reports/s for 60 s from simulated phones over QoS 1, two ingest workers, one SIGKILL of each
worker kind and one Redis restart that keeps its data. The full run is `make chaos`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_short_fault_injection_run_loses_no_acknowledged_fix_and_opens_no_alert_twice(
    tmp_path: Path,
) -> None:
    out = tmp_path / "chaos.json"
    run = subprocess.run(
        [sys.executable, "-m", "simulators.chaos", "--short", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert out.exists(), f"the run did not finish:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    res = json.loads(out.read_text())
    report = run.stdout[-4000:]
    assert res["acked"] > 10_000, report  # the load really ran (300/s for 60 s)
    assert [f["action"] for f in res["faults"]] == [
        "kill:ingest-0", "kill:alerts", "kill:delivery", "redis:keep"], report
    assert res["lost_acked_fixes"] == 0, report
    assert res["alerts_opened_twice"] == 0, report
