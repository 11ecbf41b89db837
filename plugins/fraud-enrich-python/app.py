"""fraud-enrich, in Python: adds per-customer statistics and a risk score to card transactions.

It behaves exactly like the Rust plugin in plugins/fraud-enrich (whose module documentation is
the specification) and shares its state: ``stats`` (value), ``recent`` (list of u64), the
broadcast map ``category_limits`` (string → u64) and the lookups ``profiles`` and ``merchants``
named by the config.
"""

import eddy
from eddy import (BroadcastMap, ListState, LookupStore, Outcome, Output, ValueState,
                  deny_unknown_fields, is_u64)
from transaction import field, is_str, parse_transaction, risk, updated

RECENT_LEN = 5


class FraudEnrich:
    def init(self, config):
        try:
            deny_unknown_fields(config, ["flag_threshold", "profiles", "merchants"])
            threshold = config.get("flag_threshold", 70)
            if not is_u64(threshold) or threshold > 0xFFFFFFFF:
                raise ValueError("`flag_threshold` must be a u32")
            for name in ("profiles", "merchants"):
                if config.get(name) is not None and not isinstance(config[name], str):
                    raise ValueError(f"`{name}` must be a string")
        except ValueError as e:
            raise ValueError(f"invalid plugin config: {e}") from None
        self.flag_threshold = threshold
        self.stats = ValueState("stats")
        self.recent = ListState("recent")
        self.limits = BroadcastMap("category_limits")
        self.profiles = LookupStore(config["profiles"]) if config.get("profiles") is not None else None
        self.merchants = LookupStore(config["merchants"]) if config.get("merchants") is not None else None

    def plan_lookups(self, event):
        try:
            tx = parse_transaction(event.json())
        except ValueError:
            return []
        plan = []
        if self.profiles:
            plan.append(self.profiles.request(tx["customer"]))
        if self.merchants:
            plan.append(self.merchants.request(tx["merchant"]))
        return plan

    def process_broadcast(self, event):
        try:
            rule = event.json()
            if not isinstance(rule, dict):
                raise ValueError("expected struct Rule")
            deny_unknown_fields(rule, ["category", "limit_cents", "remove"])
            field(rule, "category", is_str, "a string")
            if rule.get("limit_cents") is not None and not is_u64(rule["limit_cents"]):
                raise ValueError("`limit_cents` is not a u64")
            if "remove" in rule and not isinstance(rule["remove"], bool):
                raise ValueError("`remove` is not a boolean")
        except ValueError as e:
            raise ValueError(f"fraud-enrich: not a rule: {e}") from None
        try:
            if rule.get("remove") is True:
                self.limits.remove(rule["category"])
            elif rule.get("limit_cents") is not None:
                self.limits.put(rule["category"], rule["limit_cents"])
            else:
                raise ValueError(f"rule for `{rule['category']}` has neither limit_cents nor remove")
        except (ValueError, eddy.BroadcastError) as e:
            raise ValueError(f"fraud-enrich: {e}") from None

    def process(self, event):
        try:
            tx = parse_transaction(event.json())
        except ValueError as e:
            return Outcome.reject(f"fraud-enrich: payload is not a transaction: {e}")
        try:
            return self.enrich(tx)
        except (eddy.StateError, eddy.LookupStoreError) as e:
            return Outcome.reject(f"fraud-enrich: {e}")

    def enrich(self, tx):
        prev = self.stats.get()
        recent = self.recent.get()[-RECENT_LEN:]
        try:
            limit = self.limits.get(tx["category"])
        except eddy.BroadcastError as e:
            # As in Rust: a broadcast error is reported as a state storage error.
            raise eddy.StateError(eddy.StateError.Kind.STORAGE, str(e)) from None
        # A failed lookup raises LookupStoreError; `process` turns it into `fraud-enrich: <error>`.
        profile = self.profiles.get_json(tx["customer"]) if self.profiles else None
        merchant_info = self.merchants.get_json(tx["merchant"]) if self.merchants else None

        now = updated(prev, tx)
        r = risk(tx, prev, limit)
        enriched = {
            "id": tx["id"],
            "customer": tx["customer"],
            "amount_cents": tx["amount_cents"],
            "merchant": tx["merchant"],
            "category": tx["category"],
            "ts": tx["ts"],
            "customer_count": now["count"],
            "customer_sum_cents": now["sum_cents"],
            "customer_avg_cents": now["sum_cents"] // now["count"],
            "customer_max_cents": now["max_cents"],
            "previous_ts": prev["last_ts"] if prev is not None else None,
            "recent_cents": recent,
            "category_limit_cents": limit,
            "profile": profile,
            "merchant_info": merchant_info,
            "risk": r,
            "flagged": r >= self.flag_threshold,
        }
        output = Output.json(enriched).header("Eddy-Risk", r)

        self.stats.set(now)
        self.recent.update((recent + [tx["amount_cents"]])[-RECENT_LEN:])
        return Outcome.emit_one(output)


Handler, BroadcastHandler, LookupPlanner, KeyedVisitor, Migrator = eddy.export(FraudEnrich)
