/* fraud-enrich, in C: adds per-customer statistics and a risk score to card transactions.
 *
 * The same plugin as plugins/fraud-enrich (Rust), whose module documentation is the
 * specification: config {"flag_threshold", "profiles", "merchants"}, keyed state `stats`
 * (value) and `recent` (list of the last 5 amounts), broadcast map `category_limits` fed by
 * rules {"category", "limit_cents" | "remove"}, lookups of the customer's profile and the
 * merchant's record, and the enriched output with the header `Eddy-Risk`.
 *
 * Build: bash scripts/guests/c.sh build plugins/fraud-enrich-c out.wasm */

#include <string.h>

#include "eddy.h"

#define RECENT_LEN 5

static uint32_t flag_threshold;
static const char *profiles;  /* lookup store names, or NULL */
static const char *merchants;
static eddy_state stats;
static eddy_state recent;
static eddy_broadcast_map limits;

typedef struct {
    const char *id, *customer, *merchant, *category;
    size_t id_len, customer_len, merchant_len, category_len;
    uint64_t amount_cents, ts;
} transaction;

typedef struct {
    uint64_t count, sum_cents, max_cents, last_ts;
} customer_stats;

static const char *init(const eddy_json *config) {
    static const char *const fields[] = {"flag_threshold", "profiles", "merchants", NULL};
    const char *err = NULL;
    const eddy_json *s = eddy_json_as_struct(config, fields, "struct Settings", &err);
    if (!err) err = eddy_json_deny_unknown(s, fields);
    if (!err) err = eddy_json_field_u32_or(s, "flag_threshold", 70, &flag_threshold);
    if (!err) err = eddy_json_field_opt_str(s, "profiles", &profiles);
    if (!err) err = eddy_json_field_opt_str(s, "merchants", &merchants);
    if (err) return eddy_sprintf("invalid plugin config: %s", err);
    stats = eddy_value_state("stats");
    recent = eddy_list_state("recent");
    limits = eddy_broadcast_map_new("category_limits");
    return NULL;
}

/* Reads a transaction from the event's payload: NULL or why it is not one. */
static const char *parse_transaction(eddy_bytes payload, transaction *tx) {
    static const char *const fields[] = {"id",       "customer", "amount_cents",
                                         "merchant", "category", "ts", NULL};
    const char *err = NULL;
    eddy_json *v = eddy_json_parse(payload.ptr, payload.len, &err);
    if (err) return err;
    const eddy_json *o = eddy_json_as_struct(v, fields, "struct Transaction", &err);
    if (!err) err = eddy_json_field_str(o, "id", &tx->id, &tx->id_len);
    if (!err) err = eddy_json_field_str(o, "customer", &tx->customer, &tx->customer_len);
    if (!err) err = eddy_json_field_u64(o, "amount_cents", &tx->amount_cents);
    if (!err) err = eddy_json_field_str(o, "merchant", &tx->merchant, &tx->merchant_len);
    if (!err) err = eddy_json_field_str(o, "category", &tx->category, &tx->category_len);
    if (!err) err = eddy_json_field_u64(o, "ts", &tx->ts);
    return err;
}

static uint64_t sat_add(uint64_t a, uint64_t b) { return a + b < a ? UINT64_MAX : a + b; }
static uint64_t sat_mul3(uint64_t a) { return a > UINT64_MAX / 3 ? UINT64_MAX : a * 3; }

static uint32_t risk(const transaction *tx, const customer_stats *prev, bool has_limit,
                     uint64_t limit) {
    uint32_t r = 0;
    if (prev) {
        if (prev->count >= 3 && tx->amount_cents > sat_mul3(prev->sum_cents / prev->count))
            r += 40;
        uint64_t gap = tx->ts > prev->last_ts ? tx->ts - prev->last_ts : 0;
        if (gap < 10000) r += 30;
    }
    if (tx->amount_cents >= 100000) r += 30;
    if (has_limit && tx->amount_cents > limit) r += 20;
    return r > 100 ? 100 : r;
}

