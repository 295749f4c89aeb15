"""The PostgreSQL primary killed under load (`python -m simulators.chaos --patroni --short`,
~90 s; the full run is `make failover`).

Three PostgreSQL nodes run by Debian's Patroni (synchronous_mode_strict) with one etcd member
and HAProxy in front (deploy/patroni/'s templates, free loopback ports, a temporary directory;
`make ha` installs the packages); the ingest workers, alert worker and delivery worker connect
through HAProxy only. 300 reports/s for 40 s over QoS 1; 12 s in, the primary's Patroni and
PostgreSQL are SIGKILLed together (its machine dies), and once writes resumed its node is
started again and must rejoin as a replica.
"""

from __future__ import annotations

from pathlib import Path

from tests.services import run_chaos


def test_primary_killed_under_load_loses_no_acknowledged_fix_and_opens_no_alert_twice(
    tmp_path: Path,
) -> None:
    for tool in ("/usr/bin/patroni", "/usr/bin/etcd", "/usr/sbin/haproxy"):
        assert Path(tool).exists(), f"{tool} is missing: run `make ha` (deploy/ensure-ha.sh)"
    res, report = run_chaos(tmp_path, "--patroni")
    assert res["acked"] > 9_000, report  # the load really ran (300/s for 40 s)
    assert [f["action"] for f in res["faults"]] == [
        "postgres:kill-primary", "postgres:rejoin"], report
    kill, rejoin = res["faults"]
    # Writes resumed within 30 s: through HAProxy, and the ingest pipeline's own next fix.
    assert kill["down_s"] is not None and kill["down_s"] <= 30, report
    assert kill["commit_s"] is not None and kill["commit_s"] <= 30, report
    # The killed node came back as a replica of the new primary (rewound if it had to be).
    assert rejoin["down_s"] is not None, report
    assert not any("failed" in note for note in res["cluster_notes"]), report
    assert res["lost_acked_fixes"] == 0, report
    assert res["alerts_opened_twice"] == 0, report
    assert res["notifications_same_event_two_keys"] == 0, report
    # Every phone told to stop was alerted once, none that kept reporting was called silent.
    assert res["silences_not_alerted"] == 0 and res["silences_alerted_twice"] == 0, report
    assert res["false_silence_alerts"] == 0, report
    assert res["ok"], report
