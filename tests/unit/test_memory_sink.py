"""consumers.testing.MemorySink: the in-memory sink shipped for consumer authors' tests."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumers.contract import Sink, TransientSinkError
from consumers.testing import MemorySink
from pipeline.documents.model import CategoryDocument
from pipeline.documents.wire import DocumentMessage
from tests.unit.test_documents import category_data

_DOC = CategoryDocument.model_validate(category_data(id=1, version=1))


def _rec(doc_id: int, version: int, *, deleted: bool = False) -> DocumentMessage:
    return DocumentMessage("category", doc_id, None if deleted else _DOC, version, 0)


def test_it_is_a_sink() -> None:
    sink: Sink = MemorySink(kinds=("category",))
    sink.open()
    assert sink.flush() == []
    sink.close()


def test_versions_win_and_deletes_delete() -> None:
    sink = MemorySink()
    sink.add([_rec(1, 5), _rec(1, 4), _rec(2, 3)])
    assert sink.flush() == []
    assert sink.get("category", 1) is not None and sink.versions[("category", 1)] == 5
    sink.add([_rec(1, 5), _rec(2, 7, deleted=True)])  # a redelivery, a delete
    assert sink.flush() == []
    assert sink.versions[("category", 1)] == 5
    assert sink.get("category", 2) is None and ("category", 2) not in sink.documents
    sink.add([_rec(2, 6)])  # older than the delete: stays deleted
    sink.flush()
    assert sink.get("category", 2) is None
    assert sink.stats == {"written": 2, "deleted": 1, "noop": 3, "refused": 0, "throttled": 0}


def test_refused_ids_are_returned_for_good_and_not_kept() -> None:
    sink = MemorySink()
    sink.refuse("category", 2, "no parent")
    sink.add([_rec(1, 1), _rec(2, 1)])
    rejected = sink.flush()
    assert [(r.record.id, r.reason) for r in rejected] == [(2, "no parent")]
    assert sink.pending == [] and sink.get("category", 2) is None
    assert sink.get("category", 1) is not None


def test_throttled_ids_are_kept_for_the_next_n_flushes_and_refusals_travel_in_the_error() -> None:
    sink = MemorySink()
    sink.throttle("category", 1, flushes=2, retry_after=0.25)
    sink.refuse("category", 3)
    sink.add([_rec(1, 1), _rec(2, 1), _rec(3, 1)])
    with pytest.raises(TransientSinkError) as err:
        sink.flush()
    assert err.value.retry_after == 0.25
    assert [r.record.id for r in err.value.rejected] == [3]
    assert [r.id for r in sink.pending] == [1]  # only the throttled one is kept
    assert sink.get("category", 2) is not None
    sink.add([_rec(1, 2)])
    with pytest.raises(TransientSinkError) as err:
        sink.flush()
    assert err.value.rejected == []
    assert sink.flush() == []  # the third flush: no longer throttled
    assert sink.pending == [] and sink.versions[("category", 1)] == 2
    assert sink.flushes == 3


def test_throttle_needs_a_flush_count() -> None:
    with pytest.raises(ValueError, match="flushes"):
        MemorySink().throttle("category", 1, flushes=0)


@given(st.lists(st.tuples(st.integers(1, 4), st.integers(0, 20), st.booleans()), max_size=40))
def test_it_ends_as_the_newest_version_of_every_key(events: list[tuple[int, int, bool]]) -> None:
    """Whatever the order and batching, a key ends as its highest version (ties: the
    first one applied), deleted if that one was a delete."""
    sink = MemorySink()
    for i in range(0, len(events), 3):
        sink.add([_rec(k, v, deleted=d) for k, v, d in events[i : i + 3]])
        assert sink.flush() == []
    newest: dict[int, tuple[int, bool]] = {}
    for k, v, d in events:
        if k not in newest or v > newest[k][0]:
            newest[k] = (v, d)
    assert {k: v for (_, k), v in sink.versions.items()} == {k: v for k, (v, _) in newest.items()}
    assert {k for (_, k) in sink.documents} == {k for k, (_, d) in newest.items() if not d}
