"""Types of the C extension streams/_speedups.c (built at install where a C compiler is)."""

from collections.abc import Sequence
from typing import Any

def read_request(
    data: bytes | None, header: bytes, answer_header: bytes | None, /
) -> tuple[dict[str, Any], bytes | None, bytes | None] | None: ...
def encode_answers(
    heads: list[bytes | None],
    constant: bytes,
    outcomes: list[Sequence[Any]],
    tails: list[bytes | None],
    /,
) -> list[bytes | None]: ...
def sample_points(keys: list[str], /) -> list[float]: ...
