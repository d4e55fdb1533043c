"""Alert rules: the YAML file that says when a metric is worth telling someone about.

A rules file (``deploy/rules.yaml`` is the shipped default) holds one mapping with one key,
``rules``, a list of rules::

    rules:
      - name: candidate-latency        # unique; part of every alert's key
        metric: latency.candidate_p99_ms
        comparison: ">"                # >, >=, < or <=
        threshold: 250
        for: 3                         # consecutive windows (default 1)
        severity: critical             # info, warning or critical
        candidate: "*"                 # optional: model id, glob or list of them (default all)
      - name: feature-drift
        metric: drift.alarm
        comparison: ">="
        threshold: 1
        severity: warning
        feature: "*"                   # per-feature metrics only: name, glob or list (default *)
        description: the drift alarm rule holds   # optional, goes into the alert's message

The file is checked as a whole before anything runs: an unknown key, a missing field, an
unknown metric, a bad comparison or severity, a duplicate name or a YAML syntax error is a
:class:`~streams.errors.ConfigError` of one line that names the file, the rule and the
problem. A typo in a rule that silently never fires is worse than a refusal to start.

Metric names are dotted paths into the flat per-window mapping the evaluator produces;
:data:`METRICS` lists every one of them, with what it means. A per-feature metric has one
value per feature (or per model output) and window; the others have one per window.

Example
-------
>>> rules = parse_rules('''
... rules:
...   - {name: slow, metric: latency.candidate_p99_ms, comparison: ">", threshold: 250, for: 3,
...      severity: critical}
... ''')
>>> rules[0].holds(300.0), rules[0].holds(250.0), rules[0].consecutive
(True, False, 3)
>>> parse_rules("rules: [{name: x, metric: latency.p99, comparison: '>', threshold: 1, "
...             "severity: info}]", source="r.yaml")
Traceback (most recent call last):
...
streams.errors.ConfigError: rules file r.yaml: rule 'x': unknown metric 'latency.p99' ...
"""

from __future__ import annotations

import difflib
import math
import operator
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Final

from streams.errors import ConfigError

__all__ = [
    "COMPARISONS",
    "METRICS",
    "METRIC_NAMES",
    "SEVERITIES",
    "SHIPPED_RULES",
    "Metric",
    "Rule",
    "load_rules",
    "parse_rules",
]


@dataclass(frozen=True)
class Metric:
    """One metric the evaluator produces per (candidate, window)."""

    name: str
    #: one line: what the value is
    doc: str
    #: one value per feature (or model output) rather than one per window
    per_feature: bool = False


#: Every metric a rule may name. The evaluator produces these, per candidate and window,
#: as ``{(name, feature): value}`` (feature ``""`` for metrics that are not per feature;
#: for the ``drift.output.*`` metrics the feature is the model's role, ``primary`` or
#: ``candidate``). A value is None when the window holds no evidence for it.
METRICS: Final[tuple[Metric, ...]] = (
    Metric("disagreement.mae", "regression: mean |candidate - primary| over the window's pairs"),
    Metric("disagreement.rmse", "regression: root mean squared candidate - primary difference"),
    Metric("disagreement.mean_signed_diff", "regression: mean of candidate - primary"),
    Metric("disagreement.rate", "classification: share of pairs whose labels differ"),
    Metric("latency.primary_p50_ms", "median latency of the primary, in ms"),
    Metric("latency.primary_p95_ms", "95th percentile latency of the primary, in ms"),
    Metric("latency.primary_p99_ms", "99th percentile latency of the primary, in ms"),
    Metric("latency.candidate_p50_ms", "median latency of the candidate, in ms"),
    Metric("latency.candidate_p95_ms", "95th percentile latency of the candidate, in ms"),
    Metric("latency.candidate_p99_ms", "99th percentile latency of the candidate, in ms"),
    Metric("errors.primary_rate", "share of the primary's predictions that are errors"),
    Metric("errors.candidate_rate", "share of the candidate's predictions that are errors"),
    Metric("coverage.no_candidate_rate", "share of requests the candidate did not answer"),
    Metric("drift.feature.psi", "PSI of a numeric feature against the reference", True),
    Metric("drift.feature.ks", "Kolmogorov-Smirnov D of a numeric feature vs the reference", True),
    Metric("drift.feature.js", "Jensen-Shannon distance of a categorical feature vs ref", True),
    Metric("drift.output.psi", "PSI of a model's numeric output against the reference", True),
    Metric("drift.output.ks", "Kolmogorov-Smirnov D of a model's numeric output vs ref", True),
    Metric("drift.output.js", "Jensen-Shannon distance of a model's class labels vs ref", True),
    Metric("drift.alarm", "1.0 while the drift alarm rule holds for a feature, else 0.0", True),
    Metric("drift.output.alarm", "1.0 while the drift alarm rule holds for an output", True),
    Metric(
        "drift.feature.change", "1.0 in a window where ADWIN saw a feature's drift change", True
    ),
    Metric("drift.output.change", "1.0 in a window where ADWIN saw an output's drift change", True),
)

