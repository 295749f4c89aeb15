"""Staff sign-in: JWT access tokens, refresh rotation, logout, lockout, accounts and their roles."""

from __future__ import annotations

import queue
import threading

import httpx
import jwt
import pytest

from api.security import issue_access_token
from store.settings import Settings
from tests.conftest import JIANGAN, JIANGHAN, PASSWORD, Org, login
from tests.services import api_server
from tests.test_end_to_end import FEED, _read_sse

API = "/api/v1"


def sign_in(client, username: str, password: str = PASSWORD):  # type: ignore[no-untyped-def]
    return client.post(f"{API}/auth/token", data={"username": username, "password": password})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_sign_in_issues_a_short_lived_jwt_and_a_refresh_token(client, org: Org, settings: Settings):
    r = sign_in(client, "jiangan-officer")
    assert r.status_code == 200
    body = r.json()
    assert (body["expires_in"], body["refresh_expires_in"]) == (settings.access_token_ttl_s,
                                                               settings.refresh_token_ttl_s)
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sub"] == str(org.staff["jiangan-officer"])
    assert claims["exp"] - claims["iat"] == settings.access_token_ttl_s == 900
    assert client.get(f"{API}/auth/me", headers=bearer(body["access_token"])).json()["username"] \
        == "jiangan-officer"
    # A token signed with another key, or with the claims changed, is refused.
    forged = jwt.encode({**claims, "sub": str(org.staff["admin"])}, "guess", algorithm="HS256")
    assert client.get(f"{API}/auth/me", headers=bearer(forged)).status_code == 401
    head, _, sig = body["access_token"].rpartition(".")
    assert client.get(f"{API}/auth/me", headers=bearer(head + "." + sig[::-1])).status_code == 401


def test_an_expired_access_token_is_refused(client, org: Org, settings: Settings):
    body = sign_in(client, "jiangan-officer").json()
    sid = jwt.decode(body["access_token"], options={"verify_signature": False})["sid"]
    expired = issue_access_token(settings.model_copy(update={"access_token_ttl_s": -1}),
                                 org.staff["jiangan-officer"], "officer", sid)
    r = client.get(f"{API}/auth/me", headers=bearer(expired))
    assert r.status_code == 401 and "expired" in r.json()["detail"]


def test_refresh_rotates_and_a_replayed_refresh_token_ends_the_session(client, org: Org):
    first = sign_in(client, "jiangan-officer").json()
    second = client.post(f"{API}/auth/refresh", data={"refresh_token": first["refresh_token"]})
    assert second.status_code == 200
    second = second.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert client.get(f"{API}/auth/me", headers=bearer(second["access_token"])).status_code == 200
    # Someone replays the first refresh token: refused, and the whole session ends.
    replay = client.post(f"{API}/auth/refresh", data={"refresh_token": first["refresh_token"]})
    assert replay.status_code == 401 and "already used" in replay.json()["detail"]
    assert client.get(f"{API}/auth/me", headers=bearer(second["access_token"])).status_code == 401
    assert client.post(f"{API}/auth/refresh",
                       data={"refresh_token": second["refresh_token"]}).status_code == 401


def test_logout_ends_access_and_refresh_tokens(client, org: Org):
    body = sign_in(client, "jiangan-officer").json()
    other = sign_in(client, "jiangan-officer").json()  # a second session on another machine
    assert client.post(f"{API}/auth/logout", headers=bearer(body["access_token"])).status_code == 204
    assert client.get(f"{API}/auth/me", headers=bearer(body["access_token"])).status_code == 401
    assert client.post(f"{API}/auth/refresh",
                       data={"refresh_token": body["refresh_token"]}).status_code == 401
    assert client.get(f"{API}/auth/me", headers=bearer(other["access_token"])).status_code == 200


def test_repeated_failures_lock_the_account_until_unlocked(client, org: Org, db,
                                                           settings: Settings):
    for _ in range(settings.login_max_failures):
        assert sign_in(client, "jiangan-officer", "wrong password").status_code == 401
    # Locked: even the right password is refused, with the same answer as a wrong one.
    locked = sign_in(client, "jiangan-officer")
    assert locked.status_code == 401
    assert locked.json() == sign_in(client, "nobody", "x").json()
    # A code for clients to word the refusal in their language, and the lockout policy (the
    # same for every account: it tells nothing about this one).
    assert locked.json() == {"error": "sign_in_refused", "detail": locked.json()["detail"],
                             "lockout_after": settings.login_max_failures,
                             "lockout_s": settings.login_lockout_s}
    # Another account is not affected.
    assert sign_in(client, "jianghan-officer").status_code == 200
    admin = login(client, "admin")
    r = client.patch(f"{API}/staff/{org.staff['jiangan-officer']}", headers=admin,
                     json={"unlock": True})
    assert r.status_code == 200 and r.json()["locked_until"] is None
    assert sign_in(client, "jiangan-officer").status_code == 200
    rows = db.execute("""SELECT action, detail ? 'now_locked_until' FROM audit_log
                          WHERE action LIKE 'auth.login%%' AND target = 'jiangan-officer'
                          ORDER BY id""").fetchall()
    assert rows[settings.login_max_failures - 1] == ("auth.login_failed", True)


def test_too_many_failures_from_one_address_are_throttled(client, org: Org, settings: Settings,
                                                          monkeypatch):
    monkeypatch.setattr(settings, "login_failures_per_address", 3)
    for name in ("a", "b", "c"):  # different usernames: no single account locks
        assert sign_in(client, name, "x").status_code == 401
    r = sign_in(client, "jiangan-officer")
    assert (r.status_code, r.json()["error"]) == (429, "too_many_attempts")
    # How long until this address may try again: the failure window's remaining time.
    wait = r.json()["retry_after_s"]
    assert 0 < wait <= settings.login_failures_window_s and r.headers["retry-after"] == str(wait)


