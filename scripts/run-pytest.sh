#!/usr/bin/env bash
# Runs the test suite. pytest exits 5 when it collected no test: that is a failure
# here (a suite that runs nothing proves nothing), as are all other non-zero codes.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "run-pytest: no tests were collected" >&2
    exit 1
fi
exit "$rc"
