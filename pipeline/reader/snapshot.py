"""Reading tables for snapshots: catalog introspection and key-ordered chunks.

Rows are read as their types' text output, the same representation pgoutput
sends, and converted by the same :class:`~pipeline.reader.relations.RelationCache`
as streamed rows, so a snapshot read and a streamed change of the same row give
identical values and identical schemas.  The table's shape is described by a
synthesized pgoutput ``Relation`` message built from the catalog.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import cast

import psycopg
from psycopg import sql
from psycopg.abc import Buffer
from psycopg.adapt import Loader

from pipeline.reader.errors import ReaderError
from pipeline.reader.pgoutput import RawTuple, Relation, RelationColumn, Type
from pipeline.values import BUILTIN_TYPE_NAMES


class SnapshotError(ReaderError):
    """A table could not be described or read for a snapshot."""


@dataclass(frozen=True, slots=True)
class TableShape:
    """A published table as the catalog describes it, ready for chunked reads."""

    relation: Relation
    types: tuple[Type, ...]
    key_types: tuple[str, ...]
    """``format_type`` of each key column, for the typed keyset comparison."""

    @property
    def key_positions(self) -> tuple[int, ...]:
        return tuple(i for i, c in enumerate(self.relation.columns) if c.is_key)


def describe_table(
    conn: psycopg.Connection[tuple[object, ...]], schema: str, table: str
) -> TableShape:
    """The table's shape from the catalog, as a pgoutput Relation keyed by primary key.

    (pgoutput flags the replica identity's columns; events are keyed by the primary
    key, so key flags here mark the primary key, or the identity index for ``'i'``.)
    """
    row = conn.execute(
        "SELECT c.oid, c.relreplident FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
        (schema, table),
    ).fetchone()
    if row is None:
        raise SnapshotError(f"table {schema}.{table} does not exist")
    oid, replident = int(str(row[0])), str(row[1])
    cols = conn.execute(
        """
        SELECT a.attname, a.atttypid, a.atttypmod,
               coalesce(a.attnum = ANY(i.indkey), false) AS is_key,
               format_type(a.atttypid, a.atttypmod)
        FROM pg_attribute a
        LEFT JOIN pg_index i ON i.indrelid = a.attrelid
             AND (CASE WHEN %s = 'i' THEN i.indisreplident ELSE i.indisprimary END)
        WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
              AND a.attgenerated = ''
        ORDER BY a.attnum
        """,
        (replident, oid),
    ).fetchall()
    columns = tuple(
        RelationColumn(
            flags=1 if is_key else 0,
            name=str(name),
            type_oid=int(str(typid)),
            type_modifier=int(str(typmod)),
        )
        for name, typid, typmod, is_key, _ in cols
    )
    if replident == "n" or not any(is_key for _, _, _, is_key, _ in cols):
        raise SnapshotError(
            f"table {schema}.{table} has no primary key: catalog-cdc keys every event by the "
            "primary key; add one (ALTER TABLE ... ADD PRIMARY KEY)"
        )
    key_types = tuple(str(fmt) for _, _, _, is_key, fmt in cols if is_key)
    types = _user_types(conn, {c.type_oid for c in columns})
    relation = Relation(
        relation_id=oid, namespace=schema, name=table, replica_identity=replident, columns=columns
    )
    return TableShape(relation=relation, types=types, key_types=key_types)


def _user_types(conn: psycopg.Connection[tuple[object, ...]], oids: set[int]) -> tuple[Type, ...]:
    """Type messages for non-built-in types, as pgoutput sends them (domains: base type)."""
    unknown = sorted(o for o in oids if o not in BUILTIN_TYPE_NAMES)
    if not unknown:
        return ()
    rows = conn.execute(
        """
        SELECT t.oid,
               CASE WHEN t.typtype = 'd' THEN bn.nspname ELSE n.nspname END,
               CASE WHEN t.typtype = 'd' THEN b.typname ELSE t.typname END
        FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        LEFT JOIN pg_type b ON b.oid = t.typbasetype
        LEFT JOIN pg_namespace bn ON bn.oid = b.typnamespace
        WHERE t.oid = ANY(%s)
        """,
        (unknown,),
    ).fetchall()
    return tuple(
        Type(
            type_oid=int(str(oid)),
            namespace="" if str(ns) == "pg_catalog" else str(ns),
            name=str(name),
        )
        for oid, ns, name in rows
    )


def read_chunk(
    conn: psycopg.Connection[tuple[object, ...]],
    shape: TableShape,
    *,
    after: Sequence[bytes | None] | None,
    limit: int,
    until: Sequence[bytes | None] | None = None,
) -> list[RawTuple]:
    """Up to ``limit`` rows with key > ``after`` (and <= ``until``), in key order, as text.

    ``after``/``until`` are key values in their text form (as returned in a chunk).
    """
    rel = shape.relation
    table = sql.Identifier(rel.namespace, rel.name)
    select_list = sql.SQL(", ").join(sql.Identifier(c.name) for c in rel.columns)
    key_cols = [sql.Identifier(rel.columns[i].name) for i in shape.key_positions]
    key_tuple = sql.SQL("({})").format(sql.SQL(", ").join(key_cols))

    def typed(values: Sequence[bytes | None]) -> tuple[sql.Composable, list[str | None]]:
        parts = [
            sql.SQL("CAST({} AS {})").format(sql.Placeholder(), sql.SQL(t))  # type from catalog
            for t in shape.key_types
        ]
        params = [None if v is None else v.decode() for v in values]
        return sql.SQL("({})").format(sql.SQL(", ").join(parts)), params

    where: list[sql.Composable] = []
    params: list[str | None] = []
    if after is not None:
        expr, p = typed(after)
        where.append(sql.SQL("{} > {}").format(key_tuple, expr))
        params += p
    if until is not None:
        expr, p = typed(until)
        where.append(sql.SQL("{} <= {}").format(key_tuple, expr))
        params += p
    query = sql.SQL("SELECT {} FROM {} {} ORDER BY {} LIMIT {}").format(
        select_list,
        table,
        sql.SQL("WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL(""),
        sql.SQL(", ").join(key_cols),
        sql.Literal(limit),
    )
    with conn.cursor(binary=False) as cur:
        # Every column arrives as the bytes of its type's output function: exactly
        # what pgoutput sends (a ``::text`` cast is not always that: bool gives 'true').
        for oid in {c.type_oid for c in rel.columns}:
            cur.adapters.register_loader(oid, _RawText)
        cur.execute(query, params)
        return [cast(RawTuple, tuple(record)) for record in cur]


class _RawText(Loader):
    """Loads a text-format value as its raw bytes."""

    def load(self, data: Buffer) -> bytes:
        return bytes(data)


def iter_chunks(
    conn: psycopg.Connection[tuple[object, ...]], shape: TableShape, chunk_size: int
) -> Iterator[list[RawTuple]]:
    """Every row of the table, in key order, ``chunk_size`` rows at a time."""
    after: tuple[bytes | None, ...] | None = None
    while True:
        chunk = read_chunk(conn, shape, after=after, limit=chunk_size)
        if not chunk:
            return
        yield chunk
        last = chunk[-1]
        after = tuple(_as_text(last[i]) for i in shape.key_positions)
        if len(chunk) < chunk_size:
            return


def _as_text(value: object) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    raise SnapshotError(f"unexpected key value {value!r} in a snapshot chunk")


def prepare_snapshot_session(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Session settings that make text output match the walsender's parseable forms."""
    conn.execute("SET TimeZone = 'UTC'")
    conn.execute("SET DateStyle = 'ISO, MDY'")
    conn.execute("SET IntervalStyle = 'postgres'")
    conn.execute("SET extra_float_digits = 3")
    conn.execute("SET bytea_output = 'hex'")