def test_password_change_ends_every_session(client, org: Org):
    a = sign_in(client, "jiangan-officer").json()
    b = sign_in(client, "jiangan-officer").json()
    h = bearer(a["access_token"])
    wrong = client.post(f"{API}/auth/password", headers=h, json={
        "current_password": "wrong", "new_password": "a much longer secret"})
    assert (wrong.status_code, wrong.json()["error"]) == (401, "wrong_password")
    assert client.post(f"{API}/auth/password", headers=h, json={
        "current_password": PASSWORD, "new_password": "short"}).status_code == 422
    assert client.post(f"{API}/auth/password", headers=h, json={
        "current_password": PASSWORD, "new_password": "a much longer secret"}).status_code == 204
    for s in (a, b):
        assert client.get(f"{API}/auth/me", headers=bearer(s["access_token"])).status_code == 401
    assert sign_in(client, "jiangan-officer").status_code == 401
    assert sign_in(client, "jiangan-officer", "a much longer secret").status_code == 200


def test_accounts_are_created_only_within_ones_subtree_and_rank(client, org: Org):
    new = {"username": "new-officer", "full_name": "New", "role": "officer",
           "org_unit_id": org.office_ids[JIANGAN], "password": "a long enough secret"}
    assert client.post(f"{API}/staff", headers=login(client, "jiangan-officer"),
                       json=new).status_code == 403
    sup = login(client, "jiangan-supervisor")
    assert client.post(f"{API}/staff", headers=sup, json={
        **new, "org_unit_id": org.office_ids[JIANGHAN]}).status_code == 403  # other district
    assert client.post(f"{API}/staff", headers=sup, json={
        **new, "role": "city_admin", "org_unit_id": org.district_ids[JIANGAN]}).status_code == 403
    assert client.post(f"{API}/staff", headers=sup, json={
        **new, "org_unit_id": org.district_ids[JIANGAN]}).status_code == 400  # officer at a bureau
    r = client.post(f"{API}/staff", headers=sup, json=new)
    assert r.status_code == 201, r.text
    head = client.post(f"{API}/staff", headers=sup, json={
        **new, "username": "new-head", "role": "office_head"})
    assert head.status_code == 201
    assert sign_in(client, "new-officer", "a long enough secret").status_code == 200
    # An office head may not act on a district supervisor, nor give a higher role.
    hh = login(client, "new-head", "a long enough secret")
    assert client.patch(f"{API}/staff/{org.staff['jiangan-supervisor']}", headers=hh,
                        json={"active": False}).status_code == 404  # above: not in its subtree
    assert client.patch(f"{API}/staff/{r.json()['id']}", headers=hh,
                        json={"role": "district_supervisor"}).status_code == 403
    listed = {s["username"] for s in client.get(f"{API}/staff", headers=hh).json()}
    assert listed == {"jiangan-officer", "new-officer", "new-head"}
    auditor = client.post(f"{API}/staff", headers=login(client, "admin"), json={
        **new, "username": "auditor", "role": "auditor", "org_unit_id": org.city_id})
    assert auditor.status_code == 201
    ah = login(client, "auditor", "a long enough secret")
    assert client.get(f"{API}/staff", headers=ah).status_code == 200
    r = client.get(f"{API}/supervisees/{org.supervisee_id}/position", headers=ah,
                   params={"purpose": "audit"})
    assert r.status_code == 403  # auditors read the audit trail, not people's positions


def test_disabling_an_account_ends_its_tokens_and_live_feed_at_once(settings: Settings, org: Org,
                                                                   monkeypatch):
    import api.routes.alerts as alerts_route

    monkeypatch.setattr(alerts_route, "HEARTBEAT_S", 0.3)
    with api_server(settings) as base:
        def tok(user: str) -> dict[str, str]:
            r = httpx.post(f"{base}{API}/auth/token", data={"username": user, "password": PASSWORD})
            return bearer(r.json()["access_token"])

        h, admin = tok("jiangan-officer"), tok("admin")
        feed: queue.Queue = queue.Queue()
        stop = threading.Event()
        threading.Thread(target=_read_sse, daemon=True, args=(f"{base}{FEED}", h, feed,
                                                              stop)).start()
        assert feed.get(timeout=10) == ("status", 200)
        r = httpx.patch(f"{base}{API}/staff/{org.staff['jiangan-officer']}", headers=admin,
                        json={"active": False})
        assert r.status_code == 200 and r.json()["active"] is False
        kind, event = feed.get(timeout=10)
        stop.set()
        assert (kind, event["event"]) == ("event", "end")
        assert httpx.get(f"{base}{API}/auth/me", headers=h).status_code == 401
        assert httpx.post(f"{base}{API}/auth/token", data={
            "username": "jiangan-officer", "password": PASSWORD}).status_code == 401


@pytest.mark.parametrize("bad", ["", "Bearer", "Bearer x.y.z", "Basic abc"])
def test_malformed_credentials_are_refused(client, org: Org, bad: str):
    assert client.get(f"{API}/auth/me", headers={"Authorization": bad}).status_code == 401


def test_a_username_no_account_can_have_is_refused_and_logged_safely(client, org: Org, db):
    r = sign_in(client, "admin\x00" + "x" * 300)
    assert r.status_code == 401
    (target,) = db.execute("SELECT target FROM audit_log WHERE action = 'auth.login_failed'"
                           ).fetchone()
    assert target.startswith("admin\\0x") and len(target) == 100
