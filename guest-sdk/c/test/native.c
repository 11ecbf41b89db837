/* native.c: what eddy.c gives the JSON code (eddy_json.c) beside memory, for the native test
 * and fuzz programs, which have no component bindings: string copies and printf into memory
 * from eddy_alloc. Each program defines eddy_alloc itself (json_test.c never frees, the short
 * test needs no more; json_fuzz.c empties an arena after each input, as the layer does after
 * each event). */

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "eddy.h"

char *eddy_strndup(const char *s, size_t n) {
    char *p = eddy_alloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *eddy_vsprintf(const char *format, va_list ap) {
    char *p = eddy_alloc(1024);
    vsnprintf(p, 1024, format, ap);
    return p;
}

char *eddy_sprintf(const char *format, ...) {
    va_list ap;
    va_start(ap, format);
    char *p = eddy_vsprintf(format, ap);
    va_end(ap);
    return p;
}
