"""Prediction events encoded by hand: the shadow worker's hot path, byte for byte fastavro's.

Why: the worker publishes one Prediction per request per candidate, so encoding is paid
twice or more per request. fastavro's ``schemaless_writer`` costs ~5 us a record here
(measured with ``timeit`` on the worker's records, Python 3.11, fastavro 1.13), most of it
walking the schema for every field of every record. The Prediction layout is fixed and
simple (Avro specification, "Binary Encoding"): a string is its UTF-8 length as a zigzag
varint then the bytes, a long a zigzag varint, an enum the symbol's index, a union the
branch index then the value, a double 8 little-endian bytes, a map blocks of ``count,
(key, value)...`` ended by a zero count. Written out here, with what is the same for every
request of a batch (request_id, event_time, use_case) encoded once per request and what is
the same for every prediction of a candidate (model_id, role) once per candidate, a
prediction costs a ``struct`` pack and a join.

Correctness: every message must stay what fastavro writes (a Java consumer and Apache
Avro's own decoder read the topic), so the fast path is deliberately narrow and anything
else goes to :meth:`streams.schemas.Schema.encode` (fastavro), which stays the reference:

- it is used only when the schema's fields are exactly the layout written here
  (:data:`LAYOUT`); a new schema version disables it (:attr:`PredictionEncoder.fast` is
  False) until this module learns the new layout;
- it handles only exact types: ``str``, ``int`` (not ``bool``) within a long's range,
  ``float``, ``None``, and ``dict`` of ``str`` to ``float``; any other value (a subclass, a
  numpy scalar, a missing field left to its default, a string that cannot be UTF-8
  encoded) is encoded, or refused, by fastavro, so errors are fastavro's errors too.

``tests/unit/test_prediction_encoder.py`` compares the two, byte for byte, on many random
records (unicode, NaN, infinities, big and negative times, labels, score maps, errors).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from streams.native import encode_answers as _encode_answers
from streams.schemas import Record, Schema

__all__ = ["LAYOUT", "PredictionEncoder", "RequestParts"]

#: The Prediction fields, in order, as this module writes them: (name, Avro type with its
#: docs, names and logical types left out). The schema must match it exactly.
LAYOUT: tuple[tuple[str, Any], ...] = (
    ("request_id", "string"),
    ("event_time", "long"),
    ("model_id", "string"),
    ("role", "enum"),
    ("value", ["null", "double"]),
    ("label", ["null", "string"]),
    ("scores", {"type": "map", "values": "double"}),
    ("latency_ms", ["null", "double"]),
    ("error", ["null", "string"]),
    ("use_case", "string"),
)

_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
_BYTE = [bytes((i,)) for i in range(128)]
_CONTINUED = [bytes((i | 0x80,)) for i in range(128)]
#: :func:`_long`'s cache: a long's varint bytes after the first, by its value >> 7
_HIGH: dict[int, bytes] = {}
_DOUBLE = struct.Struct("<d").pack
#: value (union branch 1, a double), label null, scores empty, latency (branch 1), error null
_ANSWER = struct.Struct("<BdBBBdB").pack
#: value null, label null, scores empty, latency (branch 1), error (branch 1: its string next)
_FAILURE = struct.Struct("<BBBBdB").pack
_NULL, _BRANCH1, _EMPTY_MAP = b"\x00", b"\x02", b"\x00"

#: Per request, what every candidate's prediction of it shares: the encoded request_id and
#: event_time (the body's start) and use_case (its end); None where a request's values are
#: not of the exact types the fast path takes (its predictions then go through fastavro).
RequestParts = tuple[list[bytes | None], list[bytes | None]]


class _Unhandled(Exception):
    """A value the fast path does not take: fastavro encodes (or refuses) the record."""


def _varint(n: int) -> bytes:
    """Avro's variable-length unsigned integer (7 bits a byte, low bits first)."""
    if n < 0x80:
        return _BYTE[n]
    out = []
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _long(v: Any) -> bytes:
    """A zigzag long. Event times of one batch share all but their lowest 7 bits mostly
    (they change every 64 ms), so the bytes after the first are cached: a third of the
    cost of the loop."""
    if type(v) is not int or not _LONG_MIN <= v <= _LONG_MAX:
        raise _Unhandled
    n = (v << 1) ^ (v >> 63)
    if n < 0x80:
        return _BYTE[n]
    high = n >> 7
    rest = _HIGH.get(high)
    if rest is None:
        if len(_HIGH) >= 4096:
            _HIGH.clear()
        rest = _HIGH[high] = _varint(high)
    return _CONTINUED[n & 0x7F] + rest


