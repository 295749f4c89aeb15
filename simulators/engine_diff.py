"""Does a rewrite of the engine decide exactly as an earlier commit's engine did?

`python -m simulators.engine_diff --against REV [--seeds 8]` loads `geofence/engine.py` as it
was at git revision REV beside today's, feeds both the same random world and compares every
event, decision and state after every batch and every `tick`. For refactors that must not
change a decision (speed work); a change of rules is expected to differ and is measured by
`make bench-quality` instead.

The world is built to reach every rule: 1,500 people in the 13 Wuhan districts at the three
levels, exclusion zones (some with warning buffers, some around where people start), curfews
(some open during the run), permits with and without a corridor, a few people without a home
area and devices without a subject; fixes in WGS-84 and GCJ-02 with no, zero, NaN, typical and
huge accuracies, GPS / network / Wi-Fi / cell / unknown providers, speeds or none, mock flags,
jumps, duplicates and late (out-of-order) fixes, in batches of 1 to 3,000.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from types import ModuleType

import shapely

from geofence import engine as new_engine
from geofence.model import CRS, Curfew, Exclusion, Fix, Permit, Subject, ZoneKind
from geofence.profile import DEFAULT_PROFILE
from geofence.zones import PreparedZone
from simulators.engine_bench import districts

T0 = 1_700_000_000.0  # 06:13 in Shanghai: morning curfews open during the run


def old_engine(rev: str) -> ModuleType:
    """`geofence/engine.py` at `rev`, imported as a module of its own (same model and zones)."""
    root = Path(__file__).resolve().parent.parent
    src = subprocess.run(["git", "show", f"{rev}:geofence/engine.py"], cwd=root, check=True,
                         capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "engine_at_rev.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("engine_at_rev", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is made
    spec.loader.exec_module(mod)
    return mod


def world(seed: int, people: int = 1500
          ) -> tuple[dict[int, PreparedZone], dict[str, Subject], list[Fix]]:
    """Zones, subjects and a shuffled-in-part stream of fixes for one seed."""
    rng = random.Random(seed)
    zones = districts()
    zmap = {z.zone_id: z for z in zones}
    nid = 100
    near_border: list[int] = []
    for k in range(20):
        ring = shapely.get_exterior_ring(shapely.get_geometry(zones[k % len(zones)].geom_wgs84, 0))
        pt = shapely.line_interpolate_point(ring, rng.random(), normalized=True)
        zmap[nid] = PreparedZone(nid, 1, ZoneKind.EXCLUSION, shapely.buffer(pt, 0.004))
        near_border.append(nid)
        nid += 1
    subjects: dict[str, Subject] = {}
    for n in range(people):
        home = rng.randrange(len(zones)) + 1
        rules = DEFAULT_PROFILE.rules_for(rng.choice(["strict", "normal", "lenient"]))
        ex = tuple(Exclusion(rng.choice(near_border), rng.choice([0.0, 0.0, 200.0, 500.0]))
                   for _ in range(rng.choice([0, 0, 0, 1, 2])))
        cu = ((Curfew(home, rng.choice(["06:00", "06:30", "22:00"]),
                      rng.choice(["07:00", "08:00", "06:00"])),) if rng.random() < 0.2 else ())
        pm: tuple[Permit, ...] = ()
        if rng.random() < 0.2:
            s = T0 + rng.uniform(0, 3 * 3600)
            e = s + rng.uniform(1800, 6 * 3600)
            corr = rng.randrange(len(zones)) + 1 if rng.random() < 0.5 else None
            pm = (Permit(rng.randrange(len(zones)) + 1, s, e, corr,
                         ((s, s + 3600), (e - 3600, e)) if corr else ()),)
        subjects[f"d{n}"] = Subject(n, home if rng.random() > 0.02 else None, pm, ex, cu,
                                    rules=rules, profile=rng.choice(["", "p"]))
    devs = [*subjects, "ghost1", "ghost2"]
    pos: dict[str, list[float]] = {}
    for d in devs:
        sj = subjects.get(d)
        z = zones[((sj.home_zone_id if sj else None) or 1) - 1]
        ring = shapely.get_exterior_ring(shapely.get_geometry(z.geom_wgs84, 0))
        p = (shapely.line_interpolate_point(ring, rng.random(), normalized=True)
             if rng.random() < 0.5 else z.geom_wgs84.representative_point())
        pos[d] = [p.x, p.y]
    for d in devs[:people // 5]:  # an exclusion zone 400 m from where they start
        zmap[nid] = PreparedZone(nid, 1, ZoneKind.EXCLUSION,
                                 shapely.buffer(shapely.Point(pos[d][0] + 0.004, pos[d][1]), 0.003))
        if d in subjects:
            s0 = subjects[d]
            subjects[d] = Subject(s0.supervisee_id, s0.home_zone_id, s0.permits,
                                  (*s0.exclusions, Exclusion(nid, rng.choice([0.0, 300.0]))),
                                  s0.curfews, s0.rules, s0.profile)
        nid += 1
    t = {d: T0 + rng.uniform(0, 600) for d in devs}
    fixes: list[Fix] = []
    for _ in range(40):
        for d in devs:
            if rng.random() < 0.3:
                continue
            t[d] += rng.choice([60, 60, 300, 900, 5, 30])
            pos[d][0] += rng.gauss(0, 0.002)
            pos[d][1] += rng.gauss(0, 0.002)
            if rng.random() < 0.05:
                pos[d][0] += rng.choice([-1, 1]) * 0.05
            lon, lat = pos[d]
            if rng.random() < 0.1:
                lon += rng.gauss(0, 0.003)
            acc = rng.choice([None, 0.0, 5.0, 10.0, 25.0, 60.0, 150.0, 500.0, 2000.0, float("nan")])
            ft = t[d] if rng.random() > 0.05 else t[d] - rng.uniform(0, 3000)
            fixes.append(Fix(d, ft, lon, lat, rng.choice([CRS.WGS84, CRS.WGS84, CRS.GCJ02]), acc,
                             None, rng.choice([None, 0.0, 1.5, 12.0]), None, None,
                             rng.choice([None, "gps", "gps", "network", "wifi", "cell", "fused"]),
                             rng.random() < 0.01))
            if rng.random() < 0.02:
                fixes.append(fixes[-1])
    head = fixes[: len(fixes) // 3]
    rng.shuffle(head)
    return zmap, subjects, head + fixes[len(head):]


def compare(old: ModuleType, seed: int, people: int = 1500, new: ModuleType = new_engine,
            ) -> tuple[int, int, Counter[str]]:
    """Run both engines over one seed's world; raise on the first difference.

    Compared as text: events of silent phones carry NaN positions, and NaN is unequal to itself.
    """
    zmap, subjects, fixes = world(seed, people)
    rng = random.Random(seed + 1000)
    so: dict = {}
    sn: dict = {}
    kinds: Counter[str] = Counter()
    k = batches = 0
    while k < len(fixes):
        batch = fixes[k:k + rng.choice([1, 10, 200, 3000])]
        now = max(f.time for f in batch) + 30
        ro = old.evaluate(batch, subjects, zmap, so, now)
        rn = new.evaluate(batch, subjects, zmap, sn, now)
        for what, a, b in (("events", ro.events, rn.events), ("decisions", ro.decisions,
                                                                rn.decisions),
                           ("states", ro.states, rn.states)):
            if repr(a) != repr(b):
                raise SystemExit(f"seed {seed}, batch {batches}: {what} differ")
        so, sn = ro.carry(so), rn.carry(sn)
        to = old.tick(subjects, zmap, so, now + 200)
        tn = new.tick(subjects, zmap, sn, now + 200)
        if repr(to.events) != repr(tn.events) or repr(to.states) != repr(tn.states):
            raise SystemExit(f"seed {seed}, tick after batch {batches}: results differ")
        so, sn = to.carry(so), tn.carry(sn)
        kinds.update(str(e.kind) for e in (*ro.events, *to.events))
        k += len(batch)
        batches += 1
    return len(fixes), batches, kinds


def main() -> None:
    """Compare over `--seeds` worlds and print what was compared."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--against", required=True, help="git revision of the reference engine")
    ap.add_argument("--seeds", type=int, default=8)
    args = ap.parse_args()
    old = old_engine(args.against)
    total: Counter[str] = Counter()
    for seed in range(1, args.seeds + 1):
        n, b, kinds = compare(old, seed)
        total.update(kinds)
        print(f"seed {seed}: {n:,} fixes in {b} batches, {sum(kinds.values()):,} events: identical")
    print("events by kind: " + ", ".join(f"{k} {v:,}" for k, v in total.most_common()))
    sys.exit(0)


if __name__ == "__main__":
    main()
