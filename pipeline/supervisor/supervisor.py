"""The supervisor behind ``catalog-cdc run``: every service a child process.

Each :class:`~pipeline.supervisor.config.ServiceSpec` runs as
``python -m pipeline.cli <argv>`` (the same ``catalog-cdc``), in a process group of
its own, so a Ctrl-C in the terminal reaches only the supervisor, which then stops
the children in its own order.

- **Start**: in the order of the specs (contract servers, reader, assembler,
  consumers, other services); each child is started once the previous one is
  running (executed), no sleeps: the services wait for their inputs themselves.
- **Logs**: every line a child writes to stdout or stderr is written to our stdout
  as ``name | line`` (fixed-width names, coloured on a terminal), whole lines under
  one lock, flushed at once.  The supervisor's own events go to the log (stderr).
- **Restarts**: a child that fails (non-zero status, or killed) is started again
  after a capped exponential backoff (``[restart]``: 1 s doubling to 30 s by
  default); the backoff starts afresh once a run lasted ``reset_after`` seconds.
  ``crash_loop_after`` quick failures in a row are reported as a crash loop, with
  the exit status and the child's last stderr lines.  A child that exits 0 on its
  own stays stopped unless its policy is ``always``; ``never`` restarts nothing.
- **Stop** (SIGTERM/SIGINT, or every child ended for good): SIGTERM to every
  pipeline service at once — other services, consumers, assembler, reader: the
  reverse of the start order — then, once they have exited, to the contract
  servers (a consumer's last flush may still need its target); whatever is left
  after the grace period gets SIGKILL.  A second Ctrl-C kills at once.  Why all at
  once rather than one stage after the other: no stage needs another to stop
  cleanly — the reader confirms a WAL position only after Kafka acknowledged it,
  the assembler and the consumers commit offsets only after their output is
  durable — and what one stage leaves unread waits in Kafka for the next start; a
  stage-by-stage stop would only let one slow service (a consumer retrying against
  a target that is down) use up the grace period of the others.

- **Memory**: every second, each running child's peak resident memory (``VmHWM``
  from ``/proc``; Linux only) is read and the highest value per service kept, across
  its restarts. The status lines show it, and the stop ends with
  ``event=peak_rss services={"reader":71.2,...}`` (MB).

Exit status: 0 after a clean stop (every child ended within the grace period, with
status 0 or by our signal), 1 otherwise.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import IO, Any, Literal

from pipeline.supervisor.config import RestartConfig, ServiceSpec, SupervisorConfig

__all__ = [
    "LogMux",
    "Supervisor",
    "backoff_delay",
    "child_command",
    "describe_status",
    "peak_rss_kb",
]

log = logging.getLogger(__name__)

State = Literal["starting", "up", "restarting", "exited", "failed", "stopping", "stopped"]

_COLOURS = ("36", "33", "32", "35", "34", "31", "96", "93", "92", "95", "94", "91")


def peak_rss_kb(pid: int) -> int | None:
    """The process's peak resident set size (``VmHWM``), KB; None when unknown (gone, a
    zombie, not Linux)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def child_command() -> list[str]:
    """How a child runs this same ``catalog-cdc``: the running interpreter, ``-m``."""
    return [sys.executable, "-m", "pipeline.cli"]


def backoff_delay(failures: int, policy: RestartConfig) -> float:
    """Seconds before restart number ``failures`` (1, 2, ...) of a quick-failing run."""
    exponent = min(max(failures - 1, 0), 30)
    return float(min(policy.backoff_max, policy.backoff_initial * 2**exponent))


def describe_status(returncode: int) -> str:
    """``0``, ``1``, ``SIGKILL`` ... for a :attr:`subprocess.Popen.returncode`."""
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return str(returncode)


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class LogMux:
    """Writes children's lines as ``name | line``: whole lines, one writer at a time."""

    def __init__(self, out: IO[str], names: Sequence[str], colour: bool) -> None:
        self.out = out
        self.width = max((len(n) for n in names), default=0)
        self.colour = colour
        self._colours = {n: _COLOURS[i % len(_COLOURS)] for i, n in enumerate(names)}
        self._lock = threading.Lock()

    def prefix(self, name: str) -> str:
        label = f"{name:<{self.width}} |"
        if self.colour:
            return f"\x1b[{self._colours.get(name, '0')}m{label}\x1b[0m"
        return label

    def write(self, name: str, line: str) -> None:
        text = f"{self.prefix(name)} {line}\n"
        with self._lock:
            try:
                self.out.write(text)
                self.out.flush()
            except (OSError, ValueError):  # our stdout closed (e.g. a pipe reader left)
                pass


