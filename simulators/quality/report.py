"""The benchmark's report: targets with measured values, breakdowns, false alerts and misses."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

from geofence.crs import CRS_CODE
from geofence.model import CRS
from geofence.profile import DEFAULT_PROFILE, LEVELS
from simulators.quality.config import CLASS_NAMES, CLASS_SHORT, MODE_NAMES
from simulators.quality.drive import FLUSH_S, FixNote
from simulators.quality.phones import PROVIDER_NAMES
from simulators.quality.run import Result, ScenarioResult
from simulators.quality.scoring import Metrics

MEMBERSHIP_SHORT = ("undecidable", "inside", "outside", "border")


def _fmt(v: float, spec: str = ".4f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _min(s: float) -> str:
    return "n/a" if math.isnan(s) else f"{s / 60:.1f} min"


def _mark(ok: bool | None) -> str:
    return "" if ok is None else (" ✓" if ok else " ✗")


def _interval(s: float) -> str:
    return f"{s / 60:g} min" if s >= 60 else f"{s:g} s"


def render(rows: Sequence[Sequence[str]], markdown: bool = False) -> str:
    """A table as aligned text or markdown."""
    if markdown:
        out = ["| " + " | ".join(rows[0]) + " |",
               "|" + "|".join("---" if i == 0 else "---:" for i in range(len(rows[0]))) + "|"]
        return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows[1:]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, r in enumerate(rows):
        lines.append("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i])
                               for i, c in enumerate(r)))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


Column = tuple[str, ScenarioResult, float | None]  # label, scenario, interval (None: all)


def columns(r: Result) -> list[Column]:
    """One column per scenario, and per reporting interval where a scenario mixes them."""
    cols: list[Column] = []
    for s in r.scenarios:
        ivs = s.intervals()
        cols.append((f"{s.scenario.name}" + ("" if len(ivs) > 1 else f" {_interval(ivs[0])}"), s, None))
        if len(ivs) > 1 and s.scenario.intervals:
            cols += [(f"{s.scenario.name} {_interval(i)}", s, i) for i in ivs]
    return cols


def target_table(r: Result, name: str = "engine") -> list[list[str]]:
    """Rows: every target with its measured value per column; then context rows."""
    cols = columns(r)
    w = r.world
    rows = [["metric", *[c[0] for c in cols], "target"]]
    cache: dict[tuple[str, int, float | None, bool], Metrics] = {}

    def m(s: ScenarioResult, iv: float | None, who: str = name, border: bool = False) -> Metrics:
        key = (who, id(s), iv, border)
        if key not in cache:
            cache[key] = s.metrics(w, who, s.group(w, iv, near_border=border))
        return cache[key]

    def row(label: str, f: Callable[[ScenarioResult, float | None], str], target: str = "") -> None:
        rows.append([label, *[f(s, iv) for _, s, iv in cols], target])

    def single(s: ScenarioResult, iv: float | None) -> float | None:
        ivs = s.intervals()
        return iv if iv is not None else (ivs[0] if len(ivs) == 1 else None)

    def p95(s: ScenarioResult, iv: float | None) -> str:
        v, one = m(s, iv).delay(95), single(s, iv)
        ok = None if one is None or math.isnan(v) else v <= one + 300
        return _min(v) + _mark(ok)

    row("people", lambda s, iv: f"{m(s, iv).people:,}")
    row("false area-exit alerts / person-day", lambda s, iv: _fmt(m(s, iv).false_per_person_day)
        + _mark(m(s, iv).false_per_person_day <= 0.01), "≤ 0.01")
    row("  … living or working near a border", lambda s, iv: _fmt(
        m(s, iv, border=True).false_per_person_day)
        + _mark(m(s, iv, border=True).false_per_person_day <= 0.01), "≤ 0.01")
    row("violations ≥ 10 min seen by ≥ 1 fix: detected", lambda s, iv: _share(
        m(s, iv).eligible_detected, m(s, iv).eligible, 0.99), "≥ 99 %")
    row("  … ≥ 2 fixes, phone never answers requests", lambda s, iv: _share(
        m(s, iv).never_detected, m(s, iv).never_eligible, 0.99), "≥ 99 %")
    row("… seen by ≥ 1 own fix judged wholly outside: detected", lambda s, iv: _share(
        m(s, iv).shown_detected, m(s, iv).shown, 0.99), "≥ 99 %")
    row("  … ≥ 2 such fixes, phone never answers requests", lambda s, iv: _share(
        m(s, iv).shown_never_detected, m(s, iv).shown_never, 0.99), "≥ 99 %")
    row("delay crossing → decision, p50", lambda s, iv: _min(m(s, iv).delay(50))
        + _mark(None if math.isnan(m(s, iv).delay(50)) else m(s, iv).delay(50) <= 300), "≤ 5 min")
    row("delay crossing → decision, p95", p95, "≤ interval + 5 min")
    row("floor for any rule: crossing → first outside fix arrived, p50 / p95",
        lambda s, iv: f"{_min(m(s, iv).delay(50, floor=True))} / {_min(m(s, iv).delay(95, floor=True))}")
    row("delay first outside fix arrived → decision, p50 / p95",
        lambda s, iv: f"{_min(m(s, iv).delay(50, engine=True))} / {_min(m(s, iv).delay(95, engine=True))}")
    row("delay crossing → deciding fix, p50 / p95",
        lambda s, iv: f"{_min(m(s, iv).delay(50, True))} / {_min(m(s, iv).delay(95, True))}")
    row("all violations detected (any length, seen or not)",
        lambda s, iv: f"{m(s, iv).detected}/{m(s, iv).violations}")
    row("area-exit alerts (all)", lambda s, iv: f"{m(s, iv).alerts:,}")
    row("location requests / person-day", lambda s, iv: _per_pd(s, iv, "requests", m(s, iv)))
    row("answers received / person-day", lambda s, iv: _per_pd(s, iv, "answers", m(s, iv)))
    row("naive: false alerts / person-day", lambda s, iv: _fmt(m(s, iv, "naive").false_per_person_day, ".2f"))
    row("naive: violations ≥ 10 min seen: detected", lambda s, iv: _share(
        m(s, iv, "naive").eligible_detected, m(s, iv, "naive").eligible, None))
    return rows


def _share(n: int, d: int, target: float | None) -> str:
    if not d:
        return "n/a"
    return f"{n}/{d} ({100 * n / d:.1f} %)" + _mark(None if target is None else n / d >= target)


def _per_pd(s: ScenarioResult, iv: float | None, what: str, m: Metrics) -> str:
    group = {p for p in s.part.people.tolist() if iv is None or s.part.traits.interval[p] == iv}
    c = getattr(s.part.engines[0], what)
    return _fmt(sum(c[p] for p in group) / m.person_days if m.person_days else math.nan, ".2f")


def naive_table(r: Result, name: str = "engine") -> list[list[str]]:
    """The engine beside the naive point-in-polygon tracker, per scenario, on the same fixes."""
    w = r.world
    rows = [["engine vs naive", "false alerts / person-day", "… near a border", "≥10 min seen: detected",
             "delay p50", "delay p95"]]
    for s in r.scenarios:
        for who in (name, "naive"):
            x, b = s.metrics(w, who, s.group(w)), s.metrics(w, who, s.group(w, near_border=True))
            rows.append([f"{s.scenario.name} / {who}", _fmt(x.false_per_person_day),
                         _fmt(b.false_per_person_day), _share(x.eligible_detected, x.eligible, None),
                         _min(x.delay(50)), _min(x.delay(95))])
    return rows


def variant_table(r: Result) -> list[list[str]]:
    """Every engine variant on every scenario: the targets' figures, and the worst reporting
    interval's false alerts among people near a border (where reflections decide)."""
    w = r.world
    rows = [["variant / scenario", "false / person-day (near a border)",
             "worst interval near a border", "≥10 min seen: detected", "≥ 2 fixes, never answers",
             "delay p50 / p95"]]
    for e in r.scenarios[0].part.engines:
        for s in r.scenarios:
            x = s.metrics(w, e.name, s.group(w))
            b = s.metrics(w, e.name, s.group(w, near_border=True))
            worst = max(((s.metrics(w, e.name, s.group(w, iv, near_border=True)).false_per_person_day,
                          iv) for iv in s.intervals()), default=(0.0, 0.0))
            rows.append([f"{e.name} / {s.scenario.name}",
                         f"{_fmt(x.false_per_person_day)} ({_fmt(b.false_per_person_day)})",
                         f"{_fmt(worst[0])} ({_interval(worst[1])})",
                         _share(x.eligible_detected, x.eligible, None),
                         _share(x.never_detected, x.never_eligible, None),
                         f"{_min(x.delay(50))} / {_min(x.delay(95))}"])
    return rows


