"""The reader's state, shared by the layers the :class:`~pipeline.reader.service.Reader`
is built from.

The reader is one object in layers, one module per seam, each a subclass of the one
before: :class:`ReaderBase` (this module: settings, clients, caches, the transaction
being read) <- :class:`~pipeline.reader.emit.EmitPath` (encode and produce, partitions,
tombstones) <- :class:`~pipeline.reader.translate.Translation` (pgoutput messages to
events, the Insert hot path) <- :class:`~pipeline.reader.stream.Streaming` (the stream
loop, confirmation, heartbeats) <- :class:`~pipeline.reader.service.Reader` (set-up,
slot and snapshot, :meth:`~pipeline.reader.service.Reader.run`).  Layers, not separate
objects, because the streaming hot path reads this state once per change: an
attribute of ``self`` costs less than one of a collaborator.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import psycopg
from confluent_kafka import Producer

from pipeline.codec import EventCodec, make_codec
from pipeline.codec.raw_framed import FramedRawEncoder
from pipeline.events import TableSchema
from pipeline.reader import pgoutput as po
from pipeline.reader.acks import AckTracker, _Tx
from pipeline.reader.incremental import IncrementalSnapshot
from pipeline.reader.metrics import ReaderMetrics
from pipeline.reader.relations import RelationCache
from pipeline.reader.settings import ReaderSettings
from pipeline.reader.setup import split_table
from pipeline.topics import raw_topic


@dataclasses.dataclass(slots=True)
class HotEntry:
    """What the streaming hot path needs of one relation id's newest schema.

    Made on the relation's first change and dropped on every Relation or Type message
    (so it never outlives the schema it was made from).
    """

    schema: TableSchema
    enc: FramedRawEncoder
    topic: str
    partitions: int
    pcol: str | None
    """The partition column (None: partition by the key)."""
    pindex: int
    """Its position in a tuple (-1: none, or not a column of this version)."""
    pkey: bool
    """Whether it is a key column (present in ``'K'`` old tuples)."""
    signal: bool
    parse: Callable[[bytes], po.RawTuple | None]
    """The Insert tuple parser of the relation's width (:func:`~pipeline.reader.pgoutput.
    insert_parser`)."""
    plast: object = dataclasses.field(default_factory=object)
    """The partition column's last text (bytes; at first an object equal to nothing),
    and the partition it gave (converters are deterministic: the same text gives the
    same value, so the same partition)."""
    ppart: int = 0
    inserts: int = 0
    """Insert events produced and not yet counted in the metrics (see ``_count_hot``)."""


class ReaderBase:
    """One reader's state: one database, one slot, one publication."""

    def __init__(
        self,
        *,
        dsn: str,
        bootstrap: str,
        topic_prefix: str,
        settings: ReaderSettings,
        schema_registry_url: str | None = None,
        codec: EventCodec | None = None,
    ) -> None:
        self.dsn = dsn
        self.bootstrap = bootstrap
        self.prefix = topic_prefix
        self.settings = settings
        self.codec = codec or make_codec(
            topic_prefix=topic_prefix,
            schema_registry_url=schema_registry_url,
            kafka_bootstrap=bootstrap,
        )
        self.metrics = ReaderMetrics()
        self.tracker = AckTracker()
        self.cache = RelationCache()
        self.signal_schema, self.signal_name = split_table(settings.signal_table)
        self._partitions: dict[str, int] = {}
        self._primary_keys: dict[tuple[str, str], tuple[str, ...]] = {}
        self._targets: dict[
            int, tuple[TableSchema, tuple[FramedRawEncoder, str, str | None, int]]
        ] = {}
        self._hot: dict[int, HotEntry] = {}
        self._parsers: dict[int, Callable[[bytes], po.RawTuple | None]] = {}
        self._partition_column = {
            split_table(table): column for table, column in settings.partition_columns.items()
        }
        self.captured: set[str] = set()
        """Schema-qualified names of the tables whose changes become events."""
        self._tx: _Tx | None = None
        self._tx_xid: int | None = None
        self._tx_lsn = 0
        """The commit LSN of the transaction being read: every event of it carries this
        ``source.lsn``, so LSN order is commit order (a change record's own LSN is not:
        a transaction that wrote a row before a re-snapshot chunk read it, and committed
        after, has a lower one than the chunk row it is newer than)."""
        self._tx_ts_ms = 0
        self._ts_ms = 0
        """The events' ``ts_ms`` on the streaming hot path (refreshed every few ms)."""
        self.queue_full_waits = 0
        """How often produce() found the producer's queue full and waited (backpressure)."""
        self._db = ""
        self._last_heartbeat = 0.0
        self._producer: Producer | None = None
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self.incremental: IncrementalSnapshot | None = None

    def topic_for(self, schema: str, table: str) -> str:
        return raw_topic(self.prefix, table, schema)

    @property
    def producer(self) -> Producer:
        assert self._producer is not None
        return self._producer

    @property
    def conn(self) -> psycopg.Connection[tuple[Any, ...]]:
        assert self._conn is not None
        return self._conn
