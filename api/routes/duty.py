"""The duty view's data: everyone in the jurisdiction on one map, and the morning's numbers.

`GET /duty` is one read for the whole map (last positions, states, zones), audited with the
purpose given when the duty watch was opened (`POST /alerts/watch`). `GET /duty/overview` has
counts only, no positions.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from sqlalchemy import text

from api.authz import EVERYONE, SUPERVISORS, access
from api.deps import CurrentStaff, RedisDep, SessionDep, SettingsDep, audit
from api.errors import Invalid
from api.routes.alerts import watch_info

router = APIRouter(prefix="/duty", tags=["duty view"])

SILENCE_KINDS = ("communication_failure", "phone_off", "location_failure")
OUTSIDE_KINDS = ("area_exit", "exclusion_entry", "curfew_breach", "overdue_return")
POSITION_AGE = "3 days"  # older fixes are not "the last position" on a duty map

_PEOPLE = f"""
WITH people AS (
    SELECT s.id, s.full_name, s.case_number, s.office_id, s.level, s.key_flags, s.home_zone_id
      FROM supervisees s WHERE s.active AND s.office_id = ANY(:units)
), last AS (  -- kept by ingest (last_positions): no history is read
    SELECT p.supervisee_id, p.device_id, p.fix_time, p.lon, p.lat, p.accuracy, p.provider,
           p.membership
      FROM last_positions p
     WHERE p.supervisee_id IN (SELECT id FROM people) AND p.fix_time > now() - interval '{POSITION_AGE}'
), open_alerts AS (
    SELECT supervisee_id, array_agg(DISTINCT kind) AS kinds, count(*) AS n
      FROM alerts WHERE status <> 'resolved' AND supervisee_id IN (SELECT id FROM people)
     GROUP BY supervisee_id
), travel AS (
    SELECT DISTINCT supervisee_id FROM travel_permits
     WHERE status = 'approved' AND start_at <= now() AND end_at > now()
       AND supervisee_id IN (SELECT id FROM people)
)
SELECT pe.id, pe.full_name, pe.case_number, pe.office_id, pe.level, pe.key_flags, pe.home_zone_id,
       l.device_id, l.fix_time, l.lon, l.lat, l.accuracy, l.provider, l.membership,
       coalesce(a.kinds, '{{}}'), coalesce(a.n, 0), t.supervisee_id IS NOT NULL
  FROM people pe
  LEFT JOIN last l ON l.supervisee_id = pe.id
  LEFT JOIN open_alerts a ON a.supervisee_id = pe.id
  LEFT JOIN travel t ON t.supervisee_id = pe.id
 ORDER BY pe.id
"""

_ZONES = """
SELECT z.id, z.kind, z.name, z.owner_unit_id, ST_AsGeoJSON(z.geom, 6)::jsonb,
       coalesce(array_agg(DISTINCT sz.role) FILTER (WHERE sz.role IS NOT NULL), '{}'),
       coalesce(array_agg(DISTINCT sz.supervisee_id) FILTER (WHERE sz.supervisee_id IS NOT NULL), '{}')
  FROM zones z
  LEFT JOIN supervisee_zones sz ON sz.zone_id = z.id AND sz.active
       AND sz.supervisee_id = ANY(:people)
 WHERE z.active AND (z.id = ANY(:homes) OR sz.id IS NOT NULL)
 GROUP BY z.id
"""

# The district boundaries around the caller's jurisdiction (the shipped regions, kept as the
# districts' zones with their adcode): the map of an office with nobody on it yet is not blank.
_BOUNDARIES = """
SELECT DISTINCT ON (u.adcode) z.id, u.adcode, u.name, ST_AsGeoJSON(z.geom, 6)::jsonb
  FROM org_units u JOIN zones z ON z.adcode = u.adcode AND z.active
 WHERE u.kind = 'district_bureau' AND u.adcode IS NOT NULL
   AND EXISTS (SELECT 1 FROM org_units m WHERE m.id = ANY(:units)
                AND (m.path LIKE u.path || '%' OR u.path LIKE m.path || '%'))
 ORDER BY u.adcode, z.id
