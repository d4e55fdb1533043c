"""A reference profile from a file the team has: ``understudy baseline build --from FILE``.

Why a file: drift needs a reference. Without one, the evaluator takes the first
``reference_requests`` requests, so it judges nothing until they have passed, and if the
traffic had already moved when the evaluator started, that is what it calls normal. A
team usually has the data its model was trained or validated on; profiled here, it is a
reference that is ready from the first window and means "what the model was built for".

The profile is the one the joiner folds into a ``*`` partial (a
:class:`~streams.metrics.partial.PartialStats` whose
:class:`~streams.metrics.profile.Profile` has one
:class:`~streams.metrics.quantiles.QuantileSketch` per numeric feature, one
:class:`~streams.metrics.categories.CategoryCounts` per categorical one, and the primary
model's outputs), so the evaluator compares like with like, and it is stored as what the
joiner publishes: one Avro single-object ``Partial`` (``C3 01``, the CRC-64-AVRO
fingerprint, the body), which any Avro reader holding ``schemas/Partial.avsc`` can read.

Reading (CSV, Parquet or JSON lines, by suffix: ``.csv``, ``.parquet``/``.pq``,
``.jsonl``/``.ndjson``/``.json``; ``.csv.gz`` and ``.jsonl.gz`` too) streams the file in
chunks of :data:`CHUNK_ROWS` rows (Parquet: batches of that many rows), so a file larger
than memory is fine; each chunk is folded with numpy. The rules, chosen to be the same in
the three formats:

- **Typing.** A column is numeric when every non-empty value of the *first chunk* parses
  as a float (a number, or text such as ``"3.5"``, ``"1e-3"``, ``"nan"``), categorical
  otherwise (``categorical=`` forces it). Parquet numeric types are numeric by schema. A
  column with no value in the first chunk is typed by the first chunk where it has one.
  The decision is made once, logged, and reported (:class:`ColumnReport`); a later
  non-numeric value in a numeric column is counted as ``bad`` and skipped, not a crash.
  Booleans are categorical, ``"true"``/``"false"``; timestamps and dates are categorical,
  as text; nested values (JSON arrays or objects) are bad cells, nested Parquet columns are
  not read.
- **Missing.** An empty cell (empty or blank text, JSON ``null`` or an absent key, a
  Parquet null) is skipped and counted; NaN and infinities are counted as non-finite (the
  sketch's own rule). So per column ``values + missing + bad + non_finite == rows``.
- **Roles.** ``prediction_column`` is the primary model's output in that data: numeric,
  the primary's regression outputs; otherwise its class labels (force labels that look
  like numbers with ``categorical=``). ``label_column`` (the truth) and ``ignore`` columns
  are not profiled, nor is a column without a name (a data frame's index written by
  ``to_csv()``). Every row counts one request (``coverage["requests"]``).
- **Categories.** The joiner keeps the first 64 distinct values of a feature per partial,
  and the evaluator's merged reference keeps the 1,024 most frequent
  (:data:`~streams.metrics.profile.MERGE_CAP`). A baseline is a merged reference, so it
  keeps the 1,024 most frequent values of each categorical column, the rest counted as
  overflow. To find them with bounded memory, the first :data:`TRACK_CAP` distinct values
  of a column are counted exactly (a value first seen after those is overflow): exact
  whenever a column has fewer distinct values than that, and the same however the file is
  cut into chunks.
- At most :data:`~streams.metrics.profile.MAX_FEATURES` features, in the order they are
  typed; the values of any beyond are counted in ``dropped_features``.

Chunk size never changes the statistics, only when a column is typed: a column that looks
numeric in the first chunk and is not later keeps its numeric type and counts the rest as
bad.

Measured on this project's 2-core machine with a file of 1,000,000 rows and 20 columns
(17 numeric full-precision floats, 2 categorical, a prediction): as CSV (367 MB) 16.9 s,
~59,000 rows/s or 1.2 M cells/s (~40 % is ``float`` parsing the numbers, ~36 % the ``csv``
module, 6 % the sketches), peak 138 MB resident; as JSON lines (537 MB) 19.6 s, 166 MB;
as Parquet 2.4 s, with memory about one row group (374 MB for one 1,000,000-row group).
The three baseline files were byte-identical.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import importlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from streams.errors import ConfigError, SchemaError, UnderstudyError
from streams.metrics.categories import CategoryCounts
from streams.metrics.partial import SHARED, PartialStats
from streams.metrics.profile import MAX_FEATURES, MERGE_CAP
from streams.schemas import default_codec

__all__ = [
    "CHUNK_CELLS",
    "CHUNK_ROWS",
    "FORMATS",
    "TRACK_CAP",
    "BaselineReport",
    "Built",
    "ColumnReport",
    "add_arguments",
    "baseline_build",
    "build_baseline",
    "load_baseline",
    "profile_file",
    "write_baseline",
]

log = logging.getLogger(__name__)

CHUNK_ROWS = 50_000
"""Rows read and folded at a time (Parquet: rows per batch); the first chunk types columns."""
CHUNK_CELLS = 1_000_000
"""A chunk holds at most this many cells (a wide file reads fewer rows at a time): with
Python strings of ~75 bytes each, a chunk of CSV text costs ~100 MB whatever the width."""
TRACK_CAP = 16_384
"""Distinct values of a categorical column counted exactly while reading (about 2 MB)."""
FORMATS: Mapping[str, str] = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
"""File suffix -> format; ``fmt=`` takes a format name or any of these suffixes' names."""
_PARQUET_HINT = "reading Parquet needs pyarrow: pip install pyarrow"

