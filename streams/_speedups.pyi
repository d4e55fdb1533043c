"""Types of the C extension streams/_speedups.c (built at install where a C compiler is)."""

from typing import Any

def read_request(
    data: bytes | None, header: bytes, answer_header: bytes | None, /
) -> tuple[dict[str, Any], bytes | None, bytes | None] | None: ...
