"""fraud-enrich's own logic in Python, without the host: what an interpreter spends on the
plugin's work for one event, before any host call or binding. The steps of
plugins/fraud-enrich-python, with its own transaction.py (run.sh puts it beside this file): parse and check the transaction, decode the stats and the recent
amounts, compute the risk, build and encode the output, encode the new state. ``bench()``
returns µs per event. Runs natively too (run.sh uses that as the baseline)."""

import json
import time

from transaction import parse_transaction, risk, updated

ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def one_event(tx_bytes, stats_bytes, recent_bytes):
    tx = parse_transaction(json.loads(tx_bytes))
    prev = json.loads(stats_bytes)
    recent = [json.loads(b) for b in recent_bytes]
    limit = 50000
    now = updated(prev, tx)
    r = risk(tx, prev, limit)
    out = ENCODER.encode({
        "id": tx["id"], "customer": tx["customer"], "amount_cents": tx["amount_cents"],
        "merchant": tx["merchant"], "category": tx["category"], "ts": tx["ts"],
        "customer_count": now["count"], "customer_sum_cents": now["sum_cents"],
        "customer_avg_cents": now["sum_cents"] // now["count"],
        "customer_max_cents": now["max_cents"], "previous_ts": prev["last_ts"],
        "recent_cents": recent, "category_limit_cents": limit, "profile": None,
        "merchant_info": None, "risk": r, "flagged": r >= 70,
    }).encode()
    recent.append(tx["amount_cents"])
    encoded = [ENCODER.encode(now).encode()] + [str(v).encode() for v in recent[1:]]
    return len(out) + len(encoded)


def bench(n=20000):
    tx = b'{"id":"tx-000123","customer":"c-0042","amount_cents":12345,"merchant":"m-007","category":"grocery","ts":1700000123456}'
    stats = b'{"count":12,"sum_cents":456789,"max_cents":99999,"last_ts":1700000000000}'
    recent = [b"1234", b"5678", b"91011", b"1213", b"1415"]
    check = 0
    for _ in range(n // 10):  # warm up
        check += one_event(tx, stats, recent)
    t0 = time.perf_counter()
    for _ in range(n):
        check += one_event(tx, stats, recent)
    t1 = time.perf_counter()
    if check != (n + n // 10) * one_event(tx, stats, recent):
        raise RuntimeError("inconsistent results")
    return (t1 - t0) * 1e6 / n


if __name__ == "__main__":
    print(f"logic: {bench():.2f} us per event")
