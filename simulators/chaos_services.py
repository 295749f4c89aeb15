"""The fault-injection run's own PostgreSQL, Redis and Mosquitto (simulators/chaos.py).

Each runs from a temporary directory on a free loopback port, so restarting (or wiping) it
disturbs nothing else on the machine: the shared PostgreSQL on 5432, Redis on 6379 and the
project's Mosquitto on 1884 stay untouched.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from simulators.bench import ROOT, _die_with_parent
from store.backup import free_port


def _pg_bin() -> Path:
    """The newest Debian PostgreSQL binaries (the machine's cluster is 15), or the PATH's."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    return found[-1].parent if found else Path(shutil.which("initdb") or "initdb").parent


PG_BIN = _pg_bin()


def wait_port(port: int, timeout: float = 60.0, log: Path | None = None) -> None:
    """Until something accepts connections on 127.0.0.1:port; the error names the process's
    log and quotes its end when one is given (a port taken meanwhile, a crash at start)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    tail = ""
    if log is not None:
        with contextlib.suppress(OSError):
            tail = f"; end of {log}:\n" + "\n".join(log.read_text(errors="replace")
                                                    .splitlines()[-15:])
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s{tail}")


def _as_user(user: str) -> list[str]:
    """Prefix that runs a command as `user` when we are root (initdb refuses root)."""
    return ["runuser", "-u", user, "--"] if os.geteuid() == 0 else []


def _chown(path: Path, user: str) -> None:
    if os.geteuid() != 0:
        return
    with contextlib.suppress(KeyError):
        pw = pwd.getpwnam(user)
        for p in [path, *path.rglob("*")]:
            os.chown(p, pw.pw_uid, pw.pw_gid)


class OwnServices:
    """PostgreSQL (with PostGIS), Redis (AOF) and Mosquitto for one run, under `root`."""

    def __init__(self, root: Path, sentinel: bool = False,
                 down_after_ms: int | None = None) -> None:
        self.root = root
        self.pg_port, self.redis_port, self.mqtt_port = free_port(), free_port(), free_port()
        self.pg_user = "postgres"  # user[:password] in the services' database URL
        self.pg_data = root / "pg"
        self.redis_dir = root / "redis"
        self.mqtt_dir = root / "mosquitto"
        self.redis: subprocess.Popen[bytes] | None = None
        self.mosquitto: subprocess.Popen[bytes] | None = None
        # With `sentinel`: Redis is a master (redis_port) and a replica, watched by three
        # sentinels (RedisSentinels); the clients find the master through them.
        self.sentinels = RedisSentinels(root, self.redis_port, down_after_ms) \
            if sentinel else None

    # -- PostgreSQL -----------------------------------------------------------------------
    def _pg_ctl(self, *args: str) -> None:
        subprocess.run([*_as_user("postgres"), str(PG_BIN / "pg_ctl"), "-D", str(self.pg_data),
                        *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def init_postgres(self) -> None:
        """initdb a trust-authenticated cluster (the Debian binaries; PostGIS comes with them)."""
        self.pg_data.mkdir(parents=True)
        _chown(self.root, "postgres")
        subprocess.run([*_as_user("postgres"), str(PG_BIN / "initdb"), "-D", str(self.pg_data),
                        "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"],
                       check=True, stdout=subprocess.DEVNULL)
        with (self.pg_data / "postgresql.conf").open("a") as f:
            f.write(f"\nport = {self.pg_port}\nlisten_addresses = '127.0.0.1'\n"
                    f"unix_socket_directories = '{self.pg_data}'\nmax_connections = 200\n")

    def start_postgres(self) -> None:
        """Start the cluster and wait until it accepts connections."""
        self._pg_ctl("-l", str(self.root / "postgres.log"), "-w", "-t", "120", "start")
        wait_port(self.pg_port)

    def stop_postgres(self, mode: str = "immediate") -> None:
        """Stop it; `immediate` is a crash as far as the database is concerned."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self._pg_ctl("-m", mode, "-w", "stop")

    # -- Redis ----------------------------------------------------------------------------
    def start_redis(self) -> None:
        """redis-server with an append-only file (fsync every second), no RDB snapshots."""
        if self.sentinels is not None:
            self.sentinels.start()
            return
        self.redis = _redis_node(self.redis_port, self.redis_dir, self.root / "redis.log")

    def stop_redis(self, lose_data: bool = False) -> None:
        """SIGTERM (it writes its AOF and exits), or SIGKILL and delete its files."""
        if self.sentinels is not None:
            self.sentinels.stop()
            return
        if self.redis is None:
            return
        self.redis.send_signal(signal.SIGKILL if lose_data else signal.SIGTERM)
        self.redis.wait(30)
        self.redis = None
        if lose_data:
            shutil.rmtree(self.redis_dir, ignore_errors=True)

    # -- Mosquitto ------------------------------------------------------------------------
    def mosquitto_conf(self) -> Path:
        """deploy/mosquitto/mosquitto.conf with this run's port, directory and log."""
        lines = []
        for line in (ROOT / "deploy" / "mosquitto" / "mosquitto.conf").read_text().splitlines():
            key = line.split(" ", 1)[0]
            if key == "listener":
                line = f"listener {self.mqtt_port} 127.0.0.1"
            elif key == "persistence_location":
                line = f"persistence_location {self.mqtt_dir}/"
            elif key == "log_dest":
                line = f"log_dest file {self.root / 'mosquitto.log'}"
            lines.append(line)
        conf = self.root / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start_mosquitto(self) -> None:
        """Mosquitto with the project's settings (persistence, no queue limits)."""
        self.mqtt_dir.mkdir(parents=True, exist_ok=True)
        conf = self.mosquitto_conf()
        (self.root / "mosquitto.log").touch()
        _chown(self.mqtt_dir, "mosquitto")
        _chown(self.root / "mosquitto.log", "mosquitto")
        self.mosquitto = subprocess.Popen(
            ["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_die_with_parent)
        wait_port(self.mqtt_port)

    def stop_mosquitto(self) -> None:
        """SIGTERM: it saves its persistent sessions and queued messages, then exits."""
        if self.mosquitto is None:
            return
        self.mosquitto.send_signal(signal.SIGTERM)
        try:
            self.mosquitto.wait(30)
        except subprocess.TimeoutExpired:
            self.mosquitto.kill()
            self.mosquitto.wait(5)
        self.mosquitto = None

    # -- all ------------------------------------------------------------------------------
    def start(self) -> None:
        """Create and start all three."""
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        self.init_postgres()
        self.start_postgres()
        self.start_redis()
        self.start_mosquitto()

    def stop(self) -> None:
        """Stop all three (the directory is left to the caller)."""
        self.stop_mosquitto()
        self.stop_redis()
        self.stop_postgres("fast")


def _redis_node(port: int, data: Path, log_path: Path, *extra: str) -> subprocess.Popen[bytes]:
    """redis-server on 127.0.0.1:port with an append-only file (fsync every second), no RDB
    snapshots; returns once it accepts connections."""
    data.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
             "--daemonize", "no", *extra],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent)
    wait_port(port)
    return proc


def _ask(port: int, *command: str) -> object:
    """One command to the Redis or sentinel on 127.0.0.1:port."""
    import redis

    with redis.Redis(port=port, socket_timeout=2, decode_responses=True) as r:
        return r.execute_command(*command)


class RedisSentinels:
    """A Redis master and one replica (AOF on both) watched by three sentinels configured by
    deploy/redis/sentinel.conf (quorum 2), all on free loopback ports; the master's name is
    MASTER_NAME. `kill_master` is the failover fault."""

    MASTER_NAME = "ccs"
    ROLE_SCRIPT = ROOT / "deploy" / "redis" / "ccs-redis-role.sh"
    EXAMPLE = ROOT / "deploy" / "redis" / "sentinel.conf"

    def __init__(self, root: Path, master_port: int, down_after_ms: int | None = None) -> None:
        self.root = root
        self.down_after_ms = down_after_ms or int(self.setting("down-after-milliseconds"))
        self.failover_timeout_ms = int(self.setting("failover-timeout"))
        self.node_ports = [master_port, free_port()]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.nodes: dict[int, subprocess.Popen[bytes]] = {}
        self.sentinel_procs: list[subprocess.Popen[bytes]] = []

    @classmethod
    def setting(cls, name: str) -> str:
        """A `sentinel <name> ccs <value>` setting of deploy/redis/sentinel.conf."""
        for line in cls.EXAMPLE.read_text().splitlines():
            words = line.split()
            if words[:3] == ["sentinel", name, cls.MASTER_NAME]:
                return words[3]
        raise KeyError(name)

    def sentinel_conf(self, port: int, master: int) -> str:
        """deploy/redis/sentinel.conf with this run's port, directory, log and master (and
        down-after-milliseconds if the run chose its own)."""
        lines = []
        for line in self.EXAMPLE.read_text().splitlines():
            words = line.split()
            key = words[:2] if words[:1] == ["sentinel"] else words[:1]
            if key == ["port"]:
                line = f"port {port}"
            elif key == ["bind"]:
                line = "bind 127.0.0.1"
            elif key == ["dir"]:
                line = f"dir {self.root}"
            elif key == ["logfile"]:
                line = f"logfile {self.root / 'sentinel.log'}"
            elif key == ["sentinel", "monitor"]:
                line = f"sentinel monitor {self.MASTER_NAME} 127.0.0.1 {master} {words[-1]}"
            elif key == ["sentinel", "down-after-milliseconds"]:
                line = f"sentinel down-after-milliseconds {self.MASTER_NAME} {self.down_after_ms}"
            lines.append(line)
        return "\n".join(lines) + "\n"

    @property
    def addresses(self) -> str:
        """CCS_REDIS_SENTINELS for the clients."""
        return ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)

    def start_node(self, port: int, *extra: str) -> None:
        """One data node on `port`, its data kept in its own directory across restarts."""
        self.nodes[port] = _redis_node(port, self.root / f"redis-{port}",
                                       self.root / "redis.log", *extra)

    def role_file(self, port: int) -> Path:
        """The node's role, as deploy/redis/ccs-redis-role.sh writes it before a start."""
        return self.root / f"role-{port}.conf"

    def write_role(self, port: int) -> str:
        """Run the deployment's ccs-redis-role.sh for the node on `port`; its message."""
        done = subprocess.run(
            [str(self.ROLE_SCRIPT), str(self.role_file(port)), f"127.0.0.1:{port}",
             *(f"127.0.0.1:{p}" for p in self.sentinel_ports)],
            capture_output=True, text=True, timeout=30,
            env={**os.environ, "CCS_REDIS_SENTINEL_MASTER": self.MASTER_NAME})
        if done.returncode != 0:
            raise RuntimeError(f"ccs-redis-role.sh failed: {done.stderr.strip()}")
        return done.stderr.strip()

    def restart_node(self, port: int) -> None:
        """Start a stopped node as its supervisor would in deployment: the role script first
        (deploy/redis/redis-server.service.d), then Redis with the role file included last."""
        self.write_role(port)
        self.start_node(port, "--include", str(self.role_file(port)))

    def start(self) -> None:
        """Master, replica (in sync), then the sentinels (each knowing the others and the
        replica) before returning."""
        master, replica = self.node_ports
        self.start_node(master)
        self.start_node(replica, "--replicaof", "127.0.0.1", str(master))
        self._until(lambda: cast(Any, _ask(replica, "INFO", "replication")).get(
            "master_link_status") == "up",
                    "the replica did not sync")
        for port in self.sentinel_ports:
            conf = self.root / f"sentinel-{port}.conf"  # sentinels rewrite their own file
            conf.write_text(self.sentinel_conf(port, master))
            self.sentinel_procs.append(subprocess.Popen(
                ["redis-sentinel", str(conf)], stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent))
        for port in self.sentinel_ports:
            wait_port(port)

        def known() -> bool:
            for port in self.sentinel_ports:
                info: Any = _ask(port, "SENTINEL MASTER", self.MASTER_NAME)  # parsed
                if int(info["num-other-sentinels"]) != 2 or int(info["num-slaves"]) != 1:
                    return False
            return True
        self._until(known, "the sentinels did not find each other and the replica", 60)

    def master(self) -> int:
        """The port of the master the sentinels name now (the majority's answer)."""
        votes: list[int] = []
        for port in self.sentinel_ports:
            with contextlib.suppress(Exception):
                _host, p = cast(Any, _ask(port, "SENTINEL GET-MASTER-ADDR-BY-NAME",
                                          self.MASTER_NAME))
                votes.append(int(p))
        return max(set(votes), key=votes.count) if votes else 0

    def kill_master(self, restart_after: float) -> tuple[int, int, float]:
        """SIGKILL the master; wait until the sentinels name another; start the killed node
        again after `restart_after` s as a supervisor would (`restart_node`: as a replica of
        the master the sentinels name, never as a second master with its old data).
        Returns (old port, new port, seconds to promotion)."""
        old = self.master()
        at = time.monotonic()
        proc = self.nodes.pop(old)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        self._until(lambda: self.master() not in (0, old), "no failover", 60, 0.05)
        promoted = time.monotonic() - at
        time.sleep(max(0.0, restart_after - promoted))
        self.restart_node(old)
        return old, self.master(), promoted

    def stop(self) -> None:
        """Stop the sentinels, then the data nodes."""
        for proc in [*self.sentinel_procs, *self.nodes.values()]:
            proc.send_signal(signal.SIGTERM)
        for proc in [*self.sentinel_procs, *self.nodes.values()]:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.sentinel_procs, self.nodes = [], {}

    @staticmethod
    def _until(pred: Callable[[], object], what: str, timeout: float = 30.0,
               step: float = 0.2) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if pred():
                    return
            time.sleep(step)
        raise RuntimeError(f"{what} within {timeout:.0f} s")
