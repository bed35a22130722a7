"""``catalog-cdc run``: the config file (validation, clear errors, command lines), the
deploy/ compose file against the real CLI, and the supervisor's rules on tiny child
scripts (prefixed lines, restart with backoff, crash loop, stop and SIGKILL)."""

from __future__ import annotations

import io
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli import build_parser
from pipeline.errors import ConfigurationError
from pipeline.supervisor.config import (
    RunConfig,
    ServiceSpec,
    build_services,
    check_command_lines,
    load_config,
    parse_config,
    resolve_path,
)
from pipeline.supervisor.supervisor import LogMux, Supervisor, backoff_delay, describe_status

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "docs" / "catalog-cdc.example.toml"
INSTALLED = {"jsonl": "x:y", "search": "x:y", "webhooks": "x:y", "storefront-api": "x:y"}


def _parse(data: dict[str, Any]) -> RunConfig:
    return parse_config(
        data, "test.toml", consumers=lambda: INSTALLED, contract_servers=["storefront-api"]
    )


def _error(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigurationError) as info:
        _parse(data)
    return str(info.value)


# -- the config file --------------------------------------------------------------------


def test_the_example_file_parses_and_builds_valid_command_lines() -> None:
    config = load_config(EXAMPLE)  # real registry and contract servers
    specs = build_services(config)
    assert [s.name for s in specs] == ["reader", "assembler", "search", "admin"]
    assert specs[3].argv[4:] == ("admin", "serve", "--port", "8780")
    assert specs[0].argv == ("--log-level", "info", "--log-format", "kv", "reader", "--metrics-port", "9187")  # fmt: skip
    assert specs[2].argv[4:] == ("consume", "search", "--metrics-port", "9189")
    check_command_lines(specs, build_parser(), str(EXAMPLE))
    assert config.supervisor.grace_period == 20 and config.restart.backoff_max == 30
    # Every table of the example, enabled, still gives valid command lines.
    raw = EXAMPLE.read_text().replace("enabled = false", "enabled = true")
    path = EXAMPLE.parent / "_never_written.toml"
    import tomllib

    every = parse_config(tomllib.loads(raw), str(path))
    specs = build_services(every, "debug", "json")
    assert [s.name for s in specs] == [
        "storefront-api-server",
        "search-service-server",
        "reader",
        "assembler",
        "search",
        "jsonl",
        "webhooks",
        "storefront-api",
        "search-service",
        "edge-kv",
        "admin",
    ]
    check_command_lines(specs, build_parser(), str(path))
    assert all(s.argv[:4] == ("--log-level", "debug", "--log-format", "json") for s in specs)


def test_command_lines_options_env_and_policies() -> None:
    config = _parse(
        {
            "env": {"CATALOG_CDC_TOPIC_PREFIX": "shop", "FLAG": True},
            "restart": {"policy": "always"},
            "reader": {"args": ["--slot", "s1"], "env": {"CATALOG_CDC_READER_PARTITIONS": 12}},
            "assembler": {"enabled": False},
            "consumers": {
                "jsonl": {
                    "options": {"path": "out.jsonl", "fsync": False, "ratio": 0.5},
                    "restart": "never",
                    "log_level": "debug",
                }
            },
            "contract_servers": {"storefront-api": {"port": 8701, "options": {"rate_limit": 5}}},
            "services": {"admin": {"command": ["admin", "serve", "--port", "8780"]}},
        }
    )
    specs = {s.name: s for s in build_services(config)}
    assert list(specs) == ["storefront-api-server", "reader", "jsonl", "admin"]
    assert specs["storefront-api-server"].argv[4:] == (
        "contract-server", "storefront-api", "--host", "127.0.0.1", "--port", "8701",
        "--option", "rate_limit=5",
    )  # fmt: skip
    assert specs["storefront-api-server"].stage == "target"
    assert specs["reader"].argv[4:] == ("reader", "--slot", "s1")
    assert specs["reader"].env == {
        "CATALOG_CDC_TOPIC_PREFIX": "shop",
        "FLAG": "true",
        "CATALOG_CDC_READER_PARTITIONS": "12",
    }
    assert specs["jsonl"].argv == (
        "--log-level", "debug", "--log-format", "kv", "consume", "jsonl",
        "--option", "path=out.jsonl", "--option", "fsync=false", "--option", "ratio=0.5",
    )  # fmt: skip
    assert specs["jsonl"].restart == "never" and specs["reader"].restart == "always"
    assert specs["admin"].argv[4:] == ("admin", "serve", "--port", "8780")
    assert specs["admin"].stage == "service"


