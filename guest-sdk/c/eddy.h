/* eddy.h: write Eddy stream-processing plugins in C.
 *
 * A plugin defines its entry points with EDDY_PLUGIN(...) and this layer (eddy.c, eddy_json.c
 * and the bindings `wit-bindgen c` generates from wit/eddy.wit) exports the `packed-processor`
 * world (`full-processor` plus the packed crossing of keyed batches): it runs the batch loop, points keyed state at the event being processed and supplies
 * the optional exports a plugin leaves out. See README.md beside this file.
 *
 * Memory: everything this API returns (parsed JSON, strings, state values, writer buffers) is
 * allocated in an arena that is emptied after each event (and after each other export call).
 * Nothing needs freeing. What `init` allocates through this API lives for the whole instance,
 * so keep configuration there. Keep your own copies (malloc) of anything else that must
 * outlive an event.
 *
 * Errors: functions that can fail return `const char *`: NULL on success, otherwise a message
 * (in the arena) worded like the Rust SDK's. */
#ifndef EDDY_H
#define EDDY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- memory ------------------------------------------------------------------------------ */

/* Arena memory, freed after the current event (or for the life of the instance inside init). */
void *eddy_alloc(size_t size);
/* A NUL-terminated copy of the n bytes at s, in the arena. */
char *eddy_strndup(const char *s, size_t n);
/* printf into the arena: %s %.*s %c %% and d i u x (with h hh l ll z j); no floats. The C
 * library's printf family would link WASI file imports (see README). */
char *eddy_sprintf(const char *format, ...) __attribute__((format(printf, 1, 2)));
char *eddy_vsprintf(const char *format, __builtin_va_list ap);

/* A byte string (not NUL-terminated unless said so). */
typedef struct {
    const uint8_t *ptr;
    size_t len;
} eddy_bytes;

eddy_bytes eddy_bytes_of(const char *s); /* the bytes of a C string, without the NUL */

/* ---- JSON -------------------------------------------------------------------------------- */

typedef enum {
    EDDY_JSON_NULL,
    EDDY_JSON_BOOL,
    EDDY_JSON_NUMBER,
    EDDY_JSON_STRING,
    EDDY_JSON_ARRAY,
    EDDY_JSON_OBJECT,
} eddy_json_kind;

typedef struct eddy_json eddy_json;
typedef struct {
    const char *key; /* NUL-terminated; key_len counts the bytes (keys may hold \u0000) */
    size_t key_len;
    eddy_json *value;
} eddy_json_member;

struct eddy_json {
    eddy_json_kind kind;
    bool boolean;          /* BOOL */
    bool is_u64, is_i64;   /* NUMBER: an integer literal that fits in u64 / i64 */
    uint64_t u64;
    int64_t i64;
    const char *str;       /* STRING: decoded, NUL-terminated; NUMBER: its text */
    size_t len;            /* length of str in bytes */
    size_t count;          /* ARRAY items / OBJECT members */
    eddy_json **items;
    eddy_json_member *members; /* in document order */
};

/* Parses JSON text (RFC 8259). NULL and *error set (if error is not NULL) when it is not. */
eddy_json *eddy_json_parse(const void *text, size_t len, const char **error);
/* The member `key` of an object (the last one if repeated), or NULL. */
const eddy_json *eddy_json_get(const eddy_json *object, const char *key);
/* Item `index` of an array, or NULL. */
const eddy_json *eddy_json_at(const eddy_json *array, size_t index);
bool eddy_json_is_null(const eddy_json *v); /* NULL pointers count as null */
/* Conversions: false unless v has that type (integers only from integer literals in range;
 * like serde_json, 1.0 is not a u64). Other numbers: parse v->str yourself (strtod links
 * stdio, see README). */
bool eddy_json_as_u64(const eddy_json *v, uint64_t *out);
bool eddy_json_as_i64(const eddy_json *v, int64_t *out);
bool eddy_json_as_bool(const eddy_json *v, bool *out);
const char *eddy_json_as_str(const eddy_json *v, size_t *len);
const char *eddy_json_kind_name(const eddy_json *v);

