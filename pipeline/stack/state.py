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
    """Every managed service, keyed by name (``postgres``, ``noida``, ``tansu``, ``redis``)."""

    services: dict[str, ServiceState] = Field(default_factory=dict)

    def service(self, name: str) -> ServiceState:
        return self.services.setdefault(name, ServiceState())

    def endpoints(self) -> dict[str, str]:
        """Connection settings for the services, named as in ConnectionSettings."""
        out: dict[str, str] = {}
        pg = self.services.get("postgres")
        if pg and "postgres" in pg.ports:
            out["postgres_dsn"] = f"postgresql://postgres@127.0.0.1:{pg.ports['postgres']}/catalog"
        noida = self.services.get("noida")
        if noida and "kafka" in noida.ports:
            out["kafka_bootstrap"] = f"127.0.0.1:{noida.ports['kafka']}"
        if noida and "elasticsearch" in noida.ports:
            out["elasticsearch_url"] = f"http://127.0.0.1:{noida.ports['elasticsearch']}"
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
