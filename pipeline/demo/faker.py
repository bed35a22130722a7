"""Realistic product content for the demo catalog, drawn from a seeded random.

:class:`CatalogFaker` turns the vocabulary (:mod:`pipeline.demo.vocabulary`) into
products (:class:`ProductDraft`: name, description, prices, variants, images,
technical data): every value comes from one :class:`random.Random`, in a fixed order,
so the same seed gives the same content.  Beside it the rules the catalog's fields
follow (SKUs, url keys, image file names, EAN-13, money) and the products sync API's
limits.  Used by the seed (:mod:`pipeline.demo.seed`) and the live edits
(:mod:`pipeline.demo.edits`).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from pipeline.demo.vocabulary import (
    COMMON_SPECS,
    DOMAINS,
    GENERIC_SENTENCES,
    GENERIC_TAGS,
    IMAGE_EXTENSIONS,
    IMAGE_VIEWS,
    MODEL_SUFFIXES,
    Domain,
)

T = TypeVar("T")

#: Descriptions of at least this many characters are "long" (out-of-line TOAST).
LONG_DESCRIPTION_CHARS = 4096
#: The products sync API's limits (seeds/erp-to-storefront-products-sync-api.txt).
MAX_DESCRIPTION_CHARS = 10_000
MAX_REFERENCE_CHARS = 64
MAX_NAME_CHARS = 255
MAX_IMAGES = 10
MAX_TECHNICAL_DATA = 100

_SLUG_RE = re.compile(r"[^a-z0-9]+")


def slugify(text: str) -> str:
    """``"Chef's Knife 2.0"`` → ``"chef-s-knife-2-0"`` (matches the url_key CHECK)."""
    return _SLUG_RE.sub("-", text.lower()).strip("-") or "item"


def ean13(rng: random.Random) -> str:
    """A valid EAN-13 (GS1 check digit)."""
    body = f"{rng.randrange(10**12):012d}"
    total = sum(int(c) * (3 if i % 2 else 1) for i, c in enumerate(body))
    return body + str((10 - total % 10) % 10)


def money(value: float) -> str:
    """A numeric(12,2) literal, never negative."""
    return f"{max(value, 0.0):.2f}"


@dataclass(frozen=True)
class ProductDraft:
    """A generated product and its child rows (ids not yet assigned)."""

    domain: Domain
    name: str
    description: str
    price: str
    list_price: str | None
    weight: str | None
    ean13: str
    tags: list[str]
    variants: list[tuple[str, int, dict[str, str]]]  # (price, quantity, attributes)
    images: list[tuple[str, int]]  # (extension, size_bytes)
    specs: list[tuple[str, str, str, str | None]]  # (group, description, value, suffix)


class CatalogFaker:
    """Realistic product content drawn from a :class:`random.Random`.

    Every value comes from ``rng``, in a fixed order: the same seed, the same content.
    """

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self._random = rng.random

    def pick(self, seq: Sequence[T]) -> T:
        return seq[int(self._random() * len(seq))]

    def between(self, low: int, high: int) -> int:
        """An int in [low, high]."""
        return low + int(self._random() * (high - low + 1))

    def sample(self, seq: Sequence[T], k: int) -> list[T]:
        """``k`` distinct elements of ``seq`` (partial Fisher-Yates; cheaper than
        ``random.sample`` for the short lists used here)."""
        pool = list(seq)
        n = len(pool)
        k = min(k, n)
        rand = self._random
        for i in range(k):
            j = i + int(rand() * (n - i))
            pool[i], pool[j] = pool[j], pool[i]
        return pool[:k]

    def domain(self) -> Domain:
        return self.pick(DOMAINS)

    def product_name(self, d: Domain) -> str:
        pick = self.pick
        noun = pick(d.nouns)
        material = pick(d.materials)
        shape = self._random()
        if shape < 0.35 and material:
            name = f"{material} {noun}"
        elif shape < 0.75 or not material:
            name = f"{pick(d.qualifiers)} {noun}"
        else:
            name = f"{pick(d.qualifiers)} {material} {noun}"
        if self._random() < 0.2:
            name = f"{name} {pick(MODEL_SUFFIXES)}"
        return name[:MAX_NAME_CHARS]

    def description(self, d: Domain, name: str, *, long: bool = False) -> str:
        pick, rand = self.pick, self._random
        material = pick([m for m in d.materials if m] or ["premium materials"])
        target = self.between(LONG_DESCRIPTION_CHARS + 200, 9_500) if long else 0
        paragraphs: list[str] = []
        size = 0
        count = self.between(1, 3)
        while len(paragraphs) < count or size < target:
            sentences = [
                pick(d.sentences if rand() < 0.75 else GENERIC_SENTENCES)
                for _ in range(self.between(2, 5))
            ]
            para = " ".join(sentences).format(name=name, material=material)
            if long and rand() < 0.4:
                spec = pick(d.specs)
                unit = f" {spec.suffix}" if spec.suffix else ""
                para += f" {spec.description}: {spec.value(self.rng)}{unit}."
            paragraphs.append(para)
            size += len(para) + 2
        return "\n\n".join(paragraphs)[:MAX_DESCRIPTION_CHARS]

    def price(self, d: Domain) -> float:
        lo, hi = d.price
        value = math.exp(math.log(lo) + self._random() * (math.log(hi) - math.log(lo)))
        if value >= 20:
            return math.floor(value) + self.pick((0.0, 0.5, 0.95, 0.99, 0.99))
        return round(value, 2)

    def variants(
        self, d: Domain, price: float, count: int
    ) -> list[tuple[str, int, dict[str, str]]]:
        combos = math.prod(len(values) for _, values in d.axes)
        out: list[tuple[str, int, dict[str, str]]] = []
        for index in self.sample(range(combos), count):
            attributes: dict[str, str] = {}
            for name, values in d.axes:
                index, choice = divmod(index, len(values))
                attributes[name] = values[choice]
            delta = self.pick((0.0, 0.0, 0.0, 0.05, 0.1, -0.05))
            out.append((money(price * (1 + delta)), self.quantity(), attributes))
        return out

    def quantity(self) -> int:
        r = self._random()
        if r < 0.08:
            return 0
        return min(int(-40.0 * math.log(1.0 - self._random())), 2_000)

    def specs(self, d: Domain, count: int) -> list[tuple[str, str, str, str | None]]:
        if count <= 0:
            return []
        pool = d.specs + COMMON_SPECS
        chosen = self.sample(pool, count)
        chosen.sort(key=lambda s: (s.group, s.description))
        return [(s.group, s.description, s.value(self.rng), s.suffix) for s in chosen]

    def spec(self, d: Domain) -> tuple[str, str, str, str | None]:
        s = self.pick(d.specs + COMMON_SPECS)
        return s.group, s.description, s.value(self.rng), s.suffix

    def images(self, count: int) -> list[tuple[str, int]]:
        return [
            (self.pick(IMAGE_EXTENSIONS), self.between(18_000, 2_400_000)) for _ in range(count)
        ]

    def tags(self, d: Domain) -> list[str]:
        tags: list[str] = []
        n = self.between(0, 3)
        if n:
            tags.extend(self.sample(d.tags + GENERIC_TAGS, n))
        return tags

    def product(
        self,
        d: Domain | None = None,
        *,
        long_description: bool | None = None,
        max_variants: int = 5,
        max_images: int = 6,
        max_specs: int = 12,
    ) -> ProductDraft:
        rand = self._random
        d = d or self.domain()
        name = self.product_name(d)
        long = rand() < 0.03 if long_description is None else long_description
        price = self.price(d)
        roll = rand()
        if roll < 0.25:
            list_price: str | None = money(price * (1.1 + 0.5 * rand()))
        elif roll < 0.9:
            list_price = money(price)
        else:
            list_price = None
        lo, hi = d.weight
        weight = f"{lo + (hi - lo) * rand():.3f}" if rand() < 0.95 else None
        code = ean13(self.rng) if rand() < 0.85 else ""
        n_images = min(self.pick((0, 1, 1, 2, 2, 3, 3, 4, 5, 6)), max_images)
        return ProductDraft(
            domain=d,
            name=name,
            description=self.description(d, name, long=long),
            price=money(price),
            list_price=list_price,
            weight=weight,
            ean13=code,
            tags=self.tags(d),
            variants=self.variants(d, price, self.between(1, max_variants)),
            images=self.images(n_images),
            specs=self.specs(d, self.between(0, max_specs)),
        )


def reference_for(d: Domain, product_id: int) -> str:
    """The product's SKU (``KIT-0001234``): unique because the id is."""
    return f"{d.prefix}-{product_id:07d}"


def url_key_for(name: str, product_id: int) -> str:
    """``professional-coffee-machine-1234``: unique per store because the id is."""
    return f"{slugify(name)}-{product_id}"


def variant_sku(reference: str, index: int) -> str:
    return f"{reference}-{index + 1:02d}"


def image_fields(
    product_id: int, url_key: str, store_code: str, position: int, ext: str
) -> tuple[str, str]:
    """(file_name, url) of a product image."""
    view = IMAGE_VIEWS[position % len(IMAGE_VIEWS)]
    file_name = f"{url_key}-{view}-{position + 1}.{ext}"
    return file_name, f"https://cdn.example.com/{store_code}/products/{product_id}/{file_name}"
