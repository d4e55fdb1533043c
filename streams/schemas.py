"""Avro codec over the ``.avsc`` files in ``schemas/``: the contract with other services.

Without a schema registry every message is Avro *single-object encoding*: ``C3 01``, the
8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's Parsing Canonical Form,
then the Avro binary body. A reader therefore always knows which schema wrote a message,
and any Avro implementation given the ``.avsc`` files can decode it.

Schema history: ``schemas/<Name>.avsc`` is the current version, the one writers write;
every released version is kept as ``schemas/history/<Name>/v<N>.avsc``. The codec knows the
fingerprint of every version and reads a message written with an older one into the
current schema by Avro schema resolution (fields the writer did not know take their
defaults), so internal state written before an upgrade (joiner changelog, evaluator
tables) restores after it. A message of the current version is read with no resolution at
all: the hot path costs what it cost before there was a history. A fingerprint the codec
does not know is a :class:`~streams.errors.SchemaError` that says what to do (readers
upgrade before writers); callers turn it into a dead letter. ``schemas/README.md`` states
the compatibility rules every new version follows.

Internally the schemas are parsed once with their ``timestamp-millis`` logical types
removed: the bytes are identical (a long) and the fingerprint too (canonical form drops
logical types), but fastavro then reads and writes plain integers of milliseconds instead
of building ``datetime`` objects on the hot path. Each version is parsed on its own, with
its own named types (every version defines an ``io.understudy.events.Coverage``, for
instance), so versions never see each other's definitions.
"""

from __future__ import annotations

import copy
import io
import json
import os
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from streams.errors import SchemaError

MAGIC = b"\xc3\x01"
HEADER_LEN = 10

#: Event names, one ``<name>.avsc`` each.
EVENTS = (
    "Request",
    "Prediction",
    "Label",
    "Partial",
    "MetricSnapshot",
    "DeadLetter",
    "Alert",
    "Verdict",
    "Control",
    "TapStats",
)

#: Where released versions live, under the schema directory: ``history/<name>/v<N>.avsc``.
HISTORY = "history"

Record = dict[str, Any]
#: A field resolution fills in: its path, its default in Python, whether that is mutable.
Fill = tuple[tuple[str, ...], Any, bool]

_PACKAGED = Path(__file__).resolve().parent / "_schemas"  # an installed wheel
_CHECKOUT = Path(__file__).resolve().parent.parent / "schemas"  # a checkout (editable install)


def schema_dir() -> Path:
    """Where the ``.avsc`` files are.

    ``$UNDERSTUDY_SCHEMA_DIR`` if set; else the copy an installed wheel carries
    (``streams/_schemas``, built from the top-level ``schemas/``, the one source); else
    ``schemas/`` of the checkout this module runs from.
    """
    env = os.environ.get("UNDERSTUDY_SCHEMA_DIR")
    if env:
        return Path(env)
    if _PACKAGED.is_dir():
        return _PACKAGED
    return _CHECKOUT


