// fraud-enrich's own logic, apart from the host: the transaction's checks, the risk score and
// the statistics. No import of the layer, so that tests/benches/guest-engines can run it in any
// engine (and natively under node) to measure what the logic alone costs.

/** Whether `v` is a JSON integer that fits a u64 (as the layer's isU64). */
const isU64 = (v) => typeof v === "number" && Number.isInteger(v) && v >= 0;
/** Whether `v` is a plain JSON object (as the layer's isObject). */
const isObject = (v) => typeof v === "object" && v !== null && !Array.isArray(v);

/** Checks that `obj[name]` exists and passes `check`; the error reads like serde's. */
export function field(obj, name, check, expected) {
  if (!(name in obj)) throw new Error(`missing field \`${name}\``);
  const v = obj[name];
  if (!check(v)) throw new Error(`invalid type for \`${name}\`: ${JSON.stringify(v)}, expected ${expected}`);
  return v;
}
export const isString = (v) => typeof v === "string";

/** The transaction in `payload`, or a thrown Error saying why it is not one. */
export function parseTransaction(payload) {
  if (!isObject(payload)) throw new Error(`invalid type: ${JSON.stringify(payload)}, expected struct Transaction`);
  return {
    id: field(payload, "id", isString, "a string"),
    customer: field(payload, "customer", isString, "a string"),
    amount_cents: field(payload, "amount_cents", isU64, "u64"),
    merchant: field(payload, "merchant", isString, "a string"),
    category: field(payload, "category", isString, "a string"),
    ts: field(payload, "ts", isU64, "u64"),
  };
}

/** The risk score of `tx` given the customer's statistics before it and its category's limit. */
export function risk(tx, prev, limit) {
  let r = 0;
  if (prev !== null) {
    if (prev.count >= 3 && tx.amount_cents > Math.floor(prev.sum_cents / prev.count) * 3) r += 40;
    if (Math.max(0, tx.ts - prev.last_ts) < 10000) r += 30;
  }
  if (tx.amount_cents >= 100000) r += 30;
  if (limit !== null && tx.amount_cents > limit) r += 20;
  return Math.min(r, 100);
}

/** The customer's statistics after `tx`. */
export function updated(prev, tx) {
  const p = prev || { count: 0, sum_cents: 0, max_cents: 0, last_ts: 0 };
  return {
    count: p.count + 1,
    sum_cents: p.sum_cents + tx.amount_cents,
    max_cents: Math.max(p.max_cents, tx.amount_cents),
    last_ts: tx.ts,
  };
}
