"""Deterministic seeding of the demo catalog.

``seed_catalog(dsn, products=N, seed=S)`` loads stores, brands, a three-level
category tree per store, and N products with variants, categories, images and
technical data, all drawn from ``random.Random(S)``: the same seed gives the same
rows, ids included.  Rows go in with ``COPY`` in one transaction, so a failed
seed leaves nothing behind.

The vocabulary (product domains, names, specifications) lives here too, in
:class:`CatalogFaker`, which the live edits (:mod:`pipeline.demo.edits`) reuse.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from pipeline.demo.catalog import CATALOG_TABLES, load_schema
from pipeline.demo.errors import DemoError

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
T = TypeVar("T")

#: Descriptions of at least this many characters are "long" (out-of-line TOAST).
LONG_DESCRIPTION_CHARS = 4096
#: The products sync API's limits (seeds/erp-to-storefront-products-sync-api.txt).
MAX_DESCRIPTION_CHARS = 10_000
MAX_REFERENCE_CHARS = 64
MAX_NAME_CHARS = 255
MAX_IMAGES = 10
MAX_TECHNICAL_DATA = 100

_EPOCH = datetime(2023, 1, 1, tzinfo=UTC)
_SEED_SPAN_S = 2 * 365 * 86400  # created_at/updated_at of seeded rows fall in 2023-2024
_CHUNK = 2_000  # products generated (and copied) per round


# --------------------------------------------------------------------------- vocabulary


@dataclass(frozen=True)
class Spec:
    """One technical-data line: Gruppo / Descrizione / (Valore) / Suffisso."""

    group: str
    description: str
    values: tuple[str, ...] = ()
    low: float = 0.0
    high: float = 0.0
    decimals: int = 0
    suffix: str | None = None

    def value(self, rng: random.Random) -> str:
        if self.values:
            return self.values[int(rng.random() * len(self.values))]
        v = self.low + rng.random() * (self.high - self.low)
        return f"{v:.{self.decimals}f}" if self.decimals else str(round(v))


@dataclass(frozen=True)
class Domain:
    """A product domain: its category subtree, words, prices and specifications."""

    key: str
    prefix: str  # SKU prefix
    top: str  # top-level category
    subcategories: tuple[tuple[str, tuple[str, str]], ...]  # 3 of (name, 2 leaves)
    qualifiers: tuple[str, ...]
    materials: tuple[str, ...]
    nouns: tuple[str, ...]
    price: tuple[float, float]
    weight: tuple[float, float]  # kg
    axes: tuple[tuple[str, tuple[str, ...]], ...]  # variant attributes
    brands: tuple[str, ...]
    specs: tuple[Spec, ...]
    sentences: tuple[str, ...]
    tags: tuple[str, ...]


_COLORS = ("black", "white", "navy", "grey", "red", "forest green", "sand", "charcoal")

DOMAINS: tuple[Domain, ...] = (
    Domain(
        key="kitchen",
        prefix="KIT",
        top="Kitchen & Dining",
        subcategories=(
            ("Coffee & Tea", ("Espresso Machines", "Grinders & Kettles")),
            ("Small Appliances", ("Blenders & Mixers", "Toasters & Grills")),
            ("Cookware", ("Pans & Skillets", "Knives & Cutting Boards")),
        ),
        qualifiers=("Professional", "Compact", "Deluxe", "Classic", "Smart", "Barista", "Artisan"),
        materials=("Stainless Steel", "Cast Iron", "Ceramic", "Copper", "Carbon Steel", ""),
        nouns=(
            "Coffee Machine",
            "Espresso Maker",
            "Milk Frother",
            "Burr Grinder",
            "Electric Kettle",
            "Toaster",
            "Blender",
            "Stand Mixer",
            "Chef's Knife",
            "Skillet",
            "Saucepan",
            "French Press",
        ),
        price=(9.0, 1800.0),
        weight=(0.2, 14.0),
        axes=(("color", ("black", "silver", "red", "cream", "copper")),),
        brands=("CoffeePro", "Cucina Viva", "Brewmaster", "Kochwerk", "Ember & Oak"),
        specs=(
            Spec("Power", "Rated power", low=600, high=2400, suffix="W"),
            Spec("Power", "Voltage", values=("110-120", "220-240"), suffix="V"),
            Spec("Capacity", "Water tank", low=0.5, high=3.0, decimals=1, suffix="l"),
            Spec("Capacity", "Pump pressure", values=("9", "15", "19", "20"), suffix="bar"),
            Spec("Features", "Dishwasher safe", values=("Yes", "No")),
            Spec("Features", "Auto shut-off", values=("Yes", "No")),
        ),
        sentences=(
            "The {name} brings café-quality results to your kitchen every single morning.",
            "Built from {material} for even heat and decades of daily use.",
            "A thermoblock heating system reaches the right temperature in under a minute.",
            "Removable parts rinse clean in seconds and most go straight in the dishwasher.",
            "Designed with professional chefs, it balances precision with everyday ease.",
            "Its compact footprint leaves room on the counter for everything else.",
        ),
        tags=("kitchen", "coffee", "cooking", "appliance"),
    ),
    Domain(
        key="apparel",
        prefix="APP",
        top="Clothing",
        subcategories=(
            ("Knitwear", ("Sweaters", "Cardigans")),
            ("Tops", ("T-Shirts", "Shirts & Blouses")),
            ("Outerwear", ("Jackets", "Coats")),
        ),
        qualifiers=("Classic", "Slim-Fit", "Relaxed", "Heritage", "Essential", "Oversized"),
        materials=("Merino Wool", "Organic Cotton", "Linen", "Cashmere", "Denim", "Fleece"),
        nouns=(
            "Sweater",
            "Cardigan",
            "T-Shirt",
            "Oxford Shirt",
            "Hoodie",
            "Chinos",
            "Field Jacket",
            "Overcoat",
            "Scarf",
            "Beanie",
            "Polo Shirt",
        ),
        price=(12.0, 480.0),
        weight=(0.08, 2.2),
        axes=(("size", ("XS", "S", "M", "L", "XL", "XXL")), ("color", _COLORS)),
        brands=("Nordwind", "Loom & Thread", "Atelier Sette", "Woolhouse", "Marlow & Finch"),
        specs=(
            Spec("Material", "Composition", values=("100% wool", "100% cotton", "80/20 blend")),
            Spec("Material", "Fabric weight", low=120, high=420, suffix="g/m²"),
            Spec("Fit", "Cut", values=("Regular", "Slim", "Relaxed", "Oversized")),
            Spec("Care", "Washing", values=("30 °C", "40 °C", "Hand wash", "Dry clean only")),
            Spec("Care", "Tumble dry", values=("Yes", "No")),
            Spec("Fit", "Model height", low=172, high=192, suffix="cm"),
        ),
        sentences=(
            "Our {name} is knitted from {material} that stays soft wash after wash.",
            "A timeless cut that layers easily over a shirt or under a coat.",
            "Ribbed cuffs and hem keep their shape through seasons of wear.",
            "Ethically made in family-run mills that we visit every year.",
            "Naturally breathable and temperature-regulating, it suits every season.",
            "Pair it with chinos for the office or denim for the weekend.",
        ),
        tags=("clothing", "fashion", "knitwear", "sustainable"),
    ),
    Domain(
        key="electronics",
        prefix="ELE",
        top="Electronics",
        subcategories=(
            ("Audio", ("Headphones", "Speakers")),
            ("Computer Accessories", ("Keyboards & Mice", "Monitors")),
            ("Mobile", ("Chargers & Power Banks", "Cases & Cables")),
        ),
        qualifiers=("Wireless", "Noise-Cancelling", "Portable", "Ergonomic", "Ultra-Slim", "4K"),
        materials=("Aluminium", "Bluetooth", "USB-C", "Mechanical", ""),
        nouns=(
            "Headphones",
            "Earbuds",
            "Speaker",
            "Keyboard",
            "Mouse",
            "Monitor",
            "Webcam",
            "Power Bank",
            "Charger",
            "Docking Station",
            "Soundbar",
        ),
        price=(8.0, 1600.0),
        weight=(0.03, 9.0),
        axes=(("color", ("black", "white", "space grey", "midnight blue")),),
        brands=("Voltaic", "Brightline", "Sonora", "Pixelforge", "Kestrel Audio"),
        specs=(
            Spec("Connectivity", "Bluetooth", values=("5.0", "5.2", "5.3")),
            Spec("Connectivity", "Ports", values=("USB-C", "USB-C, USB-A", "HDMI, USB-C")),
            Spec("Battery", "Battery life", low=6, high=60, suffix="h"),
            Spec("Battery", "Charging time", low=1, high=4, decimals=1, suffix="h"),
            Spec("Display", "Resolution", values=("1920x1080", "2560x1440", "3840x2160")),
            Spec("Audio", "Frequency response", values=("20-20000", "10-40000"), suffix="Hz"),
        ),
        sentences=(
            "The {name} pairs instantly with every device you own.",
            "Adaptive noise cancelling shuts out the commute and keeps the music in.",
            "An {material} body keeps it light without giving up on durability.",
            "Fast charging gives you hours of use from a ten-minute top-up.",
            "Firmware updates over the air keep adding features after you buy it.",
            "Every unit is tested by hand before it leaves our warehouse.",
        ),
        tags=("electronics", "audio", "wireless", "tech"),
    ),
    Domain(
        key="outdoor",
        prefix="OUT",
        top="Sports & Outdoors",
        subcategories=(
            ("Hiking", ("Backpacks", "Tents")),
            ("Running", ("Running Shoes", "Running Apparel")),
            ("Cycling", ("Helmets", "Bike Accessories")),
        ),
        qualifiers=("Ultralight", "Waterproof", "Trail", "Insulated", "Alpine", "Expedition"),
        materials=("Ripstop Nylon", "Gore-Tex", "Recycled Polyester", "Carbon", ""),
        nouns=(
            "Hiking Backpack",
            "Tent",
            "Sleeping Bag",
            "Running Shoes",
            "Trail Jacket",
            "Cycling Helmet",
            "Water Bottle",
            "Trekking Poles",
            "Headlamp",
            "Yoga Mat",
        ),
        price=(6.0, 900.0),
        weight=(0.05, 6.5),
        axes=(("size", ("38", "39", "40", "41", "42", "43", "44", "45")), ("color", _COLORS)),
        brands=("Alpenstein", "Ridgeway", "Summit Supply", "Tundra Labs"),
        specs=(
            Spec("Performance", "Waterproof rating", low=5000, high=30000, suffix="mm"),
            Spec("Performance", "Temperature rating", low=-20, high=10, suffix="°C"),
            Spec("Capacity", "Volume", low=10, high=75, suffix="l"),
            Spec("Materials", "Outer fabric", values=("Nylon 40D", "Polyester 75D", "Dyneema")),
            Spec("Features", "Reflective details", values=("Yes", "No")),
            Spec("Features", "Packable", values=("Yes", "No")),
        ),
        sentences=(
            "The {name} was tested on three continents before it earned its name.",
            "{material} construction sheds rain and wind while staying breathable.",
            "Every gram was questioned: what remains is what you need on the trail.",
            "Reinforced stress points and bar-tacked seams are built for rough terrain.",
            "Reflective details keep you visible at dawn and dusk.",
            "Backed by a lifetime repair programme, because gear should last.",
        ),
        tags=("outdoor", "hiking", "running", "cycling"),
    ),
    Domain(
        key="home",
        prefix="HOM",
        top="Home & Furniture",
        subcategories=(
            ("Living Room", ("Sofas & Armchairs", "Coffee Tables")),
            ("Lighting", ("Floor Lamps", "Pendant Lights")),
            ("Office", ("Desks", "Office Chairs")),
        ),
        qualifiers=("Scandinavian", "Mid-Century", "Industrial", "Minimalist", "Rustic"),
        materials=("Oak", "Walnut", "Rattan", "Marble", "Brass", "Velvet"),
        nouns=(
            "Dining Chair",
            "Coffee Table",
            "Bookshelf",
            "Floor Lamp",
            "Pendant Light",
            "Standing Desk",
            "Armchair",
            "Sideboard",
            "Bed Frame",
            "Side Table",
        ),
        price=(25.0, 3200.0),
        weight=(1.0, 95.0),
        axes=(("finish", ("natural oak", "walnut", "black ash", "white lacquer")),),
        brands=("Hjem", "Casa Lume", "Oakhaven", "Linea Studio"),
        specs=(
            Spec("Dimensions", "Seat height", low=42, high=50, suffix="cm"),
            Spec("Materials", "Frame", values=("Solid oak", "Steel", "Beech plywood", "Walnut")),
            Spec("Assembly", "Assembly required", values=("Yes", "No")),
            Spec("Assembly", "Assembly time", low=10, high=90, suffix="min"),
            Spec("Load", "Maximum load", low=20, high=150, suffix="kg"),
            Spec("Lighting", "Bulb socket", values=("E27", "E14", "GU10", "Integrated LED")),
        ),
        sentences=(
            "The {name} pairs clean lines with the warmth of solid {material}.",
            "Each piece is finished by hand, so no two grain patterns are the same.",
            "Designed in Copenhagen and built to be passed down, not thrown away.",
            "Flat-packed to cut shipping emissions; assembly takes minutes.",
            "Felt pads protect your floors and keep it steady on any surface.",
            "A quiet, timeless design that fits any room it finds itself in.",
        ),
        tags=("home", "furniture", "interior", "design"),
    ),
    Domain(
        key="beauty",
        prefix="BEA",
        top="Beauty & Care",
        subcategories=(
            ("Skincare", ("Serums", "Moisturisers")),
            ("Hair Care", ("Shampoo", "Conditioner")),
            ("Body", ("Body Lotions", "Sun Care")),
        ),
        qualifiers=("Hydrating", "Brightening", "Organic", "Fragrance-Free", "Repairing"),
        materials=("Vitamin C", "Hyaluronic", "Argan Oil", "Aloe Vera", "Shea Butter", ""),
        nouns=(
            "Face Serum",
            "Night Cream",
            "Shampoo",
            "Conditioner",
            "Body Lotion",
            "Lip Balm",
            "Sunscreen SPF 50",
            "Cleansing Gel",
            "Eye Cream",
        ),
        price=(4.0, 140.0),
        weight=(0.02, 1.2),
        axes=(("volume", ("30 ml", "50 ml", "100 ml", "250 ml", "500 ml")),),
        brands=("Verdana Botanics", "Lumière", "Pura Vida Skin", "Halcyon"),
        specs=(
            Spec("Product", "Skin type", values=("All", "Dry", "Oily", "Sensitive")),
            Spec("Product", "Vegan", values=("Yes", "No")),
            Spec("Ingredients", "Key ingredient", values=("Niacinamide", "Retinol", "Ceramides")),
            Spec("Ingredients", "Natural origin", low=85, high=100, suffix="%"),
            Spec("Usage", "Period after opening", values=("6", "12", "24"), suffix="months"),
            Spec("Usage", "Application", values=("Morning", "Evening", "Morning and evening")),
        ),
        sentences=(
            "The {name} absorbs in seconds and leaves no sticky finish behind.",
            "Formulated with {material} to support the skin's natural barrier.",
            "Dermatologically tested and suitable for sensitive skin.",
            "Recyclable packaging, refills available, and never tested on animals.",
            "Visible results in two weeks, according to an independent consumer study.",
            "Apply a few drops to clean skin, morning and evening.",
        ),
        tags=("beauty", "skincare", "vegan", "natural"),
    ),
    Domain(
        key="garden",
        prefix="GAR",
        top="Garden & Tools",
        subcategories=(
            ("Power Tools", ("Drills & Drivers", "Saws")),
            ("Garden Tools", ("Lawn Mowers", "Hedge Trimmers")),
            ("Watering", ("Hoses & Reels", "Sprinklers")),
        ),
        qualifiers=("Cordless", "Heavy-Duty", "Ergonomic", "Brushless", "Telescopic"),
        materials=("18V", "Stainless Steel", "Lithium-Ion", "Forged Steel", ""),
        nouns=(
            "Drill Driver",
            "Impact Driver",
            "Circular Saw",
            "Lawn Mower",
            "Hedge Trimmer",
            "Pruning Shears",
            "Garden Hose",
            "Tool Set",
            "Leaf Blower",
            "Sprinkler",
        ),
        price=(7.0, 1100.0),
        weight=(0.1, 38.0),
        axes=(("battery", ("bare tool", "2.0 Ah", "4.0 Ah", "5.0 Ah kit")),),
        brands=("Forgeline", "Greenacre", "Torque Works", "Hedgerow & Co"),
        specs=(
            Spec("Power", "Battery voltage", values=("12", "18", "36"), suffix="V"),
            Spec("Power", "No-load speed", low=400, high=3600, suffix="rpm"),
            Spec("Power", "Max torque", low=20, high=180, suffix="Nm"),
            Spec("Cutting", "Cutting width", low=30, high=55, suffix="cm"),
            Spec("Features", "Brushless motor", values=("Yes", "No")),
            Spec("Features", "LED work light", values=("Yes", "No")),
        ),
        sentences=(
            "The {name} handles a full weekend of projects on a single charge.",
            "A {material} drivetrain delivers torque without the weight.",
            "The rubber over-moulded grip reduces vibration and fatigue.",
            "Part of a battery platform with more than fifty compatible tools.",
            "Every tool is covered by a three-year warranty after registration.",
            "Built for the garden shed and the job site alike.",
        ),
        tags=("garden", "tools", "diy", "cordless"),
    ),
)

_COMMON_SPECS: tuple[Spec, ...] = (
    Spec("General", "Warranty", values=("1", "2", "3", "5"), suffix="years"),
    Spec("General", "Country of origin", values=("Italy", "Germany", "Portugal", "Vietnam")),
    Spec("General", "Model year", values=("2022", "2023", "2024", "2025")),
    Spec("Dimensions", "Width", low=5, high=180, suffix="cm"),
    Spec("Dimensions", "Height", low=2, high=200, suffix="cm"),
    Spec("Dimensions", "Depth", low=1, high=90, suffix="cm"),
    Spec("Logistics", "Package weight", low=0.1, high=40, decimals=2, suffix="kg"),
)

_GENERIC_SENTENCES: tuple[str, ...] = (
    "Free delivery on orders over fifty and thirty-day returns, no questions asked.",
    "Stocked in our own warehouse and shipped within one business day.",
    "Our customer service team answers every question within a day.",
    "Rated four and a half stars by thousands of verified buyers.",
    "Questions about sizing or compatibility? Our product experts are here to help.",
    "Packed in recycled cardboard with plastic-free fillers.",
)

_GENERIC_TAGS = ("new", "bestseller", "eco", "sale", "limited-edition", "gift-idea")
_MODEL_SUFFIXES = ("Pro", "Plus", "Max", "Lite", "Mini", "II", "X", "2.0", "S")
_IMAGE_EXTENSIONS = ("jpg", "jpg", "jpg", "webp", "webp", "png", "jpeg", "gif")
_IMAGE_VIEWS = ("front", "back", "side", "detail", "lifestyle", "packaging", "top")

_STORES: tuple[tuple[str, str, str, str], ...] = (
    ("us", "Catalog Demo US", "USD", "en_US"),
    ("de", "Catalog Demo Deutschland", "EUR", "de_DE"),
    ("it", "Catalog Demo Italia", "EUR", "it_IT"),
    ("uk", "Catalog Demo UK", "GBP", "en_GB"),
    ("fr", "Catalog Demo France", "EUR", "fr_FR"),
    ("ch", "Catalog Demo Schweiz", "CHF", "de_CH"),
    ("se", "Catalog Demo Sverige", "SEK", "sv_SE"),
    ("jp", "Catalog Demo Japan", "JPY", "ja_JP"),
)

_CMS_PAGES: tuple[tuple[str, str], ...] = (
    ("about-us", "About us"),
    ("shipping", "Shipping & delivery"),
    ("returns", "Returns & refunds"),
    ("privacy-policy", "Privacy policy"),
    ("terms", "Terms & conditions"),
    ("contact", "Contact us"),
    ("faq", "Frequently asked questions"),
)

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
            name = f"{name} {pick(_MODEL_SUFFIXES)}"
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
                pick(d.sentences if rand() < 0.75 else _GENERIC_SENTENCES)
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
        pool = d.specs + _COMMON_SPECS
        chosen = self.sample(pool, count)
        chosen.sort(key=lambda s: (s.group, s.description))
        return [(s.group, s.description, s.value(self.rng), s.suffix) for s in chosen]

    def spec(self, d: Domain) -> tuple[str, str, str, str | None]:
        s = self.pick(d.specs + _COMMON_SPECS)
        return s.group, s.description, s.value(self.rng), s.suffix

    def images(self, count: int) -> list[tuple[str, int]]:
        return [
            (self.pick(_IMAGE_EXTENSIONS), self.between(18_000, 2_400_000)) for _ in range(count)
        ]

    def tags(self, d: Domain) -> list[str]:
        tags: list[str] = []
        n = self.between(0, 3)
        if n:
            tags.extend(self.sample(d.tags + _GENERIC_TAGS, n))
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
    view = _IMAGE_VIEWS[position % len(_IMAGE_VIEWS)]
    file_name = f"{url_key}-{view}-{position + 1}.{ext}"
    return file_name, f"https://cdn.example.com/{store_code}/products/{product_id}/{file_name}"


# --------------------------------------------------------------------------- seeding


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
            if i < len(_STORES):
                code, name, currency, locale = _STORES[i]
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
                sentence = faker.pick(_GENERIC_SENTENCES)
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
            for ident, title in rng.sample(_CMS_PAGES, faker.between(4, 6)):
                page_id += 1
                body = " ".join(faker.pick(_GENERIC_SENTENCES) for _ in range(faker.between(3, 8)))
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
    rng, rand, pick = faker.rng, faker._random, faker.pick
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
