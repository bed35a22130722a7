"""The JSONL example consumer's file after a crash mid-write: every line stays whole."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from consumers.jsonl import JsonlSink, cut_torn_line


@pytest.mark.parametrize("block", [4, 1 << 16])  # the last newline found across blocks, or in one
def test_a_torn_last_line_is_cut_on_open_and_whole_lines_are_kept(
    tmp_path: Path, block: int
) -> None:
    path = tmp_path / "docs.jsonl"
    whole = (
        '{"kind": "product", "id": 1, "version": 5}\n{"kind": "product", "id": 2, "version": 6}\n'
    )
    torn = '{"kind": "product", "id": 3, "vers'
    path.write_text(whole + torn)
    assert cut_torn_line(path, block=block) == len(torn)
    assert path.read_text() == whole
    assert cut_torn_line(path, block=block) == 0  # nothing more to cut


def test_open_cuts_the_tail_so_the_next_batch_starts_on_its_own_line(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text('{"kind": "product", "id": 1, "version": 5}\n{"kind": "prod')
    sink = JsonlSink(path)
    sink.open()
    sink._pending.append(json.dumps({"kind": "product", "id": 2, "version": 7}))
    sink.flush()
    sink.close()
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == [1, 2]


def test_a_file_without_any_newline_is_emptied_and_a_missing_one_is_left_alone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "docs.jsonl"
    assert cut_torn_line(path) == 0 and not path.exists()
    path.write_text('{"kind": "pro')
    assert cut_torn_line(path, block=4) == 13 and path.read_text() == ""
