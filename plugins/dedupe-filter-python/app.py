"""dedupe-filter, in Python: drops transactions whose id was already seen for the same key.

It behaves exactly like the Rust plugin in plugins/dedupe-filter (whose module documentation is
the specification) and shares its state: the map state ``seen`` (transaction id as UTF-8 map
key → the transaction's ``ts``), with an optional TTL from the config's ``ttl_ms``.
"""

import json

import eddy
from eddy import KeyType, MapState, Outcome, Output, Ttl, deny_unknown_fields, is_u64


class DedupeFilter:
    def init(self, config):
        try:
            deny_unknown_fields(config, ["ttl_ms"])
            ttl_ms = config.get("ttl_ms")
            if ttl_ms is not None and not is_u64(ttl_ms):
                raise ValueError("`ttl_ms` must be a u64")
            if ttl_ms == 0:
                raise ValueError("`ttl_ms` must be more than 0")
        except ValueError as e:
            raise ValueError(f"invalid plugin config: {e}") from None
        self.seen = MapState("seen", key_type=KeyType.STRING, ttl=Ttl(ttl_ms) if ttl_ms is not None else None)

    # No process_broadcast: the layer rejects broadcast events as the Rust SDK's default does.

    def process(self, event):
        try:
            payload = event.json()
            if not isinstance(payload, dict):
                raise ValueError(f"invalid type: {json.dumps(payload)}, expected struct Transaction")
            if "id" not in payload:
                raise ValueError("missing field `id`")
            if not isinstance(payload["id"], str):
                raise ValueError(f"invalid type: {json.dumps(payload['id'])}, expected a string")
        except ValueError as e:
            return Outcome.reject(f'dedupe-filter: payload is not a JSON object with a string "id": {e}')
        tx_id, ts = payload["id"], payload.get("ts")
        try:
            if tx_id in self.seen:
                return Outcome.drop()
            self.seen.put(tx_id, ts if is_u64(ts) else event.timestamp_ms)
            return Outcome.emit_one(Output(event.payload))
        except eddy.StateError as e:
            return Outcome.reject(f"dedupe-filter: {e}")


Handler, BroadcastHandler, LookupPlanner, KeyedVisitor, Migrator = eddy.export(DedupeFilter)
