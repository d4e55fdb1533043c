"""The hand-written Request decoder against the codec (fastavro): the same record, or none.

Reference: :meth:`streams.schemas.Codec.decode_as` (fastavro, checked against Apache avro
in tests/unit/test_schemas.py). The property, for any bytes: when the fast path returns a
record, the codec returns an equal one (doubles compared bit for bit, NaN payloads
included); when it does not, :meth:`RequestDecoder.decode` is the codec's answer, its
SchemaError included. Valid ordinary requests must take the fast path, so a path that
always declined (equal records, no speed) would fail too.

Every test runs twice: with the C decoder (``streams._speedups``; skipped where it was not
built, which :func:`test_the_c_decoder_is_built` then fails on) and with the Python paths
alone.
"""

from __future__ import annotations

import importlib.util
import random
import re
import struct
from typing import Any

import pytest
from both_paths import compiled_and_python
from fastavro.utils import generate_many
from hypothesis import given, settings
from hypothesis import strategies as st

from streams import request_decoder
from streams.errors import SchemaError
from streams.prediction_encoder import PredictionEncoder
from streams.request_decoder import RequestDecoder, worker_view
from streams.schemas import HEADER_LEN, MAGIC, Codec, default_codec

CODEC = default_codec()
FLOATS = [0.0, -0.0, 1.5, -2.25, 1e308, 1e-310, float("inf"), float("-inf"), float("nan")]
FLOATS += [struct.unpack("<d", b"\x01\x00\x00\x00\x00\x00\xf8\x7f")[0]]  # a NaN payload
TEXTS = ["", "a", "north", "Zürich", "価格", "🏠", "k" * 63, "v" * 64, "w" * 200, "\u0000"]


def normal(value: Any) -> Any:
    """A record with every double as its 8 bytes: NaN == NaN, -0.0 != 0.0."""
    if isinstance(value, float):
        return struct.pack("<d", value)
    if isinstance(value, dict):
        return {k: normal(v) for k, v in value.items()}
    return value


def unaddressed(text: str) -> str:
    """An error text without object addresses (``<... at 0x7f...>`` differs per call)."""
    return re.sub(r"0x[0-9a-f]+", "0x", text)


def encode(record: dict[str, Any]) -> bytes:
    return CODEC.encode("Request", record)


def random_text(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return rng.choice(TEXTS)
    alphabet = "abcXYZ019 _-äöü€中🙂\u07ff\u0800\uffff"
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))


def random_request(rng: random.Random) -> dict[str, Any]:
    def double() -> float:
        if rng.random() < 0.3:
            return rng.choice(FLOATS)
        return struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]

    return {
        "request_id": random_text(rng),
        "event_time": rng.choice([0, -1, 1, 2**62 - 1, -(2**62), rng.randrange(-(2**62), 2**62)]),
        "use_case": random_text(rng),
        "numeric_features": {random_text(rng): double() for _ in range(rng.randrange(0, 12))},
        "categorical_features": {
            random_text(rng): random_text(rng) for _ in range(rng.randrange(0, 6))
        },
        "context": {random_text(rng): random_text(rng) for _ in range(rng.randrange(0, 4))},
    }


path = compiled_and_python(request_decoder, "_read_request")


def test_the_c_decoder_is_built() -> None:
    assert importlib.util.find_spec("streams._speedups") is not None, (
        "streams._speedups was not built at install (no C compiler?); "
        "`pip install -v -e .` shows why; the worker runs on the slower Python paths"
    )


def same_answer(decoder: RequestDecoder, data: bytes) -> bool:
    """The property: the fast record equals the codec's, else decode() is the codec's; the
    worker's view is the view of the codec's record, and refused where the record is."""
    fast = decoder.decode_fast(data)
    try:
        want: Any = CODEC.decode_as("Request", data)
    except SchemaError as exc:
        assert fast is None, (data, fast)
        with pytest.raises(SchemaError) as got:
            decoder.decode(data)
        assert unaddressed(str(got.value)) == unaddressed(str(exc))
        with pytest.raises(SchemaError) as got:
            decoder.decode_view(data)
        assert unaddressed(str(got.value)) == unaddressed(str(exc))
        return False
    if fast is not None:
        assert normal(fast) == normal(want), data
    assert normal(decoder.decode(data)) == normal(want)
    assert normal(decoder.decode_view(data)[0]) == normal(worker_view(want)), data
    return fast is not None


