"""The rules file: every kind of mistake is one clear line; the shipped file loads."""

from __future__ import annotations

import doctest
import math
from pathlib import Path
from typing import Any

import pytest

from streams.alerts import drift_rule, rules, state
from streams.alerts.rules import (
    METRIC_NAMES,
    METRICS,
    SHIPPED_RULES,
    Rule,
    load_rules,
    parse_rules,
)
from streams.errors import ConfigError

GOOD = """\
rules:
  - name: slow
    metric: latency.candidate_p99_ms
    comparison: ">"
    threshold: 250
    for: 3
    severity: critical
  - name: drift
    metric: drift.alarm
    comparison: ">="
    threshold: 1
    severity: warning
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return path


def rule_text(**fields: object) -> str:
    """One rule from the good defaults, with fields replaced (None: left out)."""
    base: dict[str, object] = {
        "name": "r1",
        "metric": "errors.candidate_rate",
        "comparison": '">"',
        "threshold": 0.05,
        "severity": "warning",
    }
    base.update(fields)
    lines = [f"    {k}: {v}" for k, v in base.items() if v is not None]
    return "rules:\n  - " + "\n".join(lines)[4:] + "\n"


def error_of(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_rules(path)
    message = str(info.value)
    assert "\n" not in message, "one line"
    assert message.startswith(f"rules file {path}: "), message
    return message


def test_the_good_file_loads(tmp_path: Path) -> None:
    slow, drift = load_rules(write(tmp_path, GOOD))
    assert slow == Rule(
        name="slow",
        metric="latency.candidate_p99_ms",
        comparison=">",
        threshold=250.0,
        severity="critical",
        consecutive=3,
    )
    assert drift.consecutive == 1  # 'for' defaults to one window
    assert drift.features == ("*",)  # a per-feature metric watches every feature by default
    assert slow.features == ()
    assert drift.candidates == slow.candidates == ("*",)


def test_the_shipped_rules_load() -> None:
    assert SHIPPED_RULES.is_file()
    loaded = load_rules(SHIPPED_RULES)
    assert {r.metric for r in loaded} >= {"drift.alarm", "errors.candidate_rate"}
    drift = next(r for r in loaded if r.metric == "drift.alarm")
    # the drift rule counts its own consecutive windows: the alert fires on its first alarm
    assert drift.consecutive == 1 and drift.covers("price") and drift.holds(1.0)
    assert not drift.holds(0.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # unknown key, with the closest known one
        (rule_text(treshold=1), "rule 'r1': unknown key 'treshold' (did you mean 'threshold'?)"),
        (rule_text(fro=3), "rule 'r1': unknown key 'fro' (did you mean 'for'?)"),
        # missing fields
        (rule_text(threshold=None), "rule 'r1': missing field 'threshold'"),
        (rule_text(severity=None), "rule 'r1': missing field 'severity'"),
        (rule_text(name=None), "rule #1: missing field 'name'"),
        # unknown metric
        (
            rule_text(metric="latency.candidate_p99"),
            "rule 'r1': unknown metric 'latency.candidate_p99' "
            "(did you mean 'latency.candidate_p99_ms'?)",
        ),
        (rule_text(metric="accuracy"), "rule 'r1': unknown metric 'accuracy'"),
        # bad comparison: unquoted '>' is YAML syntax, '=>' and '==' are not comparisons
        (rule_text(comparison='"=>"'), "rule 'r1': bad comparison '=>'"),
        (rule_text(comparison='"=="'), "rule 'r1': bad comparison '=='"),
        (rule_text(comparison="gt"), "rule 'r1': bad comparison 'gt'"),
        # other values
        (rule_text(severity="page"), "rule 'r1': bad severity 'page' (one of info, warning"),
        (rule_text(threshold="high"), "rule 'r1': threshold must be a number, got 'high'"),
        (rule_text(threshold=".inf"), "rule 'r1': threshold must be finite"),
        (rule_text(threshold="true"), "rule 'r1': threshold must be a number, got True"),
        (rule_text(**{"for": 0}), "rule 'r1': 'for' must be a whole number of windows >= 1"),
        (rule_text(**{"for": 1.5}), "rule 'r1': 'for' must be a whole number of windows >= 1"),
        (rule_text(**{"for": "true"}), "rule 'r1': 'for' must be a whole number"),
        (rule_text(candidate="[]"), "rule 'r1': candidate must be a non-empty name or glob"),
        (rule_text(candidate="[1, 2]"), "rule 'r1': candidate must be a non-empty name or glob"),
        (
            rule_text(feature="price"),
            "rule 'r1': 'feature' given, but metric 'errors.candidate_rate' is not per feature",
        ),
        (rule_text(name='"a|b"'), "rule #1: bad name 'a|b'"),
        (rule_text(description="[1]"), "rule 'r1': description must be a string"),
        # duplicate names
        (
            rule_text() + rule_text(threshold=0.2)[len("rules:\n") :],
            "rule 'r1' (#2): duplicate rule name",
        ),
        # the file's shape
        ("", "must be a mapping with a 'rules' list, got empty"),
        ("- a\n- b\n", "must be a mapping with a 'rules' list, got a list"),
        ("rules: {}\n", "'rules' must be a list of rules"),
        ("rules:\n  - just a string\n", "rule #1: must be a mapping of name, metric"),
        (GOOD + "rulez: []\n", "unknown top-level key 'rulez' (did you mean 'rules'?)"),
    ],
)
def test_a_bad_rules_file_is_one_clear_line(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in error_of(tmp_path, text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rules:\n  - {name: r1, metric: [unclosed\n", "at line 3, column 1"),
        ("rules:\n\t- name: r1\n", "at line 2, column 1: found character '\\t'"),
        # '>=' unquoted starts a folded block scalar
        (
            "rules:\n  - name: r1\n    metric: drift.alarm\n    comparison: >=\n",
            "at line 4, column 18: expected chomping or indentation indicators",
        ),
    ],
)
def test_a_yaml_syntax_error_names_the_position(tmp_path: Path, text: str, expected: str) -> None:
    message = error_of(tmp_path, text)
    assert f"YAML syntax error {expected}" in message, message


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"rules file .*nope\.yaml: cannot read it"):
        load_rules(tmp_path / "nope.yaml")


def test_comparisons_and_filters() -> None:
    def rule(comparison: str, **kw: object) -> Rule:
        fields: dict[str, Any] = {"name": "r", "metric": "drift.feature.ks"}
        fields |= {"comparison": comparison, "threshold": 0.1, "severity": "info", **kw}
        return Rule(**fields)

    assert [rule(c).holds(0.1) for c in (">", ">=", "<", "<=")] == [False, True, False, True]
    assert [rule(c).holds(0.2) for c in (">", ">=", "<", "<=")] == [True, True, False, False]
    assert not any(rule(c).holds(math.nan) for c in (">", ">=", "<", "<="))
    (parsed,) = parse_rules(
        "rules:\n  - {name: r, metric: drift.feature.ks, comparison: '>', threshold: 0.1,"
        " severity: info, candidate: ['house-*', exact@1], feature: [price, 'sq*']}\n"
    )
    assert parsed.watches("house-ridge@2") and parsed.watches("exact@1")
    assert not parsed.watches("other@1") and not parsed.watches("exact@10")
    assert parsed.covers("price") and parsed.covers("sqft") and not parsed.covers("rooms")
    assert not parsed.covers("")


def test_every_metric_is_documented_once() -> None:
    assert len(set(METRIC_NAMES)) == len(METRICS)
    for m in METRICS:
        assert m.doc and "\n" not in m.doc
        assert m.name.count(".") >= 1
        assert m.per_feature == m.name.startswith("drift."), m.name


@pytest.mark.parametrize("module", [rules, state, drift_rule], ids=lambda m: m.__name__)
def test_doctests(module: object) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)  # type: ignore[arg-type]
    assert result.attempted > 0
    assert result.failed == 0


def test_the_docs_list_every_metric() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "drift-and-alerts.md").read_text()
    missing = [name for name in METRIC_NAMES if f"`{name}`" not in docs]
    assert not missing, f"docs/drift-and-alerts.md does not list {missing}"
