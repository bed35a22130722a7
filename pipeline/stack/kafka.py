"""The stack's Apache Kafka 4.4: KRaft brokers run from jars Maven fetched (no tarball).

- One node by default (``KafkaCluster(stack_dir)``): ``process.roles=broker,controller``,
  node id 1, every replication factor 1.  ``KafkaCluster(stack_dir, nodes=3)``: three
  such combined nodes, a controller quorum of the three, replication factor 3 and
  ``min.insync.replicas=2`` by default (offsets, transaction state and share-group state
  as well): the fault tests' cluster.  A topic created with replication factor -1 (as
  ``pipeline.kafka.ensure_topics`` does) gets these defaults.
- Jars: :func:`pipeline.stack.maven.fetch_classpath` on ``java/kafka/pom.xml`` (cached
  outside the checkout); logging through ``java/kafka/log4j2.properties`` to stdout,
  which goes to ``<stack>/kafka.log`` (``kafka-N.log`` for a cluster).
- Each node: ``<data root>/node-N/`` holds its ``server.properties`` (rewritten on every
  start, since ports may change) and ``data/`` (``log.dirs``, the metadata log with it),
  formatted once with ``kafka.tools.StorageTool format`` and the cluster id kept in
  ``<data root>/cluster-id``.  The quorum is static (``controller.quorum.voters``), so a
  stack restarted on new ports keeps its data.  Data root: ``<stack>/kafka`` for one
  node, ``<stack>/kafka-cluster`` for three: two separate clusters.
- JVM per node: ``-Xms256m -Xmx768m`` and G1 (Kafka's own start script's flags); three
  nodes take at most 2.3 GB of heap on a 24 GB machine.
- Durability: the broker does not fsync per message (Kafka's default); an acknowledged
  message is in the page cache, which a ``kill -9`` of the JVM does not lose.

Each node is tracked in the stack's state as one service (``kafka``, or ``kafka-1`` ..
``kafka-3``): pid, ports (``kafka``, ``controller``), data dir and log file.  Start-up
failures are a :class:`~pipeline.errors.StackError` of one line naming the node, the
command and its log file.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient

from pipeline.errors import StackError
from pipeline.stack.brokers import ProcessService
from pipeline.stack.maven import JAVA_HINT, cached_classpath, fetch_classpath, java_executable
from pipeline.stack.process import pid_alive, spawn_detached, stop_pid
from pipeline.stack.state import ServiceState, StackState

__all__ = ["KafkaCluster", "KafkaNode", "kafka_describe"]

log = logging.getLogger(__name__)
_QUIET = logging.getLogger("pipeline.stack.kafka.librdkafka")
_QUIET.setLevel(logging.CRITICAL)

JAVA_DIR = Path(__file__).resolve().parent / "java" / "kafka"
POM = JAVA_DIR / "pom.xml"
LOG4J_CONFIG = JAVA_DIR / "log4j2.properties"
HEAP = ("-Xms256m", "-Xmx768m")
JVM_OPTIONS = (
    *HEAP,
    # As Kafka's kafka-run-class.sh runs the broker.
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
MAIN_CLASS = "kafka.Kafka"
FORMAT_TIMEOUT = 120.0


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()


def _listened(port: int) -> bool:
    """Does something accept connections on 127.0.0.1:``port``?  (Connections a killed
    broker left in TIME_WAIT do not stop the JVM from binding it again; a listener does.)"""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _ephemeral_range() -> range:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):
        return range(32768, 61000)


def pick_server_port(taken: set[int]) -> int:
    """A free port on 127.0.0.1 *below* the kernel's ephemeral range.

    A port from the ephemeral range (what binding port 0 gives) may be taken by a client
    while the broker is down: librdkafka reconnects every few dozen milliseconds, and a
    connect to a port nobody listens on can be given that very port as its local one
    (a TCP self-connect), which then holds it.  Ports under the range are never handed
    out to clients.
    """
    ephemeral = _ephemeral_range()
    top = min(ephemeral.start, 65536)
    candidates = range(max(1024, top - 12000), top)
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.choice(candidates)
        if port in taken or _listened(port):
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise StackError(f"kafka: no free port on 127.0.0.1 in {candidates.start}-{top - 1}")


def _cause(log_file: Path, since: int) -> str | None:
    """The line of the log (from byte ``since``) that best says why the JVM stopped."""
    try:
        with open(log_file, "rb") as fh:
            fh.seek(since)
            lines = fh.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for marker in ("Exception:", "Error:", " ERROR ", "FATAL"):
        for line in lines:
            if marker in line:
                text = line.strip()
                return text if len(text) <= 300 else text[:297] + "..."
    return None


def _wait_gone(pid: int, timeout: float) -> bool:
    """Until ``pid`` has wholly exited.  A JVM's main thread shows as a zombie while
    its other threads are still exiting, its sockets and file locks still held, so
    :func:`pid_alive` (which calls a zombie dead) is not enough before a restart on
    the same ports and data: reap it if it is our child, else wait for its last thread."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            reaped, _ = os.waitpid(pid, os.WNOHANG)
            if reaped == pid:
                return True
        except ChildProcessError:
            try:
                threads = os.listdir(f"/proc/{pid}/task")
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                return True
            if state in ("Z", "X") and len(threads) <= 1:
                return True
        time.sleep(0.05)
    return False


