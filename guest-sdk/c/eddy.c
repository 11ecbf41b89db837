/* eddy.c: the runtime of the C layer. Implements the exports of the `full-processor` world on
 * top of the plugin's EDDY_PLUGIN(...) definition, and wraps the imports (keyed state,
 * broadcast state, lookups, log, clock) behind eddy.h.
 *
 * Ownership follows `wit-bindgen c`: export arguments belong to the export (freed here), export
 * results are freed by the generated post-return functions with free(), import results belong
 * to the caller (registered here to be freed when the arena is emptied). */

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "eddy.h"
#include "packed_processor.h"

extern const eddy_plugin eddy_the_plugin;

/* ------------------------------------------------------------------------------------------ */
/* Memory: a bump arena emptied after each event and export call, plus pointers to free(). */

typedef struct chunk {
    struct chunk *next;
    size_t size, used;
    _Alignas(16) unsigned char data[];
} chunk;

typedef struct {
    chunk *head;
    void **frees;
    size_t nfrees, capfrees;
} arena;

static arena scratch, permanent;
static arena *current = &scratch;

#define CHUNK_SIZE (64 * 1024)

static void *oom(void) {
    abort();
}

void *eddy_alloc(size_t size) {
    size = (size + 15) & ~(size_t)15;
    chunk *c = current->head;
    if (!c || c->size - c->used < size) {
        size_t want = size > CHUNK_SIZE ? size : CHUNK_SIZE;
        chunk *n = malloc(sizeof(chunk) + want);
        if (!n) return oom();
        n->size = want;
        n->used = 0;
        /* A big allocation gets its own chunk behind the current one, which stays in use. */
        if (c && size > CHUNK_SIZE) {
            n->next = c->next;
            c->next = n;
        } else {
            n->next = c;
            current->head = n;
        }
        c = n;
    }
    void *p = c->data + c->used;
    c->used += size;
    return p;
}

/* Frees p when the current arena is emptied. */
static void defer_free(void *p) {
    if (!p) return;
    arena *a = current;
    if (a->nfrees == a->capfrees) {
        a->capfrees = a->capfrees ? a->capfrees * 2 : 64;
        a->frees = realloc(a->frees, a->capfrees * sizeof(void *));
        if (!a->frees) oom();
    }
    a->frees[a->nfrees++] = p;
}

/* Empties the scratch arena, keeping one chunk for the next event. */
static void reset_scratch(void) {
    for (size_t i = 0; i < scratch.nfrees; i++) free(scratch.frees[i]);
    scratch.nfrees = 0;
    chunk *c = scratch.head;
    if (!c) return;
    chunk *rest = c->next;
    while (rest) {
        chunk *next = rest->next;
        free(rest);
        rest = next;
    }
    if (c->size > CHUNK_SIZE) {
        free(c);
        scratch.head = NULL;
    } else {
        c->next = NULL;
        c->used = 0;
    }
}

char *eddy_strndup(const char *s, size_t n) {
    char *p = eddy_alloc(n + 1);
    if (n) memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

/* A small printf (no stdio: wasi-libc's vfprintf would link file-descriptor imports, which a
 * component without the WASI adapter cannot have). Supports %s %.*s %c %% and the integer
 * conversions d i u x with the length modifiers h hh l ll z j; flags and widths are ignored. */
typedef struct {
    char *buf;
    size_t len, cap;
} fmtbuf;

static void fmt_put(fmtbuf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 128;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = eddy_alloc(cap);
        if (b->len) memcpy(p, b->buf, b->len);
        b->buf = p;
        b->cap = cap;
    }
    memcpy(b->buf + b->len, s, n);
    b->len += n;
    b->buf[b->len] = '\0';
}

static void fmt_uint(fmtbuf *b, uint64_t v, unsigned base, bool negative) {
    char tmp[24];
    size_t i = sizeof tmp;
    do {
        tmp[--i] = "0123456789abcdef"[v % base];
        v /= base;
    } while (v);
    if (negative) tmp[--i] = '-';
    fmt_put(b, tmp + i, sizeof tmp - i);
}

char *eddy_vsprintf(const char *format, va_list ap) {
    fmtbuf b = {0};
    fmt_put(&b, "", 0);
    for (const char *p = format; *p; p++) {
        if (*p != '%') {
            const char *q = p;
            while (*q && *q != '%') q++;
            fmt_put(&b, p, (size_t)(q - p));
            p = q - 1;
            continue;
        }
        p++;
        while (*p == '-' || *p == '+' || *p == ' ' || *p == '#' || *p == '0') p++;
        while (*p >= '0' && *p <= '9') p++;
        int precision = -1;
        if (*p == '.') {
            p++;
            if (*p == '*') {
                precision = va_arg(ap, int);
                p++;
            } else {
                precision = 0;
                while (*p >= '0' && *p <= '9') precision = precision * 10 + (*p++ - '0');
            }
        }
        int size = 0; /* 0 int, 1 long, 2 long long, 3 size_t, 4 intmax_t */
        if (*p == 'h') { p++; if (*p == 'h') p++; }
        else if (*p == 'l') { p++; size = 1; if (*p == 'l') { p++; size = 2; } }
        else if (*p == 'z') { p++; size = 3; }
        else if (*p == 'j') { p++; size = 4; }
        switch (*p) {
        case 's': {
            const char *s = va_arg(ap, const char *);
            if (!s) s = "(null)";
            size_t n = strlen(s);
            if (precision >= 0 && (size_t)precision < n) n = (size_t)precision;
            fmt_put(&b, s, n);
            break;
        }
        case 'c': {
            char c = (char)va_arg(ap, int);
            fmt_put(&b, &c, 1);
            break;
        }
        case 'd':
        case 'i': {
            int64_t v = size == 0 ? va_arg(ap, int)
                        : size == 1 ? va_arg(ap, long)
                        : size == 2 ? va_arg(ap, long long)
                        : size == 3 ? (int64_t)va_arg(ap, size_t)
                                    : va_arg(ap, intmax_t);
            fmt_uint(&b, v < 0 ? 0 - (uint64_t)v : (uint64_t)v, 10, v < 0);
            break;
        }
        case 'u':
        case 'x': {
            uint64_t v = size == 0 ? va_arg(ap, unsigned)
                         : size == 1 ? va_arg(ap, unsigned long)
                         : size == 2 ? va_arg(ap, unsigned long long)
                         : size == 3 ? va_arg(ap, size_t)
                                     : va_arg(ap, uintmax_t);
            fmt_uint(&b, v, *p == 'x' ? 16 : 10, false);
            break;
        }
        case '%': fmt_put(&b, "%", 1); break;
        case '\0': p--; break;
        default: fmt_put(&b, p - 1, 2); break;
        }
    }
    return b.buf;
}

char *eddy_sprintf(const char *format, ...) {
    va_list ap;
    va_start(ap, format);
    char *s = eddy_vsprintf(format, ap);
    va_end(ap);
    return s;
}

eddy_bytes eddy_bytes_of(const char *s) {
    eddy_bytes b = {(const uint8_t *)s, strlen(s)};
    return b;
}

/* Views for the generated types (the host only reads import arguments). */
static packed_processor_string_t wit_str(const char *s) {
    packed_processor_string_t w = {(uint8_t *)s, strlen(s)};
    return w;
}

static packed_processor_list_u8_t wit_bytes(eddy_bytes b) {
    packed_processor_list_u8_t w = {(uint8_t *)b.ptr, b.len};
    return w;
}

/* A malloc'ed copy of n bytes; NULL for none (the generated free code frees only a non-empty
 * list, so an empty one must not own memory). */
static uint8_t *copy_bytes(const void *p, size_t n) {
    if (!n) return NULL;
    uint8_t *c = malloc(n);
    if (!c) oom();
    memcpy(c, p, n);
    return c;
}

/* A copy for results the generated post-return code frees. */
static packed_processor_string_t owned_str(const char *s, size_t n) {
    packed_processor_string_t w = {copy_bytes(s, n), n};
    return w;
}

static const char *from_wit_str(packed_processor_string_t s) {
    return eddy_strndup((const char *)s.ptr, s.len);
}

/* An import's result, owned by us: freed with the arena. */
static eddy_bytes adopt(packed_processor_list_u8_t l) {
    defer_free(l.ptr);
    eddy_bytes b = {l.ptr, l.len};
    return b;
}

