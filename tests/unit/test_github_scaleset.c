/* The scale set parser (runner/sources/github_scaleset_msg.c) on the
 * documents of shared/github/SCALESET.md: the double-encoded message body,
 * statistics, job messages of every type, sessions, runner-registration and
 * its JWT, lookups, JIT configs, acquired ids, error bodies; keys matched
 * without case, a BOM skipped, limits and malformed input refused. */
#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runner/base/base64.h"
#include "runner/base/buf.h"
#include "runner/base/util.h"
#include "runner/sources/github_scaleset_msg.h"

#define STATS                                                                                   \
    "\"statistics\":{\"totalAvailableJobs\":1,\"totalAcquiredJobs\":2,\"totalAssignedJobs\":3," \
    "\"totalRunningJobs\":4,\"totalRegisteredRunners\":5,\"totalBusyRunners\":6,"               \
    "\"totalIdleRunners\":7}"

static int parse_msg(const char *doc, struct scaleset_message *m, struct al_error **err)
{
    return scaleset_parse_message(doc, strlen(doc), m, err);
}

static void expect_fail_(int r, struct al_error **err, const char *needle)
{
    assert_true(r == -EINVAL || r == -E2BIG);
    assert_non_null(*err);
    if (needle && !strstr(al_error_message(*err), needle))
        fail_msg("error \"%s\" lacks \"%s\"", al_error_message(*err), needle);
    *err = al_error_free(*err);
}
#define expect_fail(r, err, needle) expect_fail_((r), &(err), (needle))

static void test_message_jobs(void **state)
{
    (void)state;
    /* the body is a JSON string holding a JSON array */
    const char *doc =
            "{\"messageId\":100000171,\"messageType\":\"RunnerScaleSetJobMessages\","
            "\"body\":\"[{\\\"messageType\\\":\\\"JobAvailable\\\",\\\"runnerRequestId\\\":7848922,"
            "\\\"acquireJobUrl\\\":\\\"https://x/acquire\\\",\\\"repositoryName\\\":\\\"app\\\","
            "\\\"ownerName\\\":\\\"octo-org\\\",\\\"jobDisplayName\\\":\\\"build it\\\"},"
            "{\\\"messageType\\\":\\\"JobAssigned\\\",\\\"runnerRequestId\\\":7848922},"
            "{\\\"messageType\\\":\\\"JobStarted\\\",\\\"runnerRequestId\\\":7848922,"
            "\\\"runnerId\\\":17,\\\"runnerName\\\":\\\"runner-1a2b3c4d\\\",\\\"jobId\\\":"
            "\\\"1448\\\"},"
            "{\\\"messageType\\\":\\\"JobCompleted\\\",\\\"runnerRequestId\\\":7848922,"
            "\\\"result\\\":\\\"canceled\\\",\\\"runnerId\\\":0,\\\"runnerName\\\":\\\"\\\"},"
            "{\\\"messageType\\\":\\\"SomethingNew\\\",\\\"whatever\\\":[1,2]}]\"," STATS "}";
    struct scaleset_message m = {0};
    struct al_error *err = NULL;
    assert_int_equal(parse_msg(doc, &m, &err), 0);
    assert_int_equal(m.id, 100000171);
    assert_int_equal(m.stats.available, 1);
    assert_int_equal(m.stats.acquired, 2);
    assert_int_equal(m.stats.assigned, 3);
    assert_int_equal(m.stats.running, 4);
    assert_int_equal(m.stats.registered, 5);
    assert_int_equal(m.stats.busy, 6);
    assert_int_equal(m.stats.idle, 7);
    assert_int_equal(m.n_jobs, 5);
    assert_int_equal(m.jobs[0].kind, SCALESET_JOB_AVAILABLE);
    assert_int_equal(m.jobs[0].request_id, 7848922);
    assert_string_equal(m.jobs[0].repo, "octo-org/app");
    assert_string_equal(m.jobs[0].display_name, "build it");
    assert_int_equal(m.jobs[1].kind, SCALESET_JOB_ASSIGNED);
    assert_int_equal(m.jobs[2].kind, SCALESET_JOB_STARTED);
    assert_int_equal(m.jobs[2].runner_id, 17);
    assert_string_equal(m.jobs[2].runner_name, "runner-1a2b3c4d");
    assert_string_equal(m.jobs[2].job_id, "1448");
    assert_int_equal(m.jobs[3].kind, SCALESET_JOB_COMPLETED);
    assert_string_equal(m.jobs[3].result, "canceled");
    /* an empty runnerName is none: a cancelled job that never had a runner */
    assert_null(m.jobs[3].runner_name);
    assert_int_equal(m.jobs[4].kind, SCALESET_JOB_OTHER);
    scaleset_message_clear(&m);
    assert_null(m.jobs);
}