def _stop(pid: int) -> bool:
    """SIGTERM (a controlled shutdown), SIGKILL after 10 s; True once wholly gone."""
    return stop_pid(pid, timeout=10.0) and _wait_gone(pid, 30.0)


def kafka_describe(bootstrap: str, timeout: float = 3.0) -> dict[str, Any]:
    """Cluster id, broker ids and controller id as the cluster reports them (raises when
    it does not answer)."""
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    # A TCP probe first keeps librdkafka from logging refused connections.
    with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
        pass
    config: dict[str, object] = {
        "bootstrap.servers": bootstrap,
        "socket.timeout.ms": int(timeout * 1000),
        "logger": _QUIET,
    }
    admin = AdminClient(config)  # type: ignore[arg-type]  # "logger" takes a Logger
    described = admin.describe_cluster(request_timeout=timeout).result(timeout=timeout)
    return {
        "cluster_id": described.cluster_id,
        "brokers": sorted(node.id for node in described.nodes),
        "controller": described.controller.id if described.controller else None,
    }


class KafkaNode(ProcessService):
    """One KRaft node (broker + controller) of a :class:`KafkaCluster`."""

    install_hint = JAVA_HINT

    def __init__(self, cluster: KafkaCluster, node_id: int) -> None:
        self.name = "kafka" if cluster.nodes == 1 else f"kafka-{node_id}"
        super().__init__(cluster.stack_dir)
        self.cluster = cluster
        self.node_id = node_id
        self.data_dir = cluster.data_root / f"node-{node_id}"
        self.config_file = self.data_dir / "server.properties"
        self.log_dirs = self.data_dir / "data"
        self.log_file = cluster.stack_dir / f"{self.name}.log"

    def executable(self) -> str:
        return java_executable(self.name)

    def port_names(self) -> tuple[str, ...]:
        return ("kafka", "controller")

    def is_running(self, state: ServiceState) -> bool:
        """Alive and a JVM running this node's config file (guards against pid reuse)."""
        if not state.pid or not pid_alive(state.pid):
            return False
        try:
            cmdline = Path(f"/proc/{state.pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return str(self.config_file).encode() in cmdline

    def properties(self, ports: dict[str, dict[str, int]]) -> dict[str, str]:
        """This node's server.properties, given every node's ports."""
        n = self.cluster.nodes
        replicas = str(min(n, 3))
        min_isr = "2" if n >= 3 else "1"
        mine = ports[self.name]
        voters = ",".join(
            f"{node.node_id}@127.0.0.1:{ports[node.name]['controller']}"
            for node in self.cluster.members
        )
        return {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{mine['kafka']},"
            f"CONTROLLER://127.0.0.1:{mine['controller']}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{mine['kafka']}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.log_dirs),
            "num.partitions": "1",
            "default.replication.factor": replicas,
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": replicas,
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": min_isr,
            "transaction.state.log.num.partitions": "10",
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": min_isr,
            "group.initial.rebalance.delay.ms": "0",
            # Kafka's default, kept: tests that produce to a topic nobody created get it.
            "auto.create.topics.enable": "true",
            # 2 cores: fewer threads than the defaults (3 network, 8 I/O).
            "num.network.threads": "2",
            "num.io.threads": "4",
            "log.retention.hours": "168",
            "log.segment.bytes": str(256 * 1024 * 1024),
            **self.cluster.settings,
        }

    def write_config(self, ports: dict[str, dict[str, int]]) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        text = "".join(f"{k}={v}\n" for k, v in self.properties(ports).items())
        tmp = self.config_file.with_suffix(".tmp")
        tmp.write_text("# written by pipeline/stack/kafka.py on every start\n" + text)
        os.replace(tmp, self.config_file)

    def jvm_argv(self, java: str, lib: Path, main: Sequence[str]) -> list[str]:
        return [
            java,
            *JVM_OPTIONS,
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            "-cp",
            f"{lib}/*",
            *main,
        ]

    def command(self, lib: Path, *main: str) -> str:
        """A short form of a command for messages (JVM options left out)."""
        return f"java -cp '{lib}/*' {' '.join(main)}"

    def formatted(self) -> bool:
        return (self.log_dirs / "meta.properties").is_file()

    def format(self, java: str, lib: Path, cluster_id: str) -> None:
        """``kafka.tools.StorageTool format`` once; output appended to the node's log."""
        main = ("kafka.tools.StorageTool", "format", "--config", str(self.config_file),
                "--cluster-id", cluster_id)  # fmt: skip
        argv = self.jvm_argv(java, lib, main)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        since = self.log_file.stat().st_size if self.log_file.exists() else 0
        with open(self.log_file, "a") as fh:
            fh.write(f"\n--- formatting {self.name} at {time.strftime('%Y-%m-%dT%H:%M:%S')} ---\n")
            fh.flush()
            try:
                done = subprocess.run(
                    argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                    timeout=FORMAT_TIMEOUT, check=False,
                )  # fmt: skip
            except subprocess.TimeoutExpired as exc:
                raise StackError(
                    f"{self.name}: `{self.command(lib, *main)}` did not finish within "
                    f"{FORMAT_TIMEOUT:.0f}s; log {self.log_file}"
                ) from exc
        if done.returncode != 0:
            why = _cause(self.log_file, since) or f"exit status {done.returncode}"
            raise StackError(
                f"{self.name}: formatting the storage failed ({why}): "
                f"`{self.command(lib, *main)}`; log {self.log_file}"
            )

    def start(self, state: ServiceState) -> None:
        raise StackError(
            f"{self.name}: a Kafka node starts with its cluster: KafkaCluster.up or start_nodes"
        )


class KafkaCluster:
    """The stack's Kafka: ``nodes`` KRaft nodes (1 or 3) under ``stack_dir``.

    The calls ``stack up``/``down``/``status`` need: :meth:`up`, :meth:`down`,
    :meth:`status`, :meth:`bootstrap`; and for fault tests :meth:`kill` and
    :meth:`start_nodes`.  Every call takes the stack's :class:`StackState`, in which each
    node has its own entry (:attr:`names`).
    """

    engine = "Apache Kafka"

    def __init__(
        self,
        stack_dir: Path,
        nodes: int = 1,
        progress: Callable[[str], None] | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        if nodes not in (1, 3):
            raise StackError(f"kafka: {nodes} nodes asked; the stack runs 1 or 3")
        self.stack_dir = stack_dir
        self.nodes = nodes
        self.progress = progress or (lambda msg: log.info("event=stack msg=%r", msg))
        self.data_root = stack_dir / ("kafka" if nodes == 1 else "kafka-cluster")
        self.settings = dict(settings or {})
        """server.properties entries that override the defaults (every node)."""
        self.members = [KafkaNode(self, i) for i in range(1, nodes + 1)]
        self._log_offsets: dict[str, int] = {}

    @property
    def names(self) -> list[str]:
        """The nodes' service names in the stack state (``kafka`` or ``kafka-1..3``)."""
        return [node.name for node in self.members]

    @staticmethod
    def all_names() -> list[str]:
        """Every name a Kafka node of either shape may have in the state."""
        return ["kafka", "kafka-1", "kafka-2", "kafka-3"]

    def node(self, node_id: int) -> KafkaNode:
        return self.members[node_id - 1]

    def bootstrap(self, state: StackState) -> str | None:
        """``host:port,...`` of every node's PLAINTEXT listener, or None before ``up``."""
        addresses = [
            f"127.0.0.1:{state.services[name].ports['kafka']}"
            for name in self.names
            if name in state.services and "kafka" in state.services[name].ports
        ]
        return ",".join(addresses) or None

    def version(self) -> str | None:
        """The Kafka version of the cached jars (their manifest); None before a fetch."""
        lib = cached_classpath(POM, "kafka")
        for jar in lib.glob("kafka_2.13-*.jar") if lib else ():
            with zipfile.ZipFile(jar) as zf, zf.open("META-INF/MANIFEST.MF") as mf:
                for raw in mf.read().decode(errors="replace").splitlines():
                    key, _, value = raw.partition(":")
                    if key.strip() == "Version":
                        return value.strip()
        return None

    # -- up / down -----------------------------------------------------------------

    def up(self, state: StackState, timeout: float = 120.0) -> str:
        """Start the nodes that are not running, wait until all answer; the bootstrap.

        Nodes of the other shape (one node vs three) that run are stopped first, data
        kept.  Idempotent: a running, answering cluster is left alone.
        """
        for name in self.all_names():
            if name in self.names or name not in state.services:
                continue
            other = KafkaCluster(self.stack_dir, 3 if self.nodes == 1 else 1, self.progress)
            node = next((m for m in other.members if m.name == name), None)
            if node and node.is_running(state.services[name]):
                self.progress(f"{name}: stopping (the stack now runs {self.nodes} node(s))")
                node.stop(state.services[name])
        down = [n for n in self.members if not n.is_running(state.service(n.name))]
        if down:
            self.start_nodes(state, down)
        self.wait_ready(state, timeout)
        bootstrap = self.bootstrap(state)
        assert bootstrap is not None
        return bootstrap

    def start_nodes(self, state: StackState, nodes: Sequence[KafkaNode]) -> None:
        """Fetch the jars if needed, assign ports, format new storage, spawn ``nodes``.

        Returns once the JVMs are spawned; :meth:`wait_ready` waits for them.  A node
        restarted while others run keeps its controller port (the others' quorum
        configuration names it).
        """
        java = java_executable(nodes[0].name if nodes else "kafka")
        lib = fetch_classpath(POM, "kafka", self.progress)
        self._assign_ports(state, nodes)
        ports = {n.name: state.service(n.name).ports for n in self.members}
        cluster_id = self._cluster_id()
        for node in self.members:
            node.write_config(ports)
        unformatted = [n for n in nodes if not n.formatted()]
        if unformatted:  # one JVM each (about 2 s), side by side
            with ThreadPoolExecutor(len(unformatted)) as pool:
                for done in [pool.submit(n.format, java, lib, cluster_id) for n in unformatted]:
                    done.result()
        for node in nodes:
            st = state.service(node.name)
            self.progress(f"{node.name}: starting (ports {st.ports})")
            node.log_file.parent.mkdir(parents=True, exist_ok=True)
            with open(node.log_file, "a") as fh:
                fh.write(
                    f"\n--- starting {node.name} at {time.strftime('%Y-%m-%dT%H:%M:%S')} ---\n"
                )
            self._log_offsets[node.name] = node.log_file.stat().st_size
            st.pid = spawn_detached(
                node.jvm_argv(java, lib, (MAIN_CLASS, str(node.config_file))), node.log_file
            )
            st.executable = java
            st.data_dir = str(node.data_dir)
            st.log_file = str(node.log_file)
        self._lib = lib

    def _assign_ports(self, state: StackState, starting: Sequence[KafkaNode]) -> None:
        running = [
            n for n in self.members if n not in starting and n.is_running(state.service(n.name))
        ]
        taken: set[int] = set()
        for node in running:
            taken.update(state.service(node.name).ports.values())
        for node in starting:
            st = state.service(node.name)
            ports: dict[str, int] = {}
            for port_name in node.port_names():
                previous = st.ports.get(port_name)
                if previous and previous not in taken and not _listened(previous):
                    ports[port_name] = previous
                elif previous and port_name == "controller" and running:
                    raise StackError(
                        f"{node.name}: controller port {previous} is taken by another process "
                        f"and the running nodes' quorum names it: free it, or `stack down` "
                        f"and `stack up` again; log {node.log_file}"
                    )
                else:
                    ports[port_name] = pick_server_port(taken)
                taken.add(ports[port_name])
            st.ports = ports

    def _cluster_id(self) -> str:
        path = self.data_root / "cluster-id"
        with contextlib.suppress(FileNotFoundError):
            return path.read_text().strip()
        self.data_root.mkdir(parents=True, exist_ok=True)
        cluster_id = new_cluster_id()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(cluster_id + "\n")
        os.replace(tmp, path)
        return cluster_id

    def wait_ready(self, state: StackState, timeout: float = 120.0) -> None:
        """Until every node answers on its own listener and the cluster reports all
        brokers; a node that exits first, or silence past ``timeout``, is a one-line
        StackError naming the node, its command and its log."""
        deadline = time.monotonic() + timeout
        expected = [n.node_id for n in self.members]
        pending = list(self.members)
        while pending:
            node = pending[0]
            st = state.service(node.name)
            if node.exited(st):
                raise StackError(self._exit_message(node, st))
            try:
                facts = kafka_describe(f"127.0.0.1:{st.ports['kafka']}", 2.0)
                if facts["brokers"] == expected:
                    pending.pop(0)
                    continue
                last = f"brokers {facts['brokers']} of {expected}"
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                last = str(exc) or type(exc).__name__
            if time.monotonic() > deadline:
                raise StackError(
                    f"{node.name} did not answer within {timeout:.0f}s ({last}): "
                    f"`{self._command(node)}`; log {node.log_file}"
                )
            time.sleep(0.3)

    def _command(self, node: KafkaNode) -> str:
        lib = getattr(self, "_lib", None) or Path("<kafka jars>")
        return node.command(lib, MAIN_CLASS, str(node.config_file))

    def _exit_message(self, node: KafkaNode, st: ServiceState) -> str:
        cause = _cause(node.log_file, self._log_offsets.get(node.name, 0))
        return (
            f"{node.name} exited during start-up"
            + (f" ({cause})" if cause else "")
            + f": `{self._command(node)}`; log {node.log_file}"
        )

    def down(self, state: StackState, wipe: bool = False) -> None:
        """Stop every node of this cluster (SIGTERM to all at once, SIGKILL after 10 s).

        All at once: stopped one by one, the last nodes of a three-node cluster lose
        their controller quorum and wait for it in their controlled shutdown (30 s
        each, measured).  A SIGKILL loses nothing acknowledged (the next start
        recovers the logs)."""
        running = [n for n in self.members if n.is_running(state.service(n.name))]
        for node in running:
            self.progress(f"{node.name}: stopping")
        if running:
            with ThreadPoolExecutor(len(running)) as pool:
                stops = [(n, pool.submit(_stop, state.service(n.name).pid or 0))
                         for n in running]  # fmt: skip
                failed = [n.name for n, stop in stops if not stop.result()]
            if failed:
                raise StackError(f"{', '.join(failed)} did not stop")
        for node in self.members:
            state.service(node.name).pid = None
            if wipe:
                state.services.pop(node.name, None)
        if wipe:
            shutil.rmtree(self.data_root, ignore_errors=True)

    def kill(self, state: StackState, node_id: int) -> None:
        """``kill -9`` one node and wait until it is gone, its ports and data dir
        released (fault tests)."""
        node = self.node(node_id)
        st = state.service(node.name)
        if st.pid and node.is_running(st):
            os.kill(st.pid, signal.SIGKILL)
            if not _wait_gone(st.pid, 30.0):
                raise StackError(f"{node.name} (pid {st.pid}) did not die after SIGKILL")
        st.pid = None

    def status(self, state: StackState) -> dict[str, dict[str, Any]]:
        """Per node: running, pid, ports, data dir, log, engine and version, and what
        the cluster answers (cluster id, brokers, controller) or the error."""
        version = self.version()
        out: dict[str, dict[str, Any]] = {}
        for node in self.members:
            st = state.services.get(node.name, ServiceState())
            entry: dict[str, Any] = {
                "running": node.is_running(st),
                "pid": st.pid,
                "ports": st.ports,
                "data_dir": st.data_dir,
                "log_file": st.log_file,
                "engine": self.engine,
                "version": version,
                "answers": False,
            }
            if entry["running"] and "kafka" in st.ports:
                try:
                    facts = kafka_describe(f"127.0.0.1:{st.ports['kafka']}", 2.0)
                    entry.update(answers=True, kafka_brokers=len(facts["brokers"]), **facts)
                except Exception as exc:  # noqa: BLE001 - status reports, never raises
                    entry["error"] = str(exc)
            out[node.name] = entry
        return out
