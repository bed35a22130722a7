"""The admin's consumer sinks (pipeline.admin.sinks): built once through a registry,
asked through TargetProbe with a timeout, closed on shutdown; `admin serve --option`."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from consumers.capabilities import TargetProbe
from consumers.contract import Record, Rejected
from consumers.registry import SinkContext, SinkFactory
from pipeline.admin.cli import _settings, consumer_options
from pipeline.admin.sinks import ConsumerSinks
from pipeline.cli import build_parser
from pipeline.errors import ConfigurationError
from pipeline.settings import ConnectionSettings


class PlainSink:
    """A sink with no capabilities."""

    name = "plain"
    kinds: Sequence[str] = ("product",)

    def __init__(self, context: SinkContext) -> None:
        self.context = context
        self.closed = 0

    def open(self) -> None: ...

    def add(self, records: Sequence[Record]) -> None: ...

    def flush(self) -> list[Rejected]:
        return []

    def close(self) -> None:
        self.closed += 1


class ProbedSink(PlainSink):
    """A TargetProbe whose answers the test sets (``hang``: it does not answer)."""

    name = "probed"

    def __init__(self, context: SinkContext) -> None:
        super().__init__(context)
        self.up = True
        self.count: int | None = 7
        self.hang = threading.Event()
        self.release = threading.Event()

    def target_available(self) -> bool:
        if self.hang.is_set():
            self.release.wait(10)
        return self.up

    def target_count(self) -> int | None:
        if self.hang.is_set():
            self.release.wait(10)
        return self.count


_: TargetProbe = ProbedSink(SinkContext(ConnectionSettings()))


class Registry:
    def __init__(self) -> None:
        self.built: dict[str, list[PlainSink]] = {}

    def load(self, name: str) -> SinkFactory:
        kinds = {"plain": PlainSink, "probed": ProbedSink}
        if name not in kinds:
            raise ConfigurationError(f"no consumer named {name!r}")

        def factory(context: SinkContext) -> PlainSink:
            if context.options.get("fail"):
                raise ConfigurationError("missing option x: --option x=...")
            sink = kinds[name](context)
            self.built.setdefault(name, []).append(sink)
            return sink

        return factory


def sinks(registry: Registry, **options: dict[str, str]) -> ConsumerSinks:
    return ConsumerSinks(
        ConnectionSettings(topic_prefix="p"), options, timeout=0.3, loader=registry.load
    )


def test_built_once_with_the_admins_options_and_closed_once() -> None:
    registry = Registry()
    s = sinks(registry, probed={"k": "v"})
    assert s.available("probed") is True and s.available("plain") is True
    assert s.counts(["probed", "plain"]) == {"probed": 7}  # only probes are counted
    assert [len(v) for v in registry.built.values()] == [1, 1]
    probed = registry.built["probed"][0]
    assert dict(probed.context.options) == {"k": "v"}
    assert probed.context.connections.topic_prefix == "p"
    assert s.options_for("probed") == {"k": "v"} and s.options_for("plain") == {}
    s.close()
    s.close()
    assert [sink.closed for v in registry.built.values() for sink in v] == [1, 1]
    assert s.get("probed") is None  # closed: nothing is built again


def test_a_probe_that_says_no_or_does_not_answer() -> None:
    registry = Registry()
    s = sinks(registry)
    assert s.probe("probed") is not None and s.probe("plain") is None
    probed = registry.built["probed"][0]
    assert isinstance(probed, ProbedSink)
    probed.up, probed.count = False, None
    assert s.available("probed") is False
    assert s.counts(["probed"]) == {"probed": None}
    probed.up, probed.count = True, 3
    probed.hang.set()
    assert s.available("probed") is False  # within the timeout: not answering
    assert s.counts(["probed"]) == {"probed": None}
    probed.hang.clear()
    probed.release.set()
    assert s.available("probed") is True and s.counts(["probed"]) == {"probed": 3}
    s.close()


def test_a_sink_that_cannot_be_built_has_no_capabilities() -> None:
    registry = Registry()
    s = sinks(registry, probed={"fail": "1"})
    assert s.get("probed") is None and "--option x" in s.reason("probed")
    assert s.available("probed") is None  # cannot tell
    assert s.available("nope") is None and "no consumer named" in s.reason("nope")
    assert s.counts(["probed", "nope"]) == {}
    s.close()


def test_consumer_options_on_the_command_line() -> None:
    assert consumer_options(["a.x=1", "a.y=2=3", "b-c.url=http://h:1/p"]) == {
        "a": {"x": "1", "y": "2=3"},
        "b-c": {"url": "http://h:1/p"},
    }
    for bad in ("a=1", ".x=1", "a.=1", "a.x"):
        with pytest.raises(ConfigurationError, match=r"CONSUMER\.KEY=VALUE"):
            consumer_options([bad])


def test_serve_merges_option_flags_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CATALOG_CDC_ADMIN_CONSUMER_OPTIONS", '{"a": {"x": "env", "y": "env"}}')
    monkeypatch.setenv("CATALOG_CDC_ADMIN_SEARCH_CONSUMER", "a")
    args = build_parser().parse_args(
        ["admin", "serve", "--option", "a.x=flag", "--option", "b.z=1"]
    )
    settings = _settings(args)
    assert settings.search_consumer == "a"
    assert settings.consumer_options == {"a": {"x": "flag", "y": "env"}, "b": {"z": "1"}}


@pytest.mark.parametrize("name", ["CATALOG_CDC_ADMIN_INDEX_PREFIX", "CATALOG_CDC_ADMIN_ES_TIMEOUT"])
def test_retired_settings_are_refused_not_ignored(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, "x")
    args = build_parser().parse_args(["admin", "serve"])
    with pytest.raises(ConfigurationError, match="no longer read"):
        _settings(args)
