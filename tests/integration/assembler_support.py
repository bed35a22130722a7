"""Helpers for assembler tests: run an assembler, compare its topics with SQL."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from pipeline.assembler.service import Assembler
from pipeline.assembler.settings import AssemblerSettings
from pipeline.documents.reading import latest_documents
from pipeline.documents.reference import comparable, expected_documents
from tests.integration.reader_support import CLI


@contextmanager
def running_assembler(
    bootstrap: str,
    prefix: str,
    state_path: Path,
    rebuild: bool = False,
    registry_url: str | None = None,
    **settings: Any,
) -> Iterator[Assembler]:
    """An assembler in a thread; stopped on exit.  Its error is re-raised in the test."""
    settings.setdefault("poll_timeout", 0.1)
    assembler = Assembler(
        bootstrap=bootstrap,
        topic_prefix=prefix,
        settings=AssemblerSettings(state_path=state_path, **settings),
        schema_registry_url=registry_url,
    )
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            assembler.run(stop, rebuild=rebuild)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            errors.append(exc)

    thread = threading.Thread(target=run, name="assembler", daemon=True)
    thread.start()
    try:
        yield assembler
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive(), "assembler did not stop within 60 s"
    if errors:
        raise errors[0]


def assembler_process(
    bootstrap: str, prefix: str, state_path: Path, log: Path, *extra: str, **env: str
) -> subprocess.Popen[bytes]:
    """`catalog-cdc assembler` as a subprocess (for kill -9 tests)."""
    full_env = {
        **os.environ,
        "CATALOG_CDC_KAFKA_BOOTSTRAP": bootstrap,
        "CATALOG_CDC_TOPIC_PREFIX": prefix,
        "CATALOG_CDC_ASSEMBLER_POLL_TIMEOUT": "0.1",
        **env,
    }
    with open(log, "ab") as fh:
        return subprocess.Popen(
            [CLI, "assembler", "--state", str(state_path), *extra],
            env=full_env,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )


def wait_started(
    proc: subprocess.Popen[bytes], log: Path, before: int, timeout: float = 60
) -> None:
    """Until the log has more ``assembler_started`` lines than ``before`` (the signal
    handlers are installed by then: a SIGTERM earlier kills Python at once)."""
    deadline = time.monotonic() + timeout
    while log.read_text().count("event=assembler_started") <= before:
        if proc.poll() is not None:
            raise AssertionError(
                f"the assembler exited ({proc.returncode}): {log.read_text()[-2000:]}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"the assembler did not start in {timeout}s")
        time.sleep(0.1)


def differences(
    dsn: str, bootstrap: str, prefix: str, registry_url: str | None = None
) -> list[str]:
    """How the document topics differ from what SQL says (empty: in sync).

    Products that should not exist must be tombstones (or never have had a document).
    """
    with psycopg.connect(dsn) as conn:
        products, categories = expected_documents(conn)
    out: list[str] = []
    for kind, expected in (("product", products), ("category", categories)):
        try:
            latest = latest_documents(bootstrap, prefix, kind, schema_registry_url=registry_url)
        except Exception as exc:  # noqa: BLE001 - no topic yet: everything differs
            return [f"{kind}: {exc}"]
        live = {k: m for k, m in latest.items() if m.doc is not None}
        for k in sorted(set(expected) - set(live))[:3]:
            out.append(f"{kind} {k}: missing")
        for k in sorted(set(live) - set(expected))[:3]:
            out.append(f"{kind} {k}: should be a tombstone")
        for k in sorted(set(expected) & set(live)):
            doc = live[k].doc
            assert doc is not None
            a, b = comparable(doc), comparable(expected[k])
            if a != b:
                diff = {f: (a[f], b[f]) for f in a if a[f] != b.get(f)}
                out.append(f"{kind} {k}: topic/sql differ {str(diff)[:400]}")
                if len(out) > 6:
                    break
    return out


def wait_in_sync(
    dsn: str, bootstrap: str, prefix: str, timeout: float = 90.0, registry_url: str | None = None
) -> None:
    deadline = time.monotonic() + timeout
    diffs: list[str] = []
    while time.monotonic() < deadline:
        diffs = differences(dsn, bootstrap, prefix, registry_url)
        if not diffs:
            return
        time.sleep(1.0)
    raise AssertionError(f"documents not in sync after {timeout}s: {diffs}")


def version_history(bootstrap: str, prefix: str, kind: str) -> dict[int, list[int]]:
    """Per key, the versions of its messages in topic order."""
    from pipeline.documents.reading import iter_documents

    out: dict[int, list[int]] = {}
    for m in iter_documents(bootstrap, prefix, kind):
        out.setdefault(m.id, []).append(m.version)
    return out
