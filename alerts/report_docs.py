"""The compliance report as a bureau reads it: CSV for Excel, PDF with charts (Chinese first).

The figures come from `alerts/reports.py` (their definitions are there); nothing is computed
here beyond presentation (percentages, minutes).

- CSV: UTF-8 with a byte-order mark (Excel opens it as UTF-8), one row per unit — the offices,
  each district's subtotal, the unit's total — and one header row whose cells read
  `中文名 english_key` (Chinese for the reader, the English key after the last space for a
  program: `header.rsplit(" ", 1)[1]`).
- PDF: HTML and inline SVG charts rendered by WeasyPrint with the Noto CJK fonts of Debian's
  `fonts-noto-cjk` (subset and embedded): a summary, coverage per office, alerts by kind, time
  to acknowledge per office, the table per unit, and what each figure means.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from html import escape
from typing import Any
from zoneinfo import ZoneInfo

from alerts.delivery import KIND_ZH
from alerts.reports import ALERT_KINDS, OUTCOMES, SANCTIONS, SEVERITIES, SILENCE_KINDS, TIERS

KIND_LEVEL_ZH = {"judicial_office": "司法所", "district_bureau": "区司法局", "city_bureau": "市司法局"}
SEVERITY_ZH = {"critical": "紧急", "high": "高", "medium": "中", "low": "低"}
TIER_ZH = {"office": "司法所", "district": "区局", "city": "市局"}
OUTCOME_ZH = {"approved": "批准", "rejected": "驳回", "revoked": "撤销", "pending": "待审批"}
SANCTION_ZH = {"reprimand": "训诫", "warning": "警告", "revocation_request": "提请撤销"}
FONT = "Noto Sans CJK SC"


def _pct(v: float | None) -> float | None:
    return None if v is None else round(v * 100, 2)


def _min(v: float | None) -> float | None:
    return None if v is None else round(v / 60, 1)


Column = tuple[str, str, Callable[[dict[str, Any]], Any]]


def _at(*path: str, then: Callable[[Any], Any] = lambda v: v) -> Callable[[dict[str, Any]], Any]:
    """The value at a path of keys in a unit row, passed through `then`."""
    def get(row: dict[str, Any]) -> Any:
        v: Any = row
        for key in path:
            v = v[key]
        return then(v)
    return get


def columns() -> list[Column]:
    """(Chinese name, English key, value of a unit row) for every CSV column."""
    cols: list[Column] = [
        ("单位ID", "unit_id", _at("unit_id")),
        ("单位", "unit", _at("name")),
        ("层级", "level", _at("kind", then=lambda k: KIND_LEVEL_ZH.get(k, k))),
        ("上级单位ID", "parent_id", _at("parent_id")),
        ("矫正对象人数", "people", _at("people")),
        ("监管人日", "person_days", _at("person_days")),
        ("定位覆盖率(%)", "coverage_pct", _at("coverage", "rate", then=_pct)),
        ("应报时段数", "expected_slots", _at("coverage", "expected_slots")),
        ("有效定位时段数", "covered_slots", _at("coverage", "covered_slots")),
        ("小时覆盖率(%)", "hour_coverage_pct", _at("coverage", "hour_rate", then=_pct)),
        ("监管小时数", "supervised_hours", _at("coverage", "supervised_hours")),
        ("定位点数", "fixes", _at("coverage", "fixes")),
        ("有效定位点数", "usable_fixes", _at("coverage", "usable_fixes")),
    ]
    for k in SILENCE_KINDS:
        cols.append((f"{KIND_ZH[k]}次数", f"{k}_count", _at("silences", k, "count")))
        cols.append((f"{KIND_ZH[k]}时长(小时)", f"{k}_hours", _at("silences", k, "hours")))
    cols += [("失联总时长(小时)", "silence_hours", _at("silence_hours")),
             ("告警总数", "alerts_total", _at("alerts", "total"))]
    cols += [(f"告警-{KIND_ZH.get(k, k)}", f"alerts_{k}", _at("alerts", "by_kind", k))
             for k in ALERT_KINDS]
    cols += [(f"告警-{SEVERITY_ZH[s]}级", f"alerts_{s}", _at("alerts", "by_severity", s))
             for s in SEVERITIES]
    cols += [
        ("暂停提醒期间告警", "alerts_suppressed", _at("alerts", "suppressed")),
        ("已签收", "acknowledged", _at("acknowledgement", "acknowledged")),
        ("未签收", "unacknowledged", _at("acknowledgement", "unacknowledged")),
        ("签收用时中位数(分钟)", "ack_p50_min", _at("acknowledgement", "p50_s", then=_min)),
        ("签收用时P90(分钟)", "ack_p90_min", _at("acknowledgement", "p90_s", then=_min)),
        ("升级至区局", "escalated_to_district", _at("escalations", "to_district")),
        ("升级至市局", "escalated_to_city", _at("escalations", "to_city")),
        ("点名下发", "rollcalls_sent", _at("rollcalls", "sent")),
        ("点名按时应答", "rollcalls_answered", _at("rollcalls", "answered")),
        ("点名未应答", "rollcalls_missed", _at("rollcalls", "missed")),
        ("点名待应答", "rollcalls_waiting", _at("rollcalls", "waiting")),
        ("点名应答率(%)", "rollcall_answer_pct", _at("rollcalls", "answer_rate", then=_pct)),
        ("主动核实-下发", "confirm_sent", _at("location_requests", "sent")),
        ("主动核实-应答", "confirm_answered", _at("location_requests", "answered")),
        ("主动核实-超时", "confirm_expired", _at("location_requests", "expired")),
        ("主动核实-限流未发", "confirm_throttled", _at("location_requests", "throttled")),
        ("外出申请", "permits_total", _at("permits", "total")),
    ]
    cols += [(f"外出-{TIER_ZH[t]}审批-{OUTCOME_ZH[o]}", f"permits_{t}_{o}",
              _at("permits", "by_tier", t, o)) for t in TIERS for o in OUTCOMES]
    cols.append(("逾期未销假", "overdue_returns", _at("overdue_returns")))
    cols += [(f"建议{SANCTION_ZH[k]}", f"suggested_{k}", _at("sanctions", "suggested", k))
             for k in SANCTIONS]
    cols += [(f"已决定{SANCTION_ZH[k]}", f"decided_{k}", _at("sanctions", "decided", k))
             for k in SANCTIONS]
    return cols


def unit_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Offices, then district subtotals, then the total (an office's report is one row)."""
    rows = [*report["offices"], *report["districts"]]
    if report["total"]["unit_id"] not in {r["unit_id"] for r in rows}:
        rows.append(report["total"])
    return rows


