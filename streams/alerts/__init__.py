"""Alerting, in plain modules (no Kafka, no faust): rules, the alert state machine, drift.

- :mod:`streams.alerts.rules`: the rules file (``deploy/rules.yaml``), validated, and the
  list of metric names a rule may use;
- :mod:`streams.alerts.state`: FIRING / RESOLVED transitions per ``rule|candidate|feature``,
  with a JSON-able state that survives a restart;
- :mod:`streams.alerts.drift_rule`: the drift alarm rule (false alarms under control) and
  ADWIN change detectors restorable from JSON.

The evaluator applies them at each window close and publishes the transitions as ``Alert``
records (``schemas/Alert.avsc``) on ``<prefix>.alerts``.
"""

from __future__ import annotations

from streams.alerts.drift_rule import (
    ChangeDetector,
    ChangeDetectors,
    DriftAlarm,
    DriftRule,
    FeatureDrift,
    expected_false_alarms_per_day,
)
from streams.alerts.rules import METRIC_NAMES, METRICS, Metric, Rule, load_rules, parse_rules
from streams.alerts.state import FIRING, RESOLVED, AlertState, Transition, alert_key

__all__ = [
    "FIRING",
    "METRICS",
    "METRIC_NAMES",
    "RESOLVED",
    "AlertState",
    "ChangeDetector",
    "ChangeDetectors",
    "DriftAlarm",
    "DriftRule",
    "FeatureDrift",
    "Metric",
    "Rule",
    "Transition",
    "alert_key",
    "expected_false_alarms_per_day",
    "load_rules",
    "parse_rules",
]