@dataclass
class _Child:
    spec: ServiceSpec
    stderr_tail: deque[str]
    proc: subprocess.Popen[bytes] | None = None
    state: State = "starting"
    started_at: float = 0.0
    attempts: int = 0
    failures: int = 0  # consecutive quick failures
    next_start: float | None = None
    last_status: int | None = None
    peak_rss_kb: int = 0  # the highest VmHWM seen, over every run of the service
    pumps: list[threading.Thread] = field(default_factory=list)

    @property
    def restarts(self) -> int:
        return max(self.attempts - 1, 0)

    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class Supervisor:
    """Runs ``specs`` until stopped; see the module docstring for the rules."""

    def __init__(
        self,
        specs: Sequence[ServiceSpec],
        settings: SupervisorConfig,
        restart: RestartConfig,
        *,
        out: IO[str] | None = None,
        colour: bool | None = None,
        command: Callable[[], list[str]] = child_command,
        base_env: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.policy = restart
        stream = out if out is not None else sys.stdout
        if colour is None:
            colour = stream.isatty() and not os.environ.get("NO_COLOR")
        self.mux = LogMux(stream, [s.name for s in specs], colour)
        self.children = [_Child(s, deque(maxlen=settings.stderr_lines)) for s in specs]
        self._command = command
        self._base_env = dict(os.environ if base_env is None else base_env)
        self._stop = threading.Event()
        self._force = False
        self._signals = 0
        self._signal_name: str | None = None

    # -- control ------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop (as SIGTERM does); a second call kills what is left at once."""
        self._signals += 1
        if self._signals > 1:
            self._force = True
        self._stop.set()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signal_name = signal.Signals(signum).name  # logged by the main loop
        self.request_stop()

    def run(self, install_signals: bool = True) -> int:
        previous: dict[int, Any] = {}
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._on_signal)
        try:
            log.info(
                "event=supervisor_started services=%s grace_period=%gs",
                ",".join(c.spec.name for c in self.children),
                self.settings.grace_period,
            )
            for child in self.children:
                if self._stop.is_set():
                    break
                self._start(child)
            self._supervise()
            return self._shutdown()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    # -- running --------------------------------------------------------------------

    def _start(self, child: _Child) -> None:
        spec = child.spec
        env = {**self._base_env, **spec.env, "PYTHONUNBUFFERED": "1"}
        child.attempts += 1
        child.next_start = None
        child.stderr_tail.clear()
        child.started_at = time.monotonic()
        try:
            proc = subprocess.Popen(
                [*self._command(), *spec.argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                process_group=0,  # a terminal's Ctrl-C reaches only the supervisor
            )
        except OSError as exc:
            log.error("event=service_spawn_failed name=%s error=%r", spec.name, str(exc))
            child.proc = None
            self._schedule_restart(child, None)
            return
        child.proc = proc
        child.state = "up"
        assert proc.stdout is not None and proc.stderr is not None
        child.pumps = [
            self._pump(child, proc.stdout, keep=False),
            self._pump(child, proc.stderr, keep=True),
        ]
        log.info(
            "event=service_started name=%s pid=%d attempt=%d", spec.name, proc.pid, child.attempts
        )

    def _pump(self, child: _Child, pipe: IO[bytes], keep: bool) -> threading.Thread:
        name = child.spec.name

        def run() -> None:
            with pipe:
                for raw in iter(pipe.readline, b""):
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    if keep:
                        child.stderr_tail.append(line)
                    self.mux.write(name, line)

        kind = "err" if keep else "out"
        thread = threading.Thread(target=run, name=f"log-{name}-{kind}", daemon=True)
        thread.start()
        return thread

    def _sample_memory(self) -> None:
        for c in self.children:
            if c.proc is not None and c.proc.returncode is None:
                kb = peak_rss_kb(c.proc.pid)
                if kb is not None:
                    c.peak_rss_kb = max(c.peak_rss_kb, kb)

    def peak_rss_mb(self) -> dict[str, float]:
        """Peak resident memory per service (MB) as sampled so far; 0: not known."""
        return {c.spec.name: round(c.peak_rss_kb / 1024, 1) for c in self.children}

    def _supervise(self) -> None:
        next_status = time.monotonic() + (self.settings.status_interval or float("inf"))
        next_sample = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_sample:
                self._sample_memory()
                next_sample = now + 1.0
            for child in self.children:
                if child.proc is not None and child.state == "up":
                    code = child.proc.poll()
                    if code is not None:
                        self._on_exit(child, code)
                if child.next_start is not None and now >= child.next_start:
                    self._start(child)
            if all(c.state in ("exited", "failed") for c in self.children):
                log.info("event=all_services_ended")
                return
            if now >= next_status:
                self._status()
                next_status = now + self.settings.status_interval
            self._stop.wait(0.2)

    def _on_exit(self, child: _Child, code: int) -> None:
        child.last_status = code
        self._join_pumps(child, 1.0)  # the last lines, for the report below
        uptime = time.monotonic() - child.started_at
        name, status = child.spec.name, describe_status(code)
        policy = child.spec.restart
        if policy == "never" or (code == 0 and policy != "always"):
            child.state = "exited" if code == 0 else "failed"
            level = logging.INFO if code == 0 else logging.ERROR
            log.log(
                level,
                "event=service_exited name=%s status=%s uptime=%s restart=no%s",
                name,
                status,
                _duration(uptime),
                "" if code == 0 else f" last_stderr={json.dumps(list(child.stderr_tail))}",
            )
            return
        self._schedule_restart(child, code, uptime)

    def _schedule_restart(self, child: _Child, code: int | None, uptime: float = 0.0) -> None:
        if uptime >= self.policy.reset_after:
            child.failures = 0
        child.failures += 1
        delay = backoff_delay(child.failures, self.policy)
        child.state = "restarting"
        child.next_start = time.monotonic() + delay
        name = child.spec.name
        status = "spawn-error" if code is None else describe_status(code)
        log.warning(
            "event=service_failed name=%s status=%s uptime=%s restarts=%d restart_in=%.1fs",
            name,
            status,
            _duration(uptime),
            child.restarts,
            delay,
        )
        if code != 0 and child.failures >= self.policy.crash_loop_after:
            log.error(
                "event=crash_loop name=%s status=%s failures=%d restart_in=%.1fs last_stderr=%s",
                name,
                status,
                child.failures,
                delay,
                json.dumps(list(child.stderr_tail)),
            )

    def _status(self) -> None:
        now = time.monotonic()
        parts = []
        for c in self.children:
            if c.state == "up":
                parts.append(
                    f"{c.spec.name} up {_duration(now - c.started_at)} restarts={c.restarts}"
                    f" peak_rss={c.peak_rss_kb / 1024:.0f}MB"
                )
            else:
                parts.append(f"{c.spec.name} {c.state} restarts={c.restarts}")
        up = sum(c.state == "up" for c in self.children)
        log.info(
            "event=status up=%d/%d services=%s",
            up,
            len(self.children),
            json.dumps("; ".join(parts)),
        )

    # -- stopping -------------------------------------------------------------------

    def _shutdown(self) -> int:
        deadline = time.monotonic() + self.settings.grace_period
        self._sample_memory()
        failed = [c.spec.name for c in self.children if c.state == "failed"]
        clean = not failed
        if self._stop.is_set():
            log.info(
                "event=stopping signal=%s grace_period=%gs",
                self._signal_name or "none",
                self.settings.grace_period,
            )
        for c in self.children:
            c.next_start = None
        pipeline = [c for c in reversed(self.children) if c.spec.stage != "target"]
        targets = [c for c in reversed(self.children) if c.spec.stage == "target"]
        for group in (pipeline, targets):
            running = [c for c in group if c.running()]
            for c in running:
                self._signal(c, signal.SIGTERM)
                c.state = "stopping"
            clean &= self._wait(running, deadline)
        left = [c for c in self.children if c.running()]
        for c in left:
            log.error(
                "event=service_killed name=%s reason=%s",
                c.spec.name,
                "forced" if self._force else "grace_period_over",
            )
            self._signal(c, signal.SIGKILL)
        for c in left:
            assert c.proc is not None
            c.proc.wait()
            c.state = "stopped"
        for c in self.children:
            self._join_pumps(c, 2.0)
        clean = clean and not left
        log.info(
            "event=peak_rss services=%s", json.dumps(self.peak_rss_mb(), separators=(",", ":"))
        )
        log.info("event=supervisor_stopped clean=%s", str(clean).lower())
        return 0 if clean else 1

    def _wait(self, children: list[_Child], deadline: float) -> bool:
        """Wait for ``children`` to exit until ``deadline``; True if all ended cleanly."""
        clean = True
        pending = list(children)
        while pending and not self._force and time.monotonic() < deadline:
            for c in list(pending):
                assert c.proc is not None
                code = c.proc.poll()
                if code is None:
                    continue
                pending.remove(c)
                c.state, c.last_status = "stopped", code
                ok = code in (0, -signal.SIGTERM)
                clean &= ok
                log.log(
                    logging.INFO if ok else logging.WARNING,
                    "event=service_stopped name=%s status=%s",
                    c.spec.name,
                    describe_status(code),
                )
            if pending:
                time.sleep(0.05)
        return clean

    @staticmethod
    def _signal(child: _Child, sig: signal.Signals) -> None:
        assert child.proc is not None
        try:
            os.killpg(child.proc.pid, sig)  # its group: helpers it started, too
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(sig)

    @staticmethod
    def _join_pumps(child: _Child, timeout: float) -> None:
        end = time.monotonic() + timeout
        for t in child.pumps:
            t.join(max(0.0, end - time.monotonic()))
