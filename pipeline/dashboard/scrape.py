"""Reading the services' ``/metrics``: the targets (from the flags or a run config) and
one concurrent scrape of them all."""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from pipeline.dashboard.model import Scrape, Target, parse_metrics
from pipeline.errors import ConfigurationError


def parse_target(text: str) -> Target:
    """``URL`` or ``NAME=URL``; a bare ``HOST:PORT`` or ``PORT`` means
    ``http://HOST:PORT/metrics`` (``127.0.0.1`` for a bare port)."""
    name: str | None = None
    head, sep, rest = text.partition("=")
    if sep and "://" not in head:
        name, text = head.strip() or None, rest
    url = text.strip()
    if url.isdigit():
        url = f"127.0.0.1:{url}"
    if "://" not in url:
        url = f"http://{url}"
    if not url.startswith(("http://", "https://")):
        raise ConfigurationError(f"--metrics {text!r}: expected [NAME=]URL (http:// or https://)")
    host = httpx.URL(url)
    if not host.host:
        raise ConfigurationError(f"--metrics {text!r}: no host in the URL")
    if host.path in ("", "/"):
        url = str(host.copy_with(path="/metrics"))
    return Target(url, name)


def targets_from_config(path: Path, host: str = "127.0.0.1") -> list[Target]:
    """Every enabled reader, assembler, consumer and service of a ``catalog-cdc run``
    config that has a ``metrics_port``, in the config's start order."""
    from pipeline.supervisor.config import build_services, load_config

    specs = build_services(load_config(path))
    found = [
        Target(f"http://{host}:{s.metrics_port}/metrics", s.name)
        for s in specs
        if s.metrics_port is not None and s.stage != "target"
    ]
    if not found:
        raise ConfigurationError(
            f"{path}: no enabled service has a metrics_port: nothing to show "
            "(set metrics_port in [reader], [assembler], [consumers.NAME])"
        )
    return found


class Scraper:
    """Scrapes every target at once (one thread each), each within ``timeout`` seconds."""

    def __init__(self, targets: Sequence[Target], timeout: float = 0.8) -> None:
        self.targets = list(targets)
        self._client = httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=False)
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.targets)))

    def scrape(self) -> list[Scrape]:
        return list(self._pool.map(self._one, self.targets))

    def _one(self, target: Target) -> Scrape:
        try:
            response = self._client.get(target.url)
            response.raise_for_status()
            samples, families = parse_metrics(response.text)
        except httpx.ConnectError:
            return Scrape(target, time.monotonic(), error="connection refused (not running?)")
        except httpx.TimeoutException:
            return Scrape(target, time.monotonic(), error="no answer in time")
        except httpx.HTTPStatusError as exc:
            return Scrape(target, time.monotonic(), error=f"HTTP {exc.response.status_code}")
        except httpx.HTTPError as exc:
            return Scrape(target, time.monotonic(), error=f"{type(exc).__name__}: {exc}")
        except ValueError as exc:  # not the Prometheus text format
            return Scrape(target, time.monotonic(), error=f"not Prometheus metrics: {exc}")
        return Scrape(target, time.monotonic(), samples, families)

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self._client.close()

    def __enter__(self) -> Scraper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