def _string(s: Any) -> bytes:
    if type(s) is not str:
        raise _Unhandled
    b = s.encode("utf-8")  # strict: a lone surrogate raises, and fastavro decides
    return _varint(len(b) << 1) + b


def _optional_double(v: Any) -> bytes:
    if v is None:
        return _NULL
    if type(v) is not float:
        raise _Unhandled
    return _BRANCH1 + _DOUBLE(v)


def _optional_string(s: Any) -> bytes:
    return _NULL if s is None else _BRANCH1 + _string(s)


def _scores(scores: Any) -> bytes:
    if type(scores) is not dict:
        raise _Unhandled
    if not scores:
        return _EMPTY_MAP
    parts = [_varint(len(scores) << 1)]  # one block of len(scores) entries, then 0
    for key, value in scores.items():
        if type(value) is not float:
            raise _Unhandled
        parts.append(_string(key))
        parts.append(_DOUBLE(value))
    parts.append(_EMPTY_MAP)
    return b"".join(parts)


def _outcome(value: Any, label: Any, scores: Any, latency_ms: Any, error: Any) -> bytes:
    """The body's middle: value, label, scores, latency_ms, error."""
    answered = type(value) is float and label is None and error is None
    if answered and type(latency_ms) is float and type(scores) is dict and not scores:
        return _ANSWER(2, value, 0, 0, 2, latency_ms, 0)
    failed = value is None and label is None and type(error) is str
    if failed and type(latency_ms) is float and type(scores) is dict and not scores:
        return _FAILURE(0, 0, 0, 2, latency_ms, 2) + _string(error)
    return b"".join(
        (
            _optional_double(value),
            _optional_string(label),
            _scores(scores),
            _optional_double(latency_ms),
            _optional_string(error),
        )
    )


