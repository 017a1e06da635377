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

/* Feeds in split at each '|' through a stream and returns what came out. */
static char *stream_through(const char *in)
{
    struct al_redact_stream rs = {0};
    struct al_buf out = AL_BUF_INIT;
    const char *p = in;
    for (;;) {
        size_t n = strcspn(p, "|");
        assert_int_equal(al_redact_stream_feed(&rs, p, n, &out), 0);
        if (!p[n])
            break;
        p += n + 1;
    }
    assert_int_equal(al_redact_stream_flush(&rs, &out), 0);
    return al_buf_steal(&out);
}

static void test_redact_token_prefixes(void **state)
{
    (void)state;
    assert_int_equal(al_redact_add_prefix("glpat-"), 0);
    assert_int_equal(al_redact_add_prefix("glrt-"), 0);
    struct {
        const char *in, *want;
    } cases[] = {
            {"token glpat-AbC_9.x= end", "token glpat-*** end"},
            {"glpat-abc", "glpat-***"},
            /* inside a word too, as gitlab-runner masks */
            {"xglpat-abc,y", "xglpat-***,y"},
            /* a prefix with no token after it stays */
            {"glpat- x glpat-", "glpat- x glpat-"},
            {"glpa-abc glpat", "glpa-abc glpat"},
            /* the token runs on over a second prefix */
            {"glpat-impglpat-erdiet ok", "glpat-*** ok"},
            {"a glrt-t0k\nb", "a glrt-***\nb"},
            {"\"glrt-Q1\";glrt-", "\"glrt-***\";glrt-"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        size_t len = 0;
        char *out = al_redact(cases[i].in, strlen(cases[i].in), &len);
        assert_non_null(out);
        assert_string_equal(out, cases[i].want);
        assert_int_equal(len, strlen(out));
        free(out);
    }
    assert_true(al_redact_contains("x glpat-a", 9));
    assert_false(al_redact_contains("x glpat- a", 10));

    /* split anywhere: in the prefix, right after it, inside the token */
    struct {
        const char *in, *want;
    } split[] = {
            {"glp|at-abc def", "glpat-*** def"},   {"glpat-|abc def", "glpat-*** def"},
            {"glpat-a|b|c| def", "glpat-*** def"}, {"x gl|pat| -no", "x glpat -no"},
            {"end glpat-abc|", "end glpat-***"},   {"g|l|r|t|-|Z", "glrt-***"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(split); i++) {
        char *out = stream_through(split[i].in);
        assert_string_equal(out, split[i].want);
        free(out);
    }

    /* the text before a token is not held back; the token is */
    struct al_redact_stream rs = {0};
    struct al_buf out = AL_BUF_INIT;
    assert_int_equal(al_redact_stream_feed(&rs, "line 1\nkey glpat-abc", 20, &out), 0);
    assert_string_equal(out.data, "line 1\nkey ");
    assert_int_equal(al_redact_stream_feed(&rs, "def\n", 4, &out), 0);
    assert_string_equal(out.data, "line 1\nkey glpat-***\n");
    assert_int_equal(rs.held_len, 0);

    /* a token longer than a stream may hold: masked at once, the rest dropped */
    al_buf_reset(&out);
    char big[1024];
    memset(big, 'k', sizeof(big));
    assert_int_equal(al_redact_stream_feed(&rs, "glpat-", 6, &out), 0);
    for (size_t i = 0; i < 2 * AL_REDACT_TOKEN_HOLD_MAX / sizeof(big); i++) {
        assert_int_equal(al_redact_stream_feed(&rs, big, sizeof(big), &out), 0);
        assert_true(rs.held_len <= AL_REDACT_TOKEN_HOLD_MAX + sizeof(big));
    }
    assert_int_equal(al_redact_stream_feed(&rs, "kk tail", 7, &out), 0);
    assert_int_equal(al_redact_stream_flush(&rs, &out), 0);
    assert_string_equal(out.data, "glpat-*** tail");
    al_buf_free(&out);

    /* limits: length, characters, count; registrations are counted */
    assert_int_equal(al_redact_add_prefix("gl"), -EINVAL);
    assert_int_equal(al_redact_add_prefix("has space-"), -EINVAL);
    assert_int_equal(al_redact_add_prefix("tab\t-"), -EINVAL);
    char longp[AL_REDACT_PREFIX_MAX_LEN + 2];
    memset(longp, 'p', sizeof(longp) - 1);
    longp[sizeof(longp) - 1] = '\0';
    assert_int_equal(al_redact_add_prefix(longp), -EINVAL);
    assert_int_equal(al_redact_add_prefix("glpat-"), 0); /* a second reference */
    al_redact_remove_prefix("glpat-");
    char *o = al_redact("glpat-x", 7, NULL);
    assert_string_equal(o, "glpat-***");
    free(o);
    al_redact_remove_prefix("glpat-");
    o = al_redact("glpat-x", 7, NULL);
    assert_string_equal(o, "glpat-x");
    free(o);
    al_redact_clear();
    for (int i = 0; i < AL_REDACT_MAX_PREFIXES; i++) {
        char name[16];
        snprintf(name, sizeof(name), "pre%d-", i);
        assert_int_equal(al_redact_add_prefix(name), 0);
    }
    assert_int_equal(al_redact_add_prefix("one-too-many-"), -ENOSPC);
    al_redact_clear();
}

static void test_redact_secret_and_prefix(void **state)
{
    (void)state;
    /* a registered secret wins where it starts; a prefixed token hides any
     * secret inside it */
    assert_int_equal(al_redact_add("s3cr3t-value"), 0);
    assert_int_equal(al_redact_add_prefix("glpat-"), 0);
    char *out = stream_through("a s3cr|3t-value b glpat-xs3cr3t-v|alue c");
    assert_string_equal(out, "a *** b glpat-*** c");
    free(out);
    out = stream_through("short output");
    assert_string_equal(out, "short output");
    free(out);
    /* the log lines too */
    log_info("job1", "pushing with glpat-0123456789abcdefghij to origin");
    char *line = captured();
    assert_non_null(strstr(line, "pushing with glpat-*** to origin"));
    assert_null(strstr(line, "0123456789abcdefghij"));
    free(line);
    al_redact_clear();
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
            cmocka_unit_test(test_redact_token_prefixes),
            cmocka_unit_test(test_redact_secret_and_prefix),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