static const char *adopt_str(packed_processor_string_t s) {
    const char *c = from_wit_str(s);
    free(s.ptr);
    return c;
}

/* ------------------------------------------------------------------------------------------ */
/* Events and outcomes */

struct eddy_outcome {
    eddy_plugin_types_outcome_t *wit;
};

struct eddy_output {
    eddy_plugin_types_output_t *wit;
};

static eddy_event convert_event(const eddy_plugin_types_event_t *e) {
    eddy_event ev;
    ev.key = (eddy_bytes){e->key.ptr, e->key.len};
    ev.subject = from_wit_str(e->subject);
    ev.header_count = e->headers.len;
    eddy_header *h = eddy_alloc(e->headers.len * sizeof *h + 1);
    for (size_t i = 0; i < e->headers.len; i++) {
        h[i].name = from_wit_str(e->headers.ptr[i].f0);
        h[i].value = from_wit_str(e->headers.ptr[i].f1);
    }
    ev.headers = h;
    ev.payload = (eddy_bytes){e->payload.ptr, e->payload.len};
    ev.timestamp_ms = e->timestamp_ms;
    ev.sequence = e->sequence;
    return ev;
}

const char *eddy_event_header(const eddy_event *event, const char *name) {
    for (size_t i = 0; i < event->header_count; i++)
        if (strcmp(event->headers[i].name, name) == 0) return event->headers[i].value;
    return NULL;
}

eddy_json *eddy_event_json(const eddy_event *event, const char **error) {
    return eddy_json_parse(event->payload.ptr, event->payload.len, error);
}

static void clear_outcome(eddy_plugin_types_outcome_t *o) {
    eddy_plugin_types_outcome_free(o);
    memset(o, 0, sizeof *o);
}

eddy_output *eddy_emit(eddy_outcome *outcome, eddy_bytes payload) {
    eddy_plugin_types_outcome_t *o = outcome->wit;
    if (o->tag != EDDY_PLUGIN_TYPES_OUTCOME_EMIT) {
        clear_outcome(o);
        o->tag = EDDY_PLUGIN_TYPES_OUTCOME_EMIT;
    }
    eddy_plugin_types_list_output_t *l = &o->val.emit;
    l->ptr = realloc(l->ptr, (l->len + 1) * sizeof *l->ptr);
    if (!l->ptr) oom();
    eddy_plugin_types_output_t *out = &l->ptr[l->len++];
    memset(out, 0, sizeof *out);
    out->payload.ptr = copy_bytes(payload.ptr, payload.len);
    out->payload.len = payload.len;
    eddy_output *handle = eddy_alloc(sizeof *handle);
    handle->wit = out;
    return handle;
}

eddy_output *eddy_emit_json(eddy_outcome *outcome, const eddy_writer *json) {
    return eddy_emit(outcome, eddy_w_bytes(json));
}

void eddy_output_header(eddy_output *output, const char *name, const char *value) {
    eddy_plugin_types_list_header_t *h = &output->wit->headers;
    h->ptr = realloc(h->ptr, (h->len + 1) * sizeof *h->ptr);
    if (!h->ptr) oom();
    h->ptr[h->len].f0 = owned_str(name, strlen(name));
    h->ptr[h->len].f1 = owned_str(value, strlen(value));
    h->len++;
}

void eddy_output_subject(eddy_output *output, const char *subject) {
    packed_processor_option_string_free(&output->wit->subject);
    output->wit->subject.is_some = true;
    output->wit->subject.val = owned_str(subject, strlen(subject));
}

void eddy_drop(eddy_outcome *outcome) {
    clear_outcome(outcome->wit);
    outcome->wit->tag = EDDY_PLUGIN_TYPES_OUTCOME_DROP;
}

void eddy_reject(eddy_outcome *outcome, const char *format, ...) {
    va_list ap;
    va_start(ap, format);
    char *msg = eddy_vsprintf(format, ap);
    va_end(ap);
    clear_outcome(outcome->wit);
    outcome->wit->tag = EDDY_PLUGIN_TYPES_OUTCOME_REJECT;
    outcome->wit->val.reject = owned_str(msg, strlen(msg));
}

/* ------------------------------------------------------------------------------------------ */
/* Keyed state */

/* The index of the event being processed, or -1. */
static int64_t current_event = -1;

static const char *state_error(eddy_plugin_keyed_state_state_error_t *e) {
    const char *m;
    switch (e->tag) {
    case EDDY_PLUGIN_KEYED_STATE_STATE_ERROR_UNKNOWN_STATE:
        return "state is not open in this plugin instance";
    case EDDY_PLUGIN_KEYED_STATE_STATE_ERROR_WRONG_KIND:
        m = adopt_str(e->val.wrong_kind);
        return eddy_sprintf("state exists with another kind: %s", m);
    case EDDY_PLUGIN_KEYED_STATE_STATE_ERROR_NO_SUCH_EVENT:
        return "no event is being processed: keyed state is only reachable from `process`";
    case EDDY_PLUGIN_KEYED_STATE_STATE_ERROR_READ_ONLY:
        m = adopt_str(e->val.read_only);
        return eddy_sprintf("state is read-only here: %s", m);
    default:
        m = adopt_str(e->val.storage);
        return eddy_sprintf("state storage failed: %s", m);
    }
}

static eddy_state new_state(const char *name, eddy_state_kind kind) {
    eddy_state s = {.name = name, .kind = kind};
    return s;
}

eddy_state eddy_value_state(const char *name) { return new_state(name, EDDY_VALUE); }
eddy_state eddy_map_state(const char *name) { return new_state(name, EDDY_MAP); }
eddy_state eddy_list_state(const char *name) { return new_state(name, EDDY_LIST); }

void eddy_state_set_ttl(eddy_state *state, eddy_ttl ttl) {
    state->has_ttl = true;
    state->ttl = ttl;
    state->opened = false; /* opened again, with the TTL, on next use */
    state->batch = 0;
}

const char *eddy_state_open(eddy_state *state) {
    if (state->opened) return NULL;
    static const eddy_plugin_keyed_state_state_kind_t kinds[] = {
        EDDY_PLUGIN_KEYED_STATE_STATE_KIND_VALUE, EDDY_PLUGIN_KEYED_STATE_STATE_KIND_MAP,
        EDDY_PLUGIN_KEYED_STATE_STATE_KIND_LIST};
    packed_processor_string_t name = wit_str(state->name);
    eddy_plugin_keyed_state_ttl_config_t ttl = {
        .ttl_ms = state->ttl.ttl_ms,
        .update = state->ttl.update_on_read
                      ? EDDY_PLUGIN_KEYED_STATE_TTL_UPDATE_ON_READ_AND_WRITE
                      : EDDY_PLUGIN_KEYED_STATE_TTL_UPDATE_ON_CREATE_AND_WRITE,
        .visibility = state->ttl.return_expired
                          ? EDDY_PLUGIN_KEYED_STATE_TTL_VISIBILITY_RETURN_EXPIRED_IF_NOT_CLEANED_UP
                          : EDDY_PLUGIN_KEYED_STATE_TTL_VISIBILITY_NEVER_RETURN_EXPIRED,
    };
    eddy_plugin_keyed_state_state_error_t err;
    uint32_t id;
    if (!eddy_plugin_keyed_state_open(&name, kinds[state->kind], state->has_ttl ? &ttl : NULL,
                                      &id, &err))
        return state_error(&err);
    state->id = id;
    state->opened = true;
    return NULL;
}

/* The state's id and the current event, or an error. */
static const char *target(eddy_state *state, uint32_t *event) {
    if (current_event < 0) return state_error(&(eddy_plugin_keyed_state_state_error_t){
                                  .tag = EDDY_PLUGIN_KEYED_STATE_STATE_ERROR_NO_SUCH_EVENT});
    *event = (uint32_t)current_event;
    return eddy_state_open(state);
}

