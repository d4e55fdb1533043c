"""Counts on the command line (batch sizes) are refused at parse time when they cannot work:
a usage error naming the flag, exit code 2, before anything connects."""

from __future__ import annotations

import pytest

from streams.cli import build_parser
from streams.joiner import DEFAULT_BATCH


@pytest.mark.parametrize("stage", ["joiner", "worker"])
@pytest.mark.parametrize("value", ["0", "-5", "ten", "2.5"])
def test_a_batch_size_below_one_or_not_whole_is_a_usage_error(
    stage: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as ended:
        build_parser().parse_args([stage, "--batch-size", value])
    assert ended.value.code == 2
    assert "argument --batch-size" in capsys.readouterr().err


def test_the_joiner_batch_size_is_taken_and_its_help_states_the_default() -> None:
    parser = build_parser()
    assert parser.parse_args(["joiner", "--batch-size", "20000"]).batch_size == 20000
    assert parser.parse_args(["joiner"]).batch_size is None  # the Joiner's own default
    sub = next(a for a in parser._actions if a.dest == "cmd" or a.choices)
    joiner = sub.choices["joiner"]  # type: ignore[index]
    help_text = next(a.help for a in joiner._actions if a.dest == "batch_size")
    assert f"default {DEFAULT_BATCH}," in (help_text or "")


def test_the_joiner_refuses_a_batch_size_below_one_when_built_in_code() -> None:
    from streams.config import Config
    from streams.joiner import Joiner

    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        Joiner(Config(bootstrap_servers="127.0.0.1:1"), batch_size=0)


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["status", "--timeout"], "--timeout"),
        (["report", "--timeout"], "--timeout"),
        (["alerts", "--idle-exit"], "--idle-exit"),
        (["worker", "--budget"], "--budget"),
        (["worker", "--checkpoint-every"], "--checkpoint-every"),
        (["joiner", "--idle-exit"], "--idle-exit"),
        (["demo", "--duration"], "--duration"),
    ],
)
@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "soon"])
def test_a_duration_that_is_not_a_positive_finite_number_is_a_usage_error(
    args: list[str], flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status --timeout -1` (or nan) read nothing and said "no snapshots yet", exit 0."""
    with pytest.raises(SystemExit) as ended:
        build_parser().parse_args([*args, value])
    assert ended.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_a_rate_below_zero_or_not_finite_is_a_usage_error(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for cmd in ("demo", "demo-service"):
        with pytest.raises(SystemExit) as ended:
            build_parser().parse_args([cmd, "--rate", value])
        assert ended.value.code == 2
        assert "argument --rate" in capsys.readouterr().err


def test_good_durations_and_rates_are_taken() -> None:
    parser = build_parser()
    assert parser.parse_args(["status", "--timeout", "2.5"]).timeout == 2.5
    assert parser.parse_args(["demo-service", "--rate", "0"]).rate == 0.0  # 0: as fast as it can
