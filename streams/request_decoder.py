"""Request events decoded by hand: the shadow worker's per-request decode, fastavro's records.

Why: the worker decodes every request it scores, and fastavro's ``schemaless_reader``
costs ~10 us for the demo's Request (6 numeric features, 2 categorical, 2 context keys:
~200 bytes), most of it looking up the schema again for every map entry. The Request
layout is fixed and simple (Avro specification, "Binary Encoding": strings are a zigzag
varint length then UTF-8, a long a zigzag varint, a map blocks of ``count, (key,
value)...`` ended by a zero count, a double 8 little-endian bytes), and a service sends
the same things again and again, which three caches use:

- decoded strings (feature names, categories, use cases), by their bytes;
- the numeric map's *shape* (see :class:`_Shape`): the same keys in the same order, so
  one ``struct`` unpack reads every double;
- the two string maps (categorical features, context), by the bytes they are read from:
  the rest of the message after the numeric map, which a few categories and segments
  make a small set. Those bytes decide the two maps entirely, so a hit is what the loop
  would have read.

Measured with ``timeit`` (min of 5) on the demo's 202-byte request: the codec 7.6 us,
this 3.7 us. Where the C extension :mod:`streams._speedups` was built at install (it is
optional: a machine without a C compiler installs without it), it reads the same layout
first and only hands on what it does not take; the Python paths below are then the
fallback, and the tests hold both to the codec's records.

Correctness: the record must be exactly the one :meth:`streams.schemas.Codec.decode_as`
returns, and every message it cannot read must still be a dead letter with fastavro's
reason. So the fast path is narrow, and :meth:`Codec.decode_as` stays the reference:

- only a message whose header is the *current* Request schema's fingerprint is read here,
  and only while that schema has exactly the layout below (:data:`LAYOUT`); a message of
  an older version (resolved into the current schema), of another event, without a
  header, or of a changed schema goes to :meth:`Codec.decode_as`;
- whatever the fast path does not take or cannot read (a varint past 63 bits, a negative
  length or block count, a body cut short, invalid UTF-8) is read again by
  :meth:`Codec.decode_as`, which decodes it or raises its
  :class:`~streams.errors.SchemaError`: the fast path never refuses a message itself.

``tests/unit/test_request_decoder.py`` compares the two on random records, and on random,
truncated and overwritten bytes.
"""

from __future__ import annotations

import struct
from operator import itemgetter
from typing import Any

from streams.native import read_request as _read_request
from streams.schemas import HEADER_LEN, Codec, Record

__all__ = ["LAYOUT", "RequestDecoder", "worker_view"]

#: The Request fields, in order, as this module reads them (docs and logical types left out).
LAYOUT: tuple[tuple[str, Any], ...] = (
    ("request_id", "string"),
    ("event_time", "long"),
    ("use_case", "string"),
    ("numeric_features", {"type": "map", "values": "double"}),
    ("categorical_features", {"type": "map", "values": "string"}),
    ("context", {"type": "map", "values": "string"}),
)

#: Decoded strings kept per decoder, by their bytes (feature names, categories, use cases).
CACHE_SIZE = 4096

#: String-map pairs kept per decoder, by their bytes (a few hundred bytes each at most
#: in practice: ~1 MB when full); cleared when full, as the string cache.
TAILS_SIZE = 1024

#: Numeric maps read by the loop, with a shape known, before the shape is learned anew.
SHAPE_PATIENCE = 8

_double = struct.Struct("<d").unpack_from


class _Unhandled(Exception):
    """Bytes the fast path does not read: :meth:`Codec.decode_as` decides."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """An unsigned varint of at most 9 bytes (63 bits) and the position after it; a longer
    one is fastavro's to read (its 64-bit arithmetic is what the record must match)."""
    result = shift = 0
    while shift < 63:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
    raise _Unhandled


class _Shape:
    """The byte layout of a numeric-features map seen before: its keys, in order, each
    with its one-byte length, in one block of fewer than 64 entries.

    A service sends the same features in the same order with every request, so their
    bytes differ only in the doubles: one ``struct`` unpack reads the whole map, and the
    map is taken only if every byte that is not a double (the count, each key's length
    and bytes, the end of the map) is what this shape expects. Then the loop would have
    read exactly these keys and these doubles: the record is the same.
    """

    def __init__(self, raws: list[bytes], names: list[str]) -> None:
        k = len(raws)  # 2 <= k < 64, each key shorter than 64 bytes (the loop's limits)
        layout = struct.Struct("<B" + "".join(f"B{len(r)}sd" for r in raws) + "B")
        self.unpack = layout.unpack_from
        self.size = layout.size
        # unpacked: count, then (length, key, double) per entry, then the end-of-map 0
        self.constant = itemgetter(
            0, *[j for i in range(k) for j in (1 + 3 * i, 2 + 3 * i)], 3 * k + 1
        )
        self.expected = (k << 1, *[x for r in raws for x in (len(r) << 1, r)], 0)
        self.doubles = itemgetter(*[3 + 3 * i for i in range(k)])
        self.names = names


