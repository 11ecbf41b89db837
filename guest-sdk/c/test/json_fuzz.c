/* json_fuzz.c: a libFuzzer target for the C layer's JSON reader and writer (eddy_json.c), the
 * code that reads every event payload and state value a C plugin is given. Built natively with
 * AddressSanitizer and UBSan by `scripts/guests/c.sh fuzz` (run from scripts/dev/fuzz.sh).
 *
 * For any bytes:
 *  - the reader accepts them or names why not, and never reads outside them;
 *  - what it accepts, the writer writes as JSON that reads back as the same document (same
 *    kinds, number texts, string bytes, items and members in order), and writing that once
 *    more gives the same bytes: the compact form is a fixed point;
 *  - an integer literal is an i64/u64 exactly when strtoll/strtoull read it without overflow,
 *    with their value ("-0" is not an integer, as in serde_json).
 * A crash leaves its input in the artifact directory; each becomes a case of json_test.c. */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eddy.h"

/* Memory for the JSON code: an arena emptied after each input, as the layer's is after each
 * event (the rest of what eddy.c gives it is in native.c). */
static void **allocations;
static size_t allocated, allocations_cap;

void *eddy_alloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) abort();
    if (allocated == allocations_cap) {
        allocations_cap = allocations_cap ? allocations_cap * 2 : 1024;
        allocations = realloc(allocations, allocations_cap * sizeof *allocations);
        if (!allocations) abort();
    }
    allocations[allocated++] = p;
    return p;
}
static void empty_arena(void) {
    for (size_t i = 0; i < allocated; i++) free(allocations[i]);
    allocated = 0;
}

static void failed(const char *what, const uint8_t *data, size_t size) {
    fprintf(stderr, "json_fuzz: %s; input (%zu bytes): %.*s\n", what, size, (int)size,
            (const char *)data);
    abort();
}

/* Checks every number of a document against the C library's reading of its text. */
static void check_numbers(const eddy_json *v, const uint8_t *data, size_t size) {
    switch (v->kind) {
    case EDDY_JSON_NUMBER: {
        int integer = strpbrk(v->str, ".eE") == NULL;
        errno = 0;
        char *end;
        unsigned long long u = strtoull(v->str, &end, 10);
        int u_ok = integer && v->str[0] != '-' && errno == 0 && *end == '\0';
        if (v->is_u64 != u_ok || (u_ok && v->u64 != u)) failed("u64 reading differs", data, size);
        errno = 0;
        long long i = strtoll(v->str, &end, 10);
        int i_ok = integer && errno == 0 && *end == '\0' && strcmp(v->str, "-0") != 0;
        if (v->is_i64 != i_ok || (i_ok && v->i64 != i)) failed("i64 reading differs", data, size);
        if (v->len != strlen(v->str)) failed("number text length", data, size);
        break;
    }
    case EDDY_JSON_ARRAY:
        for (size_t i = 0; i < v->count; i++) check_numbers(v->items[i], data, size);
        break;
    case EDDY_JSON_OBJECT:
        for (size_t i = 0; i < v->count; i++) check_numbers(v->members[i].value, data, size);
        break;
    default:
        break;
    }
}

/* Whether two documents are the same: kinds, number texts, string bytes, items and members in
 * their order. */
static int same(const eddy_json *a, const eddy_json *b) {
    if (a->kind != b->kind) return 0;
    switch (a->kind) {
    case EDDY_JSON_NULL: return 1;
    case EDDY_JSON_BOOL: return a->boolean == b->boolean;
    case EDDY_JSON_NUMBER:
    case EDDY_JSON_STRING: return a->len == b->len && memcmp(a->str, b->str, a->len) == 0;
    case EDDY_JSON_ARRAY:
        if (a->count != b->count) return 0;
        for (size_t i = 0; i < a->count; i++)
            if (!same(a->items[i], b->items[i])) return 0;
        return 1;
    case EDDY_JSON_OBJECT:
        if (a->count != b->count) return 0;
        for (size_t i = 0; i < a->count; i++) {
            const eddy_json_member *x = &a->members[i], *y = &b->members[i];
            if (x->key_len != y->key_len || memcmp(x->key, y->key, x->key_len) != 0) return 0;
            if (!same(x->value, y->value)) return 0;
        }
        return 1;
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *error = NULL;
    eddy_json *v = eddy_json_parse(data, size, &error);
    if (!v) {
        if (!error || !*error) failed("refused without a reason", data, size);
        empty_arena();
        return 0;
    }
    check_numbers(v, data, size);
    eddy_bytes once = eddy_json_encode(v);
    const char *again_error = NULL;
    eddy_json *again = eddy_json_parse(once.ptr, once.len, &again_error);
    if (!again) {
        fprintf(stderr, "written: %.*s\nreason: %s\n", (int)once.len, (const char *)once.ptr,
                again_error ? again_error : "(none)");
        failed("what the writer wrote does not read back", data, size);
    }
    if (!same(v, again)) {
        fprintf(stderr, "written: %.*s\n", (int)once.len, (const char *)once.ptr);
        failed("what the writer wrote reads back as another document", data, size);
    }
    eddy_bytes twice = eddy_json_encode(again);
    if (twice.len != once.len || memcmp(twice.ptr, once.ptr, once.len) != 0) {
        fprintf(stderr, "once:  %.*s\ntwice: %.*s\n", (int)once.len, (const char *)once.ptr,
                (int)twice.len, (const char *)twice.ptr);
        failed("writing is not a fixed point", data, size);
    }
    empty_arena();
    return 0;
}
