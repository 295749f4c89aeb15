"""Compliance reports (合规统计报表): the figures a district or city bureau reviews each month.

`compliance(conn, unit_id, start, end)` computes, for the period [start, end) and the judicial
offices under the unit (an office, a district bureau or the city bureau), one row per office,
per district and for the whole unit. Every figure is defined here; the JSON, CSV and PDF forms
(`alerts/report_docs.py`) only present them.

**People supervised.** Supervisees of the offices whose supervision overlaps the period:
enrolled (`created_at`) before its end and active, or, when inactive, with a last record (a
recorded change, the last fix) after its start; the schema keeps no end date, so the last
record stands for it, as in `alerts/retention.py`. `person_days`: their supervised time in the
period, in days. Each person counts in their current office.

**Location coverage (定位覆盖率).** The share of the expected reporting intervals, over the
person's supervised time, that hold at least one usable fix:

- a usable fix is one the engine could decide with (`geofence.engine.is_usable`): an accuracy
  above 0 and within the person's `max_accuracy_m` (the rule profile's level, or the person's
  override, as in force when the fix was stored), not cell-only, not a mock location;
- the expected interval is the level's reporting interval (`CheckinRules.interval`: strict
  5 min, normal 15, lenient 60; halved for key persons), taken on a 5-minute grid aligned to
  the hour: the largest of 5, 10, 15, 20, 30, 60 minutes that is not longer (a key person at
  normal level, 7.5 min, is held to 5-minute slots). Key periods' tighter intervals are not
  counted: a holiday does not lower a month's coverage;
- supervised time is counted in whole UTC hours (= whole Beijing hours) lying wholly inside the
  supervision and the period; the level (and key-person flag) of an hour is the one in force
  at its start, from the recorded changes (`supervisee_changes`);
- `coverage` = slots with a usable fix / expected slots; `hour_coverage` is the same with one
  slot per hour (hours with a usable fix / supervised hours), the lenient reading.

Coverage reads `position_hours` (migration 0017): per person and hour the fixes, the usable
ones and a 12-bit mask of the 5-minute slots holding a usable fix, kept by a statement trigger
on `positions` in the ingest transaction. A city's month is ~720 rows per person (3.6 million for
5,000 people) instead of every fix (50 million and more), read once in hour order (BRIN) and
hash-joined to the people's level periods. A trigger rather than a job that summarises each
finished hour: phones buffer fixes while offline and send them hours or days late (ingest takes
fixes up to 30 days old), and a job would have to find those late rows again in a table with no
index on arrival time; the trigger counts every row once, whenever it arrives (its cost on the
ingest path: BENCHMARKS.md). Moving default-partition rows to their day inserts into the child
table and does not fire it; a restored archive day is counted afresh (`store/partitions.py`).

**Silences (失联) by kind and total duration.** Communication failure, location failure and
phone off alerts. A silence is measured from the moment it became an alert (its deadline: the
allowed interval plus buffer after the last message or usable fix) until the message that ended
it (`cleared` in the alert's history; a silence that comes back reopens the same alert,
`recurred`), or until the alert was resolved, or the period's end. `count`: spells that started
in the period; `hours`: the time of all spells within the period.

**Alerts** opened in the period, by kind and by severity (suppressed ones included, and
counted apart). **Time to acknowledge (签收用时)**: from opening to acknowledgement, for alerts
opened in the period that were acknowledged and not suppressed (no one was told of those);
p50 and p90 with linear interpolation (PostgreSQL's `percentile_cont`), per office, district
and unit over the alerts themselves (not averaged from offices). `unacknowledged`: alerts opened
in the period without an acknowledgement. **Escalations**: alerts opened in the period that
climbed to the district bureau (level 1 or more) and to the city bureau (level 2).

**Roll-calls (点名)** sent in the period: answered (a fresh usable fix within the window, on
time by construction), missed, still waiting. **Active confirmation**: the engine's requests for
a fresh fix in the period, by outcome.

**Travel permits (外出)** requested in the period, by approving tier (office, district, city)
and outcome: approved (including those back, `returned`), rejected, revoked, pending.
**Overdue returns (逾期未销假)**: overdue-return alerts opened in the period.

**Sanctions (处罚)**: decided ones (`sanctions`, decided in the period) by kind; suggested ones
are the profile's ladder applied to each out-of-contact spell that started in the period
(communication failure or phone off, merged per person, not disposed of as a false alarm, a
device problem or authorised), at its length by the period's end: more than
`revocation_after_days` a revocation request, more than `warning_after_days` a warning, more
than `reprimand_after_days` a reprimand (the repeated-reprimand step is left to the officer,
who sees it on the person's page).

Offices are the alert's, roll-call's, permit's and request's own office (where it was handled);
district and unit rows add up their offices, except the acknowledgement percentiles.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from alerts.service import active_profile
from geofence.profile import LEVELS, RuleProfile
from store.enums import AlertKind, Severity

SILENCE_KINDS = (AlertKind.COMMUNICATION_FAILURE.value, AlertKind.LOCATION_FAILURE.value,
                 AlertKind.PHONE_OFF.value)
OUT_OF_CONTACT = (AlertKind.COMMUNICATION_FAILURE.value, AlertKind.PHONE_OFF.value)
NOT_GROUNDS = ("false_alarm", "device_problem", "authorised")  # dispositions: no sanction ground
ALERT_KINDS = tuple(k.value for k in AlertKind)
SEVERITIES = tuple(s.value for s in Severity)
TIERS = ("office", "district", "city")
OUTCOMES = ("approved", "rejected", "revoked", "pending")
SANCTIONS = ("reprimand", "warning", "revocation_request")
ROLLCALL_FIGURES = ("sent", "answered", "missed", "waiting")
REQUEST_FIGURES = ("sent", "answered", "expired", "throttled")
GRID_MIN = (5, 10, 15, 20, 30, 60)  # slot lengths on the hour's 5-minute grid
MAX_DAYS = 366


class PeriodError(ValueError):
    """A period the report cannot cover (the API answers 422 with the message)."""


def slot_minutes(interval_s: float) -> int:
    """The expected interval on the 5-minute grid: the longest grid slot not longer than it."""
    fits = [m for m in GRID_MIN if m * 60 <= interval_s + 1e-6]
    return fits[-1] if fits else GRID_MIN[0]


def period_of(start: date | datetime, end: date | datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """[start, end) in UTC: a date is its local midnight; a time must name a whole hour (the
    summary is hourly) and carry its zone."""
    def at(v: date | datetime, what: str) -> datetime:
        if not isinstance(v, datetime):
            return datetime.combine(v, time(), tz).astimezone(UTC)
        if v.tzinfo is None:
            raise PeriodError(f"`{what}` needs a time zone (e.g. +08:00 or Z)")
        if v.minute or v.second or v.microsecond:
            raise PeriodError(f"`{what}` must be a whole hour")
        return v.astimezone(UTC)
    s, e = at(start, "from"), at(end, "to")
    if e <= s:
        raise PeriodError("`to` must be after `from`")
    if e - s > timedelta(days=MAX_DAYS):
        raise PeriodError(f"a report covers at most {MAX_DAYS} days")
    return s, e


def previous_month(now: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """The last whole local month before `now`, in UTC."""
    local = now.astimezone(tz)
    first = date(local.year, local.month, 1)
    prev = date(first.year - (first.month == 1), 12 if first.month == 1 else first.month - 1, 1)
    return period_of(prev, first, tz)


@dataclass(frozen=True)
class Unit:
    id: int
    name: str
    kind: str
    parent_id: int | None


# ---------------------------------------------------------------------------------------------
# The statements: each returns rows per office
# ---------------------------------------------------------------------------------------------

# Who was supervised when: the window [a, b) of each person inside the period.
_PEOPLE = """
SELECT s.id, s.office_id, s.level, cardinality(s.key_flags) > 0,
       greatest(s.created_at, %(t0)s) AS a,
       least(%(t1)s, CASE WHEN s.active THEN %(t1)s ELSE greatest(
           s.created_at, lp.fix_time,
           (SELECT max(c.at) FROM supervisee_changes c WHERE c.supervisee_id = s.id)) END) AS b
  FROM supervisees s LEFT JOIN last_positions lp ON lp.supervisee_id = s.id
 WHERE s.office_id = ANY(%(offices)s) AND s.created_at < %(t1)s
