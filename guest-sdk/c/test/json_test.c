/* json_test.c: the C layer's JSON reader and writer (eddy_json.c), compiled natively with
 * sanitizers and checked against plain reference code: numbers against printf, string
 * escaping against a byte-at-a-time escaper, reading against writing (round trips), and
 * fixed edge cases whose answers serde_json gives. Run: bash scripts/guests/c.sh test */

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eddy.h"

/* Memory for the JSON code, never freed: the test is short (the rest is in native.c). */
void *eddy_alloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) abort();
    return p;
}

static int failures;
#define CHECK(cond, ...)                                       \
    do {                                                       \
        if (!(cond)) {                                         \
            if (failures++ < 20) {                             \
                fprintf(stderr, "%s:%d: ", __FILE__, __LINE__); \
                fprintf(stderr, __VA_ARGS__);                  \
                fputc('\n', stderr);                           \
            }                                                  \
        }                                                      \
    } while (0)

static uint64_t rng = 0x9e3779b97f4a7c15ULL;
static uint64_t next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* serde_json's escaping, one byte at a time: the reference for the writer's fast paths. */
static size_t reference_escape(const char *s, size_t n, char *out) {
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    out[o++] = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *e = NULL;
        switch (c) {
        case '"': e = "\\\""; break;
        case '\\': e = "\\\\"; break;
        case '\b': e = "\\b"; break;
        case '\f': e = "\\f"; break;
        case '\n': e = "\\n"; break;
        case '\r': e = "\\r"; break;
        case '\t': e = "\\t"; break;
        }
        if (e) {
            out[o++] = e[0];
            out[o++] = e[1];
        } else if (c < 0x20) {
            memcpy(out + o, "\\u00", 4);
            out[o + 4] = hex[c >> 4];
            out[o + 5] = hex[c & 15];
            o += 6;
        } else {
            out[o++] = (char)c;
        }
    }
    out[o++] = '"';
    return o;
}

static void numbers(void) {
    static const uint64_t edges[] = {0, 9, 10, 99, 100, 4294967295ULL, 4294967296ULL,
                                     100000000ULL, 100000000000ULL, 1700000000000ULL,
                                     429496729600000000ULL, 10000000000000000000ULL,
                                     UINT64_MAX};
    for (long k = 0; k < 1000000; k++) {
        uint64_t u = k < 13 ? edges[k] : next() >> (next() % 64);
        char want[32];
        snprintf(want, sizeof want, "%" PRIu64, u);
        eddy_writer w = {0};
        eddy_w_u64(&w, u);
        CHECK(w.len == strlen(want) && memcmp(w.data, want, w.len) == 0, "u64 %s written as %.*s",
              want, (int)w.len, w.data);
        const char *err = NULL;
        uint64_t back = 0;
        eddy_json *v = eddy_json_parse(want, strlen(want), &err);
        CHECK(!err && eddy_json_as_u64(v, &back) && back == u, "u64 %s read back wrong", want);

        int64_t i = (int64_t)next() >> (next() % 64);
        snprintf(want, sizeof want, "%" PRId64, i);
        eddy_writer wi = {0};
        eddy_w_i64(&wi, i);
        CHECK(wi.len == strlen(want) && memcmp(wi.data, want, wi.len) == 0,
              "i64 %s written as %.*s", want, (int)wi.len, wi.data);
        int64_t iback = 0;
        v = eddy_json_parse(want, strlen(want), &err);
        CHECK(!err && eddy_json_as_i64(v, &iback) && iback == i, "i64 %s read back wrong", want);
    }
    /* The edges of 64 bits: beyond them a number is still read, but not as an integer. */
    static const struct {
        const char *text;
        int is_u64, is_i64;
    } cases[] = {{"18446744073709551615", 1, 0}, {"18446744073709551616", 0, 0},
                 {"18446744073709551620", 0, 0}, {"99999999999999999999", 0, 0},
                 {"9223372036854775807", 1, 1},  {"-9223372036854775808", 0, 1},
                 {"-9223372036854775809", 0, 0}, {"-0", 0, 0},
                 {"0", 1, 1},                    {"1.5", 0, 0}};
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        const char *err = NULL;
        eddy_json *v = eddy_json_parse(cases[k].text, strlen(cases[k].text), &err);
        uint64_t u;
        int64_t i;
        CHECK(!err, "%s: %s", cases[k].text, err);
        CHECK(eddy_json_as_u64(v, &u) == cases[k].is_u64, "%s: as u64", cases[k].text);
        CHECK(eddy_json_as_i64(v, &i) == cases[k].is_i64, "%s: as i64", cases[k].text);
    }
}

