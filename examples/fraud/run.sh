#!/usr/bin/env bash
# Runs the fraud demo: starts what it needs (nats-server with JetStream, Redis, PostgreSQL, each
# on loopback with data under .eddy/), loads customer profiles and merchant records, publishes
# per-category limits and 10,000 synthetic transactions, runs the pipeline until every one is
# enriched, then shows a few enriched events, a query, and a summary.
set -euo pipefail
source "$(dirname "$0")/../../scripts/env.sh"
cd "$EDDY_ROOT"
EDDY="$CARGO_TARGET_DIR/debug/eddy"
COUNT="${COUNT:-10000}"
URL="nats://127.0.0.1:4222"
mkdir -p .eddy/plugins
cp "$EDDY_PLUGIN_TARGET_DIR/wasm32-wasip2/plugin/fraud_enrich.wasm" .eddy/plugins/

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { for _ in $(seq 100); do listening "$1" && return 0; sleep 0.1; done; echo "nothing listens on $1" >&2; return 1; }

if ! listening 4222; then
  say "starting nats-server with JetStream on 127.0.0.1:4222 (data in .eddy/nats)"
  nohup nats-server -js -a 127.0.0.1 -p 4222 -sd .eddy/nats >.eddy/nats.log 2>&1 &
  wait_port 4222
fi
if ! listening 6390; then
  say "starting redis-server on 127.0.0.1:6390 (customer profiles)"
  nohup redis-server --port 6390 --bind 127.0.0.1 --save "" --appendonly no >.eddy/redis.log 2>&1 &
  wait_port 6390
fi
if ! listening 5439; then
  say "starting PostgreSQL on 127.0.0.1:5439 (merchant records, data in .eddy/pg)"
  pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  run_pg=(); [ "$(id -u)" = 0 ] && run_pg=(runuser -u postgres --)
  if [ ! -d .eddy/pg/data ]; then
    mkdir -p .eddy/pg && { [ "$(id -u)" != 0 ] || chown -R postgres .eddy/pg; }
    "${run_pg[@]}" "$pgbin/initdb" -D .eddy/pg/data -U eddy --auth=trust >/dev/null
  fi
  "${run_pg[@]}" "$pgbin/pg_ctl" -D .eddy/pg/data -l .eddy/pg/log -o "-p 5439 -h 127.0.0.1 -k /tmp" start >/dev/null
  wait_port 5439
fi

say "loading 200 customer profiles (Redis) and 50 merchants (PostgreSQL)"
for i in $(seq 0 199); do
  seg=$([ $((i % 10)) = 0 ] && echo gold || echo standard)
  printf 'SET profile:c-%d "{\\"segment\\":\\"%s\\",\\"since\\":%d}"\n' "$i" "$seg" $((2015 + i % 10))
done | redis-cli -p 6390 >/dev/null
psql -q -h 127.0.0.1 -p 5439 -U eddy -d postgres >/dev/null <<'SQL'
CREATE TABLE IF NOT EXISTS merchants (id text PRIMARY KEY, name text, country text, risk real);
INSERT INTO merchants SELECT 'm-' || i, 'Merchant ' || i, (ARRAY['FR','DE','US','JP'])[1 + i % 4], (i % 7) / 10.0
  FROM generate_series(0, 49) AS i ON CONFLICT (id) DO NOTHING;
SQL

"$EDDY" streams examples/fraud/pipeline.toml
say "publishing per-category limits on rules.fraud"
for rule in '{"category":"travel","limit_cents":60000}' '{"category":"electronics","limit_cents":80000}' '{"category":"gaming","limit_cents":20000}'; do
  "$EDDY" publish rules.fraud "$rule" --nats "$URL" >/dev/null
done
before=$("$EDDY" tail 'txn.enriched' --count 100000000 --nats "$URL" 2>/dev/null | wc -l || echo 0)
"$EDDY" produce --subject txn.in --count "$COUNT" --customers 200 --seed "$RANDOM" --nats "$URL"

say "running the pipeline (metrics at http://127.0.0.1:9464/metrics, queries at http://127.0.0.1:8080/v1/)"
RUST_LOG="${RUST_LOG:-warn,eddy_host=info}" "$EDDY" run examples/fraud/pipeline.toml &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null || true' EXIT
want=$((before + COUNT))
for _ in $(seq 600); do
  # Until the host has compiled the plugin (the first run does it for seconds), nothing
  # listens on the metrics port yet.
  got=$(curl -s http://127.0.0.1:9464/metrics 2>/dev/null | awk '/^eddy_outputs_total/ {print $2}' || true)
  kill -0 "$pid" 2>/dev/null || { wait "$pid" || true; say "eddy run ended before the demo's events were enriched (its log is above)"; exit 1; }
  [ -n "$got" ] && [ "$got" -ge "$COUNT" ] && break
  sleep 0.2
done
curl -s http://127.0.0.1:9464/metrics | grep -E '^eddy_(events_in|outputs|events_dropped|checkpoints)_total|^eddy_lookups_total.*result="(hit|miss)"' || true
say "the state of customer c-7, queried from outside while the pipeline runs"
curl -s http://127.0.0.1:8080/v1/state/stats/c-7; echo
kill -TERM "$pid"; wait "$pid" || true
trap - EXIT

"$EDDY" tail 'txn.enriched' --count "$want" --nats "$URL" | tail -n "$COUNT" >.eddy/last-run.txt
say "a few enriched events of this run (txn.enriched)"
tail -n 2 .eddy/last-run.txt
say "some it flagged as risky"
grep '"flagged":true' .eddy/last-run.txt | tail -n 2 || true
say "summary: $(wc -l <.eddy/last-run.txt) enriched, $(grep -c '"flagged":true' .eddy/last-run.txt || true) flagged, $(grep -c '"category_limit_cents":[0-9]' .eddy/last-run.txt || true) under a category limit, $(grep -c '"segment":"gold"' .eddy/last-run.txt || true) from gold customers; dead letters: $("$EDDY" tail 'txn.dlq' --count 1000000 --nats "$URL" | wc -l)"