#: The names of :data:`METRICS`, in the same order.
METRIC_NAMES: Final[tuple[str, ...]] = tuple(m.name for m in METRICS)

_BY_NAME: Final = {m.name: m for m in METRICS}

#: Comparison symbol to the operator it stands for: ``value <op> threshold``.
COMPARISONS: Final[dict[str, Callable[[float, float], bool]]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}

SEVERITIES: Final = ("info", "warning", "critical")

_PACKAGED_RULES: Final = Path(__file__).resolve().parents[1] / "_deploy" / "rules.yaml"
#: The shipped default rules file: the copy an installed wheel carries
#: (``streams/_deploy``, built from the top-level ``deploy/rules.yaml``), else the checkout's.
SHIPPED_RULES: Final = (
    _PACKAGED_RULES
    if _PACKAGED_RULES.is_file()
    else Path(__file__).resolve().parents[2] / "deploy" / "rules.yaml"
)

_REQUIRED: Final = ("name", "metric", "comparison", "threshold", "severity")
_OPTIONAL: Final = ("for", "candidate", "feature", "description")
_KEYS: Final = _REQUIRED + _OPTIONAL
# an alert's key is rule|candidate|feature: a name never holds "|"
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")


@dataclass(frozen=True)
class Rule:
    """One validated rule: ``metric <comparison> threshold`` for ``consecutive`` windows."""

    name: str
    metric: str
    comparison: str
    threshold: float
    severity: str
    #: consecutive windows the comparison must hold (the file's ``for``)
    consecutive: int = 1
    #: model ids or glob patterns of the candidates it watches
    candidates: tuple[str, ...] = ("*",)
    #: feature names or globs for a per-feature metric; empty for the others
    features: tuple[str, ...] = ()
    description: str = ""

    @property
    def per_feature(self) -> bool:
        """Whether the metric has one value per feature (or output)."""
        return _BY_NAME[self.metric].per_feature

    def holds(self, value: float) -> bool:
        """Whether ``value <comparison> threshold`` (NaN never holds)."""
        return bool(COMPARISONS[self.comparison](value, self.threshold))

    def watches(self, candidate: str) -> bool:
        """Whether the rule applies to this candidate model id."""
        return any(fnmatchcase(candidate, p) for p in self.candidates)

    def covers(self, feature: str) -> bool:
        """Whether the rule applies to this feature (always ``""`` for non-feature metrics)."""
        if not self.per_feature:
            return feature == ""
        return any(fnmatchcase(feature, p) for p in self.features)


