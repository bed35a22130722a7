"""The stack's PostgreSQL: Debian's server, a private cluster under the stack directory.

PostgreSQL refuses to run as root, so when the caller is root every server-side
command runs as the ``postgres`` system user (``runuser``), and the cluster lives in
a directory that user owns.  When that user cannot reach the stack directory (a
checkout under ``/root``, say), the cluster goes to ``/var/tmp`` instead; the state
file records where.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

import psycopg

from pipeline.errors import StackError
from pipeline.stack.process import pick_port, tail
from pipeline.stack.state import ServiceState

log = logging.getLogger(__name__)

SERVER_USER = "postgres"
MIN_MAJOR = 14
DATABASE = "catalog"

# Written into <data>/catalog_cdc.conf on every start; postgresql.conf includes it.
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "wal_level": "logical",
    "max_wal_senders": "20",
    "max_replication_slots": "20",
    "max_connections": "200",
    # A developer stack: an OS crash may lose the cluster, a process crash never does.
    "fsync": "off",
    "full_page_writes": "off",
    "wal_sender_timeout": "60s",
    "log_min_messages": "warning",
}


def find_bindir() -> Path | None:
    """The newest Debian PostgreSQL server ``bin`` directory (>= 14), if installed."""
    best: tuple[int, Path] | None = None
    for initdb in glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        bindir = Path(initdb).parent
        try:
            major = int(bindir.parent.name.split(".")[0])
        except ValueError:
            continue
        if major >= MIN_MAJOR and (best is None or major > best[0]):
            best = (major, bindir)
    if best is None and (found := shutil.which("initdb")):
        return Path(found).resolve().parent
    return best[1] if best else None


def ensure_installed() -> Path:
    """Return the server's bin directory, installing Debian's ``postgresql`` if missing."""
    bindir = find_bindir()
    if bindir:
        return bindir
    apt = shutil.which("apt-get")
    if not apt:
        raise StackError(
            "PostgreSQL server not found and apt-get is not available: install "
            "PostgreSQL >= 14 or set CATALOG_CDC_POSTGRES_DSN to an existing server"
        )
    prefix: list[str] = []
    if os.geteuid() != 0:
        sudo = shutil.which("sudo")
        if not sudo:
            raise StackError("PostgreSQL server not found: run `sudo apt-get install postgresql`")
        prefix = [sudo, "-n"]
    log.warning("event=installing package=postgresql via=apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        [*prefix, apt, "-q", "update"],
        [*prefix, apt, "-y", "-q", "install", "--no-install-recommends", "postgresql"],
    ):
        res = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise StackError(
                f"`{' '.join(argv)}` failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}"
            )
    bindir = find_bindir()
    if not bindir:
        raise StackError("apt-get installed postgresql but no initdb was found")
    return bindir


class PostgresService:
    """A private PostgreSQL cluster for the stack."""

    name = "postgres"

    def __init__(self, stack_dir: Path) -> None:
        self.stack_dir = stack_dir
        self.as_root = os.geteuid() == 0

    # -- locations -------------------------------------------------------------------

    def _cluster_dir(self, state: ServiceState) -> Path:
        if state.data_dir:
            return Path(state.data_dir).parent
        preferred = self.stack_dir / "postgres"
        if not self.as_root or self._server_user_can_reach(self.stack_dir):
            return preferred
        digest = hashlib.sha1(str(self.stack_dir).encode()).hexdigest()[:12]
        return Path("/var/tmp") / f"catalog-cdc-{digest}" / "postgres"

    def _server_user_can_reach(self, path: Path) -> bool:
        res = subprocess.run(
            ["runuser", "-u", SERVER_USER, "--", "test", "-x", str(path)],
            capture_output=True,
            check=False,
        )
        return res.returncode == 0

    def _as_server(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", SERVER_USER, "--", *argv] if self.as_root else argv

    def _run(self, argv: list[str], what: str) -> str:
        res = subprocess.run(self._as_server(argv), capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise StackError(
                f"PostgreSQL {what} failed ({' '.join(argv)}):\n{res.stdout}{res.stderr}"
            )
        return res.stdout

    def _chown(self, path: Path) -> None:
        if self.as_root:
            pw = pwd.getpwnam(SERVER_USER)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    # -- lifecycle -------------------------------------------------------------------

    def is_running(self, state: ServiceState) -> bool:
        if not state.data_dir or not Path(state.data_dir, "PG_VERSION").exists():
            return False
        bindir = find_bindir()
        if bindir is None:
            return False
        res = subprocess.run(
            self._as_server([str(bindir / "pg_ctl"), "status", "-D", state.data_dir]),
            capture_output=True,
            check=False,
        )
        return res.returncode == 0

    def start(self, state: ServiceState) -> None:
        """Create the cluster if needed and start it on a free loopback port."""
        bindir = ensure_installed()
        cluster = self._cluster_dir(state)
        data = cluster / "data"
        run = cluster / "run"
        logfile = cluster / "postgres.log"
        for path in (cluster.parent, cluster, run):
            path.mkdir(parents=True, exist_ok=True)
        for path in (cluster, run):
            self._chown(path)
        if not (data / "PG_VERSION").exists():
            log.info("event=initdb data_dir=%s", data)
            self._run(
                [
                    str(bindir / "initdb"),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                    "-D",
                    str(data),
                ],
                "initdb",
            )
            with open(data / "postgresql.conf", "a") as conf:
                conf.write("\ninclude_if_exists = 'catalog_cdc.conf'\n")
        port = pick_port(state.ports.get("postgres"))
        settings = {**SETTINGS, "port": str(port), "unix_socket_directories": f"'{run}'"}
        conf_path = data / "catalog_cdc.conf"
        conf_path.write_text(
            "# Written by `catalog-cdc stack up` on every start.\n"
            + "".join(f"{k} = {v}\n" for k, v in settings.items())
        )
        self._chown(conf_path)
        if self.as_root and not logfile.exists():
            logfile.touch()
            self._chown(logfile)
        self._run(
            [
                str(bindir / "pg_ctl"),
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                str(data),
                "-l",
                str(logfile),
            ],
            f"start (log: {logfile}):\n{tail(logfile)}\n",
        )
        state.ports = {"postgres": port}
        state.data_dir = str(data)
        state.log_file = str(logfile)
        state.executable = str(bindir / "postgres")
        pid_file = data / "postmaster.pid"
        state.pid = int(pid_file.read_text().split()[0]) if pid_file.exists() else None

    def stop(self, state: ServiceState) -> None:
        if not self.is_running(state):
            return
        bindir = find_bindir()
        assert bindir is not None and state.data_dir is not None
        self._run(
            [str(bindir / "pg_ctl"), "stop", "-m", "fast", "-w", "-D", state.data_dir], "stop"
        )

    def wipe(self, state: ServiceState) -> None:
        cluster = self._cluster_dir(state)
        shutil.rmtree(cluster, ignore_errors=True)

    # -- readiness -------------------------------------------------------------------

    @staticmethod
    def admin_dsn(port: int) -> str:
        return f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def wait_ready(self, state: ServiceState, timeout: float = 60.0) -> None:
        """Block until a SQL query answers, then make sure the demo database exists."""
        port = state.ports["postgres"]
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(
                    self.admin_dsn(port), autocommit=True, connect_timeout=3
                ) as conn:
                    conn.execute("SELECT 1")
                    exists = conn.execute(
                        "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
                    ).fetchone()
                    if not exists:
                        conn.execute(f'CREATE DATABASE "{DATABASE}"')
                    return
            except psycopg.Error as exc:
                last = exc
                time.sleep(0.3)
        raise StackError(
            f"PostgreSQL on port {port} did not answer within {timeout:.0f}s: {last}\n"
            f"{tail(Path(state.log_file or ''))}"
        )

    @staticmethod
    def probe(dsn: str) -> dict[str, str]:
        """Live facts for `stack status` (raises psycopg.Error when down)."""
        with psycopg.connect(dsn, connect_timeout=2) as conn:
            row = conn.execute(
                "SELECT current_setting('server_version'), current_setting('wal_level')"
            ).fetchone()
            assert row is not None
            return {"version": str(row[0]), "wal_level": str(row[1])}
