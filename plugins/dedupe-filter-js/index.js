// dedupe-filter, in JavaScript: drops transactions whose id was already seen for the same key.
// It behaves exactly like the Rust plugin in plugins/dedupe-filter (whose module documentation
// is the specification) and shares its state: the map state `seen` (transaction id as UTF-8
// map key → the transaction's `ts`), with an optional TTL from the config's `ttl_ms`.

import { MapState, Outcome, Output, denyUnknownFields, isObject, isU64, ttl, exportPlugin } from "eddy-sdk";

class DedupeFilter {
  init(config) {
    let ttlMs;
    try {
      denyUnknownFields(config, ["ttl_ms"]);
      ttlMs = config.ttl_ms ?? null;
      if (ttlMs !== null && !isU64(ttlMs)) throw new Error("`ttl_ms` must be a u64");
      if (ttlMs === 0) throw new Error("`ttl_ms` must be more than 0");
    } catch (e) {
      throw new Error(`invalid plugin config: ${e.message}`);
    }
    this.seen = new MapState("seen", { keyType: "string", ttl: ttlMs !== null ? ttl(ttlMs) : null });
  }

  // No processBroadcast: the layer rejects broadcast events as the Rust SDK's default does.

  process(event) {
    let id, ts;
    try {
      const payload = event.json();
      if (!isObject(payload)) throw new Error(`invalid type: ${JSON.stringify(payload)}, expected struct Transaction`);
      if (!("id" in payload)) throw new Error("missing field `id`");
      if (typeof payload.id !== "string") throw new Error(`invalid type: ${JSON.stringify(payload.id)}, expected a string`);
      id = payload.id;
      ts = payload.ts;
    } catch (e) {
      return Outcome.reject(`dedupe-filter: payload is not a JSON object with a string "id": ${e.message}`);
    }
    try {
      if (this.seen.has(id)) return Outcome.drop();
      this.seen.set(id, isU64(ts) ? ts : event.timestampMs);
      return Outcome.emitOne(new Output(event.payload));
    } catch (e) {
      return Outcome.reject(`dedupe-filter: ${e.message}`);
    }
  }
}

export const { handler, broadcastHandler, lookupPlanner, keyedVisitor, migrator } =
  exportPlugin(DedupeFilter);