static void test_message_casing_bom_empty(void **state)
{
    (void)state;
    /* keys without case, a BOM, no body: no job messages */
    const char *doc = "\xef\xbb\xbf{\"MESSAGEID\":5,\"messagetype\":\"RunnerScaleSetJobMessages\","
                      "\"Statistics\":{\"TOTALASSIGNEDJOBS\":9}}";
    struct scaleset_message m = {0};
    struct al_error *err = NULL;
    assert_int_equal(parse_msg(doc, &m, &err), 0);
    assert_int_equal(m.id, 5);
    assert_int_equal(m.stats.assigned, 9);
    assert_int_equal(m.n_jobs, 0);
    scaleset_message_clear(&m);
    doc = "{\"messageId\":5,\"messageType\":\"RunnerScaleSetJobMessages\",\"body\":\"\"," STATS "}";
    assert_int_equal(parse_msg(doc, &m, &err), 0);
    assert_int_equal(m.n_jobs, 0);
    scaleset_message_clear(&m);
}

static void test_message_refused(void **state)
{
    (void)state;
    static const struct {
        const char *doc, *why;
    } bad[] = {
            {"", "empty"},
            {"[]", "object"},
            {"{\"messageId\":1,\"messageType\":\"Other\"," STATS "}", "messageType"},
            {"{\"messageId\":1,\"messageType\":\"RunnerScaleSetJobMessages\"}", "statistics"},
            {"{\"messageType\":\"RunnerScaleSetJobMessages\"," STATS "}", "messageId"},
            {"{\"messageId\":0,\"messageType\":\"RunnerScaleSetJobMessages\"," STATS "}",
             "messageId"},
            /* the body must be a string, not an array */
            {"{\"messageId\":1,\"messageType\":\"RunnerScaleSetJobMessages\",\"body\":[]," STATS
             "}",
             "body"},
            {"{\"messageId\":1,\"messageType\":\"RunnerScaleSetJobMessages\",\"body\":\"{}\"," STATS
             "}",
             "array"},
            {"{\"messageId\":1,\"messageType\":\"RunnerScaleSetJobMessages\",\"body\":\"[1]"
             "\"," STATS "}",
             "body[0]"},
            {"{\"messageId\":1,\"messageType\":\"RunnerScaleSetJobMessages\",\"body\":"
             "\"[{\\\"messageType\\\":\\\"JobAvailable\\\"}]\"," STATS "}",
             "runnerRequestId"},
            /* a key twice, in two casings */
            {"{\"messageId\":1,\"MessageId\":2,\"messageType\":\"RunnerScaleSetJobMessages\"," STATS
             "}",
             "more than once"},
            {"{\"messageId\":1,\"messageType\":\"RunnerScaleSetJobMessages\",\"statistics\":{"
             "\"totalAssignedJobs\":-1}}",
             "totalAssignedJobs"},
            {"{\"messageId\":1,\"messageType\":\"RunnerScaleSetJobMessages\",\"statistics\":{"
             "\"totalAssignedJobs\":\"3\"}}",
             "totalAssignedJobs"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        struct scaleset_message m = {0};
        struct al_error *err = NULL;
        int r = parse_msg(bad[i].doc, &m, &err);
        if (r == 0)
            fail_msg("case %zu accepted", i);
        assert_null(m.jobs);
        expect_fail(r, err, bad[i].why);
    }
}

static void test_message_limits(void **state)
{
    (void)state;
    /* more job messages than SCALESET_MAX_JOBS */
    struct al_buf b = {0};
    al_buf_puts(&b, "{\"messageId\":1,\"messageType\":\"RunnerScaleSetJobMessages\"," STATS
                    ",\"body\":\"[");
    for (int i = 0; i <= SCALESET_MAX_JOBS; i++)
        al_buf_printf(&b, "%s{\\\"messageType\\\":\\\"JobAssigned\\\",\\\"runnerRequestId\\\":%d}",
                      i ? "," : "", i + 1);
    al_buf_puts(&b, "]\"}");
    struct scaleset_message m = {0};
    struct al_error *err = NULL;
    int r = scaleset_parse_message(b.data, b.len, &m, &err);
    expect_fail(r, err, "job messages");
    al_buf_free(&b);
    /* nesting beyond the depth limit */
    al_buf_puts(&b, "{\"messageId\":1,\"x\":");
    for (int i = 0; i < 40; i++)
        al_buf_puts(&b, "[");
    for (int i = 0; i < 40; i++)
        al_buf_puts(&b, "]");
    al_buf_puts(&b, "}");
    r = scaleset_parse_message(b.data, b.len, &m, &err);
    expect_fail(r, err, NULL);
    al_buf_free(&b);
    /* a NUL byte */
    r = scaleset_parse_message("{\"a\":1}\0x", 9, &m, &err);
    expect_fail(r, err, "NUL");
}

static char *b64url(const char *s)
{
    struct al_buf out = {0};
    assert_int_equal(al_base64_encode(&out, s, strlen(s)), 0);
    char *b = al_buf_steal(&out);
    assert_non_null(b);
    for (char *p = b; *p; p++) {
        if (*p == '+')
            *p = '-';
        else if (*p == '/')
            *p = '_';
        else if (*p == '=')
            *p = '\0';
    }
    return b;
}

static char *jwt(const char *header, const char *claims)
{
    char *h = b64url(header), *c = b64url(claims), *out = NULL;
    assert_true(asprintf(&out, "%s.%s.c2ln", h, c) > 0);
    free(h);
    free(c);
    return out;
}

static void test_registration(void **state)
{
    (void)state;
    char *tok = jwt("{\"alg\":\"RS256\",\"typ\":\"JWT\"}", "{\"exp\":1900000000,\"iss\":\"x\"}");
    char *doc = NULL;
    assert_true(asprintf(&doc, "{\"url\":\"http://127.0.0.1:8/tenant/123/\",\"token\":\"%s\"}",
                         tok) > 0);
    char *url = NULL, *got = NULL;
    int64_t exp = 0;
    struct al_error *err = NULL;
    assert_int_equal(scaleset_parse_registration(doc, strlen(doc), &url, &got, &exp, &err), 0);
    assert_string_equal(url, "http://127.0.0.1:8/tenant/123/");
    assert_string_equal(got, tok);
    assert_int_equal(exp, 1900000000);
    free(url);
    free(got);
    free(doc);
    free(tok);

    /* tokens that are not JWTs with an exp */
    static const char *const claims[] = {"{\"iss\":\"x\"}", "{\"exp\":\"soon\"}", "[1]"};
    for (size_t i = 0; i < ARRAY_SIZE(claims); i++) {
        tok = jwt("{\"alg\":\"RS256\"}", claims[i]);
        int64_t e = 0;
        int r = scaleset_jwt_exp(tok, &e, &err);
        expect_fail(r, err, NULL);
        free(tok);
    }
    tok = jwt("{\"typ\":\"JWT\"}", "{\"exp\":5}");
    expect_fail(scaleset_jwt_exp(tok, &exp, &err), err, "alg");
    free(tok);
    expect_fail(scaleset_jwt_exp("a.b", &exp, &err), err, "three");
    expect_fail(scaleset_jwt_exp("a.b.c.d", &exp, &err), err, "three");
    expect_fail(scaleset_jwt_exp("a!.b.c", &exp, &err), err, "base64url");

    /* a missing or empty field, a URL that is not http(s) */
    static const char *const docs[] = {"{\"url\":\"https://x/\"}", "{\"token\":\"a.b.c\"}",
                                       "{\"url\":\"\",\"token\":\"a.b.c\"}",
                                       "{\"url\":\"file:///x\",\"token\":\"a.b.c\"}"};
    for (size_t i = 0; i < ARRAY_SIZE(docs); i++) {
        int r = scaleset_parse_registration(docs[i], strlen(docs[i]), &url, &got, &exp, &err);
        expect_fail(r, err, NULL);
    }
}

static void test_session(void **state)
{
    (void)state;
    const char *doc = "{\"sessionId\":\"2b5c0e6a-1f2d-4c3b-9a8e-7d6c5b4a3f21\",\"ownerName\":\"h\","
                      "\"runnerScaleSet\":{\"id\":42,\"name\":\"vm-pool\"},"
                      "\"messageQueueUrl\":\"https://broker.actions.githubusercontent.com/"
                      "scalesets/message\",\"messageQueueAccessToken\":\"mq.tok.en\"," STATS "}";
    struct scaleset_session s = {0};
    struct al_error *err = NULL;
    assert_int_equal(scaleset_parse_session(doc, strlen(doc), &s, &err), 0);
    assert_string_equal(s.session_id, "2b5c0e6a-1f2d-4c3b-9a8e-7d6c5b4a3f21");
    assert_string_equal(s.mq_url, "https://broker.actions.githubusercontent.com/scalesets/message");
    assert_string_equal(s.mq_token, "mq.tok.en");
    assert_int_equal(s.stats.assigned, 3);
    scaleset_session_clear(&s);
    assert_null(s.mq_token);

    /* the all-zeros id, no statistics, no token */
    static const char *const bad[] = {
            "{\"sessionId\":\"00000000-0000-0000-0000-000000000000\",\"messageQueueUrl\":"
            "\"https://x/m\",\"messageQueueAccessToken\":\"t\"," STATS "}",
            "{\"sessionId\":\"2b5c0e6a-1f2d-4c3b-9a8e-7d6c5b4a3f21\",\"messageQueueUrl\":"
            "\"https://x/m\",\"messageQueueAccessToken\":\"t\"}",
            "{\"sessionId\":\"2b5c0e6a-1f2d-4c3b-9a8e-7d6c5b4a3f21\",\"messageQueueUrl\":"
            "\"https://x/m\"," STATS "}",
            "{\"sessionId\":\"not-a-uuid\",\"messageQueueUrl\":\"https://x/m\","
            "\"messageQueueAccessToken\":\"t\"," STATS "}",
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        int r = scaleset_parse_session(bad[i], strlen(bad[i]), &s, &err);
        if (r == 0)
            fail_msg("case %zu accepted", i);
        assert_null(s.session_id);
        expect_fail(r, err, NULL);
    }
}

static void test_lookup_jit_acquired(void **state)
{
    (void)state;
    int64_t id = -1;
    struct al_error *err = NULL;
    const char *doc = "{\"count\":0,\"value\":[]}";
    assert_int_equal(scaleset_parse_lookup(doc, strlen(doc), &id, &err), 0);
    assert_int_equal(id, 0);
    doc = "{\"count\":1,\"value\":[{\"id\":3,\"name\":\"gpu\",\"isDefaultGroup\":false}]}";
    assert_int_equal(scaleset_parse_lookup(doc, strlen(doc), &id, &err), 0);
    assert_int_equal(id, 3);
    doc = "{\"count\":2,\"value\":[{\"id\":3},{\"id\":4}]}";
    expect_fail(scaleset_parse_lookup(doc, strlen(doc), &id, &err), err, "more than one");
    doc = "{\"id\":42,\"name\":\"vm-pool\",\"RunnerSetting\":{}}";
    assert_int_equal(scaleset_parse_scaleset(doc, strlen(doc), &id, &err), 0);
    assert_int_equal(id, 42);

    doc = "{\"runner\":{\"id\":17,\"name\":\"runner-1a2b3c4d\",\"runnerScaleSetId\":42},"
          "\"encodedJITConfig\":\"eyJhIjoiYiJ9Cg==\"}";
    char *jit = NULL;
    assert_int_equal(scaleset_parse_jitconfig(doc, strlen(doc), &id, &jit, &err), 0);
    assert_int_equal(id, 17);
    assert_string_equal(jit, "eyJhIjoiYiJ9Cg==");
    free(jit);
    jit = NULL;
    /* REST's snake_case key is not this endpoint's */
    doc = "{\"runner\":{\"id\":17},\"encoded_jit_config\":\"eyJhIjoiYiJ9Cg==\"}";
    expect_fail(scaleset_parse_jitconfig(doc, strlen(doc), &id, &jit, &err), err,
                "encodedJITConfig");
    doc = "{\"runner\":{\"id\":17},\"encodedJITConfig\":\"not*base64!at-all\"}";
    expect_fail(scaleset_parse_jitconfig(doc, strlen(doc), &id, &jit, &err), err, "base64");
    assert_null(jit);

    int64_t *ids = NULL;
    size_t n = 0;
    doc = "{\"count\":2,\"value\":[7848922,7848923]}";
    assert_int_equal(scaleset_parse_acquired(doc, strlen(doc), &ids, &n, &err), 0);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], 7848922);
    assert_int_equal(ids[1], 7848923);
    free(ids);
    doc = "{\"count\":3,\"value\":[1]}";
    expect_fail(scaleset_parse_acquired(doc, strlen(doc), &ids, &n, &err), err, "count");
    doc = "{\"count\":1,\"value\":[\"1\"]}";
    expect_fail(scaleset_parse_acquired(doc, strlen(doc), &ids, &n, &err), err, "value[0]");
}