const char *eddy_state_visit_all_keys(eddy_state *state, const char *tag) {
    const char *e = eddy_state_open(state);
    if (e) return e;
    packed_processor_string_t t = wit_str(tag);
    eddy_plugin_keyed_state_state_error_t err;
    if (!eddy_plugin_keyed_state_visit_all_keys(state->id, &t, &err)) return state_error(&err);
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Keyed state a batch at a time (as the Rust SDK's state/batch.rs)
 *
 * Value and list state of a `batchable` state cross to the host once per state and batch: the
 * first read of a state fetches its values for every distinct key of the batch
 * (`value-get-batch`, `list-get-batch`, the values packed in one buffer), writes are copied
 * into one buffer here, in order, and change what later reads of the batch see, and
 * finish_batch hands them over in one `write-batch` when the batch's events are done. A list
 * appended to before it was read keeps the appended elements until the fetch gives the ones
 * before them. A state that the previous batch read for fewer than a quarter of its events is
 * read one key at a time with the single calls. Values are spans of a fetched buffer or of the
 * written one (WRITTEN), so nothing is copied per read. */

#define WRITTEN UINT32_MAX

typedef struct {
    uint32_t buf, start, end;
} span;

typedef struct {
    bool known, present;
    span value;
} value_slot;

typedef struct {
    bool known;       /* false: `items` are the elements appended before the first read */
    span *items;
    size_t len, cap;
} list_slot;

typedef struct {
    uint32_t state;
    uint32_t reads;
    bool direct; /* out of the batch for the rest of it (after a write with its own TTL) */
    value_slot *values; /* per key slot, for value state */
    list_slot *lists;   /* per key slot, for list state */
} state_table;

/* Pieces side by side, as `packed-values` and the packed outcomes carry them: their bytes,
 * and where each piece ends in them. */
typedef struct {
    uint8_t *bytes;
    size_t nbytes, capbytes;
    uint32_t *ends;
    size_t nends, capends;
} piece_list;

static struct {
    bool have_slots;
    packed_processor_list_u32_t slots; /* the key slot of each event */
    size_t count;                    /* distinct keys */
    state_table *tables;
    size_t ntables, captables;
    uint8_t **fetched;
    size_t nfetched, capfetched;
    eddy_plugin_keyed_state_state_write_t *writes;
    size_t nwrites, capwrites;
    piece_list written;               /* the values the batch's writes carry */
    size_t handed_bytes, handed_ends; /* handed over in the middle of the batch already */
} batch;

/* Per state id: whether the last batch that read the state read it for few of its events.
 * Kept from batch to batch. */
static uint8_t *sparse;
static size_t nsparse;

/* Grows *ptr (of *cap elements of `size` bytes) to hold at least `need`. */
static void grow(void **ptr, size_t *cap, size_t need, size_t size) {
    if (need <= *cap) return;
    size_t c = *cap ? *cap * 2 : 16;
    while (c < need) c *= 2;
    void *p = realloc(*ptr, c * size);
    if (!p) oom();
    *ptr = p;
    *cap = c;
}

/* Appends a piece of n bytes. */
static void push_piece(piece_list *l, const void *p, size_t n) {
    grow((void **)&l->bytes, &l->capbytes, l->nbytes + n, 1);
    if (n) memcpy(l->bytes + l->nbytes, p, n);
    l->nbytes += n;
    grow((void **)&l->ends, &l->capends, l->nends + 1, sizeof *l->ends);
    l->ends[l->nends++] = (uint32_t)l->nbytes;
}

/* Keeps a buffer the host answered with, freed when the batch ends. An empty list's pointer
 * is not an allocation (the canonical ABI gives its alignment), so `len` 0 keeps nothing. */
static void keep_fetched(uint8_t *buf, size_t len) {
    if (len == 0) buf = NULL;
    grow((void **)&batch.fetched, &batch.capfetched, batch.nfetched + 1, sizeof *batch.fetched);
    batch.fetched[batch.nfetched++] = buf;
}

/* Frees a list the host answered with (an empty one is not an allocation). */
static void free_list(void *ptr, size_t len) {
    if (len > 0) free(ptr);
}

/* Forgets the batch, remembering which states it read sparsely. */
static void forget_batch(void) {
    size_t events = batch.have_slots ? batch.slots.len : 0;
    for (size_t t = 0; t < batch.ntables; t++) {
        state_table *tb = &batch.tables[t];
        if (tb->reads > 0) {
            if (tb->state >= nsparse) {
                size_t n = tb->state + 1;
                uint8_t *p = realloc(sparse, n);
                if (!p) oom();
                memset(p + nsparse, 0, n - nsparse);
                sparse = p;
                nsparse = n;
            }
            sparse[tb->state] = (size_t)tb->reads * 4 < events;
        }
        if (tb->lists)
            for (size_t i = 0; i < batch.count; i++) free(tb->lists[i].items);
        free(tb->values);
        free(tb->lists);
    }
    for (size_t i = 0; i < batch.nfetched; i++) free(batch.fetched[i]);
    if (batch.have_slots) free_list(batch.slots.ptr, batch.slots.len);
    batch.have_slots = false;
    batch.count = 0;
    batch.ntables = batch.nfetched = batch.nwrites = batch.written.nbytes = batch.written.nends = 0;
    batch.handed_bytes = batch.handed_ends = 0;
}

/* The key slot of event `ev`. */
static const char *batch_slot(uint32_t ev, size_t *slot) {
    if (!batch.have_slots) {
        eddy_plugin_keyed_state_key_slots(&batch.slots);
        batch.have_slots = true;
        batch.count = 0;
        for (size_t i = 0; i < batch.slots.len; i++)
            if (batch.slots.ptr[i] + 1 > batch.count) batch.count = batch.slots.ptr[i] + 1;
    }
    if (ev >= batch.slots.len)
        return state_error(&(eddy_plugin_keyed_state_state_error_t){
            .tag = EDDY_PLUGIN_KEYED_STATE_STATE_ERROR_NO_SUCH_EVENT});
    *slot = batch.slots.ptr[ev];
    return NULL;
}

/* The batch's table of `state`, made on first use; counts a read if `read`. */
static state_table *table_of(uint32_t state, bool list) {
    state_table *tb = NULL;
    for (size_t t = 0; t < batch.ntables; t++)
        if (batch.tables[t].state == state) tb = &batch.tables[t];
    if (!tb) {
        grow((void **)&batch.tables, &batch.captables, batch.ntables + 1, sizeof *batch.tables);
        tb = &batch.tables[batch.ntables++];
        *tb = (state_table){.state = state};
    }
    size_t n = batch.count ? batch.count : 1;
    if (list && !tb->lists && !(tb->lists = calloc(n, sizeof *tb->lists))) oom();
    if (!list && !tb->values && !(tb->values = calloc(n, sizeof *tb->values))) oom();
    return tb;
}

static bool is_sparse(uint32_t state) { return state < nsparse && sparse[state]; }

static eddy_bytes span_bytes(span s) {
    const uint8_t *buf = s.buf == WRITTEN ? batch.written.bytes : batch.fetched[s.buf];
    return (eddy_bytes){buf + s.start, s.end - s.start};
}

static const char *short_answer(size_t got, size_t keys) {
    return eddy_sprintf("state storage failed: the host answered a batch read with %zu entries "
                        "for the batch's %zu keys",
                        got, keys);
}

/* The spans of a fetched packed buffer, kept as buffer number `buf`; frees `ends`. */
static const char *unpack(eddy_plugin_keyed_state_packed_values_t *p, span **out, size_t *n) {
    uint32_t buf = (uint32_t)batch.nfetched;
    keep_fetched(p->bytes.ptr, p->bytes.len);
    span *sp = eddy_alloc(p->ends.len * sizeof *sp + 1);
    uint32_t start = 0;
    const char *bad = NULL;
    for (size_t i = 0; i < p->ends.len && !bad; i++) {
        uint32_t end = p->ends.ptr[i];
        if (end < start || end > p->bytes.len)
            bad = eddy_sprintf("state storage failed: a batch read's value ends at %u, outside "
                               "its range (from %u in %zu bytes)",
                               end, start, p->bytes.len);
        sp[i] = (span){buf, start, end};
        start = end;
    }
    *out = sp;
    *n = p->ends.len;
    free_list(p->ends.ptr, p->ends.len);
    return bad;
}

/* The current key's value of `state` in the batch: *present, and its bytes. */
static const char *batch_value(eddy_state *state, uint32_t ev, bool *present, eddy_bytes *out) {
    size_t slot;
    const char *e = batch_slot(ev, &slot);
    if (e) return e;
    state_table *tb = table_of(state->id, false);
    tb->reads++;
    value_slot *v = &tb->values[slot];
    if (!v->known && is_sparse(state->id)) {
        packed_processor_option_list_u8_t r;
        eddy_plugin_keyed_state_state_error_t err;
        if (!eddy_plugin_keyed_state_value_get(state->id, ev, &r, &err)) return state_error(&err);
        *v = (value_slot){.known = true, .present = r.is_some};
        if (r.is_some) {
            v->value = (span){(uint32_t)batch.nfetched, 0, (uint32_t)r.val.len};
            keep_fetched(r.val.ptr, r.val.len);
        }
    } else if (!v->known) {
        eddy_plugin_keyed_state_tuple2_list_bool_packed_values_t r;
        eddy_plugin_keyed_state_state_error_t err;
        if (!eddy_plugin_keyed_state_value_get_batch(state->id, &r, &err)) return state_error(&err);
        span *sp;
        size_t n, next = 0;
        const char *bad = unpack(&r.f1, &sp, &n);
        size_t keys = r.f0.len;
        for (size_t i = 0; i < keys && i < batch.count && !bad; i++) {
            bool has = r.f0.ptr[i];
            if (has && next >= n) bad = short_answer(next, batch.count);
            if (!tb->values[i].known && !bad)
                tb->values[i] = (value_slot){true, has, has ? sp[next] : (span){0}};
            if (has) next++;
        }
        free_list(r.f0.ptr, r.f0.len);
        if (!bad && keys != batch.count) bad = short_answer(keys, batch.count);
        if (bad) return bad;
    }
    *present = v->present;
    if (v->present) *out = span_bytes(v->value);
    return NULL;
}

static void list_append(list_slot *l, const span *items, size_t n) {
    grow((void **)&l->items, &l->cap, l->len + n, sizeof *l->items);
    memcpy(l->items + l->len, items, n * sizeof *items);
    l->len += n;
}

/* Makes slot `l` known as `fetched` followed by what was appended before. */
static void list_known(list_slot *l, const span *fetched, size_t n) {
    list_slot k = {.known = true};
    list_append(&k, fetched, n);
    list_append(&k, l->items, l->len);
    free(l->items);
    *l = k;
}

/* The current key's list of `state` in the batch. */
static const char *batch_list(eddy_state *state, uint32_t ev, list_slot **out) {
    size_t slot;
    const char *e = batch_slot(ev, &slot);
    if (e) return e;
    state_table *tb = table_of(state->id, true);
    tb->reads++;
    list_slot *l = &tb->lists[slot];
    if (!l->known && is_sparse(state->id)) {
        packed_processor_list_list_u8_t r;
        eddy_plugin_keyed_state_state_error_t err;
        if (!eddy_plugin_keyed_state_list_get(state->id, ev, &r, &err)) return state_error(&err);
        span *sp = eddy_alloc(r.len * sizeof *sp + 1);
        for (size_t i = 0; i < r.len; i++) {
            sp[i] = (span){(uint32_t)batch.nfetched, 0, (uint32_t)r.ptr[i].len};
            keep_fetched(r.ptr[i].ptr, r.ptr[i].len);
        }
        free_list(r.ptr, r.len);
        list_known(l, sp, r.len);
    } else if (!l->known) {
        eddy_plugin_keyed_state_tuple2_list_u32_packed_values_t r;
        eddy_plugin_keyed_state_state_error_t err;
        if (!eddy_plugin_keyed_state_list_get_batch(state->id, &r, &err)) return state_error(&err);
        span *sp;
        size_t n, next = 0;
        const char *bad = unpack(&r.f1, &sp, &n);
        size_t keys = r.f0.len;
        for (size_t i = 0; i < keys && i < batch.count && !bad; i++) {
            size_t c = r.f0.ptr[i];
            if (next + c > n) bad = short_answer(next, n);
            else if (!tb->lists[i].known) list_known(&tb->lists[i], sp + next, c);
            next += c;
        }
        free_list(r.f0.ptr, r.f0.len);
        if (!bad && keys != batch.count) bad = short_answer(keys, batch.count);
        if (bad) return bad;
    }
    *out = l;
    return NULL;
}

/* Logs a write of `change` to `state` for the current key, copying `values`. */
static const char *batch_write(eddy_state *state, uint32_t ev,
                               eddy_plugin_keyed_state_change_kind_t change,
                               const eddy_bytes *values, size_t n) {
    size_t slot;
    const char *e = batch_slot(ev, &slot);
    if (e) return e;
    span *sp = eddy_alloc(n * sizeof *sp + 1);
    for (size_t i = 0; i < n; i++) {
        uint32_t start = (uint32_t)batch.written.nbytes;
        push_piece(&batch.written, values[i].ptr, values[i].len);
        sp[i] = (span){WRITTEN, start, (uint32_t)batch.written.nbytes};
    }
    switch (change) {
    case EDDY_PLUGIN_KEYED_STATE_CHANGE_KIND_VALUE_SET:
    case EDDY_PLUGIN_KEYED_STATE_CHANGE_KIND_VALUE_SET_WITH_TTL:
    case EDDY_PLUGIN_KEYED_STATE_CHANGE_KIND_VALUE_CLEAR: {
        value_slot *v = &table_of(state->id, false)->values[slot];
        *v = (value_slot){true, n > 0, n > 0 ? sp[0] : (span){0}};
        break;
    }
    default: {
        list_slot *l = &table_of(state->id, true)->lists[slot];
        if (change != EDDY_PLUGIN_KEYED_STATE_CHANGE_KIND_LIST_ADD_ALL) {
            l->len = 0;
            l->known = true;
        }
        list_append(l, sp, n);
    }
    }
    grow((void **)&batch.writes, &batch.capwrites, batch.nwrites + 1, sizeof *batch.writes);
    batch.writes[batch.nwrites++] = (eddy_plugin_keyed_state_state_write_t){
        .state = state->id,
        .event = ev,
        .change = change,
        /* A write with its own TTL is never logged: it takes its state out of the batch. */
        .ttl_ms = {false, 0},
        .values = (uint32_t)n,
    };
    return NULL;
}

/* Hands the writes logged since the last hand-over to the host. A write the host refuses traps
 * the call (abort): the host re-runs its events one at a time, where the refusal meets its
 * event. The batch keeps the values (later reads of the batch still see them). */
static void hand_over(void) {
    if (batch.nwrites > 0) {
        const piece_list *v = &batch.written;
        size_t n = v->nends - batch.handed_ends;
        uint32_t *ends = eddy_alloc(n * sizeof *ends + 1);
        for (size_t i = 0; i < n; i++)
            ends[i] = v->ends[batch.handed_ends + i] - (uint32_t)batch.handed_bytes;
        eddy_plugin_keyed_state_list_state_write_t w = {batch.writes, batch.nwrites};
        eddy_plugin_keyed_state_packed_values_t p = {
            {v->bytes + batch.handed_bytes, v->nbytes - batch.handed_bytes}, {ends, n}};
        eddy_plugin_keyed_state_tuple2_u32_state_error_t err;
        if (!eddy_plugin_keyed_state_write_batch(&w, &p, &err)) {
            eddy_log(EDDY_ERROR, "eddy: the host refused the state write %u of the batch: %s",
                     err.f0, state_error(&err.f1));
            abort();
        }
    }
    batch.nwrites = 0;
    batch.handed_bytes = batch.written.nbytes;
    batch.handed_ends = batch.written.nends;
}

/* Hands the batch's writes to the host and forgets the batch. */
static void finish_batch(void) {
    hand_over();
    forget_batch();
}

/* Takes `state` out of the batch for the rest of it, handing over what the batch logged so far
 * first: for a write with its own time-to-live, whose expiry the host decides and later reads
 * of the batch must see. */
static const char *go_direct(eddy_state *state, uint32_t ev) {
    size_t slot;
    const char *e = batch_slot(ev, &slot);
    if (e) return e;
    table_of(state->id, false)->direct = true;
    hand_over();
    return NULL;
}

static bool is_direct(uint32_t state) {
    for (size_t t = 0; t < batch.ntables; t++)
        if (batch.tables[t].state == state) return batch.tables[t].direct;
    return false;
}

/* Whether `state`'s value and list calls go through the batch. */
static const char *batched(eddy_state *state, bool *yes) {
    if (state->batch == 0) {
        bool b;
        eddy_plugin_keyed_state_state_error_t err;
        if (!eddy_plugin_keyed_state_batchable(state->id, &b, &err)) return state_error(&err);
        state->batch = b ? 1 : 2;
    }
    *yes = state->batch == 1 && !is_direct(state->id);
    return NULL;
}

static const char *decode_value(const char *what, const char *name, eddy_bytes b,
                                eddy_json **out) {
    const char *perr;
    *out = eddy_json_parse(b.ptr, b.len, &perr);
    if (!*out) return eddy_sprintf("cannot decode a value of %s `%s`: %s", what, name, perr);
    return NULL;
}

#define TARGET(state)                                    \
    uint32_t ev;                                         \
    eddy_plugin_keyed_state_state_error_t err;           \
    const char *terr = target(state, &ev);               \
    if (terr) return terr

#define BATCHED(state)                             \
    bool in_batch;                                 \
    const char *berr = batched(state, &in_batch);  \
    if (berr) return berr

const char *eddy_value_get(eddy_state *state, eddy_json **out) {
    *out = NULL;
    TARGET(state);
    BATCHED(state);
    if (in_batch) {
        bool present;
        eddy_bytes b;
        const char *e = batch_value(state, ev, &present, &b);
        if (e || !present) return e;
        return decode_value("state", state->name, b, out);
    }
    packed_processor_option_list_u8_t r;
    if (!eddy_plugin_keyed_state_value_get(state->id, ev, &r, &err)) return state_error(&err);
    if (!r.is_some) return NULL;
    return decode_value("state", state->name, adopt(r.val), out);
}

const char *eddy_value_set(eddy_state *state, eddy_bytes json) {
    TARGET(state);
    BATCHED(state);
    if (in_batch)
        return batch_write(state, ev, EDDY_PLUGIN_KEYED_STATE_CHANGE_KIND_VALUE_SET, &json, 1);
    packed_processor_list_u8_t v = wit_bytes(json);
    if (!eddy_plugin_keyed_state_value_set(state->id, ev, &v, &err)) return state_error(&err);
    return NULL;
}

const char *eddy_value_set_with_ttl(eddy_state *state, eddy_bytes json, uint64_t ttl_ms) {
    TARGET(state);
    BATCHED(state);
    if (in_batch) {
        const char *e = go_direct(state, ev);
        if (e) return e;
    }
    packed_processor_list_u8_t v = wit_bytes(json);
    if (!eddy_plugin_keyed_state_value_set_with_ttl(state->id, ev, &v, ttl_ms, &err))
        return state_error(&err);
    return NULL;
}

const char *eddy_value_clear(eddy_state *state) {
    TARGET(state);
    BATCHED(state);
    if (in_batch)
        return batch_write(state, ev, EDDY_PLUGIN_KEYED_STATE_CHANGE_KIND_VALUE_CLEAR, NULL,
                           0);
    if (!eddy_plugin_keyed_state_value_clear(state->id, ev, &err)) return state_error(&err);
    return NULL;
}

/* Map keys */

eddy_bytes eddy_key_str(const char *s) { return eddy_bytes_of(s); }

eddy_bytes eddy_key_strn(const char *s, size_t len) {
    eddy_bytes b = {(const uint8_t *)s, len};
    return b;
}

static eddy_bytes be(uint64_t v, size_t n) {
    uint8_t *p = eddy_alloc(n);
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * (n - 1 - i)));
    eddy_bytes b = {p, n};
    return b;
}

