// fraud-enrich, in JavaScript: adds per-customer statistics and a risk score to card
// transactions. It behaves exactly like the Rust plugin in plugins/fraud-enrich (whose module
// documentation is the specification) and shares its state: `stats` (value), `recent` (list of
// u64), the broadcast map `category_limits` (string → u64) and the lookups `profiles` and
// `merchants` named by the config.

import {
  BroadcastMap,
  ListState,
  LookupStore,
  Outcome,
  Output,
  ValueState,
  denyUnknownFields,
  isObject,
  isU64,
  exportPlugin,
} from "eddy-sdk";
import { field, isString, parseTransaction, risk, updated } from "./transaction.js";

const RECENT_LEN = 5;

class FraudEnrich {
  init(config) {
    let threshold;
    try {
      denyUnknownFields(config, ["flag_threshold", "profiles", "merchants"]);
      threshold = config.flag_threshold ?? 70;
      if (!isU64(threshold) || threshold > 0xffffffff) throw new Error("`flag_threshold` must be a u32");
      for (const name of ["profiles", "merchants"]) {
        if (config[name] != null && typeof config[name] !== "string") throw new Error(`\`${name}\` must be a string`);
      }
    } catch (e) {
      throw new Error(`invalid plugin config: ${e.message}`);
    }
    this.flagThreshold = threshold;
    this.stats = new ValueState("stats");
    this.recent = new ListState("recent");
    this.limits = new BroadcastMap("category_limits");
    this.profiles = config.profiles != null ? new LookupStore(config.profiles) : null;
    this.merchants = config.merchants != null ? new LookupStore(config.merchants) : null;
  }

  planLookups(event) {
    let tx;
    try {
      tx = parseTransaction(event.json());
    } catch {
      return [];
    }
    const plan = [];
    if (this.profiles) plan.push(this.profiles.request(tx.customer));
    if (this.merchants) plan.push(this.merchants.request(tx.merchant));
    return plan;
  }

  processBroadcast(event) {
    let rule;
    try {
      rule = event.json();
      if (!isObject(rule)) throw new Error("expected struct Rule");
      denyUnknownFields(rule, ["category", "limit_cents", "remove"]);
      field(rule, "category", isString, "a string");
      if (rule.limit_cents != null && !isU64(rule.limit_cents)) throw new Error("`limit_cents` is not a u64");
      if ("remove" in rule && typeof rule.remove !== "boolean") throw new Error("`remove` is not a boolean");
    } catch (e) {
      throw new Error(`fraud-enrich: not a rule: ${e.message}`);
    }
    try {
      if (rule.remove === true) {
        this.limits.delete(rule.category);
      } else if (rule.limit_cents != null) {
        this.limits.set(rule.category, rule.limit_cents);
      } else {
        throw new Error(`rule for \`${rule.category}\` has neither limit_cents nor remove`);
      }
    } catch (e) {
      throw new Error(`fraud-enrich: ${e.message}`);
    }
  }

  process(event) {
    let tx;
    try {
      tx = parseTransaction(event.json());
    } catch (e) {
      return Outcome.reject(`fraud-enrich: payload is not a transaction: ${e.message}`);
    }
    try {
      return this.enrich(tx);
    } catch (e) {
      return Outcome.reject(`fraud-enrich: ${e.message}`);
    }
  }

  enrich(tx) {
    const prev = this.stats.get();
    let recent = this.recent.get();
    recent = recent.slice(Math.max(0, recent.length - RECENT_LEN));
    let limit;
    try {
      limit = this.limits.get(tx.category);
    } catch (e) {
      // As in Rust: a broadcast error is reported as a state storage error.
      throw new Error(`state storage failed: ${e.message}`);
    }
    // A failed lookup throws a LookupError, which `process` turns into `fraud-enrich: <error>`.
    const profile = this.profiles ? this.profiles.getJson(tx.customer) : null;
    const merchantInfo = this.merchants ? this.merchants.getJson(tx.merchant) : null;

    const now = updated(prev, tx);
    const r = risk(tx, prev, limit);
    const enriched = {
      id: tx.id,
      customer: tx.customer,
      amount_cents: tx.amount_cents,
      merchant: tx.merchant,
      category: tx.category,
      ts: tx.ts,
      customer_count: now.count,
      customer_sum_cents: now.sum_cents,
      customer_avg_cents: Math.floor(now.sum_cents / now.count),
      customer_max_cents: now.max_cents,
      previous_ts: prev !== null ? prev.last_ts : null,
      recent_cents: recent,
      category_limit_cents: limit,
      profile,
      merchant_info: merchantInfo,
      risk: r,
      flagged: r >= this.flagThreshold,
    };
    const output = Output.json(enriched).header("Eddy-Risk", String(r));

    this.stats.set(now);
    recent.push(tx.amount_cents);
    this.recent.update(recent.slice(Math.max(0, recent.length - RECENT_LEN)));
    return Outcome.emitOne(output);
  }
}

export const { handler, broadcastHandler, lookupPlanner, keyedVisitor, migrator } =
  exportPlugin(FraudEnrich);
