#!/usr/bin/env bash
# Runs the test suite. pytest exits 5 when it collected no test: that is a failure
# here (a suite that runs nothing proves nothing), as are all other non-zero codes.
#
# The suite runs in PYTEST_WORKERS processes (pytest-xdist, default 3): most tests
# wait on real services (replication, Kafka, Elasticsearch), so on 2 cores three
# workers finish in about half the time of one. Every test has its own database,
# topic prefix and index prefix, so they do not meet. The local stack is started
# once here (the workers then find it running) and stopped at the end only if this
# run started it. PYTEST_WORKERS=0 runs everything in this one process.
set -uo pipefail
cd "$(dirname "$0")/.."
workers=${PYTEST_WORKERS:-3}
args=("$@")
started_stack=
if [ "$workers" != "0" ]; then
    if [ -z "${CATALOG_CDC_POSTGRES_DSN:-}" ]; then
        if ! .venv/bin/catalog-cdc stack status --json 2>/dev/null | .venv/bin/python -c \
            'import json,sys; s=json.load(sys.stdin); sys.exit(0 if all(v.get("running") and v.get("answers") for v in s["services"].values()) else 1)'; then
            started_stack=1
        fi
        .venv/bin/catalog-cdc stack up >/dev/null || exit 1
        export CATALOG_CDC_KEEP_STACK=1
    fi
    args=(-n "$workers" --dist loadfile "${args[@]}")
fi
.venv/bin/python -m pytest "${args[@]}"
rc=$?
if [ -n "$started_stack" ] && [ -z "${KEEP_STACK:-}" ]; then
    .venv/bin/catalog-cdc stack down >/dev/null || true
fi
if [ "$rc" -eq 5 ]; then
    echo "run-pytest: no tests were collected" >&2
    exit 1
fi
exit "$rc"
