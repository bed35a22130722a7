"""Process plumbing for the local stack: free ports, detached children, pid checks."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import time
from collections.abc import Sequence
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """True if ``port`` can be bound on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def pick_port(previous: int | None) -> int:
    """Reuse ``previous`` when it is still free (stable endpoints), else a new one."""
    if previous and port_is_free(previous):
        return previous
    return free_port()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    # A zombie child of ours still "exists": treat it as dead.
    try:
        status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return status != "Z"


def pid_runs(pid: int | None, executable: str | None) -> bool:
    """True if ``pid`` is alive *and* runs ``executable`` (guards against pid reuse)."""
    if not pid or not pid_alive(pid):
        return False
    if not executable:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    name = os.path.basename(executable).encode()
    return any(os.path.basename(part) == name for part in cmdline[:3])


def spawn_detached(argv: Sequence[str], log_file: Path) -> int:
    """Start ``argv`` in its own session, output appended to ``log_file``; return its pid.

    The child outlives this process (it is the stack's job to stop it by pid), so no
    ``Popen`` object is kept for it: ``os.posix_spawn`` with ``setsid``.  ``argv[0]``
    must be an absolute path, and the pid is the program's own from the first instant
    (no shell in between), so pid checks never see anything else.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    executable = argv[0]
    log_fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        return os.posix_spawn(
            executable,
            list(argv),
            dict(os.environ),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, log_fd, 1),
                (os.POSIX_SPAWN_DUP2, log_fd, 2),
                (os.POSIX_SPAWN_CLOSE, log_fd),
            ],
            setsid=True,
        )
    finally:
        os.close(log_fd)


def stop_pid(pid: int, timeout: float = 15.0) -> bool:
    """SIGTERM ``pid`` (its process group), wait, SIGKILL if needed.  True if it stopped."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap(pid)
            if not pid_alive(pid):
                return True
            time.sleep(0.1)
    return not pid_alive(pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])
