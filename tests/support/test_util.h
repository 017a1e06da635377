/* Helpers shared by the cmocka tests. */
#ifndef AL_TEST_UTIL_H
#define AL_TEST_UTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
/* cmocka needs the three above first */
#include <cmocka.h>
#include <uv.h>

/* Creates a fresh temporary directory (mode 0711) and returns its path. */
char *test_tmpdir(const char *tag);

/* Removes a directory tree created by test_tmpdir() and frees the path. */
void test_tmpdir_remove(char *path);

/* Runs the loop until *flag is true or timeout_ms passes; returns *flag. */
bool test_run_until(uv_loop_t *loop, const bool *flag, unsigned timeout_ms);

/* Runs pending close callbacks, asserts no handle is left open and that
 * uv_loop_close() returns 0. */
void test_loop_close(uv_loop_t *loop);

/* Directory for the test's output files ($AL_TEST_OUTDIR or a tmp dir). */
const char *test_outdir(void);

#endif