def level_table(r: Result, name: str = "engine") -> list[list[str]]:
    """Per scenario and level, and for people near a border."""
    w = r.world
    rows = [["by level / near a border", "people", "false alerts", "/ person-day", "≥10 min seen: detected",
             "never answers, ≥2 fixes", "delay p50", "delay p95"]]
    for s in r.scenarios:
        groups = [(lv, s.group(w, level=lv)) for lv in LEVELS]
        groups.append(("near a border", s.group(w, near_border=True)))
        for label, g in groups:
            if not g:
                continue
            x = s.metrics(w, name, g)
            rows.append([f"{s.scenario.name} / {label}", str(x.people), str(x.false_alerts),
                         _fmt(x.false_per_person_day), _share(x.eligible_detected, x.eligible, None),
                         _share(x.never_detected, x.never_eligible, None), _min(x.delay(50)),
                         _min(x.delay(95))])
    return rows


def noise_table(r: Result, name: str = "engine") -> list[list[str]]:
    """Fixes by noise class, and how many each tracker judged outside while truly inside."""
    rows = [["fixes by noise class", *[f"{s.scenario.name} fixes" for s in r.scenarios],
             *[f"{s.scenario.name} wrongly outside (engine / naive)" for s in r.scenarios]]]
    for c, cname in enumerate(CLASS_NAMES):
        rows.append([cname, *[f"{s.part.class_counts[c]:,}" for s in r.scenarios],
                     *[f"{s.engine(name).wrong_side[c]:,} / {s.part.naive.wrong_side[c]:,}"
                       for s in r.scenarios]])
    return rows


