"""The short fault-injection run (`python -m simulators.chaos --short`, ~70 s).

Its own PostgreSQL, Redis and Mosquitto (free loopback ports, a temporary directory) under 300
reports/s for 45 s from simulated phones over QoS 1, two ingest workers, one SIGKILL of each
worker kind and one Redis restart that keeps its data. The full run is `make chaos`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.services import assert_nothing_lost, chaos_run


@pytest.mark.long
def test_short_fault_injection_run_loses_nothing_and_alerts_every_silence_once_and_only_those(
    tmp_path: Path,
) -> None:
    res, report = chaos_run(tmp_path, "--short")
    assert res["acked"] > 10_000, report  # the load really ran (300/s for 45 s)
    assert [f["action"] for f in res["faults"]] == [
        "kill:ingest-0", "kill:alerts", "kill:delivery", "redis:keep"], report
    # (A killed ingest worker's queued reports hold the silence check back: its watermark.)
    assert_nothing_lost(res, report)
