"""Process-level tuning shared by the long-running workers (ingest, alerts)."""

from __future__ import annotations

import gc


def tune_gc(threshold: int) -> tuple[int, int, int]:
    """Collect young objects every `threshold` allocations instead of 700, after moving what
    start-up built (modules, settings, prepared zones) out of the collector's sight.

    A worker allocates a few short-lived objects per report (decoded fixes, decisions, states);
    nearly all of them are freed by reference counting, so the cyclic collector finds little,
    but at the default threshold it runs every few hundred reports and, with a large state in
    memory, its older generations are walked again and again (`make bench-engine`: a third of
    the engine's time). 0 keeps the interpreter's default. Returns the thresholds now in force.
    """
    if threshold > 0:
        gc.collect()
        gc.freeze()
        _, g1, g2 = gc.get_threshold()
        gc.set_threshold(threshold, g1, g2)
    return gc.get_threshold()
