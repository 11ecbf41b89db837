/* eddy_json.c: a small JSON reader and writer for Eddy plugins written in C.
 *
 * The reader builds a tree in the per-call arena (see eddy_alloc); it accepts RFC 8259 JSON
 * only (no comments, no trailing commas, UTF-8 checked inside strings) and keeps the text of
 * numbers, so integers of any width are read exactly. The writer produces compact JSON with
 * the same escaping as Rust's serde_json, so every SDK writes byte-identical state. */

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "eddy.h"

/* ------------------------------------------------------------------------------------------ */
/* Scanning eight bytes at a time (wasm has 64-bit loads; a byte loop costs a branch a byte). */

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

static uint64_t load8(const char *p) {
    uint64_t x;
    memcpy(&x, p, 8);
    return x;
}

/* Non-zero if some byte of x is below n (n <= 128), or equals c1 or c2. Exact as a yes/no. */
static uint64_t any_below_or_eq(uint64_t x, unsigned n, unsigned char c1, unsigned char c2) {
    uint64_t a = x ^ (ONES * c1), b = x ^ (ONES * c2);
    return ((x - ONES * n) & ~x & HIGHS) | ((a - ONES) & ~a & HIGHS) | ((b - ONES) & ~b & HIGHS);
}

/* How many leading bytes of s (n bytes) a JSON string can hold as they are: no control
 * character, '"' or '\\'. With `ascii_only`, bytes from 0x80 end the run too. */
static size_t plain_run(const char *s, size_t n, bool ascii_only) {
    size_t i = 0;
    while (i + 8 <= n) {
        uint64_t x = load8(s + i);
        if (any_below_or_eq(x, 0x20, '"', '\\') | (ascii_only ? x & HIGHS : 0)) break;
        i += 8;
    }
    for (; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == '"' || c == '\\' || (ascii_only && c >= 0x80)) break;
    }
    return i;
}

/* ------------------------------------------------------------------------------------------ */
/* Reader */

typedef struct {
    const char *text;
    size_t len;
    size_t pos;
    const char *error;
    int depth;
} reader;

#define MAX_DEPTH 128

static void fail(reader *r, const char *what) {
    if (r->error) return;
    size_t line = 1, column = 0;
    size_t end = r->pos < r->len ? r->pos + 1 : r->len;
    for (size_t i = 0; i < end; i++) {
        if (r->text[i] == '\n') {
            line++;
            column = 0;
        } else {
            column++;
        }
    }
    if (r->pos >= r->len) column++;
    r->error = eddy_sprintf("%s at line %zu column %zu", what, line, column);
}

static void skip_ws(reader *r) {
    while (r->pos < r->len) {
        char c = r->text[r->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        r->pos++;
    }
}

static eddy_json *node(eddy_json_kind kind) {
    eddy_json *n = eddy_alloc(sizeof *n);
    memset(n, 0, sizeof *n);
    n->kind = kind;
    return n;
}

static int hex4(reader *r, uint32_t *out) {
    if (r->len - r->pos < 4) {
        r->pos = r->len;
        fail(r, "EOF while parsing a string");
        return 0;
    }
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        char c = r->text[r->pos];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
        else {
            fail(r, "invalid escape");
            return 0;
        }
        r->pos++;
    }
    *out = v;
    return 1;
}

static size_t put_utf8(char *out, uint32_t cp) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Length of the valid UTF-8 sequence at s (at most n bytes), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    size_t len;
    uint32_t min;
    uint32_t cp;
    if ((c & 0xE0) == 0xC0) { len = 2; min = 0x80; cp = c & 0x1F; }
    else if ((c & 0xF0) == 0xE0) { len = 3; min = 0x800; cp = c & 0x0F; }
    else if ((c & 0xF8) == 0xF0) { len = 4; min = 0x10000; cp = c & 0x07; }
    else return 0;
    if (n < len) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return len;
}

