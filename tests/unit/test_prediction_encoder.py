"""The hand-written Prediction encoder against fastavro: the same bytes, for every record.

Reference: :meth:`streams.schemas.Schema.encode` (fastavro), which every other reader of
the predictions topic agrees with (tests/unit/test_schemas.py checks it against Apache
avro). Tolerance: none, bytes must be equal. Each test also checks that the fast path was
taken where it should be, so a fast path that silently fell back to fastavro for every
record (equal bytes, no speed) would fail too.

Every test runs twice: with the C encoder of the usual shapes (``streams._speedups``;
skipped where it was not built, which test_request_decoder.py's
``test_the_c_decoder_is_built`` then fails on) and with the Python path alone.
"""

from __future__ import annotations

import io
import math
import random
import struct
from typing import Any

import avro.io
import avro.schema
import pytest
from both_paths import compiled_and_python
from hypothesis import given, settings
from hypothesis import strategies as st

import streams.native
from streams import prediction_encoder
from streams.models import Outcome
from streams.prediction_encoder import PredictionEncoder
from streams.schemas import HEADER_LEN, Schema, default_codec, schema_dir

SPECIAL_FLOATS = [
    0.0,
    -0.0,
    1.0,
    -1.5,
    1e-310,  # subnormal
    1e308,
    -1e308,
    math.inf,
    -math.inf,
    math.nan,
    struct.unpack("<d", b"\x01\x00\x00\x00\x00\x00\xf8\x7f")[0],  # a NaN with a payload
    struct.unpack("<d", b"\x00\x00\x00\x00\x00\x00\xf8\xff")[0],  # a negative NaN
]
# string lengths around the varint's one-byte limit (63 bytes: zigzag 126; 64: two bytes)
TEXTS = ["", "a", "w123", "Zürich", "価格モデル", "emoji 🏠", "x" * 63, "y" * 64, "z" * 300]
TEXTS += ["é" * 70]
TIMES = [0, 1, -1, 63, 64, -64, -65, 2**62, 2**63 - 1, -(2**63)]
TIMES += [1_718_000_000_123, -1_718_000_000_123]


path = compiled_and_python(prediction_encoder, "_encode_answers")


def encoder() -> PredictionEncoder:
    return PredictionEncoder(default_codec().schemas["Prediction"])


def reference(record: dict[str, Any]) -> bytes:
    return default_codec().schemas["Prediction"].encode(record)


def random_text(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return rng.choice(TEXTS)
    alphabet = "abcXYZ019 _-@.äöü€中文🙂\u0000\u07ff\u0800\uffff"
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 90)))


def random_float(rng: random.Random) -> float:
    pick = rng.random()
    if pick < 0.3:
        return rng.choice(SPECIAL_FLOATS)
    if pick < 0.5:  # any bit pattern, NaN payloads and subnormals included
        return struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
    return rng.uniform(-1e6, 1e6)


def random_record(rng: random.Random) -> dict[str, Any]:
    kind = rng.randrange(4)
    value = label = error = None
    scores: dict[str, float] = {}
    if kind == 0:
        value = random_float(rng)
    elif kind == 1:
        label = random_text(rng)
        scores = {random_text(rng): random_float(rng) for _ in range(rng.randrange(0, 70))}
    elif kind == 2:
        error = random_text(rng)
    else:  # any mix the schema allows
        value = rng.choice([None, random_float(rng)])
        label = rng.choice([None, random_text(rng)])
        error = rng.choice([None, random_text(rng)])
        scores = {random_text(rng): random_float(rng) for _ in range(rng.randrange(0, 3))}
    return {
        "request_id": random_text(rng),
        "event_time": rng.choice(TIMES) if rng.random() < 0.3 else rng.randrange(-(2**63), 2**63),
        "model_id": rng.choice(["price-ridge@4", "price-tree@1", "modèle@2", random_text(rng)]),
        "role": rng.choice(["CANDIDATE", "PRIMARY"]),
        "value": value,
        "label": label,
        "scores": scores,
        "latency_ms": rng.choice([None, random_float(rng), random_float(rng)]),
        "error": error,
        "use_case": random_text(rng),
    }


def test_the_fast_path_is_on_for_the_current_schema() -> None:
    assert encoder().fast


def test_random_records_encode_to_fastavros_bytes() -> None:
    rng = random.Random(20261130)
    enc = encoder()
    for _ in range(5000):
        record = random_record(rng)
        fast = enc.encode_fast(record)
        assert fast is not None, record  # every record here is a shape the fast path takes
        assert fast == reference(record), record
        assert enc.encode(record) == fast


