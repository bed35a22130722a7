"""The demo catalog's vocabulary: product domains, their words and specifications.

Pure data: each :class:`Domain` is a category subtree with the nouns, materials,
brands, prices, variant axes, technical-data lines (:class:`Spec`) and description
sentences of its products; beside them the specifications, sentences and tags every
domain shares, and the named stores and CMS pages of the seed.  Drawn from by
:class:`pipeline.demo.faker.CatalogFaker`, and by the seed (:mod:`pipeline.demo.seed`)
for the reference data.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


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

COMMON_SPECS: tuple[Spec, ...] = (
    Spec("General", "Warranty", values=("1", "2", "3", "5"), suffix="years"),
    Spec("General", "Country of origin", values=("Italy", "Germany", "Portugal", "Vietnam")),
    Spec("General", "Model year", values=("2022", "2023", "2024", "2025")),
    Spec("Dimensions", "Width", low=5, high=180, suffix="cm"),
    Spec("Dimensions", "Height", low=2, high=200, suffix="cm"),
    Spec("Dimensions", "Depth", low=1, high=90, suffix="cm"),
    Spec("Logistics", "Package weight", low=0.1, high=40, decimals=2, suffix="kg"),
)

GENERIC_SENTENCES: tuple[str, ...] = (
    "Free delivery on orders over fifty and thirty-day returns, no questions asked.",
    "Stocked in our own warehouse and shipped within one business day.",
    "Our customer service team answers every question within a day.",
    "Rated four and a half stars by thousands of verified buyers.",
    "Questions about sizing or compatibility? Our product experts are here to help.",
    "Packed in recycled cardboard with plastic-free fillers.",
)

GENERIC_TAGS = ("new", "bestseller", "eco", "sale", "limited-edition", "gift-idea")
MODEL_SUFFIXES = ("Pro", "Plus", "Max", "Lite", "Mini", "II", "X", "2.0", "S")
IMAGE_EXTENSIONS = ("jpg", "jpg", "jpg", "webp", "webp", "png", "jpeg", "gif")
IMAGE_VIEWS = ("front", "back", "side", "detail", "lifestyle", "packaging", "top")

STORES: tuple[tuple[str, str, str, str], ...] = (
    ("us", "Catalog Demo US", "USD", "en_US"),
    ("de", "Catalog Demo Deutschland", "EUR", "de_DE"),
    ("it", "Catalog Demo Italia", "EUR", "it_IT"),
    ("uk", "Catalog Demo UK", "GBP", "en_GB"),
    ("fr", "Catalog Demo France", "EUR", "fr_FR"),
    ("ch", "Catalog Demo Schweiz", "CHF", "de_CH"),
    ("se", "Catalog Demo Sverige", "SEK", "sv_SE"),
    ("jp", "Catalog Demo Japan", "JPY", "ja_JP"),
)

CMS_PAGES: tuple[tuple[str, str], ...] = (
    ("about-us", "About us"),
    ("shipping", "Shipping & delivery"),
    ("returns", "Returns & refunds"),
    ("privacy-policy", "Privacy policy"),
    ("terms", "Terms & conditions"),
    ("contact", "Contact us"),
    ("faq", "Frequently asked questions"),
)