Cells = Sequence[Any]


@dataclass(frozen=True)
class _Floats:
    """A column that is numeric by its storage type (Parquet): its non-null values."""

    values: npt.NDArray[np.float64]
    missing: int


@dataclass
class ColumnReport:
    """What became of one column: its role, its type, and where its cells went."""

    name: str
    #: feature, prediction, label, ignored, dropped (beyond MAX_FEATURES) or unread
    role: str
    #: numeric, categorical, or None while no chunk had a value
    kind: str | None = None
    #: cells sketched or counted
    values: int = 0
    missing: int = 0
    #: non-numeric cells of a numeric column, nested values, unparsable numbers
    bad: int = 0
    non_finite: int = 0
    #: the first row (0-based) of the chunk that typed it
    typed_at: int | None = None
    #: why it was typed so: the first non-numeric value, or "schema", or "--categorical"
    why: str = ""


@dataclass
class BaselineReport:
    """How a file was read: what the summary of ``understudy baseline build`` prints."""

    source: Path
    format: str
    rows: int = 0
    #: rows of the first chunk, the one that typed the columns
    first_chunk_rows: int = 0
    columns: dict[str, ColumnReport] = field(default_factory=dict)
    #: CSV cells beyond the header's width; JSON lines that are not objects
    bad_rows: int = 0

    def of_role(self, role: str) -> list[ColumnReport]:
        return [c for c in self.columns.values() if c.role == role]


@dataclass(frozen=True)
class Built:
    """A baseline and the account of how it was read."""

    stats: PartialStats
    report: BaselineReport


# -- cells ---------------------------------------------------------------------------------


def _present(cells: Cells, texts: bool) -> tuple[Cells, int]:
    """Cells that are neither None nor empty text, and how many were."""
    if "" in cells or (not texts and None in cells):
        kept = [v for v in cells if v is not None and v != ""]
        return kept, len(cells) - len(kept)
    return cells, 0


def _floats(present: Cells, texts: bool) -> tuple[npt.NDArray[np.float64], int, int, str]:
    """``present`` as floats: ``(values, blank, bad, first bad value)``.

    A value parses when ``float()`` takes it (numpy's string conversion is ``float``'s,
    checked by the tests, so the fast path and the slow one agree); booleans and nested
    values never do. Blank text counts as missing.
    """
    if texts or not any(v.__class__ is bool for v in present):
        try:
            arr = np.array(present, dtype=np.float64)
        except (ValueError, TypeError, OverflowError):
            pass
        else:
            if arr.shape == (len(present),):  # equal-length lists would make a 2-D array
                return arr, 0, 0, ""
    out: list[float] = []
    blank = bad = 0
    example = ""
    for v in present:
        if v.__class__ is bool or isinstance(v, list | dict):
            bad += 1
            example = example or _show(v)
            continue
        try:
            out.append(float(v))
        except (ValueError, TypeError, OverflowError):
            if isinstance(v, str) and v.isspace():
                blank += 1
            else:
                bad += 1
                example = example or _show(v)
    return np.array(out, dtype=np.float64), blank, bad, example


