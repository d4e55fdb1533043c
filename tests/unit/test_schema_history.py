"""Schema history: every released version, their compatibility, and reading old data.

The rules of ``schemas/README.md`` are checked twice: on the schema text (fields only added,
each with a default; nothing removed, renamed or retyped; enums only appended; names kept),
and for real, by encoding records with one version and decoding them with the next (new
reads old) and the other way round (old reads new), through fastavro's schema resolution
and through Apache Avro's own ``DatumReader(writer, reader)`` as an independent decoder.
The expected result is computed here from the two schemas: the reader's fields, the ones
the writer lacked at their defaults. Records are generated from the schemas (hypothesis) and
hand-built with every field set to a non-default value.
"""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import avro.io
import avro.schema
import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.errors import SchemaError
from streams.metrics.partial import COVERAGE_FIELDS, PartialStats
from streams.schemas import EVENTS, HEADER_LEN, HISTORY, MAGIC, Codec, default_codec

#: the coverage counters of v1, and the four v2 added (later versions add more after them)
V1_COVERAGE = COVERAGE_FIELDS[:12]
V2_COUNTERS = COVERAGE_FIELDS[12:16]
SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
HISTORY_DIR = SCHEMA_DIR / HISTORY

Raw = dict[str, Any]


def current(name: str) -> Raw:
    return json.loads((SCHEMA_DIR / f"{name}.avsc").read_text())


def history(name: str) -> dict[int, Raw]:
    return {
        int(p.stem[1:]): json.loads(p.read_text()) for p in (HISTORY_DIR / name).glob("v*.avsc")
    }


def pairs() -> list[tuple[str, int]]:
    """(event, n) for every consecutive pair v<n>, v<n+1> in the history."""
    return [(name, n) for name in EVENTS for n in sorted(history(name)) if n + 1 in history(name)]


PAIRS = pairs()
PAIR_IDS = [f"{name}-v{n}-v{n + 1}" for name, n in PAIRS]
VERSIONS = [(name, n) for name in EVENTS for n in sorted(history(name))]
VERSION_IDS = [f"{name}-v{n}" for name, n in VERSIONS]


