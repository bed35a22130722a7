"""The stack's Redis: Debian's ``redis-server`` (for the edge KV consumer's Redis backend).

One process on a free loopback port, append-only file under the stack directory (data
kept across ``stack down`` / ``up``, like the other services).  Redis runs as root
without complaint, so no user switch is needed.
"""

from __future__ import annotations

import shutil
import socket
from urllib.parse import urlsplit

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
    """The server's version (raises when unreachable).

    Speaks RESP over a plain socket (``PING``, ``INFO server``) rather than through
    redis-py, so that the stack does not depend on the client's import-time needs
    (redis-py wants ``async_timeout`` on Python < 3.11.3, which a venv made from a
    newer Python lacks when the stack tests run the system's Python).
    """
    parts = urlsplit(url)
    with socket.create_connection(
        (parts.hostname or "127.0.0.1", parts.port or 6379), timeout
    ) as sock:
        sock.sendall(b"PING\r\nINFO server\r\n")
        data = b""
        while b"redis_version:" not in data or not data.endswith(b"\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    if not data.startswith(b"+PONG"):
        raise StackError(f"redis at {url} did not answer PING: {data[:80]!r}")
    for line in data.decode(errors="replace").splitlines():
        if line.startswith("redis_version:"):
            return {"redis_version": line.split(":", 1)[1].strip()}
    raise StackError(f"redis at {url}: no redis_version in INFO")
