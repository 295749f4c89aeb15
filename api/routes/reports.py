"""Compliance reports on demand: any unit of the caller's jurisdiction, any period up to a year.

`GET /reports/compliance` answers the figures of `alerts/reports.py` as JSON, CSV (for Excel)
or PDF (charts, Chinese text). Reports hold counts, durations and rates, never a position, so
auditors may read them too; officers get their own office (their jurisdiction). Every report
is audited with its unit, period and format.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Any, Literal
from urllib.parse import quote
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from alerts.report_docs import to_csv, to_pdf
from alerts.reports import PeriodError, compliance, period_of, previous_month
from api.authz import EVERYONE, access
from api.deps import CurrentStaff, SessionDep, SettingsDep, audit, require_unit
from api.errors import Invalid

router = APIRouter(prefix="/reports", tags=["reports"])

MEDIA = {"csv": "text/csv; charset=utf-8", "pdf": "application/pdf"}


def _when(value: str | None, what: str) -> date | datetime | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value) if len(value) == 10 else datetime.fromisoformat(value)
    except ValueError as e:
        raise Invalid(f"`{what}` is neither a date (2026-11-01) nor a time with its zone "
                      f"(2026-11-01T00:00:00+08:00)") from e


@router.get("/compliance", response_model=None, **access(EVERYONE))
def compliance_report(
    ctx: CurrentStaff, session: SessionDep, settings: SettingsDep, request: Request,
    unit_id: int | None = Query(None, ge=1, description="an office, district or city bureau of "
                                                        "your jurisdiction (default: your unit)"),
    start: str | None = Query(None, alias="from", description=(
        "first day (local date, 2026-11-01) or a whole hour with its zone; default: the first "
        "day of last month")),
    end: str | None = Query(None, alias="to", description=(
        "the day after the last (2026-12-01), or a whole hour; at most 366 days after `from`")),
    fmt: Literal["json", "csv", "pdf"] = Query("json", alias="format"),
) -> dict[str, Any] | Response:
    """Per office, district and the unit: people supervised, location coverage, silences,
    alerts by kind and severity, time to acknowledge (p50/p90), escalations, roll-calls,
    active confirmation, permits by tier and outcome, overdue returns, sanctions suggested and
    decided. Definitions: the `alerts.reports` module (and the PDF's last section)."""
    unit = ctx.unit.id if unit_id is None else unit_id
    require_unit(ctx, unit)
    tz = ZoneInfo(settings.report_timezone)
    a, b = _when(start, "from"), _when(end, "to")
    try:
        if a is None and b is None:
            t0, t1 = previous_month(datetime.now(UTC), tz)
        elif a is None or b is None:
            raise PeriodError("give both `from` and `to`, or neither (last month)")
        else:
            t0, t1 = period_of(a, b, tz)
    except PeriodError as e:
        raise Invalid(str(e)) from e
    conn = session.connection().connection.driver_connection
    report = compliance(conn, unit, t0, t1)  # type: ignore[arg-type]
    audit(session, ctx, request, "report.compliance", f"org_unit:{unit}",
          start=t0.isoformat(), end=t1.isoformat(), format=fmt)
    session.commit()
    if fmt == "json":
        return report
    body = to_csv(report, tz) if fmt == "csv" else to_pdf(report, tz)
    local = [datetime.fromisoformat(report["period"][k]).astimezone(tz) for k in ("from", "to")]
    filename = (f"合规报表-{report['unit']['name']}-{local[0]:%Y%m%d}-{local[1]:%Y%m%d}.{fmt}")
    ascii_name = re.sub(r"[^A-Za-z0-9._-]", "_",
                        f"compliance-{unit}-{local[0]:%Y%m%d}-{local[1]:%Y%m%d}.{fmt}")
    return Response(body, media_type=MEDIA[fmt], headers={
        "Content-Disposition": f"attachment; filename=\"{ascii_name}\"; "
                               f"filename*=UTF-8''{quote(filename)}"})