def test_the_batch_path_encodes_to_fastavros_bytes() -> None:
    rng = random.Random(7)
    enc = encoder()
    records = [random_record(rng) for _ in range(2000)]
    requests = [
        {k: r[k] for k in ("request_id", "event_time", "use_case")} | {"numeric_features": {}}
        for r in records
    ]
    parts = enc.request_parts(requests)
    assert all(h is not None for h in parts[0]) and all(t is not None for t in parts[1])
    for model_id, role in [("price-ridge@4", "CANDIDATE"), ("modèle@2", "PRIMARY")]:
        outcomes = [
            Outcome(
                value=r["value"],
                label=r["label"],
                scores=r["scores"],
                latency_ms=r["latency_ms"],
                error=r["error"],
            )
            for r in records
        ]
        got = enc.encode_outcomes(model_id, role, requests, parts, outcomes)
        want = [reference({**r, "model_id": model_id, "role": role}) for r in records]
        assert got == want


@settings(max_examples=300, deadline=None)
@given(
    request_id=st.text(),
    event_time=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    value=st.none() | st.floats(allow_nan=True, allow_infinity=True),
    label=st.none() | st.text(),
    scores=st.dictionaries(st.text(), st.floats(allow_nan=True, allow_infinity=True)),
    latency=st.none() | st.floats(allow_nan=True, allow_infinity=True),
    error=st.none() | st.text(),
    use_case=st.text(),
)
def test_any_record_of_the_types_the_path_takes(
    request_id: str,
    event_time: int,
    value: float | None,
    label: str | None,
    scores: dict[str, float],
    latency: float | None,
    error: str | None,
    use_case: str,
) -> None:
    record = {
        "request_id": request_id,
        "event_time": event_time,
        "model_id": "m@1",
        "role": "CANDIDATE",
        "value": value,
        "label": label,
        "scores": scores,
        "latency_ms": latency,
        "error": error,
        "use_case": use_case,
    }
    try:
        want: bytes | Exception = reference(record)
    except Exception as exc:  # a lone surrogate: fastavro refuses it
        want = exc
    if isinstance(want, Exception):
        with pytest.raises(type(want)):
            encoder().encode(record)
        assert encoder().encode_fast(record) is None
    else:
        assert encoder().encode_fast(record) == want


class Subclass(str):
    pass


@pytest.mark.parametrize(
    "change",
    [
        {"event_time": 2**63},  # past a long: fastavro's error, not a wrapped number
        {"event_time": True},  # bool is an int, but not the exact type the path takes
        {"event_time": 1.0},
        {"value": 3},  # an int where a double goes
        {"latency_ms": 2},
        {"request_id": Subclass("r")},
        {"scores": {"a": 1}},
        {"scores": {1.5: 1.0}},
        {"scores": None},
        {"label": b"bytes"},
        {"role": "SHADOW"},  # not a symbol: fastavro's ValueError
        {"error": "\ud800"},  # a lone surrogate: not UTF-8
    ],
)
def test_other_values_go_to_fastavro(change: dict[str, Any]) -> None:
    record = {
        "request_id": "r-1",
        "event_time": 5,
        "model_id": "m@1",
        "role": "CANDIDATE",
        "value": 1.0,
        "label": None,
        "scores": {},
        "latency_ms": 0.5,
        "error": None,
        "use_case": "u",
    } | change
    enc = encoder()
    assert enc.encode_fast(record) is None
    try:
        want: bytes | BaseException = reference(record)
    except BaseException as exc:
        want = exc
    if isinstance(want, BaseException):
        with pytest.raises(type(want)):
            enc.encode(record)
    else:
        assert enc.encode(record) == want


def test_a_missing_field_takes_fastavros_default() -> None:
    record = {
        "request_id": "r-1",
        "event_time": 5,
        "model_id": "m@1",
        "role": "CANDIDATE",
        "latency_ms": 0.5,
    }
    assert encoder().encode_fast(record) is None
    assert encoder().encode(record) == reference(record)