def to_csv(report: dict[str, Any], tz: ZoneInfo) -> bytes:
    """The report as CSV for Excel (see the module docstring)."""
    cols = columns()
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow([f"{zh} {en}" for zh, en, _ in cols] + ["期间开始 from", "期间结束 to"])
    start, end = (_local(report["period"][k], tz) for k in ("from", "to"))
    for r in unit_rows(report):
        w.writerow([csv_cell(get(r)) for _, _, get in cols] + [start, end])
    return ("\ufeff" + out.getvalue()).encode()


def csv_cell(v: Any) -> Any:
    """A CSV cell; text that Excel would take for a formula (a unit named "=…", a phone's
    provider string "=HYPERLINK(…)") is quoted with a leading apostrophe (OWASP's CSV injection
    advice); numbers, negative ones too, are written as they are."""
    if v is None:
        return ""
    if isinstance(v, str) and v[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + v
    return v


def _local(iso: str, tz: ZoneInfo) -> str:
    return datetime.fromisoformat(iso).astimezone(tz).strftime("%Y-%m-%d %H:%M")


# ---------------------------------------------------------------------------------------------
# Charts: plain SVG, horizontal bars with their values
# ---------------------------------------------------------------------------------------------

BAR_H, LABEL_W, CHART_W = 9, 150, 660
COLOURS = ("#2b6cb0", "#dd6b20")


def bar_chart(title: str, labels: Sequence[str], series: Sequence[Sequence[float | None]],
              names: Sequence[str], unit: str, top: float | None = None) -> str:
    """One SVG of horizontal bars: a group per label, a bar per series, the value written."""
    n = len(series)
    group = BAR_H * n + 4
    legend = 18 if n > 1 else 0
    height = 24 + legend + group * len(labels) + 6
    values = [v for s in series for v in s if v is not None]
    scale_max = top if top is not None else (max(values) if values else 1.0) or 1.0
    width = CHART_W - LABEL_W - 70
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{CHART_W}" height="{height}" '
             f'font-family="{FONT}" font-size="8">',
             f'<text x="0" y="14" font-size="12" font-weight="bold">{escape(title)}</text>']
    x = LABEL_W
    for i, name in enumerate(names if n > 1 else []):
        parts.append(f'<rect x="{x}" y="22" width="10" height="10" fill="{COLOURS[i]}"/>'
                     f'<text x="{x + 14}" y="31">{escape(name)}</text>')
        x += 30 + sum(10 if ord(ch) > 0x2e80 else 6 for ch in name)  # CJK glyphs are wider
    y = 24 + legend
    for j, label in enumerate(labels):
        parts.append(f'<text x="{LABEL_W - 4}" y="{y + BAR_H * n / 2 + 4}" '
                     f'text-anchor="end">{escape(label)}</text>')
        for i in range(n):
            v = series[i][j]
            by = y + i * BAR_H
            w = 0.0 if v is None else max(0.0, min(1.0, v / scale_max)) * width
            parts.append(f'<rect x="{LABEL_W}" y="{by + 1}" width="{w:.1f}" '
                         f'height="{BAR_H - 2}" fill="{COLOURS[i % 2]}"/>')
            text = "—" if v is None else f"{v:g}{unit}"
            parts.append(f'<text x="{LABEL_W + w + 4:.1f}" y="{by + BAR_H - 1}">{text}</text>')
        y += group
    parts.append("</svg>")
    return "".join(parts)


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