def test_unknown_keys_name_the_file_the_key_and_the_allowed_ones() -> None:
    msg = _error({"consumers": {"jsonl": {"optons": {}}}})
    assert msg.startswith("test.toml: consumers.jsonl.optons: unknown key (allowed: ")
    assert "options" in msg and "metrics_port" in msg
    msg = _error({"supervisor": {"grace": 5}})
    assert "supervisor.grace: unknown key (allowed: grace_period, status_interval" in msg
    assert "test.toml: readers: unknown key (allowed: assembler, consumers" in _error({"readers": {}})  # fmt: skip


def test_unknown_consumer_names_the_installed_ones() -> None:
    msg = _error({"consumers": {"serach": {}}})
    assert "consumers.serach: no consumer named 'serach' is installed" in msg
    assert "installed: jsonl, search, storefront-api, webhooks" in msg
    assert "contract_servers.nope: no contract server named 'nope' (known: storefront-api)" in _error(
        {"contract_servers": {"nope": {"port": 1}}}
    )  # fmt: skip


def test_unknown_consumer_with_the_real_registry() -> None:
    with pytest.raises(ConfigurationError, match=r"installed: .*jsonl.*search"):
        parse_config({"consumers": {"no-such-sink": {}}}, "x.toml")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"supervisor": {"grace_period": "soon"}},
            "supervisor.grace_period: Input should be a valid number",
        ),
        (
            {"supervisor": {"grace_period": 0}},
            "supervisor.grace_period: Input should be greater than 0",
        ),
        (
            {"reader": {"args": ["--slot", 5]}},
            "reader.args.1: Input should be a valid string (got 5)",
        ),
        (
            {"reader": {"metrics_port": 70000}},
            "reader.metrics_port: Input should be less than or equal to 65535",
        ),
        (
            {"restart": {"policy": "sometimes"}},
            "restart.policy: Input should be 'on-failure', 'always' or 'never'",
        ),
        (
            {"consumers": {"jsonl": {"enabled": "maybe"}}},
            "consumers.jsonl.enabled: Input should be a valid boolean",
        ),
        ({"consumers": {"jsonl": {"options": {"path": ["a"]}}}}, "consumers.jsonl.options.path"),
        ({"consumers": "jsonl"}, "consumers: Input should be a valid dictionary"),
        (
            {"contract_servers": {"storefront-api": {}}},
            "contract_servers.storefront-api.port: required key missing",
        ),
        (
            {"services": {"admin": {"command": []}}},
            "services.admin.command: List should have at least 1 item",
        ),
        (
            {"services": {"again": {"command": ["run"]}}},
            "services.again.command: a supervisor cannot run",
        ),
        ({"env": {"A=B": "x"}}, "env: 'A=B' is not a variable name"),
        (
            {"reader": {"metrics_port": 9187}, "consumers": {"jsonl": {"metrics_port": 9187}}},
            "consumers.jsonl.metrics_port: port 9187 is already used by reader.metrics_port",
        ),
    ],
)
def test_bad_values_are_clear_errors(data: dict[str, Any], expected: str) -> None:
    msg = _error(data)
    assert msg.startswith("test.toml: ")
    assert expected in msg


def test_a_disabled_service_keeps_its_port_free() -> None:
    config = _parse(
        {
            "reader": {"metrics_port": 9187},
            "consumers": {"jsonl": {"metrics_port": 9187, "enabled": False}},
        }
    )
    assert [s.name for s in build_services(config)] == ["reader", "assembler"]


def test_a_service_named_like_a_consumer_is_an_error() -> None:
    config = _parse({"consumers": {"jsonl": {}}, "services": {"jsonl": {"command": ["topics"]}}})
    with pytest.raises(ConfigurationError, match=r"two services are named 'jsonl'"):
        build_services(config)


def test_a_wrong_flag_is_caught_before_anything_runs() -> None:
    config = _parse({"reader": {"args": ["--slott", "x"]}})
    with pytest.raises(ConfigurationError) as info:
        check_command_lines(build_services(config), build_parser(), "test.toml")
    msg = str(info.value)
    assert "test.toml: reader: the command line `catalog-cdc" in msg
    assert "unrecognized arguments: --slott x" in msg
    config = _parse({"services": {"admin": {"command": ["no-such-command"]}}})
    with pytest.raises(ConfigurationError, match=r"admin: .*invalid choice: 'no-such-command'"):
        check_command_lines(build_services(config), build_parser(), "test.toml")


