"""KV backends of the edge KV sink, behind :class:`~consumers.edge_kv.backends.base.KvBackend`.

``sqlite`` (default, embedded, ``path``), ``redis`` (``redis_url``, ``key_prefix``) and
``rest`` (the Workers KV REST API: ``api_url``, ``account``, ``namespace``, ``token``).
:func:`make_backend` builds one from options (the sink's ``--option``s and the ``kv``
CLI's flags share it).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from consumers.edge_kv.backends.base import KvBackend
from pipeline.errors import ConfigurationError
from pipeline.settings import ConnectionSettings

__all__ = ["BACKENDS", "DEFAULT_PATH", "KvBackend", "KvRestSettings", "make_backend"]

BACKENDS = ("sqlite", "redis", "rest")
DEFAULT_PATH = Path("edge-kv.sqlite")
DEFAULT_API_URL = "https://api.cloudflare.com/client/v4"


class KvRestSettings(BaseSettings):
    """``CATALOG_CDC_KV_API_URL``, ``..._ACCOUNT``, ``..._NAMESPACE``, ``..._API_TOKEN``."""

    model_config = SettingsConfigDict(env_prefix="CATALOG_CDC_KV_", extra="ignore")

    api_url: str = DEFAULT_API_URL
    account: str | None = None
    namespace: str | None = None
    api_token: SecretStr | None = None


def make_backend(options: Mapping[str, str], connections: ConnectionSettings) -> KvBackend:
    """The backend ``options["backend"]`` (default ``sqlite``) with its options."""
    kind = options.get("backend") or "sqlite"
    if kind == "sqlite":
        from consumers.edge_kv.backends.sqlite import SqliteBackend

        return SqliteBackend(Path(options.get("path") or DEFAULT_PATH))
    if kind == "redis":
        from consumers.edge_kv.backends.redis import RedisBackend

        url = options.get("redis_url") or connections.redis_url
        if not url:
            raise ConfigurationError(
                "no Redis URL: --option redis_url=redis://host:port/0 (or CATALOG_CDC_REDIS_URL, "
                "or start the local stack with `catalog-cdc stack up`)"
            )
        return RedisBackend(url, namespace=options.get("key_prefix") or "")
    if kind == "rest":
        from consumers.edge_kv.backends.rest import RestBackend

        env = KvRestSettings()
        account = options.get("account") or env.account
        namespace = options.get("namespace") or env.namespace
        token = options.get("token") or (
            env.api_token.get_secret_value() if env.api_token else None
        )
        if not account or not namespace or not token:
            raise ConfigurationError(
                "the rest backend needs account, namespace and token: --option account=... "
                "--option namespace=... --option token=... (or CATALOG_CDC_KV_ACCOUNT, "
                "CATALOG_CDC_KV_NAMESPACE, CATALOG_CDC_KV_API_TOKEN)"
            )
        try:
            timeout = float(options.get("timeout") or 30)
        except ValueError as exc:
            raise ConfigurationError(f"--option timeout: {exc}") from exc
        return RestBackend(
            options.get("api_url") or env.api_url, account, namespace, token, timeout=timeout
        )
    raise ConfigurationError(f"unknown edge KV backend {kind!r}: one of {', '.join(BACKENDS)}")
