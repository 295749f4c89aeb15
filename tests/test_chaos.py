"""The short fault-injection run (`python -m simulators.chaos --short`, ~70 s).

Its own PostgreSQL, Redis and Mosquitto (free loopback ports, a temporary directory) under 300
reports/s for 45 s from simulated phones over QoS 1, two ingest workers, one SIGKILL of each
worker kind and one Redis restart that keeps its data. The full run is `make chaos`.
"""

from __future__ import annotations

from pathlib import Path

from tests.services import run_chaos


def test_short_fault_injection_run_loses_nothing_and_alerts_every_silence_once_and_only_those(
    tmp_path: Path,
) -> None:
    res, report = run_chaos(tmp_path)
    assert res["acked"] > 10_000, report  # the load really ran (300/s for 45 s)
    assert [f["action"] for f in res["faults"]] == [
        "kill:ingest-0", "kill:alerts", "kill:delivery", "redis:keep"], report
    assert res["lost_acked_fixes"] == 0, report
    assert res["alerts_opened_twice"] == 0, report
    # Every phone told to stop was alerted once; none that kept reporting was called silent
    # (a killed ingest worker's queued reports hold the silence check back: its watermark).
    assert res["silences_not_alerted"] == 0 and res["silences_alerted_twice"] == 0, report
    assert res["false_silence_alerts"] == 0, report
