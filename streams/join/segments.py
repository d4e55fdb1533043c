"""A keyed state's changelog as per-batch segments, with periodic bases.

Used for the live joins (:mod:`streams.join.table`) and the answers awaiting labels
(:mod:`streams.join.awaiting`): both change in many keys per batch, so one record per key
and change would put one Kafka record per event in the changelog. Instead each batch
writes one *segment*: the items that changed, as they are now, and the keys that left. A
restore applies the segments in log order. So that the compacted topic does not keep every
delta for ever, once the deltas written since the last *base* outweigh it 8 times (and
8 MB), a new base is written: every item, in segments of its own, with tombstones for
every earlier segment in the same transaction. Replaying holds at most the base and the
deltas after it.

A segment is a pickle (protocol 5) of plain lists, dicts, tuples, strings, numbers and
None, read back by an unpickler that refuses every global (:class:`_PlainUnpickler`), so
a record can build nothing else and run no code. Why not JSON, as segments were first
written (and still restore): on 2,000 live joins of bench/joiner.py's shape, ``json.dumps``
took 5.8 ms and 378 KB, ``pickle.dumps`` 1.0 ms and 212 KB, and reading back 4.7 ms
against 1.3 ms (``timeit``, this machine); the JSON encoding was 11% of the joiner's time
in a py-spy sample of bench/joiner.py. Pickle also keeps NaN and infinities (a model's
output may be either) and tuples as they were.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
from collections.abc import Iterator
from typing import Any

#: items per segment record: well under a Kafka message at ~110 bytes per live join
SEGMENT_ENTRIES = 2_000
#: a new base once the deltas since the last one weigh this many times the base ...
BASE_RATIO = 8
#: ... and at least this many bytes
BASE_MIN_BYTES = 8 << 20
_SEG_KEY = struct.Struct(">QI")  # sequence number, part

Record = tuple[bytes, bytes | None]


class Segment:
    """One restored segment record: whether it starts a base, what it puts and removes."""

    __slots__ = ("gone", "put", "starts_base")

    def __init__(self, starts_base: bool, put: dict[Any, Any], gone: list[Any]) -> None:
        self.starts_base = starts_base
        self.put = put
        self.gone = gone


class SegmentLog:
    """Sequence numbers, the live segment keys, and the base-or-delta decision."""

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix
        #: sequence number of the last segment written or restored
        self.seq = 0
        #: segment keys of the last base and the deltas after it (tombstoned at the next)
        self._keys: list[bytes] = []
        self._base_bytes = 0
        self._delta_bytes = 0

    def wants_base(self) -> bool:
        return self._delta_bytes > max(BASE_RATIO * self._base_bytes, BASE_MIN_BYTES)

    def delta(self, put: dict[Any, Any], gone: list[Any]) -> Iterator[Record]:
        for key, value in self._segment(False, put, gone):
            self._delta_bytes += len(value)
            yield key, value

    def base(self, everything: dict[Any, Any]) -> Iterator[Record]:
        """Every item, then tombstones of every segment the base replaces."""
        old = self._keys
        self._keys = []
        self._base_bytes = self._delta_bytes = 0
        for key, value in self._segment(True, everything, []):
            self._base_bytes += len(value)
            yield key, value
        for key in old:
            yield key, None

    def _segment(
        self, base: bool, put: dict[Any, Any], gone: list[Any]
    ) -> Iterator[tuple[bytes, bytes]]:
        """One sequence number, in parts of at most SEGMENT_ENTRIES items; a base always
        has a part 0, which empties the state when it is replayed."""
        self.seq += 1
        puts = list(put.items())
        n = len(puts) + len(gone)
        for part, lo in enumerate(range(0, max(n, 1), SEGMENT_ENTRIES)):
            hi = lo + SEGMENT_ENTRIES
            chunk = {
                "base": base,
                "put": dict(puts[lo:hi]),
                "gone": gone[max(0, lo - len(puts)) : max(0, hi - len(puts))],
            }
            key = self.prefix + _SEG_KEY.pack(self.seq, part)
            self._keys.append(key)
            yield key, pickle.dumps(chunk, protocol=5)

    def restore(self, rest: bytes, value: bytes | None) -> Segment | None:
        """A segment record (its key: the prefix + ``rest``), in log order; None for a
        tombstone (replaced by a later base)."""
        seq, part = _SEG_KEY.unpack(rest)
        self.seq = max(self.seq, seq)
        if value is None:
            return None
        seg = load_segment(value)
        starts = bool(seg["base"]) and part == 0
        if seg["base"]:
            if part == 0:
                self._keys = []
                self._base_bytes = 0
            self._base_bytes += len(value)
            self._delta_bytes = 0
        else:
            self._delta_bytes += len(value)
        self._keys.append(self.prefix + rest)
        return Segment(starts, seg["put"], seg["gone"])


class _PlainUnpickler(pickle.Unpickler):
    """Builds only what the pickle opcodes make by themselves: no class, no function."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"a changelog segment may not name {module}.{name}")


def load_segment(value: bytes) -> Any:
    """A segment as written now (a pickle) or by the first segment release (JSON)."""
    if value[:1] == b"{":
        return json.loads(value)
    return _PlainUnpickler(io.BytesIO(value)).load()