def test_the_fast_path_is_on_for_the_current_schema() -> None:
    assert RequestDecoder(CODEC).fast


def test_random_requests_decode_to_the_codecs_records() -> None:
    rng = random.Random(11)
    decoder = RequestDecoder(CODEC)
    fast = 0
    for _ in range(3000):
        record = random_request(rng)
        took = same_answer(decoder, encode(record))
        fast += took
        maps = ("numeric_features", "categorical_features", "context")
        texts = [k for m in maps for k in record[m]]
        texts += [v for m in maps[1:] for v in record[m].values()]
        # only map keys or string values of 64 bytes or more (and >= 64 entries) leave it
        assert took or any(len(t.encode()) >= 64 for t in texts)
    assert fast > 500


def test_ordinary_requests_take_the_fast_path() -> None:
    decoder = RequestDecoder(CODEC)
    record = {
        "request_id": "req-1",
        "event_time": 1_764_495_000_123,
        "use_case": "house-price",
        "numeric_features": {"sqft": 1500.0, "bedrooms": 3.0},
        "categorical_features": {"region": "north"},
        "context": {"tenant": "acme"},
    }
    for _ in range(3):  # the second time from the string cache
        assert decoder.decode_fast(encode(record)) == record


def test_fastavros_generated_requests() -> None:
    decoder = RequestDecoder(CODEC)
    schema = CODEC.schemas["Request"].parsed
    for record in generate_many(schema, 500):
        same_answer(decoder, encode(record))


def test_truncated_and_overwritten_messages() -> None:
    rng = random.Random(5)
    decoder = RequestDecoder(CODEC)
    for _ in range(1500):
        data = encode(random_request(rng))
        same_answer(decoder, data[: rng.randrange(HEADER_LEN, len(data) + 1)])
        body = bytearray(data)
        for _ in range(rng.randrange(1, 4)):
            body[rng.randrange(HEADER_LEN, len(body))] = rng.randrange(256)
        same_answer(decoder, bytes(body))
        same_answer(decoder, data + bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 9))))


def service_like(rng: random.Random, keys: list[str]) -> dict[str, Any]:
    """A request as a service sends them: the same features every time, new doubles, a few
    categories and segments (what the shape and the string-map caches are for)."""
    return {
        "request_id": f"r-{rng.randrange(10**9)}",
        "event_time": rng.randrange(2**41),
        "use_case": "house-price",
        "numeric_features": {
            k: rng.choice(FLOATS) if rng.random() < 0.2 else rng.uniform(-1e6, 1e6) for k in keys
        },
        "categorical_features": {"region": rng.choice(["north", "south", "Zürich", ""])},
        "context": {"tenant": rng.choice(["a", "b"]), "channel": rng.choice(["web", "app"])},
    }


def test_requests_of_one_service_take_the_cached_paths_and_match() -> None:
    rng = random.Random(17)
    decoder = RequestDecoder(CODEC)
    keys = ["sqft", "bedrooms", "distance_km", "é", ""]
    for _ in range(2000):
        assert same_answer(decoder, encode(service_like(rng, keys)))
    if decoder._native is None:  # the Python paths' caches
        assert decoder._shape is not None and decoder._shape.names == keys
        assert len(decoder._tails) <= 4 * 2 * 2  # every combination of the string maps, once


def test_the_cached_paths_on_damaged_and_other_messages() -> None:
    """With a shape and string maps learned, whatever comes next: other keys of the same
    lengths, other key orders and counts, maps in several blocks, cut and overwritten
    bytes, bytes appended. The record is the codec's every time."""
    rng = random.Random(23)
    decoder = RequestDecoder(CODEC)
    key_sets = [["aa", "bb", "cc"], ["ab", "ba", "cc"], ["bb", "aa", "cc"], ["aa", "bb"]]
    key_sets += [["aa", "bb", "cc", "dd"], ["x" * 63, "y"]]
    for _ in range(1500):
        data = encode(service_like(rng, rng.choice(key_sets)))
        same_answer(decoder, data)
        same_answer(decoder, data[: rng.randrange(HEADER_LEN, len(data) + 1)])
        body = bytearray(data)
        body[rng.randrange(HEADER_LEN, len(body))] = rng.randrange(256)
        same_answer(decoder, bytes(body))
        same_answer(decoder, data + bytes([rng.randrange(256)]))


