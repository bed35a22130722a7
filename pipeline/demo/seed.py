"""Deterministic seeding of the demo catalog.

``seed_catalog(dsn, products=N, seed=S)`` loads stores, brands, a three-level
category tree per store, and N products with variants, categories, images and
technical data, all drawn from ``random.Random(S)``: the same seed gives the same
rows, ids included.  Rows go in with ``COPY`` in one transaction, so a failed
seed leaves nothing behind.

The content comes from :class:`pipeline.demo.faker.CatalogFaker` (the words from
:mod:`pipeline.demo.vocabulary`), which the live edits (:mod:`pipeline.demo.edits`)
reuse; this module loads it.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from pipeline.demo.catalog import CATALOG_TABLES, load_schema
from pipeline.demo.errors import DemoError
from pipeline.demo.faker import (
    LONG_DESCRIPTION_CHARS,
    CatalogFaker,
    image_fields,
    reference_for,
    slugify,
    url_key_for,
    variant_sku,
)
from pipeline.demo.vocabulary import CMS_PAGES, DOMAINS, GENERIC_SENTENCES, STORES, Domain

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

_EPOCH = datetime(2023, 1, 1, tzinfo=UTC)
_SEED_SPAN_S = 2 * 365 * 86400  # created_at/updated_at of seeded rows fall in 2023-2024
_CHUNK = 2_000  # products generated (and copied) per round


@dataclass
class SeedCounts:
    """Rows loaded by :func:`seed_catalog`, per table, plus a few product traits."""

    stores: int = 0
    brands: int = 0
    categories: int = 0
    products: int = 0
    product_variants: int = 0
    product_categories: int = 0
    product_images: int = 0
    technical_data: int = 0
    cms_pages: int = 0
    long_descriptions: int = 0
    inactive_products: int = 0
    soft_deleted_products: int = 0


@dataclass
class _StoreTree:
    id: int
    code: str
    domains: list[Domain]
    # per domain key: the category ids (mid and leaf levels) its products go in
    categories: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class _Ids:
    product: int = 0
    variant: int = 0
    image: int = 0
    spec: int = 0


@dataclass
class _Chunk:
    """COPY text-format data of one round of products, per table."""

    done: int
    data: dict[str, str]


@contextmanager
def _connection(conn_or_dsn: psycopg.Connection[Any] | str) -> Iterator[psycopg.Connection[Any]]:
    if isinstance(conn_or_dsn, str):
        try:
            conn = psycopg.connect(conn_or_dsn)
        except psycopg.Error as exc:
            raise DemoError(f"cannot connect to the catalog database: {exc}") from exc
        with conn:
            yield conn
    else:
        yield conn_or_dsn


def _tables_with_rows(conn: psycopg.Connection[Any]) -> list[str]:
    busy = []
    for table in CATALOG_TABLES:
        row = conn.execute(
            sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(table))
        ).fetchone()
        if row and row[0]:
            busy.append(table)
    return busy


def _tables_sql() -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(t) for t in CATALOG_TABLES)


def seed_catalog(
    conn_or_dsn: psycopg.Connection[Any] | str,
    *,
    products: int,
    seed: int = 42,
    stores: int = 2,
    replace: bool = False,
    progress: Progress | None = None,
) -> SeedCounts:
    """Create the schema if needed and load a realistic demo catalog.

    Deterministic: ``random.Random(seed)`` drives every value and ids start at 1,
    so the same arguments give identical rows.  Loads ``stores`` stores (max 8
    named ones, then generic), 31 brands, a 3-level tree of 40 categories per
    store, and ``products`` products (1-5 variants, 1-3 categories, 0-6 images,
    0-12 technical-data lines each; ~3% descriptions over 4 kB, ~4% inactive,
    ~1% soft-deleted), plus 4-6 CMS pages per store.  Sequences are moved past
    the loaded ids so later inserts get fresh ids.

    Everything happens in one transaction: on error nothing is loaded.  Given a
    connection rather than a DSN, that transaction is a savepoint if the caller
    has one open (and then the caller commits).  ``progress(done, total)`` is
    called after every round of products.

    Raises :class:`DemoError` if the catalog already holds rows and ``replace`` is
    false; with ``replace=True`` every catalog table is truncated first.
    """
    if products < 0:
        raise DemoError(f"products must be >= 0, got {products}")
    if stores < 1:
        raise DemoError(f"stores must be >= 1, got {stores}")
    started = time.monotonic()
    with _connection(conn_or_dsn) as conn:
        load_schema(conn)
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext('catalog-cdc demo seed'))")
                busy = _tables_with_rows(conn)
                if busy and not replace:
                    raise DemoError(
                        "the catalog is not empty (rows in "
                        + ", ".join(busy)
                        + "); seed an empty database, or pass replace=True "
                        "(catalog-cdc demo seed --replace) to truncate it first"
                    )
                if busy:
                    conn.execute(
                        sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(_tables_sql())
                    )
                    log.warning("event=catalog_truncated tables=%s", ",".join(busy))
                with _foreign_keys_deferred(conn):
                    counts = _load(conn, seed, products, stores, progress)
                _reset_sequences(conn)
        except psycopg.Error as exc:
            raise DemoError(f"seeding the catalog failed, nothing was loaded: {exc}") from exc
        try:
            # Fresh statistics for the planner (the edits pick rows by id ranges).
            with conn.transaction():
                conn.execute(sql.SQL("ANALYZE {}").format(_tables_sql()))
        except psycopg.Error as exc:
            log.warning("event=catalog_analyze_failed error=%r", str(exc))
    elapsed = time.monotonic() - started
    log.info(
        "event=catalog_seeded seed=%d seconds=%.2f products_per_s=%.0f %s",
        seed,
        elapsed,
        counts.products / elapsed if elapsed > 0 else 0.0,
        " ".join(f"{k}={v}" for k, v in vars(counts).items()),
    )
    return counts


@contextmanager
def _foreign_keys_deferred(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Drop the catalog's foreign keys for the load and add them back after.

    Checking a foreign key row by row costs about as much as the whole COPY; adding
    the constraint back validates every row in one join.  All of it happens inside
    the seed's transaction, so other sessions never see the catalog without its
    constraints, and a violation aborts the seed.  Without the privilege to alter
    the tables, the rows are loaded with the constraints in place (slower).
    """
    rows = conn.execute(
        "SELECT n.nspname, r.relname, c.conname, pg_get_constraintdef(c.oid) "
        "FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid "
        "JOIN pg_namespace n ON n.oid = r.relnamespace "
        "WHERE c.contype = 'f' AND n.nspname = 'public' AND r.relname = ANY(%s) "
        "ORDER BY r.relname, c.conname",
        (list(CATALOG_TABLES),),
    ).fetchall()
    fks = [(str(s), str(t), str(n), str(d)) for s, t, n, d in rows]
    try:
        with conn.transaction():
            for schema, table, name, _ in fks:
                conn.execute(
                    sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                        sql.Identifier(schema, table), sql.Identifier(name)
                    )
                )
    except psycopg.errors.InsufficientPrivilege as exc:
        log.warning("event=seed_foreign_keys_kept reason=%r", str(exc))
        yield
        return
    yield
    for schema, table, name, definition in fks:
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                sql.Identifier(schema, table), sql.Identifier(name), sql.SQL(definition)
            )
        )