/* Struct-like decoding with serde-style messages (`missing field `x``, `invalid type: ...`). */
const char *eddy_json_expect_object(const eddy_json *v, const char *what);
/* A struct's view of v: an object as it is, or an array (serde also accepts structs as arrays
 * of their fields in order) turned into an object with the names in `fields`
 * (NULL-terminated). NULL and *error set for anything else, or if a field is repeated. */
const eddy_json *eddy_json_as_struct(const eddy_json *v, const char *const *fields,
                                     const char *what, const char **error);
/* *len (if not NULL) gets the length: strings may hold \u0000. */
const char *eddy_json_field_str(const eddy_json *object, const char *field, const char **out,
                                size_t *len);
const char *eddy_json_field_u64(const eddy_json *object, const char *field, uint64_t *out);
/* Optional fields: absent or null leave *present false / *out NULL / *out unchanged. */
const char *eddy_json_field_opt_u64(const eddy_json *object, const char *field, bool *present,
                                    uint64_t *out);
const char *eddy_json_field_opt_str(const eddy_json *object, const char *field,
                                    const char **out);
/* Like field_u64 for a u32, with a default when absent (null is an error, as in serde). */
const char *eddy_json_field_u32_or(const eddy_json *object, const char *field, uint32_t dflt,
                                   uint32_t *out);
const char *eddy_json_field_opt_bool(const eddy_json *object, const char *field, bool *out);
/* An error naming the first member not in the NULL-terminated list `fields`. */
const char *eddy_json_deny_unknown(const eddy_json *object, const char *const *fields);

/* Compact JSON writer (serde_json's format and escaping). Zero-initialise, then call. */
#define EDDY_WRITER_INLINE_DEPTH 64
typedef struct {
    char *data;
    size_t len, cap;
    int depth;
    bool after_key;
    /* Whether each open container has an item yet: inline for the first levels, then in
     * `deeper` (grown from the arena), so any depth is written correctly. */
    bool has_item[EDDY_WRITER_INLINE_DEPTH];
    bool *deeper;
    size_t deeper_cap;
} eddy_writer;

void eddy_w_object(eddy_writer *w);
void eddy_w_end_object(eddy_writer *w);
void eddy_w_array(eddy_writer *w);
void eddy_w_end_array(eddy_writer *w);
void eddy_w_keyn(eddy_writer *w, const char *key, size_t n);
/* Inline, so that a literal key's length is known when compiling. */
static inline void eddy_w_key(eddy_writer *w, const char *key) {
    eddy_w_keyn(w, key, __builtin_strlen(key));
}
void eddy_w_str(eddy_writer *w, const char *s);
void eddy_w_strn(eddy_writer *w, const char *s, size_t n);
void eddy_w_u64(eddy_writer *w, uint64_t v);
void eddy_w_i64(eddy_writer *w, int64_t v);
void eddy_w_bool(eddy_writer *w, bool v);
void eddy_w_null(eddy_writer *w);
void eddy_w_json(eddy_writer *w, const eddy_json *v); /* NULL writes null */
void eddy_w_raw(eddy_writer *w, const char *s, size_t n); /* bytes as they are */
eddy_bytes eddy_w_bytes(const eddy_writer *w);
char *eddy_w_cstr(eddy_writer *w);
eddy_bytes eddy_json_encode(const eddy_json *v);

/* ---- events and outcomes ----------------------------------------------------------------- */

typedef struct {
    const char *name, *value; /* NUL-terminated */
} eddy_header;

typedef struct {
    eddy_bytes key;
    const char *subject;
    const eddy_header *headers;
    size_t header_count;
    eddy_bytes payload;
    uint64_t timestamp_ms;
    uint64_t sequence;
} eddy_event;

/* The first header called `name`, or NULL. */
const char *eddy_event_header(const eddy_event *event, const char *name);
/* The payload parsed as JSON, or NULL with *error set. */
eddy_json *eddy_event_json(const eddy_event *event, const char **error);

typedef struct eddy_outcome eddy_outcome;
typedef struct eddy_output eddy_output;

/* What becomes of the event. An outcome nobody sets is `drop`. Calling emit several times
 * publishes several messages; reject or drop discards outputs added before. */
