"""The secured broker: a real Mosquitto started with deploy/mosquitto/secure.conf on free ports.

The password and ACL files are written from the test database by store/broker_sync.py (the
watcher runs in a thread, following the devices trigger, as in production); phones enrol,
are re-enrolled and revoked through the real API. Every claim is checked on the wire.
"""

from __future__ import annotations

import os
import pwd
import queue
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import psycopg
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from alerts.worker import CommandPublisher
from ingest.mqtt_worker import MqttIngestWorker
from store.broker_sync import DEVICE_PASSWD, broker_hash, rebuild, watch
from store.settings import Settings, set_settings
from tests.conftest import JIANGAN, Org, login
from tests.geo import deep_inside
from tests.services import free_port, in_thread, worker_env

CONF = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto" / "secure.conf"


@dataclass
class SecureBroker:
    """A running secured Mosquitto and the services' settings pointing at it."""

    settings: Settings
    device_port: int
    service_port: int
    root: Path
    proc: subprocess.Popen[bytes]


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"mosquitto exited: {log.read_text()}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"mosquitto did not listen on {port}: {log.read_text()}")


@pytest.fixture()
def secure_broker(settings: Settings, db: psycopg.Connection) -> Iterator[SecureBroker]:
    """deploy/mosquitto/secure.conf with only its paths and ports changed, in a temp dir."""
    root = Path(tempfile.mkdtemp(prefix="ccs-secure-broker-"))
    auth = root / "auth"
    auth.mkdir()
    os.chmod(root, 0o755)
    if os.geteuid() == 0:  # Mosquitto drops to its own user: it writes persistence and pid there
        uid = pwd.getpwnam("mosquitto").pw_uid
        os.chown(root, uid, -1)
        os.chown(auth, uid, -1)
    device_port, service_port = free_port(), free_port()
    text = CONF.read_text()
    subs = [("listener 1885\n", f"listener {device_port} 127.0.0.1\n"),
            ("listener 1886 127.0.0.1\n", f"listener {service_port} 127.0.0.1\n"),
            ("/var/log/ccs-mosquitto/secure.log", str(root / "mosquitto.log")),
            ("/var/lib/ccs-mosquitto-secure/", f"{root}/")]
    for old, new in subs:
        assert old in text, f"secure.conf no longer has {old!r}"
        text = text.replace(old, new)
    conf = root / "secure.conf"
    conf.write_text(text)
    s = settings.model_copy(update={
        "mqtt_port": service_port, "mqtt_device_port": device_port,
        "mqtt_username": "ccs-ingest", "mqtt_password": "ingest-" + os.urandom(12).hex(),
        "mqtt_commands_username": "ccs-alerts", "mqtt_commands_password": "alerts-" + os.urandom(12).hex(),
        "mqtt_auth_dir": str(auth),
    })
    rebuild(s)  # the files exist before the broker starts, as at `make run`
    log = root / "mosquitto.log"
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    try:
        _wait_port(device_port, proc, log)
        _wait_port(service_port, proc, log)
        deadline = time.monotonic() + 5
        while not (auth / "mosquitto.pid").exists():  # SIGHUP needs it
            assert time.monotonic() < deadline, "mosquitto wrote no pid file"
            time.sleep(0.05)
        set_settings(s)  # the API, too, now describes this broker to the phones
        yield SecureBroker(s, device_port, service_port, root, proc)
    finally:
        set_settings(settings)
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def synced(secure_broker: SecureBroker) -> Iterator[SecureBroker]:
    """The broker-sync watcher following the database, in a thread."""
    stop, ready = threading.Event(), threading.Event()
    t = threading.Thread(target=watch, args=(secure_broker.settings, stop, ready), daemon=True)
    t.start()
    assert ready.wait(10), "broker sync did not start"
    yield secure_broker
    stop.set()
    t.join(10)