def _phones(r: Result, s: ScenarioResult) -> str:
    p, tr = s.part, s.part.traits
    people = p.people
    ivs = Counter(tr.interval[people].tolist())
    total = max(sum(p.class_counts.values()), 1)
    sc = s.scenario
    return (f"  {sc.name}: intervals " + ", ".join(f"{_interval(i)} {n}" for i, n in sorted(ivs.items()))
            + f"; no speed {100 * (~tr.speed[people]).mean():.0f} %, no provider "
            f"{100 * (~tr.provider[people]).mean():.0f} %, never answer "
            f"{100 * (~tr.answers[people]).mean():.0f} %"
            f" (the others answer {100 * sc.answer_prob:.0f} % after {sc.answer_delay_s[0]:g}-"
            f"{sc.answer_delay_s[1]:g} s)\n    {p.fixes:,} fixes received ("
            + ", ".join(f"{CLASS_SHORT[c]} {100 * p.class_counts[c] / total:.1f} %" for c in range(4))
            + f"); {100 * sc.missing:.0f} % of reports lost, {100 * sc.late_share:.0f} % of intervals "
            f"stretched {sc.late_factor[0]:g}-{sc.late_factor[1]:g}x; {p.offline_fixes:,} fixes delivered "
            f"late from offline bursts of {sc.offline_minutes[0]:g}-{sc.offline_minutes[1]:g} min;"
            f" multipath bursts of 1-{len(sc.multipath_len)} reports {sc.multipath_m[0]:g}-"
            f"{sc.multipath_m[1]:g} m off at {sc.multipath_accuracy_m[0]:g}-"
            f"{sc.multipath_accuracy_m[1]:g} m accuracy, "
            + ("each report its own way" if sc.multipath_scatter else "one way per burst"))


def _describe_fix(f: FixNote, start: float) -> str:
    sp = "no speed" if math.isnan(f.speed) else f"speed {f.speed:.1f}"
    tags = "".join([", ANSWER" if f.answer else "", ", offline" if f.offline else ""])
    return (f"+{(f.time - start) / 60:5.1f} min (arrived +{(f.arrival - start) / 60:.1f}) "
            f"true {f.true_m:+6.0f} m, reported {f.seen_m:+6.0f} m, acc {f.accuracy:4.0f} m, "
            f"{PROVIDER_NAMES[f.provider] or 'no provider'}, {sp}, {CLASS_SHORT[f.cls]}"
            f" → {MEMBERSHIP_SHORT[f.membership]}{tags}")


