"""The sink's durable memory of the remote side: a small SQLite file.

Two tables:

* ``products``: per catalog product id, what the storefront has — ``reference``,
  ``remote`` (1: it exists there), ``active`` (as last sent), ``version`` (the last
  document version the API confirmed, or that was found to need nothing), ``digest``
  (content hash of the last body confirmed), ``name``/``price`` (needed to deactivate
  the product later: an update needs every required field), ``status`` (``synced``,
  ``deactivated``, ``rejected``, ``absent``), the last ``sync_id`` and
  ``presta_id``, and the last error.
* ``syncs``: every sync the API answered — ``sync_id``, ``endpoint`` (``single`` /
  ``batch``), ``status`` (as the response says), product counts, time.

Each write is committed right after the API answered, before the runtime commits the
Kafka offsets: after a crash the state is never ahead of what the API confirmed (a
redelivered create then meets 409 and becomes an update).  Opened and written with the
policy of :mod:`consumers.toolkit.ledger` (WAL, ``synchronous=FULL``).

:func:`status` reads it for people and tools (``python -m consumers.storefront_api.state
[PATH]``).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consumers.toolkit.ledger import open_ledger, open_read_only, rows, transaction

__all__ = ["DEFAULT_PATH", "ProductState", "State", "status"]

DEFAULT_PATH = Path(".catalog-cdc/storefront-api.sqlite")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS products (
    id         INTEGER PRIMARY KEY,
    reference  TEXT    NOT NULL,
    remote     INTEGER NOT NULL DEFAULT 0,
    active     INTEGER NOT NULL DEFAULT 0,
    version    INTEGER NOT NULL DEFAULT -1,
    digest     TEXT,
    name       TEXT,
    price      REAL,
    status     TEXT    NOT NULL,
    sync_id    TEXT,
    presta_id  INTEGER,
    error      TEXT,
    updated_at REAL    NOT NULL
);
CREATE TABLE IF NOT EXISTS syncs (
    sync_id    TEXT PRIMARY KEY,
    endpoint   TEXT    NOT NULL,
    status     TEXT    NOT NULL,
    products   INTEGER NOT NULL,
    succeeded  INTEGER NOT NULL,
    failed     INTEGER NOT NULL,
    at         REAL    NOT NULL
);
"""


@dataclass
class ProductState:
    id: int
    reference: str
    remote: bool
    active: bool
    version: int
    digest: str | None
    name: str | None
    price: float | None
    status: str
    sync_id: str | None = None
    presta_id: int | None = None
    error: str | None = None


class State:
    """The state file, opened by the sink (one writer)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = open_ledger(path, _SCHEMA)
        self._cache: dict[int, ProductState | None] = {}

    def close(self) -> None:
        self._db.close()

    def get(self, pid: int) -> ProductState | None:
        if pid not in self._cache:
            row = self._db.execute(
                "SELECT id, reference, remote, active, version, digest, name, price, status, "
                "sync_id, presta_id, error FROM products WHERE id = ?",
                (pid,),
            ).fetchone()
            self._cache[pid] = None if row is None else _product(row)
        return self._cache[pid]

    def put(self, states: list[ProductState]) -> None:
        """Write ``states`` in one transaction."""
        if not states:
            return
        now = time.time()
        with transaction(self._db):
            self._db.executemany(
                "INSERT OR REPLACE INTO products (id, reference, remote, active, version, "
                "digest, name, price, status, sync_id, presta_id, error, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (s.id, s.reference, int(s.remote), int(s.active), s.version, s.digest,
                     s.name, s.price, s.status, s.sync_id, s.presta_id, s.error, now)
                    for s in states
                ],
            )  # fmt: skip
        for s in states:
            self._cache[s.id] = s

    def record_sync(
        self, sync_id: str, endpoint: str, status: str, products: int, succeeded: int
    ) -> None:
        with transaction(self._db):
            self._db.execute(
                "INSERT OR REPLACE INTO syncs VALUES (?, ?, ?, ?, ?, ?, ?)",
                (sync_id, endpoint, status, products, succeeded, products - succeeded, time.time()),
            )


def _product(row: tuple[Any, ...]) -> ProductState:
    return ProductState(
        id=row[0], reference=row[1], remote=bool(row[2]), active=bool(row[3]), version=row[4],
        digest=row[5], name=row[6], price=row[7], status=row[8], sync_id=row[9],
        presta_id=row[10], error=row[11],
    )  # fmt: skip


def status(state_path: Path | str = DEFAULT_PATH, *, last: int = 10) -> dict[str, Any]:
    """What the storefront has, as far as the sink knows: product counts by status,
    sync counts by status, the ``last`` syncs and the products in error."""
    path = Path(state_path)
    if not path.exists():
        return {"state": str(path), "exists": False, "products": {}, "syncs": {}, "last_syncs": []}
    db = open_read_only(path)
    try:
        products = {
            r["status"]: r["n"]
            for r in rows(db, "SELECT status, count(*) AS n FROM products GROUP BY status")
        }
        syncs = {
            r["status"]: r["n"]
            for r in rows(db, "SELECT status, count(*) AS n FROM syncs GROUP BY status")
        }
        recent = rows(db, f"SELECT * FROM syncs ORDER BY at DESC, sync_id LIMIT {int(last)}")
        errors = rows(
            db,
            "SELECT id, reference, status, version, error FROM products "
            "WHERE error IS NOT NULL ORDER BY updated_at DESC LIMIT 100",
        )
        remote = db.execute("SELECT count(*) FROM products WHERE remote = 1").fetchone()[0]
    finally:
        db.close()
    return {
        "state": str(path),
        "exists": True,
        "products": {**products, "remote": remote, "total": sum(products.values())},
        "syncs": {**syncs, "total": sum(syncs.values())},
        "last_syncs": recent,
        "errors": errors,
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m consumers.storefront_api.state [PATH]``: :func:`status` as JSON."""
    args = sys.argv[1:] if argv is None else argv
    print(json.dumps(status(args[0] if args else DEFAULT_PATH), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