/* GET acquirablejobs, in the shape ARC's client documents */
static void test_acquirable(void **state)
{
    (void)state;
    struct al_error *err = NULL;
    struct scaleset_message m = {0};
    const char *doc =
            "{\"count\":2,\"value\":["
            "{\"acquireJobUrl\":\"https://x/acquire/11\",\"messageType\":\"JobAvailable\","
            "\"runnerRequestId\":11,\"repositoryName\":\"r\",\"ownerName\":\"o\","
            "\"jobWorkflowRef\":\"o/r/.github/workflows/ci.yml@refs/heads/main\","
            "\"eventName\":\"push\",\"requestLabels\":[\"agentlab-vm\"]},"
            "{\"messageType\":\"JobAssigned\",\"runnerRequestId\":12}]}";
    assert_int_equal(scaleset_parse_acquirable(doc, strlen(doc), &m, &err), 0);
    assert_int_equal(m.n_jobs, 2);
    assert_int_equal(m.id, 0);
    assert_int_equal(m.jobs[0].kind, SCALESET_JOB_AVAILABLE);
    assert_int_equal(m.jobs[0].request_id, 11);
    assert_string_equal(m.jobs[0].repo, "o/r");
    /* only JobAvailable can be acquired */
    assert_int_equal(m.jobs[1].kind, SCALESET_JOB_OTHER);
    scaleset_message_clear(&m);

    doc = "{\"count\":0}";
    assert_int_equal(scaleset_parse_acquirable(doc, strlen(doc), &m, &err), 0);
    assert_int_equal(m.n_jobs, 0);
    scaleset_message_clear(&m);

    doc = "{\"count\":2,\"value\":[{\"messageType\":\"JobAvailable\",\"runnerRequestId\":1}]}";
    expect_fail(scaleset_parse_acquirable(doc, strlen(doc), &m, &err), err, "count");
    doc = "{\"count\":1,\"value\":[{\"messageType\":\"JobAvailable\",\"runnerRequestId\":0}]}";
    expect_fail(scaleset_parse_acquirable(doc, strlen(doc), &m, &err), err, "value[0]");
    doc = "{\"count\":1,\"value\":{}}";
    expect_fail(scaleset_parse_acquirable(doc, strlen(doc), &m, &err), err, "value");
    doc = "[]";
    expect_fail(scaleset_parse_acquirable(doc, strlen(doc), &m, &err), err, "acquirablejobs");
}

