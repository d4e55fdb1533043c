"""Baselines from files: the same data in CSV, JSON lines and Parquet gives the same profile.

References: a :class:`~streams.metrics.quantiles.QuantileSketch` fed the raw column
(exact equality), ``numpy.quantile(method="lower")`` (within the sketch's alpha),
``collections.Counter`` (exact), Apache avro's own reader for the file (exact), and the
judge (a shifted feature drifts against a loaded baseline, the others do not).
"""

from __future__ import annotations

import argparse
import doctest
import gzip
import io
import json
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import avro.io
import avro.schema
import numpy as np
import pytest

from streams import baseline
from streams.alerts.rules import load_rules
from streams.baseline import (
    CHUNK_ROWS,
    add_arguments,
    baseline_build,
    build_baseline,
    load_baseline,
    profile_file,
    write_baseline,
)
from streams.errors import ConfigError
from streams.judge import Judge
from streams.metrics.categories import CategoryCounts
from streams.metrics.partial import PartialStats
from streams.metrics.profile import MERGE_CAP
from streams.metrics.quantiles import QuantileSketch
from streams.schemas import HEADER_LEN, default_codec

ROOT = Path(__file__).resolve().parents[2]
CITIES = ["Paris", "Lyon", "Nice", "Lille", "Zürich"]
COLUMNS = ["row_id", "x", "big", "count", "city", "pred", "truth"]
FEATURES = ["x", "big", "count", "city"]

Rows = list[dict[str, Any]]


