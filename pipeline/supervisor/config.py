"""The configuration of ``catalog-cdc run``: one TOML file, validated with pydantic.

The file (``catalog-cdc.toml`` in the current directory by default, or the path in
``CATALOG_CDC_CONFIG``, or ``--config FILE``) says which services run and how; the
complete, commented example is ``docs/catalog-cdc.example.toml``.  Connections are
*not* in it: every child reads them from ``CATALOG_CDC_*`` variables or the local
stack, like any other command.

:func:`load_config` reads and validates the file (every error names the file and
the dotted key), :func:`build_services` turns it into the list of
:class:`ServiceSpec` to start, in start order.  Each service is a subcommand of the
same ``catalog-cdc`` executable, so adding one (e.g. the admin API) is one
``[services.NAME] command = [...]`` table.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.errors import ConfigurationError

__all__ = [
    "DEFAULT_PATH",
    "ENV_VAR",
    "RunConfig",
    "ServiceSpec",
    "build_services",
    "check_command_lines",
    "load_config",
    "parse_config",
    "resolve_path",
]

DEFAULT_PATH = Path("catalog-cdc.toml")
ENV_VAR = "CATALOG_CDC_CONFIG"

RestartPolicy = Literal["on-failure", "always", "never"]
LogLevel = Literal["debug", "info", "warning", "error"]
Stage = Literal["target", "reader", "assembler", "consumer", "service"]
# TOML values an option or an environment variable may have (passed on as strings).
Scalar = str | int | float | bool


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SupervisorConfig(_Model):
    """``[supervisor]``: how the supervisor itself behaves."""

    grace_period: float = Field(
        default=20.0, gt=0, description="seconds a stop waits before SIGKILL"
    )
    status_interval: float = Field(
        default=60.0, ge=0, description="seconds between status lines (0 = none)"
    )
    stderr_lines: int = Field(
        default=20, ge=1, le=1000, description="stderr lines kept per service for crash reports"
    )


class RestartConfig(_Model):
    """``[restart]``: the restart policy every service has unless it sets ``restart``."""

    policy: RestartPolicy = "on-failure"
    backoff_initial: float = Field(default=1.0, gt=0)
    backoff_max: float = Field(default=30.0, gt=0)
    reset_after: float = Field(
        default=60.0, ge=0, description="a service up this long starts its backoff afresh"
    )
    crash_loop_after: int = Field(
        default=3, ge=1, description="consecutive quick failures reported as a crash loop"
    )


class _ServiceBase(_Model):
    enabled: bool = True
    env: dict[str, Scalar] = Field(default_factory=dict)
    restart: RestartPolicy | None = None
    log_level: LogLevel | None = None


class PipelineServiceConfig(_ServiceBase):
    """``[reader]``, ``[assembler]``: extra flags, environment, metrics port."""

    args: list[str] = Field(default_factory=list)
    metrics_port: int | None = Field(default=None, ge=1, le=65535)


class ConsumerConfig(PipelineServiceConfig):
    """``[consumers.NAME]``: one ``catalog-cdc consume NAME``."""

    options: dict[str, Scalar] = Field(default_factory=dict)


class ContractServerConfig(_ServiceBase):
    """``[contract_servers.NAME]``: a seed's contract server, for local demos."""

    port: int = Field(ge=1, le=65535)
    host: str = "127.0.0.1"
    options: dict[str, Scalar] = Field(default_factory=dict)


class ExtraServiceConfig(_ServiceBase):
    """``[services.NAME]``: any other ``catalog-cdc`` subcommand (e.g. the admin API)."""

    command: list[str] = Field(min_length=1)


class RunConfig(_Model):
    """The whole file."""

    supervisor: SupervisorConfig = Field(default_factory=SupervisorConfig)
    restart: RestartConfig = Field(default_factory=RestartConfig)
    env: dict[str, Scalar] = Field(default_factory=dict)
    reader: PipelineServiceConfig = Field(default_factory=PipelineServiceConfig)
    assembler: PipelineServiceConfig = Field(default_factory=PipelineServiceConfig)
    consumers: dict[str, ConsumerConfig] = Field(default_factory=dict)
    contract_servers: dict[str, ContractServerConfig] = Field(default_factory=dict)
    services: dict[str, ExtraServiceConfig] = Field(default_factory=dict)


