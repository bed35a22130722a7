"""``catalog-cdc consume jsonl``: every document change as a JSON line in a file.

The smallest complete consumer, and the worked example of docs/adding-a-consumer.md:
one module holds the sink, its verifier and its replay plan.  Options:
``--option path=FILE`` (default ``documents.jsonl``), ``--option kinds=product,category``.

The file: one JSON object a line, ``{"kind", "id", "version", "document"}`` or, for a
delete, ``{"kind", "id", "version", "deleted": true}``.  A reader keeps, per ``kind`` and
``id``, the line with the highest version (a tie: the later line); a delete line that
wins means the document is gone.  :func:`current_state` is that reader.

Guarantee: at-least-once, like every consumer of the runtime: ``flush`` returns once
the lines are on disk (``fsync``), and only then do the offsets move; after a crash the
last batch may be appended again (same ``version``, so readers see nothing new).  Every
write takes an exclusive ``flock`` on the file, and before it a tail left without its
newline (a write cut short by a crash) is cut off (its batch was not committed, so it
comes again): every line of the file is whole JSON.  A reader that does not lock may see
the last line while it is being written: it ignores a last line without a newline.

Capabilities (:mod:`consumers.capabilities`): :class:`~consumers.capabilities.Verifiable`
(:class:`JsonlVerifier`: the file's current state against the database) and
:class:`~consumers.capabilities.Replayable` (:class:`JsonlReplayPlan`: a new file built
beside the live one and renamed over it).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from consumers.capabilities import ReplayPlan, ReplayRequest
from consumers.contract import Record, Rejected, Sink, SinkError, TransientSinkError
from consumers.registry import SinkContext
from pipeline.documents.model import Document, to_json
from pipeline.documents.reference import expected_documents
from pipeline.documents.wire import DocumentMessage
from pipeline.verify.base import RepairOutcome, VerifyError, now_ms, repair_version, with_retries
from pipeline.verify.report import EXTRA, Report, Snapshot, compare

if TYPE_CHECKING:
    from consumers.capabilities import Replayable, Verifiable

log = logging.getLogger(__name__)

__all__ = [
    "JsonlReplayPlan",
    "JsonlSink",
    "JsonlVerifier",
    "current_state",
    "cut_torn_line",
    "line_document",
    "replay_file",
]

FileId = tuple[int, int]
"""``(st_dev, st_ino)``: which file a path or a descriptor is."""


def line_document(doc: Document) -> dict[str, Any]:
    """The ``document`` of a line: the document's JSON (:func:`to_json`) as an object."""
    loaded: dict[str, Any] = json.loads(to_json(doc))
    return loaded


def replay_file(live: Path, state_path: Path) -> Path:
    """Where a replay with the state file ``state_path`` builds the new file: beside
    ``live`` (one file system, so the switch can rename it over ``live``), named after the
    state file so that a resumed replay finds it again."""
    tag = hashlib.sha256(str(state_path.resolve()).encode()).hexdigest()[:8]
    return live.with_name(f"{live.name}.replay-{tag}")