def random_rows(n: int, seed: int = 7) -> Rows:
    """Numeric with negatives and zeros, integers, a categorical, missing cells, a prediction.

    ``None`` is a missing cell (CSV: empty; JSON: null or absent; Parquet: null).
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(-2.0, 10.0, n)
    big = rng.lognormal(10.0, 3.0, n) * rng.choice([-1.0, 1.0, 0.0], n, p=[0.3, 0.6, 0.1])
    count = rng.integers(-5, 50, n)
    city = rng.choice(CITIES, n, p=[0.4, 0.3, 0.15, 0.1, 0.05])
    rows: Rows = []
    for i in range(n):
        rows.append(
            {
                "row_id": f"id-{i}",
                "x": None if rng.random() < 0.05 else float(x[i]),
                "big": None if rng.random() < 0.02 else float(big[i]),
                "count": None if rng.random() < 0.1 else int(count[i]),
                "city": None if rng.random() < 0.08 else str(city[i]),
                "pred": float(x[i] * 0.5 + 3.0),
                "truth": float(x[i] * 0.5 + rng.normal()),
            }
        )
    return rows


def write_csv(path: Path, rows: Rows, columns: list[str] = COLUMNS) -> Path:
    def cell(v: Any) -> str:
        return "" if v is None else repr(v) if isinstance(v, float) else str(v)

    lines = [",".join(columns)]
    lines += [",".join(cell(r.get(c)) for c in columns) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: Rows) -> Path:
    out = []
    for i, r in enumerate(rows):
        # missing cells both ways: null, and (every other row) an absent key
        rec = {k: v for k, v in r.items() if v is not None or i % 2}
        out.append(json.dumps(rec, ensure_ascii=False))
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path


def write_parquet(path: Path, rows: Rows, row_group_size: int = 1_000) -> Path:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(
        {
            "row_id": pa.array([r["row_id"] for r in rows], pa.string()),
            "x": pa.array([r["x"] for r in rows], pa.float64()),
            "big": pa.array([r["big"] for r in rows], pa.float64()),
            "count": pa.array([r["count"] for r in rows], pa.int64()),
            "city": pa.array([r["city"] for r in rows], pa.string()).dictionary_encode(),
            "pred": pa.array([r["pred"] for r in rows], pa.float64()),
            "truth": pa.array([r["truth"] for r in rows], pa.float64()),
        }
    )
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


WRITERS = {"csv": write_csv, "jsonl": write_jsonl, "parquet": write_parquet}
SUFFIX = {"csv": ".csv", "jsonl": ".jsonl", "parquet": ".parquet"}
OPTS: dict[str, Any] = {"prediction_column": "pred", "label_column": "truth", "ignore": ["row_id"]}


def data_file(tmp_path: Path, fmt: str, rows: Rows) -> Path:
    return WRITERS[fmt](tmp_path / f"data{SUFFIX[fmt]}", rows)


@pytest.fixture(scope="module")
def rows() -> Rows:
    return random_rows(3_000)


def column(rows: Rows, name: str) -> list[Any]:
    return [r[name] for r in rows if r[name] is not None]


# -- the profile against references ------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_each_numeric_sketch_is_the_sketch_of_the_raw_column(
    tmp_path: Path, rows: Rows, fmt: str
) -> None:
    stats = build_baseline(data_file(tmp_path, fmt, rows), **OPTS)
    p = stats.profile
    assert sorted(p.numeric) == ["big", "count", "x"]
    for name in ("x", "big", "count"):
        raw = np.array(column(rows, name), dtype=np.float64)
        ref = QuantileSketch()
        ref.update_many(raw)
        assert p.numeric[name] == ref, name  # exact: the same bucket counts
        for q in (0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0):
            exact = float(np.quantile(raw, q, method="lower"))
            got = p.numeric[name].quantile(q)
            assert abs(got - exact) <= ref.alpha * abs(exact) + 1e-12, (name, q, got, exact)
    pred = QuantileSketch()
    pred.update_many(np.array(column(rows, "pred")))
    assert p.primary_output == pred
    assert p.primary_labels is None and p.candidate_output is None
    assert p.non_finite == 0 and p.dropped_features == 0


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_categorical_counts_equal_a_counter(tmp_path: Path, rows: Rows, fmt: str) -> None:
    stats = build_baseline(data_file(tmp_path, fmt, rows), **OPTS)
    city = stats.profile.categorical["city"]
    assert city.counts == dict(Counter(column(rows, "city")))
    assert city.overflow == 0
    assert list(stats.profile.categorical) == ["city"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_rows_are_requests_and_the_truth_and_ignored_columns_are_not_features(
    tmp_path: Path, rows: Rows, fmt: str
) -> None:
    built = profile_file(data_file(tmp_path, fmt, rows), **OPTS)
    stats, report = built.stats, built.report
    assert stats.coverage["requests"] == len(rows) == report.rows
    assert stats.profile.requests == max(len(column(rows, f)) for f in FEATURES)
    assert set(stats.profile.numeric) | set(stats.profile.categorical) == set(FEATURES)
    assert report.columns["truth"].role == "label"
    assert report.columns["row_id"].role == "ignored"
    for name in FEATURES:
        c = report.columns[name]
        assert c.values == len(column(rows, name)), name
        assert c.values + c.missing + c.bad + c.non_finite == len(rows), name
        assert c.typed_at == 0
    assert report.columns["city"].kind == "categorical"
    assert report.columns["count"].kind == "numeric"


def test_csv_jsonl_and_parquet_of_the_same_data_give_equal_baselines(
    tmp_path: Path, rows: Rows
) -> None:
    built = {
        fmt: build_baseline(data_file(tmp_path, fmt, rows), **OPTS) for fmt in ("csv", "jsonl")
    }
    assert built["csv"] == built["jsonl"]
    pytest.importorskip("pyarrow")
    assert build_baseline(data_file(tmp_path, "parquet", rows), **OPTS) == built["csv"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_chunk_size_does_not_change_the_baseline(tmp_path: Path, rows: Rows, fmt: str) -> None:
    path = data_file(tmp_path, fmt, rows)
    whole = build_baseline(path, **OPTS)
    for chunk in (7, 1_000, len(rows) + 1):
        seen: list[int] = []
        assert build_baseline(path, **OPTS, chunk_rows=chunk, on_progress=seen.append) == whole
        assert seen == sorted(seen) and seen[-1] == len(rows)
        # pyarrow's batches of at most ``chunk`` rows may also end at row groups
        assert len(seen) == math.ceil(len(rows) / chunk) or fmt == "parquet"
        assert all(b - a <= chunk for a, b in zip([0, *seen], seen, strict=False))


def test_default_chunks_are_large_and_progress_is_per_chunk(tmp_path: Path) -> None:
    n = CHUNK_ROWS + 10
    path = tmp_path / "long.csv"
    path.write_text("a,b\n" + "".join(f"{i},{i % 3}\n" for i in range(n)))
    seen: list[int] = []
    built = profile_file(path, on_progress=seen.append)
    assert seen == [CHUNK_ROWS, n]
    assert built.report.first_chunk_rows == CHUNK_ROWS
    assert built.stats.profile.numeric["a"].count == n


# -- typing, missing and bad cells -----------------------------------------------------------


def test_the_fast_number_path_is_float_bit_for_bit() -> None:
    """numpy's conversion of a column of text is ``float()`` on each cell, bits included."""
    rng = np.random.default_rng(5)
    x = rng.normal(0.0, 1.0, 5_000) * 10.0 ** rng.integers(-300, 300, 5_000)
    texts = [repr(float(v)) for v in x] + [f"{v:.3g}" for v in x[:500]]
    texts += ["1_000", " 2 ", "\u0663", "\uff11\uff12", "-0", "1e-400", "1e400", "+nan", ".5"]
    got, blank, bad, _ = baseline._floats(tuple(texts), True)
    want = np.array([float(s) for s in texts])
    assert (blank, bad) == (0, 0)
    assert got.tobytes() == want.tobytes()
    # the slow path (a cell that is not a number) gives the same bits for the others
    slow, blank, bad, example = baseline._floats((*texts, "x1", "  "), True)
    assert slow.tobytes() == want.tobytes() and (blank, bad, example) == (1, 1, "'x1'")


