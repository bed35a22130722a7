"""Process lifecycle shared by the long-running services' commands.

:func:`stop_event` turns SIGTERM and SIGINT into a :class:`threading.Event` the
service polls (so a stop drains and exits 0 rather than dying mid-batch), and
:func:`exit_when_idle` sets it once a service has been caught up for a while.
"""

from __future__ import annotations

import signal
import threading


def stop_event() -> threading.Event:
    """An event set by SIGTERM or SIGINT (install it before the service starts)."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def exit_when_idle(stop: threading.Event, caught_up: threading.Event, idle: float) -> None:
    """Set ``stop`` once ``caught_up`` has stayed set for ``idle`` seconds (a thread)."""

    def watch() -> None:
        while not stop.is_set():
            if caught_up.wait(0.5) and not stop.wait(idle) and caught_up.is_set():
                stop.set()

    threading.Thread(target=watch, name="idle-watch", daemon=True).start()
