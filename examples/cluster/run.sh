#!/usr/bin/env bash
# Eddy as a cluster on one machine: a 3-node NATS cluster (R3 streams, KV and object store)
# and 3 Eddy hosts on loopback; puts load on them, kills one host with SIGKILL, and prints the
# failover timeline (who owns which partition, second by second) and the exactly-once check.
#
# Usage: bash examples/cluster/run.sh     (after the README's first command; COUNT=N events)
set -euo pipefail
source "$(dirname "$0")/../../scripts/env.sh"
cd "$EDDY_ROOT"
EDDY="$CARGO_TARGET_DIR/debug/eddy"
COUNT="${COUNT:-300000}"
WORK=.eddy/cluster
[ -x "$EDDY" ] || { echo "no eddy binary at $EDDY: run bash scripts/setup.sh first" >&2; exit 1; }
mkdir -p .eddy/plugins
cp "$EDDY_PLUGIN_TARGET_DIR/wasm32-wasip2/plugin/fraud_enrich.wasm" .eddy/plugins/

pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
rm -rf "$WORK"; mkdir -p "$WORK"

say "starting a 3-node NATS cluster on 127.0.0.1:4301-4303 (data in $WORK/nats)"
for i in 1 2 3; do
  routes=""
  for j in 1 2 3; do
    if [ "$j" != "$i" ]; then routes+="nats://127.0.0.1:630$j,"; fi
  done
  nats-server -n "s$i" -js -a 127.0.0.1 -p "430$i" -sd "$WORK/nats/s$i" \
    --cluster_name eddy-demo --cluster "nats://127.0.0.1:630$i" --routes "${routes%,}" \
    >"$WORK/nats-s$i.log" 2>&1 &
  pids+=($!)
done

for h in a b c; do
  sed -e "s|STATE_DIR|../../$WORK/host-$h|" -e "s|\"HOST\"|\"$h\"|" \
    examples/cluster/pipeline.toml >"examples/cluster/.pipeline-$h.toml"
done
PIPE=examples/cluster/.pipeline-a.toml
for _ in $(seq 60); do "$EDDY" streams "$PIPE" >"$WORK/streams.log" 2>&1 && break; sleep 0.5; done
cat "$WORK/streams.log"
"$EDDY" produce --subject 'txnc.in.*' --count "$COUNT" --customers 500 --seed 7 \
  --nats nats://127.0.0.1:4301

say "starting hosts a, b, c (logs in $WORK/host-*.log)"
declare -A host_pid
for h in a b c; do
  RUST_LOG="${RUST_LOG:-warn,eddy_host::cluster=info}" "$EDDY" run "examples/cluster/.pipeline-$h.toml" \
    >"$WORK/host-$h.log" 2>&1 &
  host_pid[$h]=$!
  pids+=($!)
done

# A busy cluster (an election) may fail one status read: then the previous answer stands.
status() { "$EDDY" cluster status "$PIPE" --json 2>/dev/null || true; }
lag() { status | python3 -c '
import json, sys
try:
    v = json.load(sys.stdin)
    print(sum(p["lag"] or 0 for p in v["partitions"]), sum(1 for p in v["partitions"] if p["owner"]))
except ValueError:
    print(-1, -1)'; }
owners() { status | python3 -c '
import json, sys
try:
    v = json.load(sys.stdin)
    print(" ".join((p["owner"] or "-").split("-")[0] for p in v["partitions"]))
except ValueError:
    print("?")'; }

# Kill mid-run, once the three hosts share the partitions (5 or 6 each).
even() { owners | tr ' ' '\n' | sort | uniq -c | awk '$2 != "-" && $1 >= 5 {n++} END {exit !(n == 3)}'; }
for _ in $(seq 600); do
  read -r l o < <(lag)
  if [ "$o" = 16 ] && even; then break; fi
  sleep 0.2
done
say "owners of partitions 0-15 before: $(owners)"
say "kill -9 host b"
start=$(date +%s.%N)
kill -KILL "${host_pid[b]}"
printf '%8s  %s\n' "t (s)" "owners of partitions 0-15 (lag)"
last=""
for _ in $(seq 400); do
  now=$(printf '%.1f' "$(echo "$(date +%s.%N) - $start" | bc)")
  o=$(owners); read -r l n < <(lag)
  if [ "$o" != "?" ] && [ "$o" != "$last" ]; then printf '%8s  %s  (lag %s)\n' "$now" "$o" "$l"; last="$o"; fi
  if [ "$l" = 0 ] && [ "$n" = 16 ] && ! grep -q '\bb\b' <<<"$o"; then break; fi
  sleep 0.5
done
printf '%8s  all %s events processed and acknowledged\n' "$now" "$COUNT"

say "exactly-once check on txnc.out"
"$EDDY" tail txnc.out --count $((COUNT * 2)) --nats nats://127.0.0.1:4301 >"$WORK/out.txt"
total=$(wc -l <"$WORK/out.txt")
unique=$(grep -o '"id":"[^"]*"' "$WORK/out.txt" | sort -u | wc -l)
echo "outputs stored: $total, distinct transactions: $unique, expected: $COUNT"
if [ "$total" = "$COUNT" ] && [ "$unique" = "$COUNT" ]; then say "exactly once: yes"; else say "exactly once: NO"; exit 1; fi