def test_doctests() -> None:
    result = doctest.testmod(baseline, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_text_that_parses_as_a_number_is_numeric_and_nan_is_counted(tmp_path: Path) -> None:
    cells = ["1_000", " 2 ", "-3.5e2", "nan", "inf", "1e400", "", "   ", "+7", ".5"]
    path = tmp_path / "odd.csv"
    path.write_text("v,c\n" + "".join(f'"{v}",k{i % 2}\n' for i, v in enumerate(cells)))
    built = profile_file(path)
    v = built.report.columns["v"]
    assert v.kind == "numeric"
    finite = [float(s) for s in cells if s.strip() and math.isfinite(float(s))]
    ref = QuantileSketch()
    ref.update_many(np.array(finite))
    assert built.stats.profile.numeric["v"] == ref
    assert (v.values, v.non_finite, v.missing, v.bad) == (5, 3, 2, 0)
    assert built.stats.profile.non_finite == 3


def test_a_later_non_numeric_value_in_a_numeric_column_is_counted_bad(tmp_path: Path) -> None:
    values = [str(i) for i in range(20)]
    values[15] = "n/a"  # after the first chunk of 10 rows
    path = tmp_path / "bad.csv"
    path.write_text("v,w\n" + "".join(f"{v},{i}\n" for i, v in enumerate(values)))
    built = profile_file(path, chunk_rows=10)
    v = built.report.columns["v"]
    assert v.kind == "numeric" and v.bad == 1 and v.values == 19
    ref = QuantileSketch()
    ref.update_many(np.array([float(s) for s in values if s != "n/a"]))
    assert built.stats.profile.numeric["v"] == ref
    # in the first chunk, the same value makes the column categorical, and it says why
    first = profile_file(path, chunk_rows=20)
    assert first.report.columns["v"].kind == "categorical"
    assert first.report.columns["v"].why == "'n/a'"
    assert first.stats.profile.categorical["v"].counts == dict(Counter(values))


def test_a_column_empty_in_the_first_chunk_is_typed_by_the_first_with_values(
    tmp_path: Path,
) -> None:
    path = tmp_path / "late.csv"
    path.write_text("a,late\n" + "".join(f"{i},{'' if i < 10 else i * 0.5}\n" for i in range(30)))
    built = profile_file(path, chunk_rows=4)
    late = built.report.columns["late"]
    assert late.kind == "numeric" and late.typed_at == 8 and late.missing == 10
    assert built.stats.profile.numeric["late"].count == 20


def test_jsonl_booleans_nested_values_and_late_keys(tmp_path: Path) -> None:
    recs = [{"n": i, "flag": i % 3 == 0, "obj": {"a": 1} if i == 4 else "z"} for i in range(9)]
    recs[5]["n"] = [1, 2]  # nested in a numeric column: bad
    recs[7]["late"] = "q"
    path = tmp_path / "mixed.ndjson"
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n\n")
    built = profile_file(path, chunk_rows=5)
    cols, p = built.report.columns, built.stats.profile
    assert cols["n"].kind == "numeric" and cols["n"].bad == 1 and p.numeric["n"].count == 8
    assert p.categorical["flag"].counts == {"true": 3, "false": 6}
    assert p.categorical["obj"].counts == {"z": 8} and cols["obj"].bad == 1
    assert p.categorical["late"].counts == {"q": 1} and cols["late"].missing == 8


def test_jsonl_lines_that_are_not_objects_are_counted_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\nnot json\n42\n{"a": 2}\n')
    built = profile_file(path)
    assert built.report.bad_rows == 2 and built.report.rows == 2
    assert built.stats.profile.numeric["a"].count == 2


def test_categorical_and_a_label_prediction(tmp_path: Path) -> None:
    path = tmp_path / "cls.csv"
    path.write_text(
        "zip,size,pred\n" + "".join(f"{75000 + i % 4},{i},{i % 2}\n" for i in range(40))
    )
    stats = build_baseline(path, prediction_column="pred", categorical=["zip", "pred"])
    p = stats.profile
    assert p.categorical["zip"].counts == {str(75000 + k): 10 for k in range(4)}
    assert p.primary_labels is not None and p.primary_labels.counts == {"0": 20, "1": 20}
    assert p.primary_output is None
    assert list(p.numeric) == ["size"]


def test_many_categories_keep_the_most_frequent_like_a_merged_reference(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    values = [f"v{i}" for i in range(2_000)] + [f"v{i % 50}" for i in range(3_000)]
    rng.shuffle(values)
    path = tmp_path / "wide.csv"
    path.write_text("c,n\n" + "".join(f"{v},1\n" for v in values))
    counts = build_baseline(path, chunk_rows=999).profile.categorical["c"]
    ref = CategoryCounts.merged([_counter(values)], cap=MERGE_CAP)
    assert counts == ref
    assert len(counts.counts) == MERGE_CAP and counts.overflow > 0
    assert counts.count == len(values)


def _counter(values: list[str]) -> CategoryCounts:
    c = CategoryCounts(cap=10**6)
    c.update_many(values)
    return c


def test_ragged_csv_rows_unnamed_index_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_bytes("\ufeff,a,b\n0,1,x\n1,2\n2,3,y,extra\n\n3,4,z\n".encode())
    built = profile_file(path)
    r = built.report
    assert r.rows == 4 and r.bad_rows == 1
    assert r.columns[""].role == "ignored"
    assert r.columns["b"].missing == 1
    assert built.stats.profile.numeric["a"].count == 4


def test_gzip_and_format_override(tmp_path: Path, rows: Rows) -> None:
    plain = write_csv(tmp_path / "d.csv", rows[:200])
    gz = tmp_path / "d.csv.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    odd = tmp_path / "d.txt"
    odd.write_bytes(plain.read_bytes())
    want = build_baseline(plain, **OPTS)
    assert build_baseline(gz, **OPTS) == want
    assert build_baseline(odd, fmt="csv", **OPTS) == want
    with pytest.raises(ConfigError, match=r"cannot tell the format .*--format"):
        build_baseline(odd)


# -- bad inputs ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["nope.csv", "nope.jsonl", "nope.parquet"])
def test_missing_file(tmp_path: Path, name: str) -> None:
    if name.endswith(".parquet"):
        pytest.importorskip("pyarrow")
    with pytest.raises(ConfigError, match=r"nope\.\w+ not found"):
        build_baseline(tmp_path / name)


@pytest.mark.parametrize(
    ("name", "text", "error"),
    [
        ("e.csv", "", "is empty"),
        ("e.csv", "\n\n", "is empty"),
        ("e.jsonl", "", "is empty"),
        ("e.jsonl", "\n  \n", "is empty"),
        ("h.csv", "a,b,c\n", "has a header but no rows"),
        ("h.csv", "a,b,c\n\n\n", "has a header but no rows"),
        ("n.jsonl", "nope\n[1]\n", "has no rows .2 lines were not JSON objects"),
        ("arr.json", '[{"a": 1}]', "holds a JSON array, not JSON lines"),
        ("blank.csv", "a,b\n,\n,\n", "no feature column has a value in 2 rows"),
        ("dup.csv", "a,b,a\n1,2,3\n", "column 'a' appears twice"),
        ("bin.csv", "\x00\x01 PAR1 \udcff", "not UTF-8 text"),
    ],
)
def test_bad_inputs_are_one_clear_config_error(
    tmp_path: Path, name: str, text: str, error: str
) -> None:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(ConfigError, match=error):
        build_baseline(path)


def test_a_typo_in_a_column_option_is_an_error(tmp_path: Path, rows: Rows) -> None:
    path = write_csv(tmp_path / "d.csv", rows[:10])
    with pytest.raises(ConfigError, match=r"--prediction-column 'prd': no such column"):
        build_baseline(path, prediction_column="prd")
    with pytest.raises(ConfigError, match=r"--ignore 'rowid'"):
        build_baseline(path, ignore=["rowid"])
    with pytest.raises(ConfigError, match="both prediction and label"):
        build_baseline(path, prediction_column="pred", label_column="pred")


def test_only_non_features_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("pred,truth\n1,2\n")
    with pytest.raises(ConfigError, match="no feature column"):
        build_baseline(path, prediction_column="pred", label_column="truth")


def test_parquet_without_pyarrow_names_the_package(
    tmp_path: Path, rows: Rows, monkeypatch: pytest.MonkeyPatch
) -> None:
    for mod in ("pyarrow", "pyarrow.compute", "pyarrow.parquet"):
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(ConfigError, match="pip install pyarrow"):
        build_baseline(tmp_path / "data.parquet")
    # CSV and JSON lines need nothing more
    assert build_baseline(data_file(tmp_path, "csv", rows[:50]), **OPTS).coverage["requests"] == 50


def test_a_file_that_is_not_parquet(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    path = tmp_path / "fake.parquet"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="is not a Parquet file"):
        build_baseline(path)


# -- the file ------------------------------------------------------------------------------


def test_write_then_load_gives_the_same_statistics(tmp_path: Path, rows: Rows) -> None:
    stats = build_baseline(data_file(tmp_path, "csv", rows), **OPTS)
    out = tmp_path / "sub" / "baseline.avro"
    with pytest.raises(ConfigError, match="cannot write baseline"):
        write_baseline(stats, out)  # no such directory: an error, no half file
    out.parent.mkdir()
    write_baseline(stats, out)
    loaded = load_baseline(out)
    assert loaded == stats
    assert loaded.profile.categorical["city"] == stats.profile.categorical["city"]
    assert [p.name for p in out.parent.iterdir()] == ["baseline.avro"]


def test_load_errors(tmp_path: Path, rows: Rows) -> None:
    with pytest.raises(ConfigError, match=r"baseline .*missing\.avro not found"):
        load_baseline(tmp_path / "missing.avro")
    csv_file = data_file(tmp_path, "csv", rows[:10])
    with pytest.raises(ConfigError, match=r"is not a baseline .*C3 01"):
        load_baseline(csv_file)
    other = tmp_path / "request.avro"
    other.write_bytes(default_codec().encode("Request", {"request_id": "r", "event_time": 1}))
    with pytest.raises(ConfigError, match=r"is not a baseline .*expected a Partial"):
        load_baseline(other)
    cut = tmp_path / "cut.avro"
    write_baseline(build_baseline(csv_file, **OPTS), cut)
    cut.write_bytes(cut.read_bytes()[:40])
    with pytest.raises(ConfigError, match="is not a baseline"):
        load_baseline(cut)
    empty = tmp_path / "empty.avro"
    write_baseline(PartialStats(), empty)
    with pytest.raises(ConfigError, match="profiles no feature"):
        load_baseline(empty)


def _strip_logical(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_logical(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical(v) for v in node]
    return node


def test_apache_avro_reads_the_baseline_file(tmp_path: Path, rows: Rows) -> None:
    stats = build_baseline(data_file(tmp_path, "csv", rows), **OPTS)
    out = tmp_path / "b.avro"
    write_baseline(stats, out)
    data = out.read_bytes()
    raw = json.loads((ROOT / "schemas" / "Partial.avsc").read_text())
    assert data[:2] == b"\xc3\x01"
    # Apache avro's own CRC-64-AVRO of the schema (see test_schemas for why without logical
    # types: canonically the same schema)
    assert data[2:HEADER_LEN] == avro.schema.parse(json.dumps(_strip_logical(raw))).fingerprint(
        "CRC-64-AVRO"
    )
    schema = avro.schema.parse(json.dumps(raw))
    rec = avro.io.DatumReader(schema, schema).read(
        avro.io.BinaryDecoder(io.BytesIO(data[HEADER_LEN:]))
    )
    assert rec["candidate"] == "*"
    assert rec["coverage"]["requests"] == len(rows)
    prof = rec["profile"]
    assert sorted(prof["numeric"]) == ["big", "count", "x"]
    for name, sketch in stats.profile.numeric.items():
        indices, counts = sketch.to_sparse()
        assert (prof["numeric"][name]["indices"], prof["numeric"][name]["counts"]) == (
            indices,
            counts,
        )
    assert prof["categorical"]["city"]["counts"] == dict(Counter(column(rows, "city")))
    assert sum(prof["primary_output"]["counts"]) == len(rows)


# -- the command -----------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))


def test_options() -> None:
    a = parse("--from", "d.csv", "--categorical", "a,b", "--categorical", "c", "--ignore", "id")
    assert a.source == Path("d.csv") and a.out == Path("baseline.avro")
    assert a.categorical == ["a", "b", "c"] and a.ignore == ["id"]
    assert (a.format, a.prediction_column, a.label_column, a.quiet) == (None, None, None, False)
    assert parse("--from", "x").categorical == []  # the default is not shared between parses
    with pytest.raises(SystemExit):
        parse("--out", "x.avro")  # --from is required


def test_build_prints_a_summary_and_writes_the_file(
    tmp_path: Path, rows: Rows, capsys: pytest.CaptureFixture[str]
) -> None:
    src = data_file(tmp_path, "csv", rows)
    out = tmp_path / "b.avro"
    args = parse(
        "--from", str(src), "--out", str(out), "--prediction-column", "pred",
        "--label-column", "truth", "--ignore", "row_id",
    )  # fmt: skip
    assert baseline_build(args) == 0
    printed = capsys.readouterr()
    assert load_baseline(out) == build_baseline(src, **OPTS)
    text = printed.out
    assert f"{len(rows):,} rows" in text
    assert "numeric features (3)" in text and "categorical features (1)" in text
    assert "'Paris' is not a number" in text or "is not a number" in text
    assert "label truth" in text and "ignored row_id" in text
    assert text.strip().splitlines()[-1].startswith(f"wrote {out}")
    assert printed.err == ""  # a short file shows no progress

    assert baseline_build(parse("--from", str(src), "--out", str(out), "--quiet")) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1


def test_build_shows_progress_on_long_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "long.csv"
    src.write_text("a\n" + "".join(f"{i % 97}\n" for i in range(250_000)))
    assert baseline_build(parse("--from", str(src), "--out", str(tmp_path / "b.avro"))) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line.split(" rows")[0] for line in err] == ["read 100,000", "read 200,000"]


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--from", "{tmp}/missing.csv"], "missing.csv not found"),
        (["--from", "{tmp}/d.csv", "--prediction-column", "nope"], "no such column"),
        (["--from", "{tmp}/d.csv", "--out", "{tmp}/d.csv"], "is the input file"),
        (["--from", "{tmp}/d.csv", "--out", "{tmp}/no/dir/b.avro"], "cannot write baseline"),
    ],
)
def test_build_fails_with_one_line(
    tmp_path: Path,
    rows: Rows,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    error: str,
) -> None:
    write_csv(tmp_path / "d.csv", rows[:20])
    args = parse(*(a.format(tmp=tmp_path) for a in argv))
    assert baseline_build(args) == 1
    printed = capsys.readouterr()
    assert printed.out == ""
    lines = printed.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("understudy: error: ") and error in lines[0]