PER_CHART = 26  # offices per chart: a chart of two series fits a landscape page


def charts(report: dict[str, Any]) -> list[str]:
    """Coverage per office, alerts by kind, time to acknowledge per office (minutes)."""
    offices = report["offices"]
    out: list[str] = []
    for i, part in enumerate(_chunks(offices, PER_CHART)):
        suffix = f"（{i + 1}）" if len(offices) > PER_CHART else ""
        out.append(bar_chart(
            f"各司法所定位覆盖率 Location coverage per office{suffix}", [o["name"] for o in part],
            [[_pct(o["coverage"]["rate"]) for o in part],
             [_pct(o["coverage"]["hour_rate"]) for o in part]],
            ["按应报时段 per expected interval", "按小时 per hour"], "%", top=100.0))
    by_kind = report["total"]["alerts"]["by_kind"]
    out.append(bar_chart("告警分类 Alerts by kind", [KIND_ZH.get(k, k) for k in ALERT_KINDS],
                         [[by_kind[k] for k in ALERT_KINDS]], ["告警"], ""))
    for i, part in enumerate(_chunks(offices, PER_CHART)):
        suffix = f"（{i + 1}）" if len(offices) > PER_CHART else ""
        out.append(bar_chart(
            f"签收用时（分钟）Time to acknowledge, minutes{suffix}", [o["name"] for o in part],
            [[_min(o["acknowledgement"]["p50_s"]) for o in part],
             [_min(o["acknowledgement"]["p90_s"]) for o in part]], ["P50", "P90"], ""))
    return out


# ---------------------------------------------------------------------------------------------
# The document
# ---------------------------------------------------------------------------------------------

