"""The admin API's token file: hashed, salted, with roles; revocation is seen at once."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from pipeline.admin.cli import register
from pipeline.admin.tokens import TokenStore
from pipeline.errors import ConfigurationError


def test_add_verify_revoke(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "tokens.json"
    store = TokenStore(path)
    admin = store.add("ops", "admin")
    reader = store.add("grafana", "reader")
    assert admin != reader and admin.startswith("ccdc_") and len(admin) > 40

    found = store.verify(admin)
    assert found is not None and (found.name, found.role) == ("ops", "admin")
    found = store.verify(reader)
    assert found is not None and found.role == "reader"
    for wrong in (
        "",
        "ccdc_",
        admin[:-1],
        admin + "x",
        admin.replace("ccdc_", "xxxx_"),
        "ccdc_" + "a" * 300,
    ):
        assert store.verify(wrong) is None

    # Only salted hashes on disk, readable by the owner only.
    text = path.read_text()
    assert admin not in text and reader not in text
    rows = json.loads(text)["tokens"]
    assert {r["name"] for r in rows} == {"ops", "grafana"}
    assert len({r["salt"] for r in rows}) == 2 and all(len(r["sha256"]) == 64 for r in rows)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    store.revoke("grafana")
    assert store.verify(reader) is None and store.verify(admin) is not None
    assert [t.name for t in store.list()] == ["ops"]


def test_another_process_revoking_is_seen_at_once(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    server_side = TokenStore(path)
    token = TokenStore(path).add("ci", "admin")
    assert server_side.verify(token) is not None
    TokenStore(path).revoke("ci")  # as `catalog-cdc admin token revoke` would
    assert server_side.verify(token) is None


@pytest.mark.parametrize(
    ("name", "role", "message"),
    [
        ("", "admin", "token name"),
        ("has space", "admin", "token name"),
        ("x" * 65, "admin", "token name"),
        ("ok", "root", "role 'root'"),
    ],
)
def test_bad_names_and_roles_are_refused(
    tmp_path: Path, name: str, role: str, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        TokenStore(tmp_path / "t.json").add(name, role)


def test_duplicates_unknown_and_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    store = TokenStore(path)
    store.add("ops", "admin")
    with pytest.raises(ConfigurationError, match="exists: revoke it first"):
        store.add("ops", "reader")
    with pytest.raises(ConfigurationError, match=r"no token named 'nope'.*tokens: ops"):
        store.revoke("nope")
    path.write_text("{not json")
    with pytest.raises(ConfigurationError, match="unreadable"):
        store.list()
    assert TokenStore(tmp_path / "missing.json").list() == []


def test_cli_add_prints_the_token_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    file = str(tmp_path / "t.json")
    args = parser.parse_args(["admin", "token", "add", "ops", "--role", "admin", "--tokens", file])
    assert args.handler(args) == 0
    printed = capsys.readouterr()
    token = printed.out.strip()  # stdout is the token alone: TOKEN=$(... token add ...)
    assert TokenStore(Path(file)).verify(token) is not None
    assert "only time it is shown" in printed.err
    args = parser.parse_args(["admin", "token", "list", "--tokens", file])
    assert args.handler(args) == 0
    listed = capsys.readouterr().out
    assert "ops" in listed and "admin" in listed and token not in listed
