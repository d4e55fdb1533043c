"""One frozen, validated configuration object for every role.

Loaded from an optional YAML file, then ``UNDERSTUDY_*`` environment variables, then
explicit overrides (CLI flags), in that order. Unknown keys are an error, because a typo in
a production config that silently falls back to a default is worse than a refusal.
librdkafka options (SASL, TLS, ...) pass through unchanged under ``kafka:`` in the file or
as ``UNDERSTUDY_KAFKA_<OPTION>`` (``_`` for ``.``); values whose names look secret are
redacted from ``repr`` and :meth:`Config.redacted`, so they never reach logs.

A misspelled ``UNDERSTUDY_*`` variable is refused like a misspelled file key: every such
variable is a setting, a ``UNDERSTUDY_KAFKA_*`` client option, or one of the few read by
other parts (:data:`OTHER_VARIABLES`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

from streams.errors import ConfigError

#: ``UNDERSTUDY_*`` environment variables that are not settings of :class:`Config` but are
#: read elsewhere: the config file's path, the broker's cache directory (streams.broker),
#: the schema directory (streams.schemas) and the joiner's instance id (streams.cli).
OTHER_VARIABLES: Final = frozenset(
    {"UNDERSTUDY_CONFIG", "UNDERSTUDY_HOME", "UNDERSTUDY_SCHEMA_DIR", "UNDERSTUDY_INSTANCE"}
)

#: Keys that once existed, and why they are gone: named in the "unknown key" error.
_REMOVED: Final = {
    "schema_registry_url": (
        "schema registries are not supported yet: messages use Avro single-object encoding"
    ),
}

_SECRET_MARKERS = ("password", "secret", "key", "token", "credential")


def is_secret(option: str) -> bool:
    """Whether a client option's value must never be printed."""
    name = option.lower()
    if name.endswith(".location"):  # a path to a key file is not the key
        return False
    return any(m in name for m in _SECRET_MARKERS)