class Conn:
    """One MQTT 5 client with everything it observes queued (no automatic reconnect storm)."""

    def __init__(self, port: int, username: str | None, password: str | None,
                 client_id: str = "", session_expiry: int = 0) -> None:
        self.events: queue.Queue[tuple[str, str]] = queue.Queue()
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.subacks: queue.Queue[list[str]] = queue.Queue()
        self.connack = threading.Event()
        self.reason = ""
        c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                        protocol=mqtt.MQTTv5)
        if username is not None:
            c.username_pw_set(username, password)
        c.reconnect_delay_set(60, 60)
        c.on_connect = self._on_connect
        c.on_disconnect = lambda _c, _u, _f, rc, _p: self.events.put(("disconnect", str(rc)))
        c.on_message = lambda _c, _u, m: self.messages.put((m.topic, m.payload))
        c.on_subscribe = lambda _c, _u, _mid, rcs, _p: self.subacks.put([str(r) for r in rcs])
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = session_expiry
        c.connect("127.0.0.1", port, clean_start=session_expiry == 0, properties=props)
        c.loop_start()
        self.client = c
        assert self.connack.wait(5), "no CONNACK"

    def _on_connect(self, _c: mqtt.Client, _u: object, _f: object, rc: object, _p: object) -> None:
        if not self.connack.is_set():
            self.reason = str(rc)
            self.connack.set()
        self.events.put(("connect", str(rc)))

    def disconnected(self, timeout: float = 5.0) -> bool:
        """Wait for the broker to end this connection."""
        deadline = time.monotonic() + timeout
        try:
            while self.events.get(timeout=max(deadline - time.monotonic(), 0.01))[0] != "disconnect":
                pass
        except queue.Empty:
            return False
        return True

    def only_connected(self) -> bool:
        """True while nothing but the first connect happened."""
        return [e for e in list(self.events.queue) if e[0] != "connect" or e[1] != "Success"] == [] \
            and len(self.events.queue) == 1

    @property
    def ok(self) -> bool:
        return self.reason == "Success"

    def subscribe(self, *topics: str) -> list[str]:
        self.client.subscribe([(t, 1) for t in topics])
        return self.subacks.get(timeout=5)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos=qos).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def eventually_connects(port: int, user: str, password: str, timeout: float = 5.0) -> Conn:
    """Connect, retrying while the broker-sync catches up with a committed change."""
    deadline = time.monotonic() + timeout
    while True:
        c = Conn(port, user, password)
        if c.ok or time.monotonic() > deadline:
            assert c.ok, f"{user} could not connect: {c.reason}"
            return c
        c.close()
        time.sleep(0.1)


def drain(q: queue.Queue[tuple[str, bytes]], until: bytes, timeout: float = 5.0) -> list[tuple[str, bytes]]:
    """Everything received up to and including a message whose payload is `until`."""
    got: list[tuple[str, bytes]] = []
    deadline = time.monotonic() + timeout
    while not got or got[-1][1] != until:
        got.append(q.get(timeout=max(deadline - time.monotonic(), 0.01)))
    return got


def enrol(client: TestClient, org: Org) -> tuple[dict[str, str], str, str]:
    h = login(client, "jiangan-officer")
    r = client.post(f"/api/v1/supervisees/{org.supervisee_id}/devices", json={}, headers=h)
    assert r.status_code == 201, r.text
    return h, r.json()["device_id"], r.json()["secret"]


def test_no_connection_without_valid_credentials(synced: SecureBroker, client: TestClient, org: Org):
    b = synced
    _, dev, secret = enrol(client, org)
    eventually_connects(b.device_port, dev, secret).close()
    for user, password in ((None, None), (dev, "wrong-" + secret), (dev, ""), ("nobody", secret)):
        c = Conn(b.device_port, user, password)
        assert not c.ok and c.reason in ("Not authorized", "Bad user name or password"), (user, c.reason)
        c.close()
    # Accounts are per listener: a phone cannot use the service listener, nor a service the phones'.
    assert not Conn(b.service_port, dev, secret).ok
    assert not Conn(b.device_port, b.settings.mqtt_username, b.settings.mqtt_password).ok
    assert Conn(b.service_port, b.settings.mqtt_username, b.settings.mqtt_password).ok


def test_a_device_publishes_only_its_own_topics(synced: SecureBroker, client: TestClient, org: Org):
    b, p = synced, synced.settings.mqtt_topic_prefix
    _, a, sa = enrol(client, org)
    _, other, _ = enrol(client, org)
    ingest = Conn(b.service_port, b.settings.mqtt_username, b.settings.mqtt_password)
    assert ingest.subscribe(f"{p}devices/+/location", f"{p}owntracks/+/+") == [
        "Granted QoS 1", "Granted QoS 1"]
    phone = eventually_connects(b.device_port, a, sa)
    phone.publish(f"{p}devices/{a}/location", b"own")
    phone.publish(f"{p}owntracks/{a}/{a}", b"own-owntracks")
    phone.close()
    for forged in (f"{p}devices/{other}/location", f"{p}owntracks/{other}/{other}",
                   f"{p}owntracks/{a}/{other}", f"{p}owntracks/{other}/{a}", f"{p}devices/x/location"):
        thief = eventually_connects(b.device_port, a, sa)
        thief.client.publish(forged, b"forged", qos=1)
        # Mosquitto 2.0 drops the message and cuts off an MQTT 5 client that publishes where it
        # may not (eclipse-mosquitto/mosquitto#2579): observed here on 2.0.11.
        assert thief.disconnected(), forged
        thief.close()
    phone = eventually_connects(b.device_port, a, sa)
    phone.publish(f"{p}devices/{a}/location", b"last")  # everything before it has been routed
    got = drain(ingest.messages, b"last")
    assert got == [(f"{p}devices/{a}/location", b"own"), (f"{p}owntracks/{a}/{a}", b"own-owntracks"),
                   (f"{p}devices/{a}/location", b"last")]
    phone.close()
    ingest.close()


