"""The consumer registry: entry points of the catalog_cdc.consumers group."""

from __future__ import annotations

import pytest

from consumers.registry import SinkContext, available, load
from pipeline.errors import ConfigurationError
from pipeline.settings import ConnectionSettings


def test_the_shipped_consumers_are_entry_points() -> None:
    found = available()
    assert found["jsonl"] == "consumers.jsonl:JsonlSink.from_context"
    assert found["search"] == "consumers.search.sink:SearchSink.from_context"
    sink = load("jsonl")(SinkContext(ConnectionSettings(), {"path": "/tmp/x.jsonl"}))
    assert sink.name == "jsonl" and tuple(sink.kinds) == ("product", "category")


def test_an_unknown_consumer_says_what_exists() -> None:
    with pytest.raises(ConfigurationError, match=r"no consumer named 'nope' \(installed: .*jsonl"):
        load("nope")
