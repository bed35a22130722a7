"""Single-document REST calls for tests that change an index behind the sink's back
(the same API on Elasticsearch and OpenSearch; the project itself never needs them)."""

from __future__ import annotations

from typing import Any

import httpx


def get_doc(url: str, index: str, doc_id: str) -> dict[str, Any] | None:
    """``{"_source": ..., "_version": ...}`` of a document, None when there is none."""
    r = httpx.get(f"{url}/{index}/_doc/{doc_id}", timeout=30)
    if r.status_code == 404:
        return None
    r.raise_for_status()
    answer: dict[str, Any] = r.json()
    return answer if answer.get("found") else None


def put_doc(url: str, index: str, doc_id: str, source: dict[str, Any]) -> None:
    """Index ``source`` with internal versioning (a hand edit, not a sink write)."""
    httpx.put(f"{url}/{index}/_doc/{doc_id}", json=source, timeout=30).raise_for_status()


def delete_doc(url: str, index: str, doc_id: str) -> None:
    httpx.delete(f"{url}/{index}/_doc/{doc_id}", timeout=30).raise_for_status()