/* Random bytes drawn to hit every path: ASCII runs longer than 8, quotes, backslashes,
 * control characters, multi-byte UTF-8 and invalid bytes. */
static size_t random_text(char *buf, size_t max, int valid_utf8) {
    static const char *const pieces[] = {"a", "Zq", "0123456789abcdef", " ", "\"", "\\", "\t",
                                         "\x01", "\x1f", "\x7f", "/", "\xc3\xa9",
                                         "\xe2\x80\xa8", "\xf0\x9f\x98\x80", "abcdefg"};
    static const char *const invalid[] = {"\xff", "\xc3", "\xed\xa0\x80", "\xc0\xaf"};
    size_t n = 0;
    int parts = (int)(next() % 14);
    for (int p = 0; p < parts; p++) {
        const char *s = !valid_utf8 && next() % 6 == 0 ? invalid[next() % 4]
                                                        : pieces[next() % 15];
        size_t l = strlen(s);
        if (n + l > max) break;
        memcpy(buf + n, s, l);
        n += l;
    }
    return n;
}

static void strings(void) {
    char text[256], want[2048];
    for (long k = 0; k < 300000; k++) {
        /* Writing: the same bytes as the reference escaper, for any input bytes. */
        size_t n = random_text(text, sizeof text, 0);
        eddy_writer w = {0};
        eddy_w_strn(&w, text, n);
        size_t wl = reference_escape(text, n, want);
        CHECK(w.len == wl && memcmp(w.data, want, wl) == 0, "escaping %zu bytes differs", n);

        /* Reading what was written gives the text back (valid UTF-8 only is accepted). */
        n = random_text(text, sizeof text, 1);
        eddy_writer v = {0};
        eddy_w_strn(&v, text, n);
        const char *err = NULL;
        eddy_json *j = eddy_json_parse(v.data, v.len, &err);
        size_t len = 0;
        const char *s = err ? NULL : eddy_json_as_str(j, &len);
        CHECK(s && len == n && memcmp(s, text, n) == 0, "round trip of %.*s: %s", (int)v.len,
              v.data, err ? err : "different text");
    }
    /* Reading escapes and rejecting what serde_json rejects. */
    static const struct {
        const char *json, *text; /* text NULL: an error is expected */
    } cases[] = {
        {"\"plain ascii text, longer than eight\"", "plain ascii text, longer than eight"},
        {"\"a\\\"b\\\\c\\/d\\n\"", "a\"b\\c/d\n"},
        {"\"\\u00e9\\ud83d\\ude00\"", "\xc3\xa9\xf0\x9f\x98\x80"},
        {"\"caf\xc3\xa9 \xe2\x80\xa8 end of a longer string\"", "caf\xc3\xa9 \xe2\x80\xa8 end of a longer string"},
        {"\"tab\there\"", NULL},
        {"\"bad \xff byte\"", NULL},
        {"\"lone \\ud83d\"", NULL},
        {"\"unterminated, longer than eight", NULL},
        {"\"bad \\x escape\"", NULL},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        const char *err = NULL;
        eddy_json *j = eddy_json_parse(cases[k].json, strlen(cases[k].json), &err);
        size_t len = 0;
        const char *s = err ? NULL : eddy_json_as_str(j, &len);
        if (cases[k].text)
            CHECK(s && len == strlen(cases[k].text) && memcmp(s, cases[k].text, len) == 0,
                  "%s: %s", cases[k].json, err ? err : "different text");
        else
            CHECK(err != NULL, "%s: accepted", cases[k].json);
    }
}