def strip_logical(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: strip_logical(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [strip_logical(v) for v in node]
    return node


# -- walking a schema: named types resolved ----------------------------------------------


class Named:
    """The named types of one schema, by full name, registered as they are defined."""

    def __init__(self) -> None:
        self.types: dict[str, Raw] = {}

    def resolve(self, node: Any, ns: str) -> Any:
        if isinstance(node, str):
            full = node if "." in node else f"{ns}.{node}"
            return self.types.get(full, self.types.get(node, node))
        if isinstance(node, dict) and node.get("type") in ("record", "enum", "fixed"):
            self.types.setdefault(self.full_name(node, ns), node)
        return node

    @staticmethod
    def full_name(node: Raw, ns: str) -> str:
        name = node["name"]
        return name if "." in name else f"{node.get('namespace', ns)}.{name}"


def logical(node: Any) -> str | None:
    return node.get("logicalType") if isinstance(node, dict) else None


def type_name(node: Any) -> str:
    if isinstance(node, str):
        return node
    if isinstance(node, list):
        return "union"
    return str(node["type"])


# -- the rules, on the schema text ----------------------------------------------------------


def rule_violations(old: Raw, new: Raw) -> list[str]:
    """Why ``new`` is not an allowed evolution of ``old`` (README rules); empty when it is."""
    problems: list[str] = []
    o_named, n_named = Named(), Named()

    def walk(o: Any, n: Any, o_ns: str, n_ns: str, where: str) -> None:
        o, n = o_named.resolve(o, o_ns), n_named.resolve(n, n_ns)
        if type_name(o) != type_name(n):
            problems.append(f"{where}: type {type_name(o)} became {type_name(n)}")
            return
        if isinstance(o, list):
            if len(o) != len(n):
                problems.append(f"{where}: union branches {len(o)} became {len(n)}")
                return
            for i, (ob, nb) in enumerate(zip(o, n, strict=True)):
                walk(ob, nb, o_ns, n_ns, f"{where}|{i}")
            return
        if isinstance(o, str) or isinstance(n, str):
            if logical(o) != logical(n):
                problems.append(f"{where}: logicalType changed")
            return  # the same primitive
        kind = o["type"]
        if o.get("logicalType") != n.get("logicalType"):
            problems.append(f"{where}: logicalType changed")
        if kind in ("record", "enum", "fixed"):
            if Named.full_name(o, o_ns) != Named.full_name(n, n_ns):
                problems.append(f"{where}: named type renamed")
            o_ns, n_ns = o.get("namespace", o_ns), n.get("namespace", n_ns)
        if kind == "record":
            o_fields = {f["name"]: f for f in o["fields"]}
            n_fields = {f["name"]: f for f in n["fields"]}
            for gone in o_fields.keys() - n_fields.keys():
                problems.append(f"{where}.{gone}: removed or renamed")
            for f in n["fields"]:
                if f["name"] in o_fields:
                    walk(o_fields[f["name"]]["type"], f["type"], o_ns, n_ns, f"{where}.{f['name']}")
                else:
                    if "default" not in f:
                        problems.append(f"{where}.{f['name']}: added without a default")
                    n_named.resolve(f["type"], n_ns)  # register what it defines
        elif kind == "enum":
            if n["symbols"][: len(o["symbols"])] != o["symbols"]:
                problems.append(f"{where}: enum symbols reordered or removed")
            if len(n["symbols"]) > len(o["symbols"]) and "default" not in o:
                problems.append(f"{where}: enum grew but the old version has no default symbol")
        elif kind == "fixed":
            if o["size"] != n["size"]:
                problems.append(f"{where}: fixed size changed")
        elif kind == "array":
            walk(o["items"], n["items"], o_ns, n_ns, f"{where}[]")
        elif kind == "map":
            walk(o["values"], n["values"], o_ns, n_ns, f"{where}{{}}")
        elif kind != n["type"]:
            problems.append(f"{where}: type changed")

    walk(old, new, "", "", old.get("name", "?"))
    return problems


# -- the expected result of resolution -------------------------------------------------------


def resolved(value: Any, writer: Raw, reader: Raw) -> Any:
    """What a reader of ``reader`` must get from ``value`` written with ``writer``."""
    w_named, r_named = Named(), Named()

    def go(v: Any, w: Any, r: Any, w_ns: str, r_ns: str) -> Any:
        w, r = w_named.resolve(w, w_ns), r_named.resolve(r, r_ns)
        if isinstance(r, list):  # our unions: null and at most one other branch
            if v is None:
                return None
            (wb,) = [b for b in w if b != "null"]
            (rb,) = [b for b in r if b != "null"]
            return go(v, wb, rb, w_ns, r_ns)
        if isinstance(r, str):
            return v
        kind = r["type"]
        if kind == "record":
            w_ns, r_ns = w.get("namespace", w_ns), r.get("namespace", r_ns)
            w_fields = {f["name"]: f for f in w["fields"]}
            for f in w["fields"]:
                w_named.resolve(f["type"], w_ns)
            out = {}
            for f in r["fields"]:
                if f["name"] in w_fields:
                    out[f["name"]] = go(
                        v[f["name"]], w_fields[f["name"]]["type"], f["type"], w_ns, r_ns
                    )
                else:
                    r_named.resolve(f["type"], r_ns)
                    out[f["name"]] = copy.deepcopy(f["default"])
            return out
        if kind == "array":
            return [go(x, w["items"], r["items"], w_ns, r_ns) for x in v]
        if kind == "map":
            return {k: go(x, w["values"], r["values"], w_ns, r_ns) for k, x in v.items()}
        return v  # enum symbol, fixed, a primitive with a logical type

    return go(value, writer, reader, "", "")


# -- records generated from a schema -----------------------------------------------------------

LONG = st.integers(-(2**63), 2**63 - 1)
PRIMITIVES: dict[str, st.SearchStrategy[Any]] = {
    "null": st.none(),
    "boolean": st.booleans(),
    "int": st.integers(-(2**31), 2**31 - 1),
    "long": LONG,
    "float": st.floats(width=32, allow_nan=False),
    "double": st.floats(allow_nan=False),
    "bytes": st.binary(max_size=8),
    "string": st.text(max_size=6),
}


def records(schema: Raw) -> st.SearchStrategy[dict[str, Any]]:
    """Every field set, with values of any size the type allows (maps and arrays small)."""
    named = Named()

    def strat(node: Any, ns: str) -> st.SearchStrategy[Any]:
        node = named.resolve(node, ns)
        if isinstance(node, str):
            return PRIMITIVES[node]
        if isinstance(node, list):
            return st.one_of([strat(b, ns) for b in node])
        kind = node["type"]
        if kind == "record":
            inner = node.get("namespace", ns)
            return st.fixed_dictionaries(
                {f["name"]: strat(f["type"], inner) for f in node["fields"]}
            )
        if kind == "enum":
            return st.sampled_from(node["symbols"])
        if kind == "array":
            return st.lists(strat(node["items"], ns), max_size=3)
        if kind == "map":
            return st.dictionaries(st.text(max_size=4), strat(node["values"], ns), max_size=3)
        if kind == "fixed":
            return st.binary(min_size=node["size"], max_size=node["size"])
        return PRIMITIVES[kind]  # a primitive with a logical type

    return strat(schema, "")


# -- encoders and decoders -------------------------------------------------------------------


def fast_encode(schema: Raw, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, parse_schema(strip_logical(schema)), record)
    return buf.getvalue()


def fast_resolve(body: bytes, writer: Raw, reader: Raw) -> Any:
    return schemaless_reader(
        io.BytesIO(body), parse_schema(strip_logical(writer)), parse_schema(strip_logical(reader))
    )


def apache(schema: Raw) -> avro.schema.Schema:
    return avro.schema.parse(json.dumps(strip_logical(schema)))


def apache_encode(schema: Raw, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    avro.io.DatumWriter(apache(schema)).write(record, avro.io.BinaryEncoder(buf))
    return buf.getvalue()


def apache_resolve(body: bytes, writer: Raw, reader: Raw) -> Any:
    decoder = avro.io.BinaryDecoder(io.BytesIO(body))
    return avro.io.DatumReader(apache(writer), apache(reader)).read(decoder)


def check_both_ways(name: str, old: Raw, new: Raw, rec_old: Raw, rec_new: Raw) -> None:
    """new reads old (backward) and old reads new (forward), with both libraries."""
    for writer, reader, rec in ((old, new, rec_old), (new, old, rec_new)):
        body = fast_encode(writer, rec)
        assert apache_encode(writer, rec) == body  # Avro binary is canonical
        want = resolved(rec, writer, reader)
        assert fast_resolve(body, writer, reader) == want
        assert apache_resolve(body, writer, reader) == want


# -- the layout ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", EVENTS)
def test_every_event_has_a_history_whose_last_version_is_the_current_schema(name: str) -> None:
    versions = history(name)
    assert versions, f"schemas/history/{name}/ holds no v<N>.avsc"
    assert sorted(versions) == list(range(1, len(versions) + 1)), "versions are v1..vN"
    assert versions[max(versions)] == current(name), (
        f"schemas/{name}.avsc differs from history/{name}/v{max(versions)}.avsc: release it as "
        f"v{max(versions) + 1} (schemas/README.md)"
    )
    assert {p.name for p in (HISTORY_DIR / name).iterdir()} == {f"v{n}.avsc" for n in versions}


def test_history_holds_only_known_events() -> None:
    assert {p.name for p in HISTORY_DIR.iterdir()} == set(EVENTS)


def test_the_first_evolution_is_there() -> None:
    """Partial and MetricSnapshot v2: what other stages are written against."""
    assert ("Partial", 1) in PAIRS and ("MetricSnapshot", 1) in PAIRS
    counters = ("no_prediction", "dead_letters", "dropped_latencies", "evicted")
    assert counters == V2_COUNTERS
    for name in ("Partial", "MetricSnapshot"):
        cov = next(f for f in current(name)["fields"] if f["name"] == "coverage")["type"]
        assert tuple(f["name"] for f in cov["fields"]) == COVERAGE_FIELDS
        for f in cov["fields"]:
            assert f["type"] == "long" and f["default"] == 0
    ledger = next(f for f in current("Partial")["fields"] if f["name"] == "ledger")
    assert ledger["type"] == {"type": "map", "values": {"type": "map", "values": "long"}}
    assert ledger["default"] == {}
    cons = next(f for f in current("MetricSnapshot")["fields"] if f["name"] == "conservation")
    assert cons["default"] is None and cons["type"][0] == "null"
    fields = {f["name"]: f["type"] for f in cons["type"][1]["fields"]}
    assert fields == {
        "requests": "long",
        "terms": {"type": "map", "values": "long"},
        "holds": "boolean",
    }


# -- compatibility of every consecutive pair ---------------------------------------------------


@pytest.mark.parametrize(("name", "n"), PAIRS, ids=PAIR_IDS)
def test_each_version_follows_the_rules(name: str, n: int) -> None:
    versions = history(name)
    assert rule_violations(versions[n], versions[n + 1]) == []


@pytest.mark.parametrize(("name", "n"), PAIRS, ids=PAIR_IDS)
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_generated_records_cross_versions_both_ways(name: str, n: int, data: st.DataObject) -> None:
    versions = history(name)
    old, new = versions[n], versions[n + 1]
    rec_old = data.draw(records(old), label="written with the old version")
    rec_new = data.draw(records(new), label="written with the new version")
    check_both_ways(name, old, new, rec_old, rec_new)


def test_hand_built_partials_cross_v1_and_v2_both_ways() -> None:
    v = history("Partial")
    check_both_ways("Partial", v[1], v[2], partial_v1(), partial_v2())
    # the new reader fills the new fields with their defaults
    got = fast_resolve(fast_encode(v[1], partial_v1()), v[1], v[2])
    assert got["ledger"] == {}
    assert [got["coverage"][k] for k in V2_COUNTERS] == [0, 0, 0, 0]
    # the old reader drops them
    got = apache_resolve(fast_encode(v[2], partial_v2()), v[2], v[1])
    assert "ledger" not in got and "evicted" not in got["coverage"]
    assert got["coverage"] == partial_v1()["coverage"]


def test_hand_built_snapshots_cross_v1_and_v2_both_ways() -> None:
    v = history("MetricSnapshot")
    check_both_ways("MetricSnapshot", v[1], v[2], snapshot_v1(), snapshot_v2())
    got = apache_resolve(fast_encode(v[1], snapshot_v1()), v[1], v[2])
    assert got["conservation"] is None and got["coverage"]["no_prediction"] == 0
    got = fast_resolve(fast_encode(v[2], snapshot_v2()), v[2], v[1])
    assert "conservation" not in got and got == snapshot_v1()


# -- the codec reads every version -------------------------------------------------------------


def test_codec_knows_every_version_and_writes_the_current_one() -> None:
    codec = default_codec()
    for name in EVENTS:
        assert sorted(codec.versions[name]) == sorted(history(name))
        last = max(history(name))
        assert codec.schemas[name] is codec.versions[name][last]
        assert codec.schemas[name].version == last

    for name, n in PAIRS:
        assert history(name)[n] != history(name)[n + 1], f"{name} v{n + 1} changes nothing"


@pytest.mark.parametrize(("name", "n"), VERSIONS, ids=VERSION_IDS)
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_codec_decodes_every_version_into_the_current_schema(
    name: str, n: int, data: st.DataObject
) -> None:
    codec = default_codec()
    old = history(name)[n]
    rec = data.draw(records(old))
    message = codec.versions[name][n].encode(rec)
    assert message[:HEADER_LEN] == MAGIC + codec.versions[name][n].fingerprint
    want = resolved(rec, old, current(name))
    assert codec.decode(message) == (name, want)
    assert codec.decode_as(name, message) == want


def test_a_v1_partial_decodes_into_partial_stats_with_new_fields_at_defaults() -> None:
    codec = default_codec()
    rec = codec.decode_as("Partial", codec.versions["Partial"][1].encode(partial_v1()))
    assert rec["ledger"] == {}
    stats = PartialStats.from_record(rec)
    assert stats.coverage == {**partial_v1()["coverage"], **dict.fromkeys(COVERAGE_FIELDS[12:], 0)}
    assert stats.class_n == 4 and stats.class_disagreements == 1
    # written back, it is a current Partial with the same numbers
    again = PartialStats.from_record(
        codec.decode_as("Partial", codec.encode("Partial", stats.to_partial()))
    )
    assert again.coverage == stats.coverage


def test_a_v1_snapshot_decodes_with_conservation_null() -> None:
    codec = default_codec()
    rec = codec.decode_as(
        "MetricSnapshot", codec.versions["MetricSnapshot"][1].encode(snapshot_v1())
    )
    assert rec == resolved(snapshot_v1(), history("MetricSnapshot")[1], current("MetricSnapshot"))
    assert rec["conservation"] is None
    assert rec["coverage"]["evicted"] == 0


def test_defaults_filled_by_resolution_are_not_shared_between_records() -> None:
    """fastavro hands out the reader schema's default object itself; the codec copies it."""
    codec = default_codec()
    message = codec.versions["Partial"][1].encode(partial_v1())
    first = codec.decode_as("Partial", message)
    first["ledger"]["*"] = {"requests": 1}
    assert codec.decode_as("Partial", message)["ledger"] == {}
    assert (
        codec.decode_as("Partial", message)["ledger"]
        is not codec.decode_as("Partial", message)["ledger"]
    )


def test_unknown_fingerprint_says_what_to_do() -> None:
    body = default_codec().encode("Request", {"request_id": "r", "event_time": 1})[HEADER_LEN:]
    with pytest.raises(SchemaError) as info:
        default_codec().decode(MAGIC + bytes.fromhex("8899aabbccddeeff") + body)
    text = str(info.value)
    assert "unknown writer schema fingerprint 8899aabbccddeeff" in text
    assert "newer Understudy or another producer" in text
    assert "upgrade this reader (readers upgrade before writers)" in text


def test_an_older_version_names_itself_in_decode_errors() -> None:
    codec = default_codec()
    message = codec.versions["Partial"][1].encode(partial_v1())
    with pytest.raises(SchemaError, match="cannot decode Partial v1 body"):
        codec.decode(message[:-5])


# -- the codec over other directories ------------------------------------------------------------


def copy_schemas(tmp_path: Path) -> Path:
    for name in EVENTS:
        (tmp_path / f"{name}.avsc").write_text((SCHEMA_DIR / f"{name}.avsc").read_text())
    return tmp_path


def test_a_directory_without_history_reads_the_current_version_only(tmp_path: Path) -> None:
    codec = Codec(copy_schemas(tmp_path))
    assert codec.versions["Partial"] == {}
    assert codec.schemas["Partial"].version is None
    with pytest.raises(SchemaError, match="unknown writer schema fingerprint"):
        codec.decode(default_codec().versions["Partial"][1].encode(partial_v1()))
    current = {**partial_v2(), **PartialStats().to_record(), **partial_v2()}  # later defaults
    current["coverage"] = {**PartialStats().to_record()["coverage"], **partial_v2()["coverage"]}
    message = codec.encode("Partial", current)
    assert codec.decode_as("Partial", message) == current


def test_a_history_file_not_named_by_version_is_an_error(tmp_path: Path) -> None:
    copy_schemas(tmp_path)
    (tmp_path / HISTORY / "Label").mkdir(parents=True)
    (tmp_path / HISTORY / "Label" / "latest.avsc").write_text(
        (SCHEMA_DIR / "Label.avsc").read_text()
    )
    with pytest.raises(SchemaError, match=r"not named v<N>\.avsc"):
        Codec(tmp_path)


def test_an_unreleased_current_schema_still_reads_the_released_ones(tmp_path: Path) -> None:
    """Editing <Name>.avsc before copying it to history: the released versions still resolve."""
    copy_schemas(tmp_path)
    for name in EVENTS:
        target = tmp_path / HISTORY / name
        target.mkdir(parents=True)
        for p in (HISTORY_DIR / name).glob("*.avsc"):
            (target / p.name).write_text(p.read_text())
    label = current("Label")
    label["fields"].append({"name": "weight", "type": "double", "default": 1.0, "doc": "new"})
    (tmp_path / "Label.avsc").write_text(json.dumps(label))
    codec = Codec(tmp_path)
    assert codec.schemas["Label"].version is None
    old = {"request_id": "r", "event_time": 5, "value": None, "label": "x"}
    got = codec.decode_as("Label", default_codec().encode("Label", old))
    assert got == {**old, "weight": 1.0}


# -- the rule checker catches what it should ---------------------------------------------------


def test_rule_checker_flags_each_broken_rule() -> None:
    base: Raw = {
        "type": "record",
        "name": "E",
        "namespace": "x",
        "fields": [
            {"name": "a", "type": "long"},
            {"name": "s", "type": {"type": "enum", "name": "S", "symbols": ["A", "B"]}},
        ],
    }

    def changed(edit: Any) -> list[str]:
        new = copy.deepcopy(base)
        edit(new)
        return rule_violations(base, new)

    assert changed(lambda s: None) == []
    assert changed(lambda s: s["fields"].append({"name": "b", "type": "int", "default": 0})) == []
    assert changed(lambda s: s["fields"].append({"name": "b", "type": "int"}))
    assert changed(lambda s: s["fields"].pop(0))
    assert changed(lambda s: s["fields"][0].update(name="renamed"))
    assert changed(lambda s: s["fields"][0].update(type="int"))
    assert changed(lambda s: s["fields"][0].update(type=["null", "long"]))
    assert changed(lambda s: s["fields"][1]["type"].update(symbols=["B", "A"]))
    assert changed(lambda s: s["fields"][1]["type"].update(symbols=["A", "B", "C"]))
    assert changed(lambda s: s.update(name="F"))


# -- hand-built records: every field set, nothing at its default -------------------------------

T0 = 1_718_000_000_123


def partial_v1() -> dict[str, Any]:
    sketch = {
        "alpha": 0.01,
        "min_value": 0.001,
        "max_value": 1e6,
        "indices": [3, 90],
        "counts": [2, 2**40],
    }
    return {
        "joiner_partition": 3,
        "partition_count": 6,
        "candidate": "cand@2",
        "primary": "prim@1",
        "window_start": T0 - 10_000,
        "window_end": T0,
        "seq": 2,
        "watermark": T0 - 2_000,
        "coverage": {k: i + 1 for i, k in enumerate(V1_COVERAGE)},
        "regression": {
            "n": 7,
            "exact_scale": 1126,
            "sum_diff": b"\xff\x80",
            "sum_abs_diff": b"\x01\x02",
            "sum_sq_diff": b"\x03",
        },
        "classification": {"n": 4, "disagreements": 1},
        "primary_latency": sketch,
        "candidate_latency": {**sketch, "indices": [1], "counts": [5]},
    }


def partial_v2() -> dict[str, Any]:
    rec = partial_v1()
    rec["coverage"] = {k: i + 1 for i, k in enumerate(V1_COVERAGE + V2_COUNTERS)}
    rec["ledger"] = {
        "*": {"requests": 4, "no_prediction": 4},
        "cand@2": {"requests": 20, "pairs": 15, "no_candidate": 2, "pending": 2, "dead_letters": 1},
    }
    return rec


def snapshot_v1() -> dict[str, Any]:
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
        "coverage": {k: i + 1 for i, k in enumerate(V1_COVERAGE)},
        "mae": 0.5,
        "rmse": 0.75,
        "mean_signed_diff": -0.25,
        "sum_diff": -2.0,
        "sum_abs_diff": 4.0,
        "sum_sq_diff": 4.5,
        "regression_pairs": 8,
        "disagreement_rate": 0.125,
        "classification_pairs": 3,
        "primary_latency_p50": 3.0,
        "primary_latency_p95": 9.0,
        "primary_latency_p99": 12.0,
        "candidate_latency_p50": 4.0,
        "candidate_latency_p95": 10.0,
        "candidate_latency_p99": 13.0,
        "primary_error_rate": 0.1,
        "candidate_error_rate": 0.2,
    }


def snapshot_v2() -> dict[str, Any]:
    rec = snapshot_v1()
    rec["coverage"] = {k: i + 1 for i, k in enumerate(V1_COVERAGE + V2_COUNTERS)}
    rec["conservation"] = {
        "requests": 20,
        "terms": {"pairs": 15, "no_candidate": 2, "pending": 2, "dead_letters": 1},
        "holds": True,
    }
    return rec


def test_a_doc_only_release_shares_the_fingerprint_and_reads_without_resolution(
    tmp_path: Path,
) -> None:
    copy_schemas(tmp_path)
    label = current("Label")
    (tmp_path / HISTORY / "Label").mkdir(parents=True)
    (tmp_path / HISTORY / "Label" / "v1.avsc").write_text(json.dumps(label))
    label["doc"] = label["doc"] + " Reworded."
    (tmp_path / HISTORY / "Label" / "v2.avsc").write_text(json.dumps(label))
    (tmp_path / "Label.avsc").write_text(json.dumps(label))
    codec = Codec(tmp_path)
    v1, v2 = codec.versions["Label"][1], codec.versions["Label"][2]
    assert v1.fingerprint == v2.fingerprint and codec.schemas["Label"] is v2
    rec = {"request_id": "r", "event_time": 5, "value": 2.5, "label": None}
    assert codec.decode(v1.encode(rec)) == ("Label", rec)


def release_label(tmp_path: Path, *versions: Raw) -> Codec:
    """A schema directory whose Label history is ``versions`` (the last one current)."""
    copy_schemas(tmp_path)
    (tmp_path / HISTORY / "Label").mkdir(parents=True)
    for n, raw in enumerate(versions, 1):
        (tmp_path / HISTORY / "Label" / f"v{n}.avsc").write_text(json.dumps(raw))
    (tmp_path / "Label.avsc").write_text(json.dumps(versions[-1]))
    return Codec(tmp_path)


def test_defaults_filled_by_resolution_are_typed_and_fresh(tmp_path: Path) -> None:
    """bytes defaults become bytes (fastavro leaves their JSON string); containers are new."""
    v1 = current("Label")
    v2 = copy.deepcopy(v1)
    v2["fields"] += [
        {"name": "blob", "type": "bytes", "default": "\u00ff\u0000", "doc": "b"},
        {"name": "maybe", "type": ["bytes", "null"], "default": "a", "doc": "u"},
        {
            "name": "tags",
            "type": {"type": "array", "items": "string"},
            "default": ["x"],
            "doc": "t",
        },
        {"name": "n", "type": "long", "default": 7, "doc": "n"},
    ]
    codec = release_label(tmp_path, v1, v2)
    old = {"request_id": "r", "event_time": 5, "value": None, "label": "y"}
    message = codec.versions["Label"][1].encode(old)
    got = codec.decode_as("Label", message)
    assert got == {**old, "blob": b"\xff\x00", "maybe": b"a", "tags": ["x"], "n": 7}
    # Apache avro (Python) agrees, apart from a non-ASCII bytes default: it encodes it as
    # UTF-8, where the specification maps code points 0-255 to single bytes (as Java does)
    apache_got = apache_resolve(message[HEADER_LEN:], v1, v2)
    assert apache_got == {**got, "blob": "\u00ff\u0000".encode()}
    got["tags"].append("z")
    assert codec.decode_as("Label", message)["tags"] == ["x"]


def test_a_new_field_inside_an_array_of_records_is_not_shared_either(tmp_path: Path) -> None:
    item: Raw = {"type": "record", "name": "Item", "fields": [{"name": "a", "type": "int"}]}
    v1 = current("Label")
    v1["fields"].append(
        {"name": "items", "type": {"type": "array", "items": item}, "default": [], "doc": "i"}
    )
    v2 = copy.deepcopy(v1)
    v2["fields"][-1]["type"]["items"]["fields"].append(
        {"name": "m", "type": {"type": "map", "values": "long"}, "default": {}}
    )
    codec = release_label(tmp_path, v1, v2)
    old = {"request_id": "r", "event_time": 5, "value": None, "label": "y", "items": [{"a": 1}]}
    message = codec.versions["Label"][1].encode(old)
    got = codec.decode_as("Label", message)
    assert got["items"] == [{"a": 1, "m": {}}]
    got["items"][0]["m"]["k"] = 1
    assert codec.decode_as("Label", message)["items"] == [{"a": 1, "m": {}}]