/* Parses a string starting after its opening quote; the result is NUL-terminated. */
static int parse_string(reader *r, const char **out, size_t *out_len) {
    size_t start = r->pos;
    /* The usual case: plain ASCII up to the closing quote, copied at once. */
    size_t run = plain_run(r->text + start, r->len - start, true);
    if (start + run < r->len && r->text[start + run] == '"') {
        char *buf = eddy_alloc(run + 1);
        memcpy(buf, r->text + start, run);
        buf[run] = '\0';
        r->pos = start + run + 1;
        *out = buf;
        *out_len = run;
        return 1;
    }
    /* First pass: find the end, to size the buffer (decoded text is never longer). */
    size_t i = start + run;
    while (i < r->len && r->text[i] != '"') {
        if (r->text[i] == '\\') i++;
        i++;
    }
    char *buf = eddy_alloc((i > r->len ? r->len : i) - start + 1);
    /* The plain run before whatever ended it is known already. */
    memcpy(buf, r->text + start, run);
    size_t n = run;
    r->pos = start + run;
    for (;;) {
        if (r->pos >= r->len) {
            fail(r, "EOF while parsing a string");
            return 0;
        }
        unsigned char c = (unsigned char)r->text[r->pos];
        if (c == '"') {
            r->pos++;
            break;
        }
        if (c < 0x20) {
            fail(r, "control character (\\u0000-\\u001F) found while parsing a string");
            return 0;
        }
        if (c >= 0x20 && c < 0x80 && c != '\\') {
            /* A run of plain ASCII is copied at once. */
            size_t end = r->pos + 1;
            end += plain_run(r->text + end, r->len - end, true);
            memcpy(buf + n, r->text + r->pos, end - r->pos);
            n += end - r->pos;
            r->pos = end;
            continue;
        }
        if (c != '\\') {
            size_t l = utf8_len((const unsigned char *)r->text + r->pos, r->len - r->pos);
            if (l == 0) {
                fail(r, "invalid unicode code point");
                return 0;
            }
            memcpy(buf + n, r->text + r->pos, l);
            n += l;
            r->pos += l;
            continue;
        }
        r->pos++;
        if (r->pos >= r->len) {
            fail(r, "EOF while parsing a string");
            return 0;
        }
        char e = r->text[r->pos++];
        switch (e) {
        case '"': buf[n++] = '"'; break;
        case '\\': buf[n++] = '\\'; break;
        case '/': buf[n++] = '/'; break;
        case 'b': buf[n++] = '\b'; break;
        case 'f': buf[n++] = '\f'; break;
        case 'n': buf[n++] = '\n'; break;
        case 'r': buf[n++] = '\r'; break;
        case 't': buf[n++] = '\t'; break;
        case 'u': {
            uint32_t cp;
            if (!hex4(r, &cp)) return 0;
            if (cp >= 0xDC00 && cp <= 0xDFFF) {
                fail(r, "lone leading surrogate in hex escape");
                return 0;
            }
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                uint32_t lo;
                if (r->len - r->pos < 2 || r->text[r->pos] != '\\' || r->text[r->pos + 1] != 'u') {
                    fail(r, "unexpected end of hex escape");
                    return 0;
                }
                r->pos += 2;
                if (!hex4(r, &lo)) return 0;
                if (lo < 0xDC00 || lo > 0xDFFF) {
                    fail(r, "lone leading surrogate in hex escape");
                    return 0;
                }
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            /* An escape never takes more bytes decoded than written (\uXXXX is 6 bytes). */
            n += put_utf8(buf + n, cp);
            break;
        }
        default:
            r->pos--;
            fail(r, "invalid escape");
            return 0;
        }
    }
    buf[n] = '\0';
    *out = buf;
    *out_len = n;
    return 1;
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }

static eddy_json *parse_number(reader *r) {
    size_t start = r->pos;
    int integer = 1, negative = 0;
    if (r->text[r->pos] == '-') {
        negative = 1;
        r->pos++;
    }
    if (r->pos >= r->len || !is_digit(r->text[r->pos])) {
        fail(r, "invalid number");
        return NULL;
    }
    if (r->text[r->pos] == '0') {
        r->pos++;
        if (r->pos < r->len && is_digit(r->text[r->pos])) {
            fail(r, "invalid number");
            return NULL;
        }
    } else {
        while (r->pos < r->len && is_digit(r->text[r->pos])) r->pos++;
    }
    if (r->pos < r->len && r->text[r->pos] == '.') {
        integer = 0;
        r->pos++;
        if (r->pos >= r->len || !is_digit(r->text[r->pos])) {
            fail(r, "invalid number");
            return NULL;
        }
        while (r->pos < r->len && is_digit(r->text[r->pos])) r->pos++;
    }
    if (r->pos < r->len && (r->text[r->pos] == 'e' || r->text[r->pos] == 'E')) {
        integer = 0;
        r->pos++;
        if (r->pos < r->len && (r->text[r->pos] == '+' || r->text[r->pos] == '-')) r->pos++;
        if (r->pos >= r->len || !is_digit(r->text[r->pos])) {
            fail(r, "invalid number");
            return NULL;
        }
        while (r->pos < r->len && is_digit(r->text[r->pos])) r->pos++;
    }
    eddy_json *n = node(EDDY_JSON_NUMBER);
    n->str = eddy_strndup(r->text + start, r->pos - start);
    n->len = r->pos - start;
    if (integer) {
        /* The magnitude, if it fits in 64 bits. */
        uint64_t mag = 0;
        int fits = 1;
        for (size_t i = start + (size_t)negative; i < r->pos; i++) {
            unsigned d = (unsigned)(r->text[i] - '0');
            /* Constants only: a division per digit is slow in wasm (no 128-bit multiply). */
            if (mag > UINT64_MAX / 10 || (mag == UINT64_MAX / 10 && d > UINT64_MAX % 10)) {
                fits = 0;
                break;
            }
            mag = mag * 10 + d;
        }
        if (fits) {
            if (!negative) {
                n->is_u64 = 1;
                n->u64 = mag;
                if (mag <= (uint64_t)INT64_MAX) {
                    n->is_i64 = 1;
                    n->i64 = (int64_t)mag;
                }
            } else if (mag != 0 && mag <= (uint64_t)INT64_MAX + 1) {
                /* Like serde_json, "-0" is a float, not an integer. */
                n->is_i64 = 1;
                n->i64 = (int64_t)(0 - mag);
            }
        }
    }
    return n;
}

static int literal(reader *r, const char *word) {
    size_t l = strlen(word);
    for (size_t i = 0; i < l; i++) {
        if (r->pos >= r->len) {
            fail(r, "EOF while parsing a value");
            return 0;
        }
        if (r->text[r->pos] != word[i]) {
            fail(r, "expected ident");
            return 0;
        }
        r->pos++;
    }
    return 1;
}

/* A growable array of pointers, copied into the arena when complete. The first PTRVEC_INLINE
 * live in the struct itself (on the stack): most objects and arrays never call malloc. */
#define PTRVEC_INLINE 16
typedef struct {
    void **items; /* `inline_items` or malloc'ed */
    size_t len, cap;
    void *inline_items[PTRVEC_INLINE];
} ptrvec;

static void ptrvec_init(ptrvec *v) {
    v->items = v->inline_items;
    v->len = 0;
    v->cap = PTRVEC_INLINE;
}

static void ptrvec_push(ptrvec *v, void *p) {
    if (v->len == v->cap) {
        size_t cap = v->cap * 2;
        void **items = malloc(cap * sizeof *items);
        if (!items) abort();
        memcpy(items, v->items, v->len * sizeof *items);
        if (v->items != v->inline_items) free(v->items);
        v->items = items;
        v->cap = cap;
    }
    v->items[v->len++] = p;
}

static void ptrvec_free(ptrvec *v) {
    if (v->items != v->inline_items) free(v->items);
}

static eddy_json *parse_value(reader *r);

