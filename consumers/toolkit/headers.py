"""HTTP headers the sinks read the same way.

:func:`retry_after` reads ``Retry-After`` (RFC 9110 §10.2.3) in both of its forms,
delay-seconds and HTTP-date, and answers the number of seconds to wait — or ``None``
when the header is absent or says nothing usable, so the caller falls back to its own
backoff.  It never raises on what a server sends.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from datetime import UTC

__all__ = ["retry_after"]

_SECONDS = re.compile(r"\d+(\.\d+)?")
"""delay-seconds is ``1*DIGIT``; a fraction (``0.5``, sent by some servers) is taken."""


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value.

    * delay-seconds (``"120"``; a fraction such as ``"0.5"`` too): that many seconds.
    * an HTTP-date (``"Wed, 21 Oct 2015 07:28:00 GMT"``): the seconds from ``now``
      (Unix time; default: :func:`time.time`) to it — ``0.0`` when it has passed.
    * absent, empty, negative (``"-5"``), not finite, or anything else: ``None``.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if _SECONDS.fullmatch(value):
        seconds = float(value)
        return seconds if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" or an obsolete zone: the RFC's dates are UTC
        when = when.replace(tzinfo=UTC)
    try:
        at = when.timestamp()
    except (OverflowError, OSError, ValueError):
        return None
    return max(0.0, at - (time.time() if now is None else now))
