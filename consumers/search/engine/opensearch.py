"""OpenSearch 2.x through ``opensearch-py``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from consumers.contract import SinkError
from consumers.search.engine.base import (
    ENGINE_SETTING,
    SCROLL,
    TIMEOUT,
    BulkItem,
    EngineInfo,
    EngineName,
    Hit,
    IndexNotFound,
    SearchResult,
    bulk_items,
    failure,
    helper_outcome,
    hit,
    reason_of,
    redact,
    search_result,
)
from pipeline.errors import ConfigurationError

__all__ = ["OpenSearchEngine"]


class OpenSearchEngine:
    """:class:`SearchEngine` through ``opensearch-py`` (OpenSearch 2.x)."""

    engine: EngineName = "opensearch"
    label = "OpenSearch"

    def __init__(self, url: str, timeout: float = TIMEOUT) -> None:
        from opensearchpy import OpenSearch

        self.url = url
        self.client = OpenSearch(url, timeout=timeout, retry_on_status=(502, 503, 504))

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        from opensearchpy import ConnectionError, TransportError

        try:
            yield
        except ConnectionError as exc:  # also a timeout; its status_code is "N/A"
            raise failure(self.label, self.url, None, _osreason_of(exc)) from exc
        except TransportError as exc:
            status = exc.status_code if isinstance(exc.status_code, int) else None
            raise failure(self.label, self.url, status, _osreason_of(exc)) from exc

    def info(self) -> EngineInfo:
        with self._errors():
            answer = self.client.info()
        version = answer["version"]
        if version.get("distribution") != "opensearch":
            raise ConfigurationError(
                f"the server at {redact(self.url)} is Elasticsearch {version['number']}, not "
                f"OpenSearch: leave {ENGINE_SETTING} unset to detect it, or set elasticsearch"
            )
        return EngineInfo("opensearch", str(version["number"]), str(answer.get("cluster_name")))

    def put_index_template(self, name: str, body: Mapping[str, Any]) -> None:
        with self._errors():
            self.client.indices.put_index_template(name=name, body=dict(body))

    def delete_index_template(self, name: str) -> None:
        with contextlib.suppress(IndexNotFound), self._errors():
            self.client.indices.delete_index_template(name=name)

    def index_templates(self, pattern: str) -> list[str]:
        try:
            with self._errors():
                answer = self.client.indices.get_index_template(name=pattern)
        except IndexNotFound:
            return []
        return sorted(t["name"] for t in answer.get("index_templates", []))

    def index_exists(self, index: str) -> bool:
        with self._errors():
            return bool(self.client.indices.exists(index=index))

    def create_index(self, index: str) -> None:
        with self._errors():
            self.client.indices.create(index=index)

    def delete_index(self, index: str) -> None:
        with contextlib.suppress(IndexNotFound), self._errors():
            self.client.indices.delete(index=index)

    def indices(self, pattern: str) -> list[str]:
        try:
            with self._errors():
                answer = self.client.indices.get(index=pattern, expand_wildcards="all")
        except IndexNotFound:
            return []
        return sorted(answer)

    def alias_exists(self, name: str) -> bool:
        with self._errors():
            return bool(self.client.indices.exists_alias(name=name))

    def alias_indices(self, name: str) -> list[str]:
        try:
            with self._errors():
                return sorted(self.client.indices.get_alias(name=name))
        except IndexNotFound:
            return []

    def put_alias(self, index: str, name: str) -> None:
        with self._errors():
            self.client.indices.put_alias(index=index, name=name)

    def update_aliases(self, actions: Sequence[Mapping[str, Any]]) -> None:
        with self._errors():
            self.client.indices.update_aliases(body={"actions": list(actions)})

    def bulk(self, body: bytes) -> list[BulkItem]:
        with self._errors():
            answer = self.client.bulk(body=body, refresh="false")
        return bulk_items(answer)

    def count(self, index: str) -> int:
        with self._errors():
            return int(self.client.count(index=index)["count"])

    def search(
        self,
        index: str,
        query: Mapping[str, Any],
        *,
        aggs: Mapping[str, Any] | None = None,
        size: int = 10,
        source_excludes: Sequence[str] = (),
    ) -> SearchResult:
        request: dict[str, Any] = {"query": dict(query), "size": size}
        if aggs:
            request["aggs"] = dict(aggs)
        if source_excludes:
            request["_source"] = {"excludes": list(source_excludes)}
        with self._errors():
            answer = self.client.search(index=index, body=request)
        return search_result(answer)

    def scan(self, index: str, page: int = 500) -> Iterator[Hit]:
        request = {"size": page, "version": True, "sort": ["_doc"]}
        with self._errors():
            answer = self.client.search(index=index, body=request, scroll=SCROLL)
        scroll_id = answer.get("_scroll_id")
        try:
            while answer["hits"]["hits"]:
                yield from (hit(h) for h in answer["hits"]["hits"])
                if not scroll_id:
                    return
                with self._errors():
                    answer = self.client.scroll(body={"scroll_id": scroll_id, "scroll": SCROLL})
                scroll_id = answer.get("_scroll_id", scroll_id)
        finally:
            if scroll_id:
                with contextlib.suppress(SinkError), self._errors():
                    self.client.clear_scroll(body={"scroll_id": [scroll_id]})

    def mget(self, index: str, ids: Sequence[str]) -> dict[str, Hit]:
        with self._errors():
            answer = self.client.mget(index=index, body={"ids": list(ids)})
        return {d["_id"]: hit(d) for d in answer["docs"] if d.get("found")}

    def refresh(self, index: str) -> None:
        with self._errors():
            self.client.indices.refresh(index=index)

    def helper_bulk(self, actions: Iterable[Mapping[str, Any]], chunk_size: int = 500) -> int:
        from opensearchpy import helpers

        with self._errors():
            ok, errors = helpers.bulk(
                self.client, (dict(a) for a in actions), chunk_size=chunk_size, raise_on_error=False
            )
        return helper_outcome(self.label, ok, errors)

    def close(self) -> None:
        self.client.close()


def _osreason_of(exc: Exception) -> str:
    info = getattr(exc, "info", None)
    if isinstance(info, Exception):
        return str(info) or type(info).__name__
    reason = reason_of(info, str(getattr(exc, "error", "") or exc))
    return reason