def _who(r: Result, s: ScenarioResult, p: int) -> str:
    w, tr = r.world, s.part.traits
    person = w.people[p]
    bits = [person.level, f"{_interval(float(tr.interval[p]))} phone",
            w.areas[person.area].district.name]
    bits += ["near border"] if person.near_border else []
    bits += ["GCJ-02"] if w.p_crs[p] == CRS_CODE[CRS.GCJ02] else []
    bits += [] if tr.speed[p] else ["no speed"]
    bits += [] if tr.provider[p] else ["no provider"]
    bits += [] if tr.answers[p] else ["never answers"]
    return f"person {p} (" + ", ".join(bits) + ")"


def false_alerts(r: Result, s: ScenarioResult, name: str = "engine") -> str:
    """Each false alert's cause: the noise classes of its wholly-outside evidence."""
    e, m = s.engine(name), s.matches[name]
    if not m.false_ids:
        return f"{s.scenario.name}: no false alerts"
    ev: dict[int, list[FixNote]] = {}
    for f in e.evidence:
        ev.setdefault(f.person, []).append(f)
    causes: Counter[str] = Counter()
    lines: list[str] = []
    for i in m.false_ids:
        p, since, t = e.log.person[i], e.log.since[i], e.log.time[i]
        items = sorted((f for f in ev.get(p, []) if since <= f.time <= t), key=lambda f: f.time)
        key = " + ".join(sorted({CLASS_SHORT[f.cls] for f in items})) or "no outside evidence"
        causes[key + (" (incl. answers)" if any(f.answer for f in items) else "")] += 1
        if len(lines) < r.cfg.examples:
            lines.append(f"  {_who(r, s, p)}: decided {(e.log.decided[i] - since) / 60:.1f} min after "
                         f"the first evidence, {len(items)} wrongly-outside fixes:")
            lines += [f"      {_describe_fix(f, since)}" for f in items[:6]]
    head = (f"{s.scenario.name}: {len(m.false_ids)} false alerts; evidence made of: "
            + ", ".join(f"{k} {n}" for k, n in causes.most_common()))
    return "\n".join([head, *lines])


def missed(r: Result, s: ScenarioResult, name: str = "engine") -> str:
    """Violations of 10 min or more that some fix saw and the engine did not report."""
    w = r.world
    x = s.metrics(w, name, s.group(w))
    e = s.engine(name)
    v = w.schedule.violations
    lines = [f"{s.scenario.name}: {len(x.missed)} of {x.eligible} violations ≥ 10 min seen by a fix "
             "were missed"
             + (f" ({sum(k in s.matches[name].covered for k in x.missed)} while an earlier alert was open)"
                if x.missed else "")]
    for k in x.missed[: r.cfg.examples]:
        vi = v[k]
        fixes = sorted(e.viol_fixes.get(k, []), key=lambda f: f.time)
        lines.append(f"  {_who(r, s, vi.person)}: {vi.minutes:.1f} min outside, {vi.mode}, "
                     f"{vi.depth_m:.0f} m beyond the crossing{' (shallow)' if vi.shallow else ''}, left from "
                     f"{vi.from_border_m:.0f} m inside; {len(fixes)} truly-outside fixes received:")
        lines += [f"      {_describe_fix(f, vi.start)}" for f in fixes[:10]]
        if len(fixes) > 10:
            lines.append(f"      … {len(fixes) - 10} more")
    return "\n".join(lines)