static const char *decode_stats(const eddy_json *v, customer_stats *s) {
    static const char *const fields[] = {"count", "sum_cents", "max_cents", "last_ts", NULL};
    const char *err = NULL;
    const eddy_json *o = eddy_json_as_struct(v, fields, "struct Stats", &err);
    if (!err) err = eddy_json_field_u64(o, "count", &s->count);
    if (!err) err = eddy_json_field_u64(o, "sum_cents", &s->sum_cents);
    if (!err) err = eddy_json_field_u64(o, "max_cents", &s->max_cents);
    if (!err) err = eddy_json_field_u64(o, "last_ts", &s->last_ts);
    return err ? eddy_sprintf("cannot decode a value of state `stats`: %s", err) : NULL;
}

/* The JSON of `key` in store `store` (NULL when no store is configured or no such key). */
static const char *lookup(const char *store, const char *key, size_t key_len, eddy_json **out) {
    *out = NULL;
    if (!store) return NULL;
    return eddy_lookup_json(store, eddy_strndup(key, key_len), out);
}

static void enrich(const transaction *tx, eddy_outcome *outcome) {
    const char *err;
    eddy_json *stats_json;
    if ((err = eddy_value_get(&stats, &stats_json))) goto state_error;
    customer_stats prev_value = {0};
    const customer_stats *prev = NULL;
    if (stats_json) {
        if ((err = decode_stats(stats_json, &prev_value))) goto state_error;
        prev = &prev_value;
    }

    eddy_json **items;
    size_t count;
    if ((err = eddy_list_get(&recent, &items, &count))) goto state_error;
    /* The last RECENT_LEN amounts, and room for one more. */
    uint64_t amounts[RECENT_LEN + 1];
    size_t first = count > RECENT_LEN ? count - RECENT_LEN : 0, n = 0;
    for (size_t i = first; i < count; i++) {
        if (!eddy_json_as_u64(items[i], &amounts[n++])) {
            err = eddy_sprintf("cannot decode a value of state `recent`: invalid type: %s, "
                               "expected u64", eddy_json_kind_name(items[i]));
            goto state_error;
        }
    }

    eddy_json *limit_json;
    uint64_t limit = 0;
    bool has_limit = false;
    err = eddy_broadcast_get(&limits, eddy_key_strn(tx->category, tx->category_len),
                             &limit_json);
    if (!err && limit_json) {
        has_limit = eddy_json_as_u64(limit_json, &limit);
        if (!has_limit)
            err = eddy_sprintf("cannot decode a value of broadcast map `category_limits`: "
                               "invalid type: %s, expected u64",
                               eddy_json_kind_name(limit_json));
    }
    if (err) {
        err = eddy_sprintf("state storage failed: %s", err);
        goto state_error;
    }

    /* Both lookups run; the profile's error wins, as in the Rust plugin. */
    eddy_json *profile, *merchant_info;
    const char *profile_err = lookup(profiles, tx->customer, tx->customer_len, &profile);
    const char *merchant_err = lookup(merchants, tx->merchant, tx->merchant_len, &merchant_info);
    if (profile_err || merchant_err) {
        eddy_reject(outcome, "fraud-enrich: %s", profile_err ? profile_err : merchant_err);
        return;
    }

    customer_stats now = {
        .count = sat_add(prev_value.count, 1),
        .sum_cents = sat_add(prev_value.sum_cents, tx->amount_cents),
        .max_cents = prev_value.max_cents > tx->amount_cents ? prev_value.max_cents
                                                             : tx->amount_cents,
        .last_ts = tx->ts,
    };
    uint32_t score = risk(tx, prev, has_limit, limit);

    eddy_writer w = {0};
    eddy_w_object(&w);
    eddy_w_key(&w, "id"); eddy_w_strn(&w, tx->id, tx->id_len);
    eddy_w_key(&w, "customer"); eddy_w_strn(&w, tx->customer, tx->customer_len);
    eddy_w_key(&w, "amount_cents"); eddy_w_u64(&w, tx->amount_cents);
    eddy_w_key(&w, "merchant"); eddy_w_strn(&w, tx->merchant, tx->merchant_len);
    eddy_w_key(&w, "category"); eddy_w_strn(&w, tx->category, tx->category_len);
    eddy_w_key(&w, "ts"); eddy_w_u64(&w, tx->ts);
    eddy_w_key(&w, "customer_count"); eddy_w_u64(&w, now.count);
    eddy_w_key(&w, "customer_sum_cents"); eddy_w_u64(&w, now.sum_cents);
    eddy_w_key(&w, "customer_avg_cents"); eddy_w_u64(&w, now.sum_cents / now.count);
    eddy_w_key(&w, "customer_max_cents"); eddy_w_u64(&w, now.max_cents);
    eddy_w_key(&w, "previous_ts");
    if (prev) eddy_w_u64(&w, prev->last_ts); else eddy_w_null(&w);
    eddy_w_key(&w, "recent_cents");
    eddy_w_array(&w);
    for (size_t i = 0; i < n; i++) eddy_w_u64(&w, amounts[i]);
    eddy_w_end_array(&w);
    eddy_w_key(&w, "category_limit_cents");
    if (has_limit) eddy_w_u64(&w, limit); else eddy_w_null(&w);
    eddy_w_key(&w, "profile"); eddy_w_json(&w, profile);
    eddy_w_key(&w, "merchant_info"); eddy_w_json(&w, merchant_info);
    eddy_w_key(&w, "risk"); eddy_w_u64(&w, score);
    eddy_w_key(&w, "flagged"); eddy_w_bool(&w, score >= flag_threshold);
    eddy_w_end_object(&w);

    eddy_writer sw = {0};
    eddy_w_object(&sw);
    eddy_w_key(&sw, "count"); eddy_w_u64(&sw, now.count);
    eddy_w_key(&sw, "sum_cents"); eddy_w_u64(&sw, now.sum_cents);
    eddy_w_key(&sw, "max_cents"); eddy_w_u64(&sw, now.max_cents);
    eddy_w_key(&sw, "last_ts"); eddy_w_u64(&sw, now.last_ts);
    eddy_w_end_object(&sw);
    if ((err = eddy_value_set(&stats, eddy_w_bytes(&sw)))) goto state_error;

    amounts[n++] = tx->amount_cents;
    size_t keep = n > RECENT_LEN ? n - RECENT_LEN : 0;
    eddy_bytes values[RECENT_LEN + 1];
    for (size_t i = keep; i < n; i++) values[i - keep] = eddy_json_u64(amounts[i]);
    if ((err = eddy_list_update(&recent, values, n - keep))) goto state_error;

    eddy_output *out = eddy_emit_json(outcome, &w);
    eddy_output_header(out, "Eddy-Risk", eddy_sprintf("%u", score));
    return;

state_error:
    eddy_reject(outcome, "fraud-enrich: %s", err);
}

