/*
 * Minimal test helper (Redis testhelp.h style): no framework, no fork, so the
 * binaries run as they are under valgrind and gdb.
 *
 *   TEST_CHECK(cond, fmt, ...)  counts a pass or prints the failure with its
 *                               location and a message naming the values.
 *   TEST_REPORT()               prints "NAME: P passed, F failed" and returns
 *                               the exit status (non-zero on any failure).
 */
#ifndef DSV4_TEST_H
#define DSV4_TEST_H

#include <stdio.h>

static int test_passed_count;
static int test_failed_count;

#define TEST_CHECK(cond, ...)                                                \
    do {                                                                     \
        if (cond) {                                                          \
            test_passed_count++;                                             \
        } else {                                                             \
            test_failed_count++;                                             \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);             \
            fprintf(stderr, __VA_ARGS__);                                    \
            fputc('\n', stderr);                                             \
        }                                                                    \
    } while (0)

#define TEST_REPORT()                                                        \
    (printf("%s: %d passed, %d failed\n", __FILE__, test_passed_count,       \
            test_failed_count),                                              \
     test_failed_count == 0 ? 0 : 1)

#endif