@dataclass(frozen=True)
class Config:
    """Settings shared by the tap, worker, joiner, evaluator and CLI."""

    #: Kafka bootstrap servers; empty means "find one" (see :mod:`streams.kafka`).
    bootstrap_servers: str = ""
    #: Prefix of every topic name, so several deployments can share a cluster.
    prefix: str = "understudy"
    #: Partitions of requests, predictions, labels (co-partitioned: same count, same key).
    partitions: int = 6
    #: Partitions of the low-volume evaluator topics (partials, metrics).
    evaluator_partitions: int = 1
    replication_factor: int = 1
    #: Tumbling event-time window of the joiner's partial statistics.
    window_ms: int = 10_000
    #: How far behind the newest event time a partition's watermark trails.
    lateness_ms: int = 2_000
    #: How long (event time) a pending join waits for its other halves.
    join_ttl_ms: int = 60_000
    #: Wall-clock idleness after which a joiner partition closes its open windows.
    idle_flush_ms: int = 3_000
    #: Event times older than their message's Kafka timestamp by more than this are dead
    #: letters; finished joins are remembered this long to recognise late duplicates.
    max_age_ms: int = 600_000
    #: Event times newer than their message's Kafka timestamp by more than this are dead
    #: letters (a timestamp in microseconds, a clock set a year ahead).
    max_skew_ms: int = 60_000
    #: Open joins kept per joiner partition; beyond it the oldest are finished early and
    #: counted ``evicted``.
    max_pending: int = 1_000_000
    #: How long (event time) after a request its label may still come and be scored; 0:
    #: only labels that come while its join is open.
    label_horizon_ms: int = 86_400_000
    #: Finished requests' answers kept per joiner partition to await their labels (once a
    #: label has been seen there); beyond it the oldest are dropped, counted
    #: ``labels_evicted`` (bench/labels.py measures what each costs).
    label_budget: int = 200_000
    #: The evaluator closes a window once any joiner partition is this far past its end
    #: (event time), even if others have not reported; 0 means two windows.
    evaluator_grace_ms: int = 0
    #: Drift reference: the first this many requests (unless ``baseline_path`` is set);
    #: their windows build it and are not judged.
    reference_requests: int = 2_000
    #: A baseline profile (``understudy baseline build``) to judge drift against; empty:
    #: the first ``reference_requests`` requests.
    baseline_path: str = ""
    #: Alert rules (YAML, see docs/drift-and-alerts.md); empty: the shipped rules.
    rules_path: str = ""
    #: Slices listed in each snapshot, those that disagree most first.
    slice_top_k: int = 5
    #: The shadow worker commits each batch in a Kafka transaction (exactly-once) instead
    #: of after delivery (at-least-once); ``understudy worker --exactly-once`` sets it too.
    worker_exactly_once: bool = False
    #: Promotion verdicts (docs/verdicts.md): the error level over all candidates of one
    #: primary (each gets verdict_alpha / candidates, Bonferroni).
    verdict_alpha: float = 0.05
    #: Labelled pairs at which the confidence sequence is tightest (it is valid at every n).
    verdict_planned_n: int = 10_000
    #: Guardrail: a candidate whose p99 latency is over this is rejected.
    verdict_latency_budget_ms: float = 100.0
    #: Guardrail: a candidate whose error rate (errors / predictions) is over this is rejected.
    verdict_error_rate_budget: float = 0.01
    #: Candidates that share verdict_alpha; 0: those seen against the primary so far.
    verdict_candidates: int = 0
    #: The evaluator publishes a promotion (Control event) on a PROMOTE verdict.
    auto_promote: bool = False
    #: What an auto-promotion does with the old primary: retire or shadow.
    promote_old_primary: str = "retire"
    #: Seconds between two counter reports (TapStats) of a tap; 0: only when it closes.
    tap_stats_interval_s: float = 10.0
    #: librdkafka options passed unchanged to every client (SASL, TLS, ...).
    kafka: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("partitions", "evaluator_partitions", "replication_factor"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in (
            "window_ms",
            "join_ttl_ms",
            "idle_flush_ms",
            "max_age_ms",
            "max_skew_ms",
            "max_pending",
            "reference_requests",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("label_horizon_ms", "label_budget"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.evaluator_grace_ms < 0:
            raise ConfigError(f"evaluator_grace_ms must be >= 0, got {self.evaluator_grace_ms}")
        if self.slice_top_k < 0:
            raise ConfigError(f"slice_top_k must be >= 0, got {self.slice_top_k}")
        if not 0.0 < self.verdict_alpha < 1.0:
            raise ConfigError(f"verdict_alpha must be in (0, 1), got {self.verdict_alpha}")
        if self.verdict_planned_n < 1 or self.verdict_candidates < 0:
            raise ConfigError(
                f"verdict_planned_n must be >= 1 and verdict_candidates >= 0, got "
                f"{self.verdict_planned_n} and {self.verdict_candidates}"
            )
        if self.verdict_latency_budget_ms <= 0:
            raise ConfigError(
                f"verdict_latency_budget_ms must be > 0, got {self.verdict_latency_budget_ms}"
            )
        if not 0.0 <= self.verdict_error_rate_budget <= 1.0:
            raise ConfigError(
                f"verdict_error_rate_budget must be in [0, 1], got {self.verdict_error_rate_budget}"
            )
        if self.promote_old_primary not in ("retire", "shadow"):
            raise ConfigError(
                f"promote_old_primary must be retire or shadow, got {self.promote_old_primary!r}"
            )
        if self.tap_stats_interval_s < 0:
            raise ConfigError(f"tap_stats_interval_s must be >= 0, got {self.tap_stats_interval_s}")
        if self.lateness_ms < 0:
            raise ConfigError(f"lateness_ms must be >= 0, got {self.lateness_ms}")
        if not self.prefix or any(c in self.prefix for c in " /\\:"):
            raise ConfigError(f"invalid topic prefix {self.prefix!r}")
        object.__setattr__(self, "kafka", dict(self.kafka))

    def __repr__(self) -> str:
        return f"Config({self.redacted()!r})"

    def redacted(self) -> dict[str, Any]:
        """Settings as a dict with secret client options masked: safe to log."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["kafka"] = {k: ("***" if is_secret(k) else v) for k, v in self.kafka.items()}
        return out

    def to_env(self) -> dict[str, str]:
        """Environment variables that make :meth:`load` in a child process give this config.

        How the demo and the tests hand one configuration to the stage processes they start.
        """
        env = {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers}
        for f in fields(self):
            if f.name not in ("bootstrap_servers", "kafka"):
                env[f"UNDERSTUDY_{f.name.upper()}"] = str(getattr(self, f.name))
        for option, value in self.kafka.items():
            env[f"UNDERSTUDY_KAFKA_{option.upper().replace('.', '_')}"] = value
        return env

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> Config:
        """File, then environment, then overrides; ``None`` overrides are ignored."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        path = path or env.get("UNDERSTUDY_CONFIG")
        if path:
            values.update(_read_file(Path(path)))
        from_env = _from_env(env)
        if "kafka" in from_env:  # env options add to (and win over) the file's, not replace
            from_env["kafka"] = {**(values.get("kafka") or {}), **from_env["kafka"]}
        values.update(from_env)
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(
                "unknown configuration keys: " + "; ".join(_explain(k, known) for k in unknown)
            )
        typed: dict[str, Any] = {}
        for name, value in values.items():
            typed[name] = _coerce(name, known[name].type, value)
        return cls(**typed)


def _read_file(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"cannot read config file {path}: not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping")
    return data


def _explain(name: str, candidates: Iterable[str], prefix: str = "") -> str:
    """``prefix + name`` and why it is unknown: removed (and why), or the closest name."""
    shown = prefix + name
    if name.lower() in _REMOVED:
        return f"{shown} ({_REMOVED[name.lower()]})"
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f"{shown} (did you mean {prefix}{close[0]}?)" if close else shown


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    kafka: dict[str, str] = {}
    if env.get("KAFKA_BOOTSTRAP_SERVERS"):
        out["bootstrap_servers"] = env["KAFKA_BOOTSTRAP_SERVERS"]
    names = {f.name for f in fields(Config)} - {"kafka"}
    unknown: list[str] = []
    for key, value in env.items():
        if not key.startswith("UNDERSTUDY_") or key in OTHER_VARIABLES:
            continue
        rest = key[len("UNDERSTUDY_") :]
        if rest.startswith("KAFKA_") and len(rest) > len("KAFKA_"):
            kafka[rest[len("KAFKA_") :].lower().replace("_", ".")] = value
        elif rest.lower() in names:
            out[rest.lower()] = value
        else:
            unknown.append(rest)
    if unknown:
        candidates = [n.upper() for n in names]
        candidates += [v[len("UNDERSTUDY_") :] for v in OTHER_VARIABLES]
        candidates.append("KAFKA_<OPTION>")
        explained = "; ".join(
            # "KAFAK_SASL_PASSWORD" is closest to the client option it was meant to be
            _explain(r, [*candidates, "KAFKA_" + r.partition("_")[2]], "UNDERSTUDY_")
            for r in sorted(unknown)
        )
        raise ConfigError(f"unknown environment variables: {explained}")
    if kafka:
        out["kafka"] = kafka
    return out


_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off"})


def _coerce(name: str, annotation: Any, value: Any) -> Any:
    kind = str(annotation)
    try:
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError("expected a whole number")
            if isinstance(value, str) and not value.strip().lstrip("+-").isdigit():
                raise ValueError("expected a whole number")
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError("expected a number")
            number = float(value)
            if not math.isfinite(number):
                raise ValueError("expected a finite number")
            return number
        if kind == "str":
            return str(value)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if str(value).strip().lower() in _TRUE | _FALSE:
                return str(value).strip().lower() in _TRUE
            raise ValueError("expected true or false")
        if "Mapping" in kind:
            if not isinstance(value, Mapping):
                raise TypeError("expected a mapping")
            return {str(k): str(v) for k, v in value.items()}
    except (TypeError, ValueError) as exc:
        shown = "***" if name == "kafka" or is_secret(name) else repr(value)
        raise ConfigError(f"invalid value for {name}: {shown} ({exc})") from None
    return value
