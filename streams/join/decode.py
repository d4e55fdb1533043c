"""Decoding the joiner's two hot inputs, Request and Prediction, faster than fastavro.

Why: in bench/joiner.py fastavro's ``schemaless_reader`` cost ~14 us per Request (20
numeric features, 3 categorical, 3 context keys) and ~4 us per Prediction on this 2-core
machine, a third of the joiner's time (py-spy). Its compiled reader still calls the
Python ``read()`` of a ``BytesIO`` for every field. These readers walk the bytes of the
*current* schema version directly (slices, ``struct``), and learn byte layouts: requests
of one service send the same feature names in the same order, and a model's answers
differ only in their doubles, so after the first one a request's feature map, or the
rest of an answer after its model id, is checked by one masked integer comparison
(every length, key and union branch where the layout says, ``_Layout``) and its doubles
read without looking at the names again (a feature map is not even read here: its
bytes are, in one numpy pass per batch, :mod:`streams.join.feature_rows`).

They give what :meth:`streams.schemas.Codec.decode` gives, or step aside (the one
difference: numeric features that fit the learnt layout come as a read-only
:class:`~streams.join.feature_rows.FeatureRow`, a mapping equal to the codec's dict): a
message of another schema or version, or anything unusual in one (a truncated body,
negative lengths, a multi-block map, an unknown union branch, bad UTF-8) is decoded by the
codec, so its result or its error is the reference one. ``tests/unit/test_fast_decode.py``
checks the equality on random and malformed records.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from streams.join.feature_rows import DoublesLayout, FeatureRow
from streams.schemas import HEADER_LEN, Codec, Record

__all__ = ["MAX_REMEMBERED", "MAX_REMEMBERED_BYTES", "FastDecoder"]

MAX_REMEMBERED = 4096
"""Distinct string maps, and answer layouts, remembered (each set emptied when full)."""
MAX_REMEMBERED_BYTES = 256
"""Only maps and answers this small are remembered: at most ~1 MB per set, whatever
arrives (a hostile producer's 1 MB maps are read, never kept)."""

_DOUBLE = struct.Struct("<d")
_unpack_double = _DOUBLE.unpack_from
_ROLES = ("PRIMARY", "CANDIDATE")


class _Unusual(Exception):
    """A shape the fast readers leave to the codec."""


def _long(data: bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint at ``pos``: (value, position after it)."""
    b = data[pos]
    if b < 0x80:
        return (b >> 1) ^ -(b & 1), pos + 1
    n = b & 0x7F
    shift = 7
    pos += 1
    while True:
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            if n >> 64:  # beyond 64 bits: fastavro wraps it, left to the codec
                raise _Unusual
            return (n >> 1) ^ -(n & 1), pos
        shift += 7


def _string(data: bytes, pos: int) -> tuple[str, int]:
    n = data[pos]
    if n < 0x80 and not n & 1:  # a length under 64: one byte, the usual case
        start = pos + 1
        end = start + (n >> 1)
    else:
        size, start = _long(data, pos)
        if size < 0:
            raise _Unusual
        end = start + size
    if end > len(data):
        raise _Unusual
    return data[start:end].decode(), end


class _Layout:
    """Bytes with doubles at known offsets: which bytes must match, how to read the doubles.

    ``mask`` selects every byte that is not part of a double, ``expect`` holds those
    bytes: other bytes of the same size fit when ``int(bytes) & mask == expect`` (one
    comparison in C over a few hundred bytes, instead of every length, key and union
    branch read again in Python). Avro is read front to back, so bytes that agree
    everywhere but in the doubles read the same way, with the doubles at the same places.
    """

    __slots__ = ("expect", "mask", "size", "unpack")

    def __init__(self, block: bytes, offsets: list[int]) -> None:
        self.size = len(block)
        mask = bytearray(b"\xff" * len(block))
        fmt = ["<"]
        last = 0
        for off in offsets:
            mask[off : off + 8] = bytes(8)
            fmt.append(f"{off - last}xd" if off > last else "d")
            last = off + 8
        self.mask = int.from_bytes(mask, "little")
        self.expect = int.from_bytes(block, "little") & self.mask
        self.unpack = struct.Struct("".join(fmt)).unpack_from

    def fits(self, data: bytes, start: int, end: int) -> bool:
        return int.from_bytes(data[start:end], "little") & self.mask == self.expect


class _MapLayout(_Layout):
    """A map of doubles: its names in order, and its block's layout."""

    __slots__ = ("keys", "rows")

    def __init__(self, block: bytes, keys: tuple[str, ...], offsets: list[int]) -> None:
        super().__init__(block, offsets)
        self.keys = keys
        self.rows = DoublesLayout(keys, offsets, len(block))


class _AnswerLayout(_Layout):
    """What follows a Prediction's model id and role when its only doubles are its value
    and latency (no class scores): the record's other fields, as read once."""

    __slots__ = ("error", "has_latency", "has_value", "label", "model", "role", "use_case")

    def __init__(self, block: bytes, offsets: list[int], rec: Record) -> None:
        super().__init__(block, offsets)
        self.has_value = rec["value"] is not None
        self.has_latency = rec["latency_ms"] is not None
        self.model = rec["model_id"]
        self.role = rec["role"]
        self.label = rec["label"]
        self.error = rec["error"]
        self.use_case = rec["use_case"]


class FastDecoder:
    """``decode(data) -> (event name, record)``, as :meth:`Codec.decode`, faster for the
    current Request and Prediction; every other message goes to the codec."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self._request_header = codec.schemas["Request"].header
        self._prediction_header = codec.schemas["Prediction"].header
        #: the layout of the last numeric feature map read (one per service: one here)
        self._numeric: _MapLayout | None = None
        #: string maps by their bytes: a service's categorical features and contexts take
        #: few distinct values together (a segment), read once each
        self._categorical: dict[bytes, dict[str, str]] = {}
        self._context: dict[bytes, dict[str, str]] = {}
        #: by a prediction's model id and role bytes: the layout of the rest
        self._answers: dict[bytes, _AnswerLayout] = {}
        #: the varint bytes after the first of the last multi-byte event time read, and
        #: the value they stand for (``_time``); at first a lone terminating 0, worth 0
        self._time_rest = b"\x00"
        self._time_high = 0

    def decode(self, data: bytes | None) -> tuple[str, Record]:
        """The event name and its record; a :class:`~streams.errors.SchemaError` from the
        codec for what cannot be decoded."""
        if data is not None:
            header = data[:HEADER_LEN]
            try:
                if header == self._prediction_header:
                    return "Prediction", self._prediction(data)
                if header == self._request_header:
                    return "Request", self._request(data)
            except (_Unusual, IndexError, struct.error, UnicodeDecodeError):
                pass  # the codec decodes it, or says why it cannot
        return self.codec.decode(data)

    def _time(self, data: bytes, pos: int) -> tuple[int, int]:
        """An event time (a long) at ``pos``: :func:`_long`, or the last one's bytes.

        Times in milliseconds take 6 varint bytes, read one by one in Python (``_long``
        was ~4.5% of the joiner on bench/joiner.py, py-spy); events of a partition come
        in time order, so all but the first byte usually repeat the last time's. When
        they do and the first byte continues into them, the value is theirs plus its
        low 7 bits: exactly what reading them gives.
        """
        rest = self._time_rest
        end = pos + 1 + len(rest)
        b = data[pos]
        if b & 0x80 and data[pos + 1 : end] == rest:
            n = self._time_high | (b & 0x7F)
            return (n >> 1) ^ -(n & 1), end
        t, end = _long(data, pos)
        if end - pos > 1:
            rest = data[pos + 1 : end]
            high = 0
            for i, byte in enumerate(rest):
                high |= (byte & 0x7F) << (7 * i + 7)
            self._time_rest, self._time_high = rest, high
        return t, end

    # -- Request -----------------------------------------------------------------------

    def _request(self, data: bytes) -> Record:
        rid, pos = _string(data, HEADER_LEN)
        t, pos = self._time(data, pos)
        use_case, pos = _string(data, pos)
        numeric, pos = self._doubles(data, pos)
        categorical, pos = self._strings(data, pos, self._categorical)
        context, pos = self._strings(data, pos, self._context)
        if pos > len(data):
            raise _Unusual
        return {
            "request_id": rid,
            "event_time": t,
            "use_case": use_case,
            "numeric_features": numeric,
            "categorical_features": categorical,
            "context": context,
        }

    def _doubles(self, data: bytes, pos: int) -> tuple[Mapping[str, float], int]:
        """A map of doubles in one block (or none): a :class:`FeatureRow` of the learnt
        layout when it fits, else a dict."""
        count, start = _long(data, pos)
        if count == 0:
            return {}, start
        if count < 0:  # a block with its size in bytes: left to the codec
            raise _Unusual
        layout = self._numeric
        if layout is not None and len(layout.keys) == count:
            end = start + layout.size
            if end < len(data) and data[end] == 0 and layout.fits(data, start, end):
                return FeatureRow(layout.rows, data, start), end + 1
        keys: list[str] = []
        offsets: list[int] = []
        out: dict[str, float] = {}
        p = start
        for _ in range(count):
            key, p = _string(data, p)
            if p + 8 > len(data):
                raise _Unusual
            keys.append(key)
            offsets.append(p - start)
            out[key] = _unpack_double(data, p)[0]
            p += 8
        if data[p] != 0:
            raise _Unusual
        if len(set(keys)) == len(keys):  # a layout of distinct names only
            layout = self._numeric = _MapLayout(data[start:p], tuple(keys), offsets)
            return FeatureRow(layout.rows, data, start), p + 1
        return out, p + 1

    @staticmethod
    def _strings(
        data: bytes, pos: int, seen: dict[bytes, dict[str, str]]
    ) -> tuple[dict[str, str], int]:
        """A map of strings in one block, or none: found by its bytes among those read
        before (a copy: records never share a map), else read and remembered."""
        count, start = _long(data, pos)
        if count <= 0:
            if count == 0:
                return {}, start
            raise _Unusual
        if count > MAX_REMEMBERED_BYTES // 2:
            return _strings(data, pos)
        p = start
        for _ in range(count + count):  # the lengths only: where the block ends
            n = data[p]
            if n >= 0x80 or n & 1:  # a string of 64 bytes or more: not remembered
                return _strings(data, pos)
            p += 1 + (n >> 1)
        if p >= len(data) or data[p] != 0 or p - pos > MAX_REMEMBERED_BYTES:
            return _strings(data, pos)  # more blocks, or a large map: not remembered
        block = data[pos:p]  # the count too: the bytes alone say what the map is
        out = seen.get(block)
        if out is None:
            out, _ = _strings(data, pos)
            if len(seen) >= MAX_REMEMBERED:
                seen.clear()
            seen[block] = out
        return dict(out), p + 1

    # -- Prediction --------------------------------------------------------------------

    def _prediction(self, data: bytes) -> Record:
        rid, pos = _string(data, HEADER_LEN)
        t, pos = self._time(data, pos)
        n = data[pos]
        if n < 0x80 and not n & 1:  # a model id under 64 bytes: its answers' layout
            head = pos + 2 + (n >> 1)  # after the model id and the role
            layout = self._answers.get(data[pos:head])
            if (
                layout is not None
                and len(data) - head == layout.size
                and layout.fits(data, head, len(data))
            ):
                doubles = layout.unpack(data, head)
                value = doubles[0] if layout.has_value else None
                latency = doubles[-1] if layout.has_latency else None
                return {
                    "request_id": rid,
                    "event_time": t,
                    "model_id": layout.model,
                    "role": layout.role,
                    "value": value,
                    "label": layout.label,
                    "scores": {},
                    "latency_ms": latency,
                    "error": layout.error,
                    "use_case": layout.use_case,
                }
        model, pos = _string(data, pos)
        role = data[pos]
        if role > 2 or role & 1:
            raise _Unusual
        head = pos = pos + 1
        offsets: list[int] = []
        value, pos = _opt_double(data, pos)
        if value is not None:
            offsets.append(pos - 8 - head)
        b = data[pos]
        if b == 0:
            label, pos = None, pos + 1
        elif b == 2:
            label, pos = _string(data, pos + 1)
        else:
            raise _Unusual
        if data[pos] == 0:
            scores: dict[str, float] = {}
            pos += 1
        else:
            scores, pos = _scores(data, pos)
        latency, pos = _opt_double(data, pos)
        if latency is not None:
            offsets.append(pos - 8 - head)
        b = data[pos]
        if b == 0:
            error, pos = None, pos + 1
        elif b == 2:
            error, pos = _string(data, pos + 1)
        else:
            raise _Unusual
        use_case, pos = _string(data, pos)
        if pos > len(data):
            raise _Unusual
        rec = {
            "request_id": rid,
            "event_time": t,
            "model_id": model,
            "role": _ROLES[role >> 1],
            "value": value,
            "label": label,
            "scores": scores,
            "latency_ms": latency,
            "error": error,
            "use_case": use_case,
        }
        if (
            not scores
            and pos == len(data)
            and pos - head <= MAX_REMEMBERED_BYTES
            and n < 0x80
            and not n & 1
        ):
            if len(self._answers) >= MAX_REMEMBERED:
                self._answers.clear()
            self._answers[data[head - 2 - (n >> 1) : head]] = _AnswerLayout(
                data[head:], offsets, rec
            )
        return rec


def _opt_double(data: bytes, pos: int) -> tuple[float | None, int]:
    """A ``["null", "double"]`` union."""
    b = data[pos]
    if b == 0:
        return None, pos + 1
    if b != 2 or pos + 9 > len(data):
        raise _Unusual
    return _unpack_double(data, pos + 1)[0], pos + 9


def _scores(data: bytes, pos: int) -> tuple[dict[str, float], int]:
    """A map of doubles in any number of plain blocks."""
    out: dict[str, float] = {}
    while True:
        count, pos = _long(data, pos)
        if count == 0:
            return out, pos
        if count < 0:
            raise _Unusual
        for _ in range(count):
            key, pos = _string(data, pos)
            if pos + 8 > len(data):
                raise _Unusual
            out[key] = _unpack_double(data, pos)[0]
            pos += 8


def _strings(data: bytes, pos: int) -> tuple[dict[str, Any], int]:
    """A map of strings in any number of plain blocks."""
    out: dict[str, Any] = {}
    while True:
        count, pos = _long(data, pos)
        if count == 0:
            return out, pos
        if count < 0:
            raise _Unusual
        for _ in range(count):
            key, pos = _string(data, pos)
            out[key], pos = _string(data, pos)