_CSS = f"""
@page {{ size: A4 landscape; margin: 14mm 12mm;
        @bottom-right {{ content: "第 " counter(page) " 页";
                         font-size: 8pt; font-family: "{FONT}"; }} }}
body {{ font-family: "{FONT}", sans-serif; font-size: 9pt; color: #1a202c; }}
h1 {{ font-size: 16pt; margin: 0 0 2mm; }}
h2 {{ font-size: 11pt; margin: 5mm 0 2mm; border-bottom: 1px solid #a0aec0; break-after: avoid; }}
.meta {{ color: #4a5568; margin-bottom: 3mm; }}
.summary td {{ padding: 1mm 4mm 1mm 0; }}
.summary b {{ font-size: 11pt; }}
table.units {{ border-collapse: collapse; width: 100%; font-size: 7.5pt; table-layout: fixed; }}
table.units col.name {{ width: 16%; }}
table.units th, table.units td {{ border: 0.5px solid #cbd5e0; padding: 0.6mm 1mm;
                                  text-align: right; }}
table.units th {{ background: #edf2f7; }}
table.units td.name {{ text-align: left; }}
tr.district td {{ background: #f7fafc; font-weight: bold; }}
tr.total td {{ background: #e2e8f0; font-weight: bold; }}
.chart {{ break-inside: avoid; margin: 2mm 0; }}
.unit-table {{ margin: 2mm 0; }}
.defs {{ font-size: 7.5pt; color: #4a5568; }}
"""


def _fmt(v: Any) -> str:
    return "—" if v is None else escape(f"{v:,}" if isinstance(v, int) else str(v))


_HEAD = ("单位<br>Unit", "人数<br>People", "覆盖率% / 按小时<br>Coverage / hourly",
         "失联 次 / 小时<br>Silences / h", "告警<br>Alerts", "签收 P50 / P90 分钟<br>Ack min",
         "升级<br>Escalated", "点名 / 应答率%<br>Roll-calls", "外出 / 批准<br>Permits",
         "逾期未销假<br>Overdue", "处罚 建议 / 决定<br>Sanctions")


def _pair(a: Any, b: Any) -> str:
    return f"{_fmt(a)} / {_fmt(b)}"