class JsonlSink:
    """Implements :class:`~consumers.contract.Sink` for a JSON-lines file (see the module).

    ``replaces``: set on a sink built for a replay — the live file that ``path`` (the new
    file) is renamed over by :class:`JsonlReplayPlan`."""

    name = "jsonl"

    def __init__(
        self,
        path: Path,
        kinds: Sequence[str] = ("product", "category"),
        *,
        replaces: Path | None = None,
    ) -> None:
        self.path = path
        self.kinds: Sequence[str] = tuple(kinds)
        self.replaces = replaces
        self._pending: list[str] = []
        self._fd: int | None = None
        self.created = False
        """Whether the last :meth:`open` created the file (it did not exist)."""

    @classmethod
    def from_context(cls, context: SinkContext) -> JsonlSink:
        """The entry point's factory.  Built for a replay, it writes a new file beside
        the live one (:func:`replay_file`), never the live file itself."""
        kinds = context.options.get("kinds", "product,category").split(",")
        live = Path(context.options.get("path", "documents.jsonl"))
        if context.replay and context.replay_state is not None:
            return cls(replay_file(live, context.replay_state), kinds, replaces=live)
        return cls(live, kinds)

    # -- the Sink protocol ----------------------------------------------------------

    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.created = not self.path.exists()
            self._fd = _open_append(self.path)
            with self._locked() as fd:
                self._cut_torn(fd)
        except OSError as exc:
            raise SinkError(f"cannot open {self.path} for appending: {exc}") from exc

    def add(self, records: Sequence[Record]) -> None:
        for r in records:
            line: dict[str, Any] = {"kind": r.kind, "id": r.id, "version": r.version}
            if r.doc is None:
                line["deleted"] = True
            else:
                line["document"] = line_document(r.doc)
            self._pending.append(json.dumps(line, ensure_ascii=False))

    def flush(self) -> list[Rejected]:
        """Append what was added and ``fsync``; a failed write (a full disk) is
        transient: the lines are kept, and the next try first cuts what was half written."""
        if self._fd is None:
            raise SinkError("JsonlSink.flush before open()")
        if self._pending:
            data = ("\n".join(self._pending) + "\n").encode()
            try:
                with self._locked() as fd:
                    self._cut_torn(fd)
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fsync(fd)
            except OSError as exc:
                raise TransientSinkError(
                    f"cannot append {len(self._pending)} lines to {self.path}: {exc}"
                ) from exc
            self._pending.clear()
        return []

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- capabilities (consumers.capabilities) --------------------------------------

    def replay_plan(self, request: ReplayRequest) -> ReplayPlan:
        """A new file beside the live one, renamed over it after the first pass."""
        live = self.replaces or self.path
        return JsonlReplayPlan(live, replay_file(live, request.state_path), request.state_path)

    def verifier(self, context: SinkContext, dsn: str) -> JsonlVerifier:
        return JsonlVerifier(context, dsn)

    # -- the file -------------------------------------------------------------------

    def file_id(self) -> FileId:
        """Which file this sink appends to (it may have been renamed since)."""
        if self._fd is None:
            raise SinkError("JsonlSink: open() first")
        st = os.fstat(self._fd)
        return (st.st_dev, st.st_ino)

    def retarget(self, path: Path) -> None:
        """Append to ``path`` from now on (a replay plan moving the sink)."""
        self.close()
        self.path = path
        self.open()

    def truncate(self) -> None:
        """Empty the file (a replay starting a new file over an abandoned one)."""
        with self._locked() as fd:
            os.ftruncate(fd, 0)
            os.fsync(fd)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        """The descriptor of the file at ``path``, under an exclusive ``flock``.

        When ``path`` no longer names the file this sink holds open (a replay renamed
        its new file over it), the file now at ``path`` is opened and locked instead:
        the check is made under the lock, and the switch renames under the lock of the
        file it replaces, so no line is ever appended to a file that was replaced."""
        if self._fd is None:
            raise SinkError("JsonlSink: open() first")
        while True:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            if _path_id(self.path) == self.file_id():
                break
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
            self._fd = _open_append(self.path)
            log.info("event=jsonl_reopened path=%s reason=%s", self.path, "replaced on disk")
        try:
            yield self._fd
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _cut_torn(self, fd: int) -> None:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            torn = cut_torn_line(self.path)
            log.warning(
                "event=jsonl_torn_line_cut path=%s bytes=%d reason=%s",
                self.path, torn, "a write cut short by a crash; its batch comes again",
            )  # fmt: skip


def _open_append(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)