def _reset_sequences(conn: psycopg.Connection[Any]) -> None:
    for table in CATALOG_TABLES:
        if table == "product_categories":
            continue
        conn.execute(
            sql.SQL(
                "SELECT setval(pg_get_serial_sequence({t}, 'id'), "
                "coalesce(max(id), 0) + 1, false) FROM {i}"
            ).format(t=sql.Literal(table), i=sql.Identifier(table))
        )


def _ts(seconds: float) -> datetime:
    return _EPOCH + timedelta(seconds=seconds)


def _load(
    conn: psycopg.Connection[Any],
    seed: int,
    n_products: int,
    n_stores: int,
    progress: Progress | None,
) -> SeedCounts:
    rng = random.Random(seed)
    faker = CatalogFaker(rng)
    counts = SeedCounts()
    with conn.cursor() as cur:
        trees, brand_ids = _load_reference_data(cur, faker, n_stores, counts)
        # Products are generated in a worker thread (the only user of rng from here
        # on, so the rows stay deterministic) while this thread copies the previous
        # round: Python and the server work at the same time.
        chunks: queue.Queue[_Chunk | BaseException | None] = queue.Queue(maxsize=3)
        cancel = threading.Event()

        def produce() -> None:
            try:
                ids = _Ids()
                done = 0
                while done < n_products and not cancel.is_set():
                    batch = min(_CHUNK, n_products - done)
                    data = _generate_products(faker, trees, brand_ids, batch, ids, counts)
                    done += batch
                    _put(chunks, _Chunk(done, data), cancel)
                _put(chunks, None, cancel)
            except BaseException as exc:  # noqa: BLE001 -- re-raised by the consumer
                _put(chunks, exc, cancel)

        worker = threading.Thread(target=produce, name="catalog-seed-generator", daemon=True)
        worker.start()
        try:
            while True:
                item = chunks.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                for target, text in item.data.items():
                    if text:
                        with cur.copy(sql.SQL("COPY {} FROM STDIN").format(sql.SQL(target))) as cp:
                            cp.write(text)
                if progress is not None:
                    progress(item.done, n_products)
        finally:
            cancel.set()
            worker.join()
        if progress is not None and n_products == 0:
            progress(0, 0)
    return counts