def test_files_and_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CATALOG_CDC_CONFIG", raising=False)
    assert resolve_path(None) == Path("catalog-cdc.toml")
    monkeypatch.setenv("CATALOG_CDC_CONFIG", "/etc/cdc.toml")
    assert resolve_path(None) == Path("/etc/cdc.toml")
    assert resolve_path("mine.toml") == Path("mine.toml")
    with pytest.raises(ConfigurationError, match=r"no such config file; .*catalog-cdc.example"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[reader\nargs = 1\n")
    with pytest.raises(ConfigurationError, match=r"bad.toml: not valid TOML: .*line 1"):
        load_config(bad)
    typo = tmp_path / "typo.toml"
    typo.write_text("[consumers.jsonl]\nenabled = true\nopts = {}\n")
    with pytest.raises(ConfigurationError, match=r"typo.toml: consumers.jsonl.opts: unknown key"):
        load_config(typo)


def test_run_check_prints_what_would_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.cli import main

    config = tmp_path / "c.toml"
    config.write_text(
        '[consumers.jsonl]\noptions = { path = "x.jsonl" }\n'
        "[consumers.search]\nenabled = false\n"
        '[reader]\nenv = { CATALOG_CDC_READER_SLOT = "s", SOME_PASSWORD = "hunter2" }\n'
    )
    assert main(["run", "--config", str(config), "--check"]) == 0
    out = capsys.readouterr().out
    assert f"config {config}: valid" in out
    assert "reader     catalog-cdc --log-level info --log-format kv reader  [restart on-failure]" in out  # fmt: skip
    assert "consume jsonl --option path=x.jsonl" in out
    assert "env CATALOG_CDC_READER_SLOT=s" in out and "SOME_PASSWORD=***" in out
    assert "hunter2" not in out
    assert "disabled: consumers.search" in out
    assert "stop: SIGTERM to jsonl, assembler, reader; SIGKILL after 20s" in out
    config.write_text("[consumers.nope]\n")
    assert main(["run", "--config", str(config), "--check"]) == 1
    assert "no consumer named 'nope'" in capsys.readouterr().err


# -- deploy/: compose and Prometheus, against the CLI that exists ------------------------


def _yaml(path: Path) -> Any:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed: compose file not checked")
    return yaml.safe_load(path.read_text())


def test_compose_file_matches_the_cli_and_prometheus() -> None:
    from consumers.registry import available

    compose = _yaml(REPO / "deploy" / "docker-compose.yml")
    prometheus = _yaml(REPO / "deploy" / "prometheus.yml")
    services: dict[str, Any] = compose["services"]
    assert {"postgres", "kafka", "elasticsearch", "reader", "assembler", "consume-search", "prometheus"} <= set(services)  # fmt: skip
    parser = build_parser()
    ports: dict[int, str] = {}
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith("."):
                assert source in compose["volumes"], f"{name}: volume {source} not declared"
        if svc.get("image") != "catalog-cdc:dev":
            continue
        command = svc["command"]
        assert all(isinstance(c, str) for c in command), name
        check_command_lines([ServiceSpec(name, "service", tuple(command))], parser, name)
        env = svc["environment"]
        assert env["CATALOG_CDC_KAFKA_BOOTSTRAP"] == "kafka:19092", name
        if command[0] == "consume":
            assert command[1] in available(), f"{name}: no consumer {command[1]}"
            assert name == f"consume-{command[1]}"
        if "--metrics-port" in command:
            port = int(command[command.index("--metrics-port") + 1])
            assert port not in ports, f"{name} and {ports.get(port)} share {port}"
            ports[port] = name
            assert "pipeline" in svc["profiles"] or len(svc["profiles"]) == 1
    assert {"reader", "assembler", "consume-search"} <= set(ports.values())
    for name in ("reader", "assembler", "consume-search", "prometheus"):
        assert services[name]["profiles"] == ["pipeline"]
    targets = {
        t
        for job in prometheus["scrape_configs"]
        for group in job["static_configs"]
        for t in group["targets"]
    }
    assert targets == {f"{name}:{port}" for port, name in ports.items()}
    mounted = [v for v in services["prometheus"]["volumes"] if "prometheus.yml" in v]
    assert mounted == ["./prometheus.yml:/etc/prometheus/prometheus.yml:ro"]


# -- the supervisor, on tiny child scripts -----------------------------------------------

CHILD = r"""
import os, signal, sys, time
mode = sys.argv[1]
if mode == "talk":
    for i in range(200):
        print("out line %d " % i + "x" * 200, flush=True)
        print("err line %d" % i, file=sys.stderr, flush=True)
    sys.exit(0)
if mode == "fail":
    print("boom: cannot connect", file=sys.stderr, flush=True)
    sys.exit(3)
if mode == "serve":
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    print("serving", flush=True)
    while True:
        time.sleep(0.05)
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ignoring SIGTERM", flush=True)
    while True:
        time.sleep(0.05)
"""


def _supervisor(specs: list[ServiceSpec], out: io.StringIO, **restart: Any) -> Supervisor:
    from pipeline.supervisor.config import RestartConfig, SupervisorConfig

    return Supervisor(
        specs,
        SupervisorConfig(grace_period=1.5, status_interval=0.3),
        RestartConfig(**{"backoff_initial": 0.1, "backoff_max": 0.4, **restart}),
        out=out,
        colour=False,
        command=lambda: [sys.executable, "-c", CHILD],
    )


def _spec(
    name: str, mode: str, stage: Any = "consumer", restart: Any = "on-failure"
) -> ServiceSpec:
    return ServiceSpec(name, stage, (mode,), restart=restart)


def test_backoff_and_status_names() -> None:
    from pipeline.supervisor.config import RestartConfig

    policy = RestartConfig()
    assert [backoff_delay(n, policy) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert describe_status(0) == "0" and describe_status(3) == "3"
    assert describe_status(-9) == "SIGKILL" and describe_status(-15) == "SIGTERM"


def test_log_mux_prefixes_fixed_width_and_colour() -> None:
    out = io.StringIO()
    mux = LogMux(out, ["reader", "search-service"], colour=False)
    mux.write("reader", "hello")
    assert out.getvalue() == "reader         | hello\n"
    coloured = LogMux(io.StringIO(), ["reader"], colour=True)
    assert coloured.prefix("reader") == "\x1b[36mreader |\x1b[0m"


def test_lines_are_prefixed_whole_and_a_clean_exit_is_not_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = io.StringIO()
    sup = _supervisor([_spec("talker", "talk"), _spec("t2", "talk")], out)
    caplog.set_level("INFO", logger="pipeline.supervisor")
    assert sup.run(install_signals=False) == 0  # both exit 0 on their own: all ended
    lines = out.getvalue().splitlines()
    assert len(lines) == 800
    pattern = re.compile(r"^(talker|t2    ) \| (out line \d+ x{200}|err line \d+)$")
    assert all(pattern.match(line) for line in lines), [
        ln for ln in lines if not pattern.match(ln)
    ][:3]
    for name in ("talker", "t2    "):
        outs = [ln for ln in lines if ln.startswith(f"{name} | out")]
        assert outs == [f"{name} | out line {i} " + "x" * 200 for i in range(200)]
    assert "event=all_services_ended" in caplog.text
    assert "restart=no" in caplog.text and "service_failed" not in caplog.text


def test_a_failing_service_is_restarted_with_backoff_and_a_crash_loop_is_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = io.StringIO()
    caplog.set_level("INFO", logger="pipeline.supervisor")
    sup = _supervisor([_spec("server", "serve", "target"), _spec("broken", "fail")], out)
    started = time.monotonic()
    import threading

    def stop_while_waiting_to_restart() -> None:
        broken = sup.children[1]
        while not (broken.failures >= 4 and broken.state == "restarting"):
            time.sleep(0.01)
        sup.request_stop()

    threading.Thread(target=stop_while_waiting_to_restart, daemon=True).start()
    assert sup.run(install_signals=False) == 0  # a clean stop, whatever failed before
    assert time.monotonic() - started < 6
    failed = [r.getMessage() for r in caplog.records if "event=service_failed" in r.getMessage()]
    assert len(failed) == 4
    delays = [float(m.split("restart_in=")[1].rstrip("s")) for m in failed]
    assert delays == [0.1, 0.2, 0.4, 0.4]
    assert all("name=broken status=3" in m for m in failed)
    loops = [r.getMessage() for r in caplog.records if "event=crash_loop" in r.getMessage()]
    assert loops and "name=broken status=3 failures=3" in loops[0]
    assert 'last_stderr=["boom: cannot connect"]' in loops[0]
    assert "broken | boom: cannot connect" in out.getvalue()
    assert "server | serving" in out.getvalue()
    assert "event=status up=" in caplog.text
    assert "event=service_stopped name=server status=0" in caplog.text


def test_never_means_never_and_the_exit_status_says_so(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="pipeline.supervisor")
    sup = _supervisor([_spec("once", "fail", restart="never")], io.StringIO())
    assert sup.run(install_signals=False) == 1
    assert "event=service_exited name=once status=3" in caplog.text
    assert 'last_stderr=["boom: cannot connect"]' in caplog.text


def test_what_ignores_sigterm_is_killed_after_the_grace_period(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import threading

    caplog.set_level("INFO", logger="pipeline.supervisor")
    out = io.StringIO()
    sup = _supervisor([_spec("good", "serve"), _spec("stubborn", "stubborn")], out)
    pids: list[int] = []

    def stop() -> None:
        pids.extend(c.proc.pid for c in sup.children if c.proc)
        sup.request_stop()

    threading.Timer(0.8, stop).start()
    started = time.monotonic()
    assert sup.run(install_signals=False) == 1  # not clean: one had to be killed
    assert 1.5 <= time.monotonic() - started < 4
    assert "event=service_stopped name=good status=0" in caplog.text
    assert "event=service_killed name=stubborn reason=grace_period_over" in caplog.text
    assert len(pids) == 2
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]  # fmt: skip