def load_rules(path: str | Path) -> tuple[Rule, ...]:
    """Read and validate a rules file; any problem is a one-line :class:`ConfigError`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"rules file {path}: cannot read it: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"rules file {path}: not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    return parse_rules(text, source=str(path))


def parse_rules(text: str, source: str = "<string>") -> tuple[Rule, ...]:
    """Validate the YAML text of a rules file; ``source`` names it in errors."""
    import yaml

    where = f"rules file {source}"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: YAML syntax error{_yaml_position(exc)}") from exc
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise ConfigError(f"{where}: must be a mapping with a 'rules' list, got {kind}")
    extra = sorted(map(str, set(data) - {"rules"}))
    if extra:
        raise ConfigError(f"{where}: unknown top-level key {_explain(extra[0], ['rules'])}")
    items = data.get("rules")
    if not isinstance(items, list):
        raise ConfigError(f"{where}: 'rules' must be a list of rules")
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, item in enumerate(items, 1):
        rule = _rule(item, f"{where}: rule #{i}", where)
        if rule.name in seen:
            raise ConfigError(f"{where}: rule '{rule.name}' (#{i}): duplicate rule name")
        seen.add(rule.name)
        rules.append(rule)
    return tuple(rules)


def _rule(item: Any, anonymous: str, where: str) -> Rule:
    if not isinstance(item, dict):
        raise ConfigError(f"{anonymous}: must be a mapping of {', '.join(_KEYS)}")
    name = item.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        problem = "missing field 'name'" if name is None else f"bad name {name!r}"
        raise ConfigError(
            f"{anonymous}: {problem} (letters, digits, '_', '.', '-'; starting with a "
            "letter or digit)"
        )
    at = f"{where}: rule '{name}'"
    unknown = sorted(map(str, set(item) - set(_KEYS)))
    if unknown:
        raise ConfigError(f"{at}: unknown key {_explain(unknown[0], _KEYS)}")
    missing = [k for k in _REQUIRED if k not in item]
    if missing:
        raise ConfigError(f"{at}: missing field '{missing[0]}'")

    metric = item["metric"]
    if not isinstance(metric, str) or metric not in _BY_NAME:
        raise ConfigError(
            f"{at}: unknown metric {_explain(str(metric), METRIC_NAMES)} "
            "(streams.alerts.rules.METRICS lists them)"
        )
    comparison = item["comparison"]
    if comparison not in COMPARISONS:
        raise ConfigError(
            f"{at}: bad comparison {comparison!r} (one of {', '.join(COMPARISONS)}; "
            "quote it in YAML)"
        )
    threshold = item["threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise ConfigError(f"{at}: threshold must be a number, got {threshold!r}")
    if not math.isfinite(threshold):
        raise ConfigError(f"{at}: threshold must be finite, got {threshold!r}")
    severity = item["severity"]
    if severity not in SEVERITIES:
        raise ConfigError(f"{at}: bad severity {severity!r} (one of {', '.join(SEVERITIES)})")
    consecutive = item.get("for", 1)
    if isinstance(consecutive, bool) or not isinstance(consecutive, int) or consecutive < 1:
        raise ConfigError(
            f"{at}: 'for' must be a whole number of windows >= 1, got {consecutive!r}"
        )
    candidates = _patterns(item.get("candidate", "*"), f"{at}: candidate")
    per_feature = _BY_NAME[metric].per_feature
    if "feature" in item and not per_feature:
        raise ConfigError(f"{at}: 'feature' given, but metric '{metric}' is not per feature")
    features = _patterns(item.get("feature", "*"), f"{at}: feature") if per_feature else ()
    description = item.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{at}: description must be a string")
    return Rule(
        name=name,
        metric=metric,
        comparison=comparison,
        threshold=float(threshold),
        severity=severity,
        consecutive=consecutive,
        candidates=candidates,
        features=features,
        description=description,
    )


def _patterns(value: Any, at: str) -> tuple[str, ...]:
    """A name, a glob or a non-empty list of them."""
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) and v for v in values):
        raise ConfigError(f"{at} must be a non-empty name or glob, or a list of them")
    return tuple(values)


def _explain(name: str, known: Sequence[str] | Iterable[str]) -> str:
    """``'name'`` and the closest known name, if one is close."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else "")


def _yaml_position(exc: Exception) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or ""
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return at + (f": {problem}" if problem else "")