def _put(
    q: queue.Queue[_Chunk | BaseException | None],
    item: _Chunk | BaseException | None,
    cancel: threading.Event,
) -> None:
    while not cancel.is_set():
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def _load_reference_data(
    cur: psycopg.Cursor[Any], faker: CatalogFaker, n_stores: int, counts: SeedCounts
) -> tuple[list[_StoreTree], dict[str, list[int]]]:
    """Stores, brands, category trees and CMS pages."""
    rng = faker.rng
    trees: list[_StoreTree] = []
    with cur.copy("COPY stores (id, code, name, currency, locale, updated_at) FROM STDIN") as cp:
        for i in range(n_stores):
            if i < len(STORES):
                code, name, currency, locale = STORES[i]
            else:
                code, name, currency, locale = f"s{i + 1}", f"Catalog Demo {i + 1}", "EUR", "en_IE"
            cp.write_row((i + 1, code, name, currency, locale, _EPOCH))
            trees.append(_StoreTree(i + 1, code, rng.sample(DOMAINS, 4)))
    counts.stores = n_stores

    brand_ids: dict[str, list[int]] = {}
    with cur.copy("COPY brands (id, name, description, updated_at) FROM STDIN") as cp:
        bid = 0
        for d in DOMAINS:
            for bname in d.brands:
                bid += 1
                sentence = faker.pick(GENERIC_SENTENCES)
                desc = f"{bname} makes {d.top.lower()} products. {sentence}"
                cp.write_row((bid, bname, desc, _ts(faker.between(0, 86400 * 30))))
                brand_ids.setdefault(d.key, []).append(bid)
    counts.brands = bid

    with cur.copy(
        "COPY categories (id, store_id, parent_id, name, url_key, position, active, updated_at) "
        "FROM STDIN"
    ) as cp:
        cid = 0
        for tree in trees:
            used: set[str] = set()

            def url_key(name: str, cat_id: int, used: set[str] = used) -> str:
                key = slugify(name)
                if key in used:
                    key = f"{key}-{cat_id}"
                used.add(key)
                return key

            for top_pos, d in enumerate(tree.domains):
                cid += 1
                top_id = cid
                cp.write_row(
                    (top_id, tree.id, None, d.top, url_key(d.top, cid), top_pos, True, _EPOCH)
                )
                pickable: list[int] = []
                for mid_pos, (mid, leaves) in enumerate(d.subcategories):
                    cid += 1
                    mid_id = cid
                    cp.write_row(
                        (mid_id, tree.id, top_id, mid, url_key(mid, cid), mid_pos, True, _EPOCH)
                    )
                    pickable.append(mid_id)
                    for leaf_pos, leaf in enumerate(leaves):
                        cid += 1
                        active = faker.pick(range(20)) != 0
                        row = (cid, tree.id, mid_id, leaf, url_key(leaf, cid), leaf_pos, active)
                        cp.write_row((*row, _EPOCH))
                        pickable.extend((cid, cid))  # leaves twice as likely as mids
                tree.categories[d.key] = pickable
    counts.categories = cid

    with cur.copy(
        "COPY cms_pages (id, store_id, identifier, title, content, active, updated_at) FROM STDIN"
    ) as cp:
        page_id = 0
        for tree in trees:
            for ident, title in rng.sample(CMS_PAGES, faker.between(4, 6)):
                page_id += 1
                body = " ".join(faker.pick(GENERIC_SENTENCES) for _ in range(faker.between(3, 8)))
                content = f"<h1>{title}</h1>\n<p>{body}</p>"
                updated = _ts(faker.between(0, 10**6))
                cp.write_row((page_id, tree.id, ident, title, content, True, updated))
    counts.cms_pages = page_id
    return trees, brand_ids


_NULL = "\\N"


