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
from pathlib import Path

from simulators.bench import ROOT, _die_with_parent


def _pg_bin() -> Path:
    """The newest Debian PostgreSQL binaries (the machine's cluster is 15), or the PATH's."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    return found[-1].parent if found else Path(shutil.which("initdb") or "initdb").parent


PG_BIN = _pg_bin()


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 60.0) -> None:
    """Until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


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

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pg_port, self.redis_port, self.mqtt_port = free_port(), free_port(), free_port()
        self.pg_user = "postgres"  # user[:password] in the services' database URL
        self.pg_data = root / "pg"
        self.redis_dir = root / "redis"
        self.mqtt_dir = root / "mosquitto"
        self.redis: subprocess.Popen[bytes] | None = None
        self.mosquitto: subprocess.Popen[bytes] | None = None

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
        self.redis_dir.mkdir(parents=True, exist_ok=True)
        log = (self.root / "redis.log").open("ab")
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
             "--dir", str(self.redis_dir), "--appendonly", "yes", "--appendfsync", "everysec",
             "--save", "", "--daemonize", "no"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent)
        log.close()
        wait_port(self.redis_port)

    def stop_redis(self, lose_data: bool = False) -> None:
        """SIGTERM (it writes its AOF and exits), or SIGKILL and delete its files."""
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