eddy_output *eddy_emit(eddy_outcome *outcome, eddy_bytes payload);
eddy_output *eddy_emit_json(eddy_outcome *outcome, const eddy_writer *json);
void eddy_output_header(eddy_output *output, const char *name, const char *value);
void eddy_output_subject(eddy_output *output, const char *subject);
void eddy_drop(eddy_outcome *outcome);
void eddy_reject(eddy_outcome *outcome, const char *format, ...)
    __attribute__((format(printf, 2, 3)));

/* ---- keyed state ------------------------------------------------------------------------- */

typedef enum { EDDY_VALUE, EDDY_MAP, EDDY_LIST } eddy_state_kind;

/* Flink-style TTL: entries expire `ttl_ms` after their last write (or read, with
 * update_on_read); return_expired lets an expired entry not cleaned up yet be read once. */
typedef struct {
    uint64_t ttl_ms;
    bool update_on_read;
    bool return_expired;
} eddy_ttl;

/* A handle to a keyed state. Create it in init; it is opened in the host on first use. */
typedef struct {
    const char *name;
    eddy_state_kind kind;
    bool has_ttl;
    eddy_ttl ttl;
    bool opened;
    uint32_t id;
    /* Whether value and list calls go through the batch: 0 not asked yet, 1 yes, 2 no. */
    uint8_t batch;
} eddy_state;

eddy_state eddy_value_state(const char *name);
eddy_state eddy_map_state(const char *name);
eddy_state eddy_list_state(const char *name);
/* Sets the TTL (before first use). */
void eddy_state_set_ttl(eddy_state *state, eddy_ttl ttl);
/* Opens it now, to fail init early if the name exists with another kind. */
const char *eddy_state_open(eddy_state *state);
/* Asks the host to visit every entry (only from broadcast or migrate hooks). */
const char *eddy_state_visit_all_keys(eddy_state *state, const char *tag);

/* Values are JSON: reads parse it (*out NULL when absent), writes take JSON text. */
const char *eddy_value_get(eddy_state *state, eddy_json **out);
const char *eddy_value_set(eddy_state *state, eddy_bytes json);
const char *eddy_value_set_with_ttl(eddy_state *state, eddy_bytes json, uint64_t ttl_ms);
const char *eddy_value_clear(eddy_state *state);

/* Map keys: encode them with the helpers below so every language orders and reads them alike:
 * strings as UTF-8 bytes, u32/u64 big-endian, i32/i64 big-endian with the sign bit flipped. */
eddy_bytes eddy_key_str(const char *s);
eddy_bytes eddy_key_strn(const char *s, size_t len);
eddy_bytes eddy_key_u32(uint32_t v);
eddy_bytes eddy_key_u64(uint64_t v);
eddy_bytes eddy_key_i32(int32_t v);
eddy_bytes eddy_key_i64(int64_t v);
const char *eddy_key_to_u64(eddy_bytes key, uint64_t *out); /* error if not 8 bytes */
const char *eddy_key_to_i64(eddy_bytes key, int64_t *out);

typedef struct {
    eddy_bytes key;
    eddy_json *value;
} eddy_map_entry;

const char *eddy_map_get(eddy_state *state, eddy_bytes key, eddy_json **out);
const char *eddy_map_put(eddy_state *state, eddy_bytes key, eddy_bytes json);
const char *eddy_map_put_with_ttl(eddy_state *state, eddy_bytes key, eddy_bytes json,
                                  uint64_t ttl_ms);
const char *eddy_map_remove(eddy_state *state, eddy_bytes key);
const char *eddy_map_contains(eddy_state *state, eddy_bytes key, bool *out);
/* Up to `limit` entries in key order after `start_after` (NULL: from the first). Page by
 * passing the last key returned. */
const char *eddy_map_entries(eddy_state *state, const eddy_bytes *start_after, uint32_t limit,
                             eddy_map_entry **entries, size_t *count);
const char *eddy_map_is_empty(eddy_state *state, bool *out);
const char *eddy_map_clear(eddy_state *state);

const char *eddy_list_get(eddy_state *state, eddy_json ***items, size_t *count);
const char *eddy_list_add(eddy_state *state, eddy_bytes json);
const char *eddy_list_add_all(eddy_state *state, const eddy_bytes *values, size_t count);
const char *eddy_list_update(eddy_state *state, const eddy_bytes *values, size_t count);
const char *eddy_list_clear(eddy_state *state);