static eddy_json *parse_array(reader *r) {
    eddy_json *n = node(EDDY_JSON_ARRAY);
    ptrvec items;
    ptrvec_init(&items);
    r->pos++; /* '[' */
    skip_ws(r);
    if (r->pos < r->len && r->text[r->pos] == ']') {
        r->pos++;
        return n;
    }
    for (;;) {
        eddy_json *item = parse_value(r);
        if (!item) break;
        ptrvec_push(&items, item);
        skip_ws(r);
        if (r->pos >= r->len) {
            fail(r, "EOF while parsing a list");
            break;
        }
        char c = r->text[r->pos];
        if (c == ',') {
            r->pos++;
            skip_ws(r);
            if (r->pos < r->len && r->text[r->pos] == ']') {
                fail(r, "trailing comma");
                break;
            }
            continue;
        }
        if (c == ']') {
            r->pos++;
            break;
        }
        fail(r, "expected `,` or `]`");
        break;
    }
    if (!r->error) {
        n->count = items.len;
        n->items = eddy_alloc(items.len * sizeof(eddy_json *));
        memcpy(n->items, items.items, items.len * sizeof(eddy_json *));
    }
    ptrvec_free(&items);
    return r->error ? NULL : n;
}

static eddy_json *parse_object(reader *r) {
    eddy_json *n = node(EDDY_JSON_OBJECT);
    ptrvec members;
    ptrvec_init(&members);
    r->pos++; /* '{' */
    skip_ws(r);
    if (r->pos < r->len && r->text[r->pos] == '}') {
        r->pos++;
        return n;
    }
    for (;;) {
        skip_ws(r);
        if (r->pos >= r->len) {
            fail(r, "EOF while parsing an object");
            break;
        }
        if (r->text[r->pos] != '"') {
            fail(r, r->text[r->pos] == '}' ? "trailing comma" : "key must be a string");
            break;
        }
        r->pos++;
        eddy_json_member *m = eddy_alloc(sizeof *m);
        if (!parse_string(r, &m->key, &m->key_len)) break;
        skip_ws(r);
        if (r->pos >= r->len) {
            fail(r, "EOF while parsing an object");
            break;
        }
        if (r->text[r->pos] != ':') {
            fail(r, "expected `:`");
            break;
        }
        r->pos++;
        m->value = parse_value(r);
        if (!m->value) break;
        ptrvec_push(&members, m);
        skip_ws(r);
        if (r->pos >= r->len) {
            fail(r, "EOF while parsing an object");
            break;
        }
        char c = r->text[r->pos];
        if (c == ',') {
            r->pos++;
            continue;
        }
        if (c == '}') {
            r->pos++;
            break;
        }
        fail(r, "expected `,` or `}`");
        break;
    }
    if (!r->error) {
        n->count = members.len;
        n->members = eddy_alloc(members.len * sizeof(eddy_json_member));
        for (size_t i = 0; i < members.len; i++)
            n->members[i] = *(eddy_json_member *)members.items[i];
    }
    ptrvec_free(&members);
    return r->error ? NULL : n;
}

static eddy_json *parse_value(reader *r) {
    skip_ws(r);
    if (r->pos >= r->len) {
        fail(r, "EOF while parsing a value");
        return NULL;
    }
    if (++r->depth > MAX_DEPTH) {
        fail(r, "recursion limit exceeded");
        return NULL;
    }
    eddy_json *v = NULL;
    char c = r->text[r->pos];
    switch (c) {
    case 'n':
        if (literal(r, "null")) v = node(EDDY_JSON_NULL);
        break;
    case 't':
        if (literal(r, "true")) {
            v = node(EDDY_JSON_BOOL);
            v->boolean = true;
        }
        break;
    case 'f':
        if (literal(r, "false")) v = node(EDDY_JSON_BOOL);
        break;
    case '"': {
        r->pos++;
        const char *s;
        size_t l;
        if (parse_string(r, &s, &l)) {
            v = node(EDDY_JSON_STRING);
            v->str = s;
            v->len = l;
        }
        break;
    }
    case '[': v = parse_array(r); break;
    case '{': v = parse_object(r); break;
    default:
        if (c == '-' || is_digit(c)) v = parse_number(r);
        else fail(r, "expected value");
    }
    r->depth--;
    return r->error ? NULL : v;
}

