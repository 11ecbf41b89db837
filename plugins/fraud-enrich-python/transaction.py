"""fraud-enrich's own logic, apart from the host: the transaction's checks, the risk score and
the statistics. No import of the layer, so that tests/benches/guest-engines can run it in a
component and natively to measure what the logic alone costs."""

import json


def is_u64(v):
    """Whether ``v`` is a JSON integer that fits a u64 (as the layer's ``is_u64``)."""
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**64


def field(obj, name, check, expected):
    """``obj[name]`` if present and accepted by ``check``; the error reads like serde's."""
    if name not in obj:
        raise ValueError(f"missing field `{name}`")
    v = obj[name]
    if not check(v):
        raise ValueError(f"invalid type for `{name}`: {json.dumps(v)}, expected {expected}")
    return v


def is_str(v):
    return isinstance(v, str)


def parse_transaction(payload):
    """The transaction in ``payload`` (a dict), or ValueError saying why it is not one."""
    if not isinstance(payload, dict):
        raise ValueError(f"invalid type: {json.dumps(payload)}, expected struct Transaction")
    return {
        "id": field(payload, "id", is_str, "a string"),
        "customer": field(payload, "customer", is_str, "a string"),
        "amount_cents": field(payload, "amount_cents", is_u64, "u64"),
        "merchant": field(payload, "merchant", is_str, "a string"),
        "category": field(payload, "category", is_str, "a string"),
        "ts": field(payload, "ts", is_u64, "u64"),
    }


def risk(tx, prev, limit):
    """The risk score of ``tx`` given the customer's statistics before it and the limit."""
    r = 0
    if prev is not None:
        if prev["count"] >= 3 and tx["amount_cents"] > (prev["sum_cents"] // prev["count"]) * 3:
            r += 40
        if max(0, tx["ts"] - prev["last_ts"]) < 10_000:
            r += 30
    if tx["amount_cents"] >= 100_000:
        r += 30
    if limit is not None and tx["amount_cents"] > limit:
        r += 20
    return min(r, 100)


def updated(prev, tx):
    """The customer's statistics after ``tx``."""
    p = prev or {"count": 0, "sum_cents": 0, "max_cents": 0, "last_ts": 0}
    return {
        "count": p["count"] + 1,
        "sum_cents": p["sum_cents"] + tx["amount_cents"],
        "max_cents": max(p["max_cents"], tx["amount_cents"]),
        "last_ts": tx["ts"],
    }
