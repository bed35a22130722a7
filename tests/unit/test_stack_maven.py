"""pipeline.stack.maven: the jar cache, with a stand-in ``mvn`` (a shell script on PATH).

The stand-in records each call and writes one jar where ``-DoutputDirectory`` says, or
fails the way Maven does; no network, no Java.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.errors import StackError
from pipeline.stack import maven

FAKE_MVN = """#!/bin/sh
echo call >> "{calls}"
for arg in "$@"; do
  case "$arg" in -DoutputDirectory=*) out="${{arg#-DoutputDirectory=}}";; esac
done
if [ -n "{fail}" ]; then
  echo "[INFO] Scanning for projects..."
  echo "[ERROR] Failed to execute goal on project kafka-classpath: Could not resolve dependencies for project x:y:pom:1: org.example:missing:jar:9.9 was not found"
  exit 1
fi
mkdir -p "$out" && echo jar > "$out/a-1.0.jar"
"""


def _fake_mvn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    calls = tmp_path / "calls"
    script = bindir / "mvn"
    script.write_text(FAKE_MVN.format(calls=calls, fail="yes" if fail else ""))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}/usr/bin:/bin")
    return calls


def _pom(tmp_path: Path, text: str = "<project/>") -> Path:
    pom = tmp_path / "checkout" / "pom.xml"
    pom.parent.mkdir(parents=True, exist_ok=True)
    pom.write_text(text)
    return pom


def _calls(calls: Path) -> int:
    return len(calls.read_text().splitlines()) if calls.exists() else 0


def test_fetches_once_then_serves_from_the_cache_without_maven(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _fake_mvn(tmp_path, monkeypatch)
    pom = _pom(tmp_path)
    cache = tmp_path / "cache"
    lines: list[str] = []
    lib = maven.fetch_classpath(pom, "kafka", lines.append, cache_dir=cache)
    assert [p.name for p in lib.glob("*.jar")] == ["a-1.0.jar"]
    assert lib.is_relative_to(cache) and _calls(calls) == 1
    assert any("fetching" in line for line in lines)
    assert sorted(p.name for p in pom.parent.iterdir()) == ["pom.xml"], "checkout untouched"

    monkeypatch.setenv("PATH", "/nonexistent")  # no mvn at all: the cache still serves
    assert maven.fetch_classpath(pom, "kafka", lines.append, cache_dir=cache) == lib
    assert _calls(calls) == 1


def test_the_cache_is_keyed_by_the_pom_contents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _fake_mvn(tmp_path, monkeypatch)
    cache = tmp_path / "cache"
    first = maven.fetch_classpath(_pom(tmp_path, "<project>1</project>"), "kafka", cache_dir=cache)
    other_checkout = tmp_path / "other" / "pom.xml"
    other_checkout.parent.mkdir()
    other_checkout.write_text("<project>1</project>")
    assert maven.fetch_classpath(other_checkout, "kafka", cache_dir=cache) == first
    changed = maven.fetch_classpath(
        _pom(tmp_path, "<project>2</project>"), "kafka", cache_dir=cache
    )
    assert changed != first and _calls(calls) == 2


def test_missing_maven_is_one_line_naming_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(StackError) as err:
        maven.fetch_classpath(_pom(tmp_path), "kafka", cache_dir=tmp_path / "cache")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("kafka: Maven (`mvn`) is not installed")


def test_resolution_failure_names_the_error_the_command_and_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_mvn(tmp_path, monkeypatch, fail=True)
    cache = tmp_path / "cache"
    with pytest.raises(StackError) as err:
        maven.fetch_classpath(_pom(tmp_path), "opensearch", cache_dir=cache)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(
        "opensearch: Maven could not resolve the jars (Failed to execute goal"
    )
    assert "org.example:missing:jar:9.9 was not found" in message
    assert "dependency:copy-dependencies" in message
    log = Path(message.rsplit("log ", 1)[1])
    assert log.is_file() and "[ERROR]" in log.read_text()
    entries = [p.name for p in (cache / "classpaths").iterdir()]
    assert not [e for e in entries if not e.endswith((".log", ".lock"))], "nothing half-made kept"


def test_missing_java_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StackError, match=r"^kafka: Java \(`java`\) is not installed"):
        maven.java_executable("kafka")


def test_cache_root_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(maven.ENV_CACHE_DIR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert maven.cache_root() == (tmp_path / "xdg" / "catalog-cdc").resolve()
    monkeypatch.setenv(maven.ENV_CACHE_DIR, str(tmp_path / "mine"))
    assert maven.cache_root() == (tmp_path / "mine").resolve()


def test_cached_classpath_never_runs_maven(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_mvn(tmp_path, monkeypatch)
    pom, cache = _pom(tmp_path), tmp_path / "cache"
    assert maven.cached_classpath(pom, "kafka", cache_dir=cache) is None
    lib = maven.fetch_classpath(pom, "kafka", cache_dir=cache)
    assert maven.cached_classpath(pom, "kafka", cache_dir=cache) == lib
    assert _calls(calls) == 1
