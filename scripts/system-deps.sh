#!/usr/bin/env bash
# Installs the Debian packages catalog-cdc needs, only when they are missing:
#   - python3-venv (Debian's python3 ships without ensurepip)
#   - postgresql (the server the local stack runs; >= 14)
#   - redis-server (the local stack's Redis, for the edge KV consumer)
#   - a Java 17 JDK and Maven (the stack's Apache Kafka and OpenSearch come from Maven
#     Central; pipeline/stack/maven.py fetches them once into ~/.cache/catalog-cdc)
# Uses sudo when not root. Safe to run repeatedly.
set -euo pipefail
PYTHON=${PYTHON:-python3}
need=()
if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    ver=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    need+=("python${ver}-venv")
fi
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
    need+=(postgresql)
fi
if ! command -v redis-server >/dev/null && [ ! -x /usr/bin/redis-server ]; then
    need+=(redis-server)
fi
if ! command -v java >/dev/null || ! command -v javac >/dev/null; then
    need+=(openjdk-17-jdk-headless)
fi
if ! command -v mvn >/dev/null; then
    need+=(maven)
fi
[ ${#need[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
    echo "system-deps: missing ${need[*]} and apt-get is not available; install them by hand" >&2
    exit 1
fi
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo -n)
echo "system-deps: installing ${need[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get -q update
"${sudo[@]}" apt-get -y -q install --no-install-recommends "${need[@]}"