@dataclass(frozen=True)
class ServiceSpec:
    """One supervised child: ``catalog-cdc <argv...>`` with ``env`` on top of ours."""

    name: str
    stage: Stage
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    restart: RestartPolicy = "on-failure"
    metrics_port: int | None = None
    port: int | None = None  # a contract server's listening port


# -- reading ------------------------------------------------------------------------


def resolve_path(option: str | None) -> Path:
    """``--config``, else ``$CATALOG_CDC_CONFIG``, else ``./catalog-cdc.toml``."""
    if option:
        return Path(option)
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else DEFAULT_PATH


def load_config(path: Path) -> RunConfig:
    """Read and validate ``path`` (TOML); errors name the file and the key."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigurationError(
            f"{path}: no such config file; write one (a complete example is "
            f"docs/catalog-cdc.example.toml), or pass --config FILE / set {ENV_VAR}"
        ) from None
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read the config file: {exc}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"{path}: not valid TOML: {exc}") from exc
    return parse_config(data, str(path))


def parse_config(
    data: Mapping[str, Any],
    source: str = "<config>",
    *,
    consumers: Callable[[], Mapping[str, str]] | None = None,
    contract_servers: Sequence[str] | None = None,
) -> RunConfig:
    """Validate parsed TOML: types, unknown keys, consumer and server names, ports."""
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigurationError(_describe(exc, source)) from None
    _check_names(config, source, consumers, contract_servers)
    _check_ports(config, source)
    return config


def _describe(exc: ValidationError, source: str) -> str:
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(err["loc"])
            msg = "unknown key" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
        elif err["type"] == "missing":
            msg = "required key missing"
        else:
            msg = f"{err['msg']} (got {err['input']!r})"
        problems.append(f"{key}: {msg}")
    return f"{source}: " + "; ".join(problems)


def _allowed_keys(loc: tuple[int | str, ...]) -> list[str]:
    """The keys allowed beside the unknown one at ``loc`` (walking the models)."""
    model: Any = RunConfig
    parts = list(loc[:-1])
    while parts:
        part = parts.pop(0)
        info = model.model_fields.get(part) if isinstance(part, str) else None
        if info is None:
            return []
        annotation = info.annotation
        origin = getattr(annotation, "__origin__", None)
        if origin is dict:
            model = annotation.__args__[1]
            if parts:
                parts.pop(0)  # the table's own name, e.g. consumers.<search>
            else:
                return []
        else:
            model = annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
    return sorted(model.model_fields)


def _check_names(
    config: RunConfig,
    source: str,
    consumers: Callable[[], Mapping[str, str]] | None,
    contract_servers: Sequence[str] | None,
) -> None:
    if consumers is None:
        from consumers.registry import available

        consumers = available
    installed = consumers()
    for name in config.consumers:
        if name not in installed:
            known = ", ".join(sorted(installed)) or "none"
            raise ConfigurationError(
                f"{source}: consumers.{name}: no consumer named {name!r} is installed "
                f"(installed: {known}; see catalog-cdc consume --list)"
            )
    if contract_servers is None:
        from pipeline.contract_servers import SERVERS

        contract_servers = sorted(SERVERS)
    for name in config.contract_servers:
        if name not in contract_servers:
            raise ConfigurationError(
                f"{source}: contract_servers.{name}: no contract server named {name!r} "
                f"(known: {', '.join(contract_servers)})"
            )
    for name, svc in config.services.items():
        if svc.command[0] == "run":
            raise ConfigurationError(
                f"{source}: services.{name}.command: a supervisor cannot run `catalog-cdc run`"
            )
    for key in _all_env_keys(config):
        if not key or "=" in key or "\0" in key:
            raise ConfigurationError(f"{source}: env: {key!r} is not a variable name")


def _all_env_keys(config: RunConfig) -> list[str]:
    keys = list(config.env)
    for svc in _tables(config).values():
        keys.extend(svc.env)
    return keys


def _tables(config: RunConfig) -> dict[str, _ServiceBase]:
    """Every service table by its dotted key (``reader``, ``consumers.search`` ...)."""
    out: dict[str, _ServiceBase] = {"reader": config.reader, "assembler": config.assembler}
    out.update({f"consumers.{k}": v for k, v in config.consumers.items()})
    out.update({f"contract_servers.{k}": v for k, v in config.contract_servers.items()})
    out.update({f"services.{k}": v for k, v in config.services.items()})
    return out


def _check_ports(config: RunConfig, source: str) -> None:
    seen: dict[int, str] = {}
    for key, svc in _tables(config).items():
        if not svc.enabled:
            continue
        for attr in ("metrics_port", "port"):
            port = getattr(svc, attr, None)
            if port is None:
                continue
            if port in seen:
                raise ConfigurationError(
                    f"{source}: {key}.{attr}: port {port} is already used by {seen[port]}"
                )
            seen[port] = f"{key}.{attr}"


# -- building the command lines ------------------------------------------------------


def _text(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _env(values: Mapping[str, Scalar]) -> dict[str, str]:
    return {k: _text(v) for k, v in values.items()}


def _options(options: Mapping[str, Scalar]) -> list[str]:
    out: list[str] = []
    for key, value in options.items():
        out += ["--option", f"{key}={_text(value)}"]
    return out


def _metrics(port: int | None) -> list[str]:
    return [] if port is None else ["--metrics-port", str(port)]


def build_services(
    config: RunConfig, log_level: str = "info", log_format: str = "kv"
) -> list[ServiceSpec]:
    """The enabled services, in start order: contract servers (the consumers' targets),
    reader, assembler, consumers, other services.

    ``argv`` is what follows ``catalog-cdc``: the global ``--log-level`` and
    ``--log-format`` (the service's own ``log_level`` if set, else the supervisor's),
    then the subcommand and its flags.
    """
    default = config.restart.policy
    specs: list[ServiceSpec] = []

    def add(
        name: str,
        stage: Stage,
        svc: _ServiceBase,
        command: list[str],
        *,
        metrics_port: int | None = None,
        port: int | None = None,
    ) -> None:
        if not svc.enabled:
            return
        prefix = ["--log-level", svc.log_level or log_level, "--log-format", log_format]
        specs.append(
            ServiceSpec(
                name=name,
                stage=stage,
                argv=(*prefix, *command),
                env={**_env(config.env), **_env(svc.env)},
                restart=svc.restart or default,
                metrics_port=metrics_port,
                port=port,
            )
        )

    for name, cs in config.contract_servers.items():
        command = ["contract-server", name, "--host", cs.host, "--port", str(cs.port)]
        add(f"{name}-server", "target", cs, command + _options(cs.options), port=cs.port)
    upstream: tuple[tuple[Stage, PipelineServiceConfig], ...] = (
        ("reader", config.reader),
        ("assembler", config.assembler),
    )
    for stage, svc in upstream:
        port = svc.metrics_port
        add(stage, stage, svc, [stage, *_metrics(port), *svc.args], metrics_port=port)
    for name, c in config.consumers.items():
        command = ["consume", name, *_options(c.options), *_metrics(c.metrics_port), *c.args]
        add(name, "consumer", c, command, metrics_port=c.metrics_port)
    for name, s in config.services.items():
        add(name, "service", s, list(s.command))

    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ConfigurationError(
                f"two services are named {spec.name!r}: rename the [services.{spec.name}] table"
            )
        seen.add(spec.name)
    return specs


def check_command_lines(
    specs: Sequence[ServiceSpec], parser: argparse.ArgumentParser, source: str = "<config>"
) -> None:
    """Parse every service's command line with the real CLI parser: a wrong flag is a
    config error now, not a crash loop later."""
    for spec in specs:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                parser.parse_args(list(spec.argv))
        except SystemExit as exc:
            if exc.code in (0, None):
                continue  # e.g. --help
            lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
            detail = lines[-1] if lines else f"exit status {exc.code}"
            raise ConfigurationError(
                f"{source}: {spec.name}: the command line `catalog-cdc {' '.join(spec.argv)}` "
                f"is not valid: {detail}"
            ) from None