# -- with the judge --------------------------------------------------------------------------


def test_a_loaded_baseline_is_ready_at_once_and_a_shifted_feature_drifts(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(11)
    names = [f"f{i}" for i in range(5)]
    n_ref = 20_000
    ref_rows = [
        {**{f: float(v) for f, v in zip(names, rng.normal(0.0, 1.0, 5), strict=True)},
         "city": str(rng.choice(CITIES[:3]))}
        for _ in range(n_ref)
    ]  # fmt: skip
    src = write_csv(tmp_path / "train.csv", ref_rows, [*names, "city"])
    write_baseline(build_baseline(src), tmp_path / "b.avro")
    baseline = load_baseline(tmp_path / "b.avro")

    table: dict[bytes, bytes] = {}
    rules = load_rules(ROOT / "deploy" / "rules.yaml")
    judge = Judge(table, rules=rules, baseline=baseline, baseline_source=str(src))
    info = judge.reference_info()
    assert info["ready"] and info["requests"] == n_ref and str(src) in info["source"]

    firing: list[str] = []
    for w in range(3):
        window = PartialStats()
        n = 1_000
        for f in names:
            x = rng.normal(0.0, 1.0, n) + (0.5 if f == "f2" else 0.0)  # f2 moved by 0.5 sd
            window.profile.add_numeric(f, x)
        window.profile.add_categorical("city", [str(c) for c in rng.choice(CITIES[:3], n)])
        window.count("requests", n)
        ws, we = w * 10_000, (w + 1) * 10_000
        transitions = judge.shared_window(ws, we, window)
        drift = {d["feature"]: d for d in json.loads(table[b"features|" + str(we).encode()])}
        judge.end_window(we)
        assert set(drift) >= {*names, "city"}  # judged from the first window on
        assert drift["f2"]["drifting"], drift["f2"]
        assert drift["f2"]["n_ref"] == n_ref and drift["f2"]["ks"] > 0.15
        for f in [*names, "city"]:
            if f != "f2":
                assert not drift[f]["drifting"] and not drift[f]["alarm"], drift[f]
        firing += [t.feature for t in transitions if t.state == "FIRING"]
        assert drift["f2"]["alarm"] == (w >= 1)  # the rule asks for 2 windows in a row
    assert firing == ["f2"]  # one FIRING, on the shifted feature only
    assert not any(k.startswith(b"ref|") for k in table)  # nothing went into a reference