"""

_CHANGES = """
SELECT supervisee_id, at, field, old_value, new_value FROM supervisee_changes
 WHERE field IN ('level', 'key_flags') AND supervisee_id = ANY(%(people)s)
 ORDER BY supervisee_id, at, id
"""

# What position_hours holds for each piece of supervised time (whole hours, k 5-minute slots),
# the pieces in a temporary table with its statistics: the month's rows are read once in hour
# order (BRIN) and probe a hash of the pieces. (Joined to an unnest() of arrays, which has no
# statistics, PostgreSQL hashed the millions of rows instead and spilled them to disk; a nested
# loop of index scans would visit each person's ~720 rows on ~720 different pages.)
_PIECES_TABLE = """
CREATE TEMPORARY TABLE report_pieces (id integer, office integer, h0 timestamptz,
                                      h1 timestamptz, k integer) ON COMMIT DROP
"""
_COVERED = """
SELECT x.office, sum(hour_slots_covered(h.slots, x.k)), count(*),
       count(*) FILTER (WHERE h.usable > 0), sum(h.fixes), sum(h.usable)
  FROM report_pieces x
  JOIN position_hours h ON h.supervisee_id = x.id AND h.hour >= x.h0 AND h.hour < x.h1
 WHERE h.hour >= %(t0)s AND h.hour < %(t1)s
 GROUP BY x.office
