"""``catalog-cdc consume jsonl``: every document change as a JSON line in a file.

The smallest complete consumer (the walk-through of docs/adding-a-consumer.md): a
sink that appends one JSON object per record to a file and makes it durable on
``flush`` (``fsync``).  Options: ``--option path=FILE`` (default
``documents.jsonl``), ``--option kinds=product,category``.

Guarantee: at-least-once, like every consumer of the runtime: after a crash the
last batch may be appended again (same ``version``): a reader of the file keeps,
per ``kind`` and ``id``, the line with the highest version.  A crash in the middle of
a write leaves part of a line at the end; ``open`` cuts it off (its batch was not
committed, so it comes again), so every line of the file stays whole JSON.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from consumers.contract import Record, Rejected
from consumers.registry import SinkContext
from pipeline.documents.model import to_json

log = logging.getLogger(__name__)


class JsonlSink:
    name = "jsonl"

    def __init__(self, path: Path, kinds: Sequence[str] = ("product", "category")) -> None:
        self.path = path
        self.kinds = tuple(kinds)
        self._pending: list[str] = []
        self._file: IO[str] | None = None

    @classmethod
    def from_context(cls, context: SinkContext) -> JsonlSink:
        kinds = context.options.get("kinds", "product,category").split(",")
        return cls(Path(context.options.get("path", "documents.jsonl")), kinds)

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torn = cut_torn_line(self.path)
        if torn:
            log.warning(
                "event=jsonl_torn_line_cut path=%s bytes=%d reason=%s",
                self.path, torn, "a write cut short by a crash; its batch comes again",
            )  # fmt: skip
        self._file = self.path.open("a", encoding="utf-8")

    def add(self, records: Sequence[Record]) -> None:
        for r in records:
            line: dict[str, Any] = {"kind": r.kind, "id": r.id, "version": r.version}
            if r.doc is None:
                line["deleted"] = True
            else:
                line["document"] = json.loads(to_json(r.doc))
            self._pending.append(json.dumps(line, ensure_ascii=False))

    def flush(self) -> list[Rejected]:
        assert self._file is not None, "open() first"
        if self._pending:
            self._file.write("\n".join(self._pending) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
            self._pending.clear()
        return []

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def cut_torn_line(path: Path, block: int = 1 << 16) -> int:
    """Truncate ``path`` after its last newline; the number of bytes cut (0: none)."""
    if not path.exists():
        return 0
    with path.open("rb+") as f:
        size = end = f.seek(0, os.SEEK_END)
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            newline = f.read(end - start).rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
        if end < size:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
        return size - end
