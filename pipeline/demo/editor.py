"""The kinds of live edit of the demo catalog, one method each.

:class:`Editor` holds every edit :func:`pipeline.demo.edits.run_edits` applies:
price and stock changes, new products, name and description edits (some
descriptions over 4 kB), soft and hard deletes, (de)activations, category moves and
renames, brand renames, image reorders, technical-data edits, multi-table updates and
a transaction that is rolled back.  Each method runs inside a transaction its caller
opened and returns the counters to bump once it has committed; it never commits,
retries or reconnects itself (the run loop in :mod:`pipeline.demo.edits` does).

Rows are picked from the database (a random point in a table's id range, locked
with ``SKIP LOCKED``), never assumed from the seed; the new content comes from
:class:`pipeline.demo.faker.CatalogFaker`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb

from pipeline.demo.faker import (
    LONG_DESCRIPTION_CHARS,
    MAX_IMAGES,
    MAX_TECHNICAL_DATA,
    CatalogFaker,
    image_fields,
    money,
    reference_for,
    slugify,
    url_key_for,
    variant_sku,
)
from pipeline.demo.vocabulary import DOMAINS, Domain

Conn = psycopg.Connection[TupleRow]

#: Prefix of every reference/SKU written by a transaction that is then rolled back:
#: no row carrying it may ever be visible.
ROLLBACK_MARKER = "ROLLBACK-"

_DOMAIN_BY_PREFIX = {d.prefix: d for d in DOMAINS}
_DOMAIN_BY_CATEGORY = {
    name: d
    for d in DOMAINS
    for name in (
        d.top,
        *(m for m, _ in d.subcategories),
        *(x for _, ls in d.subcategories for x in ls),
    )
}
_CATEGORY_PREFIXES = ("New", "Best of", "Premium", "Essential", "Seasonal", "Top")
_BRAND_SUFFIXES = ("Group", "Co.", "International", "Studio", "Labs", "Works")


class Rollback(Exception):
    """Raised by an edit that must be rolled back."""


class Editor:
    """The edit kinds.  Each runs inside an open transaction and returns the
    :class:`~pipeline.demo.edits.EditStats` counters to bump once it has committed
    (``[]``: nothing to do)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.faker = CatalogFaker(rng)

    # ------------------------------------------------------------------ row picking

    def pick(
        self,
        conn: Conn,
        table: str,
        columns: str,
        where: str = "TRUE",
        *,
        lock: bool = True,
        params: Sequence[Any] = (),
    ) -> tuple[Any, ...] | None:
        """A random row of ``table`` (by a random point in its id range), locked.

        ``columns`` and ``where`` are constants of this module.  Rows locked by
        another session are skipped rather than waited for.
        """
        bounds = conn.execute(
            sql.SQL("SELECT min(id), max(id) FROM {}").format(sql.Identifier(table))
        ).fetchone()
        if bounds is None or bounds[0] is None:
            return None
        start = self.rng.randint(int(bounds[0]), int(bounds[1]))
        query = sql.SQL(
            "SELECT {cols} FROM {table} WHERE id >= %s AND ({where}) ORDER BY id LIMIT 1{lock}"
        ).format(
            cols=sql.SQL(columns),
            table=sql.Identifier(table),
            where=sql.SQL(where),
            lock=sql.SQL(" FOR UPDATE SKIP LOCKED" if lock else ""),
        )
        row = conn.execute(query, (start, *params)).fetchone()
        if row is None:
            row = conn.execute(query, (bounds[0], *params)).fetchone()
        return tuple(row) if row is not None else None

    def domain_of(self, reference: str | None) -> Domain:
        prefix = (reference or "").split("-", 1)[0]
        return _DOMAIN_BY_PREFIX.get(prefix) or self.faker.domain()

    # ------------------------------------------------------------------ edit kinds

    def price_change(self, conn: Conn) -> list[str]:
        row = self.pick(conn, "products", "id, price", "deleted_at IS NULL")
        if row is None:
            return []
        pid, price = int(row[0]), float(row[1])
        r = self.rng.random()
        if r < 0.3:  # on sale: list price keeps the old price
            factor = self.rng.uniform(0.6, 0.9)
            new_price, list_price = money(price * factor), money(price)
        else:  # repricing
            factor = self.rng.uniform(0.85, 1.2)
            new_price = money(price * factor)
            list_price = new_price
        conn.execute(
            "UPDATE products SET price = %s, list_price = %s WHERE id = %s",
            (new_price, list_price, pid),
        )
        conn.execute(
            "UPDATE product_variants SET price = round(price * %s::numeric, 2) "
            "WHERE product_id = %s",
            (f"{factor:.4f}", pid),
        )
        return ["price_changes"]

    def stock_change(self, conn: Conn) -> list[str]:
        row = self.pick(conn, "product_variants", "id, quantity")
        if row is None:
            return []
        lines = [row]
        if self.rng.random() < 0.2:  # an order with a second line
            other = self.pick(conn, "product_variants", "id, quantity")
            if other is not None and other[0] != row[0]:
                lines.append(other)
        for vid, qty in lines:
            r = self.rng.random()
            if r < 0.7:
                new = max(0, int(qty) - self.rng.randint(1, 3))
            elif r < 0.95:
                new = int(qty) + self.rng.randint(10, 120)
            else:
                new = 0
            conn.execute("UPDATE product_variants SET quantity = %s WHERE id = %s", (new, vid))
        return ["stock_changes"]

    def new_product(self, conn: Conn, *, reference_prefix: str = "") -> list[str]:
        store = self.pick(conn, "stores", "id, code", lock=False)
        if store is None:
            return []
        store_id, store_code = int(store[0]), str(store[1])
        cats = conn.execute(
            "SELECT id, name FROM categories WHERE store_id = %s ORDER BY id", (store_id,)
        ).fetchall()
        chosen = self.rng.sample(cats, min(len(cats), self.rng.randint(1, 3))) if cats else []
        domain = (
            next(
                (_DOMAIN_BY_CATEGORY[str(n)] for _, n in chosen if str(n) in _DOMAIN_BY_CATEGORY),
                None,
            )
            or self.faker.domain()
        )
        brand = self.pick(conn, "brands", "id", lock=False) if self.rng.random() < 0.9 else None
        draft = self.faker.product(domain, long_description=self.rng.random() < 0.1)
        id_row = conn.execute("SELECT nextval(pg_get_serial_sequence('products', 'id'))").fetchone()
        assert id_row is not None
        pid = int(id_row[0])
        reference = reference_prefix + reference_for(domain, pid)
        url_key = url_key_for(draft.name, pid)
        conn.execute(
            "INSERT INTO products (id, store_id, reference, name, description, price, "
            "list_price, active, url_key, weight, ean13, brand_id, tags) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, true, %s, %s, %s, %s, %s)",
            (
                pid,
                store_id,
                reference,
                draft.name,
                draft.description,
                draft.price,
                draft.list_price,
                url_key,
                draft.weight,
                draft.ean13,
                brand[0] if brand else None,
                draft.tags,
            ),
        )
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO product_variants (product_id, sku, price, quantity, attributes) "
                "VALUES (%s, %s, %s, %s, %s)",
                [
                    (pid, variant_sku(reference, k), price, qty, Jsonb(attrs))
                    for k, (price, qty, attrs) in enumerate(draft.variants)
                ],
            )
            if chosen:
                cur.executemany(
                    "INSERT INTO product_categories (product_id, category_id, position) "
                    "VALUES (%s, %s, %s)",
                    [(pid, cid, 1000 + i) for i, (cid, _) in enumerate(chosen)],
                )
            if draft.images:
                cur.executemany(
                    "INSERT INTO product_images (product_id, file_name, url, position, size_bytes) "
                    "VALUES (%s, %s, %s, %s, %s)",
                    [
                        (pid, *image_fields(pid, url_key, store_code, pos, ext), pos, size)
                        for pos, (ext, size) in enumerate(draft.images)
                    ],
                )
            if draft.specs:
                cur.executemany(
                    "INSERT INTO technical_data (product_id, group_name, description, value, "
                    "suffix, print_order) VALUES (%s, %s, %s, %s, %s, %s)",
                    [(pid, *spec, order) for order, spec in enumerate(draft.specs)],
                )
        out = ["new_products"]
        if len(draft.description) > LONG_DESCRIPTION_CHARS:
            out.append("long_descriptions")
        return out

    def product_edit(self, conn: Conn) -> list[str]:
        row = self.pick(conn, "products", "id, reference, name", "deleted_at IS NULL")
        if row is None:
            return []
        pid, reference, name = int(row[0]), str(row[1]), str(row[2])
        domain = self.domain_of(reference)
        r = self.rng.random()
        out = ["product_edits"]
        if r < 0.35:  # rename only: the (maybe TOASTed) description stays unchanged
            conn.execute(
                "UPDATE products SET name = %s WHERE id = %s",
                (self.faker.product_name(domain), pid),
            )
            return out
        long = self.rng.random() < 0.3
        description = self.faker.description(domain, name, long=long)
        if r < 0.7:
            conn.execute("UPDATE products SET description = %s WHERE id = %s", (description, pid))
        else:
            new_name = self.faker.product_name(domain)
            conn.execute(
                "UPDATE products SET name = %s, description = %s WHERE id = %s",
                (new_name, self.faker.description(domain, new_name, long=long), pid),
            )
        if long:
            out.append("long_descriptions")
        return out

    def soft_delete(self, conn: Conn) -> list[str]:
        row = self.pick(conn, "products", "id", "deleted_at IS NULL")
        if row is None:
            return []
        conn.execute("UPDATE products SET deleted_at = now() WHERE id = %s", (row[0],))
        return ["soft_deletes"]

    def hard_delete(self, conn: Conn) -> list[str]:
        row = None
        if self.rng.random() < 0.6:  # purge a soft-deleted product
            row = self.pick(conn, "products", "id", "deleted_at IS NOT NULL")
        if row is None:
            row = self.pick(conn, "products", "id")
        if row is None:
            return []
        conn.execute("DELETE FROM products WHERE id = %s", (row[0],))  # cascades
        return ["hard_deletes"]

    def activation(self, conn: Conn) -> list[str]:
        order = ["reactivate", "deactivate"]
        self.rng.shuffle(order)
        for action in order:
            if action == "reactivate":
                row = self.pick(conn, "products", "id", "NOT active OR deleted_at IS NOT NULL")
                if row is not None:
                    conn.execute(
                        "UPDATE products SET active = true, deleted_at = NULL WHERE id = %s",
                        (row[0],),
                    )
                    return ["reactivations"]
            else:
                row = self.pick(conn, "products", "id", "active AND deleted_at IS NULL")
                if row is not None:
                    conn.execute("UPDATE products SET active = false WHERE id = %s", (row[0],))
                    return ["deactivations"]
        return []

    def category_move(self, conn: Conn) -> list[str]:
        if self.rng.random() < 0.7:
            # a leaf under another first- or second-level category of its store
            row = self.pick(
                conn,
                "categories",
                "id, store_id, parent_id",
                "parent_id IS NOT NULL AND NOT EXISTS "
                "(SELECT 1 FROM categories ch WHERE ch.parent_id = categories.id)",
            )
            targets_sql = (
                "SELECT id FROM categories WHERE store_id = %s AND id <> %s "
                "AND id IS DISTINCT FROM %s AND (parent_id IS NULL OR parent_id IN "
                "(SELECT r.id FROM categories r WHERE r.parent_id IS NULL)) "
                "ORDER BY id"
            )
        else:
            # a second-level category (with its children) under another root
            row = self.pick(
                conn,
                "categories",
                "id, store_id, parent_id",
                "parent_id IN (SELECT r.id FROM categories r WHERE r.parent_id IS NULL)",
            )
            targets_sql = (
                "SELECT id FROM categories WHERE store_id = %s AND id <> %s "
                "AND id IS DISTINCT FROM %s AND parent_id IS NULL ORDER BY id"
            )
        if row is None:
            return []
        cid, store_id, parent_id = int(row[0]), int(row[1]), row[2]
        targets = [int(t[0]) for t in conn.execute(targets_sql, (store_id, cid, parent_id))]
        if not targets:
            return []
        new_parent = self.rng.choice(targets)
        # Lock the new parent too: two concurrent moves can then not build a cycle
        # (one waits, or they deadlock and one is retried), which the cycle trigger,
        # reading its own snapshot, could not see.
        conn.execute("SELECT 1 FROM categories WHERE id = %s FOR UPDATE", (new_parent,))
        conn.execute(
            "UPDATE categories SET parent_id = %s, position = "
            "(SELECT coalesce(max(position), -1) + 1 FROM categories WHERE parent_id = %s) "
            "WHERE id = %s",
            (new_parent, new_parent, cid),
        )
        return ["category_moves"]

    def category_rename(self, conn: Conn) -> list[str]:
        row = self.pick(conn, "categories", "id, name")
        if row is None:
            return []
        cid, name = int(row[0]), str(row[1])
        base = name
        for prefix in _CATEGORY_PREFIXES:
            if base.startswith(prefix + " "):
                base = base[len(prefix) + 1 :]
        new_name = (
            base
            if base != name and self.rng.random() < 0.5
            else (f"{self.rng.choice(_CATEGORY_PREFIXES)} {base}")
        )
        if self.rng.random() < 0.3:  # the URL follows the name
            conn.execute(
                "UPDATE categories SET name = %s, url_key = %s WHERE id = %s",
                (new_name, f"{slugify(new_name)}-{cid}", cid),
            )
        else:
            conn.execute("UPDATE categories SET name = %s WHERE id = %s", (new_name, cid))
        return ["category_renames"]

    def brand_rename(self, conn: Conn) -> list[str]:
        row = self.pick(conn, "brands", "id, name")
        if row is None:
            return []
        bid, name = int(row[0]), str(row[1])
        base = name
        for suffix in _BRAND_SUFFIXES:
            if base.endswith(" " + suffix):
                base = base[: -len(suffix) - 1]
        new_name = f"{base} {self.rng.choice(_BRAND_SUFFIXES)}"
        conn.execute(
            "UPDATE brands SET name = %s, description = %s WHERE id = %s",
            (new_name, f"{new_name}, formerly {name}. Same products, same team.", bid),
        )
        return ["brand_renames"]

    def image_reorder(self, conn: Conn) -> list[str]:
        for _ in range(5):
            row = self.pick(conn, "product_images", "product_id", lock=False)
            if row is None:
                return []
            images = conn.execute(
                "SELECT id FROM product_images WHERE product_id = %s ORDER BY position, id "
                "FOR UPDATE",
                (row[0],),
            ).fetchall()
            if len(images) < 2:
                continue
            ids = [int(i[0]) for i in images]
            order = ids[:]
            while order == ids:
                self.rng.shuffle(order)
            with conn.cursor() as cur:
                cur.executemany(
                    "UPDATE product_images SET position = %s WHERE id = %s",
                    [(pos, iid) for pos, iid in enumerate(order)],
                )
            return ["image_reorders"]
        return []

    def technical_data_edit(self, conn: Conn) -> list[str]:
        row = self.pick(conn, "products", "id, reference", "deleted_at IS NULL")
        if row is None:
            return []
        pid, domain = int(row[0]), self.domain_of(str(row[1]))
        specs = conn.execute(
            "SELECT id FROM technical_data WHERE product_id = %s ORDER BY print_order, id "
            "FOR UPDATE",
            (pid,),
        ).fetchall()
        r = self.rng.random()
        if specs and r < 0.6:
            group, desc, value, suffix = self.faker.spec(domain)
            conn.execute(
                "UPDATE technical_data SET value = %s WHERE id = %s",
                (value, self.rng.choice(specs)[0]),
            )
        elif specs and r < 0.75:
            conn.execute("DELETE FROM technical_data WHERE id = %s", (self.rng.choice(specs)[0],))
        elif len(specs) < MAX_TECHNICAL_DATA:
            group, desc, value, suffix = self.faker.spec(domain)
            conn.execute(
                "INSERT INTO technical_data (product_id, group_name, description, value, suffix, "
                "print_order) VALUES (%s, %s, %s, %s, %s, %s)",
                (pid, group, desc, value, suffix, len(specs)),
            )
        else:
            return []
        return ["technical_data_edits"]

    def multi_table(self, conn: Conn) -> list[str]:
        """An ERP-style full update of one product: several tables, one transaction."""
        row = self.pick(
            conn, "products", "id, store_id, reference, price, url_key", "deleted_at IS NULL"
        )
        if row is None:
            return []
        pid, store_id, reference = int(row[0]), int(row[1]), str(row[2])
        price, url_key = float(row[3]), str(row[4])
        domain = self.domain_of(reference)
        conn.execute(
            "UPDATE products SET name = %s, price = %s, list_price = %s WHERE id = %s",
            (
                self.faker.product_name(domain),
                money(price * self.rng.uniform(0.9, 1.1)),
                money(price * 1.2),
                pid,
            ),
        )
        conn.execute(
            "UPDATE product_variants SET quantity = quantity + %s WHERE product_id = %s",
            (self.rng.randint(1, 50), pid),
        )
        cats = conn.execute(
            "SELECT id FROM categories WHERE store_id = %s ORDER BY id", (store_id,)
        ).fetchall()
        if cats:
            conn.execute("DELETE FROM product_categories WHERE product_id = %s", (pid,))
            chosen = self.rng.sample(cats, min(len(cats), self.rng.randint(1, 2)))
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO product_categories (product_id, category_id, position) "
                    "VALUES (%s, %s, %s)",
                    [(pid, c[0], i) for i, c in enumerate(chosen)],
                )
        images = conn.execute(
            "SELECT id FROM product_images WHERE product_id = %s ORDER BY position DESC, id DESC",
            (pid,),
        ).fetchall()
        if len(images) < MAX_IMAGES:
            store = conn.execute("SELECT code FROM stores WHERE id = %s", (store_id,)).fetchone()
            ext, size = self.faker.images(1)[0]
            file_name, url = image_fields(
                pid, url_key, str(store[0]) if store else "x", len(images), ext
            )
            conn.execute(
                "INSERT INTO product_images (product_id, file_name, url, position, size_bytes) "
                "VALUES (%s, %s, %s, %s, %s)",
                (pid, file_name, url, len(images), size),
            )
        else:
            conn.execute("DELETE FROM product_images WHERE id = %s", (images[0][0],))
        conn.execute(
            "UPDATE technical_data SET value = %s WHERE id = "
            "(SELECT id FROM technical_data WHERE product_id = %s ORDER BY print_order LIMIT 1)",
            (self.faker.spec(domain)[2], pid),
        )
        return ["multi_table"]

    def rolled_back(self, conn: Conn) -> list[str]:
        """Insert a marked product and change others, then roll it all back."""
        self.new_product(conn, reference_prefix=ROLLBACK_MARKER)
        self.price_change(conn)
        self.stock_change(conn)
        raise Rollback
