// fraud-enrich's own logic in JavaScript, without the host: what an engine spends interpreting
// (or running compiled) the plugin's work on one event, before any host call or binding. The
// steps of plugins/fraud-enrich-js, with its own transaction.js (run.sh puts it beside this
// file): parse and check the transaction, decode the stats and the recent amounts, compute the
// risk, build and encode the output, encode the new state. `bench()` returns µs per event; as
// a component, `init` reports it as its error (the only text a component can hand back without
// the layer), and run.sh reads it from there. Runs under node too (run.sh's native baseline).

import { parseTransaction, risk, updated } from "./transaction.js";

function oneEvent(txText, statsText, recentTexts) {
  const tx = parseTransaction(JSON.parse(txText));
  const prev = JSON.parse(statsText);
  const recent = recentTexts.map((t) => JSON.parse(t));
  const limit = 50000;
  const now = updated(prev, tx);
  const r = risk(tx, prev, limit);
  const out = JSON.stringify({
    id: tx.id, customer: tx.customer, amount_cents: tx.amount_cents, merchant: tx.merchant,
    category: tx.category, ts: tx.ts, customer_count: now.count,
    customer_sum_cents: now.sum_cents, customer_avg_cents: Math.floor(now.sum_cents / now.count),
    customer_max_cents: now.max_cents, previous_ts: prev.last_ts, recent_cents: recent,
    category_limit_cents: limit, profile: null, merchant_info: null, risk: r, flagged: r >= 70,
  });
  recent.push(tx.amount_cents);
  const encoded = [JSON.stringify(now), ...recent.slice(1).map((v) => JSON.stringify(v))];
  return out.length + encoded.length;
}

export function bench(n = 20000) {
  const tx = '{"id":"tx-000123","customer":"c-0042","amount_cents":12345,"merchant":"m-007","category":"grocery","ts":1700000123456}';
  const stats = '{"count":12,"sum_cents":456789,"max_cents":99999,"last_ts":1700000000000}';
  const recent = ["1234", "5678", "91011", "1213", "1415"];
  let check = 0;
  for (let i = 0; i < n / 10; i++) check += oneEvent(tx, stats, recent); // warm up
  const t0 = Date.now();
  for (let i = 0; i < n; i++) check += oneEvent(tx, stats, recent);
  const t1 = Date.now();
  if (check !== (n + n / 10) * oneEvent(tx, stats, recent)) throw new Error("inconsistent results");
  return ((t1 - t0) * 1000) / n;
}

export const handler = {
  init() {
    throw `logic: ${bench().toFixed(2)} us per event`;
  },
  handle(events) {
    return events.map(() => ({ tag: "drop" }));
  },
};
