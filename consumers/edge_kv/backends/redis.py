"""The Redis backend (redis-py): plain string keys, optionally under a ``namespace``.

``apply`` is one ``MULTI``/``EXEC`` transaction (``MSET`` + ``DEL``): confirmed = Redis
acknowledged it (durability is the server's: its ``appendonly``/``save`` settings).
Connection errors and timeouts are transient; ``namespace`` (default none) is put in
front of every key, so several layouts can share one server (tests do).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping

import redis

from consumers.contract import SinkError, TransientSinkError

__all__ = ["RedisBackend"]

_GLOB = re.compile(r"([*?\[\]\\])")


class RedisBackend:
    name = "redis"

    def __init__(self, url: str, namespace: str = "", timeout: float = 10.0) -> None:
        self.url = url
        self.namespace = namespace
        self.timeout = timeout
        self._client: redis.Redis | None = None

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = redis.Redis.from_url(
                self.url,
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                decode_responses=True,
            )
        return self._client

    def open(self) -> None:
        self._call("connect", self.client.ping)

    def _call(self, what: str, fn: object, *args: object) -> object:
        try:
            return fn(*args)  # type: ignore[operator]
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
            raise TransientSinkError(f"Redis at {self.url} unavailable ({what}): {exc}") from exc
        except redis.RedisError as exc:
            raise SinkError(f"Redis at {self.url} refused {what}: {exc}") from exc

    def apply(self, writes: Mapping[str, str], deletes: Collection[str]) -> None:
        ns = self.namespace
        pipe = self.client.pipeline(transaction=True)
        if deletes:
            pipe.delete(*(ns + k for k in deletes))
        if writes:
            pipe.mset({ns + k: v for k, v in writes.items()})
        if deletes or writes:
            self._call("a batch", pipe.execute)

    def get(self, key: str) -> str | None:
        value = self._call("get", self.client.get, self.namespace + key)
        return None if value is None else str(value)

    def list(self, prefix: str) -> list[str]:
        pattern = _GLOB.sub(r"\\\1", self.namespace + prefix) + "*"

        def scan() -> list[str]:
            return [str(k) for k in self.client.scan_iter(match=pattern, count=1000)]

        keys = self._call("scan", scan)
        assert isinstance(keys, list)
        return sorted(k[len(self.namespace) :] for k in keys)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
