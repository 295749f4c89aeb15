"""Alert-quality benchmark: the geofence engine against a naive tracker, on realistic phones.

`python -m simulators.quality` (`make bench-quality`) builds one world of people in Wuhan's 13
districts with known violations (`world`), gives them phones of five populations (`phones`,
scenarios in `config`): realistic phones reporting every 1, 5 or 15 minutes, the same phones at
the rule profile's interval per level, the pre-issue-10 generator (60 s, everyone with speed),
the realistic phones replayed (nothing answers), and a stranger stream shaped by none of those
parameters (2/10/30 min, no speed, reflections thrown each their own way); feeds the fixes to
the engine in arrival order as a server would (`drive`), scores the
alerts against the truth (`scoring`) and prints the targets with the measured values (`report`).
"""

from simulators.quality.config import (
    CLEAN,
    MULTIPATH,
    NETWORK,
    OUTLIER,
    PROFILE,
    QUICK,
    REALISTIC,
    REPLAY,
    SCENARIOS,
    STRANGER,
    T0,
    TODAY,
    QualityConfig,
    Scenario,
)
from simulators.quality.drive import AlertLog, EngineRun, NaiveTracker, run_part
from simulators.quality.phones import FixTable, PhoneStream, traits
from simulators.quality.run import Result, main, run
from simulators.quality.scoring import Match, Metrics, match, metrics
from simulators.quality.world import Violation, World

__all__ = ["CLEAN", "MULTIPATH", "NETWORK", "OUTLIER", "PROFILE", "QUICK", "REALISTIC", "REPLAY",
           "SCENARIOS", "STRANGER",
           "T0", "TODAY", "AlertLog", "EngineRun", "FixTable", "Match", "Metrics", "NaiveTracker",
           "PhoneStream", "QualityConfig", "Result", "Scenario", "Violation", "World", "main", "match",
           "metrics", "run", "run_part", "traits"]
