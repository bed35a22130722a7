#!/usr/bin/env bash
# `make demo`: the local stack, a seeded catalog of DEMO_PRODUCTS (10,000) products, the
# whole pipeline under `catalog-cdc run --config scripts/demo.toml` (reader, assembler,
# consumers search, edge-kv, storefront-api, search-service and webhooks, the last three
# against contract servers), live edits while `catalog-cdc dashboard` shows the pipeline,
# then the proof: search results, edge KV entries, what every sink holds against the
# database; a clean stop (SIGTERM) and a one-screen summary. Exit 0 when every sink is in
# sync. Re-runnable: each demo is a run of its own (database, replication slot, topic
# prefix, consumer groups, index: `demoMMDDHHMMSS`), and what the previous one left is
# dropped first (pipeline/dashboard/demo.py prepare).
#   DEMO_PRODUCTS (10000)  DEMO_EDIT_RATE (40 edits/s)  DEMO_EDIT_SECONDS (20)
#   DEMO_TIMEOUT (240: seconds the pipeline may take to catch up, per phase)
set -euo pipefail
cd "$(dirname "$0")/.."
CLI=.venv/bin/catalog-cdc
PY=.venv/bin/python
CONFIG=scripts/demo.toml
PRODUCTS=${DEMO_PRODUCTS:-10000}
EDIT_RATE=${DEMO_EDIT_RATE:-40}
EDIT_SECONDS=${DEMO_EDIT_SECONDS:-20}
TIMEOUT=${DEMO_TIMEOUT:-240}
DIR=.stack/demo
RUNLOG=$DIR/run.log
SUMMARY=$DIR/proof.jsonl
KV=(--path "$DIR/edge-kv.sqlite")

step() { printf '\n== %s ==\n' "$*"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
started=$(now)

# Every stage caught up with what is committed now: the reader has confirmed the
# server's current WAL position (read it all, Kafka acknowledged it), then the
# assembler's consumer group has committed the ends of the raw topics, then every
# consumer's group the ends of the document topics (pipeline/dashboard/demo.py).
wait_pipeline() {
    $PY -m pipeline.dashboard.demo wait-reader --config "$CONFIG" --timeout "$TIMEOUT" >/dev/null \
        && $PY -m pipeline.dashboard.demo wait-groups --config "$CONFIG" --timeout "$TIMEOUT"
}

step "starting the local stack"
$CLI stack up >/dev/null
$PY -m pipeline.dashboard.demo ports --config "$CONFIG"  # fails naming a port in use
RUN=demo$(date -u +%m%d%H%M%S)
step "demo run $RUN: its own database, replication slot, topics and index"
mkdir -p "$DIR"
eval "$($PY -m pipeline.dashboard.demo prepare --config "$CONFIG" --run "$RUN")"
step "seeding $PRODUCTS products"
t=$(now)
$CLI demo seed --products "$PRODUCTS"
seed_s=$(since "$t")

step "starting the pipeline: catalog-cdc run --config $CONFIG (log: $RUNLOG)"
: > "$RUNLOG"
: > "$SUMMARY"
rm -f "$DIR/admin-tokens.json"
t=$(now)
$CLI run --config "$CONFIG" >>"$RUNLOG" 2>&1 &
run=$!
trap 'kill -TERM $run 2>/dev/null && wait $run 2>/dev/null || true' EXIT
sleep 1
kill -0 $run 2>/dev/null || { tail -20 "$RUNLOG"; echo "demo: catalog-cdc run failed" >&2; exit 1; }
$CLI run --config "$CONFIG" --check | sed -n '/would start/,/^stop/p' | cut -c1-110

step "initial load: $PRODUCTS products through every stage"
$CLI dashboard --config "$CONFIG" --until-synced --timeout "$TIMEOUT" \
    --title "catalog-cdc demo: initial load of $PRODUCTS products" || true
wait_pipeline
load_s=$(since "$t")
echo "initial load done in ${load_s}s (every consumer caught up)"

step "live edits: $EDIT_RATE edits/s for $EDIT_SECONDS s"
t=$(now)
$CLI demo edits --rate "$EDIT_RATE" --duration "$EDIT_SECONDS" --json >"$DIR/edits.json" 2>"$DIR/edits.log" &
edits=$!
$CLI dashboard --config "$CONFIG" --duration "$EDIT_SECONDS" \
    --title "catalog-cdc demo: live edits, $EDIT_RATE/s for $EDIT_SECONDS s"
wait $edits
edits_s=$(since "$t")
committed=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["committed"])' "$DIR/edits.json")
echo "edits: $committed committed in ${edits_s}s"

step "catching up after the edits"
t=$(now)
$CLI dashboard --config "$CONFIG" --until-synced --timeout "$TIMEOUT" \
    --title "catalog-cdc demo: catching up after the edits" || true
wait_pipeline
catchup_s=$(since "$t")
echo "every consumer caught up ${catchup_s}s after the edits stopped"
$CLI dashboard --config "$CONFIG" --once --interval 1 --title "the pipeline now"