eddy_bytes eddy_key_u32(uint32_t v) { return be(v, 4); }
eddy_bytes eddy_key_u64(uint64_t v) { return be(v, 8); }
eddy_bytes eddy_key_i32(int32_t v) { return be((uint32_t)v ^ 0x80000000u, 4); }
eddy_bytes eddy_key_i64(int64_t v) { return be((uint64_t)v ^ 0x8000000000000000ull, 8); }

const char *eddy_key_to_u64(eddy_bytes key, uint64_t *out) {
    if (key.len != 8) return eddy_sprintf("a u64 key is 8 bytes, this one is %zu", key.len);
    uint64_t v = 0;
    for (size_t i = 0; i < 8; i++) v = (v << 8) | key.ptr[i];
    *out = v;
    return NULL;
}

const char *eddy_key_to_i64(eddy_bytes key, int64_t *out) {
    uint64_t u;
    if (key.len != 8) return eddy_sprintf("a i64 key is 8 bytes, this one is %zu", key.len);
    eddy_key_to_u64(key, &u);
    *out = (int64_t)(u ^ 0x8000000000000000ull);
    return NULL;
}

eddy_bytes eddy_json_u64(uint64_t v) {
    /* A writer over an exactly sized buffer: no 256-byte first chunk per number. */
    char *buf = eddy_alloc(20);
    eddy_writer w = {.data = buf, .cap = 20};
    eddy_w_u64(&w, v);
    return eddy_w_bytes(&w);
}

