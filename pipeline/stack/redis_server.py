"""The stack's Redis: Debian's ``redis-server`` (for the edge KV consumer's Redis backend).

One process on a free loopback port, append-only file under the stack directory (data
kept across ``stack down`` / ``up``, like the other services).  Redis runs as root
without complaint, so no user switch is needed.
"""

from __future__ import annotations

import shutil

from pipeline.errors import StackError
from pipeline.stack.brokers import ProcessService

__all__ = ["RedisService", "redis_ping"]


class RedisService(ProcessService):
    """``redis-server`` from Debian's package (``scripts/system-deps.sh`` installs it)."""

    name = "redis"
    install_hint = "bash scripts/system-deps.sh (apt-get install redis-server)"

    def executable(self) -> str:
        found = shutil.which("redis-server", path="/usr/local/bin:/usr/bin:/usr/sbin:/bin")
        if not found:
            raise StackError(f"redis-server is not installed: {self.install_hint}")
        return found

    def port_names(self) -> tuple[str, ...]:
        return ("redis",)

    def argv(self, exe: str, ports: dict[str, int]) -> list[str]:
        return [
            exe,
            "--bind", "127.0.0.1",
            "--port", str(ports["redis"]),
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--save", "",
            "--daemonize", "no",
            "--logfile", "",
            # Keep argv[0] as /proc/<pid>/cmdline shows it (the stack's pid check).
            "--set-proc-title", "no",
        ]  # fmt: skip


def redis_ping(url: str, timeout: float = 3.0) -> dict[str, str]:
    """The server's version (raises when unreachable)."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        client.ping()
        return {"redis_version": str(client.info("server")["redis_version"])}
    finally:
        client.close()