step "the proof"
echo "-- search: \"headphones\" up to 200 (catalog-cdc search --refresh)"
$CLI search headphones --price ..200 --size 5 --refresh
$CLI kv list "" "${KV[@]}" >"$DIR/kv-keys.txt"
product_key=$(grep -m1 ':product:' "$DIR/kv-keys.txt" || true)
page_key=$(grep -m1 ':products:category:' "$DIR/kv-keys.txt" || true)
echo "-- edge KV: $product_key (catalog-cdc kv get)"
$CLI kv get "$product_key" "${KV[@]}" | cut -c1-400
echo "-- edge KV: $page_key (a listing page, first 2 products)"
$CLI kv get "$page_key" "${KV[@]}" --json | $PY -c '
import json, sys
page = json.load(sys.stdin)
print(json.dumps({**page, "products": page["products"][:2]}, ensure_ascii=False)[:600])
print("  (%d products on this page)" % len(page["products"]))'
echo
echo "-- the admin API: GET /v1/status (catalog-cdc admin serve on :18780, a reader token)"
token=$($CLI admin token add "demo-$RUN" --role reader --tokens "$DIR/admin-tokens.json" 2>/dev/null)
$PY - "$token" <<'EOF' || echo "  (the admin API did not answer: see $RUNLOG)"
import json, sys, urllib.request
req = urllib.request.Request("http://127.0.0.1:18780/v1/status",
                             headers={"Authorization": f"Token {sys.argv[1]}"})
body = json.load(urllib.request.urlopen(req, timeout=10))
for name, c in body["consumers"].items():
    print(f"  {name:<16} status={c['status']:<8} lag={c['lag']:<4} "
          f"product_count={c['product_count']} consuming={c['consuming']}")
EOF
echo
echo "-- what each sink holds vs the database"
sinks_ok=0
$PY -m pipeline.dashboard.demo proof --config "$CONFIG" --summary "$SUMMARY" || sinks_ok=1
search_ok=yes; edge_ok=yes
echo
$CLI verify search --limit 3 || { search_ok=no; sinks_ok=1; }
$CLI verify edge-kv --option path="$DIR/edge-kv.sqlite" --limit 3 || { edge_ok=no; sinks_ok=1; }

step "stopping the pipeline (SIGTERM to catalog-cdc run)"
t=$(now)
kill -TERM $run
run_status=0
wait $run || run_status=$?
trap - EXIT
stop_s=$(since "$t")
grep -E "event=supervisor_stopped" "$RUNLOG" | tail -1 | cut -c1-200 | sed 's/^/  /' || true
restarts=$(grep -c "event=service_failed" "$RUNLOG" || true)
peak_rss=$(grep -o 'event=peak_rss services=[^ ]*' "$RUNLOG" | tail -1 | cut -d= -f3- \
    | $PY -c 'import json,sys; print(", ".join(f"{k} {v:.0f}" for k, v in json.load(sys.stdin).items()))' \
    2>/dev/null || echo unknown)

total_s=$(since "$started")
step "summary"
printf '  %-28s %s\n' \
    "catalog" "$PRODUCTS products seeded in ${seed_s}s, $committed live edits committed" \
    "initial load" "${load_s}s (run started -> every consumer caught up)" \
    "live edits" "${edits_s}s at $EDIT_RATE/s" \
    "catch-up after the edits" "${catchup_s}s" \
    "clean stop" "${stop_s}s, catalog-cdc run exit status $run_status, $restarts service failures" \
    "peak memory (MB)" "$peak_rss" \
    "total" "${total_s}s"
echo "  in sync with the database:"
printf '    %-16s %s\n' "search" "$search_ok (catalog-cdc verify search)" \
    "edge-kv" "$edge_ok (catalog-cdc verify edge-kv)"
$PY - "$SUMMARY" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    p = json.loads(line)
    print(f"    {p['sink']:<16} {'yes' if p['in_sync'] else 'NO'} ({p['lines'][0]})")
EOF
echo
echo "The stack keeps running (data under .stack/): '.venv/bin/catalog-cdc stack down' stops it."
echo "This run's data stays until the next demo: database, slot and topic prefix $RUN. Run"
echo "the pipeline on it yourself with these variables set:"
echo "  export CATALOG_CDC_POSTGRES_DSN='$CATALOG_CDC_POSTGRES_DSN'"
echo "  export CATALOG_CDC_TOPIC_PREFIX=$RUN CATALOG_CDC_READER_SLOT=$RUN"
echo "  .venv/bin/catalog-cdc run --config $CONFIG    # and in another terminal:"
echo "  .venv/bin/catalog-cdc dashboard --config $CONFIG    (docs/dashboard.md)"
if (( sinks_ok != 0 || run_status != 0 )); then
    echo "demo: a sink is out of sync or the pipeline did not stop cleanly (log: $RUNLOG)" >&2
    exit 1
fi
