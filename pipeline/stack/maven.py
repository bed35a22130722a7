"""Jars for the stack's JVM services, fetched once with Maven and cached outside the checkout.

A service names what it needs in a ``pom.xml`` of its own (``pipeline/stack/java/<name>/``);
:func:`fetch_classpath` runs ``mvn dependency:copy-dependencies`` on it once and returns a
directory of plain jars for ``java -cp 'DIR/*'``.  Nothing is built.

- Cache: ``<cache root>/classpaths/<name>-<sha256 of the pom, 16 hex>/lib/``, the cache root
  being ``$CATALOG_CDC_CACHE_DIR``, else ``$XDG_CACHE_HOME/catalog-cdc``, else
  ``~/.cache/catalog-cdc``.  Keyed by the pom's bytes: a second checkout, a CI run on the
  same machine or another stack directory finds it there; editing the pom fetches again.
  Maven's own download cache (``~/.m2/repository``) sits under it, so a changed pom
  downloads only what changed.
- Once cached, neither Maven nor the network is needed (Java still is).
- The directory appears whole or not at all: Maven writes into a private staging
  directory that is renamed into place, under a lock, so concurrent stacks fetch once.
- Failures are :class:`~pipeline.errors.StackError` with one line naming the service, the
  command and its log file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pipeline.errors import StackError

__all__ = ["cache_root", "cached_classpath", "fetch_classpath", "java_executable"]

ENV_CACHE_DIR = "CATALOG_CDC_CACHE_DIR"
JAVA_HINT = "apt-get install openjdk-17-jdk-headless (Java 17 or newer)"
MAVEN_HINT = "apt-get install maven (needed once, to fetch the jars)"


def cache_root() -> Path:
    """Where fetched classpaths are kept (outside any checkout)."""
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return (base / "catalog-cdc").resolve()


def java_executable(name: str) -> str:
    """Absolute path of ``java`` (``$JAVA_HOME/bin/java`` first), or a one-line StackError."""
    home = os.environ.get("JAVA_HOME")
    if home and os.access(Path(home) / "bin" / "java", os.X_OK):
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise StackError(f"{name}: Java (`java`) is not installed or not on PATH: {JAVA_HINT}")
    return os.path.abspath(found)


def fetch_classpath(
    pom: Path,
    name: str,
    progress: Callable[[str], None] | None = None,
    *,
    cache_dir: Path | None = None,
    timeout: float = 1200.0,
) -> Path:
    """The directory of jars ``pom`` resolves to (runtime scope), fetched on first use.

    ``name`` names the service in messages and in the cache entry; ``progress`` gets a
    line before and after a fetch (nothing on a cache hit).  ``cache_dir`` overrides
    :func:`cache_root`.  Raises StackError when ``mvn`` is missing or cannot resolve.
    """
    pom_bytes = _read(pom, name)
    entry = _entry(pom_bytes, name, cache_dir)
    lib = entry / "lib"
    if lib.is_dir():
        return lib
    root = entry.parent
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f"{entry.name}.lock"):
        if lib.is_dir():  # another process fetched it while we waited
            return lib
        _fetch(pom_bytes, name, entry, progress or (lambda _msg: None), timeout)
    return lib


def cached_classpath(pom: Path, name: str, *, cache_dir: Path | None = None) -> Path | None:
    """The directory of jars of ``pom`` if already fetched, else None (never runs Maven)."""
    lib = _entry(_read(pom, name), name, cache_dir) / "lib"
    return lib if lib.is_dir() else None


def _read(pom: Path, name: str) -> bytes:
    try:
        return pom.read_bytes()
    except OSError as exc:
        raise StackError(f"{name}: cannot read {pom.resolve()}: {exc}") from exc


def _entry(pom_bytes: bytes, name: str, cache_dir: Path | None) -> Path:
    key = hashlib.sha256(pom_bytes).hexdigest()[:16]
    return (cache_dir or cache_root()) / "classpaths" / f"{name}-{key}"


def _fetch(
    pom_bytes: bytes, name: str, entry: Path, progress: Callable[[str], None], timeout: float
) -> None:
    mvn = shutil.which("mvn")
    if not mvn:
        raise StackError(f"{name}: Maven (`mvn`) is not installed or not on PATH: {MAVEN_HINT}")
    log_file = entry.with_name(entry.name + ".mvn.log")
    staging = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    # Maven runs on a copy in the staging directory, so it never writes into the checkout.
    (staging / "pom.xml").write_bytes(pom_bytes)
    # Maven's local repository under $HOME, as the cache is: Java takes user.home from
    # the password database, not $HOME, and a service user's there (nobody:
    # /nonexistent) made every download fail.
    repo = Path(os.environ.get("MAVEN_REPO_LOCAL") or Path.home() / ".m2" / "repository")
    argv = [
        mvn, "-B", "-f", str(staging / "pom.xml"),
        f"-Dmaven.repo.local={repo}",
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={staging / 'lib'}",
    ]  # fmt: skip
    command = shlex.join(argv)
    progress(f"{name}: fetching jars with Maven, once (log {log_file})")
    started = time.monotonic()
    try:
        with open(log_file, "w") as log:
            log.write(f"$ {command}\n")
            log.flush()
            done = subprocess.run(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                timeout=timeout, check=False,
            )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise StackError(
            f"{name}: `{command}` did not finish within {timeout:.0f}s; log {log_file}"
        ) from exc
    jars = sorted((staging / "lib").glob("*.jar"))
    if done.returncode != 0 or not jars:
        shutil.rmtree(staging, ignore_errors=True)
        why = _first_error(log_file) or f"exit status {done.returncode}, no jars"
        raise StackError(f"{name}: Maven could not resolve the jars ({why}): `{command}`; "
                         f"log {log_file}")  # fmt: skip
    size = sum(j.stat().st_size for j in jars)
    os.replace(staging, entry)
    progress(
        f"{name}: {len(jars)} jars, {size / 1e6:.0f} MB, fetched in "
        f"{time.monotonic() - started:.0f}s into {entry}"
    )


def _first_error(log_file: Path) -> str | None:
    """Maven's first ``[ERROR]`` line (the one that says what failed), shortened."""
    with contextlib.suppress(OSError), open(log_file, errors="replace") as log:
        for line in log:
            if line.startswith("[ERROR]") and line[7:].strip():
                text = line[7:].strip()
                return text if len(text) <= 300 else text[:297] + "..."
    return None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
