#!/usr/bin/env bash
# `make demo`: the local stack, a seeded catalog, the reader streaming live edits to
# Kafka, and what came out. Re-runnable: the catalog is re-seeded each time.
set -euo pipefail
cd "$(dirname "$0")/.."
CLI=.venv/bin/catalog-cdc
PRODUCTS=${DEMO_PRODUCTS:-2000}
log=.stack/demo-reader.log

step() { printf '\n== %s ==\n' "$*"; }

step "starting the local stack"
$CLI stack up >/dev/null
step "seeding $PRODUCTS products"
$CLI demo seed --products "$PRODUCTS" --replace

step "starting the reader (log: $log)"
: > "$log"
$CLI reader >>"$log" 2>&1 &
reader=$!
trap 'kill -TERM $reader 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
    grep -q replication_started "$log" && break
    kill -0 $reader 2>/dev/null || { tail -20 "$log"; echo "reader failed" >&2; exit 1; }
    sleep 0.2
done
grep -E "event=(snapshot_done|resume)" "$log" | tail -1 | sed 's/^/  /'

step "applying live edits for 5 s"
$CLI demo edits --rate 40 --duration 5
sleep 2

step "Kafka topics"
$CLI topics
step "the newest change events of catalog.public.products (via catalog-cdc tail)"
$CLI tail catalog.public.products --from-beginning --timeout 2 | tail -n 2 | cut -c1-400

kill -TERM $reader
wait $reader || true
trap - EXIT
grep -E "event=stopped" "$log" | tail -1 | sed 's/^/  reader: /'

step "row counts (catalog database)"
$CLI demo counts
step "running services"
$CLI stack status
echo
echo "The stack keeps running (data under .stack/): '.venv/bin/catalog-cdc stack down' stops it."
echo "Follow live events: '.venv/bin/catalog-cdc reader' in one terminal,"
echo "'.venv/bin/catalog-cdc demo edits --rate 20 --duration 60' and"
echo "'.venv/bin/catalog-cdc tail catalog.public.products' in others."