"""


def state_of(membership: str | None, kinds: list[str], travelling: bool, has_fix: bool) -> str:
    """The colour of a person on the duty map: what an officer must look at first wins."""
    if any(k in OUTSIDE_KINDS for k in kinds):
        return "outside"
    if any(k in SILENCE_KINDS for k in kinds) or not has_fix:
        return "silent"
    if travelling:
        return "travel"
    if membership == "outside":
        return "outside"
    if membership == "inside":
        return "inside"
    # "border" (the accuracy circle straddles the boundary), "undecidable", or no decision.
    return "undecidable"


@router.get("", **access(SUPERVISORS))
def duty_map(
    ctx: CurrentStaff, session: SessionDep, r: RedisDep, settings: SettingsDep, request: Request,
    watch: str | None = Query(None, min_length=10, max_length=100,
                              description="the duty watch opened with POST /alerts/watch (its "
                                          "purpose is recorded with this read)"),
    purpose: str | None = Query(None, min_length=3, max_length=200,
                                description="or the purpose of this read, said directly"),
) -> dict[str, Any]:
    """Everyone supervised in the caller's jurisdiction: last position (WGS-84, at most 3 days
    old) with accuracy, state, open alerts; and their home areas, exclusion and curfew zones."""
    if watch is not None:
        purpose = watch_info(r, settings, ctx, watch)
    elif purpose is None:
        raise Invalid("say why: `purpose`, or `watch` from POST /alerts/watch")
    rows = session.execute(text(_PEOPLE), {"units": list(ctx.unit_ids)}).all()
    people: list[dict[str, Any]] = []
    for (sid, name, case, office, level, flags, home, dev, fix_time, lon, lat, acc, provider,
         membership, kinds, n_alerts, travelling) in rows:
        people.append({
            "id": sid, "full_name": name, "case_number": case, "office_id": office,
            "level": level, "key_flags": list(flags or []), "home_zone_id": home,
            "position": None if fix_time is None else {
                "device_id": dev, "fix_time": fix_time.isoformat(), "lon": lon, "lat": lat,
                "accuracy": acc, "provider": provider, "membership": membership},
            "open_alerts": int(n_alerts), "alert_kinds": sorted(kinds),
            "state": state_of(membership, list(kinds), bool(travelling), fix_time is not None),
        })
    ids = [p["id"] for p in people]
    homes = sorted({p["home_zone_id"] for p in people if p["home_zone_id"]})
    zones = [
        {"type": "Feature", "id": zid, "geometry": geom,
         "properties": {"kind": kind, "name": name, "owner_unit_id": owner,
                        "roles": sorted(roles), "supervisees": sorted(sups)}}
        for zid, kind, name, owner, geom, roles, sups in session.execute(
            text(_ZONES), {"people": ids, "homes": homes})
    ]
    shown = {z["id"] for z in zones}
    boundaries = [
        {"type": "Feature", "id": zid, "geometry": geom,
         "properties": {"adcode": adcode, "name": name}}
        for zid, adcode, name, geom in session.execute(
            text(_BOUNDARIES), {"units": list(ctx.unit_ids)})
        if zid not in shown
    ]
    audit(session, ctx, request, "location.read_duty", "duty", purpose,
          positions=sum(1 for p in people if p["position"]))
    session.commit()
    return {"supervisees": people, "zones": {"type": "FeatureCollection", "features": zones},
            "boundaries": {"type": "FeatureCollection", "features": boundaries},
            "crs": "wgs84"}


_OVERVIEW = """
WITH units AS (SELECT unnest(CAST(:units AS int[])) AS id)
SELECT u.id, o.name, o.kind, d.id, d.name,
  (SELECT count(*) FROM supervisees s WHERE s.active AND s.office_id = u.id),
  (SELECT count(*) FROM alerts a WHERE a.office_id = u.id AND a.status <> 'resolved'),
  (SELECT count(*) FROM alerts a WHERE a.office_id = u.id AND a.status = 'open'
                                   AND a.ack_deadline < now()),
  (SELECT count(DISTINCT a.supervisee_id) FROM alerts a WHERE a.office_id = u.id
      AND a.status <> 'resolved' AND a.kind = ANY(:silence)),
  (SELECT count(*) FROM roll_calls c WHERE c.office_id = u.id AND c.sent_at > now() - interval '7 days'),
  (SELECT count(*) FROM roll_calls c WHERE c.office_id = u.id AND c.sent_at > now() - interval '7 days'
      AND c.status = 'answered'),
  (SELECT count(*) FROM travel_permits p WHERE p.office_id = u.id AND p.status = 'requested')
FROM units u JOIN org_units o ON o.id = u.id
LEFT JOIN org_units d ON d.id = o.parent_id AND d.kind = 'district_bureau'
WHERE o.kind = 'judicial_office'
ORDER BY o.path
"""


_COUNTS = ("supervisees", "open_alerts", "overdue_alerts", "silent_phones", "rollcalls_sent_7d",
           "rollcalls_answered_7d", "permits_pending")


def _sums(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {k: sum(o[k] for o in rows) for k in _COUNTS}
    sent = out["rollcalls_sent_7d"]
    out["rollcall_answer_rate"] = round(out["rollcalls_answered_7d"] / sent, 3) if sent else None
    return out


@router.get("/overview", **access(EVERYONE))
def overview(ctx: CurrentStaff, session: SessionDep) -> dict[str, Any]:
    """Per office of the caller's jurisdiction, with subtotals per district and the totals:
    people supervised, open and overdue alerts, silent phones, roll-calls answered in the last
    7 days, permits waiting. Counts only, no positions."""
    offices = []
    for (uid, name, _kind, district_id, district_name, people, open_, overdue, silent, sent,
         answered, pending) in session.execute(text(_OVERVIEW), {
             "units": list(ctx.unit_ids), "silence": list(SILENCE_KINDS)}):
        offices.append({"office_id": uid, "name": name, "district_id": district_id,
                        "district_name": district_name, "supervisees": people,
                        "open_alerts": open_, "overdue_alerts": overdue, "silent_phones": silent,
                        "rollcalls_sent_7d": sent, "rollcalls_answered_7d": answered,
                        "rollcall_answer_rate": round(answered / sent, 3) if sent else None,
                        "permits_pending": pending})
    districts: dict[Any, list[dict[str, Any]]] = {}
    for o in offices:
        districts.setdefault(o["district_id"], []).append(o)
    return {"offices": offices,
            "districts": [{"district_id": did, "name": rows[0]["district_name"],
                           "offices": [o["office_id"] for o in rows], **_sums(rows)}
                          for did, rows in districts.items()],
            "totals": _sums(offices)}