/* Map state */

const char *eddy_map_get(eddy_state *state, eddy_bytes key, eddy_json **out) {
    *out = NULL;
    TARGET(state);
    packed_processor_list_u8_t k = wit_bytes(key);
    packed_processor_option_list_u8_t r;
    if (!eddy_plugin_keyed_state_map_get(state->id, ev, &k, &r, &err)) return state_error(&err);
    if (!r.is_some) return NULL;
    return decode_value("state", state->name, adopt(r.val), out);
}

const char *eddy_map_put(eddy_state *state, eddy_bytes key, eddy_bytes json) {
    TARGET(state);
    packed_processor_list_u8_t k = wit_bytes(key), v = wit_bytes(json);
    if (!eddy_plugin_keyed_state_map_put(state->id, ev, &k, &v, &err)) return state_error(&err);
    return NULL;
}

const char *eddy_map_put_with_ttl(eddy_state *state, eddy_bytes key, eddy_bytes json,
                                  uint64_t ttl_ms) {
    TARGET(state);
    packed_processor_list_u8_t k = wit_bytes(key), v = wit_bytes(json);
    if (!eddy_plugin_keyed_state_map_put_with_ttl(state->id, ev, &k, &v, ttl_ms, &err))
        return state_error(&err);
    return NULL;
}

const char *eddy_map_remove(eddy_state *state, eddy_bytes key) {
    TARGET(state);
    packed_processor_list_u8_t k = wit_bytes(key);
    if (!eddy_plugin_keyed_state_map_remove(state->id, ev, &k, &err)) return state_error(&err);
    return NULL;
}

const char *eddy_map_contains(eddy_state *state, eddy_bytes key, bool *out) {
    TARGET(state);
    packed_processor_list_u8_t k = wit_bytes(key);
    if (!eddy_plugin_keyed_state_map_contains(state->id, ev, &k, out, &err))
        return state_error(&err);
    return NULL;
}

/* Adopts and decodes a page of entries. */
static const char *decode_entries(const char *what, const char *name,
                                  packed_processor_list_tuple2_list_u8_list_u8_t *l,
                                  eddy_map_entry **entries, size_t *count) {
    defer_free(l->ptr);
    eddy_map_entry *e = eddy_alloc(l->len * sizeof *e + 1);
    const char *first_error = NULL;
    for (size_t i = 0; i < l->len; i++) {
        e[i].key = adopt(l->ptr[i].f0);
        eddy_bytes v = adopt(l->ptr[i].f1);
        const char *derr = decode_value(what, name, v, &e[i].value);
        if (derr && !first_error) first_error = derr;
    }
    *entries = e;
    *count = l->len;
    return first_error;
}

const char *eddy_map_entries(eddy_state *state, const eddy_bytes *start_after, uint32_t limit,
                             eddy_map_entry **entries, size_t *count) {
    *entries = NULL;
    *count = 0;
    TARGET(state);
    packed_processor_list_u8_t after = start_after ? wit_bytes(*start_after)
                                                 : (packed_processor_list_u8_t){0};
    packed_processor_list_tuple2_list_u8_list_u8_t r;
    if (!eddy_plugin_keyed_state_map_entries(state->id, ev, start_after ? &after : NULL, limit,
                                             &r, &err))
        return state_error(&err);
    return decode_entries("state", state->name, &r, entries, count);
}

const char *eddy_map_is_empty(eddy_state *state, bool *out) {
    TARGET(state);
    if (!eddy_plugin_keyed_state_map_is_empty(state->id, ev, out, &err)) return state_error(&err);
    return NULL;
}

const char *eddy_map_clear(eddy_state *state) {
    TARGET(state);
    if (!eddy_plugin_keyed_state_map_clear(state->id, ev, &err)) return state_error(&err);
    return NULL;
}