def _strip_logical(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_logical(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical(v) for v in node]
    return node


class Schema:
    """One parsed version of one event schema, with its single-object header.

    ``version`` is its number in the history (None for a current schema not released
    yet). A version older than the current one reads its bodies into the current schema:
    see :meth:`resolve_into`.
    """

    def __init__(self, name: str, raw: dict[str, Any], version: int | None = None) -> None:
        self.name = name
        self.raw = raw
        self.version = version
        # parse_schema gives each call its own named types: versions do not clash
        self.parsed = parse_schema(_strip_logical(copy.deepcopy(raw)))
        fp = fingerprint(to_parsing_canonical_form(parse_schema(copy.deepcopy(raw))), "CRC-64-AVRO")
        self.fingerprint = bytes.fromhex(fp)
        self.header = MAGIC + self.fingerprint
        self.label = name  # in errors; an older version adds its number
        self._reader: Any = None  # None: read with this schema, no resolution
        self._fills: tuple[Fill, ...] = ()
        self._copy_all = False

    def resolve_into(self, current: Schema) -> None:
        """Read this version's bodies into ``current`` by Avro schema resolution."""
        if current.fingerprint == self.fingerprint:
            return  # same canonical form: same bytes, nothing to resolve
        self._reader = current.parsed
        self.label = f"{self.name} v{self.version}"
        fills = _filled_defaults(self.raw, current.raw)
        self._copy_all = fills is None
        self._fills = tuple(fills or ())

    def encode(self, record: Record) -> bytes:
        buf = io.BytesIO()
        buf.write(self.header)
        try:
            schemaless_writer(buf, self.parsed, record, strict_allow_default=True)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise SchemaError(f"cannot encode {self.label}: {exc}") from exc
        return buf.getvalue()

    def decode_body(self, data: bytes) -> Record:
        try:
            rec = schemaless_reader(io.BytesIO(data[HEADER_LEN:]), self.parsed, self._reader)
        except Exception as exc:  # fastavro raises many types on corrupt bodies
            raise SchemaError(f"cannot decode {self.label} body: {exc!r}") from exc
        if not isinstance(rec, dict):
            raise SchemaError(f"{self.label} body did not decode to a record")
        if self._reader is not None:
            self._fill_defaults(rec)
        return rec

    def _fill_defaults(self, rec: Record) -> None:
        # see _filled_defaults: what fastavro filled in is shared or mistyped
        if self._copy_all:
            rec.update(copy.deepcopy(rec))
            return
        for path, value, mutable in self._fills:
            node = rec
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = copy.deepcopy(value) if mutable else value


def _filled_defaults(writer: Any, reader: Any) -> list[Fill] | None:
    """The reader's fields that resolution fills with a default the codec must replace.

    fastavro sets a field the writer lacked to the reader schema's default object itself:
    the same map or list for every record (a caller adding to it would add to every later
    record's default), and a ``bytes`` or ``fixed`` default as the JSON string the schema
    writes it as. The codec puts a fresh, correctly typed value there instead. Records
    nested in records are followed; None when such a field sits inside an array, map or
    union (then the whole decoded record is copied, and such a bytes default stays a str).
    """
    w_named: dict[str, Any] = {}
    r_named: dict[str, Any] = {}
    fills: list[Fill] = []

    def define(node: Any, named: dict[str, Any], ns: str) -> Any:
        """The definition behind a type, registering every named type on the way."""
        if isinstance(node, str):
            return named.get(node) or named.get(f"{ns}.{node}") or node
        if isinstance(node, dict) and node.get("type") in ("record", "enum", "fixed"):
            space = node.get("namespace", ns)
            full = node["name"] if "." in node["name"] else f"{space}.{node['name']}"
            named.setdefault(full, node)
        return node

    def python(node: Any, value: Any, ns: str) -> Any:
        """A JSON default as the Python value a reader gets (bytes from their string form)."""
        node = define(node, r_named, ns)
        if isinstance(node, list):  # a union's default is of its first branch
            return python(node[0], value, ns) if node else value
        kind = node.get("type") if isinstance(node, dict) else node
        if kind in ("bytes", "fixed") and isinstance(value, str):
            return value.encode("latin-1")
        if kind == "record" and isinstance(value, dict):
            space = node.get("namespace", ns)
            return {
                f["name"]: python(f["type"], value.get(f["name"], f.get("default")), space)
                for f in node["fields"]
            }
        if kind == "array" and isinstance(value, list):
            return [python(node["items"], v, ns) for v in value]
        if kind == "map" and isinstance(value, dict):
            return {k: python(node["values"], v, ns) for k, v in value.items()}
        return value

    def needs_fill(field: dict[str, Any], ns: str) -> bool:
        default = field.get("default")
        return isinstance(default, dict | list) or python(field["type"], default, ns) != default

    def deep(node: Any, ns: str) -> bool:
        """Whether a reader type holds a record with such a field anywhere inside."""
        node = define(node, r_named, ns)
        if isinstance(node, list):
            return any(deep(b, ns) for b in node)
        if not isinstance(node, dict):
            return False
        kind = node.get("type")
        if kind == "record":
            space = node.get("namespace", ns)
            return any(
                ("default" in f and needs_fill(f, space)) or deep(f["type"], space)
                for f in node["fields"]
            )
        if kind == "array":
            return deep(node["items"], ns)
        if kind == "map":
            return deep(node["values"], ns)
        return False

    def walk(w: Any, r: Any, ns_w: str, ns_r: str, where: tuple[str, ...]) -> bool:
        w = define(w, w_named, ns_w)
        r = define(r, r_named, ns_r)
        if not (isinstance(r, dict) and r.get("type") == "record" and isinstance(w, dict)):
            return not deep(r, ns_r)
        ns_w, ns_r = w.get("namespace", ns_w), r.get("namespace", ns_r)
        w_fields = {f["name"]: f for f in w.get("fields", [])}
        for f in w.get("fields", []):
            define(f["type"], w_named, ns_w)
        ok = True
        for f in r["fields"]:
            if f["name"] in w_fields:
                ok &= walk(w_fields[f["name"]]["type"], f["type"], ns_w, ns_r, (*where, f["name"]))
            elif "default" in f:
                if needs_fill(f, ns_r):
                    value = python(f["type"], f["default"], ns_r)
                    fills.append(((*where, f["name"]), value, isinstance(value, dict | list)))
                ok &= not deep(f["type"], ns_r)
        return ok

    return fills if walk(writer, reader, "", "", ()) else None


class Codec:
    """Encodes every event by name; decodes a message written with any known version.

    ``schemas[name]`` is the current version of each event (what :meth:`encode` writes),
    ``versions[name][n]`` every released version.
    """

    def __init__(self, directory: Path | None = None) -> None:
        directory = directory or schema_dir()
        if not directory.is_dir():
            raise SchemaError(f"schema directory {directory} not found (set UNDERSTUDY_SCHEMA_DIR)")
        self.schemas: dict[str, Schema] = {}
        self.versions: dict[str, dict[int, Schema]] = {}
        self._by_fp: dict[bytes, Schema] = {}
        for name in EVENTS:
            raw = _read(directory / f"{name}.avsc")
            history = {n: _read(p) for n, p in _history_files(directory / HISTORY / name)}
            released = [n for n, old in history.items() if old == raw]
            current = Schema(name, raw, released[-1] if released else None)
            versions = {
                n: current if n in released else Schema(name, old, n) for n, old in history.items()
            }
            for old in versions.values():
                old.resolve_into(current)
                self._by_fp[old.fingerprint] = old  # a later version wins an equal fingerprint
            self._by_fp[current.fingerprint] = current
            self.schemas[name] = current
            self.versions[name] = versions

    def encoder(self, name: str) -> Callable[[Record], bytes]:
        return self.schemas[name].encode

    def encode(self, name: str, record: Record) -> bytes:
        return self.schemas[name].encode(record)

    def decode(self, data: bytes | None) -> tuple[str, Record]:
        """Decode any single-object message; returns the event name and the record.

        The record is in the current schema whichever known version wrote it.
        """
        schema = self._schema_of(data)
        assert data is not None
        return schema.name, schema.decode_body(data)

    def decode_as(self, name: str, data: bytes | None) -> Record:
        """Decode a message that must be of event ``name``; anything else is a SchemaError."""
        schema = self._schema_of(data)
        if schema.name != name:
            raise SchemaError(f"expected a {name} message, got {schema.name}")
        assert data is not None
        return schema.decode_body(data)

    def _schema_of(self, data: bytes | None) -> Schema:
        if data is None:
            raise SchemaError("message has no value (tombstone)")
        if len(data) < HEADER_LEN or data[:2] != MAGIC:
            raise SchemaError("not Avro single-object encoded (missing C3 01 header)")
        schema = self._by_fp.get(data[2:HEADER_LEN])
        if schema is None:
            raise SchemaError(
                f"unknown writer schema fingerprint {data[2:HEADER_LEN].hex()}: written by a "
                "newer Understudy or another producer; upgrade this reader (readers upgrade "
                "before writers) or check the producer's schemas"
            )
        return schema


def _read(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SchemaError(f"cannot read schema {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise SchemaError(f"schema {path} is not a JSON object")
    return raw


def _history_files(directory: Path) -> list[tuple[int, Path]]:
    """``v<N>.avsc`` files of one event, by version number (none: no history)."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.glob("*.avsc"):
        if not (path.stem.startswith("v") and path.stem[1:].isdigit()):
            raise SchemaError(f"schema history file {path} is not named v<N>.avsc")
        found.append((int(path.stem[1:]), path))
    return sorted(found)


@cache
def default_codec() -> Codec:
    """The process-wide codec over :func:`schema_dir` (parsing schemas once matters)."""
    return Codec()
