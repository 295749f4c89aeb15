"""Every knob of the alert-quality benchmark: the world, the phone populations (scenarios), the run."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

TZ = ZoneInfo("Asia/Shanghai")
DAY = 86_400.0
# Monday 3 March 2025, 00:00 in Wuhan: any date would do, a Monday makes weekdays obvious.
T0 = datetime(2025, 3, 3, tzinfo=TZ).timestamp()

# Noise class of each fix (int8), for the breakdowns.
CLEAN, OUTLIER, MULTIPATH, NETWORK = 0, 1, 2, 3
CLASS_NAMES = ("gnss", "gnss outlier (2-4x accuracy)", "multipath (100-500 m, small accuracy)",
               "indoor network (200-2,000 m)")
CLASS_SHORT = ("gnss", "outlier", "multipath", "network")

# Violation modes: name, speed range (m/s). "slow foot" is an elderly or strolling walker.
MODES: tuple[tuple[str, float, float], ...] = (
    ("foot", 1.0, 1.6), ("bike", 3.0, 5.0), ("car", 6.0, 14.0), ("metro", 8.0, 12.0))
SLOW_FOOT: tuple[str, float, float] = ("slow foot", 0.5, 1.0)
MODE_NAMES = tuple(m for m, *_ in MODES) + (SLOW_FOOT[0],)


@dataclass(frozen=True)
class Scenario:
    """One population of phones over the same world: what the phones report and how.

    `intervals` is a mix of (seconds, share); empty means "the profile's interval for the
    person's level" (`geofence.profile.CheckinRules`).
    """

    name: str
    intervals: tuple[tuple[float, float], ...] = ((60.0, 0.2), (300.0, 0.4), (900.0, 0.4))
    interval_jitter: float = 0.03  # every interval is stretched or shrunk by up to this share
    late_share: float = 0.1  # power saver: this share of intervals is stretched...
    late_factor: tuple[float, float] = (1.5, 3.0)  # ...by this factor
    speed_share: float = 0.45  # phones that report a (Doppler) speed
    provider_share: float = 0.8  # phones that say which provider a fix came from
    missing: float = 0.1  # reports lost at random
    multipath_start: float = 0.01  # per GNSS report: a multipath episode begins here
    multipath_len: tuple[float, ...] = (0.5, 0.3, 0.2)  # P(episode of 1, 2, 3, ... reports)
    multipath_m: tuple[float, float] = (100.0, 500.0)  # displacement, one direction per episode
    # True: every report of an episode (and every answer during one) is displaced its own way
    multipath_scatter: bool = False
    multipath_accuracy_m: tuple[float, float] = (5.0, 30.0)  # what the phone says (small!)
    multipath_hold_s: tuple[float, float] = (60.0, 180.0)  # a still phone keeps the error this long
    network_share: tuple[float, float] = (0.02, 0.15)  # outdoors, indoors
    offline_per_day: float = 0.3  # offline bursts: fixes stored, all delivered at reconnect
    offline_minutes: tuple[float, float] = (10.0, 120.0)  # log-uniform
    never_answer_share: float = 0.15  # phones that never answer a location request
    answer_prob: float = 0.9  # the others answer this share of requests...
    answer_delay_s: tuple[float, float] = (10.0, 90.0)  # ...this long after the request
    phones_of: str = ""  # draw the reports of the scenario of this name (default: its own)

    def __post_init__(self) -> None:
        if self.intervals and not math.isclose(sum(s for _, s in self.intervals), 1.0, abs_tol=1e-6):
            raise ValueError(f"{self.name}: interval shares must add up to 1")
        if not math.isclose(sum(self.multipath_len), 1.0, abs_tol=1e-6):
            raise ValueError(f"{self.name}: multipath length probabilities must add up to 1")
        if any(i < 5 for i, _ in self.intervals):
            raise ValueError(f"{self.name}: intervals must be at least 5 s")


# Real phones: 1/5/15-minute intervals, half without speed, lost reports, multipath bursts,
# indoor network fixes, offline bursts, slow or absent answers to location requests.
REALISTIC = Scenario("realistic")
# The same phones, reporting at the profile's interval for their level (strict 5 min, normal
# 15 min, lenient 60 min): what a deployment with the default rules sees.
PROFILE = Scenario("profile", intervals=())
# The generator before issue 10: a fix every 60 s from every phone, all with speed and
# provider, none lost or delayed, everyone answers (multipath at the old rate of ~3 % of fixes).
TODAY = Scenario("today", intervals=((60.0, 1.0),), interval_jitter=1.0 / 60.0, late_share=0.0,
                 speed_share=1.0, provider_share=1.0, missing=0.0, multipath_start=0.02,
                 multipath_len=(0.6, 0.3, 0.1), offline_per_day=0.0, never_answer_share=0.0)
# The realistic phones replayed from a recording: nothing answers a location request, so only
# the passive rules decide (how an independent stream replayed through `evaluate` is judged).
REPLAY = Scenario("replay", never_answer_share=1.0, phones_of="realistic")
# A stream shaped by none of the parameters above (the engine was never tuned on it): how an
# independent recording might look. Intervals 2 / 10 / 30 min, none sends speed or provider
# (as in the stream that filed issue 10), nothing answers, 15 % of reports lost, a fifth of the
# intervals stretched 1.5-4x, multipath more often and in bursts of up to 4 reports, each report
# of a burst displaced its own way, more indoor network fixes, longer offline bursts.
STRANGER = Scenario("stranger", intervals=((120.0, 0.3), (600.0, 0.4), (1800.0, 0.3)),
                    interval_jitter=0.1, late_share=0.2, late_factor=(1.5, 4.0), speed_share=0.0,
                    provider_share=0.0, missing=0.15, multipath_start=0.015,
                    multipath_len=(0.4, 0.3, 0.2, 0.1), multipath_m=(80.0, 600.0),
                    multipath_accuracy_m=(4.0, 40.0), multipath_scatter=True,
                    network_share=(0.04, 0.25), offline_per_day=0.5,
                    offline_minutes=(10.0, 240.0), never_answer_share=1.0)
SCENARIOS = {s.name: s for s in (REALISTIC, PROFILE, TODAY, REPLAY, STRANGER)}


@dataclass(frozen=True)
class QualityConfig:
    """The world (people, places, violations) and the run. Ranges are (low, high)."""

    people: int = 1000
    days: int = 10
    seed: int = 1
    scenarios: tuple[Scenario, ...] = (REALISTIC, PROFILE, TODAY, REPLAY, STRANGER)
    batch_s: float = 60.0  # fixes are handed to the engine per this much ARRIVAL time
    tick_s: float = 60.0  # engine.tick() at least this often (every batch by default)
    levels: tuple[tuple[str, float], ...] = (("strict", 0.25), ("normal", 0.5), ("lenient", 0.25))
    # Where people live and go
    border_home_share: float = 0.3  # homes 50-500 m inside a district border
    work_share: float = 0.6
    border_work_share: float = 0.3  # of workers: workplace 50-500 m inside a border
    border_band_m: tuple[float, float] = (50.0, 500.0)
    min_inside_m: float = 50.0  # every home, workplace and errand place is this far inside
    errands: int = 4  # regular errand places per person
    commute_median_m: float = 4000.0
    errand_median_m: float = 1200.0
    gcj02_share: float = 0.3  # phones whose fixes come from a Chinese map SDK
    # Violations
    violations_per_person_day: float = 0.04
    violation_minutes: tuple[float, float] = (5.0, 360.0)  # time outside, log-uniform
    violation_depth_m: tuple[float, float] = (500.0, 20_000.0)  # beyond the border, log-uniform
    shallow_share: float = 0.25  # of violations: only this far beyond the border...
    shallow_depth_m: tuple[float, float] = (200.0, 500.0)
    slow_walker_share: float = 0.1  # of violations: on foot at 0.5-1.0 m/s
    # Phone off / no signal: nothing is sent (kept 15 min away from violations: a silent phone
    # is the communication-failure rule's business, not the area rule's)
    gaps_per_person_day: float = 0.3
    gap_minutes: tuple[float, float] = (5.0, 180.0)  # log-uniform
    # GNSS noise of a clean fix
    gps_accuracy_median_m: tuple[float, float] = (7.0, 15.0)  # outdoors, indoors
    gps_accuracy_sigma: float = 0.6
    gps_accuracy_m: tuple[float, float] = (3.0, 50.0)
    outlier_share: float = 0.01
    outlier_factor: tuple[float, float] = (2.0, 4.0)
    speed_noise_mps: tuple[float, float] = (0.3, 1.0)  # reported speed: clean, multipath
    network_error_m: tuple[float, float] = (200.0, 2000.0)  # log-uniform
    network_accuracy_ratio: tuple[float, float] = (1.15, 0.3)  # accuracy/error: median, sigma
    latency_s: tuple[float, float] = (0.5, 5.0)  # online delivery delay (log-uniform)
    examples: int = 8  # false alerts and misses listed per scenario

    def __post_init__(self) -> None:
        if not 1.0 <= self.batch_s <= 60.0:
            raise ValueError("batch_s must be 1-60 s of arrival time, as a server would batch")
        if self.tick_s < self.batch_s:
            raise ValueError("tick_s cannot be shorter than batch_s")
        if not math.isclose(sum(s for _, s in self.levels), 1.0, abs_tol=1e-6):
            raise ValueError("level shares must add up to 1")
        if not self.scenarios:
            raise ValueError("at least one scenario")

    @property
    def person_days(self) -> int:
        return self.people * self.days


QUICK = {"people": 100, "days": 2, "violations_per_person_day": 0.2}