/* List state */

const char *eddy_list_get(eddy_state *state, eddy_json ***items, size_t *count) {
    *items = NULL;
    *count = 0;
    TARGET(state);
    BATCHED(state);
    if (in_batch) {
        list_slot *l;
        const char *e = batch_list(state, ev, &l);
        if (e) return e;
        eddy_json **v = eddy_alloc(l->len * sizeof *v + 1);
        const char *first_error = NULL;
        for (size_t i = 0; i < l->len; i++) {
            const char *derr = decode_value("state", state->name, span_bytes(l->items[i]), &v[i]);
            if (derr && !first_error) first_error = derr;
        }
        *items = v;
        *count = l->len;
        return first_error;
    }
    packed_processor_list_list_u8_t r;
    if (!eddy_plugin_keyed_state_list_get(state->id, ev, &r, &err)) return state_error(&err);
    defer_free(r.ptr);
    eddy_json **v = eddy_alloc(r.len * sizeof *v + 1);
    const char *first_error = NULL;
    for (size_t i = 0; i < r.len; i++) {
        const char *derr = decode_value("state", state->name, adopt(r.ptr[i]), &v[i]);
        if (derr && !first_error) first_error = derr;
    }
    *items = v;
    *count = r.len;
    return first_error;
}

static packed_processor_list_list_u8_t wit_values(const eddy_bytes *values, size_t count) {
    packed_processor_list_list_u8_t l = {eddy_alloc(count * sizeof(packed_processor_list_u8_t) + 1),
                                       count};
    for (size_t i = 0; i < count; i++) l.ptr[i] = wit_bytes(values[i]);
    return l;
}

const char *eddy_list_add(eddy_state *state, eddy_bytes json) {
    TARGET(state);
    BATCHED(state);
    if (in_batch)
        return batch_write(state, ev, EDDY_PLUGIN_KEYED_STATE_CHANGE_KIND_LIST_ADD_ALL, &json,
                           1);
    packed_processor_list_u8_t v = wit_bytes(json);
    if (!eddy_plugin_keyed_state_list_add(state->id, ev, &v, &err)) return state_error(&err);
    return NULL;
}

const char *eddy_list_add_all(eddy_state *state, const eddy_bytes *values, size_t count) {
    TARGET(state);
    BATCHED(state);
    if (in_batch)
        return batch_write(state, ev, EDDY_PLUGIN_KEYED_STATE_CHANGE_KIND_LIST_ADD_ALL, values,
                           count);
    packed_processor_list_list_u8_t l = wit_values(values, count);
    if (!eddy_plugin_keyed_state_list_add_all(state->id, ev, &l, &err)) return state_error(&err);
    return NULL;
}

const char *eddy_list_update(eddy_state *state, const eddy_bytes *values, size_t count) {
    TARGET(state);
    BATCHED(state);
    if (in_batch)
        return batch_write(state, ev, EDDY_PLUGIN_KEYED_STATE_CHANGE_KIND_LIST_UPDATE, values,
                           count);
    packed_processor_list_list_u8_t l = wit_values(values, count);
    if (!eddy_plugin_keyed_state_list_update(state->id, ev, &l, &err)) return state_error(&err);
    return NULL;
}