"""

_ALERTS = """
SELECT office_id, kind, severity, count(*), count(*) FILTER (WHERE suppressed),
       count(*) FILTER (WHERE acknowledged_at IS NULL),
       count(*) FILTER (WHERE escalation_level >= 1), count(*) FILTER (WHERE escalation_level >= 2)
  FROM alerts
 WHERE office_id = ANY(%(offices)s) AND opened_at >= %(t0)s AND opened_at < %(t1)s
 GROUP BY 1, 2, 3
"""

# Percentiles cannot be added up: per office, per district and for everything, over the alerts.
_ACK = """
SELECT o.parent_id, a.office_id, GROUPING(o.parent_id, a.office_id), count(*),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM a.acknowledged_at - a.opened_at)),
       percentile_cont(0.9) WITHIN GROUP (ORDER BY extract(epoch FROM a.acknowledged_at - a.opened_at))
  FROM alerts a JOIN org_units o ON o.id = a.office_id
 WHERE a.office_id = ANY(%(offices)s) AND a.opened_at >= %(t0)s AND a.opened_at < %(t1)s
   AND a.acknowledged_at IS NOT NULL AND NOT a.suppressed
 GROUP BY GROUPING SETS ((o.parent_id, a.office_id), (o.parent_id), ())
"""

_SILENCES = """
SELECT a.office_id, a.supervisee_id, a.kind, coalesce(a.first_fix_time, a.opened_at),
       CASE WHEN a.status = 'resolved' THEN a.resolved_at END, a.cleared_at, a.disposition,
       coalesce(array_agg(e.action ORDER BY e.at, e.id) FILTER (WHERE e.id IS NOT NULL), '{}'),
       coalesce(array_agg(e.at ORDER BY e.at, e.id) FILTER (WHERE e.id IS NOT NULL), '{}'),
       coalesce(array_agg(e.detail ->> 'since' ORDER BY e.at, e.id)
                FILTER (WHERE e.id IS NOT NULL), '{}')
  FROM alerts a
  LEFT JOIN alert_events e ON e.alert_id = a.id AND e.action IN ('cleared', 'recurred')
 WHERE a.office_id = ANY(%(offices)s) AND a.kind = ANY(%(kinds)s)
   AND coalesce(a.first_fix_time, a.opened_at) < %(t1)s
   AND (a.status <> 'resolved' OR a.resolved_at > %(t0)s)
 GROUP BY a.id
