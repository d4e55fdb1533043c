"""The Avro codec against the contract: the ``.avsc`` files and the Avro specification.

Independent references: the Apache ``avro`` package (its own parser, binary decoder,
encoder and CRC-64-AVRO fingerprint) and a CRC-64-AVRO written here from the
specification. Tolerance: none; records and bytes must be equal.

Note on fingerprints: Apache avro for Python (1.12) keeps a logical-typed primitive as
``{"type":"long"}`` in its Parsing Canonical Form, while the specification ([PRIMITIVES],
[STRIP] logicalType) and the Java implementation reduce it to ``"long"``. The codec
follows the specification, so the tests compare with Apache avro's fingerprint of the
schema without logical types (canonically the same schema), and with a CRC computed here
over Apache avro's canonical form with [PRIMITIVES] applied.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import avro.io
import avro.schema
import pytest

from streams.errors import SchemaError
from streams.metrics.labelled import LabelStats
from streams.metrics.partial import PartialStats
from streams.schemas import EVENTS, HEADER_LEN, MAGIC, default_codec, schema_dir

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
T0 = 1_718_000_000_123  # an event time in ms, with a millisecond part

# -- CRC-64-AVRO, from the specification ("Schema Fingerprints") ------------------------

CRC64_EMPTY = 0xC15D213AA4D7A795


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (CRC64_EMPTY & -(fp & 1))
        table.append(fp)
    return table


CRC64_TABLE = _crc_table()


def crc64_avro(data: bytes) -> bytes:
    """The fingerprint as the 8 little-endian bytes single-object encoding carries."""
    fp = CRC64_EMPTY
    for byte in data:
        fp = (fp >> 8) ^ CRC64_TABLE[(fp ^ byte) & 0xFF]
    return fp.to_bytes(8, "little")


PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def spec_primitives(node: Any) -> Any:
    """Apply [PRIMITIVES] to a canonical form: ``{"type": "long"}`` becomes ``"long"``."""
    if isinstance(node, dict):
        if set(node) == {"type"} and node["type"] in PRIMITIVES:
            return node["type"]
        return {k: spec_primitives(v) for k, v in node.items()}
    if isinstance(node, list):
        return [spec_primitives(v) for v in node]
    return node


def strip_logical(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: strip_logical(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [strip_logical(v) for v in node]
    return node


def raw_schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMA_DIR / f"{name}.avsc").read_text())


def apache_schema(name: str) -> avro.schema.Schema:
    return avro.schema.parse((SCHEMA_DIR / f"{name}.avsc").read_text())


def apache_decode(name: str, message: bytes) -> dict[str, Any]:
    """Read a codec message with Apache avro: skip the 10-byte header, read the body."""
    schema = apache_schema(name)
    reader = avro.io.DatumReader(schema, schema)
    return reader.read(avro.io.BinaryDecoder(io.BytesIO(message[HEADER_LEN:])))


def apache_encode(name: str, record: dict[str, Any]) -> bytes:
    """Encode with Apache avro and the single-object header (datetimes for timestamps)."""
    schema = apache_schema(name)
    buf = io.BytesIO()
    avro.io.DatumWriter(schema).write(record, avro.io.BinaryEncoder(buf))
    return MAGIC + default_codec().schemas[name].fingerprint + buf.getvalue()


def millis(dt: datetime) -> int:
    return (dt - EPOCH) // timedelta(milliseconds=1)


def dt(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


# -- sample events -------------------------------------------------------------------------


def sample_request() -> dict[str, Any]:
    return {
        "request_id": "req-0001",
        "event_time": T0,
        "use_case": "fraud",
        "numeric_features": {"amount": 12.5, "age_days": 3.0, "ratio": -0.125, "big": 1e300},
        "categorical_features": {"country": "DE", "channel": "web", "unicode": "Zürich"},
        "context": {"region": "eu-west", "tenant": "acme"},
    }


def sample_predictions() -> list[dict[str, Any]]:
    base = {"request_id": "req-0001", "event_time": T0, "use_case": "fraud"}
    return [
        # a regressor: value set, label null, empty scores
        {
            **base,
            "model_id": "prim@1",
            "role": "PRIMARY",
            "value": 0.75,
            "label": None,
            "scores": {},
            "latency_ms": 3.25,
            "error": None,
        },
        # a classifier: label and scores set, value null
        {
            **base,
            "model_id": "cand@2",
            "role": "CANDIDATE",
            "value": None,
            "label": "fraud",
            "scores": {"fraud": 0.8, "ok": 0.2},
            "latency_ms": 11.0,
            "error": None,
        },
        # a failure: every output null, the error message set
        {
            **base,
            "model_id": "cand@3",
            "role": "CANDIDATE",
            "value": None,
            "label": None,
            "scores": {},
            "latency_ms": None,
            "error": "ValueError: bad input",
        },
    ]


def sample_partial() -> dict[str, Any]:
    quantiles = {"alpha": 0.01, "min_value": 1e-9, "max_value": 1e15}
    coverage = {
        "requests": 10,
        "pairs": 8,
        "no_primary": 1,
        "no_candidate": 2,
        "no_request": 0,
        "expired": 1,
        "duplicates": 3,
        "primary_predictions": 9,
        "candidate_predictions": 8,
        "primary_errors": 1,
        "candidate_errors": 0,
        "invalid": 1,
        "no_prediction": 2,
        "dead_letters": 1,
        "dropped_latencies": 4,
        "evicted": 5,
        "labels": 6,
        "label_duplicates": 1,
        "labels_early": 2,
        "labels_unmatched": 1,
        "labels_evicted": 3,
        "labels_other_primary": 2,
    }
    return {
        "joiner_partition": 3,
        "partition_count": 6,
        "candidate": "cand@2",
        "primary": "prim@1",
        "window_start": T0 - T0 % 10_000,
        "window_end": T0 - T0 % 10_000 + 10_000,
        "seq": 1,
        "watermark": T0 - 2_000,
        "coverage": coverage,
        "regression": {
            "n": 7,
            "exact_scale": 1126,
            "sum_diff": b"\xff\x80\x00\x01",  # negative two's complement
            "sum_abs_diff": b"\x01\x02\x03\x04\x05",
            "sum_sq_diff": b"\x00",
        },
        "classification": {"n": 4, "disagreements": 1},
        "primary_latency": {
            "alpha": 0.01,
            "min_value": 0.001,
            "max_value": 1e7,
            "indices": [0, 17, 400, 1153],
            "counts": [1, 2, 3, 2**40],
        },
        "candidate_latency": {
            "alpha": 0.01,
            "min_value": 0.001,
            "max_value": 1e7,
            "indices": [],
            "counts": [],
        },
        "ledger": {
            "*": {"requests": 3, "no_prediction": 3},
            "cand@2": {"requests": 12, "pairs": 8, "pending": 2, "dead_letters": 2},
        },
        "profile": {
            "numeric": {"sqft": {**quantiles, "indices": [0, 2765, 5530], "counts": [1, 5, 2]}},
            "categorical": {"city": {"counts": {"Paris": 3, "Lyon": 1, "北京": 2}, "overflow": 7}},
            "primary_output": None,
            "candidate_output": {**quantiles, "indices": [3000], "counts": [8]},
            "primary_labels": None,
            "candidate_labels": {"counts": {"yes": 2}, "overflow": 0},
            "non_finite": 2,
            "dropped_features": 0,
        },
        "slices": {
            "region=eu": {
                "requests": 5,
                "n": 4,
                "sum_diff": b"\x01",
                "sum_abs_diff": b"\x02",
                "sum_sq_diff": b"\x03",
                "class_n": 0,
                "disagreements": 0,
                "primary_output": None,
                "candidate_output": {**quantiles, "alpha": 0.05, "indices": [600], "counts": [4]},
            }
        },
        "slice_overflow": {"tenant": 9},
        "labelled": labelled_sums(),
    }


def labelled_sums() -> dict[str, Any]:
    """Losses of 3 labelled regression pairs and 2 classification pairs with scores."""
    ls = LabelStats()
    for model, primary in (
        ((0.5, 0.25, None), (1.0, 1.0, None)),
        ((2.0, 4.0, None), (0.0, 0.0, None)),
    ):
        ls.add(model, primary)
    ls.add((0.0, 0.25, None), (0.5, 0.25, None))
    ls.add((1.0, None, 2.3), (0.0, None, 0.1))
    ls.add((0.0, None, 0.2), (0.0, None, 0.3))
    return ls.to_record()


def sample_label() -> dict[str, Any]:
    return {"request_id": "req-0001", "event_time": T0 + 3_600_000, "value": 1.5, "label": None}


def sample_snapshot() -> dict[str, Any]:
    cov = sample_partial()["coverage"]
    return {
        "candidate": "cand@2",
        "primary": "prim@1",
        "scope": "CUMULATIVE",
        "window_start": T0,
        "window_end": T0 + 10_000,
        "windows": 4,
        "partials": 24,
        "late_partials": 1,
        "emitted_at": T0 + 20_000,
        "task": "regression",
        "coverage": cov,
        "mae": 0.5,
        "rmse": 0.75,
        "mean_signed_diff": -0.25,
        "sum_diff": -2.0,
        "sum_abs_diff": 4.0,
        "sum_sq_diff": 4.5,
        "regression_pairs": 8,
        "disagreement_rate": None,
        "classification_pairs": 0,
        "primary_latency_p50": 3.0,
        "primary_latency_p95": 9.0,
        "primary_latency_p99": 12.0,
        "candidate_latency_p50": None,
        "candidate_latency_p95": None,
        "candidate_latency_p99": None,
        "primary_error_rate": 0.1,
        "candidate_error_rate": 0.0,
        "conservation": {
            "requests": 12,
            "terms": {"pairs": 8, "no_candidate": 1, "pending": 2, "dead_letters": 1},
            "holds": True,
        },
        "reference": {"source": "first 2000 requests", "requests": 2000, "ready": True},
        "drift": [
            {
                "feature": "sqft",
                "kind": "numeric",
                "psi": 0.31,
                "ks": 0.12,
                "js": None,
                "p_value": 1e-9,
                "n_ref": 2000,
                "n_cur": 500,
                "drifting": True,
                "alarm": False,
                "change": False,
                "reason": "KS 0.12 >= 0.1, p 1e-09 < 0.0005",
            },
            {
                "feature": "candidate",
                "kind": "output",
                "psi": None,
                "ks": None,
                "js": None,
                "p_value": None,
                "n_ref": 2000,
                "n_cur": 3,
                "drifting": None,
                "alarm": None,
                "change": False,
                "reason": "too few values",
            },
        ],
        "slices": [
            {
                "slice": "region=eu",
                "requests": 120,
                "pairs": 118,
                "mae": 2.5,
                "rmse": 3.0,
                "mean_signed_diff": -0.5,
                "disagreement_rate": None,
                "output_psi": 0.02,
                "output_ks": 0.03,
                "primary_output_psi": None,
            }
        ],
        "slice_overflow": {"tenant": 4},
        "alerts": ["feature-drift|*|sqft"],
        "labelled": PartialStats.from_record(sample_partial()).summary()["labelled"],
    }


def sample_dead_letter() -> dict[str, Any]:
    return {
        "stage": "joiner",
        "reason": "not Avro single-object encoded",
        "source_topic": "understudy.requests",
        "source_partition": 2,
        "source_offset": 2**40,
        "key": b"req-0001",
        "value": b"\x00garbage\xff",
        "time": T0,
    }


def sample_alert() -> dict[str, Any]:
    return {
        "rule": "feature-drift",
        "severity": "warning",
        "state": "FIRING",
        "candidate": "cand@2",
        "primary": "prim@1",
        "feature": "sqft",
        "metric": "drift.feature.psi",
        "value": 0.31,
        "threshold": 0.2,
        "comparison": ">=",
        "window_start": T0,
        "window_end": T0 + 10_000,
        "emitted_at": T0 + 11_000,
        "consecutive": 2,
        "message": "PSI of sqft 0.31 >= 0.2 for 2 windows",
    }


def sample_verdict() -> dict[str, Any]:
    return {
        "candidate": "cand@2",
        "primary": "prim@1",
        "comparison": f"cand@2|prim@1|{T0}",
        "decision": "PROMOTE",
        "reason": "candidate loss lower",
        "n": 12_000,
        "estimate": -0.03,
        "lower": -0.05,
        "upper": -0.01,
        "alpha": 0.025,
        "family_alpha": 0.05,
        "candidates": 2,
        "p99_latency_ms": 12.5,
        "latency_budget_ms": 100.0,
        "error_rate": 0.001,
        "error_rate_budget": 0.01,
        "predictions": 15_000,
        "breached": [],
        "window_start": T0,
        "window_end": T0 + 10_000,
        "emitted_at": T0 + 11_000,
    }


def sample_control() -> dict[str, Any]:
    return {
        "action": "PROMOTE",
        "candidate": "cand@2",
        "previous_primary": "prim@1",
        "old_primary": "SHADOW",
        "reason": "better on 12,000 labelled requests",
        "comparison": "",
        "time": T0,
        "who": "ops@host",
    }


def sample_tap_stats() -> dict[str, Any]:
    return {
        "tap": "host:123:ab12",
        "use_case": "pricing",
        "started_at": T0,
        "time": T0 + 10_000,
        "final": False,
        "seen": 100,
        "accepted": 90,
        "sampled_out": 8,
        "dropped": 1,
        "sent": 85,
        "failed": 1,
        "encode_errors": 1,
        "in_flight": 4,
    }


SAMPLES: dict[str, list[dict[str, Any]]] = {
    "Request": [sample_request()],
    "Prediction": sample_predictions(),
    "Label": [sample_label()],
    "Partial": [sample_partial()],
    "MetricSnapshot": [sample_snapshot()],
    "DeadLetter": [sample_dead_letter()],
    "Alert": [sample_alert()],
    "Verdict": [sample_verdict()],
    "Control": [sample_control()],
    "TapStats": [sample_tap_stats()],
}

TIMESTAMP_FIELDS = {
    "Request": ["event_time"],
    "Prediction": ["event_time"],
    "Label": ["event_time"],
    "Partial": ["window_start", "window_end", "watermark"],
    "MetricSnapshot": ["window_start", "window_end", "emitted_at"],
    "DeadLetter": ["time"],
    "Alert": ["window_start", "window_end", "emitted_at"],
    "Verdict": ["window_start", "window_end", "emitted_at"],
    "Control": ["time"],
    "TapStats": ["started_at", "time"],
}


def with_datetimes(name: str, record: dict[str, Any]) -> dict[str, Any]:
    return {k: dt(v) if k in TIMESTAMP_FIELDS[name] else v for k, v in record.items()}


# -- the codec alone -------------------------------------------------------------------


def test_every_event_has_a_schema_file_and_a_sample() -> None:
    assert schema_dir() == SCHEMA_DIR
    assert {p.stem for p in SCHEMA_DIR.glob("*.avsc")} == set(EVENTS)
    assert set(SAMPLES) == set(EVENTS)


@pytest.mark.parametrize("name", EVENTS)
def test_round_trip_through_the_codec(name: str) -> None:
    codec = default_codec()
    for record in SAMPLES[name]:
        data = codec.encode(name, record)
        assert codec.decode(data) == (name, record)
        assert codec.decode_as(name, data) == record
        assert codec.encoder(name)(record) == data


@pytest.mark.parametrize("name", EVENTS)
def test_timestamps_stay_integer_milliseconds(name: str) -> None:
    codec = default_codec()
    rec = codec.decode_as(name, codec.encode(name, SAMPLES[name][0]))
    for f in TIMESTAMP_FIELDS[name]:
        assert type(rec[f]) is int


@pytest.mark.parametrize("name", EVENTS)
def test_header_is_c301_and_the_crc64_fingerprint(name: str) -> None:
    data = default_codec().encode(name, SAMPLES[name][0])
    assert data[:2] == b"\xc3\x01"
    # Apache avro's own CRC-64-AVRO of the same schema without logical types
    stripped = avro.schema.parse(json.dumps(strip_logical(raw_schema(name))))
    assert data[2:10] == stripped.fingerprint("CRC-64-AVRO")
    # a CRC written here from the spec, over the spec's canonical form of the .avsc
    canonical = spec_primitives(json.loads(apache_schema(name).canonical_form))
    text = json.dumps(canonical, separators=(",", ":"), ensure_ascii=False)
    assert "logicalType" not in text and "doc" not in text
    assert data[2:10] == crc64_avro(text.encode())


def test_crc64_here_agrees_with_apache_avro() -> None:
    """The test's CRC-64-AVRO and Apache avro's agree (two implementations of the spec)."""
    for text in ('"int"', '"null"', '{"type":"array","items":"string"}', '"long"'):
        schema = avro.schema.parse(text)
        assert crc64_avro(schema.canonical_form.encode()) == schema.fingerprint("CRC-64-AVRO")


def test_fingerprints_are_distinct() -> None:
    fps = {s.fingerprint for s in default_codec().schemas.values()}
    assert len(fps) == len(EVENTS)


# -- Apache avro reads what the codec writes -------------------------------------------


def test_apache_avro_decodes_request_with_feature_maps() -> None:
    rec = sample_request()
    data = default_codec().encode("Request", rec)
    got = apache_decode("Request", data)
    assert isinstance(got["event_time"], datetime)
    assert millis(got["event_time"]) == rec["event_time"]
    assert got == with_datetimes("Request", rec)
    assert got["numeric_features"]["big"] == 1e300
    assert got["categorical_features"]["unicode"] == "Zürich"


@pytest.mark.parametrize("index", range(3), ids=["regressor", "classifier", "error"])
def test_apache_avro_decodes_prediction_with_nulls_and_unions(index: int) -> None:
    rec = sample_predictions()[index]
    got = apache_decode("Prediction", default_codec().encode("Prediction", rec))
    assert millis(got["event_time"]) == rec["event_time"]
    assert got == with_datetimes("Prediction", rec)


def test_apache_avro_decodes_partial_with_bytes_arrays_and_nested_records() -> None:
    rec = sample_partial()
    got = apache_decode("Partial", default_codec().encode("Partial", rec))
    for f in ("window_start", "window_end", "watermark"):
        assert millis(got[f]) == rec[f]
    assert got == with_datetimes("Partial", rec)
    assert got["regression"]["sum_diff"] == b"\xff\x80\x00\x01"
    assert got["primary_latency"]["counts"][-1] == 2**40


@pytest.mark.parametrize("name", ["Label", "MetricSnapshot", "DeadLetter"])
def test_apache_avro_decodes_the_other_events(name: str) -> None:
    rec = SAMPLES[name][0]
    assert apache_decode(name, default_codec().encode(name, rec)) == with_datetimes(name, rec)


@pytest.mark.parametrize("name", ["Request", "Prediction", "Partial"])
def test_codec_decodes_what_apache_avro_writes(name: str) -> None:
    codec = default_codec()
    for rec in SAMPLES[name]:
        data = apache_encode(name, with_datetimes(name, rec))
        assert data == codec.encode(name, rec)  # Avro binary is canonical: same bytes
        assert codec.decode_as(name, data) == rec


def test_defaults_fill_omitted_optional_fields() -> None:
    codec = default_codec()
    rec = codec.decode_as("Request", codec.encode("Request", {"request_id": "r", "event_time": 5}))
    assert rec == {
        "request_id": "r",
        "event_time": 5,
        "use_case": "",
        "numeric_features": {},
        "categorical_features": {},
        "context": {},
    }


# -- errors --------------------------------------------------------------------------------


def test_garbage_bytes_raise_schema_error() -> None:
    with pytest.raises(SchemaError, match="C3 01"):
        default_codec().decode(b"this is not avro at all")


def test_short_header_raises_schema_error() -> None:
    with pytest.raises(SchemaError, match="C3 01"):
        default_codec().decode(MAGIC + b"\x01\x02\x03")


def test_unknown_fingerprint_raises_schema_error_naming_it() -> None:
    body = default_codec().encode("Request", sample_request())[HEADER_LEN:]
    with pytest.raises(SchemaError, match="unknown writer schema fingerprint 0011223344556677"):
        default_codec().decode(MAGIC + bytes.fromhex("0011223344556677") + body)


def test_none_value_raises_schema_error() -> None:
    with pytest.raises(SchemaError, match="no value"):
        default_codec().decode(None)
    with pytest.raises(SchemaError, match="no value"):
        default_codec().decode_as("Request", None)


def test_truncated_body_raises_schema_error() -> None:
    data = default_codec().encode("Request", sample_request())
    with pytest.raises(SchemaError, match="cannot decode Request"):
        default_codec().decode(data[:-3])


def test_decode_as_wrong_event_raises_schema_error() -> None:
    data = default_codec().encode("Prediction", sample_predictions()[0])
    with pytest.raises(SchemaError, match="expected a Request message, got Prediction"):
        default_codec().decode_as("Request", data)


@pytest.mark.parametrize(
    "record",
    [
        {"event_time": T0},  # required field missing
        {"request_id": 7, "event_time": T0},  # wrong type
        {"request_id": "r", "event_time": "yesterday"},
    ],
)
def test_invalid_record_raises_schema_error_on_encode(record: dict[str, Any]) -> None:
    with pytest.raises(SchemaError, match="cannot encode Request"):
        default_codec().encode("Request", record)


def test_invalid_enum_raises_schema_error_on_encode() -> None:
    rec = {**sample_predictions()[0], "role": "OBSERVER"}
    with pytest.raises(SchemaError, match="cannot encode Prediction"):
        default_codec().encode("Prediction", rec)


# -- schema evolution rule (DESIGN section 2) ------------------------------------------


def walk_fields(node: Any, where: str) -> list[tuple[str, dict[str, Any]]]:
    """Every field of every record defined anywhere in a schema, with its path."""
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, list):
        for branch in node:
            out += walk_fields(branch, where)
    elif isinstance(node, dict):
        if node.get("type") == "record":
            for f in node["fields"]:
                path = f"{where}.{f['name']}"
                out.append((path, f))
                out += walk_fields(f["type"], path)
        elif node.get("type") == "array":
            out += walk_fields(node["items"], where)
        elif node.get("type") == "map":
            out += walk_fields(node["values"], where)
    return out


@pytest.mark.parametrize("name", EVENTS)
def test_every_field_is_documented(name: str) -> None:
    raw = raw_schema(name)
    assert raw.get("doc", "").strip(), f"{name} has no doc"
    fields = walk_fields(raw, name)
    assert fields
    undocumented = [path for path, f in fields if not str(f.get("doc", "")).strip()]
    assert not undocumented, f"fields without doc: {undocumented}"


@pytest.mark.parametrize("name", EVENTS)
def test_every_optional_field_has_a_null_default(name: str) -> None:
    bad = []
    for path, f in walk_fields(raw_schema(name), name):
        t = f["type"]
        optional = isinstance(t, list) and "null" in t
        # a union's default must match its first branch, so null comes first
        if optional and (t[0] != "null" or "default" not in f or f["default"] is not None):
            bad.append(path)
    assert not bad, f"optional fields without a null default (null first): {bad}"


@pytest.mark.parametrize("name", EVENTS)
def test_a_record_of_only_required_fields_encodes(name: str) -> None:
    """Fields with defaults may be omitted by writers: what evolution relies on."""
    codec = default_codec()
    full = SAMPLES[name][0]
    # nested records without a default must still be given
    required = {f["name"] for f in raw_schema(name)["fields"] if "default" not in f}
    minimal = {k: v for k, v in full.items() if k in required}
    decoded = codec.decode_as(name, codec.encode(name, minimal))
    for f in raw_schema(name)["fields"]:
        if "default" in f and not isinstance(f["type"], dict):
            assert decoded[f["name"]] == f["default"], f["name"]