class PredictionEncoder:
    """Encodes Prediction records as :meth:`Schema.encode` does, fast for the usual shapes.

    :meth:`encode` takes any record; :meth:`request_parts` and :meth:`encode_outcomes` are
    the worker's batch path (one request's shared parts encoded once for all candidates).
    """

    def __init__(self, schema: Schema, *, native: bool = True) -> None:
        self.schema = schema
        self.fast = _layout(schema.raw) == LAYOUT
        #: the C encoder of :mod:`streams._speedups` where it was built (False: Python only)
        self.native = native and _encode_answers is not None
        fields = schema.raw.get("fields", [])
        role: Any = next((f["type"] for f in fields if f["name"] == "role"), {})
        self._symbols: list[str] = list(role.get("symbols", [])) if isinstance(role, dict) else []
        self._constants: dict[tuple[str, str], bytes] = {}

    def encode(self, record: Record) -> bytes:
        """One record, single-object encoded: byte for byte ``schema.encode(record)``."""
        fast = self.encode_fast(record)
        return fast if fast is not None else self.schema.encode(record)

    def encode_fast(self, record: Record) -> bytes | None:
        """The record by the fast path, or None when it is not a shape the path takes."""
        if not self.fast:
            return None
        try:
            return b"".join(
                (
                    self.schema.header,
                    _string(record["request_id"]),
                    _long(record["event_time"]),
                    self._constant(record["model_id"], record["role"]),
                    _outcome(
                        record["value"],
                        record["label"],
                        record["scores"],
                        record["latency_ms"],
                        record["error"],
                    ),
                    _string(record["use_case"]),
                )
            )
        except (_Unhandled, KeyError, UnicodeError):
            return None

    def request_parts(
        self, requests: Sequence[Record], known: RequestParts | None = None
    ) -> RequestParts:
        """Each request's shared parts: its body's start (header, request_id, event_time)
        and end (use_case), for :meth:`encode_outcomes`.

        ``known``: the parts already at hand, None where not, in the same order
        (:meth:`~streams.request_decoder.RequestDecoder.decode_view` copies them from the
        request's own bytes); only the others are encoded here."""
        fast = self.fast
        if known is not None and fast and None not in known[0] and None not in known[1]:
            return known
        heads: list[bytes | None] = []
        tails: list[bytes | None] = []
        header = self.schema.header
        if known is None:
            nothing: list[bytes | None] = [None] * len(requests)
            known = nothing, nothing
        for r, head, tail in zip(requests, *known, strict=True):
            if head is None or tail is None or not fast:
                try:
                    if not fast:
                        raise _Unhandled
                    head = header + _string(r["request_id"]) + _long(r["event_time"])
                    tail = _string(r["use_case"])
                except (_Unhandled, KeyError, UnicodeError):
                    head = tail = None
            heads.append(head)
            tails.append(tail)
        return heads, tails

    def encode_outcomes(
        self,
        model_id: str,
        role: str,
        requests: Sequence[Record],
        parts: RequestParts,
        outcomes: Sequence[Any],
    ) -> list[bytes]:
        """One Prediction per request, from its :class:`~streams.models.Outcome` (a tuple of
        ``value``, ``label``, ``scores``, ``latency_ms``, ``error``, in that order), in
        order."""
        heads, tails = parts
        try:
            constant: bytes | None = self._constant(model_id, role) if self.fast else None
        except (_Unhandled, UnicodeError):
            constant = None
        native: list[bytes | None] | None = None
        if (
            constant is not None
            and _encode_answers is not None
            and self.native
            and type(outcomes) is list
            and type(heads) is list
            and type(tails) is list
        ):
            native = _encode_answers(heads, constant, outcomes, tails)
            if None not in native:
                return native  # type: ignore[return-value]  # no None in it
        out: list[bytes] = []
        append = out.append
        for i, (record, head, tail, o) in enumerate(
            zip(requests, heads, tails, outcomes, strict=True)
        ):
            if native is not None:
                done = native[i]
                if done is not None:
                    append(done)
                    continue
            if constant is not None and head is not None and tail is not None:
                try:
                    append(
                        head
                        + constant
                        + _outcome(*o)  # unpacked: a named field costs more than a slot
                        + tail
                    )
                    continue
                except (_Unhandled, UnicodeError):
                    pass
            append(
                self.schema.encode(
                    {
                        "request_id": record["request_id"],
                        "event_time": record["event_time"],
                        "model_id": model_id,
                        "role": role,
                        "value": o.value,
                        "label": o.label,
                        "scores": o.scores,
                        "latency_ms": o.latency_ms,
                        "error": o.error,
                        "use_case": record["use_case"],
                    }
                )
            )
        return out

    def _constant(self, model_id: Any, role: Any) -> bytes:
        """model_id and role encoded, cached per candidate (a worker has a few)."""
        key = (model_id, role)
        cached = self._constants.get(key) if type(model_id) is str else None
        if cached is not None:
            return cached
        if type(role) is not str or role not in self._symbols:
            raise _Unhandled
        encoded = _string(model_id) + _varint(self._symbols.index(role) << 1)
        if len(self._constants) < 64:
            self._constants[key] = encoded
        return encoded


def _layout(raw: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A schema's fields as :data:`LAYOUT` spells them (docs, names, logical types out)."""

    def shape(node: Any) -> Any:
        if isinstance(node, list):
            return [shape(n) for n in node]
        if isinstance(node, dict):
            kind = node.get("type")
            if kind == "enum":
                return "enum"
            if kind == "map":
                return {"type": "map", "values": shape(node["values"])}
            if isinstance(kind, str) and "logicalType" in node and len(node) <= 3:
                return kind  # {"type": "long", "logicalType": ...}: a long on the wire
            return node
        return node

    if raw.get("type") != "record":
        return ()
    return tuple((f["name"], shape(f["type"])) for f in raw.get("fields", []))