def test_a_numeric_map_in_two_blocks_after_a_shape_is_known() -> None:
    decoder = RequestDecoder(CODEC)
    one = encode(service_like(random.Random(1), ["aa", "bb"]))
    assert same_answer(decoder, one)
    assert decoder._native is not None or decoder._shape is not None
    header = CODEC.schemas["Request"].header
    # request_id "r", event_time 1, use_case "", numeric map as two blocks of one entry
    entry_a = b"\x04aa" + struct.pack("<d", 1.5)
    entry_b = b"\x04bb" + struct.pack("<d", 2.5)
    body = b"\x02r\x02\x00" + b"\x02" + entry_a + b"\x02" + entry_b + b"\x00\x00\x00"
    assert same_answer(decoder, header + body)
    assert decoder.decode(header + body)["numeric_features"] == {"aa": 1.5, "bb": 2.5}


def test_a_record_changed_by_its_caller_does_not_change_the_next() -> None:
    decoder = RequestDecoder(CODEC)
    record = service_like(random.Random(3), ["aa", "bb"])
    first = decoder.decode(encode(record))
    second = decoder.decode(encode(record))  # from the caches
    for got in (first, second):
        got["categorical_features"]["region"] = "changed"
        got["context"].clear()
        got["numeric_features"]["aa"] = 0.0
    assert normal(decoder.decode(encode(record))) == normal(record)


@settings(max_examples=400, deadline=None)
@given(body=st.binary(max_size=300))
def test_any_bytes_after_the_header(body: bytes) -> None:
    same_answer(RequestDecoder(CODEC), CODEC.schemas["Request"].header + body)


@pytest.mark.parametrize(
    "data",
    [
        None,
        b"",
        b"not avro at all",
        MAGIC + b"\x00" * 8 + b"\x02a\x02",  # an unknown fingerprint
    ],
)
def test_what_the_fast_path_does_not_take_is_the_codecs_dead_letter(data: bytes | None) -> None:
    decoder = RequestDecoder(CODEC)
    assert decoder.decode_fast(data) is None
    with pytest.raises(SchemaError) as want:
        CODEC.decode_as("Request", data)
    with pytest.raises(SchemaError) as got:
        decoder.decode(data)
    assert str(got.value) == str(want.value)


@pytest.mark.parametrize(
    "body",
    [
        b"\x02a\x02\x00\x02\x01" + b"\x00" * 8 + b"\x00\x00\x00",  # a key of length -1
        b"\x02a\x02\x00\x02\x03k" + b"\x00" * 8 + b"\x00\x00\x00",  # length -2
        b"\x01a\x02\x00\x00\x00\x00",  # a request_id of length -1
        b"\x02a\x02\x00\x00\x02\x02k\x01\x00\x00",  # a category of length -1
        b"\x02a\x02\x00\x01\x02\x02k" + b"\x00" * 8 + b"\x00\x00\x00",  # block count -1
    ],
)
def test_negative_lengths_and_counts_are_the_codecs(body: bytes) -> None:
    data = CODEC.schemas["Request"].header + body
    assert RequestDecoder(CODEC).decode_fast(data) is None
    same_answer(RequestDecoder(CODEC), data)


@pytest.mark.parametrize("event_time", [2**63 - 1, -(2**63), 2**62, -(2**62) - 1])
def test_times_past_63_bits_of_varint_are_the_codecs(event_time: int) -> None:
    record = {
        "request_id": "r",
        "event_time": event_time,
        "use_case": "",
        "numeric_features": {},
        "categorical_features": {},
        "context": {},
    }
    decoder = RequestDecoder(CODEC)
    assert decoder.decode_fast(encode(record)) is None
    assert decoder.decode(encode(record)) == record


def test_another_event_is_the_codecs_to_refuse() -> None:
    label = CODEC.encode("Label", {"request_id": "r", "event_time": 1, "value": 1.0})
    decoder = RequestDecoder(CODEC)
    assert decoder.decode_fast(label) is None
    with pytest.raises(SchemaError, match="expected a Request"):
        decoder.decode(label)


