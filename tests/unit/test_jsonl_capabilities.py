"""The JSONL example consumer's capabilities without services: how its file is read
(highest version per key, deletes), and its replay plan's switch beside a live sink that
keeps appending (no line lost to the replaced file, resume after any interruption)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from consumers.capabilities import Replayable, ReplayRequest, Verifiable
from consumers.contract import SinkError
from consumers.jsonl import JsonlSink, current_state, replay_file
from consumers.registry import SinkContext
from pipeline.documents.wire import DocumentMessage
from pipeline.settings import ConnectionSettings
from pipeline.verify.base import VerifyError


def _line(pid: int, version: int, name: str = "x", deleted: bool = False) -> str:
    if deleted:
        return json.dumps({"kind": "product", "id": pid, "version": version, "deleted": True})
    doc = {"id": pid, "name": name}
    return json.dumps({"kind": "product", "id": pid, "version": version, "document": doc})


def _delete(pid: int, version: int) -> DocumentMessage:
    return DocumentMessage("product", pid, None, version, version)


def _ids(path: Path) -> list[int]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def _wait_for(done: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, "the live sink stopped writing"
        time.sleep(0.001)


def _replay_sink(live: Path, state: Path) -> JsonlSink:
    context = SinkContext(
        ConnectionSettings(), {"path": str(live), "kinds": "product"}, replay=True,
        replay_state=state,
    )  # fmt: skip
    return JsonlSink.from_context(context)


def test_the_file_reads_as_the_highest_version_per_key_and_deletes_win(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    lines = [_line(1, 5, "old"), _line(1, 9, "new"), _line(1, 7, "late but older"),
             _line(2, 3), _line(2, 4, deleted=True), _line(3, 6, "first"), _line(3, 6, "tie")]  # fmt: skip
    path.write_text("\n".join(lines) + "\n" + _line(4, 1)[:10])  # the last: being written
    state = current_state(path)
    assert state[("product", 1)]["document"]["name"] == "new"
    assert state[("product", 2)]["deleted"] is True
    assert state[("product", 3)]["document"]["name"] == "tie"
    assert ("product", 4) not in state
    assert current_state(tmp_path / "absent.jsonl") == {}


def test_a_line_that_is_not_the_sinks_is_named(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text(_line(1, 5) + "\nnot json\n")
    with pytest.raises(VerifyError, match="line 2"):
        current_state(path)


def test_the_sink_has_the_capabilities_and_a_replay_sink_never_opens_the_live_file(
    tmp_path: Path,
) -> None:
    live = tmp_path / "docs.jsonl"
    sink = _replay_sink(live, tmp_path / "r.json")
    assert isinstance(sink, Verifiable) and isinstance(sink, Replayable)
    assert sink.path == replay_file(live, tmp_path / "r.json") and sink.path.parent == tmp_path
    sink.open()
    sink.close()
    assert not live.exists()


def test_the_switch_renames_under_the_lock_and_the_live_sink_follows(tmp_path: Path) -> None:
    """A live sink flushing all the time while the plan switches: every line it wrote is
    in the old file (written before the rename) or in the new one, and the old file gets
    nothing once the switch returned."""
    live_path, state = tmp_path / "docs.jsonl", tmp_path / "r.json"
    live = JsonlSink(live_path, ("product",))
    live.open()
    replay = _replay_sink(live_path, state)
    plan = replay.replay_plan(ReplayRequest(state))
    replay.open()
    saved = plan.prepare(replay, {})
    replay.add([_delete(i, 1) for i in range(1000, 1010)])
    replay.flush()

    written: list[int] = []
    stop = threading.Event()

    def live_loop() -> None:
        n = 0
        while not stop.is_set():
            live.add([_delete(n, 2)])
            live.flush()
            written.append(n)
            n += 1

    thread = threading.Thread(target=live_loop)
    thread.start()
    _wait_for(lambda: len(written) >= 50)
    old = os.open(live_path, os.O_RDONLY)  # the file about to be replaced
    try:
        saved = plan.switch(replay, saved)
        old_size = os.fstat(old).st_size
        before = len(written)
        _wait_for(lambda: len(written) >= before + 50)
        stop.set()
        thread.join()
        assert os.fstat(old).st_size == old_size  # nothing appended to the replaced file
        old_ids = [json.loads(x)["id"] for x in os.pread(old, old_size, 0).decode().splitlines()]
    finally:
        os.close(old)
    replay.add([_delete(2000, 3)])  # the last pass: into the same file, now live
    replay.flush()
    live.close()
    replay.close()
    new_ids = _ids(live_path)
    assert new_ids[:10] == list(range(1000, 1010)) and 2000 in new_ids
    assert sorted(old_ids + [i for i in new_ids if i < 1000]) == written
    assert saved["switched"] is True and not replay_file(live_path, state).exists()
    assert plan.finish(replay, saved) == saved


def test_a_fresh_replay_empties_an_abandoned_file_and_a_resume_keeps_it(tmp_path: Path) -> None:
    live_path, state = tmp_path / "docs.jsonl", tmp_path / "r.json"
    replay_file(live_path, state).write_text(_line(7, 99) + "\n")  # left by an abandoned one
    sink = _replay_sink(live_path, state)
    plan = sink.replay_plan(ReplayRequest(state))
    sink.open()
    saved = plan.prepare(sink, {})
    sink.add([_delete(1, 1)])
    sink.flush()
    sink.close()
    assert _ids(sink.path) == [1]

    again = _replay_sink(live_path, state)  # resumed: the same file, kept
    again.open()
    assert plan.prepare(again, saved) == saved
    again.close()
    assert _ids(again.path) == [1]

    sink.path.unlink()  # the new file lost: the replay cannot go on from its positions
    lost = _replay_sink(live_path, state)
    lost.open()
    with pytest.raises(SinkError, match="start the replay over"):
        plan.prepare(lost, saved)
    lost.close()


def test_interrupted_between_the_rename_and_saving_its_state_a_replay_goes_on(
    tmp_path: Path,
) -> None:
    live_path, state = tmp_path / "docs.jsonl", tmp_path / "r.json"
    live_path.write_text(_line(5, 1) + "\n")
    sink = _replay_sink(live_path, state)
    plan = sink.replay_plan(ReplayRequest(state))
    sink.open()
    saved = plan.prepare(sink, {})  # the state file has this, and pass "first"
    sink.add([_delete(1, 1)])
    sink.flush()
    plan.switch(sink, saved)  # ... and the process dies before the state is saved
    sink.close()

    resumed = _replay_sink(live_path, state)
    resumed.open()  # creates an empty file under the new file's old name
    saved = plan.prepare(resumed, saved)
    assert saved["switched"] is True and resumed.path == live_path
    assert not replay_file(live_path, state).exists()
    saved = plan.switch(resumed, saved)  # the first pass is done: switched already
    resumed.add([_delete(2, 1)])
    resumed.flush()
    resumed.close()
    assert _ids(live_path) == [1, 2]
