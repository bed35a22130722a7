"""The CLI: every subcommand answers --help, errors are one clear line."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import build_parser, main

CLI = str(Path(sys.executable).parent / "catalog-cdc")


def _command_paths(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> list[tuple[str, ...]]:
    paths = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.extend(_command_paths(sub, (*prefix, name)))
    return paths


PATHS = _command_paths(build_parser())


def test_known_commands_present() -> None:
    assert ("stack", "up") in PATHS
    assert ("stack", "down") in PATHS
    assert ("stack", "status") in PATHS
    assert ("demo", "seed") in PATHS
    assert ("demo", "edits") in PATHS


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "catalog-cdc")
def test_help_on_every_command(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*path, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: catalog-cdc")
    assert len(out.splitlines()) > 3


def test_console_script_installed() -> None:
    res = subprocess.run([CLI, "--help"], capture_output=True, text=True, check=False)
    assert res.returncode == 0
    assert "stack" in res.stdout and "demo" in res.stdout


def test_missing_setting_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CATALOG_CDC_STACK_DIR", str(tmp_path / "no-stack"))
    monkeypatch.delenv("CATALOG_CDC_POSTGRES_DSN", raising=False)
    res = subprocess.run(
        [CLI, "demo", "counts"], capture_output=True, text=True, check=False,
        env={"CATALOG_CDC_STACK_DIR": str(tmp_path / "no-stack"), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert res.returncode == 1
    assert res.stderr.strip() == (
        "catalog-cdc: error: postgres_dsn is not set: export CATALOG_CDC_POSTGRES_DSN, "
        "or start the local stack with `catalog-cdc stack up`"
    )