const char *eddy_list_clear(eddy_state *state) {
    TARGET(state);
    BATCHED(state);
    if (in_batch)
        return batch_write(state, ev, EDDY_PLUGIN_KEYED_STATE_CHANGE_KIND_LIST_CLEAR, NULL,
                           0);
    if (!eddy_plugin_keyed_state_list_clear(state->id, ev, &err)) return state_error(&err);
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Broadcast state */

static const char *broadcast_error(eddy_plugin_broadcast_state_broadcast_error_t *e) {
    switch (e->tag) {
    case EDDY_PLUGIN_BROADCAST_STATE_BROADCAST_ERROR_UNKNOWN_MAP:
        return "broadcast map is not open";
    case EDDY_PLUGIN_BROADCAST_STATE_BROADCAST_ERROR_READ_ONLY:
        return eddy_sprintf("broadcast state is read-only here: %s", adopt_str(e->val.read_only));
    default:
        return eddy_sprintf("broadcast storage failed: %s", adopt_str(e->val.storage));
    }
}

eddy_broadcast_map eddy_broadcast_map_new(const char *name) {
    eddy_broadcast_map m = {.name = name};
    return m;
}

static const char *map_open(eddy_broadcast_map *map) {
    if (map->opened) return NULL;
    packed_processor_string_t name = wit_str(map->name);
    eddy_plugin_broadcast_state_broadcast_error_t err;
    if (!eddy_plugin_broadcast_state_open_map(&name, &map->id, &err)) return broadcast_error(&err);
    map->opened = true;
    return NULL;
}

#define MAP_OPEN(map)                                    \
    eddy_plugin_broadcast_state_broadcast_error_t err;   \
    const char *oerr = map_open(map);                    \
    if (oerr) return oerr

/* Broadcast reads of the keyed batch being handled. Broadcast maps change only between keyed
 * batches (in the broadcast hook), so within one a key is asked of the host once and the
 * batch's other events are answered from these copies (as the Rust SDK does). */
typedef struct {
    uint32_t map;
    bool found; /* whether the map has an entry */
    uint8_t *key, *value; /* malloc'ed */
    size_t key_len, value_len;
} batch_read;

#define BATCH_READS_MAX 64
static batch_read batch_reads[BATCH_READS_MAX];
static size_t n_batch_reads;

static void forget_batch_reads(void) {
    for (size_t i = 0; i < n_batch_reads; i++) {
        free(batch_reads[i].key);
        free(batch_reads[i].value);
    }
    n_batch_reads = 0;
}

static const batch_read *find_batch_read(uint32_t map, eddy_bytes key) {
    for (size_t i = 0; i < n_batch_reads; i++) {
        const batch_read *r = &batch_reads[i];
        if (r->map == map && r->key_len == key.len &&
            (key.len == 0 || memcmp(r->key, key.ptr, key.len) == 0))
            return r;
    }
    return NULL;
}

/* Keeps a read for the rest of the batch (the first BATCH_READS_MAX distinct keys). */
static void keep_batch_read(uint32_t map, eddy_bytes key, const eddy_bytes *value) {
    if (n_batch_reads == BATCH_READS_MAX) return;
    batch_read *r = &batch_reads[n_batch_reads++];
    r->map = map;
    r->key = copy_bytes(key.ptr, key.len);
    r->key_len = key.len;
    r->found = value != NULL;
    r->value = value ? copy_bytes(value->ptr, value->len) : NULL;
    r->value_len = value ? value->len : 0;
}

const char *eddy_broadcast_get(eddy_broadcast_map *map, eddy_bytes key, eddy_json **out) {
    *out = NULL;
    MAP_OPEN(map);
    bool keyed = current_event >= 0;
    const batch_read *hit = keyed ? find_batch_read(map->id, key) : NULL;
    if (hit) {
        if (!hit->found) return NULL;
        eddy_bytes v = {hit->value, hit->value_len};
        return decode_value("broadcast map", map->name, v, out);
    }
    packed_processor_list_u8_t k = wit_bytes(key);
    packed_processor_option_list_u8_t r;
    if (!eddy_plugin_broadcast_state_get(map->id, &k, &r, &err)) return broadcast_error(&err);
    if (!r.is_some) {
        if (keyed) keep_batch_read(map->id, key, NULL);
        return NULL;
    }
    eddy_bytes v = adopt(r.val);
    if (keyed) keep_batch_read(map->id, key, &v);
    return decode_value("broadcast map", map->name, v, out);
}

const char *eddy_broadcast_put(eddy_broadcast_map *map, eddy_bytes key, eddy_bytes json) {
    MAP_OPEN(map);
    packed_processor_list_u8_t k = wit_bytes(key), v = wit_bytes(json);
    if (!eddy_plugin_broadcast_state_put(map->id, &k, &v, &err)) return broadcast_error(&err);
    return NULL;
}

const char *eddy_broadcast_remove(eddy_broadcast_map *map, eddy_bytes key) {
    MAP_OPEN(map);
    packed_processor_list_u8_t k = wit_bytes(key);
    if (!eddy_plugin_broadcast_state_remove(map->id, &k, &err)) return broadcast_error(&err);
    return NULL;
}

const char *eddy_broadcast_clear(eddy_broadcast_map *map) {
    MAP_OPEN(map);
    if (!eddy_plugin_broadcast_state_clear(map->id, &err)) return broadcast_error(&err);
    return NULL;
}

const char *eddy_broadcast_entries(eddy_broadcast_map *map, const eddy_bytes *start_after,
                                   uint32_t limit, eddy_map_entry **entries, size_t *count) {
    *entries = NULL;
    *count = 0;
    MAP_OPEN(map);
    packed_processor_list_u8_t after = start_after ? wit_bytes(*start_after)
                                                 : (packed_processor_list_u8_t){0};
    packed_processor_list_tuple2_list_u8_list_u8_t r;
    if (!eddy_plugin_broadcast_state_entries(map->id, start_after ? &after : NULL, limit, &r,
                                             &err))
        return broadcast_error(&err);
    return decode_entries("broadcast map", map->name, &r, entries, count);
}

eddy_json *eddy_broadcast_event_json(const eddy_broadcast_event *event, const char **error) {
    return eddy_json_parse(event->payload.ptr, event->payload.len, error);
}

/* ------------------------------------------------------------------------------------------ */
/* Lookups, log, clock */

const char *eddy_lookup(const char *store, const char *key, eddy_bytes *out, bool *found) {
    packed_processor_string_t s = wit_str(store), k = wit_str(key);
    packed_processor_option_list_u8_t r;
    eddy_plugin_lookup_lookup_error_t err;
    *found = false;
    out->ptr = NULL;
    out->len = 0;
    if (!eddy_plugin_lookup_get(&s, &k, &r, &err)) {
        if (err.tag == EDDY_PLUGIN_LOOKUP_LOOKUP_ERROR_UNKNOWN_STORE)
            return eddy_sprintf("unknown lookup store: %s", adopt_str(err.val.unknown_store));
        return eddy_sprintf("lookup failed: %s", adopt_str(err.val.failed));
    }
    if (r.is_some) {
        *found = true;
        *out = adopt(r.val);
    }
    return NULL;
}

const char *eddy_lookup_json(const char *store, const char *key, eddy_json **out) {
    eddy_bytes b;
    bool found;
    *out = NULL;
    const char *err = eddy_lookup(store, key, &b, &found);
    if (err || !found) return err;
    const char *perr;
    *out = eddy_json_parse(b.ptr, b.len, &perr);
    if (!*out)
        return eddy_sprintf("value of `%s` in store `%s` is not the JSON expected: %s", key,
                            store, perr);
    return NULL;
}

struct eddy_lookup_plan {
    exports_eddy_plugin_lookup_planner_list_lookup_request_t *wit;
};

void eddy_plan_lookup(eddy_lookup_plan *plan, const char *store, const char *key) {
    exports_eddy_plugin_lookup_planner_list_lookup_request_t *l = plan->wit;
    l->ptr = realloc(l->ptr, (l->len + 1) * sizeof *l->ptr);
    if (!l->ptr) oom();
    l->ptr[l->len].store = owned_str(store, strlen(store));
    l->ptr[l->len].key = owned_str(key, strlen(key));
    l->len++;
}

void eddy_log(eddy_log_level level, const char *format, ...) {
    va_list ap;
    va_start(ap, format);
    char *msg = eddy_vsprintf(format, ap);
    va_end(ap);
    packed_processor_string_t m = {(uint8_t *)msg, strlen(msg)};
    eddy_plugin_log_log((eddy_plugin_log_level_t)level, &m);
}

uint64_t eddy_now_ms(void) { return eddy_plugin_clock_now_ms(); }

/* ------------------------------------------------------------------------------------------ */
/* Exports */

#define NOT_INITIALISED "plugin not initialised"
#define NO_BROADCAST                                                                    \
    "this plugin does not handle broadcast events: give EDDY_PLUGIN a .broadcast hook, " \
    "or remove the pipeline's [broadcast] inputs"

static bool initialised;

bool exports_eddy_plugin_handler_init(packed_processor_string_t *config, packed_processor_string_t *err) {
    initialised = false;
    current = &permanent;
    const char *text = from_wit_str(*config);
    packed_processor_string_free(config);
    /* Whitespace only counts as `{}`, as in the Rust SDK. */
    const char *p = text;
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
    const char *perr = NULL;
    eddy_json *parsed = eddy_json_parse(*p ? text : "{}", *p ? strlen(text) : 2, &perr);
    const char *error = parsed ? eddy_the_plugin.init(parsed)
                               : eddy_sprintf("invalid plugin config: %s", perr);
    current = &scratch;
    if (error) {
        *err = owned_str(error, strlen(error));
        return false;
    }
    initialised = true;
    return true;
}

void exports_eddy_plugin_handler_handle(exports_eddy_plugin_handler_list_event_t *events,
                                        exports_eddy_plugin_handler_list_outcome_t *ret) {
    size_t n = events->len;
    ret->len = n;
    ret->ptr = calloc(n ? n : 1, sizeof *ret->ptr);
    if (!ret->ptr) oom();
    for (size_t i = 0; i < n; i++) {
        eddy_plugin_types_outcome_t *o = &ret->ptr[i];
        if (!initialised) {
            o->tag = EDDY_PLUGIN_TYPES_OUTCOME_REJECT;
            o->val.reject = owned_str(NOT_INITIALISED, strlen(NOT_INITIALISED));
            continue;
        }
        o->tag = EDDY_PLUGIN_TYPES_OUTCOME_DROP;
        current_event = (int64_t)i;
        eddy_event ev = convert_event(&events->ptr[i]);
        eddy_outcome outcome = {o};
        eddy_the_plugin.process(&ev, &outcome);
        current_event = -1;
        reset_scratch();
    }
    finish_batch();
    forget_batch_reads();
    exports_eddy_plugin_handler_list_event_free(events);
}

/* Packed batches (0.2.2): the same loop as `handle`, with the events read from flat lists and
 * each outcome, built as above, appended to flat lists (see `packed-handler` in eddy.wit).
 * The host lowers a packed batch with three allocation calls into the plugin instead of
 * several per event. */

typedef exports_eddy_plugin_packed_handler_packed_events_t packed_events;
typedef exports_eddy_plugin_packed_handler_packed_outcomes_t packed_outcomes;
typedef exports_eddy_plugin_packed_handler_list_packed_output_t packed_outputs;

/* Reads the pieces of the events in order. A piece past the last end, or one outside the
 * bytes, reads as empty (the host sends neither). */
typedef struct {
    const packed_events *events;
    size_t next;
    uint32_t start;
} piece_reader;

static eddy_bytes read_piece(piece_reader *r) {
    const packed_events *e = r->events;
    if (r->next >= e->ends.len) return (eddy_bytes){NULL, 0};
    uint32_t end = e->ends.ptr[r->next];
    if (end < r->start || end > e->bytes.len) return (eddy_bytes){NULL, 0};
    eddy_bytes b = {e->bytes.ptr + r->start, end - r->start};
    r->start = end;
    r->next++;
    return b;
}

static const char *read_text(piece_reader *r) {
    eddy_bytes b = read_piece(r);
    return eddy_strndup((const char *)b.ptr, b.len);
}

/* Appends outcome o's pieces and outputs; returns its entry. */
static exports_eddy_plugin_packed_handler_packed_outcome_t pack_outcome(
    piece_list *pieces, packed_outputs *outs, size_t *outs_cap, const eddy_plugin_types_outcome_t *o) {
    exports_eddy_plugin_packed_handler_packed_outcome_t po = {0};
    switch (o->tag) {
    case EDDY_PLUGIN_TYPES_OUTCOME_DROP:
        po.tag = EXPORTS_EDDY_PLUGIN_PACKED_HANDLER_PACKED_OUTCOME_DROP;
        break;
    case EDDY_PLUGIN_TYPES_OUTCOME_REJECT:
        po.tag = EXPORTS_EDDY_PLUGIN_PACKED_HANDLER_PACKED_OUTCOME_REJECT;
        push_piece(pieces, o->val.reject.ptr, o->val.reject.len);
        break;
    default: {
        const eddy_plugin_types_list_output_t *l = &o->val.emit;
        po.tag = EXPORTS_EDDY_PLUGIN_PACKED_HANDLER_PACKED_OUTCOME_EMIT;
        po.val.emit = (uint32_t)l->len;
        grow((void **)&outs->ptr, outs_cap, outs->len + l->len, sizeof *outs->ptr);
        for (size_t j = 0; j < l->len; j++) {
            const eddy_plugin_types_output_t *out = &l->ptr[j];
            outs->ptr[outs->len++] = (exports_eddy_plugin_packed_handler_packed_output_t){
                out->subject.is_some, (uint32_t)out->headers.len};
            if (out->subject.is_some)
                push_piece(pieces, out->subject.val.ptr, out->subject.val.len);
            for (size_t h = 0; h < out->headers.len; h++) {
                push_piece(pieces, out->headers.ptr[h].f0.ptr, out->headers.ptr[h].f0.len);
                push_piece(pieces, out->headers.ptr[h].f1.ptr, out->headers.ptr[h].f1.len);
            }
            push_piece(pieces, out->payload.ptr, out->payload.len);
        }
    }
    }
    return po;
}

void exports_eddy_plugin_packed_handler_handle_packed(packed_events *events, packed_outcomes *ret) {
    size_t n = events->events.len;
    memset(ret, 0, sizeof *ret);
    ret->outcomes.len = n;
    ret->outcomes.ptr = calloc(n ? n : 1, sizeof *ret->outcomes.ptr);
    if (!ret->outcomes.ptr) oom();
    piece_reader in = {events, 0, 0};
    piece_list pieces = {0};
    size_t outs_cap = 0;
    for (size_t i = 0; i < n; i++) {
        eddy_plugin_types_outcome_t o;
        memset(&o, 0, sizeof o);
        const exports_eddy_plugin_packed_handler_packed_event_t *pe = &events->events.ptr[i];
        if (!initialised) {
            o.tag = EDDY_PLUGIN_TYPES_OUTCOME_REJECT;
            o.val.reject = owned_str(NOT_INITIALISED, strlen(NOT_INITIALISED));
        } else {
            eddy_event ev;
            ev.key = read_piece(&in);
            ev.subject = read_text(&in);
            ev.header_count = pe->headers;
            eddy_header *h = eddy_alloc(pe->headers * sizeof *h + 1);
            for (size_t j = 0; j < pe->headers; j++) {
                h[j].name = read_text(&in);
                h[j].value = read_text(&in);
            }
            ev.headers = h;
            ev.payload = read_piece(&in);
            ev.timestamp_ms = pe->timestamp_ms;
            ev.sequence = pe->sequence;
            o.tag = EDDY_PLUGIN_TYPES_OUTCOME_DROP;
            current_event = (int64_t)i;
            eddy_outcome outcome = {&o};
            eddy_the_plugin.process(&ev, &outcome);
            current_event = -1;
        }
        ret->outcomes.ptr[i] = pack_outcome(&pieces, &ret->outputs, &outs_cap, &o);
        eddy_plugin_types_outcome_free(&o);
        reset_scratch();
    }
    /* The lists are the generated post-return code's to free (it frees non-empty ones only;
     * an empty piece list owns no memory). */
    ret->bytes = (packed_processor_list_u8_t){pieces.bytes, pieces.nbytes};
    ret->ends = (packed_processor_list_u32_t){pieces.ends, pieces.nends};
    finish_batch();
    forget_batch_reads();
    exports_eddy_plugin_packed_handler_packed_events_free(events);
}

void exports_eddy_plugin_broadcast_handler_handle_broadcast(
    exports_eddy_plugin_broadcast_handler_list_broadcast_event_t *events,
    exports_eddy_plugin_broadcast_handler_list_result_void_string_t *ret) {
    size_t n = events->len;
    ret->len = n;
    ret->ptr = calloc(n ? n : 1, sizeof *ret->ptr);
    if (!ret->ptr) oom();
    for (size_t i = 0; i < n; i++) {
        exports_eddy_plugin_broadcast_handler_broadcast_event_t *e = &events->ptr[i];
        const char *error;
        if (!initialised) {
            error = NOT_INITIALISED;
        } else if (!eddy_the_plugin.broadcast) {
            error = NO_BROADCAST;
        } else {
            eddy_broadcast_event be;
            be.input = from_wit_str(e->input);
            be.subject = from_wit_str(e->subject);
            be.header_count = e->headers.len;
            eddy_header *h = eddy_alloc(e->headers.len * sizeof *h + 1);
            for (size_t j = 0; j < e->headers.len; j++) {
                h[j].name = from_wit_str(e->headers.ptr[j].f0);
                h[j].value = from_wit_str(e->headers.ptr[j].f1);
            }
            be.headers = h;
            be.payload = (eddy_bytes){e->payload.ptr, e->payload.len};
            be.timestamp_ms = e->timestamp_ms;
            be.sequence = e->sequence;
            error = eddy_the_plugin.broadcast(&be);
        }
        if (error) {
            ret->ptr[i].is_err = true;
            ret->ptr[i].val.err = owned_str(error, strlen(error));
        }
        reset_scratch();
    }
    exports_eddy_plugin_broadcast_handler_list_broadcast_event_free(events);
}

void exports_eddy_plugin_lookup_planner_prepare(
    exports_eddy_plugin_lookup_planner_list_event_t *events,
    exports_eddy_plugin_lookup_planner_list_list_lookup_request_t *ret) {
    size_t n = events->len;
    ret->len = n;
    ret->ptr = calloc(n ? n : 1, sizeof *ret->ptr);
    if (!ret->ptr) oom();
    if (initialised && eddy_the_plugin.plan_lookups) {
        for (size_t i = 0; i < n; i++) {
            eddy_event ev = convert_event(&events->ptr[i]);
            eddy_lookup_plan plan = {&ret->ptr[i]};
            eddy_the_plugin.plan_lookups(&ev, &plan);
            reset_scratch();
        }
    }
    exports_eddy_plugin_lookup_planner_list_event_free(events);
}

void exports_eddy_plugin_keyed_visitor_visit(
    packed_processor_string_t *tag, packed_processor_string_t *state,
    exports_eddy_plugin_keyed_visitor_list_visited_entry_t *entries,
    exports_eddy_plugin_keyed_visitor_list_visit_action_t *ret) {
    size_t n = entries->len;
    ret->len = n;
    ret->ptr = calloc(n ? n : 1, sizeof *ret->ptr);
    if (!ret->ptr) oom();
    if (initialised && eddy_the_plugin.visit) {
        for (size_t i = 0; i < n; i++) {
            const char *t = from_wit_str(*tag), *s = from_wit_str(*state);
            exports_eddy_plugin_keyed_visitor_visited_entry_t *e = &entries->ptr[i];
            eddy_visited_entry entry = {
                .key = {e->key.ptr, e->key.len},
                .has_map_key = e->map_key.is_some,
                .map_key = {e->map_key.val.ptr, e->map_key.is_some ? e->map_key.val.len : 0},
                .value = {e->value.ptr, e->value.len},
            };
            eddy_bytes value = {0};
            eddy_visit_action a = eddy_the_plugin.visit(t, s, &entry, &value);
            if (a == EDDY_VISIT_SET) {
                ret->ptr[i].tag = EXPORTS_EDDY_PLUGIN_KEYED_VISITOR_VISIT_ACTION_SET;
                packed_processor_string_t copy = owned_str((const char *)value.ptr, value.len);
                ret->ptr[i].val.set = (packed_processor_list_u8_t){copy.ptr, copy.len};
            } else {
                ret->ptr[i].tag = a == EDDY_VISIT_REMOVE
                                      ? EXPORTS_EDDY_PLUGIN_KEYED_VISITOR_VISIT_ACTION_REMOVE
                                      : EXPORTS_EDDY_PLUGIN_KEYED_VISITOR_VISIT_ACTION_KEEP;
            }
            reset_scratch();
        }
    }
    packed_processor_string_free(tag);
    packed_processor_string_free(state);
    exports_eddy_plugin_keyed_visitor_list_visited_entry_free(entries);
}

bool exports_eddy_plugin_migrator_migrate(packed_processor_string_t *previous_version,
                                          packed_processor_string_t *err) {
    const char *error = NULL;
    if (!initialised) error = NOT_INITIALISED;
    else if (eddy_the_plugin.migrate) error = eddy_the_plugin.migrate(from_wit_str(*previous_version));
    packed_processor_string_free(previous_version);
    if (error) *err = owned_str(error, strlen(error));
    reset_scratch();
    return error == NULL;
}
