"""The webhook wire format: event envelope, product payload, headers, signature.

Envelope (the seed's ``event.event_type`` / ``event.data.product_id``, shaped like
Pixlpay's deliveries)::

    {"id": "<delivery id>", "event_type": "product.updated",
     "created_at": "2025-01-20T14:30:00.000000Z",
     "data": {"product_id": 7, "version": 123456, "product": {...}}}

``product.deleted`` carries ``data = {"product_id", "version", "deleted_at"}`` (no
``product``).  The product payload is the assembler's document with the seed's names
(``is_active`` for ``active``), decimals as exact strings, datetimes ISO 8601 UTC, and
``id``, ``version`` and ``updated_at`` so that a receiver can order and resolve
conflicts.

Signature: ``X-Webhook-Signature`` = lower-case hex HMAC-SHA256, keyed with the
subscriber's secret, of the bytes ``f"{X-Webhook-Timestamp}."`` + the raw body.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from datetime import UTC, datetime
from typing import Any, Final

from pipeline.codec.jsontext import json_dumps as _json_dumps
from pipeline.documents.model import ProductDocument

__all__ = [
    "EVENT_TYPES",
    "HEADER_EVENT",
    "HEADER_ID",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "USER_AGENT",
    "deleted_body",
    "delivery_id",
    "headers",
    "product_body",
    "product_payload",
    "sign",
    "signed_string",
]

CREATED: Final = "product.created"
UPDATED: Final = "product.updated"
DELETED: Final = "product.deleted"
EVENT_TYPES: Final = (CREATED, UPDATED, DELETED)

HEADER_SIGNATURE: Final = "X-Webhook-Signature"
HEADER_TIMESTAMP: Final = "X-Webhook-Timestamp"
HEADER_ID: Final = "X-Webhook-ID"
HEADER_EVENT: Final = "X-Webhook-Event"
USER_AGENT: Final = "catalog-cdc-webhooks/1.0"

_NAMESPACE: Final = uuid.UUID("5f0c7d1e-6a43-4b8e-9a57-2f1d6c0b9e21")


def product_payload(doc: ProductDocument) -> dict[str, Any]:
    """``data.product`` of a created/updated event (JSON-ready; decimals exact).

    The document's fields under their own names, except ``active`` -> ``is_active``
    (the seed's name); ``source_ts_ms`` is left out (``version`` orders events).
    """
    data = doc.model_dump(mode="json", exclude={"variants": {"__all__": {"attributes"}}})
    for out, variant in zip(data["variants"], doc.variants, strict=True):
        out["attributes"] = variant.attributes
    data["is_active"] = data.pop("active")
    data.pop("source_ts_ms")
    return data


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def delivery_id(subscriber: str, product_id: int, version: int) -> str:
    """The same for every attempt and every replay of one event to one subscriber."""
    return "wh_" + str(uuid.uuid5(_NAMESPACE, f"{subscriber}:{product_id}:{version}"))


def _envelope(event_id: str, event_type: str, created_at: datetime, data: dict[str, Any]) -> bytes:
    body = {
        "id": event_id,
        "event_type": event_type,
        "created_at": _iso(created_at),
        "data": data,
    }
    return _json_dumps(body).encode("utf-8")


def product_body(
    event_id: str, event_type: str, doc: ProductDocument, version: int, created_at: datetime
) -> bytes:
    """The raw body of a ``product.created`` / ``product.updated`` event."""
    payload = product_payload(doc)
    payload["version"] = version
    data = {"product_id": doc.id, "version": version, "product": payload}
    return _envelope(event_id, event_type, created_at, data)


def deleted_body(
    event_id: str, product_id: int, version: int, source_ts_ms: int, created_at: datetime
) -> bytes:
    """The raw body of a ``product.deleted`` event (``deleted_at``: the commit time of
    the delete, or the time the event was created when that is unknown)."""
    deleted_at = (
        datetime.fromtimestamp(source_ts_ms / 1000, UTC) if source_ts_ms > 0 else created_at
    )
    data = {"product_id": product_id, "version": version, "deleted_at": _iso(deleted_at)}
    return _envelope(event_id, DELETED, created_at, data)


def signed_string(timestamp: str, body: bytes) -> bytes:
    """What is signed: ``{timestamp}.{raw body}``."""
    return timestamp.encode("ascii") + b"." + body


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """Lower-case hex HMAC-SHA256 of :func:`signed_string` keyed with ``secret``."""
    return hmac.new(
        secret.encode("utf-8"), signed_string(timestamp, body), hashlib.sha256
    ).hexdigest()


def headers(secret: str, event_id: str, event_type: str, body: bytes, now: float) -> dict[str, str]:
    """The headers of one attempt (the timestamp, hence the signature, is per attempt)."""
    timestamp = str(int(now))
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        HEADER_ID: event_id,
        HEADER_EVENT: event_type,
        HEADER_TIMESTAMP: timestamp,
        HEADER_SIGNATURE: sign(secret, timestamp, body),
    }
