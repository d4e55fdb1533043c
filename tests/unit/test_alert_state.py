"""The alert state machine: transitions only, FIRING after ``for`` windows, restorable."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streams.schemas
from streams.alerts.rules import Rule
from streams.alerts.state import FIRING, RESOLVED, AlertState, Transition, alert_key
from streams.schemas import Codec

CANDIDATES = ("a@1", "b@1")
FEATURES = ("x", "y")


def make_rules(k_errors: int, k_drift: int, k_ks: int) -> tuple[Rule, ...]:
    return (
        Rule("errors", "errors.candidate_rate", ">", 0.5, "critical", consecutive=k_errors),
        Rule("drift", "drift.alarm", ">=", 1.0, "warning", k_drift, features=("*",)),
        Rule("ks-x", "drift.feature.ks", "<=", 0.5, "info", k_ks, ("a@*",), ("x",)),
    )


VALUE = st.one_of(
    st.none(),
    st.just(math.nan),
    st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    st.floats(-1.0, 3.0, allow_nan=False),
)
KEYS = [("errors.candidate_rate", "")] + [
    (m, f) for m in ("drift.alarm", "drift.feature.ks") for f in FEATURES
]
WINDOW = st.tuples(
    st.sampled_from(CANDIDATES),
    st.dictionaries(st.sampled_from(KEYS), VALUE),
    st.booleans(),  # restore from JSON before this window
    st.integers(0, 9),  # 0: a replay of an old window end
)


def oracle(
    rules: tuple[Rule, ...], windows: list[tuple[str, dict[Any, float | None], bool, int]]
) -> Iterator[list[tuple[str, str, str, str, int]]]:
    """The specification, written again: runs of holding evidence windows per key."""
    run: dict[tuple[str, str, str], int] = {}
    last: dict[str, int] = {}
    for i, (candidate, values, _, replay) in enumerate(windows):
        end = (i + 1) * 10_000 if replay else last.get(candidate, 0)
        if candidate in last and end <= last[candidate]:
            yield []
            continue
        last[candidate] = end
        out = []
        for rule in rules:
            if not any(c == "*" or candidate.startswith(c[:-1]) for c in rule.candidates):
                continue
            for (metric, feature), value in values.items():
                if metric != rule.metric or value is None or math.isnan(value):
                    continue
                if rule.features and not ("*" in rule.features or feature in rule.features):
                    continue
                key = (rule.name, candidate, feature)
                if rule.holds(value):
                    run[key] = run.get(key, 0) + 1
                    if run[key] == rule.consecutive:
                        out.append((FIRING, *key, run[key]))
                else:
                    if run.get(key, 0) >= rule.consecutive:
                        out.append((RESOLVED, *key, run[key]))
                    run[key] = 0
        yield out


def drive(
    rules: tuple[Rule, ...],
    windows: list[tuple[str, dict[Any, float | None], bool, int]],
    restore: bool,
) -> list[list[Transition]]:
    state = AlertState(rules)
    last: dict[str, int] = {}
    out = []
    for i, (candidate, values, restore_here, replay) in enumerate(windows):
        if restore and restore_here:
            state = AlertState.from_json(rules, json.loads(json.dumps(state.to_json())))
        end = (i + 1) * 10_000 if replay else last.get(candidate, 0)
        last[candidate] = max(end, last.get(candidate, 0))
        out.append(state.observe(end, candidate, values, window_start=end - 10_000, primary="p@1"))
    return out


@settings(max_examples=300, deadline=None)
@given(
    k=st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 3)),
    windows=st.lists(WINDOW, max_size=60),
)
def test_transitions_follow_the_specification(
    k: tuple[int, int, int], windows: list[tuple[str, dict[Any, float | None], bool, int]]
) -> None:
    rules = make_rules(*k)
    got = drive(rules, windows, restore=False)
    want = list(oracle(rules, windows))
    assert [[(t.state, t.rule, t.candidate, t.feature, t.consecutive) for t in w] for w in got] == [
        sorted(w, key=lambda x: [r.name for r in rules].index(x[1])) for w in want
    ]
    # per key: FIRING, RESOLVED, FIRING, ... never two of a kind in a row
    seen: dict[bytes, list[str]] = {}
    for w in got:
        for t in w:
            seen.setdefault(t.key, []).append(t.state)
    for states in seen.values():
        assert states == [FIRING, RESOLVED] * (len(states) // 2) + [FIRING] * (len(states) % 2)


@settings(max_examples=300, deadline=None)
@given(
    k=st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 3)),
    windows=st.lists(WINDOW, max_size=60),
)
def test_a_restore_anywhere_changes_nothing(
    k: tuple[int, int, int], windows: list[tuple[str, dict[Any, float | None], bool, int]]
) -> None:
    rules = make_rules(*k)
    assert drive(rules, windows, restore=True) == drive(rules, windows, restore=False)


def test_missing_values_neither_count_nor_reset() -> None:
    (rule,) = make_rules(3, 1, 1)[:1]
    state = AlertState([rule])
    key = ("errors.candidate_rate", "")
    seq: list[float | None] = [0.9, None, 0.9, math.nan, 0.9, None, None, 0.1]
    got = [[t.state for t in state.observe(i * 10, "a@1", {key: v})] for i, v in enumerate(seq, 1)]
    assert got == [[], [], [], [], [FIRING], [], [], [RESOLVED]]


def test_a_restart_does_not_fire_again() -> None:
    rules = make_rules(2, 1, 1)
    state = AlertState(rules)
    key = ("errors.candidate_rate", "")
    assert state.observe(10, "a@1", {key: 0.9}) == []
    (fired,) = state.observe(20, "a@1", {key: 0.9})
    assert fired.state == FIRING
    saved = json.dumps(state.to_json())
    # the evaluator killed after publishing and committing: it restores and goes on
    restored = AlertState.from_json(rules, json.loads(saved))
    assert restored.firing() == [("errors", "a@1", "")]
    assert restored.observe(30, "a@1", {key: 0.9}) == []
    # the same window offered again after a restart from an older offset: ignored
    assert AlertState.from_json(rules, json.loads(saved)).observe(20, "a@1", {key: 0.1}) == []
    (resolved,) = restored.observe(40, "a@1", {key: 0.2})
    assert (resolved.state, resolved.consecutive, resolved.value) == (RESOLVED, 3, 0.2)


def test_a_promoted_candidate_s_firing_alerts_resolve_once() -> None:
    """Promoted, a candidate is no longer judged, so nothing else would ever resolve what
    was firing for it: downstream it stayed FIRING for good."""
    rules = make_rules(1, 1, 1)
    state = AlertState(rules)
    err, drift = ("errors.candidate_rate", ""), ("drift.alarm", "x")
    fired = state.observe(10, "a@1", {err: 0.7, drift: 1.0}, primary="p@1")
    assert sorted(t.rule for t in fired if t.state == FIRING) == ["drift", "errors"]
    state.observe(20, "a@1", {err: 0.9, drift: 0.0}, primary="p@1")  # drift resolves
    assert state.observe(15, "b@1", {err: 0.0}) == []  # another candidate, not firing
    saved = json.loads(json.dumps(state.to_json()))
    for s in (state, AlertState.from_json(rules, saved)):  # the same after a restart
        (t,) = s.retire("a@1", 30, window_start=25, primary="a@1")
        assert (t.state, t.rule, t.candidate, t.primary) == (RESOLVED, "errors", "a@1", "a@1")
        assert (t.value, t.consecutive, t.window_start, t.window_end) == (0.9, 2, 25, 30)
        assert "a@1 is the primary now" in t.message
        assert s.firing() == []
        assert s.retire("a@1", 40) == []  # once
        assert s.observe(30, "a@1", {err: 0.9}) == []  # an older window of it: ignored
    # state restored from before ``last`` was kept: the threshold stands in for the value
    old = {"alerts": [{"rule": "errors", "candidate": "a@1", "feature": "", "firing": True}]}
    (t,) = AlertState.from_json(rules, old).retire("a@1", 10)
    assert math.isfinite(t.value) and t.value == rules[0].threshold


def test_restore_tolerates_old_and_foreign_state() -> None:
    rules = make_rules(1, 1, 1)
    assert AlertState.from_json(rules, None).to_json() == AlertState(rules).to_json()
    assert AlertState.from_json(rules, {}).firing() == []
    data = {
        "alerts": [
            {"rule": "gone", "candidate": "a@1", "feature": "", "streak": 4, "firing": True},
            {"rule": "drift", "candidate": "a@1", "feature": "x", "firing": True},
        ]
    }
    state = AlertState.from_json(rules, data)
    assert state.firing() == [("drift", "a@1", "x")]  # a removed rule's entry is dropped
    (t,) = state.observe(10, "a@1", {("drift.alarm", "x"): 0.0})
    assert (t.state, t.feature) == (RESOLVED, "x")


def test_per_feature_keys_and_filters() -> None:
    state = AlertState(make_rules(1, 1, 1))
    values = {
        ("drift.alarm", "x"): 1.0,
        ("drift.alarm", "y"): 0.0,
        ("drift.feature.ks", "x"): 0.1,
        ("drift.feature.ks", "y"): 0.1,  # ks-x watches feature x only
        ("errors.candidate_rate", "x"): 0.9,  # not a per-feature metric: no such key
    }
    a = state.observe(10, "a@1", values)
    b = state.observe(10, "b@1", values)  # ks-x watches a@* only
    assert [t.key for t in a] == [b"drift|a@1|x", b"ks-x|a@1|x"]
    assert [t.key for t in b] == [b"drift|b@1|x"]


def test_transition_fields_and_message() -> None:
    rule = Rule(
        "slow", "latency.candidate_p99_ms", ">", 250.0, "critical", 2, description="too slow"
    )
    state = AlertState([rule])
    key = ("latency.candidate_p99_ms", "")
    state.observe(1_718_000_010_000, "m@2", {key: 300.0}, window_start=1_718_000_000_000)
    (t,) = state.observe(
        1_718_000_020_000, "m@2", {key: 312.5}, window_start=1_718_000_010_000, primary="m@1"
    )
    assert t == Transition(
        rule="slow",
        severity="critical",
        state=FIRING,
        candidate="m@2",
        primary="m@1",
        feature="",
        metric="latency.candidate_p99_ms",
        value=312.5,
        threshold=250.0,
        comparison=">",
        window_start=1_718_000_010_000,
        window_end=1_718_000_020_000,
        consecutive=2,
        message=t.message,
    )
    assert t.message == (
        "CRITICAL slow: latency.candidate_p99_ms = 312.5 > 250 for 2 windows (m@2 vs m@1, "
        "window ending 2024-06-10T06:13:40Z): too slow"
    )
    assert t.key == alert_key("slow", "m@2", "") == b"slow|m@2|"


@pytest.fixture
def alert_codec(monkeypatch: pytest.MonkeyPatch) -> Codec:
    """A codec that knows Alert, whether or not streams.schemas.EVENTS lists it yet."""
    if "Alert" not in streams.schemas.EVENTS:
        monkeypatch.setattr(streams.schemas, "EVENTS", (*streams.schemas.EVENTS, "Alert"))
    return Codec()


def test_a_transition_is_an_alert_record(alert_codec: Codec) -> None:
    state = AlertState(make_rules(1, 1, 1))
    (t,) = state.observe(20_000, "a@1", {("drift.alarm", "x"): 1.0}, window_start=10_000)
    record = t.to_record(emitted_at=25_000)
    data = alert_codec.encode("Alert", record)
    assert alert_codec.decode(data) == ("Alert", record)
    assert alert_codec.versions["Alert"][1] is alert_codec.schemas["Alert"]
