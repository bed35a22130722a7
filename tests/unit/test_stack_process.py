"""How the stack tells a broker that exited during start-up from one that runs.

Real processes (``sleep``, ``false``) spawned the way the stack spawns its services
(``spawn_detached``); no broker needed.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from pipeline.errors import StackError
from pipeline.stack.brokers import ProcessService
from pipeline.stack.process import spawn_detached, stop_pid
from pipeline.stack.state import ServiceState


class _Broker(ProcessService):
    name = "broker"


def _state(argv: list[str], log: Path, executable: str) -> ServiceState:
    state = ServiceState()
    state.pid = spawn_detached(argv, log)
    state.executable = executable
    return state


def test_a_running_child_is_waited_for_even_when_its_command_line_names_another_program(
    tmp_path: Path,
) -> None:
    """`stack up` once said "tansu exited during start-up" of a tansu that ran: the
    /proc command-line check (guarding against pid reuse) did not name it at that
    moment.  Our own child is asked of the kernel instead."""
    sleep = shutil.which("sleep")
    assert sleep is not None
    service = _Broker(tmp_path)
    state = _state([sleep, "30"], tmp_path / "b.log", executable="/opt/broker/tansu")
    assert not service.is_running(state), "the /proc check does not see it as tansu"
    try:
        ready_at = time.monotonic() + 0.5

        def check() -> None:
            if time.monotonic() < ready_at:
                raise ConnectionRefusedError("not yet")

        service.wait_until(state, check, "port", timeout=10)
        assert not service.exited(state)
    finally:
        assert state.pid is not None
        stop_pid(state.pid)


def test_a_child_that_exits_during_start_up_is_reported_with_its_log(tmp_path: Path) -> None:
    false = shutil.which("false")
    assert false is not None
    service = _Broker(tmp_path)
    service.log_file.write_text("broker: bad flag --x\n")
    state = _state([false], service.log_file, executable=false)

    def never() -> None:
        raise ConnectionRefusedError("no")

    with pytest.raises(StackError, match=r"(?s)broker exited during start-up.*bad flag"):
        service.wait_until(state, never, "port", timeout=10)