def _show(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(v, default=str)
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _texts(present: Cells, texts: bool) -> tuple[list[str], int, int]:
    """``present`` as category strings: ``(values, blank, bad)``; nested values are bad."""
    if texts:
        vals = present if isinstance(present, list) else list(present)
        if any(map(str.isspace, vals)):
            kept = [v for v in vals if not v.isspace()]
            return kept, len(vals) - len(kept), 0
        return vals, 0, 0
    out: list[str] = []
    blank = bad = 0
    for v in present:
        if isinstance(v, str):
            if v.isspace():
                blank += 1
            else:
                out.append(v)
        elif v.__class__ is bool:
            out.append("true" if v else "false")
        elif isinstance(v, list | dict):
            bad += 1
        else:
            out.append(repr(v) if isinstance(v, float) else str(v))
    return out, blank, bad


# -- folding -------------------------------------------------------------------------------


class _Builder:
    """Folds chunks of columns into a PartialStats, deciding each column's type once."""

    def __init__(
        self,
        report: BaselineReport,
        *,
        prediction_column: str | None,
        label_column: str | None,
        categorical: Sequence[str],
        ignore: Sequence[str],
    ) -> None:
        if prediction_column is not None and prediction_column == label_column:
            raise ConfigError(f"column {prediction_column!r} cannot be both prediction and label")
        self.report = report
        self.stats = PartialStats()
        self.prediction_column = prediction_column
        self.label_column = label_column
        self.categorical = frozenset(categorical)
        self.ignore = frozenset(ignore)
        self._counts: dict[str, CategoryCounts] = {}
        self._labels = CategoryCounts(cap=TRACK_CAP)
        self._features = 0

    def column(self, name: str) -> ColumnReport:
        col = self.report.columns.get(name)
        if col is None:
            if name == self.label_column:
                role = "label"
            elif name in self.ignore or not name.strip():
                role = "ignored"
            elif name == self.prediction_column:
                role = "prediction"
            else:
                role = "feature"
            col = self.report.columns[name] = ColumnReport(name, role)
            col.missing = self.report.rows  # a column that appears late was absent before
        return col

    def check_names(self, names: Sequence[str]) -> None:
        """Names the caller gave must be columns of the file: a typo is an error, not noise."""
        given = {
            "--prediction-column": [self.prediction_column] if self.prediction_column else [],
            "--label-column": [self.label_column] if self.label_column else [],
            "--categorical": sorted(self.categorical),
            "--ignore": sorted(self.ignore),
        }
        known = set(names)
        for option, wanted in given.items():
            unknown = [n for n in wanted if n not in known]
            if unknown:
                shown = ", ".join(n or "(unnamed)" for n in names[:30])
                shown += ", ..." if len(names) > 30 else ""
                raise ConfigError(
                    f"{self.report.source}: {option} {', '.join(map(repr, unknown))}: no such "
                    f"column (columns: {shown})"
                )

    def fold(self, rows: int, columns: Mapping[str, Cells | _Floats], *, texts: bool) -> None:
        """One chunk of ``rows`` rows; ``texts``: every cell is a str (CSV)."""
        if rows == 0:
            return
        if self.report.first_chunk_rows == 0:
            self.report.first_chunk_rows = rows
        for name, cells in columns.items():
            col = self.column(name)
            if col.role in ("label", "ignored", "unread"):
                continue
            self._fold_column(col, cells, texts)
        for name, col in self.report.columns.items():
            if name not in columns and col.role not in ("label", "ignored", "unread"):
                col.missing += rows  # absent from every record of this chunk
        self.report.rows += rows
        self.stats.count("requests", rows)

    def _fold_column(self, col: ColumnReport, cells: Cells | _Floats, texts: bool) -> None:
        if isinstance(cells, _Floats):  # numeric by its Parquet type
            col.missing += cells.missing
            if col.kind is None:
                self._typed(col, "numeric", "schema")
            self._numeric(col, cells.values)
            return
        present, missing = _present(cells, texts)
        col.missing += missing
        if col.kind is None:
            if not present:
                return
            if col.name in self.categorical:
                self._typed(col, "categorical", "--categorical")
            else:
                values, blank, bad, example = _floats(present, texts)
                col.missing += blank if bad == 0 else 0
                if bad == 0 and values.size == 0:
                    return  # only blank cells so far: still untyped
                if bad == 0:
                    self._typed(col, "numeric", "")
                    self._numeric(col, values)
                    return
                self._typed(col, "categorical", example)
        if col.kind == "numeric":
            values, blank, bad, _ = _floats(present, texts)
            col.missing += blank
            col.bad += bad
            self._numeric(col, values)
        else:
            labels, blank, bad = _texts(present, texts)
            col.missing += blank
            col.bad += bad
            self._categories(col, labels)

    def _typed(self, col: ColumnReport, kind: str, why: str) -> None:
        col.kind, col.why, col.typed_at = kind, why, self.report.rows
        if col.role == "feature":
            if self._features >= MAX_FEATURES:
                col.role = "dropped"
                log.warning(
                    "%s: column %r not profiled: a profile keeps %d features",
                    self.report.source,
                    col.name,
                    MAX_FEATURES,
                )
                return
            self._features += 1
            if kind == "categorical":
                self._counts[col.name] = CategoryCounts(cap=TRACK_CAP)
        reason = {
            "schema": "by its Parquet type",
            "--categorical": "listed in --categorical",
            "": "every value parses as a number",
        }.get(why, f"{why} is not a number")
        log.info(
            "%s: column %r is %s (%s, in the chunk from row %d)",
            self.report.source,
            col.name,
            kind,
            reason,
            self.report.rows + 1,
        )

    def _numeric(self, col: ColumnReport, values: npt.NDArray[np.float64]) -> None:
        if not values.size:
            return
        if col.role == "dropped":
            self.stats.profile.dropped_features += int(values.size)
            return
        finite = int(np.count_nonzero(np.isfinite(values)))
        col.values += finite
        col.non_finite += int(values.size) - finite
        profile = self.stats.profile
        if col.role == "prediction":
            profile.add_outputs(values, primary=True)
        else:
            profile.add_numeric(col.name, values)

    def _categories(self, col: ColumnReport, labels: list[str]) -> None:
        if col.role == "dropped":
            self.stats.profile.dropped_features += len(labels)
        elif col.role == "prediction":
            col.values += len(labels)
            self._labels.update_many(labels)
        else:
            col.values += len(labels)
            self._counts[col.name].update_many(labels)

    def finish(self) -> PartialStats:
        """The categorical counts, re-capped like a merged reference; refuses no features."""
        profile = self.stats.profile
        for name, counts in self._counts.items():
            profile.categorical[name] = _recapped(counts)
        if self._labels.count:
            profile.primary_labels = _recapped(self._labels)
        if not profile.numeric and not profile.categorical:
            src = self.report.source
            if self.report.rows == 0:
                bad = f" ({self.report.bad_rows} lines were not JSON objects)"
                raise ConfigError(f"{src} has no rows{bad if self.report.bad_rows else ''}")
            cols = self.report.columns.values()
            features = [c.name for c in cols if c.role == "feature"]
            if not features:
                raise ConfigError(
                    f"{src}: no feature column (every column is the prediction, the label "
                    "or ignored)"
                )
            raise ConfigError(f"{src}: no feature column has a value in {self.report.rows} rows")
        return self.stats


def _recapped(counts: CategoryCounts) -> CategoryCounts:
    """The most frequent values, kept as a merged reference keeps them; a column with no
    more than the joiner's 64 values gets the joiner's cap, as :mod:`profile` restores it."""
    cap = CategoryCounts.DEFAULT_CAP if len(counts.counts) <= CategoryCounts.DEFAULT_CAP else 0
    return CategoryCounts.merged([counts], cap=cap or MERGE_CAP)


# -- readers ------------------------------------------------------------------------------


def _format_of(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        name = fmt.lower().lstrip(".")
        found = FORMATS.get(f".{name}")
        if found is None:
            raise ConfigError(f"unknown format {fmt!r}: use csv, parquet or jsonl")
        return found
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    found = FORMATS.get(suffixes[-1]) if suffixes else None
    if found is None:
        raise ConfigError(
            f"cannot tell the format of {path} from its name: pass --format csv, parquet or jsonl"
        )
    return found


def _text_file(path: Path) -> IO[str]:
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return path.open(encoding="utf-8-sig", newline="")


@contextlib.contextmanager
def _open_text(path: Path) -> Iterator[IO[str]]:
    """The file as text (UTF-8, a BOM dropped, gzip by suffix); read errors as ConfigError."""
    try:
        with _text_file(path) as f:
            yield f
    except FileNotFoundError as exc:
        raise ConfigError(f"{path} not found") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not UTF-8 text (a Parquet file? pass --format parquet)"
        ) from exc
    except (OSError, EOFError) as exc:  # unreadable, or a truncated or corrupt .gz
        raise ConfigError(f"cannot read {path}: {exc}") from exc


def _csv(path: Path, b: _Builder, chunk_rows: int, progress: Callable[[int], None]) -> None:
    with _open_text(path) as f:
        reader = csv.reader(f)
        try:
            header = next((row for row in reader if row), None)
            if header is None:
                raise ConfigError(f"{path} is empty")
            names = [h.strip() for h in header]
            dup = sorted({n for n in names if n and names.count(n) > 1})
            if dup:
                raise ConfigError(f"{path}: column {dup[0]!r} appears twice in the header")
            b.check_names(names)
            for name in names:
                b.column(name)
            width = len(names)
            chunk_rows = min(chunk_rows, max(1_000, CHUNK_CELLS // max(1, width)))
            while True:
                batch = list(islice(reader, chunk_rows))
                if not batch:
                    break
                rows = [r for r in batch if r]
                if any(len(r) != width for r in rows):
                    rows = [_fit(r, width, b.report) for r in rows]
                del batch
                if rows:
                    cols = dict(zip(names, zip(*rows, strict=True), strict=True))
                    n = len(rows)
                    del rows  # the cells live on in cols; the row lists can go
                    b.fold(n, cols, texts=True)
                    del cols
                    progress(b.report.rows)
        except csv.Error as exc:
            raise ConfigError(f"{path}, line {reader.line_num}: {exc}") from exc
    if b.report.rows == 0:
        raise ConfigError(f"{path} has a header but no rows")


def _fit(row: list[str], width: int, report: BaselineReport) -> list[str]:
    """A ragged CSV row: missing trailing cells are empty, extra ones are counted bad."""
    if len(row) < width:
        return row + [""] * (width - len(row))
    if len(row) > width:
        report.bad_rows += len(row) - width
        return row[:width]
    return row


def _jsonl(path: Path, b: _Builder, chunk_rows: int, progress: Callable[[int], None]) -> None:
    records: list[dict[str, Any]] = []
    first = True
    loads = json.loads

    def flush() -> None:
        keys = dict.fromkeys(k for rec in records for k in rec)
        b.fold(len(records), {k: [rec.get(k) for rec in records] for k in keys}, texts=False)
        records.clear()
        progress(b.report.rows)

    with _open_text(path) as f:
        for line in f:
            if not line or line.isspace():
                continue
            if first:
                first = False
                if line.lstrip().startswith("["):
                    raise ConfigError(
                        f"{path} holds a JSON array, not JSON lines (one object per line): "
                        "convert it, for example with jq -c '.[]'"
                    )
            try:
                rec = loads(line)
            except ValueError:
                rec = None
            if not isinstance(rec, dict):
                b.report.bad_rows += 1
                continue
            if not records and not b.report.rows:  # the first record: how wide a row is
                chunk_rows = min(chunk_rows, max(1_000, CHUNK_CELLS // max(1, len(rec))))
            records.append(rec)
            if len(records) >= chunk_rows:
                flush()
        if records:
            flush()
    if first:
        raise ConfigError(f"{path} is empty")
    b.check_names(list(b.report.columns))


def _pyarrow() -> tuple[Any, Any, Any]:
    """pyarrow, pyarrow.compute and pyarrow.parquet, or a ConfigError naming the package."""
    try:
        return (
            importlib.import_module("pyarrow"),
            importlib.import_module("pyarrow.compute"),
            importlib.import_module("pyarrow.parquet"),
        )
    except ImportError as exc:
        raise ConfigError(f"{_PARQUET_HINT} (or pip install 'understudy[all]')") from exc


def _parquet(path: Path, b: _Builder, chunk_rows: int, progress: Callable[[int], None]) -> None:
    pa, pc, pq = _pyarrow()
    if not path.exists():
        raise ConfigError(f"{path} not found")
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise ConfigError(f"{path} is not a Parquet file: {exc}") from exc
    schema = pf.schema_arrow
    names = list(schema.names)
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{path}: column {dup[0]!r} appears twice")
    b.check_names(names)
    wanted = []
    for name in names:
        col = b.column(name)
        if col.role in ("label", "ignored"):
            continue
        t = schema.field(name).type
        if pa.types.is_dictionary(t):
            t = t.value_type
        if _arrow_kind(pa, t) is None:
            col.role, col.why = "unread", f"Parquet type {t} is not a number, text or time"
            log.warning("%s: column %r not profiled: %s", path, name, col.why)
            continue
        wanted.append(name)
    if pf.metadata.num_rows == 0:
        raise ConfigError(f"{path} has no rows")
    try:
        for batch in pf.iter_batches(batch_size=chunk_rows, columns=wanted):
            cols = {
                name: _arrow_cells(pa, pc, batch.column(i), name in b.categorical)
                for i, name in enumerate(batch.schema.names)
            }
            b.fold(batch.num_rows, cols, texts=False)
            progress(b.report.rows)
    except (pa.ArrowException, OSError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


def _arrow_kind(pa: Any, t: Any) -> str | None:
    types = pa.types
    if types.is_integer(t) or types.is_floating(t) or types.is_decimal(t):
        return "number"
    if types.is_string(t) or types.is_large_string(t) or types.is_boolean(t):
        return "text"
    if getattr(types, "is_string_view", lambda _: False)(t):
        return "text"
    if types.is_temporal(t):
        return "time"
    return None


def _arrow_cells(pa: Any, pc: Any, arr: Any, categorical: bool) -> Cells | _Floats:
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    kind = _arrow_kind(pa, arr.type)
    if kind == "number" and not categorical:
        values = arr.drop_null().to_numpy(zero_copy_only=False)
        return _Floats(np.asarray(values, dtype=np.float64), int(arr.null_count))
    if kind == "time":
        arr = pc.cast(arr, pa.string())
    cells: list[Any] = arr.to_pylist()
    return cells


_READERS: Mapping[str, Callable[[Path, _Builder, int, Callable[[int], None]], None]] = {
    "csv": _csv,
    "jsonl": _jsonl,
    "parquet": _parquet,
}


# -- the API -------------------------------------------------------------------------------


def profile_file(
    path: Path,
    *,
    fmt: str | None = None,
    prediction_column: str | None = None,
    label_column: str | None = None,
    categorical: Sequence[str] = (),
    ignore: Sequence[str] = (),
    on_progress: Callable[[int], None] | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> Built:
    """:func:`build_baseline`, with the account of how each column was read.

    Raises
    ------
    ConfigError
        The file is missing, empty, unreadable, of an unknown format, has a header but no
        rows, names an unknown column, or has no feature with a value; Parquet without
        pyarrow installed.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    path = Path(path)
    kind = _format_of(path, fmt)
    report = BaselineReport(path, kind)
    builder = _Builder(
        report,
        prediction_column=prediction_column,
        label_column=label_column,
        categorical=categorical,
        ignore=ignore,
    )
    _READERS[kind](path, builder, chunk_rows, on_progress or (lambda _: None))
    return Built(builder.finish(), report)


def build_baseline(
    path: Path,
    *,
    fmt: str | None = None,
    prediction_column: str | None = None,
    label_column: str | None = None,
    categorical: Sequence[str] = (),
    ignore: Sequence[str] = (),
    on_progress: Callable[[int], None] | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> PartialStats:
    """The reference profile of a CSV, Parquet or JSON lines file (module docstring).

    ``on_progress`` is called with the rows read so far after each chunk.

    Examples
    --------
    >>> import shutil, tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "train.csv").write_text(
    ...     "sqft,city,price\\n50,Paris,300\\n70,Lyon,250\\n,Paris,410\\n-1.5,Nice,280\\n"
    ... )
    >>> stats = build_baseline(d / "train.csv", prediction_column="price")
    >>> stats.coverage["requests"], stats.profile.numeric["sqft"].count  # one cell empty
    (4, 3)
    >>> stats.profile.categorical["city"].counts
    {'Paris': 2, 'Lyon': 1, 'Nice': 1}
    >>> stats.profile.primary_output.count
    4
    >>> write_baseline(stats, d / "baseline.avro")
    >>> load_baseline(d / "baseline.avro") == stats
    True
    >>> shutil.rmtree(d)

    Raises
    ------
    ConfigError
        See :func:`profile_file`.
    """
    return profile_file(
        path,
        fmt=fmt,
        prediction_column=prediction_column,
        label_column=label_column,
        categorical=categorical,
        ignore=ignore,
        on_progress=on_progress,
        chunk_rows=chunk_rows,
    ).stats


def write_baseline(stats: PartialStats, out: Path) -> None:
    """Write ``stats`` as one Avro single-object ``Partial`` (candidate ``*``), atomically.

    Atomic (a temporary file, then a rename) so an evaluator never reads half a baseline.

    Raises
    ------
    ConfigError
        The file cannot be written.
    """
    out = Path(out)
    data = default_codec().encode("Partial", stats.to_partial(candidate=SHARED))
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, out)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ConfigError(f"cannot write baseline {out}: {exc.strerror or exc}") from exc


def load_baseline(path: Path) -> PartialStats:
    """Read a baseline written by :func:`write_baseline` (or any Avro writer of a Partial).

    Raises
    ------
    ConfigError
        The file is missing or unreadable, is not an Avro single-object ``Partial``, or
        profiles no feature (nothing to judge drift against).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(
            f"baseline {path} not found (build one: understudy baseline build --from FILE "
            f"--out {path})"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read baseline {path}: {exc.strerror or exc}") from exc
    try:
        stats = PartialStats.from_record(default_codec().decode_as("Partial", data))
    except (SchemaError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"{path} is not a baseline (an Avro single-object Partial): {exc}"
        ) from exc
    if not stats.profile.numeric and not stats.profile.categorical:
        raise ConfigError(f"baseline {path} profiles no feature: nothing to judge drift against")
    return stats


# -- the command ---------------------------------------------------------------------------


class _NameList(argparse.Action):
    """A repeatable option whose values may also be comma lists: ``--ignore a,b --ignore c``."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        names = list(getattr(namespace, self.dest, None) or [])
        names += _names([str(values)])
        setattr(namespace, self.dest, names)


def _names(values: Sequence[str] | None) -> list[str]:
    return [n.strip() for v in values or () for n in str(v).split(",") if n.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``understudy baseline build``, read by :func:`baseline_build`."""
    p.add_argument(
        "--from",
        dest="source",
        type=Path,
        required=True,
        metavar="FILE",
        help="CSV, Parquet or JSON lines file of requests (.csv, .parquet, .jsonl; .gz too)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("baseline.avro"),
        metavar="FILE",
        help="where to write the baseline (default: baseline.avro)",
    )
    p.add_argument(
        "--format",
        choices=["csv", "parquet", "jsonl"],
        default=None,
        help="the file's format, when its suffix does not say",
    )
    p.add_argument(
        "--prediction-column",
        default=None,
        metavar="NAME",
        help="the primary model's output in that data (numbers: regression; else labels)",
    )
    p.add_argument(
        "--label-column",
        default=None,
        metavar="NAME",
        help="the true value: not a feature, not profiled",
    )
    p.add_argument(
        "--categorical",
        action=_NameList,
        default=[],
        metavar="NAMES",
        help="columns to treat as categorical even if they look numeric (repeat, or a,b,c)",
    )
    p.add_argument(
        "--ignore",
        action=_NameList,
        default=[],
        metavar="NAMES",
        help="columns that are not features, such as ids (repeat, or a,b,c)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress; print one line")


class _Progress:
    """Rows read so far on stderr: a line every :attr:`EVERY` rows, rewritten on a tty."""

    EVERY = 100_000

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.next = self.EVERY
        self.t0 = time.monotonic()
        self.open_line = False

    def __call__(self, rows: int) -> None:
        if rows < self.next:
            return
        rate = rows / max(time.monotonic() - self.t0, 1e-9)
        text = f"read {rows:,} rows ({rate:,.0f} rows/s)"
        if self.tty:
            self.stream.write(f"\r{text}")
            self.stream.flush()
            self.open_line = True
            self.next = rows + 1
        else:
            print(text, file=self.stream, flush=True)
            self.next = (rows // self.EVERY + 1) * self.EVERY

    def end(self) -> None:
        if self.open_line:
            self.stream.write("\n")
            self.stream.flush()
            self.open_line = False


def baseline_build(args: argparse.Namespace) -> int:
    """``understudy baseline build``: profile ``args.source``, write ``args.out``, summarise.

    Returns 0, or 1 after one ``understudy: error: ...`` line on stderr for a bad input.
    """
    source, out = Path(args.source), Path(args.out)
    quiet = bool(getattr(args, "quiet", False))
    progress = _Progress(sys.stderr)
    t0 = time.monotonic()
    try:
        if out.resolve() == source.resolve():
            raise ConfigError(f"--out {out} is the input file: choose another name")
        built = profile_file(
            source,
            fmt=getattr(args, "format", None),
            prediction_column=getattr(args, "prediction_column", None),
            label_column=getattr(args, "label_column", None),
            categorical=_names(getattr(args, "categorical", None)),
            ignore=_names(getattr(args, "ignore", None)),
            on_progress=None if quiet else progress,
        )
        write_baseline(built.stats, out)
    except UnderstudyError as exc:
        progress.end()
        print(f"understudy: error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
        return 1
    progress.end()
    text = summary(built, out, time.monotonic() - t0)
    print(text.splitlines()[-1] if quiet else text, flush=True)
    return 0


def summary(built: Built, out: Path, seconds: float | None = None) -> str:
    """What was profiled, what was skipped, and where it went: the command's stdout."""
    r, p = built.report, built.stats.profile
    lines: list[str] = []
    took = f" in {seconds:.1f} s" if seconds is not None else ""
    lines.append(f"{r.source} ({r.format}): {r.rows:,} rows{took}")
    lines.append(
        f"column types decided from the first {r.first_chunk_rows:,} rows (a column empty"
        " there: from the first chunk where it has a value)"
    )
    numeric = [c for c in r.of_role("feature") if c.kind == "numeric"]
    if numeric:
        w = max(4, *(len(c.name) for c in numeric))
        lines.append(f"numeric features ({len(numeric)}):")
        lines.append(
            f"  {'name':<{w}}  {'count':>11}  {'p50':>12}  {'missing':>9}  {'bad':>7}"
            f"  {'non-finite':>10}"
        )
        for c in numeric:
            s = p.numeric.get(c.name)
            p50 = s.quantile(0.5) if s is not None and s.count else math.nan
            lines.append(
                f"  {c.name:<{w}}  {c.values:>11,}  {p50:>12.6g}  {c.missing:>9,}  {c.bad:>7,}"
                f"  {c.non_finite:>10,}"
            )
    cats = [c for c in r.of_role("feature") if c.kind == "categorical"]
    if cats:
        w = max(4, *(len(c.name) for c in cats))
        lines.append(f"categorical features ({len(cats)}):")
        lines.append(
            f"  {'name':<{w}}  {'count':>11}  {'distinct':>8}  {'missing':>9}  {'bad':>7}  why"
        )
        for c in cats:
            counts = p.categorical.get(c.name)
            distinct = len(counts.counts) if counts is not None else 0
            more = "+" if counts is not None and counts.overflow else ""
            why = "--categorical" if c.why == "--categorical" else f"{c.why} is not a number"
            lines.append(
                f"  {c.name:<{w}}  {c.values:>11,}  {f'{distinct}{more}':>8}  {c.missing:>9,}"
                f"  {c.bad:>7,}  {why}"
            )
    for c in r.of_role("prediction"):
        if c.kind == "numeric" and p.primary_output is not None:
            what = f"regression outputs, p50 {p.primary_output.quantile(0.5):.6g}"
        elif p.primary_labels is not None:
            what = f"class labels, {len(p.primary_labels.counts)} distinct"
        else:
            what = "no value"
        lines.append(f"prediction {c.name}: {c.values:,} {what}")
    skipped = [
        f"{role} {', '.join(c.name or '(unnamed)' for c in r.of_role(role))}"
        for role in ("label", "ignored", "unread", "dropped")
        if r.of_role(role)
    ]
    empty = [c.name for c in r.of_role("feature") if c.kind is None]
    if empty:
        skipped.append(f"no value in any row: {', '.join(empty)}")
    if skipped:
        lines.append("not profiled: " + "; ".join(skipped))
    cols = [c for c in r.columns.values() if c.role in ("feature", "prediction")]
    missing = sum(c.missing for c in cols)
    bad = sum(c.bad for c in cols)
    non_finite = sum(c.non_finite for c in cols)
    bad_rows = ""
    if r.bad_rows:
        bad_rows = (
            f", {r.bad_rows:,} lines not JSON objects"
            if r.format == "jsonl"
            else f", {r.bad_rows:,} cells beyond the header"
        )
    lines.append(
        f"skipped: {missing:,} empty cells, {bad:,} bad cells, {non_finite:,} non-finite{bad_rows}"
    )
    n_cat, n_num = len(p.categorical), len(p.numeric)
    lines.append(f"wrote {out}: {r.rows:,} rows, {n_num} numeric and {n_cat} categorical features")
    return "\n".join(lines)
