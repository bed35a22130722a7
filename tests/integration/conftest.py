"""Search engines for the search consumer's tests: Elasticsearch and OpenSearch, in turn.

``search_url`` is parametrized by engine (test ids ``[elasticsearch]`` and
``[opensearch]``): the same test runs on each, through the engine's own client.

* **elasticsearch**: ``CATALOG_CDC_TEST_ELASTICSEARCH_URL``, else the stack's search
  server when it is Elasticsearch (the local stack's Elasticsearch-API stand-in,
  noida-db); skipped when there is none.
* **opensearch**: ``CATALOG_CDC_TEST_OPENSEARCH_URL``, else the stack's search server
  when it is OpenSearch, else the stack's OpenSearch node, else a private OpenSearch
  2.19 node started for the session
  (one per xdist worker, ``pipeline.stack.opensearch``: jars fetched once by Maven into
  the cache outside the checkout); skipped, saying why, when Java or Maven is missing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from consumers.search.engine import ENGINES, EngineName, SearchEngine, connect, detect
from pipeline.errors import CatalogCdcError
from tests.conftest import Endpoints

HEAP = "512m"


def _stack_engine(stack: Endpoints) -> EngineName | None:
    try:
        return detect(stack.elasticsearch_url)
    except CatalogCdcError:
        return None


@pytest.fixture(scope="session")
def stack_search_engine(stack: Endpoints) -> EngineName | None:
    """Which engine the stack's search URL serves (None: it does not answer)."""
    return _stack_engine(stack)


@pytest.fixture(scope="session")
def opensearch_url(
    stack: Endpoints,
    stack_search_engine: EngineName | None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """A real OpenSearch node (see the module docstring)."""
    env = os.environ.get("CATALOG_CDC_TEST_OPENSEARCH_URL")
    if env:
        yield env
        return
    if stack_search_engine == "opensearch":
        yield stack.elasticsearch_url
        return
    if stack.opensearch_url:
        yield stack.opensearch_url
        return
    from pipeline.errors import StackError
    from pipeline.stack.opensearch import OpenSearchService
    from pipeline.stack.state import ServiceState

    if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
        pytest.skip("no OpenSearch node: Java is not installed (apt-get install openjdk-17-jdk)")
    root = Path(tmp_path_factory.mktemp("opensearch"))
    service = OpenSearchService(root, heap_min=HEAP, heap_max=HEAP)
    state = ServiceState()
    try:
        service.start(state)  # fetches the jars once (Maven), then the JVM
        service.wait_ready(state, timeout=180)
    except StackError as exc:
        service.stop(state)
        if "not installed" in str(exc):  # Java or Maven (needed once, to fetch the jars)
            pytest.skip(f"no OpenSearch node: {exc}")
        raise
    try:
        yield service.url(state)
    finally:
        service.stop(state)


@pytest.fixture(params=ENGINES)
def search_url(
    request: pytest.FixtureRequest, stack: Endpoints, stack_search_engine: EngineName | None
) -> str:
    """The URL of each search engine in turn (see the module docstring)."""
    engine: EngineName = request.param
    if engine == "opensearch":
        return str(request.getfixturevalue("opensearch_url"))
    env = os.environ.get("CATALOG_CDC_TEST_ELASTICSEARCH_URL")
    if env:
        return env
    if stack_search_engine != "elasticsearch":
        pytest.skip(
            "no Elasticsearch: the stack's search server is "
            f"{stack_search_engine or 'not answering'}; set CATALOG_CDC_TEST_ELASTICSEARCH_URL"
        )
    return stack.elasticsearch_url


@pytest.fixture
def search_engine(search_url: str) -> Iterator[SearchEngine]:
    """The engine at ``search_url``, through its own client (for arranging and checking)."""
    engine = connect(search_url)
    try:
        yield engine
    finally:
        engine.close()