eddy_json *eddy_json_parse(const void *text, size_t len, const char **error) {
    reader r = {.text = text, .len = len};
    eddy_json *v = parse_value(&r);
    if (v) {
        skip_ws(&r);
        if (r.pos < r.len) fail(&r, "trailing characters");
    }
    if (r.error) {
        if (error) *error = r.error;
        return NULL;
    }
    if (error) *error = NULL;
    return v;
}

/* ------------------------------------------------------------------------------------------ */
/* Access */

const char *eddy_json_kind_name(const eddy_json *v) {
    if (!v) return "nothing";
    switch (v->kind) {
    case EDDY_JSON_NULL: return "null";
    case EDDY_JSON_BOOL: return "a boolean";
    case EDDY_JSON_NUMBER: return v->is_u64 || v->is_i64 ? "an integer" : "a number";
    case EDDY_JSON_STRING: return "a string";
    case EDDY_JSON_ARRAY: return "an array";
    case EDDY_JSON_OBJECT: return "an object";
    }
    return "?";
}

const eddy_json *eddy_json_get(const eddy_json *object, const char *key) {
    if (!object || object->kind != EDDY_JSON_OBJECT) return NULL;
    size_t kl = strlen(key);
    /* The last occurrence wins, as in serde_json's Value. */
    for (size_t i = object->count; i-- > 0;) {
        const eddy_json_member *m = &object->members[i];
        if (m->key_len == kl && memcmp(m->key, key, kl) == 0) return m->value;
    }
    return NULL;
}

const eddy_json *eddy_json_at(const eddy_json *array, size_t index) {
    if (!array || array->kind != EDDY_JSON_ARRAY || index >= array->count) return NULL;
    return array->items[index];
}

bool eddy_json_is_null(const eddy_json *v) { return !v || v->kind == EDDY_JSON_NULL; }

bool eddy_json_as_u64(const eddy_json *v, uint64_t *out) {
    if (!v || v->kind != EDDY_JSON_NUMBER || !v->is_u64) return false;
    *out = v->u64;
    return true;
}

bool eddy_json_as_i64(const eddy_json *v, int64_t *out) {
    if (!v || v->kind != EDDY_JSON_NUMBER || !v->is_i64) return false;
    *out = v->i64;
    return true;
}

const char *eddy_json_as_str(const eddy_json *v, size_t *len) {
    if (!v || v->kind != EDDY_JSON_STRING) return NULL;
    if (len) *len = v->len;
    return v->str;
}

bool eddy_json_as_bool(const eddy_json *v, bool *out) {
    if (!v || v->kind != EDDY_JSON_BOOL) return false;
    *out = v->boolean;
    return true;
}

/* Field readers with serde-like error messages. */

static const char *type_error(const eddy_json *v, const char *field, const char *expected) {
    return eddy_sprintf("invalid type: %s, expected %s (field `%s`)", eddy_json_kind_name(v),
                        expected, field);
}

const char *eddy_json_expect_object(const eddy_json *v, const char *what) {
    if (v && v->kind == EDDY_JSON_OBJECT) return NULL;
    return eddy_sprintf("invalid type: %s, expected %s", eddy_json_kind_name(v), what);
}

const char *eddy_json_field_str(const eddy_json *object, const char *field, const char **out,
                                size_t *len) {
    const eddy_json *v = eddy_json_get(object, field);
    if (!v) return eddy_sprintf("missing field `%s`", field);
    if (v->kind != EDDY_JSON_STRING) return type_error(v, field, "a string");
    *out = v->str;
    if (len) *len = v->len;
    return NULL;
}

const char *eddy_json_field_u32_or(const eddy_json *object, const char *field, uint32_t dflt,
                                   uint32_t *out) {
    const eddy_json *v = eddy_json_get(object, field);
    uint64_t u;
    if (!v) {
        *out = dflt;
        return NULL;
    }
    if (!eddy_json_as_u64(v, &u) || u > UINT32_MAX) return type_error(v, field, "u32");
    *out = (uint32_t)u;
    return NULL;
}

