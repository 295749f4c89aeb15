"""simulators/engine_diff.py: the tool that holds a speed rewrite of the engine to the decisions
of an earlier commit must reach every rule and notice a changed one."""

from __future__ import annotations

import pytest

from geofence import engine
from simulators import engine_diff


def test_the_differential_world_reaches_the_rules_and_a_changed_rule_is_caught():
    n, batches, kinds = engine_diff.compare(engine, seed=3, people=300)
    assert n > 8_000 and batches > 2
    for kind in ("area_exit", "area_return", "location_request", "roll_call_request",
                 "suspected_spoofing", "exclusion_approach", "exclusion_entry", "curfew_breach"):
        assert kinds[kind] > 0, kind
    mutant = engine_diff.old_engine("HEAD")
    mutant._NETWORK_PROVIDERS = frozenset()  # a Wi-Fi fix would decide like a satellite one
    with pytest.raises(SystemExit, match="differ"):
        engine_diff.compare(engine, seed=3, people=300, new=mutant)
