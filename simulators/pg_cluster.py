"""A Patroni cluster for one failover run (`python -m simulators.chaos --patroni`).

etcd (one member), three PostgreSQL nodes each run by Debian's Patroni (`/usr/bin/patroni`)
and HAProxy, all from `deploy/patroni/`'s templates, on free loopback ports under a temporary
directory; Redis and Mosquitto as in the other fault-injection runs (simulators/chaos_services.py).
The services connect to HAProxy's read-write port only, which leads to the node whose
Patroni answers 200 on GET /primary. Killing a node SIGKILLs its Patroni and its PostgreSQL
(every process of both), as when the machine dies.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from simulators.bench import ROOT
from simulators.chaos_services import PG_BIN, OwnServices, _chown, free_port, wait_port

TEMPLATES = ROOT / "deploy" / "patroni"
PATRONI = "/usr/bin/patroni"
CLUSTER = "ccs-chaos"


def render(template: str, out: Path, **values: object) -> Path:
    """deploy/patroni/<template> with ${NAME} filled in (what envsubst does for an operator)."""
    text = Template((TEMPLATES / template).read_text()).substitute(
        {k: str(v) for k, v in values.items()})
    out.write_text(text)
    return out


@dataclass
class Node:
    """One Patroni-managed PostgreSQL node."""

    name: str
    pg_port: int
    rest_port: int
    data: Path
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def postmaster_pid(self) -> int | None:
        """The running postmaster's pid (its postmaster.pid file), if that process is still
        this node's postmaster (a pid left in a stale file may belong to anything by now)."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            if str(self.data).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        return None


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (PostgreSQL's each lead a session of their own, so
    killing the postmaster's process group would not reach them)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # pid (comm) state ppid ...: comm may hold spaces, so split after its ')'.
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
    return out