def test_a_changed_request_schema_turns_the_fast_path_off(tmp_path: Any) -> None:
    import json
    import shutil

    from streams.schemas import schema_dir

    shutil.copytree(schema_dir(), tmp_path / "schemas")
    path = tmp_path / "schemas" / "Request.avsc"
    raw = json.loads(path.read_text())
    raw["fields"].append({"name": "extra", "type": "string", "default": ""})
    path.write_text(json.dumps(raw))
    codec = Codec(tmp_path / "schemas")
    decoder = RequestDecoder(codec)
    assert not decoder.fast
    record = {
        "request_id": "r",
        "event_time": 1,
        "use_case": "",
        "numeric_features": {},
        "categorical_features": {},
        "context": {},
        "extra": "x",
    }
    data = codec.encode("Request", record)
    assert decoder.decode_fast(data) is None
    assert decoder.decode(data) == record
    assert decoder.decode_view(data) == (worker_view(record), None, None)
    # a message of the released version (v1) is resolved into the new schema by the codec
    old = CODEC.encode("Request", {k: v for k, v in record.items() if k != "extra"})
    assert decoder.decode(old) == {**record, "extra": ""}


# -- the parts each answer repeats -----------------------------------------------------------

ANSWERS = PredictionEncoder(CODEC.schemas["Prediction"])


def test_the_parts_copied_from_a_request_are_the_ones_the_encoder_writes() -> None:
    """What decode_view copies from the request's bytes is, byte for byte, what the
    Prediction encoder (itself held to fastavro in test_prediction_encoder) would write."""
    rng = random.Random(29)
    decoder = RequestDecoder(CODEC, answer_header=ANSWERS.schema.header)
    copied = 0
    for _ in range(2000):
        data = encode(random_request(rng))
        record, head, tail = decoder.decode_view(data)
        assert normal(record) == normal(worker_view(CODEC.decode_as("Request", data)))
        heads, tails = ANSWERS.request_parts([record])
        assert head is None or head == heads[0]
        assert tail is None or tail == tails[0]
        copied += head is not None and tail is not None
    if decoder._native is not None:
        assert copied == 2000  # fastavro writes only shortest varints
    else:
        assert copied == 0  # the Python paths copy nothing


def test_a_request_written_with_longer_varints_than_needed_is_not_copied() -> None:
    """A varint with a zero last byte decodes to the same number, but an answer copying it
    would not be the bytes fastavro writes: those parts are encoded anew."""
    header = CODEC.schemas["Request"].header
    maps = b"\x00\x00\x00"
    shortest = header + b"\x02r" + b"\x02" + b"\x02u" + maps
    cases = {
        "id length": header + b"\x82\x00r" + b"\x02" + b"\x02u" + maps,
        "event time": header + b"\x02r" + b"\x82\x00" + b"\x02u" + maps,
        "use case length": header + b"\x02r" + b"\x02" + b"\x82\x00u" + maps,
    }
    decoder = RequestDecoder(CODEC, answer_header=ANSWERS.schema.header)
    want = CODEC.decode_as("Request", shortest)
    for name, data in cases.items():
        record, head, tail = decoder.decode_view(data)
        assert record == worker_view(want), name
        if name == "use case length":
            assert tail is None and (head is not None or decoder._native is None)
        else:
            assert head is None and (tail is not None or decoder._native is None)
        assert ANSWERS.request_parts([record], ([head], [tail])) == ANSWERS.request_parts([record])


def test_the_workers_view_merges_the_features_as_the_models_saw_them_before() -> None:
    """One dict, numeric entries first; a name in both maps keeps its place and takes the
    categorical value, as ``{**numeric_features, **categorical_features}``; no context."""
    record = {
        "request_id": "r-1",
        "event_time": 7,
        "use_case": "house-price",
        "numeric_features": {"sqft": 80.0, "region": 1.0, "age": 3.0},
        "categorical_features": {"region": "north", "type": "flat"},
        "context": {"segment": "b"},
    }
    view, _, _ = RequestDecoder(CODEC).decode_view(encode(record))
    assert list(view) == ["request_id", "event_time", "use_case", "features"]
    assert (view["request_id"], view["event_time"], view["use_case"]) == ("r-1", 7, "house-price")
    assert list(view["features"].items()) == [
        ("sqft", 80.0),
        ("region", "north"),
        ("age", 3.0),
        ("type", "flat"),
    ]
