#include "test_util.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runner/base/buf.h"
#include "runner/base/log.h"
#include "runner/base/util.h"

static int capture_fd = -1;
static char *capture_path;

static int setup(void **state)
{
    (void)state;
    char *dir = test_tmpdir("log");
    capture_path = al_path_join(dir, "log.txt");
    free(dir);
    capture_fd = open(capture_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    al_log_set_fd(capture_fd);
    al_log_set_level(AL_LOG_DEBUG);
    unsetenv("JOURNAL_STREAM");
    return capture_fd < 0;
}

static int teardown(void **state)
{
    (void)state;
    al_log_set_fd(-1);
    close(capture_fd);
    al_redact_clear();
    char *dir = strdup(capture_path);
    *strrchr(dir, '/') = '\0';
    test_tmpdir_remove(dir);
    free(capture_path);
    return 0;
}

static char *captured(void)
{
    char *data = NULL;
    struct al_error *err = NULL;
    assert_int_equal(al_read_file(capture_path, 1 << 20, &data, NULL, &err), 0);
    assert_int_equal(ftruncate(capture_fd, 0), 0);
    assert_int_equal(lseek(capture_fd, 0, SEEK_SET), 0);
    return data;
}

static void test_line_format(void **state)
{
    (void)state;
    log_info("j-123", "started %s", "job");
    log_warn(NULL, "two\nlines");
    char *out = captured();
    assert_non_null(strstr(out, "info  job=j-123 started job\n"));
    /* one event stays one line */
    assert_non_null(strstr(out, "warn  two\\nlines\n"));
    size_t lines = 0;
    for (char *p = out; *p; p++)
        lines += *p == '\n';
    assert_int_equal(lines, 2);
    free(out);
}

static void test_levels(void **state)
{
    (void)state;
    al_log_set_level(AL_LOG_WARN);
    log_info(NULL, "hidden");
    log_debug(NULL, "hidden too");
    log_error(NULL, "shown");
    char *out = captured();
    assert_null(strstr(out, "hidden"));
    assert_non_null(strstr(out, "shown"));
    free(out);
    al_log_set_level(AL_LOG_DEBUG);
    enum al_log_level l;
    assert_int_equal(al_log_level_from_string("debug", &l), 0);
    assert_int_equal(l, AL_LOG_DEBUG);
    assert_int_equal(al_log_level_from_string("loud", &l), -EINVAL);
}

static void test_journald_prefix(void **state)
{
    (void)state;
    setenv("JOURNAL_STREAM", "8:1234", 1);
    log_error(NULL, "boom");
    unsetenv("JOURNAL_STREAM");
    char *out = captured();
    assert_string_equal(out, "<3>boom\n");
    free(out);
}

static void test_redaction_in_logs(void **state)
{
    (void)state;
    const char *secret = "glrt-s3cr3t-T0KEN";
    assert_int_equal(al_redact_add(secret), 0);
    log_info("job-glrt-s3cr3t-T0KEN", "token is %s, again:%s.", secret, secret);
    char *out = captured();
    assert_null(strstr(out, secret));
    assert_non_null(strstr(out, "token is ***, again:***."));
    assert_non_null(strstr(out, "job=job-***"));
    free(out);

    /* reference counted: two adds need two removes */
    assert_int_equal(al_redact_add(secret), 0);
    al_redact_remove(secret);
    assert_true(al_redact_contains("x glrt-s3cr3t-T0KEN y", 21));
    al_redact_remove(secret);
    assert_false(al_redact_contains("x glrt-s3cr3t-T0KEN y", 21));
}

static void test_redact_overlapping(void **state)
{
    (void)state;
    assert_int_equal(al_redact_add("abcd"), 0);
    assert_int_equal(al_redact_add("abcdefgh"), 0);
    assert_int_equal(al_redact_add("xy"), -EINVAL); /* too short to mask safely */
    size_t len;
    const char in[] = "--abcdefgh--abcd--abc";
    char *out = al_redact(in, sizeof(in) - 1, &len);
    /* the longest match wins; a partial match is left alone */
    assert_string_equal(out, "--***--***--abc");
    assert_int_equal(len, strlen(out));
    free(out);
    /* binary input with NUL bytes */
    const char bin[] = {'a', 'b', 'c', 'd', '\0', 'a', 'b', 'c', 'd'};
    out = al_redact(bin, sizeof(bin), &len);
    assert_int_equal(len, 7);
    assert_memory_equal(out, "***\0***", 7);
    free(out);
    al_redact_clear();
}

static void test_redact_stream_split_secret(void **state)
{
    (void)state;
    assert_int_equal(al_redact_add("hunter2-secret"), 0);
    const char *chunks[] = {"password: hun",      "ter2",  "-sec",
                            "ret and hunter2-se", "cret!", " hunt"};
    struct al_redact_stream rs = {0};
    struct al_buf out = AL_BUF_INIT;
    for (size_t i = 0; i < ARRAY_SIZE(chunks); i++) {
        assert_int_equal(al_redact_stream_feed(&rs, chunks[i], strlen(chunks[i]), &out), 0);
        /* nothing that could be a secret is ever emitted early */
        assert_null(strstr(out.data ? out.data : "", "hunter2"));
    }
    /* "password: " is certain before the secret completes: live output is not delayed */
    assert_int_equal(al_redact_stream_flush(&rs, &out), 0);
    assert_string_equal(out.data, "password: *** and ***! hunt");
    al_buf_free(&out);

    /* with no secret registered everything passes straight through */
    al_redact_clear();
    assert_int_equal(al_redact_stream_feed(&rs, "plain", 5, &out), 0);
    assert_string_equal(out.data, "plain");
    assert_int_equal(rs.held_len, 0);
    al_buf_free(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_line_format),
            cmocka_unit_test(test_levels),
            cmocka_unit_test(test_journald_prefix),
            cmocka_unit_test(test_redaction_in_logs),
            cmocka_unit_test(test_redact_overlapping),
            cmocka_unit_test(test_redact_stream_split_secret),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