def test_a_device_reads_only_its_own_command_topic(synced: SecureBroker, client: TestClient, org: Org):
    b, p = synced, synced.settings.mqtt_topic_prefix
    _, a, sa = enrol(client, org)
    _, other, so = enrol(client, org)
    phone = eventually_connects(b.device_port, a, sa)
    victim = eventually_connects(b.device_port, other, so)
    assert victim.subscribe(f"{p}devices/{other}/cmd") == ["Granted QoS 1"]
    subacks = phone.subscribe(f"{p}devices/{other}/cmd", f"{p}devices/+/cmd", f"{p}#",
                              f"{p}devices/{a}/cmd", f"{p}owntracks/{a}/{a}/cmd")
    assert subacks[-2:] == ["Granted QoS 1", "Granted QoS 1"], subacks
    commands = CommandPublisher(b.settings)  # the alert worker's publisher, its own account
    try:
        commands.publish(other, {"type": "rollcall", "n": 1})
        commands.publish(other, {"type": "rollcall", "n": 2}, owntracks=True)
        commands.publish(a, {"type": "rollcall", "n": 3})
        commands.publish(a, {"type": "rollcall", "n": 4}, owntracks=True)
    finally:
        commands.close()
    assert victim.messages.get(timeout=5) == (f"{p}devices/{other}/cmd", b'{"type":"rollcall","n":1}')
    # The wildcard filters are granted (Mosquitto checks read access per message), so the own
    # commands may come once per matching filter; another phone's never.
    time.sleep(0.5)
    got = set(phone.messages.queue)
    assert got == {(f"{p}devices/{a}/cmd", b'{"type":"rollcall","n":3}'),
                   (f"{p}owntracks/{a}/{a}/cmd", b'{"type":"rollcall","n":4}')}
    # A phone cannot command another phone either.
    phone.client.publish(f"{p}devices/{other}/cmd", b"forged", qos=1)
    assert phone.disconnected()
    victim.publish(f"{p}devices/{other}/location", b"sync")  # a round trip through the broker
    time.sleep(0.3)
    assert victim.messages.empty()
    phone.close()
    victim.close()


def test_revocation_disconnects_a_connected_device_at_once(
    synced: SecureBroker, client: TestClient, org: Org
):
    b = synced
    h, dev, secret = enrol(client, org)
    _, other, so = enrol(client, org)
    phone = eventually_connects(b.device_port, dev, secret)
    bystander = eventually_connects(b.device_port, other, so)
    t0 = time.monotonic()
    assert client.delete(f"/api/v1/devices/{dev}", headers=h).status_code == 200
    assert phone.disconnected()
    elapsed = time.monotonic() - t0
    assert elapsed < 2.0, f"revocation took {elapsed:.2f} s to reach the broker"
    again = Conn(b.device_port, dev, secret)
    assert not again.ok
    assert bystander.only_connected(), "revoking one phone disconnected another"
    assert client.post(f"/api/v1/devices/{dev}/reenrol", headers=h).status_code == 409
    phone.close()
    bystander.close()


def test_reenrolment_invalidates_the_old_secret(synced: SecureBroker, client: TestClient, org: Org):
    b = synced
    h, dev, old = enrol(client, org)
    phone = eventually_connects(b.device_port, dev, old)
    r = client.post(f"/api/v1/devices/{dev}/reenrol", headers=h)
    assert r.status_code == 200, r.text
    new = r.json()["secret"]
    assert new != old and r.json()["device_id"] == dev
    assert r.json()["mqtt"]["port"] == b.device_port
    assert phone.disconnected()  # the old secret's connection is cut
    assert not Conn(b.device_port, dev, old).ok
    eventually_connects(b.device_port, dev, new).close()
    # HTTP too: OwnTracks HTTP with the old secret is refused, with the new one accepted.
    body = {"_type": "location", "lat": 30.6, "lon": 114.3, "tst": int(time.time()), "acc": 10}
    assert client.post("/api/v1/ingest/owntracks", json=body, auth=(dev, old)).status_code == 401
    assert client.post("/api/v1/ingest/owntracks", json=body, auth=(dev, new)).status_code == 200


