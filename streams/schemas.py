"""Avro codec over the ``.avsc`` files in ``schemas/``: the contract with other services.

Without a schema registry every message is Avro *single-object encoding*: ``C3 01``, the
8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's Parsing Canonical Form,
then the Avro binary body. A reader therefore always knows which schema wrote a message,
and any Avro implementation given the ``.avsc`` files can decode it.

Internally the schemas are parsed once with their ``timestamp-millis`` logical types
removed: the bytes are identical (a long) and the fingerprint too (canonical form drops
logical types), but fastavro then reads and writes plain integers of milliseconds instead
of building ``datetime`` objects on the hot path.
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
EVENTS = ("Request", "Prediction", "Label", "Partial", "MetricSnapshot", "DeadLetter")

Record = dict[str, Any]


def schema_dir() -> Path:
    """Where the ``.avsc`` files are: ``$UNDERSTUDY_SCHEMA_DIR`` or ``schemas/`` of the repo."""
    env = os.environ.get("UNDERSTUDY_SCHEMA_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "schemas"


def _strip_logical(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_logical(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical(v) for v in node]
    return node


class Schema:
    """One parsed event schema with its single-object header."""

    def __init__(self, name: str, raw: dict[str, Any]) -> None:
        self.name = name
        self.raw = raw
        self.parsed = parse_schema(_strip_logical(copy.deepcopy(raw)))
        fp = fingerprint(to_parsing_canonical_form(parse_schema(copy.deepcopy(raw))), "CRC-64-AVRO")
        self.fingerprint = bytes.fromhex(fp)
        self.header = MAGIC + self.fingerprint

    def encode(self, record: Record) -> bytes:
        buf = io.BytesIO()
        buf.write(self.header)
        try:
            schemaless_writer(buf, self.parsed, record, strict_allow_default=True)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise SchemaError(f"cannot encode {self.name}: {exc}") from exc
        return buf.getvalue()

    def decode_body(self, data: bytes) -> Record:
        try:
            rec = schemaless_reader(io.BytesIO(data[HEADER_LEN:]), self.parsed, None)
        except Exception as exc:  # fastavro raises many types on corrupt bodies
            raise SchemaError(f"cannot decode {self.name} body: {exc!r}") from exc
        if not isinstance(rec, dict):
            raise SchemaError(f"{self.name} body did not decode to a record")
        return rec


class Codec:
    """Encodes and decodes every event by name; decodes any message by its fingerprint."""

    def __init__(self, directory: Path | None = None) -> None:
        directory = directory or schema_dir()
        if not directory.is_dir():
            raise SchemaError(f"schema directory {directory} not found (set UNDERSTUDY_SCHEMA_DIR)")
        self.schemas: dict[str, Schema] = {}
        for name in EVENTS:
            path = directory / f"{name}.avsc"
            try:
                raw = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise SchemaError(f"cannot read schema {path}: {exc}") from exc
            self.schemas[name] = Schema(name, raw)
        self._by_fp = {s.fingerprint: s for s in self.schemas.values()}

    def encoder(self, name: str) -> Callable[[Record], bytes]:
        return self.schemas[name].encode

    def encode(self, name: str, record: Record) -> bytes:
        return self.schemas[name].encode(record)

    def decode(self, data: bytes | None) -> tuple[str, Record]:
        """Decode any single-object message; returns the event name and the record."""
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
            raise SchemaError(f"unknown writer schema fingerprint {data[2:HEADER_LEN].hex()}")
        return schema


@cache
def default_codec() -> Codec:
    """The process-wide codec over :func:`schema_dir` (parsing schemas once matters)."""
    return Codec()
