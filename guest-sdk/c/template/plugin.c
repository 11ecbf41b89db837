/* {{name}}: an Eddy plugin in C.
 *
 * Counts the events of each key in the value state `count` and emits each payload (a JSON
 * object) with the field `count` added: the key's events so far, this one included.
 *
 * Build:  bash scripts/guests/c.sh build <this directory> {{name}}.wasm
 * Try:    eddy test {{name}}.wasm events.jsonl --dump-state
 * Layer:  guest-sdk/c/eddy.h and guest-sdk/c/README.md */

#include <string.h>

#include "eddy.h"

static eddy_state count;

/* Called once with the pipeline's plugin.config (`{}` when unset). */
static const char *init(const eddy_json *config) {
    count = eddy_value_state("count");
    return NULL;
}

/* Called for every event; keyed state reads and writes this event's key. */
static void process(const eddy_event *event, eddy_outcome *outcome) {
    const char *err = NULL;
    eddy_json *payload = eddy_event_json(event, &err);
    if (!err) err = eddy_json_expect_object(payload, "a JSON object");
    if (err) {
        eddy_reject(outcome, "{{name}}: payload is not a JSON object: %s", err);
        return;
    }

    eddy_json *stored;
    uint64_t n = 0;
    if ((err = eddy_value_get(&count, &stored))) goto state_error;
    if (stored && !eddy_json_as_u64(stored, &n)) {
        err = "cannot decode a value of state `count`: not a u64";
        goto state_error;
    }
    n++;
    if ((err = eddy_value_set(&count, eddy_json_u64(n)))) goto state_error;

    /* The payload's members, then `count`. */
    eddy_writer w = {0};
    eddy_w_object(&w);
    for (size_t i = 0; i < payload->count; i++) {
        const eddy_json_member *m = &payload->members[i];
        if (m->key_len == 5 && memcmp(m->key, "count", 5) == 0) continue; /* replaced below */
        eddy_w_key(&w, m->key);
        eddy_w_json(&w, m->value);
    }
    eddy_w_key(&w, "count");
    eddy_w_u64(&w, n);
    eddy_w_end_object(&w);
    eddy_emit_json(outcome, &w);
    return;

state_error:
    eddy_reject(outcome, "{{name}}: %s", err);
}

EDDY_PLUGIN(.init = init, .process = process)
