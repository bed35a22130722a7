"""The engine protocol's parts both implementations share: errors, values, answers.

See :mod:`consumers.search.engine` (the package) for what each error means.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit, urlunsplit

from consumers.contract import SinkError, TransientSinkError

__all__ = [
    "ENGINES",
    "ENGINE_SETTING",
    "LABELS",
    "SCROLL",
    "TIMEOUT",
    "URL_SETTING",
    "BulkItem",
    "EngineAuthError",
    "EngineInfo",
    "EngineName",
    "EngineRequestError",
    "EngineUnavailable",
    "Hit",
    "IndexNotFound",
    "SearchEngine",
    "SearchResult",
    "bulk_items",
    "failure",
    "helper_outcome",
    "hit",
    "reason_of",
    "redact",
    "search_result",
]


EngineName = Literal["elasticsearch", "opensearch"]
ENGINES: tuple[EngineName, ...] = ("elasticsearch", "opensearch")
LABELS: dict[EngineName, str] = {"elasticsearch": "Elasticsearch", "opensearch": "OpenSearch"}
URL_SETTING = "CATALOG_CDC_SEARCH_URL (or CATALOG_CDC_ELASTICSEARCH_URL, --option url=...)"
ENGINE_SETTING = "CATALOG_CDC_SEARCH_ENGINE (or --option engine=...)"
TIMEOUT = 30.0
SCROLL = "2m"


# -------------------------------------------------------------------------- errors


class EngineUnavailable(TransientSinkError):
    """The engine does not answer, times out, or answers 429/5xx (``status`` None: no answer)."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message, retry_after=retry_after)
        self.status = status


class EngineRequestError(SinkError):
    """The engine refused a whole request (``status``, its reason in ``reason``)."""

    def __init__(self, message: str, status: int, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class EngineAuthError(EngineRequestError):
    """401/403: the credentials in the URL setting are wrong or lack a permission."""


class IndexNotFound(EngineRequestError):
    """404: no such index or alias."""


def failure(
    label: str,
    url: str,
    status: int | None,
    reason: str,
    retry_after: float | None = None,
) -> SinkError:
    """The project's error for an answer ``status`` (None: none) of the engine at ``url``."""
    where = redact(url)
    if status is None:
        return EngineUnavailable(f"{label} is not available at {where}: {reason}")
    if status in (408, 429) or status >= 500:
        return EngineUnavailable(
            f"{label} answered {status} ({reason})", status=status, retry_after=retry_after
        )
    if status in (401, 403):
        return EngineAuthError(
            f"{label} refused the request ({status}: {reason}); check the credentials in "
            f"{URL_SETTING}, now {where}",
            status,
            reason,
        )
    cls = IndexNotFound if status == 404 else EngineRequestError
    return cls(f"{label} refused the request ({status}: {reason}); see the error", status, reason)


def redact(url: str) -> str:
    """``url`` without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


# -------------------------------------------------------------------------- values


@dataclass(frozen=True)
class EngineInfo:
    engine: EngineName
    version: str
    cluster: str

    @property
    def label(self) -> str:
        return f"{LABELS[self.engine]} {self.version}"


@dataclass(frozen=True)
class BulkItem:
    """One action's answer in a bulk response."""

    action: str
    id: str
    status: int
    error: Any = None


@dataclass(frozen=True)
class Hit:
    id: str
    source: dict[str, Any]
    version: int | None = None
    score: float | None = None


@dataclass(frozen=True)
class SearchResult:
    total: int
    hits: list[Hit]
    aggregations: dict[str, Any] = field(default_factory=dict)


# -------------------------------------------------------------------------- protocol


class SearchEngine(Protocol):
    """What the search consumer, its replay plan, verifier, query and the benches ask of
    the engine.  Every method raises the errors of this module (see above)."""

    engine: EngineName
    url: str

    @property
    def label(self) -> str:
        """``"Elasticsearch"`` or ``"OpenSearch"`` (for messages)."""
        ...

    def info(self) -> EngineInfo: ...

    def put_index_template(self, name: str, body: Mapping[str, Any]) -> None:
        """``body``: ``index_patterns`` and ``template`` (composable template)."""
        ...

    def delete_index_template(self, name: str) -> None:
        """A missing template is no error."""
        ...

    def index_templates(self, pattern: str) -> list[str]: ...

    def index_exists(self, index: str) -> bool: ...

    def create_index(self, index: str) -> None: ...

    def delete_index(self, index: str) -> None:
        """A missing index is no error."""
        ...

    def indices(self, pattern: str) -> list[str]:
        """Names of the indices matching ``pattern`` (hidden ones too), sorted."""
        ...

    def alias_exists(self, name: str) -> bool: ...

    def alias_indices(self, name: str) -> list[str]:
        """The indices behind alias ``name`` (``[]``: no such alias)."""
        ...

    def put_alias(self, index: str, name: str) -> None: ...

    def update_aliases(self, actions: Sequence[Mapping[str, Any]]) -> None:
        """One atomic ``_aliases`` request (``add``/``remove`` actions)."""
        ...

    def bulk(self, body: bytes) -> list[BulkItem]:
        """Send one NDJSON body as it is (no refresh); one item per action, in order."""
        ...

    def count(self, index: str) -> int: ...

    def search(
        self,
        index: str,
        query: Mapping[str, Any],
        *,
        aggs: Mapping[str, Any] | None = None,
        size: int = 10,
        source_excludes: Sequence[str] = (),
    ) -> SearchResult: ...

    def scan(self, index: str, page: int = 500) -> Iterator[Hit]:
        """Every document of ``index`` with its ``_version`` (a scroll of ``page``)."""
        ...

    def mget(self, index: str, ids: Sequence[str]) -> dict[str, Hit]:
        """The documents found among ``ids``."""
        ...

    def refresh(self, index: str) -> None: ...

    def helper_bulk(self, actions: Iterable[Mapping[str, Any]], chunk_size: int = 500) -> int:
        """The client's own ``helpers.bulk`` (the benchmarks' bare reference): actions
        written; raises :class:`EngineRequestError` if any was refused."""
        ...

    def close(self) -> None: ...


# -------------------------------------------------------------------------- answers


def bulk_items(answer: Mapping[str, Any]) -> list[BulkItem]:
    items: list[BulkItem] = []
    for item in answer["items"]:
        action, result = next(iter(item.items()))
        items.append(
            BulkItem(
                action, str(result.get("_id")), int(result.get("status", 500)), result.get("error")
            )
        )
    return items


def hit(raw: Mapping[str, Any]) -> Hit:
    version = raw.get("_version")
    return Hit(
        str(raw["_id"]),
        dict(raw.get("_source") or {}),
        None if version is None else int(version),
        raw.get("_score"),
    )


def search_result(answer: Mapping[str, Any]) -> SearchResult:
    total = answer["hits"]["total"]
    return SearchResult(
        int(total["value"] if isinstance(total, dict) else total),
        [hit(h) for h in answer["hits"]["hits"]],
        dict(answer.get("aggregations") or {}),
    )


def helper_outcome(label: str, ok: int, errors: Any) -> int:
    if errors:
        shown = json.dumps(list(errors)[:3], default=str)[:2000]
        raise EngineRequestError(f"{label} refused {len(errors)} bulk actions: {shown}", 400)
    return int(ok)


def reason_of(body: Any, fallback: str) -> str:
    """The ``error.reason`` of an answer (else ``fallback``)."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return f"{error.get('type')}: {error.get('reason')}"
        if isinstance(error, str):
            return error
    return str(fallback)