def _world(r: Result) -> list[str]:
    cfg, w = r.cfg, r.world
    v = w.schedule.violations
    levels = Counter(p.level for p in w.people)
    modes = Counter(x.mode for x in v)
    gcj = int((w.p_crs == CRS_CODE[CRS.GCJ02]).sum())
    return [
        f"Alert-quality benchmark: {cfg.people:,} people x {cfg.days} days = {cfg.person_days:,} "
        f"person-days in Wuhan's 13 districts, seed {cfg.seed}",
        f"  people: {sum(p.border_home for p in w.people)} live and {sum(p.border_work for p in w.people)} "
        f"work 50-500 m inside a border; {gcj} phones report GCJ-02; levels "
        + ", ".join(f"{lv} {levels[lv]}" for lv in LEVELS if levels[lv]),
        f"  true violations: {len(v)} ({cfg.violations_per_person_day:g} planned per person-day; "
        f"{w.schedule.dropped_violations} found no way out), {sum(x.minutes >= 10 for x in v)} lasting "
        f"≥ 10 min, {sum(x.shallow for x in v)} shallow (200-500 m); by "
        + ", ".join(f"{m} {modes[m]}" for m in MODE_NAMES)
        + f"; went {min((x.depth_m for x in v), default=0):.0f}-"
        f"{max((x.depth_m for x in v), default=0):.0f} m beyond the crossing",
        f"  phone off: {len(w.schedule.gap_start)} gaps of {cfg.gap_minutes[0]:g}-{cfg.gap_minutes[1]:g} min",
        "  phones (same people, same truth, per scenario):",
        *[_phones(r, s) for s in r.scenarios],
        f"  engine: geofence.engine.evaluate on fixes in arrival order, one call per {cfg.batch_s:g} s of "
        f"arrival time (now = batch end), tick() every {cfg.tick_s:g} s, rules "
        f"{DEFAULT_PROFILE.label}.rules_for(level); {FLUSH_S / 3600:g} h after the last day for late uploads",
        "  naive: point-in-polygon of each reported coordinate in the WGS-84 home area, no accuracy, "
        "no CRS conversion; opens on inside->outside, closes when inside",
        "",
        "False alert: an area-exit alert whose evidence window [first evidence, deciding fix] overlaps no "
        "true violation [start, end). Delay: the `now` of the engine call that raised it - the true "
        "crossing.",
    ]


def _timing(r: Result) -> str:
    lines = [f"Run time: {r.wall_s:.1f} s wall (world {r.setup_s:.1f} s)"]
    for s in r.scenarios:
        p = s.part
        for e in p.engines:
            rate = e.fixes / e.seconds if e.seconds else math.nan
            lines.append(f"  {s.scenario.name} / {e.name}: evaluate() {e.seconds:.1f} s for "
                         f"{e.fixes:,} fixes in {e.calls:,} calls = {rate:,.0f} fixes/s (one core); "
                         f"tick() {e.tick_seconds:.1f} s; phones "
                         f"{p.gen_s:.1f} s, Fix objects {p.fix_obj_s:.1f} s, naive {p.naive.seconds:.1f} s")
            if e.other:
                lines.append("    other events: " + ", ".join(f"{k} {n}" for k, n in sorted(e.other.items())))
    return "\n".join(lines)


def text(r: Result) -> str:
    """The whole report as printed by `python -m simulators.quality`."""
    out = _world(r) + [""]
    names = [e.name for e in r.scenarios[0].part.engines]
    for name in names:
        out += [f"Targets ({name}; ✓ met, ✗ not met):", render(target_table(r, name)), ""]
    if len(names) > 1:
        out += [render(variant_table(r)), ""]
    out += [render(naive_table(r, names[0])), "", render(level_table(r, names[0])), "",
            render(noise_table(r, names[0])), ""]
    out += ["False area-exit alerts, by the noise class of their wholly-outside evidence "
            "(+min from the first evidence; distances signed, > 0 outside):"]
    out += [false_alerts(r, s, names[0]) for s in r.scenarios] + [""]
    out += ["Missed violations (+min from the true crossing):"]
    out += [missed(r, s, names[0]) for s in r.scenarios] + ["", _timing(r)]
    return "\n".join(out)


def markdown(r: Result) -> str:
    """The target and level tables in markdown, for BENCHMARKS.md."""
    cfg = r.cfg
    rates = "; ".join(f"{s.scenario.name} {e.fixes / e.seconds:,.0f}" for s in r.scenarios
                      for e in s.part.engines[:1] if e.seconds)
    head = (f"Alert quality ({cfg.people:,} people × {cfg.days} days = {cfg.person_days:,} person-days, "
            f"seed {cfg.seed}; `python -m simulators.quality`; evaluate() fixes/s on one core: {rates}):\n\n")
    names = [e.name for e in r.scenarios[0].part.engines]
    out = head + "\n\n".join(render(target_table(r, n), markdown=True) for n in names[:1])
    if len(names) > 1:
        out += "\n\n" + render(variant_table(r), markdown=True)
    return (out + "\n\n" + render(naive_table(r, names[0]), markdown=True) + "\n\n"
            + render(level_table(r, names[0]), markdown=True))


__all__ = ["columns", "false_alerts", "level_table", "markdown", "missed", "naive_table", "noise_table",
           "render", "target_table", "text", "variant_table"]
