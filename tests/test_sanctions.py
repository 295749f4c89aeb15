"""The sanction ladder suggests; a person decides."""

from __future__ import annotations

import pytest

from alerts.sanctions import suggest
from geofence.profile import SanctionLadder
from tests.conftest import Org, login
from tests.test_api import API

LADDER = SanctionLadder()


@pytest.mark.parametrize(("days", "reprimands", "kind"), [
    (None, 0, None),
    (0.5, 0, "reprimand"),
    (10.0, 0, "reprimand"),
    (10.5, 0, "warning"),
    (31.0, 0, "revocation_request"),
    (2.0, 1, "warning"),  # a second reprimand would be due: the ladder says warning
])
def test_ladder_out_of_contact_and_repeated_reprimands(days, reprimands, kind):
    assert suggest(LADDER, days, reprimands).kind == kind


def test_suggestion_is_shown_from_open_silence_alerts_and_never_applied(client, org: Org, db):
    db.execute("""INSERT INTO alerts (kind, severity, supervisee_id, office_id, first_fix_time)
                  VALUES ('communication_failure', 'medium', %s, %s, now() - interval '12 days')""",
               (org.supervisee_id, org.office_ids["420102"]))
    h = login(client, "jiangan-officer")
    r = client.get(f"{API}/supervisees/{org.supervisee_id}/sanction-suggestion", headers=h).json()
    assert (r["suggestion"], r["decided_by_a_person"]) == ("warning", True)
    assert 11.9 < r["out_of_contact_days"] < 12.1
    assert db.execute("SELECT count(*) FROM sanctions").fetchone() == (0,)  # nothing applied
    level = client.get(f"{API}/supervisees/{org.supervisee_id}", headers=h).json()["level"]
    assert level == "normal"
    other = login(client, "jianghan-officer")
    assert client.get(f"{API}/supervisees/{org.supervisee_id}/sanction-suggestion",
                      headers=other).status_code == 404


def test_a_sanction_can_only_cite_the_supervisees_own_alert(client, org: Org, db):
    row = db.execute("""INSERT INTO alerts (kind, severity, supervisee_id, office_id)
                        VALUES ('area_exit', 'high', %s, %s) RETURNING id""",
                     (org.other_supervisee_id, org.office_ids["420103"])).fetchone()
    h = login(client, "jiangan-officer")
    r = client.post(f"{API}/supervisees/{org.supervisee_id}/sanctions", headers=h,
                    json={"kind": "reprimand", "reason": "cites another's alert", "alert_id": row[0]})
    assert r.status_code == 422
