"""One sentence per alert saying why it fired, from the engine's recorded reason."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

# Times in sentences are shown in China's one civil time zone, to the second.
DISPLAY_TZ = ZoneInfo("Asia/Shanghai")

_TEMPLATES = {
    "area_exit.accuracy_circle_wholly_outside":
        "Left the allowed area: from {since} the reported position, with its {acc} accuracy "
        "circle, lay wholly outside zone {zone} ({dist} beyond the border).",
    "exclusion_entry.accuracy_circle_wholly_inside":
        "Entered prohibited zone {zone}: from {since} the accuracy circle ({acc}) lay wholly "
        "inside it ({dist} inside the border) on enough consecutive fixes.",
    "exclusion_crossing.segment_through_zone":
        "Passed through prohibited zone {zone}: the straight path between the fixes of {since} "
        "and {fix} crosses it deeper than either fix's accuracy.",
    "exclusion_approach.within_buffer":
        "Approaching prohibited zone {zone}: within its early-warning buffer ({dist} from the "
        "border, accuracy {acc}).",
    "curfew_breach.outside_during_window":
        "Curfew breach: outside zone {zone} ({dist} beyond the border, accuracy {acc}) during "
        "the curfew {curfew}.",
    "curfew_breach.outside_when_window_opened":
        "Curfew breach: the last fixes before the curfew {curfew} opened placed the person "
        "outside zone {zone} ({dist} beyond the border).",
    "spoofing.mock_location_flag": "The phone reported a mock (simulated) location at {fix}.",
    "spoofing.impossible_speed":
        "Impossible movement: {jump} between fixes of {since} and {fix}, {speed} beyond both "
        "accuracy circles.",
    "spoofing.identical_fixes":
        "{count} bit-identical fixes since {since}: a frozen or replayed location.",
}


_TEMPLATES_ZH = {
    "area_exit.accuracy_circle_wholly_outside":
        "离开允许活动区域：自 {since} 起，上报位置连同其 {acc} 的精度圆完全位于区域 {zone} 之外"
        "（超出边界 {dist}）。",
    "exclusion_entry.accuracy_circle_wholly_inside":
        "进入禁止区域 {zone}：自 {since} 起，连续多次定位的精度圆（{acc}）完全位于区域内"
        "（深入边界 {dist}）。",
    "exclusion_crossing.segment_through_zone":
        "穿越禁止区域 {zone}：{since} 与 {fix} 两次定位之间的直线路径穿过该区域，"
        "深度超过两次定位的精度。",
    "exclusion_approach.within_buffer":
        "接近禁止区域 {zone}：位于其预警缓冲带内（距边界 {dist}，精度 {acc}）。",
    "curfew_breach.outside_during_window":
        "违反宵禁：宵禁时段 {curfew} 内位于区域 {zone} 之外（超出边界 {dist}，精度 {acc}）。",
    "curfew_breach.outside_when_window_opened":
        "违反宵禁：宵禁时段 {curfew} 开始前的最后几次定位显示其位于区域 {zone} 之外"
        "（超出边界 {dist}）。",
    "spoofing.mock_location_flag": "手机在 {fix} 上报了模拟（虚假）位置。",
    "spoofing.impossible_speed":
        "不可能的移动：{since} 与 {fix} 两次定位相距 {jump}，速度 {speed}，超出两次定位的精度范围。",
    "spoofing.identical_fixes": "自 {since} 起出现 {count} 次完全相同的定位：位置冻结或被重放。",
}

_EXIT_HOW_ZH = {
    "one_strong_fix": "一次精度良好的定位超出边界 {beyond}，远超信号反射或定位误差可能造成的偏移",
    "evidence_weight": "{n} 次定位位于区域外，其中至少一次超出信号反射可达范围"
                       "（证据权重 {weight}，需要 {needed}）：{fixes}",
    "shallow_evidence_over_time": "{n} 次定位在 {minutes} 内位于区域外，每次都在信号反射可达范围内，"
                                  "但持续时间过长，不可能是一次反射：{fixes}",
    "moving_away": "{n} 次定位位于区域外，最后一次比之前计入的一次离边界更远，超出两次定位的精度"
                   "之和再加 50 米以上，且速度合理：此人正在离开：{fixes}",
    "moving_away_path": "{n} 次定位位于区域外，最后 {path} 次卫星定位一次比一次离边界更远，每次都"
                        "超出两次定位的精度之和再加 50 米以上，且速度合理{moving}：此人正在离开："
                        "{fixes}",
}


def _m(v: Any) -> str:
    return "unknown" if v is None else f"{abs(float(v)):,.0f} m"


def _when(v: Any, zh: bool) -> str:
    """An ISO time from the engine as local time to the second; anything else as given."""
    if not isinstance(v, str):
        return ("未知" if zh else "unknown") if v is None else str(v)
    try:
        t = datetime.fromisoformat(v)
    except ValueError:
        return v
    if t.tzinfo is None:
        return v
    return t.astimezone(DISPLAY_TZ).strftime("%Y-%m-%d %H:%M:%S") + (" (北京时间)" if zh else " CST")


_EXIT_HOW = {
    "one_strong_fix": "one fix of good accuracy lay {beyond} beyond the border, further than a "
                      "reflection or its accuracy can throw a phone that did not move",
    "evidence_weight": "{n} fixes lay outside, at least one beyond a reflection's reach "
                       "(evidence {weight} of {needed} needed): {fixes}",
    "shallow_evidence_over_time": "{n} fixes lay outside for {minutes}, each within a "
                                  "reflection's reach but together too long for one: {fixes}",
    "moving_away": "{n} fixes lay outside, the last further beyond the border than the one "
                   "counted before it by more than both accuracies and a 50 m margin, at a "
                   "believable speed: the person was moving away: {fixes}",
    "moving_away_path": "{n} fixes lay outside, the last {path} satellite fixes each further "
                        "beyond the border than the one before by more than both accuracies and "
                        "a 50 m margin, at a believable speed{moving}: the person was moving "
                        "away: {fixes}",
}


def _exit_how(reason: dict[str, Any], zh: bool = False) -> str:
    """The evidence behind an area exit (the engine's `evidence` list), as a clause."""
    decided_by = str(reason.get("decided_by"))
    away = reason.get("moving_away_from")
    if decided_by == "moving_away" and isinstance(away, dict) and "path_fixes" in away:
        decided_by = "moving_away_path"  # version 4 names its path; earlier alerts keep their text
    how = (_EXIT_HOW_ZH if zh else _EXIT_HOW).get(decided_by)
    evidence = reason.get("evidence")
    if how is None or not isinstance(evidence, list) or not evidence:
        return ""
    items = [e for e in evidence if isinstance(e, dict)]
    out = "区域外 {}，精度 ±{}" if zh else "{} out at ±{}"
    fixes = ("；" if zh else "; ").join(
        out.format(_m(e.get("beyond_m")), _m(e.get("accuracy_m"))) for e in items)
    times = [float(e["t"]) for e in items if isinstance(e.get("t"), int | float)]
    minutes = (f"{(max(times) - min(times)) / 60:.0f} {'分钟' if zh else 'min'}" if times
               else ("一段时间" if zh else "some time"))
    path = away.get("path_fixes") if isinstance(away, dict) else None  # only the path text uses it
    speed = away.get("speed_mps") if isinstance(away, dict) else None
    moving = "" if not isinstance(speed, int | float) else (
        f"，手机报告的速度为 {speed * 3.6:,.0f} 公里/小时" if zh
        else f", the phone reporting {speed * 3.6:,.0f} km/h")
    return ("依据：" if zh else " Evidence: ") + how.format(
        path=path, moving=moving, beyond=_m(items[-1].get("beyond_m")), n=reason.get("fixes", len(items)),
        weight=reason.get("weight"), needed=reason.get("needed", 1.0), fixes=fixes,
        minutes=minutes) + ("。" if zh else ".")


def explain(reason: dict[str, Any], lang: str = "en", zone_name: str | None = None,
            name_zone: bool = True) -> str:
    """Render the engine's reason as a sentence for the officer ("en" or "zh").

    The zone is named by its number and its name: the name it had when the alert was raised
    (`reason["zone_name"]`), else `zone_name` (what the caller knows it as now: alerts raised
    before names were recorded). `name_zone=False` leaves every name out (notifications that
    leave the system: a zone's name can say where a person is)."""
    zh = lang == "zh"
    name = None
    if name_zone:
        recorded = reason.get("zone_name")
        name = recorded if isinstance(recorded, str) and recorded else zone_name
    if reason.get("rule") == "area_exit.accuracy_circle_wholly_outside":
        return _render(reason, zh, name) + _exit_how(reason, zh)
    return _render(reason, zh, name)


def _zone(zone_id: Any, name: str | None, zh: bool) -> str:
    """A zone as the officer knows it: its number, and its name when given."""
    if not name:
        return str(zone_id)
    return f"{zone_id}“{name}”" if zh else f"{zone_id} “{name}”"


def _render(reason: dict[str, Any], zh: bool = False, zone_name: str | None = None) -> str:
    template = (_TEMPLATES_ZH if zh else _TEMPLATES).get(str(reason.get("rule")))
    if template is None:
        return f"规则 {reason.get('rule')!s} 触发。" if zh else f"Rule {reason.get('rule')!s} fired."
    speed = reason.get("speed_mps")
    return template.format(
        since=_when(reason.get("since") or reason.get("fix_time"), zh),
        fix=_when(reason.get("fix_time"), zh),
        acc=_m(reason.get("accuracy_m")),
        dist=_m(reason.get("distance_m")),
        zone=_zone(reason.get("zone_id"), zone_name, zh),
        curfew=reason.get("curfew", ""),
        jump=_m(reason.get("jump_m")),
        speed="unknown speed" if speed is None else f"{float(speed) * 3.6:,.0f} km/h",
        count=reason.get("identical_fixes", "many"),
    )
