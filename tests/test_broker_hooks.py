"""The EMQX HTTP authentication and authorization hooks (api/routes/broker.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from store.settings import Settings, set_settings
from tests.conftest import Org, login

HOOK_SECRET = "hook-secret-" + "x" * 24


@pytest.fixture()
def hooks(settings: Settings) -> Iterator[Settings]:
    """Settings with the hooks enabled and the two service accounts."""
    s = settings.model_copy(update={
        "broker_hook_secret": HOOK_SECRET, "mqtt_username": "ccs-ingest", "mqtt_password": "ingest-pw",
        "mqtt_commands_username": "ccs-alerts", "mqtt_commands_password": "alerts-pw",
    })
    set_settings(s)
    yield s
    set_settings(settings)


AUTH = {"Authorization": f"Bearer {HOOK_SECRET}"}


def _auth(client: TestClient, username: str, password: str, clientid: str) -> str:
    r = client.post("/api/v1/broker/auth", headers=AUTH,
                    json={"username": username, "password": password, "clientid": clientid})
    assert r.status_code == 200, r.text
    return str(r.json()["result"])


def _acl(client: TestClient, username: str, topic: str, action: str, clientid: str | None = None) -> str:
    r = client.post("/api/v1/broker/acl", headers=AUTH, json={
        "username": username, "clientid": clientid or username, "topic": topic, "action": action})
    assert r.status_code == 200, r.text
    return str(r.json()["result"])


def test_hooks_need_the_shared_secret_and_are_off_without_it(client: TestClient, settings: Settings):
    body = {"username": "x", "password": "y", "clientid": "x"}
    assert client.post("/api/v1/broker/auth", json=body, headers=AUTH).status_code == 404  # not set
    set_settings(settings.model_copy(update={"broker_hook_secret": HOOK_SECRET}))
    try:
        assert client.post("/api/v1/broker/auth", json=body).status_code == 401
        assert client.post("/api/v1/broker/auth", json=body,
                           headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.post("/api/v1/broker/auth", json=body, headers=AUTH).json()["result"] == "deny"
    finally:
        set_settings(settings)


def test_auth_hook_admits_devices_and_services_with_their_secrets(
    hooks: Settings, client: TestClient, org: Org
):
    h = login(client, "jiangan-officer")
    cred = client.post(f"/api/v1/supervisees/{org.supervisee_id}/devices", json={}, headers=h).json()
    dev, secret = cred["device_id"], cred["secret"]
    assert _auth(client, dev, secret, dev) == "allow"
    assert _auth(client, dev, secret + "x", dev) == "deny"
    assert _auth(client, dev, secret, "another-client-id") == "deny"  # no session takeover
    assert _auth(client, "dnobody", secret, "dnobody") == "deny"
    assert _auth(client, "ccs-ingest", "ingest-pw", "anything") == "allow"
    assert _auth(client, "ccs-ingest", "alerts-pw", "anything") == "deny"
    assert _auth(client, "ccs-alerts", "alerts-pw", "anything") == "allow"
    new = client.post(f"/api/v1/devices/{dev}/reenrol", headers=h).json()["secret"]
    assert _auth(client, dev, secret, dev) == "deny"
    assert _auth(client, dev, new, dev) == "allow"
    assert client.delete(f"/api/v1/devices/{dev}", headers=h).status_code == 200
    assert _auth(client, dev, new, dev) == "deny"


def test_acl_hook_keeps_each_phone_to_its_own_topics(hooks: Settings, client: TestClient, org: Org):
    p = hooks.mqtt_topic_prefix
    h = login(client, "jiangan-officer")
    dev = client.post(f"/api/v1/supervisees/{org.supervisee_id}/devices", json={}, headers=h).json()[
        "device_id"]
    other = "dother"
    for topic in (f"{p}devices/{dev}/location", f"{p}owntracks/{dev}/{dev}",
                  f"{p}owntracks/{dev}/{dev}/event"):
        assert _acl(client, dev, topic, "publish") == "allow", topic
    for topic in (f"{p}devices/{other}/location", f"{p}owntracks/{dev}/{other}",
                  f"{p}devices/{dev}/cmd", f"{p}devices/+/location", f"devices/{dev}/location"):
        assert _acl(client, dev, topic, "publish") == "deny", topic
    for topic in (f"{p}devices/{dev}/cmd", f"{p}owntracks/{dev}/{dev}/cmd"):
        assert _acl(client, dev, topic, "subscribe") == "allow", topic
    for topic in (f"{p}devices/{other}/cmd", f"{p}devices/+/cmd", f"{p}#", "#",
                  f"{p}devices/{dev}/location"):
        assert _acl(client, dev, topic, "subscribe") == "deny", topic
    assert _acl(client, dev, f"{p}devices/{dev}/location", "publish", clientid="x") == "deny"
    # Services: ingest reads reports only, the command account writes commands only.
    assert _acl(client, "ccs-ingest", f"{p}devices/+/location", "subscribe") == "allow"
    assert _acl(client, "ccs-ingest", f"{p}owntracks/+/+", "subscribe") == "allow"
    assert _acl(client, "ccs-ingest", f"{p}devices/{dev}/cmd", "publish") == "deny"
    assert _acl(client, "ccs-ingest", f"{p}#", "subscribe") == "deny"
    assert _acl(client, "ccs-alerts", f"{p}devices/{dev}/cmd", "publish") == "allow"
    assert _acl(client, "ccs-alerts", f"{p}owntracks/{dev}/{dev}/cmd", "publish") == "allow"
    assert _acl(client, "ccs-alerts", f"{p}devices/+/cmd", "publish") == "deny"
    assert _acl(client, "ccs-alerts", f"{p}devices/{dev}/location", "publish") == "deny"
    assert _acl(client, "ccs-alerts", f"{p}devices/+/location", "subscribe") == "deny"
    assert client.delete(f"/api/v1/devices/{dev}", headers=h).status_code == 200
    assert _acl(client, dev, f"{p}devices/{dev}/location", "publish") == "deny"


def test_a_nul_in_a_hook_request_is_refused_not_a_server_error(hooks: Settings, client: TestClient):
    for path, body in (("auth", {"username": "a\x00b", "password": "y", "clientid": "a"}),
                       ("acl", {"username": "a", "clientid": "a\x00", "topic": "t",
                                "action": "publish"})):
        r = client.post(f"/api/v1/broker/{path}", headers=AUTH, json=body)
        assert r.status_code == 422 and "NUL" in r.text, r.text