static void test_errors(void **state)
{
    (void)state;
    const char *doc = "{\"typeName\":\"GitHub.Actions.Runtime.WebApi."
                      "RunnerScaleSetSessionConflictException, GitHub.Actions.Runtime.WebApi\","
                      "\"message\":\"The actions runner scaleset dev already has an active "
                      "session.\\n\"}";
    assert_true(scaleset_error_is(doc, strlen(doc), "RunnerScaleSetSessionConflictException"));
    assert_false(scaleset_error_is(doc, strlen(doc), "AgentExistsException"));
    char m[40];
    scaleset_error_message(doc, strlen(doc), m, sizeof(m));
    /* cut to size, control characters replaced */
    assert_string_equal(m, "The actions runner scaleset dev already");
    scaleset_error_message(doc, strlen(doc), m, 8);
    assert_string_equal(m, "The act");
    assert_false(scaleset_error_is("", 0, "x"));
    assert_false(scaleset_error_is("not json", 8, "x"));
    scaleset_error_message("not json", 8, m, sizeof(m));
    assert_string_equal(m, "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_message_jobs),
            cmocka_unit_test(test_message_casing_bom_empty),
            cmocka_unit_test(test_message_refused),
            cmocka_unit_test(test_message_limits),
            cmocka_unit_test(test_registration),
            cmocka_unit_test(test_session),
            cmocka_unit_test(test_lookup_jit_acquired),
            cmocka_unit_test(test_acquirable),
            cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
