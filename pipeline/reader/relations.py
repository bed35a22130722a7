"""The reader's knowledge of published tables: Relation/Type messages -> row images.

:class:`RelationCache` keeps, per relation id, the schema of the *newest* Relation
message and the per-column converters compiled for it.  pgoutput sends a Relation message
before the first change of a table in the session and again after any change of its
shape, always before the rows that use the new shape; applying every Relation message in
stream order therefore keeps rows and schemas in step, also across ALTER TABLE.

Row conversion never loses a value silently: a value that does not convert raises
:class:`~pipeline.values.ValueConversionError` (table, column, type, offending
text); a tuple whose width differs from the schema raises
:class:`~pipeline.values.SchemaMismatchError`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, NoReturn

from pipeline.events import UNCHANGED_TOAST, Column, Row, TableSchema
from pipeline.reader.errors import UnknownRelationError
from pipeline.reader.pgoutput import Relation, Type
from pipeline.values import (
    BUILTIN_TYPE_NAMES,
    BUILTIN_TYPE_OIDS,
    CONVERSION_ERRORS,
    Converter,
    RawTuple,
    SchemaMismatchError,
    converter_for,
    raise_conversion_error,
)

__all__ = ["RelationCache"]


@dataclass(frozen=True, slots=True)
class _Compiled:
    """One relation version, ready for conversion."""

    schema: TableSchema
    names: tuple[str, ...]
    converters: tuple[Converter, ...]
    key_positions: tuple[int, ...]
    key_names: tuple[str, ...]
    key_converters: tuple[Converter, ...]


class RelationCache:
    """Schemas of the published tables seen on one replication stream, and row conversion.

    Not thread-safe; one per replication stream.  Types: built-in OIDs are known
    statically (:data:`~pipeline.values.BUILTIN_TYPE_NAMES`); other types by the
    Type messages applied.  A type sent as a domain over a built-in type (a Type message
    naming a ``pg_catalog`` type) converts like that built-in type; enums, composites and
    other user types become ``str``.
    """

    def __init__(self) -> None:
        self._relations: dict[int, Relation] = {}
        self._types: dict[int, Type] = {}
        self._compiled: dict[int, _Compiled] = {}

    # ------------------------------------------------------------------ messages

    def apply(self, message: Relation | Type) -> TableSchema | None:
        """Apply a Relation (returns its new schema) or a Type message (returns ``None``)."""
        if isinstance(message, Relation):
            return self.apply_relation(message)
        self.apply_type(message)
        return None

    def apply_relation(self, message: Relation) -> TableSchema:
        """Make ``message`` the current shape of its relation; return the new schema."""
        self._relations[message.relation_id] = message
        compiled = self._compile(message)
        self._compiled[message.relation_id] = compiled
        return compiled.schema

    def apply_type(self, message: Type) -> None:
        """Record a type; recompile the relations that use it if it changed."""
        if self._types.get(message.type_oid) == message:
            return
        self._types[message.type_oid] = message
        for relation in self._relations.values():
            if any(c.type_oid == message.type_oid for c in relation.columns):
                self._compiled[relation.relation_id] = self._compile(relation)

    # ------------------------------------------------------------------ lookups

    def __contains__(self, relation_id: object) -> bool:
        return relation_id in self._compiled

    def schema(self, relation_id: int) -> TableSchema:
        """The newest schema of ``relation_id``; raises UnknownRelationError if none."""
        return self._get(relation_id).schema

    def schemas(self) -> Iterable[TableSchema]:
        """The newest schema of every relation seen."""
        return [c.schema for c in self._compiled.values()]

    def type_name(self, type_oid: int) -> str | None:
        """The type's name from a Type message or the built-in map; ``None`` if unknown."""
        typ = self._types.get(type_oid)
        if typ is not None:
            return typ.name
        return BUILTIN_TYPE_NAMES.get(type_oid)

    def converter(self, type_oid: int) -> Converter:
        """The converter used for columns of ``type_oid`` (see the class docstring)."""
        if type_oid in BUILTIN_TYPE_NAMES:
            return converter_for(type_oid)
        typ = self._types.get(type_oid)
        if typ is not None and typ.namespace in ("", "pg_catalog"):
            base = BUILTIN_TYPE_OIDS.get(typ.name)
            if base is not None:
                return converter_for(base)
        return converter_for(type_oid)

    # ------------------------------------------------------------------ rows

    def row(self, relation_id: int, values: RawTuple, *, kind: Literal["N", "O", "K"] = "N") -> Row:
        """Convert a tuple of ``relation_id`` to ``{column: value}``.

        ``kind`` is the tuple's kind: ``'N'`` (new row) and ``'O'`` (whole old row) give
        every column; ``'K'`` (old replica identity) gives only the replica-identity
        columns, since the others are not sent.  NULL is ``None``; an unchanged TOASTed
        value is :data:`~pipeline.events.UNCHANGED_TOAST`.

        Raises UnknownRelationError, SchemaMismatchError or ValueConversionError.
        """
        compiled = self._compiled.get(relation_id) or self._get(relation_id)
        if len(values) != len(compiled.names):
            raise SchemaMismatchError(
                f"a tuple of {compiled.schema.qualified_name} (relation id {relation_id}) has"
                f" {len(values)} columns but its newest Relation message has"
                f" {len(compiled.names)}: a Relation message was lost or applied out of order"
            )
        try:
            if kind == "K":
                return {
                    name: value if value is None or value is UNCHANGED_TOAST else convert(value)  # type: ignore[arg-type]  # BinaryValue: see below
                    for name, convert, value in zip(
                        compiled.key_names,
                        compiled.key_converters,
                        [values[i] for i in compiled.key_positions],
                        strict=True,
                    )
                }
            return {
                name: value if value is None or value is UNCHANGED_TOAST else convert(value)  # type: ignore[arg-type]  # BinaryValue: see below
                for name, convert, value in zip(
                    compiled.names, compiled.converters, values, strict=True
                )
            }
        except CONVERSION_ERRORS:
            pass
        # Slow path, only on failure: find the column and report it.  A BinaryValue is
        # deliberately not screened out above (that would cost a check per value): every
        # converter raises one of CONVERSION_ERRORS on it (a unit test holds them to it),
        # and the slow path turns that into a clear "binary format" error.
        self._raise_conversion_error(compiled, values)

    def key(self, relation_id: int, row: Row) -> Row:
        """The replica-identity columns of ``row`` (empty with REPLICA IDENTITY NOTHING).

        With REPLICA IDENTITY FULL every column is part of the identity.  Raises
        SchemaMismatchError if ``row`` lacks one of them.
        """
        compiled = self._get(relation_id)
        try:
            return {name: row[name] for name in compiled.key_names}
        except KeyError as exc:
            raise SchemaMismatchError(
                f"row of {compiled.schema.qualified_name} lacks replica-identity column {exc}"
            ) from exc

    # ------------------------------------------------------------------ internals

    def _get(self, relation_id: int) -> _Compiled:
        compiled = self._compiled.get(relation_id)
        if compiled is None:
            raise UnknownRelationError(
                f"no Relation message seen for relation id {relation_id}: the stream must be"
                " read from the start of a transaction with one RelationCache per session"
            )
        return compiled

    def _compile(self, message: Relation) -> _Compiled:
        columns = tuple(
            Column(
                name=c.name,
                type_oid=c.type_oid,
                type_modifier=c.type_modifier,
                is_key=c.is_key,
                type_name=self.type_name(c.type_oid),
            )
            for c in message.columns
        )
        schema = TableSchema(
            relation_id=message.relation_id,
            schema=message.namespace or "pg_catalog",
            table=message.name,
            columns=columns,
            replica_identity=message.replica_identity,
        )
        converters = tuple(self.converter(c.type_oid) for c in columns)
        key_positions = tuple(i for i, c in enumerate(columns) if c.is_key)
        return _Compiled(
            schema=schema,
            names=tuple(c.name for c in columns),
            converters=converters,
            key_positions=key_positions,
            key_names=tuple(columns[i].name for i in key_positions),
            key_converters=tuple(converters[i] for i in key_positions),
        )

    def _raise_conversion_error(self, compiled: _Compiled, values: RawTuple) -> NoReturn:
        schema = compiled.schema
        raise_conversion_error(
            schema, zip(schema.columns, compiled.converters, values, strict=True)
        )
