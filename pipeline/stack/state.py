"""The local stack's state file: which services were started, on which ports, by pid.

Written atomically (temporary file + ``os.replace``), so a crash never leaves a torn
file behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from pydantic import BaseModel, Field

STATE_FILE = "state.json"


class ServiceState(BaseModel):
    """What the stack knows about one service it manages."""

    pid: int | None = None
    ports: dict[str, int] = Field(default_factory=dict)
    data_dir: str | None = None
    log_file: str | None = None
    executable: str | None = None
    """Path of the program, checked against ``/proc/<pid>/cmdline`` before any signal."""


class StackState(BaseModel):
    """Every managed service, keyed by name (``postgres``, ``kafka`` or ``kafka-1..3``,
    ``opensearch``, ``noida``, ``tansu``, ``redis``)."""

    services: dict[str, ServiceState] = Field(default_factory=dict)

    def service(self, name: str) -> ServiceState:
        return self.services.setdefault(name, ServiceState())

    def endpoints(self) -> dict[str, str]:
        """Connection settings for the services, named as in ConnectionSettings, and the
        real engines' endpoints beside them.

        ``kafka_bootstrap`` / ``elasticsearch_url``: noida-db (the stand-ins every test,
        the demo and the benchmarks still default to); ``kafka_bootstrap_alt``: Tansu (the
        broker matrix's independent implementation); ``kafka_bootstrap_apache``: Apache
        Kafka (every node); ``opensearch_url``: OpenSearch."""
        out: dict[str, str] = {}
        pg = self.services.get("postgres")
        if pg and "postgres" in pg.ports:
            out["postgres_dsn"] = f"postgresql://postgres@127.0.0.1:{pg.ports['postgres']}/catalog"
        noida = self.services.get("noida")
        if noida and "kafka" in noida.ports:
            out["kafka_bootstrap"] = f"127.0.0.1:{noida.ports['kafka']}"
        if noida and "elasticsearch" in noida.ports:
            out["elasticsearch_url"] = f"http://127.0.0.1:{noida.ports['elasticsearch']}"
        three = [self.services.get(f"kafka-{i}") for i in (1, 2, 3)]
        nodes = (
            [n for n in three if n is not None and n.pid]
            if any(n is not None and n.pid for n in three)
            else [self.services.get("kafka")]
        )
        brokers = [f"127.0.0.1:{n.ports['kafka']}" for n in nodes if n and "kafka" in n.ports]
        if brokers:
            out["kafka_bootstrap_apache"] = ",".join(brokers)
        opensearch = self.services.get("opensearch")
        if opensearch and "http" in opensearch.ports:
            out["opensearch_url"] = f"http://127.0.0.1:{opensearch.ports['http']}"
        tansu = self.services.get("tansu")
        if tansu and "kafka" in tansu.ports:
            out["kafka_bootstrap_alt"] = f"127.0.0.1:{tansu.ports['kafka']}"
        redis = self.services.get("redis")
        if redis and "redis" in redis.ports:
            out["redis_url"] = f"redis://127.0.0.1:{redis.ports['redis']}/0"
        return out


def read_state(stack_dir: Path) -> StackState | None:
    """The saved state, or None when the stack was never started there."""
    path = stack_dir / STATE_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return StackState.model_validate(json.loads(text))


def write_state(stack_dir: Path, state: StackState) -> None:
    """Save ``state`` atomically."""
    stack_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".state.", dir=stack_dir)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(state.model_dump_json(indent=2))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, stack_dir / STATE_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
