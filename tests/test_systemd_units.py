"""deploy/systemd: every unit passes `systemd-analyze verify` and keeps the promises its README
makes (restart, stop, hardening, probe ports, one template for N ingest workers)."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UNITS = ROOT / "deploy" / "systemd"
SERVICES = sorted(UNITS.glob("ccs-*.service"))
LONG_RUNNING = [u for u in SERVICES if u.name != "ccs-migrate.service"]


def _render(tmp: Path) -> list[Path]:
    """The units as installed on a host whose checkout is this one (ExecStart must exist)."""
    out = []
    venv_python = Path(sys.executable)
    for unit in [*SERVICES, UNITS / "ccs.target"]:
        text = unit.read_text().replace("/opt/ccs/.venv/bin/python", str(venv_python)) \
            .replace("/opt/ccs", str(ROOT))
        (tmp / unit.name).write_text(text)
        out.append(tmp / unit.name)
    # A template is verified as an instance.
    inst = tmp / "ccs-ingest@0.service"
    (tmp / "ccs-ingest@.service").rename(inst)
    return [inst if p.name == "ccs-ingest@.service" else p for p in out]


def _service(unit: Path) -> dict[str, list[str]]:
    """[Service] keys with every value they are given (systemd allows repeats)."""
    values: dict[str, list[str]] = {}
    section = ""
    for line in unit.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            k, _, v = line.partition("=")
            values.setdefault(k, []).append(v)
    return values


def test_every_unit_passes_systemd_analyze_verify(tmp_path: Path):
    units = _render(tmp_path)
    assert {u.name for u in units} >= {"ccs-api.service", "ccs-ingest@0.service",
                                       "ccs-alerts.service", "ccs-delivery.service",
                                       "ccs-broker-sync.service", "ccs-migrate.service",
                                       "ccs.target"}
    run = subprocess.run(["systemd-analyze", "verify", *map(str, units)], capture_output=True,
                         text=True, cwd=tmp_path)
    # Not found: the units that order against services of the host (postgresql, mosquitto).
    complaints = [ln for ln in (run.stdout + run.stderr).splitlines()
                  if ln.strip() and "not found" not in ln.lower()]
    assert run.returncode == 0 and complaints == [], run.stdout + run.stderr


def test_a_broken_unit_is_caught_by_the_same_check(tmp_path: Path):
    """The check above can fail: a typo in a directive is reported."""
    units = _render(tmp_path)
    api = next(u for u in units if u.name == "ccs-api.service")
    api.write_text(api.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"))
    run = subprocess.run(["systemd-analyze", "verify", str(api)], capture_output=True, text=True)
    assert "NoNewPrivilege" in run.stdout + run.stderr


def test_services_restart_stop_cleanly_and_are_hardened():
    for unit in LONG_RUNNING:
        s = _service(unit)
        single = {k: v[-1] for k, v in s.items()}
        assert single["Restart"] == "always" and float(single["RestartSec"]) <= 5, unit.name
        assert single["KillSignal"] == "SIGTERM" and int(single["TimeoutStopSec"]) >= 20
        assert single["User"] == "ccs" and single["EnvironmentFile"] == "/etc/ccs/ccs.env"
        for key, want in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                          ("ProtectHome", "yes"), ("PrivateTmp", "yes"),
                          ("CapabilityBoundingSet", ""), ("SystemCallFilter", "@system-service")):
            assert want in s.get(key, []), (unit.name, key)
        env = " ".join(s["Environment"])
        assert "CCS_LOG_FORMAT=json" in env, unit.name
    ports = {u.name: " ".join(_service(u)["Environment"]) for u in LONG_RUNNING}
    assert "CCS_INGEST_WORKER_INDEX=%i" in ports["ccs-ingest@.service"]
    assert "CCS_HEALTH_PORT=910%i" in ports["ccs-ingest@.service"]
    assert "CCS_HEALTH_PORT=9120" in ports["ccs-alerts.service"]
    assert "CCS_HEALTH_PORT=9121" in ports["ccs-delivery.service"]


def test_every_process_of_run_all_has_a_unit():
    """deploy/run_all.py (make run) and the units start the same processes."""
    sys.path.insert(0, str(ROOT / "deploy"))
    try:
        import run_all
    finally:
        sys.path.pop(0)
    modules = {" ".join(cmd[cmd.index("-m") + 1:cmd.index("-m") + 2])
               for cmd in run_all.commands().values()}
    in_units = set()
    for unit in SERVICES:
        exec_start = _service(unit)["ExecStart"][-1].split()
        in_units.add(exec_start[exec_start.index("-m") + 1])
    assert modules <= in_units, modules - in_units


def test_the_example_settings_are_production_ones():
    env = configparser.ConfigParser(delimiters=("=",), interpolation=None)
    env.optionxform = str  # type: ignore[assignment,method-assign]
    env.read_string("[env]\n" + (UNITS / "ccs.env.example").read_text())
    e = dict(env["env"])
    assert e["CCS_ENVIRONMENT"] == "production"
    assert e["CCS_SECRET_KEY"] == ""  # to be generated, never a shipped value
    assert e["CCS_MQTT_DEVICE_TLS"] == "true" and e["CCS_MQTT_DEVICE_PORT"] == "8883"
    # Filled in as the comments say, it passes the production settings' checks; left empty, the
    # processes refuse to start.
    from store.settings import Settings

    def settings(env: dict[str, str]) -> Settings:
        return Settings.model_validate({k.removeprefix("CCS_").lower(): v
                                        for k, v in env.items() if v != ""})

    filled = {**e, "CCS_SECRET_KEY": "s" * 64, "CCS_MQTT_PASSWORD": "p" * 32,
              "CCS_BROKER_HOOK_SECRET": "h" * 64, "CCS_METRICS_TOKEN": "m" * 40}
    assert settings(filled).environment.value == "production"
    import pytest
    from pydantic import ValidationError

    for key in ("CCS_SECRET_KEY", "CCS_MQTT_PASSWORD", "CCS_METRICS_TOKEN"):
        with pytest.raises(ValidationError):
            settings({**filled, key: ""})


def _connack(port: int, *, tls_ca: Path | None, user: str | None = None,
             password: str | None = None) -> str:
    """Connect once; "ok", a refusal's reason, or the network error's class."""
    import ssl
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    got: list[str] = []
    done = threading.Event()
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=user or "anon",
                    protocol=mqtt.MQTTv5)
    if tls_ca is not None:
        c.tls_set(ca_certs=str(tls_ca), cert_reqs=ssl.CERT_REQUIRED)
    if user:
        c.username_pw_set(user, password)

    def on_connect(client, userdata, flags, reason_code, properties):  # type: ignore[no-untyped-def]
        got.append("ok" if not reason_code.is_failure else str(reason_code))
        done.set()

    c.on_connect = on_connect
    try:
        c.connect("127.0.0.1", port, keepalive=5)
    except Exception as e:  # noqa: BLE001 (the handshake's failure is the answer)
        return type(e).__name__
    c.loop_start()
    done.wait(3)
    c.loop_stop()
    c.disconnect()
    return got[0] if got else "no CONNACK"


def test_the_production_broker_takes_phones_only_over_tls_with_their_own_password():
    import os
    import pwd
    import shutil
    import socket
    import tempfile
    import time

    from tests.services import free_port

    # Mosquitto started as root drops to its own user: its directory must be reachable by it.
    tmp_path = Path(tempfile.mkdtemp(prefix="ccs-production-broker-"))
    tls, auth = tmp_path / "tls", tmp_path / "auth"
    tls.mkdir()
    auth.mkdir()
    os.chmod(tmp_path, 0o755)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(tls / "broker.key"), "-out", str(tls / "broker.crt")],
                   check=True, capture_output=True)
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(auth / "devices.passwd"), "phone-1",
                    "s3cret-phone"], check=True, capture_output=True)
    (auth / "devices.acl").write_text("pattern readwrite devices/%u/#\n")
    (auth / "services.passwd").write_text("")
    (auth / "services.acl").write_text("")
    if os.geteuid() == 0:
        uid = pwd.getpwnam("mosquitto").pw_uid
        for p in (tmp_path, tls, auth, *tls.iterdir(), *auth.iterdir()):
            os.chown(p, uid, -1)
    device, services = free_port(), free_port()
    conf = (ROOT / "deploy" / "mosquitto" / "production.conf").read_text() \
        .replace("/etc/ccs/tls", str(tls)) \
        .replace("/var/lib/ccs-mosquitto-secure/auth", str(auth)) \
        .replace("/var/lib/ccs-mosquitto-secure/", f"{tmp_path}/") \
        .replace("log_dest file /var/log/ccs-mosquitto/secure.log", f"log_dest file {tmp_path}/m.log") \
        .replace("listener 8883", f"listener {device}") \
        .replace("listener 1886 127.0.0.1", f"listener {services} 127.0.0.1")
    (tmp_path / "m.conf").write_text(conf)
    broker = subprocess.Popen(["mosquitto", "-c", str(tmp_path / "m.conf")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(50):
            try:
                socket.create_connection(("127.0.0.1", device), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        ca = tls / "broker.crt"
        assert _connack(device, tls_ca=ca, user="phone-1", password="s3cret-phone") == "ok"
        assert _connack(device, tls_ca=ca, user="phone-1", password="wrong") == "Not authorized"
        assert _connack(device, tls_ca=ca) == "Not authorized"  # anonymous
        # Plain MQTT to the phones' port: no CONNACK at all (the broker wants a TLS handshake).
        assert _connack(device, tls_ca=None, user="phone-1", password="s3cret-phone") != "ok"
        assert _connack(services, tls_ca=None) == "Not authorized"
    finally:
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(tmp_path, ignore_errors=True)
