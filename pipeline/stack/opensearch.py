"""The stack's search engine: a real OpenSearch 2.19 node, in-process in one JVM.

No distribution tarball: ``java/opensearch/pom.xml`` names the server jar and the
modules the project's mapping and queries need (netty4 HTTP/transport, mapper-extras
for ``scaled_float``, analysis-common, painless, reindex, parent-join);
:mod:`pipeline.stack.maven` resolves them from Maven Central once into its cache outside
the checkout, and
``java/opensearch/Launcher.java`` runs as a single source file (``java -cp 'lib/*'
Launcher.java``, no build step) that starts an ``org.opensearch.node.Node`` with those
plugins, ``discovery.type=single-node``, HTTP and transport on free 127.0.0.1 ports.

Data (``path.data``) lives under ``<stack>/opensearch/data`` and survives ``stop`` and a
``kill -9`` (OpenSearch fsyncs the translog before it acknowledges a write); the JVM's
output goes to ``<stack>/opensearch.log``.  Every start-up failure is one
:class:`~pipeline.errors.StackError` line naming the service, the command and the log.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from opensearchpy import OpenSearch

from pipeline.errors import StackError
from pipeline.stack.brokers import ProcessService
from pipeline.stack.maven import fetch_classpath, java_executable
from pipeline.stack.process import pid_runs, port_is_free
from pipeline.stack.state import ServiceState

__all__ = ["LAUNCHER", "OPENSEARCH_VERSION", "POM", "OpenSearchService", "opensearch_info"]

OPENSEARCH_VERSION = "2.19.6"
JAVA_DIR = Path(__file__).resolve().parent / "java" / "opensearch"
POM = JAVA_DIR / "pom.xml"
LAUNCHER = JAVA_DIR / "Launcher.java"

# A packaged 2.19 node's jvm.options, less what only a big dedicated host wants
# (AlwaysPreTouch, heap dumps, GC logs).
JVM_OPTIONS = (
    "-XX:+UseG1GC",
    "-XX:+ExitOnOutOfMemoryError",
    "-XX:-OmitStackTraceInFastThrow",
    "-Xss1m",
    "-Djava.awt.headless=true",
    "-Dfile.encoding=UTF-8",
    "-Djna.nosys=true",
    "-Dio.netty.noUnsafe=true",
    "-Dio.netty.noKeySetOptimization=true",
    "-Dio.netty.recycler.maxCapacityPerThread=0",
    "-Dlog4j.shutdownHookEnabled=false",
    "-Dlog4j2.disable.jmx=true",
    "-Dlog4j2.formatMsgNoLookups=true",
    "-Djava.locale.providers=SPI,COMPAT",
)

_LAUNCHER_MARK = "opensearch launcher: "


def opensearch_info(url: str, timeout: float = 3.0) -> dict[str, str]:
    """The engine and version the server reports, and its cluster health (raises when it
    does not answer, or when the server is not OpenSearch)."""
    parts = urlsplit(url)
    # A refused connection fails here, before the client logs a warning about it.
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 9200), timeout):
        pass
    client = OpenSearch(url, timeout=timeout, max_retries=0)
    try:
        info = client.info()
        distribution = info["version"].get("distribution", "elasticsearch")
        if distribution != "opensearch":
            raise StackError(f"{url} is {distribution} {info['version']['number']}, not OpenSearch")
        health = client.cluster.health()
    finally:
        client.close()
    return {
        "engine": "opensearch",
        "opensearch_version": str(info["version"]["number"]),
        "cluster_status": str(health["status"]),
    }


class OpenSearchService(ProcessService):
    """One OpenSearch node in a JVM the stack tracks by pid.

    Heap ``-Xms512m -Xmx1g`` by default: the node idles at about 0.4 GB RSS, and this
    2-core, 24 GB machine also runs Kafka's JVM, PostgreSQL and the pipeline.
    ``ports`` pins a port (``{"http": 9200}``); a pinned port that is taken is refused
    before the JVM starts.  Otherwise ports are free loopback ports, the previous ones
    reused while they are free.
    """

    name = "opensearch"
    install_hint = "apt-get install openjdk-17-jdk-headless maven"

    def __init__(
        self,
        stack_dir: Path,
        *,
        heap_min: str = "512m",
        heap_max: str = "1g",
        ports: dict[str, int] | None = None,
        cache_dir: Path | None = None,
        pom: Path = POM,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(stack_dir)
        self.progress = progress
        self.heap_min = heap_min
        self.heap_max = heap_max
        self.fixed_ports = dict(ports or {})
        self.cache_dir = cache_dir
        self.pom = pom

    # -- ProcessService ------------------------------------------------------------------

    def executable(self) -> str:
        return java_executable(self.name)

    def port_names(self) -> tuple[str, ...]:
        return ("http", "transport")

    def jars(self) -> Path:
        """The node's jar directory, fetched once (pipeline/stack/maven.py's cache)."""
        return fetch_classpath(self.pom, self.name, self.progress, cache_dir=self.cache_dir)

    def argv(self, exe: str, ports: dict[str, int]) -> list[str]:
        return [
            exe,
            f"-Xms{self.heap_min}",
            f"-Xmx{self.heap_max}",
            *JVM_OPTIONS,
            f"-Djava.io.tmpdir={self.data_dir / 'tmp'}",
            "-cp", f"{self.jars()}/*",
            str(LAUNCHER),
            "--home", str(self.data_dir),
            "--http-port", str(ports["http"]),
            "--transport-port", str(ports["transport"]),
        ]  # fmt: skip

    def start(self, state: ServiceState) -> None:
        """Fetch the jars if needed and spawn the JVM (returns at once: :meth:`wait_ready`)."""
        for port_name, port in self.fixed_ports.items():
            if not port_is_free(port):
                raise StackError(
                    f"opensearch: {port_name} port {port} on 127.0.0.1 is taken: stop what "
                    f"listens there or pick another port; log {self.log_file}"
                )
            state.ports[port_name] = port
        self.executable()  # no Java: fail before fetching anything
        self.jars()
        (self.data_dir / "tmp").mkdir(parents=True, exist_ok=True)
        super().start(state)

    def is_running(self, state: ServiceState) -> bool:
        """Alive, a ``java`` process, and running this launcher on this data directory."""
        if not pid_runs(state.pid, state.executable):
            return False
        try:
            cmdline = Path(f"/proc/{state.pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        names = {os.path.basename(arg) for arg in cmdline}
        return os.fsencode(LAUNCHER.name) in names and os.fsencode(self.data_dir) in cmdline

    # -- readiness -----------------------------------------------------------------------

    @staticmethod
    def url(state: ServiceState) -> str:
        return f"http://127.0.0.1:{state.ports['http']}"

    def wait_ready(self, state: ServiceState, timeout: float = 120.0) -> dict[str, str]:
        """Wait until the node answers through opensearch-py; return :func:`opensearch_info`.

        Fails in one line, naming the command and the log, when the JVM exits (with the
        launcher's own reason when it gave one) or the node does not answer in time.
        """
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            code = self._exit_code(state)
            if code is not None:
                raise StackError(
                    f"opensearch exited during start-up ({code}): {self._reason()}; "
                    f"command `{self._command(state)}`; log {self.log_file}"
                )
            try:
                return opensearch_info(self.url(state))
            except StackError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                last = exc
                time.sleep(0.3)
        raise StackError(
            f"opensearch did not answer on {self.url(state)} within {timeout:.0f}s ({last}); "
            f"command `{self._command(state)}`; log {self.log_file}"
        )

    def _exit_code(self, state: ServiceState) -> str | None:
        """``"exit N"`` / ``"signal N"`` once our child has ended, ``"exited"`` for a
        process another ``stack up`` started that is gone; None while it runs."""
        if not state.pid:
            return "never started"
        try:
            pid, status = os.waitpid(state.pid, os.WNOHANG)
        except ChildProcessError:
            return None if self.is_running(state) else "exited"
        if pid == 0:
            return None
        if os.WIFSIGNALED(status):
            return f"signal {os.WTERMSIG(status)}"
        return f"exit {os.waitstatus_to_exitcode(status)}"

    def _reason(self) -> str:
        """The launcher's last ``opensearch launcher:`` line, else the log's last line."""
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return "no log"
        start = max(
            (i for i, line in enumerate(lines) if line.startswith("--- starting ")), default=0
        )
        lines = [line.strip() for line in lines[start + 1 :] if line.strip()]
        for line in reversed(lines):
            _, mark, reason = line.partition(_LAUNCHER_MARK)
            if mark:
                return reason
        return lines[-1] if lines else "no output"

    def _command(self, state: ServiceState) -> str:
        with contextlib.suppress(StackError):
            return shlex.join(self.argv(state.executable or "java", state.ports))
        return f"java ... {LAUNCHER.name} --home {self.data_dir}"