def _row(r: dict[str, Any], cls: str) -> str:
    """One unit's line; paired figures share a cell (fewer boxes: WeasyPrint lays out each)."""
    cells = (
        _fmt(r["people"]), _pair(_pct(r["coverage"]["rate"]), _pct(r["coverage"]["hour_rate"])),
        _pair(sum(s["count"] for s in r["silences"].values()), r["silence_hours"]),
        _fmt(r["alerts"]["total"]),
        _pair(_min(r["acknowledgement"]["p50_s"]), _min(r["acknowledgement"]["p90_s"])),
        _fmt(r["escalations"]["to_district"]),
        _pair(r["rollcalls"]["sent"], _pct(r["rollcalls"]["answer_rate"])),
        _pair(r["permits"]["total"], sum(t["approved"] for t in r["permits"]["by_tier"].values())),
        _fmt(r["overdue_returns"]),
        _pair(sum(r["sanctions"]["suggested"].values()), sum(r["sanctions"]["decided"].values())))
    return (f'<tr class="{cls}"><td class="name">{escape(r["name"])}</td>'
            + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")


def _tables(report: dict[str, Any]) -> str:
    """One table per district (its offices and subtotal), then the districts and the total."""
    head = ('<table class="units"><colgroup><col class="name"></colgroup><thead><tr>'
            + "".join(f"<th>{h}</th>" for h in _HEAD) + "</tr></thead><tbody>")
    total = report["total"]
    groups: list[list[str]] = []
    for d in report["districts"]:
        offices = [o for o in report["offices"] if o["parent_id"] == d["unit_id"]]
        groups.append([_row(o, "") for o in offices] + [_row(d, "district")])
    placed = {o["unit_id"] for o in report["offices"]
              if o["parent_id"] in {d["unit_id"] for d in report["districts"]}}
    rest = [_row(o, "") for o in report["offices"] if o["unit_id"] not in placed
            and o["unit_id"] != total["unit_id"]]
    summary = [_row(d, "district") for d in report["districts"]] if len(groups) > 1 else []
    groups.append(rest + summary + [_row(total, "total")])
    return "".join(f'<div class="unit-table">{head}{"".join(g)}</tbody></table></div>'
                   for g in groups if g)


_DEFINITIONS = """
<p><b>定位覆盖率</b>：监管期间按监管等级应报告的时段（严管5分钟、普管15分钟、宽管60分钟，重点人员减半，
按5分钟网格取整）中，至少有一个有效定位（精度在规则允许范围内、非基站定位、非模拟定位）的时段所占比例；
小时覆盖率按每小时一个时段计算。Coverage: share of the expected reporting intervals of the
supervised time holding a usable fix; hourly: share of supervised hours with one.</p>
<p><b>失联时长</b>：自告警截止时刻（上次报告后允许的间隔加缓冲）起至恢复报告、告警办结或统计期末。
Silence: from its deadline to the message that ended it (or resolution, or the period's end).</p>
<p><b>签收用时</b>：告警产生至签收（不含暂停提醒期间的告警），P50/P90为线性插值分位数。
Time to acknowledge: opening to acknowledgement, percentiles interpolated.</p>
<p><b>建议处罚</b>：按规则档案的处罚阶梯对本期开始的失联（通信中断、关机，排除误报、设备故障、已授权）
计算；系统只提出建议，由工作人员决定。Suggested sanctions: the profile's ladder on out-of-contact
spells that began in the period; a person decides.</p>
"""


def to_html(report: dict[str, Any], tz: ZoneInfo) -> str:
    """The report's PDF source: HTML with inline SVG charts."""
    t = report["total"]
    start, end = (_local(report["period"][k], tz) for k in ("from", "to"))
    summary = (
        ("矫正对象 People", _fmt(t["people"])),
        ("定位覆盖率 Coverage", f'{_fmt(_pct(t["coverage"]["rate"]))}%'),
        ("失联时长 Silence", f'{_fmt(t["silence_hours"])} h'),
        ("告警 Alerts", _fmt(t["alerts"]["total"])),
        ("签收用时 P50 / P90", f'{_fmt(_min(t["acknowledgement"]["p50_s"]))} / '
                               f'{_fmt(_min(t["acknowledgement"]["p90_s"]))} min'),
        ("升级 Escalated", f'{_fmt(t["escalations"]["to_district"])} / '
                          f'{_fmt(t["escalations"]["to_city"])}'),
        ("点名应答率 Roll-calls answered", f'{_fmt(_pct(t["rollcalls"]["answer_rate"]))}% '
                                          f'({t["rollcalls"]["answered"]}/{t["rollcalls"]["sent"]})'),
        ("外出申请 Permits", _fmt(t["permits"]["total"])),
        ("逾期未销假 Overdue returns", _fmt(t["overdue_returns"])),
        ("建议 / 决定处罚 Sanctions", f'{sum(t["sanctions"]["suggested"].values())} / '
                                    f'{sum(t["sanctions"]["decided"].values())}'),
    )
    rows = "".join(f"<tr><td>{k}</td><td><b>{v}</b></td></tr>" for k, v in summary)
    figures = "".join(f'<div class="chart">{svg}</div>' for svg in charts(report))
    generated = _local(report["generated_at"], tz)
    return f"""<!DOCTYPE html><html lang="zh-CN"><head><meta charset="utf-8">
<title>{escape(report["unit"]["name"])} 合规统计报表</title><style>{_CSS}</style></head><body>
<h1>{escape(report["unit"]["name"])} 社区矫正定位监管合规统计报表</h1>
<div class="meta">Compliance report · 统计期间 {start} 至 {end}（{tz.key}）·
生成于 {generated} · 规则档案 {escape(report["profile"])}</div>
<h2>概况 Summary</h2><table class="summary">{rows}</table>
<h2>图表 Charts</h2>{figures}
<h2>分单位统计 Per unit</h2>{_tables(report)}
<h2>口径说明 Definitions</h2><div class="defs">{_DEFINITIONS}</div>
</body></html>"""


def to_pdf(report: dict[str, Any], tz: ZoneInfo) -> bytes:
    """The report as a PDF (WeasyPrint; Noto CJK fonts embedded)."""
    from weasyprint import HTML  # imported here: loading Pango costs ~0.3 s, only PDFs need it

    return bytes(HTML(string=to_html(report, tz)).write_pdf())
