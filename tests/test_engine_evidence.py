"""The evidence model for leaving the allowed area, with the profile's own thresholds.

Real phones report every 5 to 15 minutes, often without speed; a reflection (multipath) throws a
still phone's fix a few hundred metres with a small reported accuracy. Each test names the rule.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from geofence.engine import RULE_AREA_EXIT, RULE_CONFIRM, evaluate
from geofence.model import CRS, DeviceState, EventKind, Subject
from geofence.profile import DEFAULT_PROFILE, Rules
from geofence.zones import prepare_zone
from tests.test_engine_rules import HOME, HOME_ID, IN, ZONES, Pipeline, at, fx, pos

NORMAL = DEFAULT_PROFILE.rules_for("normal")
STRICT = DEFAULT_PROFILE.rules_for("strict")
LENIENT = DEFAULT_PROFILE.rules_for("lenient")
NEAR_BORDER = pos(HOME, 950, 0)  # lives 50 m inside the east border


def subject(rules: Rules = NORMAL) -> Subject:
    return Subject(1, HOME_ID, rules=rules)


def kinds(events: list) -> list[EventKind]:
    return [e.kind for e in events]


def detail(e) -> dict:
    return dict(e.reason.detail)


def test_one_strong_fix_of_good_accuracy_after_a_plausible_journey_is_an_exit():
    # A 15-minute phone: home, then 3 km beyond the border (a car trip's worth in 15 minutes).
    p = Pipeline({"dev-1": subject()})
    p.live([fx(0, IN), fx(900, IN)])
    [exit_] = p.live([fx(1800, pos(HOME, 4000, 0), accuracy=8.0)])
    assert exit_.kind == EventKind.AREA_EXIT and exit_.reason.rule == RULE_AREA_EXIT
    d = detail(exit_)
    assert d["decided_by"] == "one_strong_fix"
    assert d["evidence"][0]["beyond_m"] == pytest.approx(3000, abs=1)


def test_a_lone_strong_fix_of_poor_accuracy_asks_the_phone_and_its_answer_decides():
    p = Pipeline({"dev-1": subject()})
    p.live([fx(0, IN)])
    # 3 km out but 80 m accuracy: not alone. The engine asks for a fresh fix at once.
    [ask] = p.live([fx(900, pos(HOME, 4000, 0), accuracy=80.0)])
    assert ask.kind == EventKind.LOCATION_REQUEST and ask.reason.rule == RULE_CONFIRM
    assert ask.detected_at == at(901)
    assert detail(ask)["last"]["grade"] == "strong"
    # The answer 40 s later, still far out: two pieces of evidence, an exit.
    [exit_] = p.live([fx(940, pos(HOME, 4050, 0), accuracy=10.0)])
    assert exit_.kind == EventKind.AREA_EXIT
    assert detail(exit_)["decided_by"] == "evidence_weight"
    assert exit_.since == at(900)


def test_network_fixes_never_decide_an_exit_alone():
    p = Pipeline({"dev-1": subject()})
    p.live([fx(0, IN)])
    events = p.live([fx(900, pos(HOME, 4000, 0), accuracy=30.0, provider="network")])
    assert kinds(events) == [EventKind.LOCATION_REQUEST]
    assert detail(events[0])["last"]["grade"] == "deep"


@pytest.mark.parametrize("interval", [60.0, 300.0, 900.0])
@pytest.mark.parametrize("speed", [None, 0.0])
def test_a_reflection_burst_of_three_fixes_near_the_border_raises_no_exit(interval, speed):
    # A still phone 50 m inside the border; three reports in a row are thrown 400 m outside
    # (5-8 m accuracy), then it is back. The phone answers every request with the same
    # reflection 40 s later: the answer repeats the place and adds nothing.
    p = Pipeline({"dev-1": subject()})
    t = 0.0
    for _ in range(4):
        p.live([fx(t, NEAR_BORDER, speed=speed)])
        t += interval
    for k in range(3):
        reflected = pos(HOME, 1350 + 20 * k, 30 * k)
        events = p.live([fx(t, reflected, accuracy=5.0 + k, speed=speed)])
        if EventKind.LOCATION_REQUEST in kinds(events):
            events += p.live([fx(t + 40, reflected, accuracy=6.0, speed=speed)])
        assert EventKind.AREA_EXIT not in kinds(events)
        t += interval
    p.live([fx(t, NEAR_BORDER, speed=speed)])
    assert EventKind.AREA_EXIT not in kinds(p.events)
    assert p.states["dev-1"].area.pending == 0  # the inside fix ended the streak


def test_shallow_evidence_decides_when_it_lasts():
    # Someone standing 300 m outside: a 5-minute phone shows it for 10 minutes (3 fixes).
    p = Pipeline({"dev-1": subject()})
    p.live([fx(0, IN)])
    out = pos(HOME, 1300, 0)
    assert EventKind.AREA_EXIT not in kinds(p.live([fx(300, out), fx(600, out)]))
    [exit_] = [e for e in p.live([fx(900, out)]) if e.kind == EventKind.AREA_EXIT]
    assert detail(exit_)["decided_by"] == "shallow_evidence_over_time"
    assert exit_.since == at(300)


def test_strict_decides_shallow_evidence_sooner_and_lenient_later():
    out = pos(HOME, 1300, 0)
    series = [fx(0, IN), fx(100, out), fx(340, out), fx(580, out)]
    exits = {}
    for name, rules in (("strict", STRICT), ("normal", NORMAL), ("lenient", LENIENT)):
        p = Pipeline({"dev-1": subject(rules)})
        p.live(series + [fx(700, out), fx(1000, out), fx(1300, out)])
        exits[name] = [e.fix_time for e in p.events if e.kind == EventKind.AREA_EXIT][0]
    assert exits == {"strict": at(580), "normal": at(700), "lenient": at(1000)}
    # A lone strong fix is an exit at every level: what no error explains needs no waiting.
    far = pos(HOME, 4000, 0)
    for rules, want in ((STRICT, EventKind.AREA_EXIT), (NORMAL, EventKind.AREA_EXIT),
                        (LENIENT, EventKind.AREA_EXIT)):
        p = Pipeline({"dev-1": subject(rules)})
        p.live([fx(0, IN)])
        assert kinds(p.live([fx(900, far)])) == [want]


def test_a_journey_faster_than_any_vehicle_decides_nothing():
    p = Pipeline({"dev-1": subject()})
    p.live([fx(0, IN)])
    # 60 km in a minute: suspected spoofing, and no weight towards an exit.
    events = p.live([fx(60, pos(HOME, 61_000, 0))])
    assert kinds(events) == [EventKind.SPOOFING]
    area = p.states["dev-1"].area
    assert (area.pending, area.weight) == (1, 0.0)


def test_location_requests_keep_to_the_hourly_budget_and_the_retry_interval():
    rules = replace(NORMAL, confirm_max_per_hour=2, confirm_retry_s=300.0)
    p = Pipeline({"dev-1": subject(rules)})
    p.live([fx(0, IN)])
    asked = []
    # Shallow fixes every 2 minutes for 20 minutes, the streak never broken, never decided
    # (the phone is moving in circles 300 m out, so no fix repeats the last one).
    for k in range(1, 5):
        events = p.live([fx(120 * k, pos(HOME, 1300 + 60 * (k % 2), 60 * k))])
        asked += [e.detected_at for e in events if e.kind == EventKind.LOCATION_REQUEST]
    assert asked == [at(121), at(481)]  # the first, then 300 s later; then the budget is spent
    assert p.states["dev-1"].requests == (at(121), at(481))
    assert EventKind.AREA_EXIT not in kinds(p.events)


def test_a_batch_user_can_carry_states_and_map_decisions_to_fixes():
    zone = prepare_zone(9, HOME.geom_wgs84.__geo_interface__, CRS.WGS84)
    fixes = [fx(0, IN), fx(60, pos(HOME, 4000, 0)), fx(30, IN, "dev-2")]
    subjects = {"dev-1": Subject(1, 9), "dev-2": Subject(2, 9)}
    states: dict[str, DeviceState] = {"other": DeviceState()}
    res = evaluate(fixes, subjects, {**ZONES, 9: zone}, states, now=at(100))
    assert [d.index for d in res.decisions] == [0, 1, 2]
    assert [d.fix for d in res.decisions] == fixes
    carried = res.carry(states)
    assert set(carried) == {"other", "dev-1", "dev-2"} and states == {"other": DeviceState()}
    assert [e.kind for e in res.events] == [EventKind.AREA_EXIT]


def test_distance_beyond_a_real_district_matches_the_exact_polygon_distance():
    # The nearest-segment search must give what walking every vertex of the border gives.
    import numpy as np
    import shapely

    from simulators.engine_bench import districts

    rng = np.random.default_rng(5)
    for zone in districts()[:4]:
        minx, miny, maxx, maxy = zone.geom_wgs84.bounds
        lon = rng.uniform(minx - 0.05, maxx + 0.05, 500)
        lat = rng.uniform(miny - 0.05, maxy + 0.05, 500)
        x, y = zone.project(lon, lat)
        exact = shapely.distance(zone.geom, shapely.points(x, y))
        got = zone.distance(lon, lat)
        assert (got > 0).sum() > 100 and (got == 0).sum() > 10  # both sides sampled
        assert np.allclose(got, exact, atol=1e-6)


def test_the_officer_reads_which_fixes_decided_an_exit():
    from alerts.explain import explain

    p = Pipeline({"dev-1": subject()})
    p.live([fx(0, IN)])
    p.live([fx(900, pos(HOME, 4000, 0), accuracy=80.0)])  # strong but imprecise: asks
    [exit_] = p.live([fx(940, pos(HOME, 1700, 0), accuracy=10.0)])
    reason = {**exit_.reason.to_dict(), "since": "2024-03-01T04:15:00+00:00"}
    text = explain(reason)
    assert text.startswith("Left the allowed area")
    assert "2 fixes lay outside, at least one beyond a reflection's reach" in text
    assert "3,000 m out at ±80 m; 700 m out at ±10 m" in text
    assert "evidence 1.75 of 1.0 needed" in text  # strong 1.0 + deep 0.75


def test_a_network_fix_inside_does_not_undo_satellite_evidence_outside():
    # A 5-minute phone 300 m out; between its satellite fixes an indoor Wi-Fi fix lands inside.
    p = Pipeline({"dev-1": subject()})
    p.live([fx(0, IN)])
    out = pos(HOME, 1300, 0)
    p.live([fx(300, out), fx(450, IN, provider="network", accuracy=60.0), fx(600, out)])
    assert p.states["dev-1"].area.pending == 2  # the Wi-Fi fix neither counted nor broke it
    [exit_] = [e for e in p.live([fx(900, out)]) if e.kind == EventKind.AREA_EXIT]
    assert exit_.since == at(300)
    # A satellite fix inside does break it.
    q = Pipeline({"dev-1": subject()})
    q.live([fx(0, IN), fx(300, out), fx(450, IN, accuracy=10.0), fx(600, out)])
    assert q.states["dev-1"].area.pending == 1


def test_the_clock_asks_a_silent_phone_again_but_not_when_its_report_is_due():
    from geofence.engine import tick

    out = pos(HOME, 1300, 0)  # 300 m out: shallow, undecided
    for interval, want_follow_up in ((900.0, True), (300.0, False)):
        p = Pipeline({"dev-1": subject()})
        p.live([fx(0, IN), fx(interval, IN), fx(2 * interval, out)])
        st = p.states["dev-1"]
        assert st.gap_s == pytest.approx(interval)
        res = tick({"dev-1": subject()}, ZONES, p.states, at(2 * interval + 330))
        asks = [e for e in res.events if e.kind == EventKind.LOCATION_REQUEST]
        assert bool(asks) is want_follow_up, interval
        if asks:
            assert asks[0].reason.rule == "confirm.area_exit_follow_up"
            p.states.update(res.states)
            # Its answer 40 s later at the same place (a reflection would repeat): nothing new.
            p.live([fx(2 * interval + 370, out)])
            assert p.states["dev-1"].area.pending == 1
            # The next regular report, a whole interval on, counts.
            p.live([fx(3 * interval, out)])
            assert p.states["dev-1"].area.pending == 2


@pytest.mark.parametrize("streak_gap_s", [NORMAL.streak_gap_s, 1e9])
def test_reflections_hours_apart_never_add_up_to_an_exit(streak_gap_s):
    # Indoors 100 m inside the border all day: wandering Wi-Fi fixes (which break no streak)
    # every 15 min, and a 300 m reflection every four hours. Each reflection starts a streak of
    # its own; without that lifetime (1e9) the day's reflections would add up to an exit.
    p = Pipeline({"dev-1": subject(replace(NORMAL, streak_gap_s=streak_gap_s))})
    for k in range(13 * 4):
        if k and k % 16 == 0:
            p.live([fx(900.0 * k, pos(HOME, 1300, 20 * k), accuracy=8.0)])
        else:
            wander = pos(HOME, 900 + 60 * (k % 3 - 1), 40 * (k % 2))
            p.live([fx(900.0 * k, wander, provider="network", accuracy=30.0)])
    exits = [e for e in p.events if e.kind == EventKind.AREA_EXIT]
    assert bool(exits) is (streak_gap_s > 1e8)


def test_a_missing_allowed_zone_leaves_fixes_undecidable():
    from geofence.model import Membership, Permit
    from tests.test_engine_rules import DEST_ID

    subj = Subject(1, HOME_ID, permits=(Permit(DEST_ID, at(0), at(10_000)),), rules=NORMAL)
    zones = {k: z for k, z in ZONES.items() if k != HOME_ID}  # the home area failed to load
    res = evaluate([fx(60, IN), fx(120, IN)], {"dev-1": subj}, zones, {}, now=at(200))
    assert [d.membership for d in res.decisions] == [Membership.UNDECIDABLE] * 2
    assert EventKind.AREA_EXIT not in kinds(res.events)


def test_a_missed_report_or_an_answer_hardly_moves_the_phones_rhythm():
    p = Pipeline({"dev-1": subject()})
    p.live([fx(900.0 * k, IN) for k in range(4)])  # every 15 min
    p.live([fx(900.0 * 5, IN)])  # one report lost
    assert p.states["dev-1"].gap_s == pytest.approx(990.0)  # 0.9 x 900 + 0.1 x 1800
    out = pos(HOME, 1300, 0)
    p.live([fx(900.0 * 6, out)])  # asks the phone; its answer 60 s later is no rhythm
    before = p.states["dev-1"].gap_s
    p.live([fx(900.0 * 6 + 60, out)])
    assert p.states["dev-1"].gap_s == before


def test_a_phone_going_further_out_is_leaving_and_its_third_fix_decides():
    # A one-minute phone without speed, walking east across the border at 1.4 m/s: 40 m out,
    # then 124 m, then 208 m out a minute apart (10 m accuracy each). Two reflections can land
    # at different distances; a third each time further out by more than the errors is a path.
    # The third outside fix decides, dated from the first.
    p = Pipeline({"dev-1": subject()})
    p.live([fx(0, pos(HOME, 870, 0)), fx(60, pos(HOME, 955, 0))])
    assert EventKind.AREA_EXIT not in kinds(p.live([fx(120, pos(HOME, 1040, 0))]))
    assert EventKind.AREA_EXIT not in kinds(p.live([fx(180, pos(HOME, 1124, 0))]))
    [exit_] = [e for e in p.live([fx(240, pos(HOME, 1208, 0))]) if e.kind == EventKind.AREA_EXIT]
    assert detail(exit_)["decided_by"] == "moving_away"
    assert exit_.since == at(120)
    assert [e["beyond_m"] for e in detail(exit_)["evidence"]] == [40.0, 124.0, 208.0]
    assert detail(exit_)["moving_away_from"] == {"t": at(180), "beyond_m": 124.0, "gain_m": 84.0,
                                                 "path_fixes": 3}
    from alerts.explain import explain
    assert "the last 3 satellite fixes each further beyond the border than the one before" in (
        explain(exit_.reason.to_dict()))
    assert "最后 3 次卫星定位" in explain(exit_.reason.to_dict(), "zh")


@pytest.mark.parametrize(("interval", "speed", "decides"), [
    (60, 2.5, True),  # the phone says it moves at 9 km/h, and 84 m a minute is within that
    (60, 1.4, False),  # walking pace: a reflection's noisy Doppler speed can say as much
    (600, 5.0, False),  # 10 minutes apart: any speed times the gap covers any gain
])
def test_a_reported_speed_lets_two_fixes_decide_only_when_it_says_so_within_two_minutes(
        interval, speed, decides):
    p = Pipeline({"dev-1": subject()})
    p.live([fx(0, pos(HOME, 870, 0), speed=speed),
            fx(interval, pos(HOME, 955, 0), speed=speed),
            fx(2 * interval, pos(HOME, 1040, 0), speed=speed)])
    exits = [e for e in p.live([fx(3 * interval, pos(HOME, 1124, 0), speed=speed)])
             if e.kind == EventKind.AREA_EXIT]
    assert bool(exits) == decides
    if decides:
        away = detail(exits[0])["moving_away_from"]
        assert (away["path_fixes"], away["speed_mps"], away["gain_m"]) == (2, speed, 84.0)
        from alerts.explain import explain
        assert "the last 2 satellite fixes" in explain(exits[0].reason.to_dict())
        assert "the phone reporting 9 km/h" in explain(exits[0].reason.to_dict())
        assert "9 公里/小时" in explain(exits[0].reason.to_dict(), "zh")


def test_a_network_fix_is_no_step_of_a_departure_path():
    # A Wi-Fi fix 30 m out claiming 10 m, then two satellite fixes 130 m and 240 m out: the
    # path begins at a position that can be kilometres wrong, so it is no path of three.
    p = Pipeline({"dev-1": subject()})
    p.live([fx(0, pos(HOME, 870, 0)), fx(60, pos(HOME, 955, 0))])
    p.live([fx(120, pos(HOME, 1030, 0), provider="wifi", accuracy=10.0),
            fx(180, pos(HOME, 1130, 0)), fx(240, pos(HOME, 1240, 0))])
    assert EventKind.AREA_EXIT not in kinds(p.events)
    assert p.states["dev-1"].area.pending == 3
    assert [e[6] for e in p.states["dev-1"].area.evidence] == [0.0, 1.0, 1.0]
    p.live([fx(300, pos(HOME, 1350, 0))])  # a third satellite fix further out: now a path
    assert [detail(e)["decided_by"] for e in p.events if e.kind == EventKind.AREA_EXIT] == [
        "moving_away"]


def test_a_departure_path_longer_than_the_kept_evidence_is_refused():
    from geofence.profile import validate_overrides

    for bad in (0, 1, 9, 2.5):
        with pytest.raises(ValueError, match="away_fixes"):
            validate_overrides({"away_fixes": bad})
    assert validate_overrides({"away_fixes": 8}) == {"away_fixes": 8}


def test_two_reflections_landing_further_out_are_no_departure_even_after_one_inside():
    # A still phone at home 150 m inside, without speed; a burst of reflections, each thrown its
    # own way: the first lands inside elsewhere (so the phone looks as if it moved), the next two
    # 80 m and then 190 m outside, two minutes apart, at 15-20 m accuracy. Version 3 of the
    # profile decided a departure on them (the stream that filed issue 10 had such bursts).
    home = pos(HOME, 850, 0)
    fixes = [fx(0, home), fx(120, home), fx(240, pos(HOME, 850, 170), accuracy=30.0),
             fx(360, pos(HOME, 1080, -100), accuracy=16.0),
             fx(480, pos(HOME, 1190, 60), accuracy=20.0)]
    p = Pipeline({"dev-1": subject()})
    p.live(fixes)
    assert EventKind.AREA_EXIT not in kinds(p.events)
    assert p.states["dev-1"].area.pending == 2
    v3 = Pipeline({"dev-1": subject(replace(NORMAL, away_fixes=2))})
    v3.live(fixes)
    assert [detail(e)["decided_by"] for e in v3.events if e.kind == EventKind.AREA_EXIT] == [
        "moving_away"]


def test_a_chain_broken_by_a_step_back_is_no_departure():
    # 40, 124, then 100 m, then 184 m out: the last step goes further out, but the one before it
    # came back: no path of three each further out, and not yet three shallow fixes over 10 min.
    p = Pipeline({"dev-1": subject()})
    p.live([fx(0, pos(HOME, 870, 0)), fx(60, pos(HOME, 955, 0))])
    p.live([fx(120, pos(HOME, 1040, 0)), fx(180, pos(HOME, 1124, 0)), fx(240, pos(HOME, 1100, 0)),
            fx(300, pos(HOME, 1184, 0))])
    assert EventKind.AREA_EXIT not in kinds(p.events)


def test_departure_is_not_decided_on_a_streak_that_began_with_a_still_phones_jump():
    # A still phone 20 m inside: reflections 150 m, then 300 m out, 10 minutes apart. Two throws
    # of a reflection can land at different distances: no exit on the second alone.
    p = Pipeline({"dev-1": subject()})
    p.live([fx(0, pos(HOME, 980, 0)), fx(600, pos(HOME, 980, 0))])
    p.live([fx(1200, pos(HOME, 1150, 0)), fx(1800, pos(HOME, 1300, 0))])
    assert EventKind.AREA_EXIT not in kinds(p.events)
    assert p.states["dev-1"].area.suspect


def test_departure_is_not_decided_on_a_fix_whose_journey_is_implausible():
    # 120 m out, then an imprecise fix inside (breaks nothing), then 10 s later 3 km out: faster
    # than any vehicle from the last fix, so it weighs nothing and decides nothing.
    p = Pipeline({"dev-1": subject()})
    p.live([fx(0, IN), fx(60, pos(HOME, 1120, 0))])
    p.live([fx(650, pos(HOME, 960, 0), accuracy=150.0), fx(660, pos(HOME, 4000, 0))])
    assert EventKind.AREA_EXIT not in kinds(p.events)


def test_stored_profiles_of_version_3_keep_their_two_fix_departure():
    from geofence.profile import RuleProfile

    v3 = {"name": "national-2020", "version": 3, "levels": {"normal": {"away_m": 50.0}}}
    rules = RuleProfile.from_dict(v3).rules_for("normal")
    assert rules.away_fixes == 2
    p = Pipeline({"dev-1": subject(rules)})
    p.live([fx(0, pos(HOME, 870, 0)), fx(60, pos(HOME, 955, 0)), fx(120, pos(HOME, 1040, 0)),
            fx(180, pos(HOME, 1124, 0))])
    assert [detail(e)["decided_by"] for e in p.events if e.kind == EventKind.AREA_EXIT] == [
        "moving_away"]


def test_stored_profiles_from_before_version_3_keep_their_behaviour():
    from geofence.profile import RuleProfile

    v2 = {"name": "national-2020", "version": 2, "levels": {"normal": {}}}
    rules = RuleProfile.from_dict(v2).rules_for("normal")
    assert (rules.away_m, rules.answer_moved, rules.answer_independent_s) == (0.0, 0, 86400.0)
    p = Pipeline({"dev-1": subject(rules)})
    p.live([fx(0, pos(HOME, 870, 0)), fx(60, pos(HOME, 955, 0)), fx(120, pos(HOME, 1040, 0)),
            fx(180, pos(HOME, 1124, 0))])
    assert EventKind.AREA_EXIT not in kinds(p.events)


def test_a_network_fix_further_out_is_no_departure():
    # Wi-Fi and cell positions are wrong by kilometres at times, whatever accuracy they claim:
    # one placed further out than a satellite fix decides nothing by its distance.
    p = Pipeline({"dev-1": subject()})
    p.live([fx(0, pos(HOME, 870, 0)), fx(60, pos(HOME, 955, 0)), fx(120, pos(HOME, 1040, 0))])
    p.live([fx(180, pos(HOME, 1300, 0), provider="wifi", accuracy=15.0)])
    assert EventKind.AREA_EXIT not in kinds(p.events)
    assert p.states["dev-1"].area.pending == 2


@pytest.mark.parametrize("second_x", [
    1040,  # coming back towards the border
    1100,  # 60 m further: within both accuracies (20 m) plus the 50 m margin
])
def test_outside_fixes_that_do_not_go_further_out_by_more_than_their_errors_are_no_departure(
        second_x):
    p = Pipeline({"dev-1": subject()})
    p.live([fx(0, pos(HOME, 870, 0)), fx(60, pos(HOME, 955, 0))])
    first_x = 1124 if second_x == 1040 else 1040
    p.live([fx(120, pos(HOME, first_x, 0)), fx(180, pos(HOME, second_x, 0))])
    assert EventKind.AREA_EXIT not in kinds(p.events)
    assert p.states["dev-1"].area.pending == 2


def _asked_again(rules: Rules) -> Pipeline:
    """A 15-minute phone 300 m out (shallow, undecided); the clock asks it again 330 s on."""
    from geofence.engine import tick

    p = Pipeline({"dev-1": subject(rules)})
    out = pos(HOME, 1300, 0)
    p.live([fx(0, IN), fx(900, IN), fx(1800, out)])
    res = tick({"dev-1": subject(rules)}, ZONES, p.states, at(1800 + 330))
    assert [e.reason.rule for e in res.events] == ["confirm.area_exit_follow_up"]
    p.states.update(res.states)
    return p


def test_a_shallow_answer_to_a_follow_up_counts_only_where_the_level_says_so():
    # The answer 40 s after the follow-up, 150 m from the last counted fix, still 300 m out.
    # Normal: nothing (a still phone's reflection can be thrown elsewhere minutes later).
    normal = _asked_again(NORMAL)
    normal.live([fx(1800 + 370, pos(HOME, 1300, 150))])
    assert normal.states["dev-1"].area.pending == 1
    # The optional `answer_moved` counts it because it lies away from the last place...
    moved = _asked_again(replace(NORMAL, answer_moved=1))
    moved.live([fx(1800 + 370, pos(HOME, 1300, 150))])
    assert moved.states["dev-1"].area.pending == 2
    # ...but not at the same place.
    same = _asked_again(replace(NORMAL, answer_moved=1))
    same.live([fx(1800 + 370, pos(HOME, 1305, 0))])
    assert same.states["dev-1"].area.pending == 1


def test_strict_counts_an_answer_still_outside_four_minutes_on_even_at_the_same_place():
    assert STRICT.answer_independent_s == 240.0 and NORMAL.answer_independent_s > 3600
    strict = _asked_again(STRICT)
    strict.live([fx(1800 + 370, pos(HOME, 1305, 0))])  # 370 s after the last counted fix
    assert strict.states["dev-1"].area.pending == 2
    # ...but not an answer moments after the last counted fix (a reflection holds that long).
    quick = _asked_again(replace(STRICT, answer_independent_s=400.0))
    quick.live([fx(1800 + 370, pos(HOME, 1305, 0))])
    assert quick.states["dev-1"].area.pending == 1


def test_a_streak_stored_before_version_4_never_starts_a_departure_path():
    # States stored by the previous engine hold evidence without the step mark: read as no
    # step (the path begins again with fresh satellite fixes), never as a crash or a guess.
    from geofence.model import DeviceState

    p = Pipeline({"dev-1": subject()})
    p.live([fx(0, pos(HOME, 870, 0)), fx(60, pos(HOME, 955, 0)), fx(120, pos(HOME, 1040, 0)),
            fx(180, pos(HOME, 1124, 0))])
    stored = p.states["dev-1"].to_dict()
    track = stored["area"]
    track[10] = [e[:6] for e in track[10]]  # the six-field form of before
    p.states["dev-1"] = DeviceState.from_dict(stored)
    assert [e[6] for e in p.states["dev-1"].area.evidence] == [0.0, 0.0]
    assert EventKind.AREA_EXIT not in kinds(p.live([fx(240, pos(HOME, 1208, 0))]))
    # 124 m (stored before, no step) -> 208 -> 292: not yet a path of three satellite fixes
    assert EventKind.AREA_EXIT not in kinds(p.live([fx(300, pos(HOME, 1292, 0))]))
    # The same streak as this engine stores it: the 208-m fix completes the path at once.
    control = Pipeline({"dev-1": subject()})
    control.live([fx(0, pos(HOME, 870, 0)), fx(60, pos(HOME, 955, 0)), fx(120, pos(HOME, 1040, 0)),
                  fx(180, pos(HOME, 1124, 0))])
    exits = [e for e in control.live([fx(240, pos(HOME, 1208, 0))]) if e.kind == EventKind.AREA_EXIT]
    assert [detail(e)["decided_by"] for e in exits] == ["moving_away"]


def test_a_reported_speed_must_cover_the_gain_and_start_from_a_satellite_fix():
    # 2.1 m/s for 60 s is 126 m: not the 200 m gained (less both accuracies, 20 m).
    p = Pipeline({"dev-1": subject()})
    p.live([fx(0, pos(HOME, 870, 0)), fx(60, pos(HOME, 955, 0)), fx(120, pos(HOME, 1040, 0))])
    p.live([fx(180, pos(HOME, 1240, 0), speed=2.1)])
    assert EventKind.AREA_EXIT not in kinds(p.events)
    # A Wi-Fi fix 30 m out, then a satellite fix 130 m out a minute later at 2.5 m/s: the speed
    # covers the gain, but the step begins at a position that can be kilometres wrong.
    q = Pipeline({"dev-1": subject()})
    q.live([fx(0, pos(HOME, 870, 0)), fx(60, pos(HOME, 955, 0)),
            fx(120, pos(HOME, 1030, 0), provider="wifi", accuracy=10.0)])
    q.live([fx(180, pos(HOME, 1130, 0), speed=2.5)])
    assert EventKind.AREA_EXIT not in kinds(q.events)


def test_an_alert_decided_before_version_4_keeps_its_sentence():
    from alerts.explain import explain

    reason = {"rule": "area_exit.accuracy_circle_wholly_outside", "decided_by": "moving_away",
              "fixes": 2, "moving_away_from": {"t": 1.0, "beyond_m": 40.0, "gain_m": 84.0},
              "evidence": [{"t": 1.0, "beyond_m": 40.0, "accuracy_m": 10.0},
                           {"t": 61.0, "beyond_m": 124.0, "accuracy_m": 10.0}]}
    text = explain(reason)
    assert "the last further beyond the border than the one counted before it" in text
    assert "satellite" not in text
    assert "最后一次比之前计入的一次离边界更远" in explain(reason, "zh")
