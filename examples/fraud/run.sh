#!/usr/bin/env bash
# Runs the fraud demo: streams, 10,000 synthetic transactions, the pipeline until every one is
# enriched, then a few enriched events and a summary.
set -euo pipefail
source "$(dirname "$0")/../../scripts/env.sh"
cd "$EDDY_ROOT"
EDDY="$CARGO_TARGET_DIR/debug/eddy"
COUNT="${COUNT:-10000}"
URL="nats://127.0.0.1:4222"
mkdir -p .eddy/plugins
cp "$EDDY_PLUGIN_TARGET_DIR/wasm32-wasip2/plugin/fraud_enrich.wasm" .eddy/plugins/

if ! (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; then
  say "starting nats-server with JetStream on 127.0.0.1:4222 (data in .eddy/nats)"
  nohup nats-server -js -a 127.0.0.1 -p 4222 -sd .eddy/nats >.eddy/nats.log 2>&1 &
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null && break; sleep 0.1; done
fi

"$EDDY" streams examples/fraud/pipeline.toml
before=$("$EDDY" tail 'txn.enriched' --count 100000000 --nats "$URL" 2>/dev/null | wc -l || echo 0)
"$EDDY" produce --subject txn.in --count "$COUNT" --customers 200 --seed "$RANDOM" --nats "$URL"

say "running the pipeline (metrics at http://127.0.0.1:9464/metrics)"
RUST_LOG="${RUST_LOG:-warn,eddy_host=info}" "$EDDY" run examples/fraud/pipeline.toml &
pid=$!
want=$((before + COUNT))
for _ in $(seq 600); do
  got=$(curl -s http://127.0.0.1:9464/metrics 2>/dev/null | awk '/^eddy_outputs_total/ {print $2}')
  [ -n "$got" ] && [ "$got" -ge "$COUNT" ] && break
  sleep 0.2
done
curl -s http://127.0.0.1:9464/metrics | grep -E '^eddy_(events_in|outputs|events_dropped|events_dead_lettered)_total' || true
kill -TERM "$pid"; wait "$pid"

"$EDDY" tail 'txn.enriched' --count "$want" --nats "$URL" | tail -n "$COUNT" >.eddy/last-run.txt
say "a few enriched events of this run (txn.enriched)"
tail -n 3 .eddy/last-run.txt
say "some it flagged as risky"
grep '"flagged":true' .eddy/last-run.txt | tail -n 3 || true
say "summary: $(wc -l <.eddy/last-run.txt) enriched, $(grep -c '"flagged":true' .eddy/last-run.txt || true) flagged; dead letters: $("$EDDY" tail 'txn.dlq' --count 1000000 --nats "$URL" | wc -l)"