def _path_id(path: Path) -> FileId | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def current_state(path: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """What the file says, as its readers read it: per ``(kind, id)`` the line with the
    highest version (a tie: the later line), delete lines included (``"deleted": true``).

    A last line without its newline is being written (or was cut short): ignored.  A
    line that is not a JSON object with ``kind``, ``id`` and ``version`` raises
    :class:`~pipeline.verify.base.VerifyError` naming it."""
    state: dict[tuple[str, int], dict[str, Any]] = {}
    if not path.exists():
        return state
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.endswith(b"\n"):
                break
            try:
                line = json.loads(raw)
                key = (str(line["kind"]), int(line["id"]))
                version = int(line["version"])
            except (ValueError, KeyError, TypeError) as exc:
                raise VerifyError(
                    f"{path} line {number} is not a line of the jsonl sink ({exc}): fix or "
                    "remove it, or rebuild the file with `catalog-cdc replay jsonl`"
                ) from exc
            old = state.get(key)
            if old is None or version >= int(old["version"]):
                state[key] = line
    return state


# ------------------------------------------------------------------------ replay


class JsonlReplayPlan:
    """Implements :class:`~consumers.capabilities.ReplayPlan` for the JSON-lines file.

    * ``prepare``: the replay's sink appends to a new file beside the live one
      (:func:`replay_file`), emptied when the replay starts afresh (an abandoned replay's
      lines must not survive), kept when it resumes.  Which file it is (device, inode) is
      saved, so a resume can tell whether the switch already happened.
    * ``switch``, after the first pass: ``os.replace`` renames the new file over the live
      path — atomic: a reader opening the path gets the old file or the new one, which
      then holds every document up to the first pass's end, never a half-built file.
      The rename is made under the ``flock`` of the file it replaces, and the live
      consumer checks, under the same lock, that its path still names the file it
      holds open (else it opens the new one): no line of the live consumer is appended
      to the replaced file after the switch.
    * the last pass (:mod:`pipeline.replay.driver`) then appends to the same file, now
      at the live path, what arrived on the topics meanwhile: in particular whatever the
      live consumer had appended to the old file after the first pass's end offsets
      (its records were on the topics before the switch, so before the last pass's end
      offsets, which are taken after it).  Both writers lock every write.
    * ``finish``: nothing to clean up (the old file is gone with the rename).

    Guarantee: after the replay, the live file holds, per key, a line of at least the
    version of the topics' latest message at the end of the last pass, and every line
    the live consumer writes later; between the switch and the end of the last pass a
    reader may see documents older than the old file had for what changed during the
    replay.  A replay with ``--from-time`` builds the new file from that time on only.
    Resumable: an interrupted replay (even between the rename and saving its state)
    goes on with the same file.
    """

    def __init__(self, live: Path, target: Path, state_path: Path) -> None:
        self.live = live
        self.target = target
        self.state_path = state_path

    def prepare(self, sink: Sink, saved: dict[str, Any]) -> dict[str, Any]:
        jsonl = _jsonl_sink(sink)
        if "file" not in saved:  # a fresh replay
            if jsonl.path != self.target:
                jsonl.retarget(self.target)
            jsonl.truncate()
            log.info("event=jsonl_replay_file path=%s live=%s", self.target, self.live)
            return {"target": str(self.target), "file": list(jsonl.file_id())}
        built: FileId = (saved["file"][0], saved["file"][1])
        if saved.get("switched") or _path_id(self.live) == built:
            # Switched (perhaps just before an interruption, its state not saved yet):
            # go on in the file, now at the live path; drop a stray empty new file.
            if jsonl.path != self.live:
                stray = jsonl.path
                jsonl.retarget(self.live)
                if stray.exists() and _path_id(stray) != built and stray.stat().st_size == 0:
                    stray.unlink()
            return {**saved, "switched": True}
        if jsonl.path != self.target:
            jsonl.retarget(self.target)
        if jsonl.created or jsonl.file_id() != built:
            raise SinkError(
                f"the replay's file {self.target} is not the one it was building (removed "
                f"since?): delete {self.state_path} to start the replay over"
            )
        return saved

    def switch(self, sink: Sink, saved: dict[str, Any]) -> dict[str, Any]:
        jsonl = _jsonl_sink(sink)
        built: FileId = (saved["file"][0], saved["file"][1])
        if not saved.get("switched") and _path_id(self.live) != built:
            try:
                live_fd: int | None = os.open(self.live, os.O_RDONLY)
            except FileNotFoundError:
                live_fd = None  # no live file yet: nobody to wait for
            try:
                if live_fd is not None:
                    fcntl.flock(live_fd, fcntl.LOCK_EX)  # no live write is half done
                os.replace(self.target, self.live)
                _fsync_dir(self.live.parent)
            finally:
                if live_fd is not None:
                    os.close(live_fd)  # releases the lock
            log.info("event=jsonl_replay_switched path=%s from=%s", self.live, self.target)
        jsonl.path = self.live  # the same open file, under its new name
        return {**saved, "switched": True}

    def finish(self, sink: Sink, saved: dict[str, Any]) -> dict[str, Any]:
        return saved


def _jsonl_sink(sink: Sink) -> JsonlSink:
    found: object = sink
    if not isinstance(found, JsonlSink):
        raise SinkError(f"the jsonl replay plan needs a JsonlSink, not {type(found).__name__}")
    return found


# ------------------------------------------------------------------------ verify


def _compared(document: dict[str, Any]) -> dict[str, Any]:
    """A line's document without what comes from the WAL (``version``, ``source_ts_ms``)."""
    return {k: v for k, v in document.items() if k not in ("version", "source_ts_ms")}


class JsonlVerifier:
    """Implements :class:`~pipeline.verify.base.Verifier` for the JSON-lines file.

    *Expected*: :func:`~pipeline.documents.reference.expected_documents`, each document as
    a line holds it (:func:`line_document`), for the kinds the consumer reads.  *Actual*:
    :func:`current_state` of the file (a winning delete line: absent).  Both without
    ``version`` and ``source_ts_ms``.  Repair appends, through a :class:`JsonlSink` built
    with the same options, the database's document (missing, out of sync) or a delete
    line (extra), each with the version ``max(db, file + 1)``
    (:func:`~pipeline.verify.base.repair_version`) so that it wins over what the file
    holds, while any later real change (a far higher LSN) wins over the repair.  Safe
    beside a running consumer: every write is locked.
    """

    name = "jsonl"

    def __init__(self, context: SinkContext, dsn: str) -> None:
        self.context = context
        self.dsn = dsn
        sink = JsonlSink.from_context(context)
        self.path = sink.path
        self.classes: tuple[str, ...] = tuple(sink.kinds)
        self._docs: dict[str, dict[int, Document]] = {}
        self._versions: dict[tuple[str, int], int] = {}

    def expected(self) -> Snapshot:
        try:
            with psycopg.connect(self.dsn) as conn:
                products, categories = expected_documents(conn)
        except psycopg.Error as exc:
            raise VerifyError(f"cannot read the catalog database: {exc}") from exc
        found: dict[str, dict[int, Document]] = {"product": {}, "category": {}}
        found["product"].update(products)
        found["category"].update(categories)
        self._docs = {kind: found.get(kind, {}) for kind in self.classes}
        snap = Snapshot()
        for kind, docs in self._docs.items():
            snap.items.setdefault(kind, {})
            for ident, doc in docs.items():
                snap.put(kind, ident, _compared(line_document(doc)))
        return snap

    def actual(self) -> Snapshot:
        try:
            state = current_state(self.path)
        except OSError as exc:
            raise VerifyError(f"cannot read {self.path}: {exc}") from exc
        self._versions = {key: int(line["version"]) for key, line in state.items()}
        snap = Snapshot()
        for kind in self.classes:
            snap.items.setdefault(kind, {})
        for (kind, ident), line in state.items():
            if kind in self.classes and not line.get("deleted"):
                snap.put(kind, ident, _compared(line.get("document") or {}), int(line["version"]))
        return snap

    def compare(self, expected: Snapshot, actual: Snapshot) -> Report:
        return compare(self.name, expected, actual, self.classes)

    def repair(self, report: Report, expected: Snapshot, actual: Snapshot) -> RepairOutcome:
        outcome = RepairOutcome()
        ts = now_ms()
        records: list[DocumentMessage] = []
        for d in report.differences:
            if not isinstance(d.id, int):
                outcome.skipped.append(f"{d.cls} {d.id!r}: not a numeric id")
                continue
            have = self._versions.get((d.cls, d.id))
            if d.status == EXTRA:
                records.append(DocumentMessage(d.cls, d.id, None, repair_version(0, have), ts))
                outcome.deleted += 1
                continue
            doc = self._docs[d.cls][d.id]
            version = repair_version(doc.version, have)
            fixed = doc.model_copy(update={"version": version, "source_ts_ms": ts})
            records.append(DocumentMessage(d.cls, d.id, fixed, version, ts))
            outcome.reemitted += 1
        if not records:
            return outcome
        sink = JsonlSink.from_context(self.context)
        with_retries("jsonl: open", sink.open)
        try:
            sink.add(records)
            outcome.rejected = with_retries("jsonl: flush", sink.flush)
        finally:
            sink.close()
        log.info(
            "event=verify_repaired consumer=jsonl path=%s reemitted=%d deleted=%d",
            self.path, outcome.reemitted, outcome.deleted,
        )  # fmt: skip
        return outcome

    def close(self) -> None:
        pass


if TYPE_CHECKING:  # mypy checks the capabilities' signatures here
    _verifiable: Verifiable = JsonlSink(Path())
    _replayable: Replayable = JsonlSink(Path())