def test_a_batch_with_shapes_the_path_does_not_take_still_matches() -> None:
    enc = encoder()
    requests = [
        {"request_id": "a", "event_time": 1, "use_case": "u"},
        {"request_id": Subclass("b"), "event_time": 2, "use_case": "u"},  # fastavro's
        {"request_id": "c", "event_time": 3, "use_case": "u"},
    ]
    outcomes = [Outcome(value=1.0, latency_ms=0.1), Outcome(value=2.0), Outcome(value=3)]  # type: ignore[arg-type]
    parts = enc.request_parts(requests)
    assert parts[0][1] is None
    got = enc.encode_outcomes("m@1", "CANDIDATE", requests, parts, outcomes)
    want = [
        reference(
            {
                **r,
                "model_id": "m@1",
                "role": "CANDIDATE",
                "value": o.value,
                "label": o.label,
                "scores": o.scores,
                "latency_ms": o.latency_ms,
                "error": o.error,
            }
        )
        for r, o in zip(requests, outcomes, strict=True)
    ]
    assert got == want


def test_apache_avro_reads_what_the_fast_path_writes() -> None:
    # without the logical type: Apache avro would turn a far event time into a datetime
    text = (schema_dir() / "Prediction.avsc").read_text()
    schema = avro.schema.parse(text.replace('"logicalType": "timestamp-millis"', '"x": 0'))
    rng = random.Random(3)
    enc = encoder()
    for _ in range(200):
        record = random_record(rng)
        message = enc.encode_fast(record)
        assert message is not None
        reader = avro.io.DatumReader(schema, schema)
        got = reader.read(avro.io.BinaryDecoder(io.BytesIO(message[HEADER_LEN:])))
        assert got["request_id"] == record["request_id"]
        assert got["event_time"] == record["event_time"]
        assert got["use_case"] == record["use_case"]
        assert got["scores"].keys() == record["scores"].keys()
        assert got["error"] == record["error"]


def test_another_layout_turns_the_fast_path_off() -> None:
    raw = default_codec().schemas["Prediction"].raw
    extra = {"name": "extra", "type": "string", "default": ""}
    changed = Schema("Prediction", {**raw, "fields": [*raw["fields"], extra]})
    enc = PredictionEncoder(changed)
    assert not enc.fast
    record = {
        "request_id": "r",
        "event_time": 1,
        "model_id": "m@1",
        "role": "CANDIDATE",
        "value": 1.0,
        "label": None,
        "scores": {},
        "latency_ms": 0.5,
        "error": None,
        "use_case": "u",
        "extra": "x",
    }
    assert enc.encode_fast(record) is None
    assert enc.encode(record) == changed.encode(record)


def test_the_c_encoder_takes_answers_and_failures_and_leaves_the_rest() -> None:
    """The usual shapes are written in C, byte for byte the Python path's and fastavro's;
    every other shape is left (None) to the Python path, which the tests above hold to
    fastavro."""
    native = streams.native.encode_answers  # not the patched name: both runs test it
    if native is None:
        pytest.skip("the C extension was not built (see test_the_c_decoder_is_built)")
    rng = random.Random(41)
    enc = encoder()
    requests = [
        {"request_id": random_text(rng), "event_time": rng.choice(TIMES), "use_case": "u"}
        for _ in range(600)
    ]
    heads, tails = enc.request_parts(requests)
    usual = [
        Outcome(value=random_float(rng), latency_ms=random_float(rng))
        if i % 2
        else Outcome(error=random_text(rng), latency_ms=random_float(rng))
        for i in range(len(requests))
    ]
    constant = enc._constant("price-ridge@4", "CANDIDATE")
    got = native(heads, constant, usual, tails)
    python = PredictionEncoder(enc.schema, native=False)
    want = python.encode_outcomes("price-ridge@4", "CANDIDATE", requests, (heads, tails), usual)
    assert got == want
    assert want == [
        reference({**r, **o._asdict(), "model_id": "price-ridge@4", "role": "CANDIDATE"})
        for r, o in zip(requests, usual, strict=True)
    ]
    others: list[Any] = [
        Outcome(label="a", latency_ms=1.0),
        Outcome(label="a", scores={"a": 1.0}, latency_ms=1.0),
        Outcome(value=1, latency_ms=1.0),  # an int: fastavro writes it as a double
        Outcome(value=1.0, latency_ms=0),  # an int latency: not a float
        Outcome(value=1.0, latency_ms=None),  # type: ignore[arg-type]
        Outcome(value=1.0, error="both", latency_ms=1.0),
        Outcome(error="\ud800", latency_ms=1.0),  # a lone surrogate: fastavro's to refuse
        Outcome(value=1.0, scores={}.copy() | {"x": 1.0}, latency_ms=1.0),
        (1.0, None, {}, 1.0),  # not five fields
    ]
    n = len(others)
    assert native(heads[:n], constant, others, tails[:n]) == [None] * n
    unheaded = native([None] * 2, constant, usual[:2], tails[:2])
    assert unheaded == [None, None]  # a request the Python path could not split