class RequestDecoder:
    """Decodes Request messages as ``codec.decode_as("Request", data)`` does, faster.

    ``answer_header``: the header of the event the caller answers each request with (the
    Prediction's), for :meth:`decode_view`.
    """

    def __init__(self, codec: Codec, answer_header: bytes | None = None) -> None:
        self.codec = codec
        schema = codec.schemas["Request"]
        self.fast = _layout(schema.raw) == LAYOUT
        self.header = schema.header
        self.answer_header = answer_header
        self._native = _read_request if self.fast else None
        self._strings: dict[bytes, str] = {}
        self._shape: _Shape | None = None
        #: the two string maps, by the bytes they are read from (the rest of the message)
        self._tails: dict[bytes, tuple[dict[str, str], dict[str, str]]] = {}
        self._misses = 0

    def decode(self, data: bytes | None) -> Record:
        """The message's record in the current schema, or :class:`SchemaError` (a dead
        letter): exactly what :meth:`Codec.decode_as` gives."""
        record = self.decode_fast(data)
        return record if record is not None else self.codec.decode_as("Request", data)

    def decode_view(self, data: bytes | None) -> tuple[Record, bytes | None, bytes | None]:
        """The worker's view of the message's record (:func:`worker_view`), and the bytes
        each answer to it repeats (None: not at hand), as
        :meth:`~streams.prediction_encoder.PredictionEncoder.request_parts` gives them: the
        answer's header, request_id and event_time; use_case. Raises as :meth:`decode`.

        The C path builds the view itself, two dicts instead of the record's four and
        their merge: 1.10 against 1.37 us a request (medians of 7 runs over 50,000 distinct
        demo requests, decoded 500 at a time, the batch's results kept as the worker keeps
        them)."""
        native = self._native
        if native is not None:
            got = native(data, self.header, self.answer_header, True)
            if got is not None:
                return got
        return worker_view(self.decode(data)), None, None

    def decode_fast(self, data: bytes | None) -> Record | None:
        """The record by the fast path, or None when the path does not take the message."""
        native = self._native
        if native is not None:
            # what the C path declines, the Python one declines too (it reads less)
            got = native(data, self.header, None)
            return got[0] if got is not None else None
        if not self.fast or type(data) is not bytes or data[:HEADER_LEN] != self.header:
            return None
        try:
            return self._body(data)
        except (_Unhandled, IndexError, struct.error, UnicodeDecodeError):
            return None

    def _body(self, data: bytes) -> Record:
        # Written flat, one-byte varints inline: every call and attribute look-up here is
        # paid ~10 times per request.
        n = len(data)
        strings = self._strings
        get = strings.get
        pos = HEADER_LEN
        # request_id: unique per request, not cached
        size, pos = _varint(data, pos)
        if size & 1:
            raise _Unhandled  # a negative length
        end = pos + (size >> 1)
        if end > n:
            raise _Unhandled
        request_id = data[pos:end].decode("utf-8")
        u, pos = _varint(data, end)
        event_time = (u >> 1) ^ -(u & 1)
        use_case, pos = self._string(data, pos, n)
        numeric: dict[str, float] | None = None
        shape = self._shape
        if shape is not None:
            try:
                values = shape.unpack(data, pos)
            except struct.error:
                values = None  # too short for this shape: the loop below says what it is
            if values is not None and shape.constant(values) == shape.expected:
                numeric = dict(zip(shape.names, shape.doubles(values), strict=True))
                pos += shape.size
        if numeric is None:
            numeric = {}
            start = pos
            count = data[pos]
            pos += 1
            blocks = 0
            while count:
                if count >= 0x80 or count & 1:
                    raise _Unhandled  # 64 entries or more in a block, or a negative count
                blocks += 1
                for _ in range(count >> 1):
                    size = data[pos]
                    if size >= 0x80 or size & 1:
                        raise _Unhandled  # a key of 64 bytes or more: fastavro's
                    end = pos + 1 + (size >> 1)
                    raw = data[pos + 1 : end]
                    key = get(raw)
                    if key is None:
                        if end > n:
                            raise _Unhandled
                        key = self._remember(raw)
                    numeric[key] = _double(data, end)[0]
                    pos = end + 8
                count = data[pos]
                pos += 1
            if blocks == 1:
                self._learn_shape(data, start, pos)
        tail = data[pos:]
        known = self._tails.get(tail)
        if known is not None:
            categorical, context = known
            return {
                "request_id": request_id,
                "event_time": event_time,
                "use_case": use_case,
                "numeric_features": numeric,
                "categorical_features": dict(categorical),  # the caller's to change
                "context": dict(context),
            }
        maps: list[dict[str, str]] = [{}, {}]
        for m in maps:
            count = data[pos]
            pos += 1
            while count:
                if count >= 0x80 or count & 1:
                    raise _Unhandled
                for _ in range(count >> 1):
                    size = data[pos]
                    if size >= 0x80 or size & 1:
                        raise _Unhandled
                    end = pos + 1 + (size >> 1)
                    raw = data[pos + 1 : end]
                    key = get(raw)
                    if key is None:
                        if end > n:
                            raise _Unhandled
                        key = self._remember(raw)
                    size = data[end]
                    if size >= 0x80 or size & 1:
                        raise _Unhandled  # a value of 64 bytes or more
                    pos = end + 1 + (size >> 1)
                    raw = data[end + 1 : pos]
                    value = get(raw)
                    if value is None:
                        if pos > n:
                            raise _Unhandled
                        value = self._remember(raw)
                    m[key] = value
                count = data[pos]
                pos += 1
        if len(self._tails) >= TAILS_SIZE:
            self._tails.clear()
        self._tails[tail] = (dict(maps[0]), dict(maps[1]))
        return {
            "request_id": request_id,
            "event_time": event_time,
            "use_case": use_case,
            "numeric_features": numeric,
            "categorical_features": maps[0],
            "context": maps[1],
        }

    def _learn_shape(self, data: bytes, start: int, end: int) -> None:
        """Remember the layout of the numeric map just read (``data[start:end]``, one
        block), so that the next ones with the same keys are one ``struct`` unpack; a
        stream whose keys change keeps its shape for :data:`SHAPE_PATIENCE` misses first,
        so that alternating layouts do not rebuild one per message."""
        if self._shape is not None:
            self._misses += 1
            if self._misses < SHAPE_PATIENCE:
                return
        self._misses = 0
        raws: list[bytes] = []
        pos = start + 1
        while pos < end - 1:
            size = data[pos] >> 1
            raws.append(data[pos + 1 : pos + 1 + size])
            pos += 1 + size + 8
        if len(raws) >= 2:
            self._shape = _Shape(raws, [self._strings.get(r) or r.decode("utf-8") for r in raws])

    def _string(self, data: bytes, pos: int, n: int) -> tuple[str, int]:
        """A string that repeats (a use case, a category): cached by its bytes."""
        size, pos = _varint(data, pos)
        if size & 1:
            raise _Unhandled
        end = pos + (size >> 1)
        if end > n:
            raise _Unhandled
        raw = data[pos:end]
        text = self._strings.get(raw)
        if text is None:
            text = self._remember(raw)
        return text, end

    def _remember(self, raw: bytes) -> str:
        text = raw.decode("utf-8")  # strict, as fastavro: invalid UTF-8 is its to refuse
        if len(self._strings) >= CACHE_SIZE:
            self._strings.clear()  # a stream of ever-new values: start over, stay bounded
        if len(raw) <= 64:
            self._strings[raw] = text
        return text


def worker_view(record: Record) -> Record:
    """What the shadow worker keeps of a Request: its id, event time and use case, and the
    one feature dict every candidate sees, ``{**numeric_features, **categorical_features}``
    (a name in both keeps its categorical value). The context is not scored, so it is not
    kept; the message is still read whole, and a message :meth:`RequestDecoder.decode`
    refuses is refused here too."""
    return {
        "request_id": record["request_id"],
        "event_time": record["event_time"],
        "use_case": record["use_case"],
        "features": {**record["numeric_features"], **record["categorical_features"]},
    }


def _layout(raw: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A schema's fields as :data:`LAYOUT` spells them (docs and logical types left out)."""

    def shape(node: Any) -> Any:
        if isinstance(node, dict):
            kind = node.get("type")
            if kind == "map":
                return {"type": "map", "values": shape(node["values"])}
            if isinstance(kind, str) and set(node) <= {"type", "logicalType", "doc"}:
                return kind
        return node

    if raw.get("type") != "record":
        return ()
    return tuple((f["name"], shape(f["type"])) for f in raw.get("fields", []))