static void process(const eddy_event *event, eddy_outcome *outcome) {
    transaction tx;
    const char *err = parse_transaction(event->payload, &tx);
    if (err) {
        eddy_reject(outcome, "fraud-enrich: payload is not a transaction: %s", err);
        return;
    }
    enrich(&tx, outcome);
}

static void plan_lookups(const eddy_event *event, eddy_lookup_plan *plan) {
    transaction tx;
    if (parse_transaction(event->payload, &tx)) return;
    if (profiles) eddy_plan_lookup(plan, profiles, eddy_strndup(tx.customer, tx.customer_len));
    if (merchants) eddy_plan_lookup(plan, merchants, eddy_strndup(tx.merchant, tx.merchant_len));
}

static const char *broadcast(const eddy_broadcast_event *event) {
    static const char *const fields[] = {"category", "limit_cents", "remove", NULL};
    const char *err = NULL;
    const char *category = NULL;
    size_t category_len = 0;
    bool has_limit = false, remove = false;
    uint64_t limit = 0;
    const eddy_json *v = eddy_broadcast_event_json(event, &err);
    const eddy_json *o = err ? NULL : eddy_json_as_struct(v, fields, "struct Rule", &err);
    if (!err) err = eddy_json_deny_unknown(o, fields);
    if (!err) err = eddy_json_field_str(o, "category", &category, &category_len);
    if (!err) err = eddy_json_field_opt_u64(o, "limit_cents", &has_limit, &limit);
    if (!err) err = eddy_json_field_opt_bool(o, "remove", &remove);
    if (err) return eddy_sprintf("fraud-enrich: not a rule: %s", err);

    eddy_bytes key = eddy_key_strn(category, category_len);
    if (remove) err = eddy_broadcast_remove(&limits, key);
    else if (has_limit) err = eddy_broadcast_put(&limits, key, eddy_json_u64(limit));
    else
        return eddy_sprintf("fraud-enrich: rule for `%s` has neither limit_cents nor remove",
                            category);
    return err ? eddy_sprintf("fraud-enrich: %s", err) : NULL;
}

EDDY_PLUGIN(.init = init, .process = process, .broadcast = broadcast,
            .plan_lookups = plan_lookups)