const eddy_json *eddy_json_as_struct(const eddy_json *v, const char *const *fields,
                                     const char *what, const char **error) {
    *error = NULL;
    if (v && v->kind == EDDY_JSON_OBJECT) {
        /* Like serde's derive: a field given twice is an error (a repeated unknown member is
         * not). Members are compared with each other first, which is cheap (lengths differ),
         * and only a repeated name is looked up among the fields. */
        for (size_t i = 0; i < v->count; i++) {
            const eddy_json_member *a = &v->members[i];
            for (size_t j = i + 1; j < v->count; j++) {
                const eddy_json_member *b = &v->members[j];
                if (a->key_len != b->key_len || memcmp(a->key, b->key, a->key_len) != 0) continue;
                for (const char *const *f = fields; *f; f++) {
                    if (strlen(*f) == a->key_len && memcmp(*f, a->key, a->key_len) == 0) {
                        *error = eddy_sprintf("duplicate field `%s`", *f);
                        return NULL;
                    }
                }
            }
        }
        return v;
    }
    if (!v || v->kind != EDDY_JSON_ARRAY) {
        *error = eddy_sprintf("invalid type: %s, expected %s", eddy_json_kind_name(v), what);
        return NULL;
    }
    size_t n = 0;
    while (fields[n]) n++;
    if (v->count > n) {
        *error = eddy_sprintf("trailing characters: invalid length %zu, expected %s with %zu "
                              "elements", v->count, what, n);
        return NULL;
    }
    eddy_json *o = node(EDDY_JSON_OBJECT);
    o->count = v->count;
    o->members = eddy_alloc(v->count * sizeof(eddy_json_member) + 1);
    for (size_t i = 0; i < v->count; i++) {
        o->members[i].key = fields[i];
        o->members[i].key_len = strlen(fields[i]);
        o->members[i].value = v->items[i];
    }
    return o;
}

const char *eddy_json_field_u64(const eddy_json *object, const char *field, uint64_t *out) {
    const eddy_json *v = eddy_json_get(object, field);
    if (!v) return eddy_sprintf("missing field `%s`", field);
    if (!eddy_json_as_u64(v, out)) return type_error(v, field, "u64");
    return NULL;
}

const char *eddy_json_field_opt_u64(const eddy_json *object, const char *field, bool *present,
                                    uint64_t *out) {
    const eddy_json *v = eddy_json_get(object, field);
    *present = false;
    if (eddy_json_is_null(v)) return NULL;
    if (!eddy_json_as_u64(v, out)) return type_error(v, field, "u64");
    *present = true;
    return NULL;
}

const char *eddy_json_field_opt_str(const eddy_json *object, const char *field,
                                    const char **out) {
    const eddy_json *v = eddy_json_get(object, field);
    *out = NULL;
    if (eddy_json_is_null(v)) return NULL;
    if (v->kind != EDDY_JSON_STRING) return type_error(v, field, "a string");
    *out = v->str;
    return NULL;
}

const char *eddy_json_field_opt_bool(const eddy_json *object, const char *field, bool *out) {
    const eddy_json *v = eddy_json_get(object, field);
    if (!v) return NULL;
    if (v->kind != EDDY_JSON_BOOL) return type_error(v, field, "a boolean");
    *out = v->boolean;
    return NULL;
}