def _kill_postgres(postmaster: int) -> None:
    """SIGKILL a postmaster and every process it started, together (a machine that dies)."""
    victims = [*_children(postmaster), postmaster]  # found first: the kills come together
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _kill_group(pid: int) -> None:
    """SIGKILL the process group `pid` leads (or the process alone if it leads none)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class PatroniServices(OwnServices):
    """OwnServices whose PostgreSQL is a three-node Patroni cluster behind HAProxy:
    `pg_port` is HAProxy's read-write port."""

    def __init__(self, root: Path, nodes: int = 3) -> None:
        super().__init__(root)
        self.pg_password = secrets.token_urlsafe(18)
        self.pg_user = f"postgres:{self.pg_password}"
        self.replica_port, self.stats_port = free_port(), free_port()
        self.etcd_port, self.etcd_peer_port = free_port(), free_port()
        self.nodes = [Node(f"pg{k}", free_port(), free_port(), root / f"pg{k}",
                           root / f"pg{k}.yml", root / f"pg{k}.log") for k in range(1, nodes + 1)]
        self.etcd: subprocess.Popen[bytes] | None = None
        self.haproxy: subprocess.Popen[bytes] | None = None
        self.killed: list[str] = []

    # -- configuration ----------------------------------------------------------------------
    def _configs(self) -> None:
        render("etcd.conf.yml.in", self.root / "etcd.conf.yml", ETCD_NAME="etcd1",
               ETCD_DATA_DIR=self.root / "etcd", ETCD_ADDR="127.0.0.1",
               ETCD_CLIENT_PORT=self.etcd_port, ETCD_PEER_PORT=self.etcd_peer_port,
               ETCD_INITIAL_CLUSTER=f"etcd1=http://127.0.0.1:{self.etcd_peer_port}",
               CLUSTER=CLUSTER)
        for n in self.nodes:
            render("patroni.yml.in", n.config, CLUSTER=CLUSTER, NODE_NAME=n.name,
                   NODE_ADDR="127.0.0.1", PG_PORT=n.pg_port, REST_PORT=n.rest_port,
                   ETCD_HOSTS=f"127.0.0.1:{self.etcd_port}", DATA_DIR=n.data,
                   SOCKET_DIR=self.root, PG_BIN=PG_BIN, ALLOW_NET="127.0.0.1/32")
        nodes: dict[str, object] = {}
        for k, n in enumerate(self.nodes[:3], 1):
            nodes |= {f"NODE{k}_NAME": n.name, f"NODE{k}_ADDR": "127.0.0.1",
                      f"NODE{k}_PG_PORT": n.pg_port, f"NODE{k}_REST_PORT": n.rest_port}
        render("haproxy.cfg.in", self.root / "haproxy.cfg", HAPROXY_ADDR="127.0.0.1",
               HAPROXY_PRIMARY_PORT=self.pg_port, HAPROXY_REPLICA_PORT=self.replica_port,
               HAPROXY_STATS_PORT=self.stats_port, **nodes)

    def _spawn(self, argv: list[str], log: Path, user: str | None = None,
               env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        fh = log.open("ab")
        try:
            return subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, cwd=self.root,
                                    start_new_session=True, env=env,
                                    user=user if os.geteuid() == 0 else None)
        finally:
            fh.close()

    # -- OwnServices' PostgreSQL, as a cluster ---------------------------------------------
    def init_postgres(self) -> None:
        """Render the configurations and start etcd (Patroni runs initdb itself)."""
        self._configs()
        _chown(self.root, "postgres")
        self.etcd = self._spawn(["etcd", "--config-file", str(self.root / "etcd.conf.yml")],
                                self.root / "etcd.log")
        wait_port(self.etcd_port, log=self.root / "etcd.log")

    def start_node(self, n: Node) -> None:
        """Start the node's Patroni (it starts, clones or rewinds its PostgreSQL)."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
               "PATRONI_SUPERUSER_PASSWORD": self.pg_password,
               "PATRONI_REPLICATION_PASSWORD": self.pg_password,
               "PATRONI_REWIND_PASSWORD": self.pg_password}
        n.proc = self._spawn([PATRONI, str(n.config)], n.log, user="postgres", env=env)
        if n.name in self.killed:
            self.killed.remove(n.name)

    def start_postgres(self) -> None:
        """Start HAProxy and every node; wait for a leader, a synchronous standby, every
        member running, and a write through HAProxy."""
        for n in self.nodes:
            self.start_node(n)
        self.haproxy = self._spawn(["haproxy", "-W", "-db", "-f", str(self.root / "haproxy.cfg")],
                                   self.root / "haproxy.log")
        wait_port(self.pg_port, log=self.root / "haproxy.log")
        self.wait_healthy(180.0)
        self.wait_writable(60.0)

    def stop_postgres(self, mode: str = "fast") -> None:
        """Stop every node's Patroni (SIGTERM: it stops its PostgreSQL), HAProxy and etcd."""
        for n in self.nodes:
            if n.proc is not None and n.proc.poll() is None:
                n.proc.terminate()
        for n in self.nodes:
            if n.proc is not None:
                try:
                    n.proc.wait(60)
                except subprocess.TimeoutExpired:
                    _kill_group(n.proc.pid)
            pid = n.postmaster_pid()
            if pid is not None:
                _kill_postgres(pid)
        for p in (self.haproxy, self.etcd):
            if p is not None and p.poll() is None:
                p.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(20)
        self.haproxy = self.etcd = None

    # -- the cluster's state -----------------------------------------------------------------
    def members(self) -> list[dict[str, Any]]:
        """Patroni's GET /cluster from the first node that answers: name, role, state, lag."""
        for n in self.nodes:
            if n.name in self.killed:
                continue
            url = f"http://127.0.0.1:{n.rest_port}/cluster"
            with contextlib.suppress(OSError, ValueError), urllib.request.urlopen(url, timeout=1) as r:
                return list(json.loads(r.read()).get("members", []))
        return []

    def primary(self) -> Node | None:
        """The node that holds the leader key, per Patroni."""
        leader = next((m["name"] for m in self.members() if m.get("role") == "leader"), None)
        return next((n for n in self.nodes if n.name == leader), None)

    def wait_healthy(self, timeout: float) -> list[dict[str, Any]]:
        """Until a leader runs, a synchronous standby streams and every member runs."""
        deadline = time.monotonic() + timeout
        ms: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            ms = self.members()
            roles = [m.get("role") for m in ms]
            if (len(ms) == len(self.nodes) and "leader" in roles and "sync_standby" in roles
                    and all(m.get("state") in ("running", "streaming") for m in ms)):
                return ms
            time.sleep(0.5)
        tails = "\n".join(f"--- {n.name}:\n" + n.log.read_text()[-1500:] for n in self.nodes
                          if n.log.exists())
        raise RuntimeError(f"the Patroni cluster is not healthy after {timeout:.0f} s: {ms}\n"
                           f"{tails}")

    def wait_writable(self, timeout: float) -> float:
        """Seconds until a row inserted through HAProxy is committed (synchronously
        replicated: the commit waits for the standby), or inf. No statement timeout: a commit
        cancelled while it waits for its standby is reported committed, on one node only."""
        import psycopg

        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            with contextlib.suppress(psycopg.Error), psycopg.connect(
                    host="127.0.0.1", port=self.pg_port, user="postgres",
                    password=self.pg_password, dbname="postgres", connect_timeout=2,
                    autocommit=True) as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS write_probe (at timestamptz)")
                conn.execute("INSERT INTO write_probe VALUES (now())")
                return time.monotonic() - t0
            time.sleep(0.1)
        return float("inf")

    # -- faults ----------------------------------------------------------------------------
    def kill_primary(self, postgres_only: bool = False) -> str:
        """SIGKILL the leader's PostgreSQL, and (unless `postgres_only`) its Patroni first, as
        when its machine dies. Returns the node's name."""
        n = self.primary()
        if n is None:
            raise RuntimeError(f"no primary to kill: {self.members()}")
        if not postgres_only:
            if n.proc is not None:
                _kill_group(n.proc.pid)
                n.proc.wait(10)
                n.proc = None
            self.killed.append(n.name)
        pid = n.postmaster_pid()
        if pid is not None:
            _kill_postgres(pid)  # with every backend, walsender and helper it started
        return n.name

    def rejoin(self, timeout: float = 120.0) -> str:
        """Start the Patroni of the node last killed; until it runs as a replica again (it
        rewinds its data to the new timeline when needed). Returns its name."""
        name = self.killed[-1]
        n = next(n for n in self.nodes if n.name == name)
        self.start_node(n)
        self.wait_healthy(timeout)
        return name

    def state(self) -> str:
        """One line per member: name, role, state, timeline, lag."""
        return "; ".join(f"{m.get('name')} {m.get('role')} {m.get('state')} "
                         f"TL{m.get('timeline', '?')} lag {m.get('lag', 0)}"
                         for m in self.members())

    def logs(self) -> list[Path]:
        """The cluster's log files (copied next to the run's worker logs)."""
        return [self.root / "etcd.log", self.root / "haproxy.log", *(n.log for n in self.nodes)]