"""

_ROLLCALLS = """
SELECT office_id, count(*), count(*) FILTER (WHERE status = 'answered'),
       count(*) FILTER (WHERE status = 'missed'), count(*) FILTER (WHERE status = 'sent')
  FROM roll_calls
 WHERE office_id = ANY(%(offices)s) AND sent_at >= %(t0)s AND sent_at < %(t1)s
 GROUP BY 1
"""

_REQUESTS = """
SELECT office_id, count(*) FILTER (WHERE sent_at IS NOT NULL),
       count(*) FILTER (WHERE status = 'answered'), count(*) FILTER (WHERE status = 'expired'),
       count(*) FILTER (WHERE status = 'throttled')
  FROM location_requests
 WHERE office_id = ANY(%(offices)s) AND requested_at >= %(t0)s AND requested_at < %(t1)s
 GROUP BY 1
"""

_PERMITS = """
SELECT office_id, required_tier,
       CASE status WHEN 'returned' THEN 'approved' WHEN 'requested' THEN 'pending'
                   ELSE status END,
       count(*)
  FROM travel_permits
 WHERE office_id = ANY(%(offices)s) AND created_at >= %(t0)s AND created_at < %(t1)s
 GROUP BY 1, 2, 3
"""

_SANCTIONS = """
SELECT s.office_id, x.kind, count(*)
  FROM sanctions x JOIN supervisees s ON s.id = x.supervisee_id
 WHERE s.office_id = ANY(%(offices)s) AND x.decided_at >= %(t0)s AND x.decided_at < %(t1)s
 GROUP BY 1, 2
"""


# ---------------------------------------------------------------------------------------------
# Silence spells from an alert and its history
# ---------------------------------------------------------------------------------------------


def spells(start: datetime, resolved_at: datetime | None, cleared_at: datetime | None,
           actions: list[str], ats: list[datetime], sinces: list[str | None]
           ) -> list[tuple[datetime, datetime | None]]:
    """The spells of one silence alert: (start, end or None while it lasts).

    An alert without history steps (raised before they were recorded) is one spell ending when
    it was cleared or resolved."""
    out: list[tuple[datetime, datetime | None]] = []
    began: datetime | None = start
    for action, at, since in zip(actions, ats, sinces, strict=True):
        if action == "cleared" and began is not None:
            out.append((began, at))
            began = None
        elif action == "recurred" and began is None:
            began = datetime.fromisoformat(since) if since else at
    if began is not None:
        end = resolved_at if actions else (cleared_at or resolved_at)
        out.append((began, end))
    return out


def _overlap(a: datetime, b: datetime | None, t0: datetime, t1: datetime) -> float:
    end = t1 if b is None else min(b, t1)
    return max(0.0, (end - max(a, t0)).total_seconds())


def _merge(intervals: Iterable[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    out: list[tuple[datetime, datetime]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def suggestion(days: float, profile: RuleProfile) -> str | None:
    """The ladder's step for an out-of-contact spell of this many days (no repeat rule)."""
    ladder = profile.sanctions
    if days > ladder.revocation_after_days:
        return "revocation_request"
    if days > ladder.warning_after_days:
        return "warning"
    if days > ladder.reprimand_after_days:
        return "reprimand"
    return None


# ---------------------------------------------------------------------------------------------
# Assembling the report
# ---------------------------------------------------------------------------------------------


