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

/* Destroys the transient libvirt storage pools (agentlab-*) whose directory
 * lies below dir: the libvirt backend makes one for a private state dir and
 * it outlives the test (tests/integration/lib.sh does the same for scripts). */
void test_destroy_storage_pools(const char *dir);

/* A new temporary dir (test_tmpdir(tag)) whose state/images holds a copy of
 * the micro image of the ctest fixture ($AGENTLAB_TEST_STATE), for a test
 * that runs an engine on its own state dir: AGENTLAB_STATE_DIR and
 * AGENTLAB_RUN_DIR are unset so the test's config decides. Skips the test
 * when the fixture is not there. */
char *test_micro_tmpdir(const char *tag);

/* Runs the program path with args (shell words, appended as they are) and
 * returns its exit status (128 when it did not exit) with its first output
 * line, without the newline, in out (may be NULL); the rest is read and
 * dropped. */
int test_run_first_line(const char *path, const char *args, char *out, size_t out_size);

/* Runs the loop until *flag is true or timeout_ms passes; returns *flag. */
bool test_run_until(uv_loop_t *loop, const bool *flag, unsigned timeout_ms);

/* Runs pending close callbacks, asserts no handle is left open and that
 * uv_loop_close() returns 0. */
void test_loop_close(uv_loop_t *loop);

/* Directory for the test's output files ($AL_TEST_OUTDIR or a tmp dir). */
const char *test_outdir(void);

/* The skip policy, shared with tests/support/skip.sh and skip.py: a test
 * that cannot run what it is meant to test fails. It may skip only when a
 * developer asked for it with AGENTLAB_ALLOW_SKIP=1, and never in CI (CI set
 * to anything but "", "0" or "false"). */
bool test_skip_allowed(void);

/* Skips the current cmocka test with the printf-style reason when
 * test_skip_allowed(), and fails it with the reason otherwise. Does not
 * return. */
#define test_skip(...) test_skip_at(__FILE__, __LINE__, __VA_ARGS__)
_Noreturn void test_skip_at(const char *file, int line, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

/* The exit status of a test binary: failed (cmocka_run_group_tests()'s
 * result) when non-zero, else 77 (ctest's SKIP_RETURN_CODE) when a test was
 * skipped, else 0. */
int test_exit_status(int failed);

#endif