def test_a_device_cannot_take_over_a_service_session(synced: SecureBroker, client: TestClient, org: Org):
    b, p = synced, synced.settings.mqtt_topic_prefix
    _, dev, secret = enrol(client, org)
    ingest = Conn(b.service_port, b.settings.mqtt_username, b.settings.mqtt_password,
                  client_id="ccs-ingest", session_expiry=3600)
    ingest.subscribe(f"{p}devices/+/location")
    # Without use_username_as_clientid this took over the worker's persistent session.
    deadline = time.monotonic() + 5
    while not (thief := Conn(b.device_port, dev, secret, client_id="ccs-ingest")).ok:
        assert time.monotonic() < deadline, thief.reason
        thief.close()
        time.sleep(0.1)
    thief.publish(f"{p}devices/{dev}/location", b"still-mine")
    assert ingest.messages.get(timeout=5) == (f"{p}devices/{dev}/location", b"still-mine")
    assert ingest.only_connected(), "a phone using the service's client id disconnected it"
    thief.close()
    ingest.close()


def test_the_ingest_worker_stores_fixes_through_the_secured_broker(
    synced: SecureBroker, client: TestClient, org: Org, db: psycopg.Connection
):
    b, p = synced, synced.settings.mqtt_topic_prefix
    _, dev, secret = enrol(client, org)
    ingest = MqttIngestWorker(b.settings, client_id=f"{b.settings.mqtt_client_id}-secure")
    with in_thread(ingest):
        assert ingest.connected.wait(10), "ingest worker could not log in to the secured broker"
        phone = eventually_connects(b.device_port, dev, secret)
        lon, lat = deep_inside(JIANGAN)
        t0 = int(time.time()) - 60
        for k in range(3):
            phone.publish(f"{p}devices/{dev}/location", orjson.dumps(
                {"time": t0 + k * 10, "lon": lon, "lat": lat, "accuracy": 10, "crs": "gcj02"}))
        phone.publish(f"{p}owntracks/{dev}/{dev}", orjson.dumps(
            {"_type": "location", "tst": t0 + 40, "lon": lon, "lat": lat, "acc": 10}))
        deadline = time.monotonic() + 10
        while (n := db.execute("SELECT count(*) FROM positions WHERE device_id = %s",
                               (dev,)).fetchone()[0]) < 4:
            assert time.monotonic() < deadline, f"only {n} of 4 fixes stored"
            time.sleep(0.1)
        phone.close()


def test_the_sync_command_rebuilds_the_files_from_the_database(
    secure_broker: SecureBroker, org: Org, db: psycopg.Connection
):
    b = secure_broker
    secrets = {d: os.urandom(16).hex() for d in ("dbulk1", "dbulk2", "drevoked")}
    for d, s in secrets.items():  # written behind the API's back, as fleet provisioning does
        db.execute("INSERT INTO devices (id, supervisee_id, secret_hash, broker_hash, active) "
                   "VALUES (%s, %s, %s, %s, %s)",
                   (d, org.supervisee_id, "h-" + d, broker_hash(s), d != "drevoked"))
    db.execute("INSERT INTO devices (id, supervisee_id, secret_hash) VALUES ('dlegacy', %s, 'h')",
               (org.supervisee_id,))
    assert not Conn(b.device_port, "dbulk1", secrets["dbulk1"]).ok  # no watcher: not yet synced
    env = {**worker_env(b.settings, "unused"),
           "CCS_MQTT_USERNAME": b.settings.mqtt_username or "",
           "CCS_MQTT_PASSWORD": b.settings.mqtt_password or "",
           "CCS_MQTT_COMMANDS_USERNAME": b.settings.mqtt_commands_username or "",
           "CCS_MQTT_COMMANDS_PASSWORD": b.settings.mqtt_commands_password or "",
           "CCS_MQTT_AUTH_DIR": b.settings.mqtt_auth_dir}
    cmd = [sys.executable, "-m", "store.broker_sync"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=True).stdout
    assert "2 devices" in out and "files changed" in out and "broker reloaded" in out, out
    users = re.findall(r"^([^:]+):\$6\$", (Path(b.settings.mqtt_auth_dir) / DEVICE_PASSWD).read_text(), re.M)
    assert users == ["dbulk1", "dbulk2"]
    for d in ("dbulk1", "dbulk2"):
        eventually_connects(b.device_port, d, secrets[d]).close()
    assert not Conn(b.device_port, "drevoked", secrets["drevoked"]).ok
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=True).stdout
    assert "files unchanged" in again and "not signalled" in again, again