static void structs(void) {
    static const char *const fields[] = {"id", "ts", "customer", NULL};
    static const struct {
        const char *json;
        const char *error; /* NULL: accepted */
    } cases[] = {
        {"{\"id\":1,\"ts\":2,\"customer\":3}", NULL},
        {"{\"id\":1,\"ts\":2,\"id\":3}", "duplicate field `id`"},
        {"{\"x\":1,\"x\":2,\"id\":1}", NULL}, /* a repeated unknown member is not an error */
        {"{\"customer\":1,\"merchant\":2,\"category\":3,\"customer\":4}", "duplicate field `customer`"},
        {"[1,2]", NULL},
        {"[1,2,3,4]", "trailing characters: invalid length 4, expected S with 3 elements"},
        {"5", "invalid type: an integer, expected S"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        const char *err = NULL;
        eddy_json *v = eddy_json_parse(cases[k].json, strlen(cases[k].json), &err);
        CHECK(!err, "%s: %s", cases[k].json, err);
        eddy_json_as_struct(v, fields, "S", &err);
        if (cases[k].error)
            CHECK(err && strcmp(err, cases[k].error) == 0, "%s: got %s", cases[k].json,
                  err ? err : "no error");
        else
            CHECK(!err, "%s: %s", cases[k].json, err);
    }
    /* Containers larger than the reader's inline buffers, written back unchanged. */
    char big[8192];
    int n = sprintf(big, "[");
    for (int i = 0; i < 100; i++) n += sprintf(big + n, "%s{\"k%d\":[%d,\"s\"]}", i ? "," : "", i, i);
    sprintf(big + n, "]");
    const char *err = NULL;
    eddy_json *v = eddy_json_parse(big, strlen(big), &err);
    eddy_bytes b = err ? (eddy_bytes){0} : eddy_json_encode(v);
    CHECK(b.len == strlen(big) && memcmp(b.ptr, big, b.len) == 0, "a large array changed");
}

/* Documents nested up to the reader's limit (128 values deep, the innermost scalars included)
 * are written back as they were. The writer once tracked commas for 64 levels only, so
 * [[...[1,2]...]] 70 deep came out as [[...[12]...]] (found by json_fuzz.c). */
static void nesting(void) {
    for (int depth = 1; depth <= 127; depth++) {
        char text[128 * 14 + 8]; /* at most 13 bytes per level, and "1,2" */
        size_t n = 0;
        for (int i = 0; i < depth; i++) {
            if (i % 2) {
                text[n++] = '[';
            } else {
                memcpy(text + n, "{\"a\":0,\"b\":", 11);
                n += 11;
            }
        }
        memcpy(text + n, "1,2", 3);
        n += 3;
        for (int i = depth - 1; i >= 0; i--) text[n++] = i % 2 ? ']' : '}';
        const char *err = NULL;
        eddy_json *v = eddy_json_parse(text, n, &err);
        if (depth % 2 == 1) {
            /* An object's member value cannot be "1,2": the innermost is an object. */
            CHECK(!v, "depth %d: %.*s was accepted", depth, (int)n, text);
            continue;
        }
        CHECK(v && !err, "depth %d: %s", depth, err ? err : "refused");
        if (!v) continue;
        eddy_bytes out = eddy_json_encode(v);
        CHECK(out.len == n && memcmp(out.ptr, text, n) == 0, "depth %d written as %.*s", depth,
              (int)out.len, (const char *)out.ptr);
    }
}

int main(void) {
    numbers();
    strings();
    structs();
    nesting();
    if (failures) {
        fprintf(stderr, "json_test: %d checks failed\n", failures);
        return 1;
    }
    printf("json_test: numbers, strings, structs and nesting agree with the reference\n");
    return 0;
}
