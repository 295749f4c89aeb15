"""Build the world, run every scenario's phones through the engine and the naive rule, score.

    python -m simulators.quality                       # 1,000 people x 10 days, 3 scenarios
    python -m simulators.quality --quick               # 100 people x 2 days (well under a minute)
    python -m simulators.quality --workers 2 --markdown out.md
    python -m simulators.quality --scenario realistic --variant slow:exit_fixes=5
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from geofence import engine
from geofence.profile import LEVELS, validate_overrides
from simulators.quality.config import QUICK, SCENARIOS, QualityConfig, Scenario
from simulators.quality.drive import M_OUTSIDE, Evaluate, PartResult, Tick, merge, run_part
from simulators.quality.scoring import Match, Metrics, match, metrics
from simulators.quality.world import World


@dataclass
class ScenarioResult:
    """One scenario, merged over workers, with every engine's and the naive rule's matches."""

    part: PartResult
    matches: dict[str, Match]  # engine name or "naive"

    @property
    def scenario(self) -> Scenario:
        return self.part.scenario

    def intervals(self) -> list[float]:
        return sorted({float(self.part.traits.interval[p]) for p in self.part.people.tolist()})

    def group(self, world: World, interval: float | None = None, level: str | None = None,
              near_border: bool = False) -> set[int]:
        tr = self.part.traits
        return {p for p in self.part.people.tolist()
                if (interval is None or tr.interval[p] == interval)
                and (level is None or world.people[p].level == level)
                and (not near_border or world.people[p].near_border)}

    def never(self) -> set[int]:
        return {p for p in self.part.people.tolist() if not self.part.traits.answers[p]}

    def metrics(self, world: World, name: str, people: set[int]) -> Metrics:
        log = self.part.naive.log if name == "naive" else self.engine(name).log
        # Violations seen by fixes the engine judged wholly outside (the phone's own reports):
        # the default engine's verdicts, so every tracker is graded on the same violations.
        shown = Counter({k: sum(1 for f in fs if f.membership == M_OUTSIDE and not f.answer)
                         for k, fs in self.part.engines[0].viol_fixes.items()})
        return metrics(log, self.matches[name], world.schedule.violations, self.part.seen, people,
                       world.cfg.days, self.never(), self.part.seen_at, shown)

    def engine(self, name: str) -> Any:
        return next(e for e in self.part.engines if e.name == name)


@dataclass
class Result:
    cfg: QualityConfig
    world: World
    scenarios: list[ScenarioResult]
    wall_s: float
    setup_s: float


_WORLD: World | None = None
_FUNCS: tuple[Evaluate, Tick] = (engine.evaluate, engine.tick)


def _worker(args: tuple[int, Sequence[tuple[str, dict[str, Any]]], np.ndarray]) -> PartResult:
    assert _WORLD is not None
    k, variants, people = args
    return run_part(_WORLD, _WORLD.cfg.scenarios[k], variants, people, False, *_FUNCS)


def run(cfg: QualityConfig, variants: Sequence[tuple[str, dict[str, Any]]] = (("engine", {}),),
        workers: int = 1, progress: bool = False, evaluate: Evaluate = engine.evaluate,
        tick: Tick = engine.tick) -> Result:
    """Build the world, run every scenario over it and score the engine variants and naive rule."""
    global _WORLD, _FUNCS
    t0 = time.perf_counter()
    world = World(cfg)
    setup_s = time.perf_counter() - t0
    people = np.arange(cfg.people)
    if workers <= 1:
        parts = [[run_part(world, s, variants, people, progress, evaluate, tick)] for s in cfg.scenarios]
    else:
        _WORLD, _FUNCS = world, (evaluate, tick)
        tasks = [(k, variants, people[i::workers]) for k in range(len(cfg.scenarios))
                 for i in range(workers)]
        # The costliest (most fixes: shortest intervals) first, so the pool ends together.
        cost = [_cost(cfg.scenarios[k]) for k, _, _ in tasks]
        order = sorted(range(len(tasks)), key=lambda i: -cost[i])
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            done = pool.map(_worker, [tasks[i] for i in order], chunksize=1)
        by_scen: dict[int, list[PartResult]] = {}
        for i, r in zip(order, done, strict=True):
            by_scen.setdefault(tasks[i][0], []).append(r)
        parts = [by_scen[k] for k in range(len(cfg.scenarios))]
    results = []
    for ps in parts:
        part = merge(ps)
        m = {e.name: match(e.log, world.schedule.violations) for e in part.engines}
        m["naive"] = match(part.naive.log, world.schedule.violations)
        results.append(ScenarioResult(part, m))
    return Result(cfg, world, results, time.perf_counter() - t0, setup_s)


def _cost(s: Scenario) -> float:
    if not s.intervals:
        return 1.0 / 900.0
    return sum(share / i for i, share in s.intervals)


def _parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    name, _, spec = text.partition(":")
    overrides: dict[str, Any] = {}
    for item in filter(None, spec.split(",")):
        k, _, v = item.partition("=")
        overrides[k.strip()] = float(v)
    return name, validate_overrides(overrides)


def main(argv: Sequence[str] | None = None) -> int:
    from simulators.quality.report import markdown, text

    ap = argparse.ArgumentParser(prog="python -m simulators.quality",
                                 description="Alert quality of the geofence engine on realistic phones.")
    ap.add_argument("--people", type=int, default=QualityConfig.people)
    ap.add_argument("--days", type=int, default=QualityConfig.days)
    ap.add_argument("--seed", type=int, default=QualityConfig.seed)
    ap.add_argument("--quick", action="store_true",
                    help="100 people x 2 days, 0.2 violations per person-day (a smoke run)")
    ap.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), default=[],
                    help="run only these phone populations (default: all three)")
    ap.add_argument("--batch", type=float, default=QualityConfig.batch_s,
                    help="seconds of arrival time per evaluate() call (1-60)")
    ap.add_argument("--tick", type=float, default=None,
                    help="seconds between tick() calls (default: every batch)")
    ap.add_argument("--violations", type=float, default=None, help="violations per person-day")
    ap.add_argument("--level", choices=LEVELS, help="everyone at this level (default: a mix)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VAL,...",
                    help="also run the engine with these rule overrides (on every level)")
    ap.add_argument("--no-default", action="store_true", help="run only the --variant engines")
    ap.add_argument("--examples", type=int, default=QualityConfig.examples,
                    help="false alerts and missed violations listed per scenario")
    ap.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    ap.add_argument("--markdown", metavar="FILE", help="also write the markdown tables to FILE")
    ap.add_argument("--progress", action="store_true")
    a = ap.parse_args(argv)
    kw: dict[str, Any] = {"people": a.people, "days": a.days}
    if a.quick:
        kw.update(QUICK)
    if a.violations is not None:
        kw["violations_per_person_day"] = a.violations
    scenarios = tuple(SCENARIOS[n] for n in dict.fromkeys(a.scenario)) or QualityConfig.scenarios
    cfg = QualityConfig(**kw, seed=a.seed, batch_s=a.batch, tick_s=a.tick or a.batch,
                        scenarios=scenarios, examples=a.examples)
    if a.level:
        cfg = replace(cfg, levels=((a.level, 1.0),))
    variants: list[tuple[str, dict[str, Any]]] = [] if a.no_default else [("engine", {})]
    variants += [_parse_variant(v) for v in a.variant]
    if not variants:
        ap.error("nothing to run")
    result = run(cfg, variants, a.workers, a.progress)
    print(text(result))
    md = markdown(result)
    print("\nMarkdown for BENCHMARKS.md:\n")
    print(md)
    if a.markdown:
        with open(a.markdown, "w", encoding="utf-8") as f:
            f.write(md + "\n")
    return 0
