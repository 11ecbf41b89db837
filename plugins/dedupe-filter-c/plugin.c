/* dedupe-filter, in C: drops transactions whose id was already seen for the same key.
 *
 * The same plugin as plugins/dedupe-filter (Rust), whose module documentation is the
 * specification: optional config {"ttl_ms": N} (N > 0), map state `seen` (id as UTF-8 key ->
 * the transaction's integer `ts`, or the event's timestamp), the first event of an id emitted
 * unchanged and the later ones dropped.
 *
 * Build: bash scripts/guests/c.sh build plugins/dedupe-filter-c out.wasm */

#include "eddy.h"

static eddy_state seen;

static const char *init(const eddy_json *config) {
    static const char *const fields[] = {"ttl_ms", NULL};
    const char *err = NULL;
    bool has_ttl = false;
    uint64_t ttl_ms = 0;
    const eddy_json *s = eddy_json_as_struct(config, fields, "struct Settings", &err);
    if (!err) err = eddy_json_deny_unknown(s, fields);
    if (!err) err = eddy_json_field_opt_u64(s, "ttl_ms", &has_ttl, &ttl_ms);
    if (err) return eddy_sprintf("invalid plugin config: %s", err);
    seen = eddy_map_state("seen");
    if (has_ttl) {
        if (ttl_ms == 0) return "invalid plugin config: `ttl_ms` must be more than 0";
        eddy_state_set_ttl(&seen, (eddy_ttl){.ttl_ms = ttl_ms});
    }
    return NULL;
}

static void process(const eddy_event *event, eddy_outcome *outcome) {
    static const char *const fields[] = {"id", "ts", NULL};
    const char *err = NULL;
    const char *id = NULL;
    size_t id_len = 0;
    eddy_json *v = eddy_event_json(event, &err);
    const eddy_json *tx = err ? NULL : eddy_json_as_struct(v, fields, "struct Transaction", &err);
    if (!err) err = eddy_json_field_str(tx, "id", &id, &id_len);
    if (err) {
        eddy_reject(outcome,
                    "dedupe-filter: payload is not a JSON object with a string \"id\": %s", err);
        return;
    }

    eddy_bytes key = eddy_key_strn(id, id_len);
    bool known;
    if ((err = eddy_map_contains(&seen, key, &known))) goto state_error;
    if (known) {
        eddy_drop(outcome);
        return;
    }
    uint64_t ts;
    if (!eddy_json_as_u64(eddy_json_get(tx, "ts"), &ts)) ts = event->timestamp_ms;
    if ((err = eddy_map_put(&seen, key, eddy_json_u64(ts)))) goto state_error;
    eddy_emit(outcome, event->payload);
    return;

state_error:
    eddy_reject(outcome, "dedupe-filter: %s", err);
}

EDDY_PLUGIN(.init = init, .process = process)