def _blank() -> dict[str, Any]:
    return {
        "people": 0, "person_days": 0.0,
        "coverage": {"supervised_hours": 0, "expected_slots": 0, "covered_slots": 0,
                     "hours_with_fix": 0, "hours_with_usable_fix": 0, "fixes": 0,
                     "usable_fixes": 0, "rate": None, "hour_rate": None},
        "silences": {k: {"count": 0, "hours": 0.0} for k in SILENCE_KINDS},
        "silence_hours": 0.0,
        "alerts": {"total": 0, "suppressed": 0, "by_kind": dict.fromkeys(ALERT_KINDS, 0),
                   "by_severity": dict.fromkeys(SEVERITIES, 0)},
        "acknowledgement": {"acknowledged": 0, "unacknowledged": 0, "p50_s": None, "p90_s": None},
        "escalations": {"to_district": 0, "to_city": 0},
        "rollcalls": {**dict.fromkeys(ROLLCALL_FIGURES, 0), "answer_rate": None},
        "location_requests": dict.fromkeys(REQUEST_FIGURES, 0),
        "permits": {"total": 0, "by_tier": {t: dict.fromkeys(OUTCOMES, 0) for t in TIERS}},
        "overdue_returns": 0,
        "sanctions": {"suggested": dict.fromkeys(SANCTIONS, 0),
                      "decided": dict.fromkeys(SANCTIONS, 0)},
    }


def _add(into: dict[str, Any], row: Mapping[str, Any]) -> None:
    """Add one row's counts into another (ratios and percentiles are set afterwards)."""
    for k, v in row.items():
        if isinstance(v, dict):
            _add(into[k], v)
        elif isinstance(v, int | float) and not isinstance(v, bool) and k not in (
                "rate", "hour_rate", "answer_rate", "p50_s", "p90_s"):
            into[k] += v


def _ratios(row: dict[str, Any]) -> dict[str, Any]:
    c = row["coverage"]
    c["rate"] = round(c["covered_slots"] / c["expected_slots"], 4) if c["expected_slots"] else None
    c["hour_rate"] = (round(c["hours_with_usable_fix"] / c["supervised_hours"], 4)
                      if c["supervised_hours"] else None)
    rc = row["rollcalls"]
    rc["answer_rate"] = round(rc["answered"] / rc["sent"], 4) if rc["sent"] else None
    row["person_days"] = round(row["person_days"], 2)
    for s in row["silences"].values():
        s["hours"] = round(s["hours"], 2)
    row["silence_hours"] = round(sum(s["hours"] for s in row["silences"].values()), 2)
    return row


def units_under(conn: psycopg.Connection, unit_id: int) -> list[Unit]:
    """The unit and everything below it, in path order (empty if it does not exist)."""
    return [Unit(*r) for r in conn.execute(
        """SELECT u.id, u.name, u.kind, u.parent_id FROM org_units u, org_units top
            WHERE top.id = %s AND u.path LIKE top.path || '%%' ORDER BY u.path""", (unit_id,))]


def compliance(conn: psycopg.Connection, unit_id: int, start: datetime, end: datetime,
               profile: RuleProfile | None = None, now: datetime | None = None
               ) -> dict[str, Any]:
    """The report for the unit's offices over [start, end) (UTC, whole hours); see the module
    docstring for every figure. `now` caps running silences (default: the database's clock).

    Runs in one transaction (a savepoint inside the caller's; its temporary table goes with
    it) without JIT compilation: PostgreSQL compiled the month's statements for over a second
    each, longer than they run."""
    with conn.transaction():
        conn.execute("SET LOCAL jit = off")
        return _compliance(conn, unit_id, start, end, profile, now)


