"""The joiner's fast Request and Prediction readers give what the codec gives, or step aside.

Whatever bytes arrive, :meth:`FastDecoder.decode` must return the codec's record (compared
by ``repr``, so NaN, -0.0 and key order count) or raise the codec's SchemaError: records
drawn at random, the same decoder reused across records of changing shapes (its learnt
layouts and remembered maps must never leak from one record into another), then bodies
truncated or with a byte overwritten.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.errors import SchemaError
from streams.join.decode import FastDecoder
from streams.schemas import default_codec

TEXT = st.text(max_size=70)
NAMES = st.sampled_from(["f0", "f1", "f10", "price", "é", ""]) | TEXT
DOUBLES = st.floats(allow_nan=True, allow_infinity=True)
LONGS = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def requests() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "request_id": TEXT,
            "event_time": LONGS,
            "use_case": TEXT,
            "numeric_features": st.dictionaries(NAMES, DOUBLES, max_size=70),
            "categorical_features": st.dictionaries(NAMES, TEXT, max_size=5),
            "context": st.dictionaries(NAMES, TEXT, max_size=5),
        }
    )


def predictions() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "request_id": TEXT,
            "event_time": LONGS,
            "model_id": TEXT,
            "role": st.sampled_from(["PRIMARY", "CANDIDATE"]),
            "value": st.none() | DOUBLES,
            "label": st.none() | TEXT,
            "scores": st.dictionaries(TEXT, DOUBLES, max_size=4),
            "latency_ms": st.none() | DOUBLES,
            "error": st.none() | TEXT,
            "use_case": TEXT,
        }
    )


def same_as_codec(fast: FastDecoder, data: bytes) -> None:
    codec = default_codec()
    try:
        expected: Any = codec.decode(data)
    except SchemaError:
        expected = SchemaError  # its message may name objects by address
    try:
        got: Any = fast.decode(data)
    except SchemaError:
        got = SchemaError
    assert repr(got) == repr(expected)


def messages() -> st.SearchStrategy[bytes]:
    codec = default_codec()
    return st.one_of(
        requests().map(lambda r: codec.encode("Request", r)),
        predictions().map(lambda r: codec.encode("Prediction", r)),
    )


SHARED = FastDecoder(default_codec())


@settings(max_examples=300, deadline=None)
@given(st.lists(messages(), min_size=1, max_size=6))
def test_records_read_as_the_codec_reads_them(batch: list[bytes]) -> None:
    fresh = FastDecoder(default_codec())
    for data in batch:
        same_as_codec(fresh, data)
        same_as_codec(SHARED, data)


@settings(max_examples=300, deadline=None)
@given(messages(), st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_damaged_bodies_read_or_fail_as_the_codec(data: bytes, at: int, byte: int) -> None:
    for fast in (FastDecoder(default_codec()), SHARED):
        fast.decode(data)  # learn this shape first: the damaged copy must not fit it wrongly
        cut = 10 + at % max(1, len(data) - 10)
        same_as_codec(fast, data[:cut])
        changed = bytearray(data)
        changed[cut % len(data)] = byte
        same_as_codec(fast, bytes(changed))


def test_feature_layout_is_learnt_and_checked() -> None:
    """The same names in the same order: one layout; a changed name or count is read as
    it is, not as the layout says."""
    codec = default_codec()
    fast = FastDecoder(codec)

    def req(features: dict[str, float]) -> bytes:
        return codec.encode(
            "Request", {"request_id": "r", "event_time": 1, "numeric_features": features}
        )

    for features in (
        {"a": 1.0, "b": 2.0},
        {"a": 3.0, "b": -0.0},
        {"a": 3.0, "c": 4.0},  # same length, another name
        {"a": 5.0},
        {"b": 1.0, "a": 2.0},  # same names, another order
        {},
    ):
        name, rec = fast.decode(req(features))
        assert name == "Request"
        assert repr(rec["numeric_features"]) == repr(features)


def test_other_events_and_versions_go_to_the_codec() -> None:
    codec = default_codec()
    fast = FastDecoder(codec)
    label = codec.encode("Label", {"request_id": "r", "event_time": 5, "value": 1.0})
    assert fast.decode(label) == codec.decode(label)
    for name in ("Request", "Prediction"):
        for schema in codec.versions[name].values():
            rec = {"request_id": "r", "event_time": 5, "model_id": "m@1", "role": "PRIMARY"}
            fields = {f["name"] for f in schema.raw["fields"]}
            data = schema.encode({k: v for k, v in rec.items() if k in fields})
            assert repr(fast.decode(data)) == repr(codec.decode(data))


def test_maps_are_never_shared_between_records() -> None:
    codec = default_codec()
    fast = FastDecoder(codec)
    data = codec.encode(
        "Request", {"request_id": "r", "event_time": 1, "context": {"region": "eu"}}
    )
    first = fast.decode(data)[1]
    first["context"]["region"] = "changed"
    assert fast.decode(data)[1]["context"] == {"region": "eu"}


def test_answer_layout_is_learnt_per_model_and_checked() -> None:
    """Answers of one model differ only in their doubles: read by the learnt layout, and
    anything else about them (a label, an error, scores, no latency) read as it is."""
    codec = default_codec()
    fast = FastDecoder(codec)
    base = {"request_id": "r", "event_time": 7, "model_id": "m@1", "role": "CANDIDATE"}
    for extra in (
        {"value": 1.0, "latency_ms": 2.0},
        {"value": float("nan"), "latency_ms": -0.0},
        {"value": 3.0, "latency_ms": None},
        {"value": None, "label": "cat", "latency_ms": 2.0},
        {"value": 4.0, "latency_ms": 2.0, "error": "boom"},
        {"value": 5.0, "latency_ms": 2.0, "scores": {"a": 0.5}},
        {"value": 6.0, "latency_ms": 9.0},
        {"value": 6.0, "latency_ms": 9.0, "role": "PRIMARY"},
        {"value": 6.0, "latency_ms": 9.0, "model_id": "n@1"},
    ):
        data = codec.encode("Prediction", {**base, **extra})
        assert repr(fast.decode(data)) == repr(codec.decode(data))
        assert repr(fast.decode(data + b"\x00")) == repr(codec.decode(data + b"\x00"))


def test_large_maps_and_answers_are_read_not_remembered() -> None:
    """What the decoder keeps between records is bounded whatever arrives: a large map or
    a large answer is read as it is and not kept."""
    codec = default_codec()
    fast = FastDecoder(codec)
    big = {f"key{i}": f"value{i}" for i in range(200)}
    data = codec.encode("Request", {"request_id": "r", "event_time": 1, "context": big})
    for _ in range(2):
        assert repr(fast.decode(data)) == repr(codec.decode(data))
    assert not fast._context
    answer = {"request_id": "r", "event_time": 1, "model_id": "m", "role": "PRIMARY"}
    data = codec.encode("Prediction", {**answer, "value": 1.0, "error": "x" * 300})
    for _ in range(2):
        assert repr(fast.decode(data)) == repr(codec.decode(data))
    assert not fast._answers


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.one_of(
            LONGS,
            st.integers(min_value=-300, max_value=300),
            st.integers(min_value=1_796_000_000_000, max_value=1_796_000_000_400),
        ),
        min_size=2,
        max_size=40,
    )
)
def test_event_times_in_a_row_read_as_the_codec_reads_them(times: list[int]) -> None:
    """Consecutive times share most varint bytes (the decoder reuses the last one's):
    across 7-bit carries, sign changes, lengths and extremes, every one reads right."""
    codec = default_codec()
    fast = FastDecoder(codec)
    for i, t in enumerate(sorted(times) if times[0] % 2 else times):
        rec = {"request_id": "r", "event_time": t, "model_id": "m@1", "role": "PRIMARY"}
        rec.update(value=1.0, latency_ms=2.0, use_case="u")
        if i % 3 == 0:
            rec = {"request_id": "r", "event_time": t, "use_case": "u"}
            same_as_codec(fast, codec.encode("Request", rec))
        else:
            same_as_codec(fast, codec.encode("Prediction", rec))
