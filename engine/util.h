/* Small helpers shared by the engine: error strings. */
#ifndef DSV4_UTIL_H
#define DSV4_UTIL_H

#include <stddef.h>

/* Formats a one-line error into err[errlen] (if err != NULL); returns -1 so
 * callers can write `return dsv4_error(err, errlen, ...)`. */
int dsv4_error(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