/* Convenience for integer values. */
eddy_bytes eddy_json_u64(uint64_t v);

/* ---- broadcast state --------------------------------------------------------------------- */

typedef struct {
    const char *name;
    bool opened;
    uint32_t id;
} eddy_broadcast_map;

typedef struct {
    const char *input, *subject;
    const eddy_header *headers;
    size_t header_count;
    eddy_bytes payload;
    uint64_t timestamp_ms, sequence;
} eddy_broadcast_event;

eddy_broadcast_map eddy_broadcast_map_new(const char *name);
const char *eddy_broadcast_get(eddy_broadcast_map *map, eddy_bytes key, eddy_json **out);
/* Writes only work from the broadcast hook. */
const char *eddy_broadcast_put(eddy_broadcast_map *map, eddy_bytes key, eddy_bytes json);
const char *eddy_broadcast_remove(eddy_broadcast_map *map, eddy_bytes key);
const char *eddy_broadcast_clear(eddy_broadcast_map *map);
const char *eddy_broadcast_entries(eddy_broadcast_map *map, const eddy_bytes *start_after,
                                   uint32_t limit, eddy_map_entry **entries, size_t *count);
eddy_json *eddy_broadcast_event_json(const eddy_broadcast_event *event, const char **error);

/* ---- lookups ----------------------------------------------------------------------------- */

/* The raw value of `key` in `store` (*found false if the store has no such key). */
const char *eddy_lookup(const char *store, const char *key, eddy_bytes *out, bool *found);
/* The same, parsed as JSON (*out NULL if absent). */
const char *eddy_lookup_json(const char *store, const char *key, eddy_json **out);

typedef struct eddy_lookup_plan eddy_lookup_plan;
/* Declares, from the plan hook, a lookup the event will make. */
void eddy_plan_lookup(eddy_lookup_plan *plan, const char *store, const char *key);

/* ---- log and clock ----------------------------------------------------------------------- */

typedef enum { EDDY_TRACE, EDDY_DEBUG, EDDY_INFO, EDDY_WARN, EDDY_ERROR } eddy_log_level;
void eddy_log(eddy_log_level level, const char *format, ...)
    __attribute__((format(printf, 2, 3)));
uint64_t eddy_now_ms(void);

/* ---- visits ------------------------------------------------------------------------------ */

typedef struct {
    eddy_bytes key;
    bool has_map_key;
    eddy_bytes map_key;
    eddy_bytes value;
} eddy_visited_entry;

typedef enum { EDDY_VISIT_KEEP, EDDY_VISIT_SET, EDDY_VISIT_REMOVE } eddy_visit_action;

/* ---- the plugin -------------------------------------------------------------------------- */

typedef struct {
    /* Called once with the pipeline's plugin.config (parsed; `{}` when empty). Returns NULL
     * or an error message, shown to the operator. Open state handles here. */
    const char *(*init)(const eddy_json *config);
    /* One event: set the outcome. Keyed state acts on this event's key. */
    void (*process)(const eddy_event *event, eddy_outcome *outcome);
    /* Optional: a broadcast event; NULL or an error (dead-letters it). Default: reject all. */
    const char *(*broadcast)(const eddy_broadcast_event *event);
    /* Optional: the lookups `process` will make for the event. Default: none. */
    void (*plan_lookups)(const eddy_event *event, eddy_lookup_plan *plan);
    /* Optional: one visited entry; for EDDY_VISIT_SET fill *new_value. Default: keep. */
    eddy_visit_action (*visit)(const char *tag, const char *state,
                               const eddy_visited_entry *entry, eddy_bytes *new_value);
    /* Optional: runs when this version replaces another. Default: ok. */
    const char *(*migrate)(const char *previous_version);
} eddy_plugin;

/* Defines the plugin: EDDY_PLUGIN(.init = my_init, .process = my_process). Use once. */
#define EDDY_PLUGIN(...) const eddy_plugin eddy_the_plugin = {__VA_ARGS__};

#ifdef __cplusplus
}
#endif

#endif
