"""Types of the C extension streams/_speedups.c (built at install where a C compiler is)."""

from collections.abc import Sequence
from typing import Any

def read_request(
    data: bytes | None, header: bytes, answer_header: bytes | None, view: bool = ..., /
) -> tuple[dict[str, Any], bytes | None, bytes | None] | None: ...
def encode_answers(
    heads: list[bytes | None],
    constant: bytes,
    outcomes: list[Sequence[Any]],
    tails: list[bytes | None],
    /,
) -> list[bytes | None]: ...
def sample_points(keys: list[str], /) -> list[float]: ...
def float_outcomes(
    outcome_type: type, no_scores: dict[str, float], outputs: list[Any], latencies: list[Any], /
) -> list[Any] | None: ...