def _txt(value: str) -> str:
    """Escape a value for COPY's text format."""
    if "\\" in value or "\n" in value or "\t" in value or "\r" in value:
        return (
            value.replace("\\", "\\\\")
            .replace("\n", "\\n")
            .replace("\t", "\\t")
            .replace("\r", "\\r")
        )
    return value


def _opt(value: str | None) -> str:
    return _NULL if value is None else _txt(value)


def _json_object(obj: dict[str, str]) -> str:
    """``json.dumps`` of a flat str->str dict, with a fast path for plain strings."""
    for key, value in obj.items():
        if '"' in key or '"' in value or "\\" in key or "\\" in value:
            return json.dumps(obj, ensure_ascii=False)
    return "{" + ", ".join(f'"{k}": "{v}"' for k, v in obj.items()) + "}"


def _generate_products(
    faker: CatalogFaker,
    trees: Sequence[_StoreTree],
    brand_ids: dict[str, list[int]],
    batch: int,
    ids: _Ids,
    counts: SeedCounts,
) -> dict[str, str]:
    """One round of products, as COPY text data keyed by COPY target."""
    rng, rand, pick = faker.rng, faker.rng.random, faker.pick
    products: list[str] = []
    variants: list[str] = []
    links: list[str] = []
    images: list[str] = []
    specs: list[str] = []
    for _ in range(batch):
        ids.product += 1
        pid = ids.product
        tree = pick(trees)
        d = pick(tree.domains)
        draft = faker.product(d)
        reference = reference_for(d, pid)
        url_key = url_key_for(draft.name, pid)
        brand = str(pick(brand_ids[d.key])) if rand() < 0.9 else _NULL
        created = rand() * _SEED_SPAN_S * 0.9
        updated = _ts(created + rand() * _SEED_SPAN_S * 0.1).isoformat()
        roll = rand()
        active = roll >= 0.04
        deleted_at = updated if roll >= 0.99 else _NULL
        external_id = uuid.UUID(int=rng.getrandbits(128), version=4)
        if len(draft.description) > LONG_DESCRIPTION_CHARS:
            counts.long_descriptions += 1
        counts.inactive_products += not active
        counts.soft_deleted_products += deleted_at != _NULL
        products.append(
            f"{pid}\t{tree.id}\t{reference}\t{_txt(draft.name)}\t{_txt(draft.description)}\t"
            f"{draft.price}\t{_opt(draft.list_price)}\t{'t' if active else 'f'}\t{url_key}\t"
            f"{_opt(draft.weight)}\t{draft.ean13}\t{brand}\t{{{','.join(draft.tags)}}}\t"
            f"{external_id}\t{_ts(created).isoformat()}\t{updated}\t{deleted_at}\n"
        )
        for k, (price, qty, attrs) in enumerate(draft.variants):
            ids.variant += 1
            attributes = _txt(_json_object(attrs))
            variants.append(
                f"{ids.variant}\t{pid}\t{variant_sku(reference, k)}\t{price}\t{qty}\t{attributes}\n"
            )
        chosen = sorted(set(faker.sample(tree.categories[d.key], faker.between(1, 3))))
        for position, cat in enumerate(chosen):
            links.append(f"{pid}\t{cat}\t{position * 10 + faker.between(0, 9)}\n")
        for position, (ext, size) in enumerate(draft.images):
            ids.image += 1
            file_name, url = image_fields(pid, url_key, tree.code, position, ext)
            images.append(f"{ids.image}\t{pid}\t{file_name}\t{url}\t{position}\t{size}\n")
        for order, (group, desc, value, suffix) in enumerate(draft.specs):
            ids.spec += 1
            specs.append(
                f"{ids.spec}\t{pid}\t{_txt(group)}\t{_txt(desc)}\t{_txt(value)}\t"
                f"{_opt(suffix)}\t{order}\n"
            )
    counts.products += batch
    counts.product_variants += len(variants)
    counts.product_categories += len(links)
    counts.product_images += len(images)
    counts.technical_data += len(specs)
    return {
        "products (id, store_id, reference, name, description, price, list_price, active, "
        "url_key, weight, ean13, brand_id, tags, external_id, created_at, updated_at, "
        "deleted_at)": "".join(products),
        "product_variants (id, product_id, sku, price, quantity, attributes)": "".join(variants),
        "product_categories (product_id, category_id, position)": "".join(links),
        "product_images (id, product_id, file_name, url, position, size_bytes)": "".join(images),
        "technical_data (id, product_id, group_name, description, value, suffix, print_order)": (
            "".join(specs)
        ),
    }
