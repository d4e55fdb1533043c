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