const char *eddy_json_deny_unknown(const eddy_json *object, const char *const *fields) {
    if (!object || object->kind != EDDY_JSON_OBJECT) return NULL;
    for (size_t i = 0; i < object->count; i++) {
        const eddy_json_member *m = &object->members[i];
        int known = 0;
        for (const char *const *f = fields; *f; f++) {
            if (strlen(*f) == m->key_len && memcmp(*f, m->key, m->key_len) == 0) {
                known = 1;
                break;
            }
        }
        if (!known) {
            /* Lists the expected fields like serde does. */
            eddy_writer list = {0};
            for (const char *const *f = fields; *f; f++) {
                eddy_w_raw(&list, f == fields ? "`" : ", `", f == fields ? 1 : 3);
                eddy_w_raw(&list, *f, strlen(*f));
                eddy_w_raw(&list, "`", 1);
            }
            eddy_w_raw(&list, "", 1);
            return eddy_sprintf("unknown field `%s`, expected one of %s", m->key, list.data);
        }
    }
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Writer */

static void grow(eddy_writer *w, size_t extra) {
    if (w->len + extra <= w->cap) return;
    size_t cap = w->cap ? w->cap * 2 : 256;
    while (cap < w->len + extra) cap *= 2;
    char *data = eddy_alloc(cap);
    if (w->len) memcpy(data, w->data, w->len);
    w->data = data;
    w->cap = cap;
}

void eddy_w_raw(eddy_writer *w, const char *s, size_t n) {
    grow(w, n);
    memcpy(w->data + w->len, s, n);
    w->len += n;
}

/* The "has an item" flag of the container open at `depth` (1 = outermost). */
static bool *item_flag(eddy_writer *w, int depth) {
    size_t i = (size_t)depth - 1;
    return i < EDDY_WRITER_INLINE_DEPTH ? &w->has_item[i] : &w->deeper[i - EDDY_WRITER_INLINE_DEPTH];
}

/* A value is about to be written: a comma if it is not the first in its container. */
static void before_value(eddy_writer *w) {
    if (w->after_key) {
        w->after_key = false;
        return;
    }
    if (w->depth > 0) {
        bool *has_item = item_flag(w, w->depth);
        if (*has_item) eddy_w_raw(w, ",", 1);
        *has_item = true;
    }
}

static void open_container(eddy_writer *w, char c) {
    before_value(w);
    eddy_w_raw(w, &c, 1);
    w->depth++;
    size_t beyond = (size_t)w->depth - 1;
    if (w->depth > EDDY_WRITER_INLINE_DEPTH && beyond - EDDY_WRITER_INLINE_DEPTH >= w->deeper_cap) {
        size_t cap = w->deeper_cap ? w->deeper_cap * 2 : 64;
        bool *deeper = eddy_alloc(cap * sizeof *deeper);
        if (w->deeper_cap) memcpy(deeper, w->deeper, w->deeper_cap * sizeof *deeper);
        w->deeper = deeper;
        w->deeper_cap = cap;
    }
    *item_flag(w, w->depth) = false;
}

void eddy_w_object(eddy_writer *w) { open_container(w, '{'); }
void eddy_w_array(eddy_writer *w) { open_container(w, '['); }

void eddy_w_end_object(eddy_writer *w) {
    w->depth--;
    eddy_w_raw(w, "}", 1);
}

void eddy_w_end_array(eddy_writer *w) {
    w->depth--;
    eddy_w_raw(w, "]", 1);
}

/* Writes the escape of c, a byte plain_run stopped at, as serde_json does. */
static void write_escape(eddy_writer *w, unsigned char c) {
    static const char hex[] = "0123456789abcdef";
    char e[6] = {'\\', 0};
    size_t len = 2;
    switch (c) {
    case '"': e[1] = '"'; break;
    case '\\': e[1] = '\\'; break;
    case '\b': e[1] = 'b'; break;
    case '\f': e[1] = 'f'; break;
    case '\n': e[1] = 'n'; break;
    case '\r': e[1] = 'r'; break;
    case '\t': e[1] = 't'; break;
    default:
        e[1] = 'u'; e[2] = '0'; e[3] = '0';
        e[4] = hex[c >> 4]; e[5] = hex[c & 15];
        len = 6;
    }
    eddy_w_raw(w, e, len);
}

/* A JSON string of s: plain runs copied at once, the bytes between them escaped. */
static void write_escaped(eddy_writer *w, const char *s, size_t n) {
    grow(w, n + 2);
    w->data[w->len++] = '"';
    for (size_t i = 0;;) {
        size_t plain = plain_run(s + i, n - i, false);
        if (plain) eddy_w_raw(w, s + i, plain);
        i += plain;
        if (i == n) break;
        write_escape(w, (unsigned char)s[i++]);
    }
    eddy_w_raw(w, "\"", 1);
}

void eddy_w_keyn(eddy_writer *w, const char *key, size_t n) {
    before_value(w);
    write_escaped(w, key, n);
    grow(w, 1);
    w->data[w->len++] = ':';
    w->after_key = true;
}

void eddy_w_strn(eddy_writer *w, const char *s, size_t n) {
    before_value(w);
    write_escaped(w, s, n);
}

void eddy_w_str(eddy_writer *w, const char *s) { eddy_w_strn(w, s, strlen(s)); }

/* "00" to "99": two digits per step. */
static const char digit_pairs[201] = "00010203040506070809101112131415161718192021222324252627282930"
                                     "31323334353637383940414243444546474849505152535455565758596061"
                                     "62636465666768697071727374757677787980818283848586878889909192"
                                     "93949596979899";

/* Writes the digits of v < 2^32 ending at buf[i], returning the new start. 32-bit division by a
 * constant is a multiply in wasm; a 64-bit one is a real division. */
static size_t put_u32(char *buf, size_t i, uint32_t v) {
    while (v >= 100) {
        uint32_t r = v % 100;
        v /= 100;
        buf[--i] = digit_pairs[2 * r + 1];
        buf[--i] = digit_pairs[2 * r];
    }
    if (v >= 10) {
        buf[--i] = digit_pairs[2 * v + 1];
        buf[--i] = digit_pairs[2 * v];
    } else {
        buf[--i] = (char)('0' + v);
    }
    return i;
}

static void write_uint(eddy_writer *w, uint64_t v, bool negative) {
    char buf[24];
    size_t i = sizeof buf;
    /* Above 2^32, peel off eight digits at a time with one 64-bit division each. */
    while (v > UINT32_MAX) {
        uint64_t q = v / 100000000;
        uint32_t low = (uint32_t)(v - q * 100000000);
        size_t end = i;
        i = put_u32(buf, i, low);
        while (end - i < 8) buf[--i] = '0';
        v = q;
    }
    i = put_u32(buf, i, (uint32_t)v);
    if (negative) buf[--i] = '-';
    before_value(w);
    eddy_w_raw(w, buf + i, sizeof buf - i);
}

void eddy_w_u64(eddy_writer *w, uint64_t v) { write_uint(w, v, false); }

void eddy_w_i64(eddy_writer *w, int64_t v) {
    write_uint(w, v < 0 ? 0 - (uint64_t)v : (uint64_t)v, v < 0);
}

void eddy_w_bool(eddy_writer *w, bool v) {
    before_value(w);
    eddy_w_raw(w, v ? "true" : "false", v ? 4 : 5);
}

void eddy_w_null(eddy_writer *w) {
    before_value(w);
    eddy_w_raw(w, "null", 4);
}

void eddy_w_json(eddy_writer *w, const eddy_json *v) {
    if (!v) {
        eddy_w_null(w);
        return;
    }
    switch (v->kind) {
    case EDDY_JSON_NULL: eddy_w_null(w); break;
    case EDDY_JSON_BOOL: eddy_w_bool(w, v->boolean); break;
    case EDDY_JSON_NUMBER:
        before_value(w);
        eddy_w_raw(w, v->str, v->len);
        break;
    case EDDY_JSON_STRING: eddy_w_strn(w, v->str, v->len); break;
    case EDDY_JSON_ARRAY:
        eddy_w_array(w);
        for (size_t i = 0; i < v->count; i++) eddy_w_json(w, v->items[i]);
        eddy_w_end_array(w);
        break;
    case EDDY_JSON_OBJECT:
        eddy_w_object(w);
        for (size_t i = 0; i < v->count; i++) {
            eddy_w_keyn(w, v->members[i].key, v->members[i].key_len);
            eddy_w_json(w, v->members[i].value);
        }
        eddy_w_end_object(w);
        break;
    }
}

eddy_bytes eddy_w_bytes(const eddy_writer *w) {
    eddy_bytes b = {(const uint8_t *)w->data, w->len};
    return b;
}

char *eddy_w_cstr(eddy_writer *w) {
    grow(w, 1);
    w->data[w->len] = '\0';
    return w->data;
}

eddy_bytes eddy_json_encode(const eddy_json *v) {
    eddy_writer w = {0};
    eddy_w_json(&w, v);
    return eddy_w_bytes(&w);
}
