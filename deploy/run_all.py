"""Run the whole system in the foreground: API, ingest, alert and delivery workers.

Ctrl-C (or SIGTERM) stops every process cleanly; a process that dies on its own is restarted
after a short pause, so a crash of one part never silently leaves the system half up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

PY = sys.executable


def secure() -> bool:
    """CCS_MQTT_SECURE=1: the secured broker (deploy/mosquitto/secure.conf) and its sync."""
    return os.environ.get("CCS_MQTT_SECURE", "0") == "1"


def secure_defaults() -> None:
    """Point the processes at the secured broker unless told otherwise (docs/broker-security.md)."""
    os.environ.setdefault("CCS_MQTT_PORT", "1886")  # the services' listener
    os.environ.setdefault("CCS_MQTT_DEVICE_PORT", "1885")  # the phones'
    os.environ.setdefault("CCS_MQTT_AUTH_DIR", "/var/lib/ccs-mosquitto-secure/auth")


def commands() -> dict[str, list[str]]:
    """The processes that make up the system."""
    host = os.environ.get("CCS_API_HOST", "127.0.0.1")
    port = os.environ.get("CCS_API_PORT", "8000")
    sync = {"broker-sync": [PY, "-m", "store.broker_sync", "--watch"]} if secure() else {}
    workers = int(os.environ.get("CCS_INGEST_WORKERS", "1"))
    return {
        **sync,
        "api": [PY, "-m", "uvicorn", "api.app:app", "--host", host, "--port", port,
                "--workers", os.environ.get("CCS_API_WORKERS", "1"), "--no-access-log"],
        # CCS_INGEST_WORKERS ingest processes, each its partition of the devices (docs/operations.md).
        **{(f"ingest-{k}" if workers > 1 else "ingest"):
           ["env", f"CCS_INGEST_WORKER_INDEX={k}", PY, "-m", "ingest"] for k in range(workers)},
        "alerts": [PY, "-m", "alerts"],
        "delivery": [PY, "-m", "alerts.delivery"],
    }


def main() -> int:
    """Start, supervise and stop the processes."""
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    if secure():  # a full rebuild of the broker's accounts before any service connects
        secure_defaults()
        if subprocess.run([PY, "-m", "store.broker_sync"]).returncode != 0:
            print("[run] the broker's password and ACL files could not be built; not starting",
                  flush=True)
            return 1
    cmds = commands()
    procs = {name: subprocess.Popen(cmd, start_new_session=True) for name, cmd in cmds.items()}
    port = os.environ.get("CCS_API_PORT", "8000")
    print(f"[run] API on http://127.0.0.1:{port}/docs · ingest, alert and delivery workers started · "
          "Ctrl-C stops everything", flush=True)
    while not stopping:
        time.sleep(0.5)
        for name, p in list(procs.items()):
            if p.poll() is not None and not stopping:
                print(f"[run] {name} exited with {p.returncode}; restarting in 2 s", flush=True)
                time.sleep(2)
                procs[name] = subprocess.Popen(cmds[name], start_new_session=True)
    print("[run] stopping…", flush=True)
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for name, p in procs.items():
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            print(f"[run] {name} did not stop in time; killing it", flush=True)
            p.kill()
    print("[run] stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
