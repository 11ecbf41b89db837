"""fraud-enrich's own logic in Python, without the host: what an interpreter spends on the
plugin's work for one event, before any host call or binding. The steps of
plugins/fraud-enrich-python, with its own transaction.py (run.sh puts it beside this file):
parse and check the transaction, decode the stats and the recent amounts, compute the risk,
build and encode the output, encode the new state. ``bench()`` returns µs per event. Runs
natively too (run.sh uses that as the baseline)."""

import json
import json.encoder
import json.scanner
import time

from transaction import parse_transaction, risk, updated

# The cheapest calls into CPython's JSON code for compact UTF-8 text, the same the Python layer
# makes: the C scanner and encoder without json.loads' and JSONEncoder.encode's Python frames
# around them, and integers (the list elements) read without JSON.
SCAN = json.scanner.c_make_scanner(json.JSONDecoder())
ENCODE = json.encoder.c_make_encoder({}, None, json.encoder.encode_basestring, None, ":", ",",
                                     False, False, False)


def loads(data):
    value, _ = SCAN(data.decode(), 0)
    return value


def dumps(value):
    return "".join(ENCODE(value, 0)).encode()


def one_event(tx_bytes, stats_bytes, recent_bytes):
    tx = parse_transaction(loads(tx_bytes))
    prev = loads(stats_bytes)
    recent = [int(b) for b in recent_bytes]
    limit = 50000
    now = updated(prev, tx)
    r = risk(tx, prev, limit)
    out = dumps({
        "id": tx["id"], "customer": tx["customer"], "amount_cents": tx["amount_cents"],
        "merchant": tx["merchant"], "category": tx["category"], "ts": tx["ts"],
        "customer_count": now["count"], "customer_sum_cents": now["sum_cents"],
        "customer_avg_cents": now["sum_cents"] // now["count"],
        "customer_max_cents": now["max_cents"], "previous_ts": prev["last_ts"],
        "recent_cents": recent, "category_limit_cents": limit, "profile": None,
        "merchant_info": None, "risk": r, "flagged": r >= 70,
    })
    recent.append(tx["amount_cents"])
    encoded = [dumps(now)] + [str(v).encode() for v in recent[1:]]
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
