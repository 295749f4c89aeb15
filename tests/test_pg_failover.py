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

import subprocess
from pathlib import Path

import pytest
import yaml

from simulators.pg_cluster import render
from tests.services import assert_nothing_lost, chaos_run


@pytest.mark.long
def test_primary_killed_under_load_loses_no_acknowledged_fix_and_opens_no_alert_twice(
    tmp_path: Path,
) -> None:
    for tool in ("/usr/bin/patroni", "/usr/bin/etcd", "/usr/sbin/haproxy"):
        assert Path(tool).exists(), f"{tool} is missing: run `make ha` (deploy/ensure-ha.sh)"
    res, report = chaos_run(tmp_path, "--short", "--patroni")
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
    assert res["notifications_same_event_two_keys"] == 0, report
    assert_nothing_lost(res, report)
    assert res["ok"], report


def test_deploy_templates_filled_for_three_servers_give_configurations_the_tools_accept(
    tmp_path: Path,
) -> None:
    # The values docs/high-availability.md fills in with envsubst (same ${NAME} syntax).
    nodes: dict[str, object] = {}
    for k in (1, 2, 3):
        nodes |= {f"NODE{k}_NAME": f"pg{k}", f"NODE{k}_ADDR": f"10.0.0.1{k}",
                  f"NODE{k}_PG_PORT": 5432, f"NODE{k}_REST_PORT": 8008}
    cfg = render("haproxy.cfg.in", tmp_path / "haproxy.cfg", HAPROXY_ADDR="127.0.0.1",
                 HAPROXY_PRIMARY_PORT=5000, HAPROXY_REPLICA_PORT=5001, HAPROXY_STATS_PORT=7000,
                 **nodes)
    check = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    patroni = yaml.safe_load(render(
        "patroni.yml.in", tmp_path / "pg1.yml", CLUSTER="ccs", NODE_NAME="pg1",
        NODE_ADDR="10.0.0.11", PG_PORT=5432, REST_PORT=8008,
        ETCD_HOSTS="10.0.0.11:2379,10.0.0.12:2379,10.0.0.13:2379",
        DATA_DIR="/var/lib/postgresql/15/ccs", SOCKET_DIR="/var/run/postgresql",
        PG_BIN="/usr/lib/postgresql/15/bin", ALLOW_NET="10.0.0.0/24").read_text())
    dcs = patroni["bootstrap"]["dcs"]
    assert dcs["synchronous_mode"] is True and dcs["synchronous_mode_strict"] is True
    assert dcs["loop_wait"] + 2 * dcs["retry_timeout"] <= dcs["ttl"]  # Patroni's own rule
    assert patroni["postgresql"]["listen"] == "10.0.0.11:5432"
    # Passwords come from PATRONI_*_PASSWORD, never from the file.
    assert all("password" not in user for user in patroni["postgresql"]["authentication"].values())
    etcd = yaml.safe_load(render(
        "etcd.conf.yml.in", tmp_path / "etcd.yml", ETCD_NAME="etcd1",
        ETCD_DATA_DIR="/var/lib/etcd/ccs", ETCD_ADDR="10.0.0.11", ETCD_CLIENT_PORT=2379,
        ETCD_PEER_PORT=2380, CLUSTER="ccs",
        ETCD_INITIAL_CLUSTER=",".join(f"etcd{k}=http://10.0.0.1{k}:2380" for k in (1, 2, 3))
    ).read_text())
    assert etcd["enable-grpc-gateway"] is True  # Patroni's etcd3 client needs it
