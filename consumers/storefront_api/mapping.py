"""A :class:`~pipeline.documents.model.ProductDocument` as the products sync API's product.

=======================  ======================================================
sync API field           from the document
=======================  ======================================================
``reference``            ``reference``
``name``                 ``name``
``description``          ``description`` (``""`` when NULL)
``price``                ``price`` (a JSON number)
``quantity``             ``total_quantity`` (the sum of the variants' stock)
``active``               ``active``
``categories``           the ids of ``categories`` (in the document's order)
``ean13``                ``ean13`` (13 digits or ``""``)
``weight``               ``weight`` in kg, ``null`` when the product has none
``brand``                ``{"name": brand.name}``, ``null`` without a brand
``images``               ``{"fileName": file_name, "base64": <the bytes at url>}``
``technical_data``       ``{"Gruppo": group, "Descrizione": description,
                         "Valore": value, "Suffisso": suffix (when set),
                         "PrintOrder": print_order}``
=======================  ======================================================

Not sent: ``id`` (the sink's state file maps it to the reference), ``url_key``,
``list_price``, ``variants`` (their stock is ``quantity``), ``tags``, ``store``,
``updated_at``.  Every optional field is always sent (``""``, ``[]`` or ``null`` when
empty), so an ``update`` also clears what the catalog no longer has.
"""

from __future__ import annotations

from typing import Any

from pipeline.documents.model import ProductDocument

__all__ = ["body", "image_urls"]


def body(doc: ProductDocument, *, categories: bool = True, images: bool = True) -> dict[str, Any]:
    """The product fields (no ``operation``); images as ``{"fileName"}`` only — the sink
    adds each ``base64`` after downloading it (:func:`image_urls`)."""
    out: dict[str, Any] = {
        "reference": doc.reference,
        "name": doc.name,
        "description": doc.description or "",
        "price": float(doc.price),
        "quantity": doc.total_quantity,
        "active": doc.active,
        "ean13": doc.ean13,
        "weight": None if doc.weight is None else float(doc.weight),
        "brand": None if doc.brand is None else {"name": doc.brand.name},
        "technical_data": [
            {
                "Gruppo": t.group,
                "Descrizione": t.description,
                "Valore": t.value,
                **({} if t.suffix is None else {"Suffisso": t.suffix}),
                "PrintOrder": t.print_order,
            }
            for t in doc.technical_data
        ],
    }
    if categories:
        out["categories"] = [c.id for c in doc.categories]
    if images:
        out["images"] = [{"fileName": i.file_name} for i in doc.images]
    return out


def image_urls(doc: ProductDocument) -> list[str]:
    """Where each image of :func:`body` is downloaded from, in the same order."""
    return [i.url for i in doc.images]
