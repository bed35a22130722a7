"""Elasticsearch 8 and 9 through ``elasticsearch-py`` 8.x (the 9.x client sends
``compatible-with=9``, which an 8.x server refuses)."""

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
from consumers.toolkit.headers import retry_after as parse_retry_after
from pipeline.errors import ConfigurationError

__all__ = ["ElasticsearchEngine"]


class ElasticsearchEngine:
    """:class:`SearchEngine` through ``elasticsearch-py`` 8.x (Elasticsearch 8 and 9)."""

    engine: EngineName = "elasticsearch"
    label = "Elasticsearch"

    def __init__(self, url: str, timeout: float = TIMEOUT) -> None:
        from elasticsearch import Elasticsearch

        self.url = url
        # 429 is the sink's to retry (with the runtime's backoff), not the client's.
        self.client = Elasticsearch(url, request_timeout=timeout, retry_on_status=(502, 503, 504))

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        from elasticsearch import ApiError, TransportError, UnsupportedProductError

        try:
            yield
        except UnsupportedProductError as exc:
            raise ConfigurationError(
                f"the server at {redact(self.url)} is not Elasticsearch ({exc.message}): "
                f"leave {ENGINE_SETTING} unset to detect the engine, or set it to opensearch"
            ) from exc
        except ApiError as exc:
            headers = exc.meta.headers if exc.meta is not None else {}
            raise failure(
                self.label,
                self.url,
                int(exc.meta.status),
                reason_of(exc.body, exc.message),
                parse_retry_after(headers.get("retry-after")),
            ) from exc
        except TransportError as exc:
            raise failure(self.label, self.url, None, str(exc.message)) from exc

    def info(self) -> EngineInfo:
        with self._errors():
            answer = self.client.info().body
        return EngineInfo(
            "elasticsearch", str(answer["version"]["number"]), str(answer.get("cluster_name"))
        )

    def put_index_template(self, name: str, body: Mapping[str, Any]) -> None:
        with self._errors():
            self.client.indices.put_index_template(
                name=name, index_patterns=body["index_patterns"], template=body["template"]
            )

    def delete_index_template(self, name: str) -> None:
        with contextlib.suppress(IndexNotFound), self._errors():
            self.client.indices.delete_index_template(name=name)

    def index_templates(self, pattern: str) -> list[str]:
        try:
            with self._errors():
                answer = self.client.indices.get_index_template(name=pattern).body
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
                answer = self.client.indices.get(index=pattern, expand_wildcards="all").body
        except IndexNotFound:
            return []
        return sorted(answer)

    def alias_exists(self, name: str) -> bool:
        with self._errors():
            return bool(self.client.indices.exists_alias(name=name))

    def alias_indices(self, name: str) -> list[str]:
        try:
            with self._errors():
                return sorted(self.client.indices.get_alias(name=name).body)
        except IndexNotFound:
            return []

    def put_alias(self, index: str, name: str) -> None:
        with self._errors():
            self.client.indices.put_alias(index=index, name=name)

    def update_aliases(self, actions: Sequence[Mapping[str, Any]]) -> None:
        with self._errors():
            self.client.indices.update_aliases(actions=list(actions))

    def bulk(self, body: bytes) -> list[BulkItem]:
        with self._errors():
            # A bytes body is sent as it is (elastic-transport's NDJSON serializer).
            answer = self.client.bulk(operations=body, refresh=False).body  # type: ignore[arg-type]
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
        with self._errors():
            answer = self.client.search(
                index=index,
                query=dict(query),
                aggs=dict(aggs) if aggs else None,
                size=size,
                source_excludes=list(source_excludes) or None,
            ).body
        return search_result(answer)

    def scan(self, index: str, page: int = 500) -> Iterator[Hit]:
        with self._errors():
            answer = self.client.search(
                index=index, scroll=SCROLL, size=page, version=True, sort=["_doc"]
            ).body
        scroll_id = answer.get("_scroll_id")
        try:
            while answer["hits"]["hits"]:
                yield from (hit(h) for h in answer["hits"]["hits"])
                if not scroll_id:
                    return
                with self._errors():
                    answer = self.client.scroll(scroll_id=scroll_id, scroll=SCROLL).body
                scroll_id = answer.get("_scroll_id", scroll_id)
        finally:
            if scroll_id:
                with contextlib.suppress(SinkError), self._errors():
                    self.client.clear_scroll(scroll_id=scroll_id)

    def mget(self, index: str, ids: Sequence[str]) -> dict[str, Hit]:
        with self._errors():
            answer = self.client.mget(index=index, ids=list(ids)).body
        return {d["_id"]: hit(d) for d in answer["docs"] if d.get("found")}

    def refresh(self, index: str) -> None:
        with self._errors():
            self.client.indices.refresh(index=index)

    def helper_bulk(self, actions: Iterable[Mapping[str, Any]], chunk_size: int = 500) -> int:
        from elasticsearch import helpers

        with self._errors():
            ok, errors = helpers.bulk(
                self.client, (dict(a) for a in actions), chunk_size=chunk_size, raise_on_error=False
            )
        return helper_outcome(self.label, ok, errors)

    def close(self) -> None:
        self.client.close()
