"""The search engine behind the product index: Elasticsearch or OpenSearch, one protocol.

:class:`SearchEngine` names exactly the operations the project uses (index templates,
indices, aliases, a pre-serialized NDJSON bulk, count, search, a paged read of every
document, mget, refresh).  Two implementations, each wrapping its engine's official
client: :class:`ElasticsearchEngine` (``engine/elastic.py``, ``elasticsearch-py`` 8.x: it
talks to 8.x and 9.x servers) and :class:`OpenSearchEngine` (``engine/opensearch.py``,
``opensearch-py``).  Nothing else in the project imports either client; the protocol,
errors and answer types are in ``engine/base.py``.

Which one: :func:`connect` takes it configured (``engine="elasticsearch"`` /
``"opensearch"``; ``--option engine=...``, ``CATALOG_CDC_SEARCH_ENGINE``) or asks the
server (:func:`detect`: ``GET /``: OpenSearch answers ``version.distribution:
"opensearch"``, Elasticsearch sends ``X-Elastic-Product: Elasticsearch``).

Errors, the same for both, raised from the client's own exceptions:

* :class:`EngineUnavailable` (a :class:`~consumers.contract.TransientSinkError`): no
  connection, a timeout, 429 or 5xx — try again later;
* :class:`EngineAuthError`: 401/403 — the message names the URL setting to fix;
* :class:`IndexNotFound`: 404 of an index or alias;
* :class:`EngineRequestError`: any other refusal of a whole request (the configuration or
  the request is wrong; the consumer stops).

A bulk answer is data: one :class:`BulkItem` per action with its status (a 400 of one
document is that document's refusal, not an exception).
"""

from __future__ import annotations

import httpx

from consumers.search.engine.base import (
    ENGINE_SETTING,
    ENGINES,
    LABELS,
    TIMEOUT,
    URL_SETTING,
    BulkItem,
    EngineAuthError,
    EngineInfo,
    EngineName,
    EngineRequestError,
    EngineUnavailable,
    Hit,
    IndexNotFound,
    SearchEngine,
    SearchResult,
    failure,
    redact,
)
from consumers.search.engine.elastic import ElasticsearchEngine
from consumers.search.engine.opensearch import OpenSearchEngine
from consumers.toolkit.headers import retry_after as parse_retry_after
from pipeline.errors import ConfigurationError

__all__ = [
    "ENGINES",
    "LABELS",
    "URL_SETTING",
    "BulkItem",
    "ElasticsearchEngine",
    "EngineAuthError",
    "EngineInfo",
    "EngineName",
    "EngineRequestError",
    "EngineUnavailable",
    "Hit",
    "IndexNotFound",
    "OpenSearchEngine",
    "SearchEngine",
    "SearchResult",
    "connect",
    "detect",
    "engine_name",
]


def engine_name(value: str | None) -> EngineName | None:
    """A configured engine (``None``/empty/``auto``: detect), checked."""
    if value is None or value.strip().lower() in ("", "auto", "detect"):
        return None
    name = value.strip().lower()
    for known in ENGINES:
        if name == known:
            return known
    raise ConfigurationError(
        f"search engine {value!r}: expected one of {', '.join(ENGINES)} "
        f"(or nothing, to detect it from the server; {ENGINE_SETTING})"
    )


def detect(url: str, timeout: float = 10.0) -> EngineName:
    """Ask the server at ``url`` (``GET /``) which engine it is."""
    try:
        response = httpx.get(url.rstrip("/") + "/", timeout=timeout)
    except httpx.HTTPError as exc:
        raise failure("the search engine", url, None, str(exc) or type(exc).__name__) from exc
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    version = answer.get("version") if isinstance(answer, dict) else None
    if isinstance(version, dict) and version.get("distribution") == "opensearch":
        return "opensearch"
    if response.headers.get("x-elastic-product") == "Elasticsearch":
        return "elasticsearch"
    if response.status_code >= 400:
        raise failure(
            "the search engine",
            url,
            response.status_code,
            response.text[:200],
            parse_retry_after(response.headers.get("retry-after")),
        )
    raise ConfigurationError(
        f"the server at {redact(url)} is neither OpenSearch (no version.distribution) nor "
        f"Elasticsearch (no X-Elastic-Product header): set {ENGINE_SETTING} if it is one"
    )


def connect(
    url: str, engine: EngineName | str | None = None, *, timeout: float = TIMEOUT
) -> SearchEngine:
    """A client for the engine at ``url``: ``engine`` as configured, else :func:`detect`ed
    (which needs the server to answer: raises :class:`EngineUnavailable` when it does not).
    ``timeout``: seconds per request."""
    name = engine_name(engine) or detect(url)
    if name == "opensearch":
        return OpenSearchEngine(url, timeout)
    return ElasticsearchEngine(url, timeout)
