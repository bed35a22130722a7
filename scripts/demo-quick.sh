#!/usr/bin/env bash
# `make demo`: the local stack, a seeded catalog, the reader streaming live edits to
# Kafka, the assembler turning them into product and category documents, and what
# came out. Re-runnable: the catalog is re-seeded each time.
set -euo pipefail
cd "$(dirname "$0")/.."
CLI=.venv/bin/catalog-cdc
PRODUCTS=${DEMO_PRODUCTS:-2000}
log=.stack/demo-reader.log
alog=.stack/demo-assembler.log
slog=.stack/demo-search.log

step() { printf '\n== %s ==\n' "$*"; }

step "starting the local stack"
$CLI stack up >/dev/null
step "seeding $PRODUCTS products"
$CLI demo seed --products "$PRODUCTS" --replace

step "starting the reader (log: $log)"
: > "$log"
$CLI reader >>"$log" 2>&1 &
reader=$!
assembler=
search=
trap 'kill -TERM $reader $assembler $search 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
    grep -q replication_started "$log" && break
    kill -0 $reader 2>/dev/null || { tail -20 "$log"; echo "reader failed" >&2; exit 1; }
    sleep 0.2
done
grep -E "event=(snapshot_done|resume)" "$log" | tail -1 | sed 's/^/  /'

step "starting the assembler (log: $alog)"
: > "$alog"
$CLI assembler >>"$alog" 2>&1 &
assembler=$!
for _ in $(seq 1 900); do
    grep -qE "event=(catch_up_done|partitions_assigned)" "$alog" && break
    kill -0 $assembler 2>/dev/null || { tail -20 "$alog"; echo "assembler failed" >&2; exit 1; }
    sleep 0.2
done
grep -E "event=(catch_up_done|partitions_assigned)" "$alog" | tail -1 | cut -c1-200 | sed 's/^/  /'

step "starting the search consumer (log: $slog)"
: > "$slog"
$CLI consume search >>"$slog" 2>&1 &
search=$!

step "applying live edits for 5 s"
$CLI demo edits --rate 40 --duration 5
sleep 1  # the reader delivers the last edits within milliseconds
mark=$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)

step "Kafka topics"
$CLI topics
step "the newest change events of catalog.public.products (via catalog-cdc tail)"
$CLI tail catalog.public.products --from-beginning --timeout 2 | tail -n 2 | cut -c1-400

for _ in $(seq 1 600); do  # until the assembler says it caught up after the edits
    last=$(grep -E "event=caught_up" "$alog" | tail -1 | sed -E 's/^ts=([^ ]+).*/\1/' || true)
    [[ -n "$last" && "$last" > "$mark" ]] && break
    kill -0 $assembler 2>/dev/null || { tail -20 "$alog"; echo "assembler failed" >&2; exit 1; }
    sleep 0.2
done

for _ in $(seq 1 600); do  # and the search consumer after the assembler
    last=$(grep -E "event=caught_up" "$slog" | tail -1 | sed -E 's/^ts=([^ ]+).*/\1/' || true)
    [[ -n "$last" && "$last" > "$mark" ]] && break
    kill -0 $search 2>/dev/null || { tail -20 "$slog"; echo "search consumer failed" >&2; exit 1; }
    sleep 0.2
done

step "product and category documents (via catalog-cdc documents)"
$CLI documents products --no-tombstones > .stack/demo-products.jsonl
$CLI documents categories --no-tombstones > .stack/demo-categories.jsonl
echo "  $(wc -l < .stack/demo-products.jsonl) product documents, $(wc -l < .stack/demo-categories.jsonl) category documents"
tail -n 1 .stack/demo-products.jsonl | cut -c1-600
tail -n 1 .stack/demo-categories.jsonl | cut -c1-300

step "search: \"headphones\" up to 200 (via catalog-cdc search)"
$CLI search headphones --price ..200 --size 5 --refresh

kill -TERM $reader $assembler $search
wait $reader || true
wait $assembler || true
wait $search || true
trap - EXIT
grep -E "event=stopped" "$log" | tail -1 | sed 's/^/  reader: /'
grep -E "event=assembler_stopped" "$alog" | tail -1 | cut -c1-200 | sed 's/^/  assembler: /'
grep -E "event=consumer_stopped" "$slog" | tail -1 | cut -c1-200 | sed 's/^/  search: /'

step "row counts (catalog database)"
$CLI demo counts
step "running services"
$CLI stack status
echo
echo "The stack keeps running (data under .stack/): '.venv/bin/catalog-cdc stack down' stops it."
echo "Follow live events: '.venv/bin/catalog-cdc reader' and '.venv/bin/catalog-cdc assembler'"
echo "in two terminals, '.venv/bin/catalog-cdc demo edits --rate 20 --duration 60' and"
echo "'.venv/bin/catalog-cdc tail catalog.public.products' in others, then"
echo "'.venv/bin/catalog-cdc documents products --id 1'."