def _compliance(conn: psycopg.Connection, unit_id: int, start: datetime, end: datetime,
                profile: RuleProfile | None, now: datetime | None) -> dict[str, Any]:
    profile = profile or active_profile(conn)
    units = units_under(conn, unit_id)
    if not units:
        raise LookupError(f"organisation unit {unit_id} not found")
    top, by_id = units[0], {u.id: u for u in units}
    offices = [u for u in units if u.kind == "judicial_office"]
    ids = [o.id for o in offices]
    if now is None:
        row = conn.execute("SELECT now()").fetchone()
        now = row[0] if row else datetime.now(UTC)
    assert now is not None
    cap = min(end, now)
    p = {"offices": ids, "t0": start, "t1": end}
    rows: dict[int, dict[str, Any]] = {o: _blank() for o in ids}

    pieces = _supervision(conn, p, rows, profile)
    conn.execute(_PIECES_TABLE)
    with conn.cursor().copy("COPY report_pieces FROM STDIN") as cp:
        for piece in pieces:
            cp.write_row(piece)
    conn.execute("ANALYZE report_pieces")
    for office, covered, h_fix, h_usable, fixes, usable in conn.execute(_COVERED, p):
        c = rows[office]["coverage"]
        c.update(covered_slots=int(covered), hours_with_fix=int(h_fix),
                 hours_with_usable_fix=int(h_usable), fixes=int(fixes), usable_fixes=int(usable))
    conn.execute("DROP TABLE report_pieces")
    for office, kind, sev, n, suppressed, unacked, to_d, to_c in conn.execute(_ALERTS, p):
        a = rows[office]["alerts"]
        a["total"] += n
        a["suppressed"] += suppressed
        a["by_kind"][kind] = a["by_kind"].get(kind, 0) + n
        a["by_severity"][sev] = a["by_severity"].get(sev, 0) + n
        rows[office]["acknowledgement"]["unacknowledged"] += unacked
        rows[office]["escalations"]["to_district"] += to_d
        rows[office]["escalations"]["to_city"] += to_c
        if kind == AlertKind.OVERDUE_RETURN.value:
            rows[office]["overdue_returns"] += n
    _silences(conn, p, rows, start, end, cap, profile)
    for office, sent, answered, missed, waiting in conn.execute(_ROLLCALLS, p):
        rows[office]["rollcalls"].update(sent=sent, answered=answered, missed=missed,
                                         waiting=waiting)
    for office, sent, answered, expired, throttled in conn.execute(_REQUESTS, p):
        rows[office]["location_requests"].update(sent=sent, answered=answered, expired=expired,
                                                 throttled=throttled)
    for office, tier, outcome, n in conn.execute(_PERMITS, p):
        rows[office]["permits"]["by_tier"][tier][outcome] += n
        rows[office]["permits"]["total"] += n
    for office, kind, n in conn.execute(_SANCTIONS, p):
        rows[office]["sanctions"]["decided"][kind] += n

    # Offices, then each district's and the unit's sums; the percentiles from their own rows.
    district_of = {o.id: o.parent_id for o in offices}
    districts = [u for u in units if u.kind == "district_bureau"]
    totals: dict[int, dict[str, Any]] = {d.id: _blank() for d in districts}
    total = _blank()
    for o in ids:
        district = district_of[o]
        if district is not None and district in totals:
            _add(totals[district], rows[o])
        _add(total, rows[o])
    for parent, office, grouping, n, p50, p90 in conn.execute(_ACK, p):
        target = (rows.get(office) if grouping == 0 else
                  totals.get(parent) if grouping == 1 else total)
        if target is not None:
            target["acknowledgement"].update(acknowledged=int(n), p50_s=_secs(p50),
                                             p90_s=_secs(p90))

    def unit_row(u: Unit, figures: dict[str, Any]) -> dict[str, Any]:
        return {"unit_id": u.id, "name": u.name, "kind": u.kind, "parent_id": u.parent_id,
                **_ratios(figures)}

    return {
        "unit": {"id": top.id, "name": top.name, "kind": top.kind},
        "period": {"from": start.isoformat(), "to": end.isoformat(),
                   "hours": int((end - start).total_seconds() // 3600)},
        "generated_at": now.isoformat(),
        "profile": profile.label,
        "offices": [unit_row(by_id[o], rows[o]) for o in ids],
        "districts": [unit_row(d, totals[d.id]) for d in districts],
        "total": unit_row(top, total),
    }


def _ceil_hour(t: datetime) -> datetime:
    h = t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return h if h == t else h + timedelta(hours=1)


def _floor_hour(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _value_at(changes: list[tuple[datetime, Any, Any]], t: datetime, now: Any) -> Any:
    """A field's value at `t` from its changes (at, old, new) in time order: the last change's
    new value at or before `t`, else the first later change's old value, else today's."""
    before = [new for at, _, new in changes if at <= t]
    if before:
        return before[-1]
    return changes[0][1] if changes else now


def _supervision(conn: psycopg.Connection, p: dict[str, Any], rows: dict[int, dict[str, Any]],
                 profile: RuleProfile) -> list[tuple[int, int, datetime, datetime, int]]:
    """People, person-days, supervised hours and expected slots per office; returns the pieces
    of supervised time (person, office, first hour, end hour, slots of 5 minutes per
    expected interval) for the coverage statement."""
    k_of = {(lv, key): slot_minutes(profile.checkin.interval(lv, key)) // 5
            for lv in LEVELS for key in (False, True)}
    people = [r for r in conn.execute(_PEOPLE, p).fetchall() if r[5] > r[4]]
    changes: dict[tuple[int, str], list[tuple[datetime, Any, Any]]] = defaultdict(list)
    for person, at, fld, old, new in conn.execute(_CHANGES, {"people": [r[0] for r in people]}):
        changes[(person, fld)].append((at, old, new))
    out: list[tuple[int, int, datetime, datetime, int]] = []
    for person, office, level, key, a, b in people:
        row = rows[office]
        row["people"] += 1
        row["person_days"] += (b - a).total_seconds() / 86400
        levels, flags = changes.get((person, "level"), []), changes.get((person, "key_flags"), [])
        starts = sorted({a, *(at for at, _, _ in levels + flags if a < at < b)})
        for i, x in enumerate(starts):
            h0 = _ceil_hour(x)
            h1 = _ceil_hour(starts[i + 1]) if i + 1 < len(starts) else _floor_hour(b)
            if h1 <= h0:
                continue
            k = k_of.get((_value_at(levels, x, level), bool(_value_at(flags, x, key))), 3)
            hours = int((h1 - h0).total_seconds() // 3600)
            row["coverage"]["supervised_hours"] += hours
            row["coverage"]["expected_slots"] += hours * 12 // k
            out.append((person, office, h0, h1, k))
    return out


def _secs(v: float | None) -> float | None:
    return None if v is None else round(float(v), 1)


def _silences(conn: psycopg.Connection, p: dict[str, Any], rows: dict[int, dict[str, Any]],
              t0: datetime, t1: datetime, cap: datetime, profile: RuleProfile) -> None:
    """Silence spells per kind, and the sanction ladder on out-of-contact spells."""
    contact: dict[tuple[int, int], list[tuple[datetime, datetime]]] = defaultdict(list)
    for office, person, kind, first, resolved, cleared, disposition, actions, ats, sinces in \
            conn.execute(_SILENCES, {**p, "kinds": list(SILENCE_KINDS)}):
        figures = rows[office]["silences"][kind]
        for a, b in spells(first, resolved, cleared, list(actions), list(ats), list(sinces)):
            if t0 <= a < t1:
                figures["count"] += 1
            figures["hours"] += _overlap(a, b, t0, cap) / 3600
            if kind in OUT_OF_CONTACT and disposition not in NOT_GROUNDS:
                contact[(office, person)].append((a, cap if b is None else min(b, cap)))
    for (office, _), intervals in contact.items():
        for a, b in _merge(intervals):
            if t0 <= a < t1:
                kind = suggestion((b - a).total_seconds() / 86400, profile)
                if kind is not None:
                    rows[office]["sanctions"]["suggested"][kind] += 1
