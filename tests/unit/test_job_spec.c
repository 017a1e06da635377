#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "runner/base/buf.h"
#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/engine/config.h"
#include "runner/engine/spec.h"

static struct job_spec *parse_ok_flags(const char *doc, unsigned flags)
{
    struct job_spec *spec = NULL;
    struct al_error *err = NULL;
    if (job_spec_parse(doc, strlen(doc), flags, &spec, &err) < 0)
        fail_msg("document rejected: %s\n%s", al_error_message(err), doc);
    assert_null(err);
    return spec;
}

static struct job_spec *parse_ok(const char *doc)
{
    return parse_ok_flags(doc, 0);
}

/* Parses data[0..len) expecting failure; returns the message (caller frees). */
static char *parse_err_len(const char *data, size_t len, int want_code)
{
    struct job_spec *spec = NULL;
    struct al_error *err = NULL;
    int r = job_spec_parse(data, len, 0, &spec, &err);
    assert_int_equal(r, want_code);
    assert_null(spec);
    assert_non_null(err);
    char *msg = strdup(al_error_message(err));
    al_error_free(err);
    return msg;
}

static void test_full_document(void **state)
{
    (void)state;
    const char *doc = "{\n"
                      "  \"name\": \"nightly eval \\u00e9\",\n"
                      "  \"image\": \"debian-12\",\n"
                      "  \"command\": [\"/usr/bin/make\", \"-C\", \"src\", \"check\"],\n"
                      "  \"env\": {\"CI\": \"true\", \"_X1\": \"\"},\n"
                      "  \"secret_env\": {\"API_TOKEN\": \"tok-0123456789\"},\n"
                      "  \"resources\": {\"cpus\": 2, \"memory_mb\": 2048, \"disk_gb\": 20},\n"
                      "  \"timeout_s\": 1800,\n"
                      "  \"artifacts\": [\"out/report.xml\", \"/var/log/syslog\", \"a/./b\"],\n"
                      "  \"labels\": [\"x86_64\", \"big\"],\n"
                      "  \"pool\": \"default\",\n"
                      "  \"source\": {\"type\": \"gitlab\", \"id\": \"4711\", \"url\": "
                      "\"https://gitlab.example/p/-/jobs/4711\"},\n"
                      "  \"max_attempts\": 3,\n"
                      "  \"inject\": \"guestfs\"\n"
                      "}\n";
    struct job_spec *s = parse_ok(doc);
    assert_string_equal(s->name, "nightly eval \xc3\xa9");
    assert_string_equal(s->image, "debian-12");
    assert_int_equal(s->n_command, 4);
    assert_string_equal(s->command[0], "/usr/bin/make");
    assert_string_equal(s->command[3], "check");
    assert_null(s->command[4]);
    assert_null(s->script);
    assert_int_equal(s->n_env, 2);
    assert_string_equal(s->env[0].name, "CI");
    assert_string_equal(s->env[0].value, "true");
    assert_string_equal(s->env[1].name, "_X1");
    assert_string_equal(s->env[1].value, "");
    assert_int_equal(s->n_secret_env, 1);
    assert_string_equal(s->secret_env[0].name, "API_TOKEN");
    assert_string_equal(s->secret_env[0].value, "tok-0123456789");
    assert_int_equal(s->resources.cpus, 2);
    assert_int_equal(s->resources.memory_mb, 2048);
    assert_int_equal(s->resources.disk_gb, 20);
    assert_int_equal(s->timeout_s, 1800);
    assert_int_equal(s->n_artifacts, 3);
    assert_string_equal(s->artifacts[1], "/var/log/syslog");
    assert_null(s->artifacts[3]);
    assert_int_equal(s->n_labels, 2);
    assert_string_equal(s->labels[1], "big");
    assert_string_equal(s->pool, "default");
    assert_int_equal(s->source.type, JOB_SOURCE_GITLAB);
    assert_string_equal(s->source.id, "4711");
    assert_string_equal(s->source.url, "https://gitlab.example/p/-/jobs/4711");
    assert_int_equal(s->max_attempts, 3);
    assert_int_equal(s->inject, INJECT_GUESTFS);
    job_spec_free(s);
}

static void test_minimal_script(void **state)
{
    (void)state;
    struct job_spec *s = parse_ok("{\"script\": \"set -e\\necho hi\\n\"}");
    assert_string_equal(s->script, "set -e\necho hi\n");
    assert_null(s->command);
    assert_null(s->name);
    assert_null(s->image);
    assert_null(s->pool);
    assert_null(s->labels);
    assert_int_equal(s->timeout_s, 0);
    assert_int_equal(s->max_attempts, 0);
    assert_int_equal(s->resources.cpus, 0);
    assert_int_equal(s->inject, -1);
    assert_int_equal(s->source.type, JOB_SOURCE_NONE);
    job_spec_free(s);
    /* every source type is accepted */
    const char *types[] = {"spool", "api", "http", "gitlab", "github", "cli"};
    for (size_t i = 0; i < ARRAY_SIZE(types); i++) {
        char doc[128];
        snprintf(doc, sizeof(doc), "{\"script\":\"x\",\"source\":{\"type\":\"%s\"}}", types[i]);
        s = parse_ok(doc);
        assert_string_equal(job_source_type_to_string(s->source.type), types[i]);
        job_spec_free(s);
    }
}

/* Each document and the exact message it must produce; a trailing '*'
 * means "starts with". */
static const struct {
    const char *doc;
    const char *msg;
} rejections[] = {
        {"{\"command\":[\"a\"],\"resources\":{\"cpus\":\"two\"}}",
         "resources.cpus: expected an integer from 1 to 64, got \"two\""},
        {"{\"command\":[\"a\"],\"resources\":{\"cpus\":0}}",
         "resources.cpus: expected an integer from 1 to 64, got 0"},
        {"{\"command\":[\"a\"],\"resources\":{\"cpus\":65}}",
         "resources.cpus: expected an integer from 1 to 64, got 65"},
        {"{\"command\":[\"a\"],\"resources\":{\"cpus\":1.5}}",
         "resources.cpus: expected an integer from 1 to 64, got 1.5"},
        {"{\"command\":[\"a\"],\"resources\":{\"cpus\":1e1}}",
         "resources.cpus: expected an integer from 1 to 64, got 1e1"},
        {"{\"command\":[\"a\"],\"resources\":{\"cpus\":99999999999999999999999999}}",
         "resources.cpus: expected an integer from 1 to 64, got 99999999999999999999999999"},
        {"{\"command\":[\"a\"],\"resources\":{\"cpus\":null}}",
         "resources.cpus: expected an integer from 1 to 64, got null"},
        {"{\"command\":[\"a\"],\"resources\":{\"memory_mb\":64}}",
         "resources.memory_mb: expected an integer from 128 to 524288, got 64"},
        {"{\"command\":[\"a\"],\"resources\":{\"disk_gb\":-1}}",
         "resources.disk_gb: expected an integer from 1 to 4096, got -1"},
        {"{\"command\":[\"a\"],\"resources\":{\"gpus\":1}}", "resources.gpus: unknown field"},
        {"{\"command\":[\"a\"],\"resources\":[]}", "resources: expected an object, got an array"},
        {"{\"command\":[\"a\"],\"resources\":{\"cpus\":1,\"cpus\":2}}",
         "resources.cpus: duplicate field"},
        {"{\"command\":[\"a\"],\"timeout_s\":604801}",
         "timeout_s: expected an integer from 1 to 604800, got 604801"},
        {"{\"command\":[\"a\"],\"max_attempts\":11}",
         "max_attempts: expected an integer from 1 to 10, got 11"},
        {"{\"command\":[\"a\"],\"max_attempts\":\"3\"}",
         "max_attempts: expected an integer from 1 to 10, got \"3\""},
        {"{\"command\":[\"a\"],\"colour\":\"red\"}", "colour: unknown field"},
        {"{\"command\":[\"a\"],\"bad key!\":1}", "\"bad key!\": unknown field"},
        {"{\"command\":[\"a\"],\"command\":[\"b\"]}", "command: duplicate field"},
        {"{\"command\":\"echo hi\"}", "command: expected an array of strings, got \"echo hi\""},
        {"{\"command\":[]}", "command: expected at least one argument"},
        {"{\"command\":[\"\"]}", "command[0]: the program name must not be empty"},
        {"{\"command\":[\"a\",1]}", "command[1]: expected a string, got 1"},
        {"{\"command\":[\"a\",\"b\",null]}", "command[2]: expected a string, got null"},
        {"{\"command\":[\"a\",[\"b\"]]}", "command[1]: expected a string, got an array"},
        {"{\"script\":\"\"}", "script: must not be empty"},
        {"{\"script\":\"x\",\"command\":[\"a\"]}",
         "script: \"command\" and \"script\" cannot both be set"},
        {"{\"name\":\"x\"}", "command: one of \"command\" or \"script\" is required"},
        {"{}", "command: one of \"command\" or \"script\" is required"},
        {"{\"command\":[\"a\"],\"name\":\"\"}", "name: must not be empty"},
        {"{\"command\":[\"a\"],\"name\":\"a\\u0007b\"}",
         "name: must not contain control characters"},
        {"{\"command\":[\"a\"],\"name\":\"a\\u0085b\"}",
         "name: must not contain control characters"},
        {"{\"command\":[\"a\"],\"name\":\"a\\u0000b\"}", "name: must not contain NUL bytes"},
        {"{\"command\":[\"a\\u0000b\"]}", "command[0]: must not contain NUL bytes"},
        {"{\"command\":[\"a\"],\"env\":{\"A\":\"x\\u0000\"}}", "env.A: must not contain NUL bytes"},
        {"{\"command\":[\"a\"],\"env\":{\"A\\u0000\":\"x\"}}",
         "env: invalid variable name \"A\\x00\""},
        {"{\"command\":[\"a\"],\"name\":\"\\udc00\"}",
         "name: has a lone UTF-16 surrogate escape \\udc00, which is not text"},
        {"{\"command\":[\"a\"],\"name\":\"x\xff\"}", "name: invalid UTF-8"},
        {"{\"command\":[\"a\"],\"name\":\"x\xc0\xaf\"}", "name: invalid UTF-8"},
        {"{\"command\":[\"a\"],\"name\":\"x\xed\xa0\x80\"}", "name: invalid UTF-8"},
        {"{\"command\":[\"a\"],\"name\":\"x\xf4\x90\x80\x80\"}", "name: invalid UTF-8"},
        {"{\"command\":[\"a\"],\"name\":\"x\xe2\x82\"}", "name: invalid UTF-8"},
        {"{\"command\":[\"a\"],\"labels\":[\"\xff\"]}", "labels[0]: invalid UTF-8"},
        {"{\"command\":[\"a\"],\"name\":true}", "name: expected a string, got true"},
        {"{\"command\":[\"a\"],\"image\":\"../etc\"}",
         "image: expected a name matching [A-Za-z0-9][A-Za-z0-9._-]{0,62}, got \"../etc\""},
        {"{\"command\":[\"a\"],\"image\":\"deb\\nian\"}",
         "image: expected a name matching [A-Za-z0-9][A-Za-z0-9._-]{0,62}, got \"deb\\x0aian\""},
        {"{\"command\":[\"a\"],\"pool\":\"\"}",
         "pool: expected a name matching [A-Za-z0-9][A-Za-z0-9._-]{0,62}, got \"\""},
        {"{\"command\":[\"a\"],\"env\":{\"A\":1}}", "env.A: expected a string, got 1"},
        {"{\"command\":[\"a\"],\"env\":{\"1A\":\"x\"}}",
         "env[\"1A\"]: invalid variable name: expected [A-Za-z_][A-Za-z0-9_]*"},
        {"{\"command\":[\"a\"],\"env\":{\"A-B\":\"x\"}}",
         "env[\"A-B\"]: invalid variable name: expected [A-Za-z_][A-Za-z0-9_]*"},
        {"{\"command\":[\"a\"],\"env\":{\"\":\"x\"}}",
         "env[\"\"]: invalid variable name: expected [A-Za-z_][A-Za-z0-9_]*"},
        {"{\"command\":[\"a\"],\"env\":{\"A\":\"x\",\"A\":\"y\"}}", "env.A: duplicate name"},
        {"{\"command\":[\"a\"],\"env\":[]}",
         "env: expected an object of NAME: \"value\" pairs, got an array"},
        {"{\"command\":[\"a\"],\"env\":{\"A\":{\"B\":\"c\"}}}",
         "env.A: expected a string, got an object"},
        {"{\"command\":[\"a\"],\"secret_env\":{\"T\":\"abc\"}}",
         "secret_env.T: a secret must be at least 4 bytes long (shorter values cannot be masked "
         "in logs)"},
        {"{\"command\":[\"a\"],\"secret_env\":{\"T\":1234567}}",
         "secret_env.T: expected a string, got a number"},
        {"{\"command\":[\"a\"],\"secret_env\":\"hunter2hunter2\"}",
         "secret_env: expected an object of NAME: \"value\" pairs, got a string"},
        {"{\"command\":[\"a\"],\"env\":{\"T\":\"x\"},\"secret_env\":{\"T\":\"abcd\"}}",
         "secret_env.T: also set in env"},
        {"{\"command\":[\"a\"],\"secret_env\":{\"T\":\"abcd\",\"T\":\"efgh\"}}",
         "secret_env.T: duplicate name"},
        {"{\"command\":[\"a\"],\"artifacts\":[\"../x\"]}",
         "artifacts[0]: expected a relative path without \"..\" components or an absolute path, "
         "got \"../x\""},
        {"{\"command\":[\"a\"],\"artifacts\":[\"ok\",\"/a/b/../../etc\"]}",
         "artifacts[1]: expected a relative path without \"..\" components or an absolute path, "
         "got \"/a/b/../../etc\""},
        {"{\"command\":[\"a\"],\"artifacts\":[\"out/..\"]}",
         "artifacts[0]: expected a relative path without \"..\" components or an absolute path, "
         "got \"out/..\""},
        {"{\"command\":[\"a\"],\"artifacts\":[\"\"]}",
         "artifacts[0]: expected a relative path without \"..\" components or an absolute path, "
         "got \"\""},
        {"{\"command\":[\"a\"],\"artifacts\":[\"a\\tb\"]}",
         "artifacts[0]: must not contain control characters"},
        {"{\"command\":[\"a\"],\"artifacts\":\"out\"}",
         "artifacts: expected an array of strings, got \"out\""},
        {"{\"command\":[\"a\"],\"labels\":[\"a b\"]}",
         "labels[0]: expected a name matching [A-Za-z0-9][A-Za-z0-9._-]{0,62}, got \"a b\""},
        {"{\"command\":[\"a\"],\"labels\":[\"x\",\"x\"]}", "labels[1]: duplicate label \"x\""},
        {"{\"command\":[\"a\"],\"source\":{\"type\":\"ftp\"}}",
         "source.type: expected one of spool, api, http, gitlab, github, cli, got \"ftp\""},
        {"{\"command\":[\"a\"],\"source\":{\"kind\":\"api\"}}", "source.kind: unknown field"},
        {"{\"command\":[\"a\"],\"source\":{\"id\":\"\"}}", "source.id: must not be empty"},
        {"{\"command\":[\"a\"],\"source\":{\"url\":\"http://x/\\r\\n\"}}",
         "source.url: must not contain control characters"},
        {"{\"command\":[\"a\"],\"source\":\"api\"}", "source: expected an object, got \"api\""},
        {"{\"command\":[\"a\"],\"inject\":\"nfs\"}",
         "inject: expected \"seed\" or \"guestfs\", got \"nfs\""},
        {"{\"command\":[\"a\"],\"inject\":\"seed\\u0000x\"}", "inject: must not contain NUL bytes"},
        {"{\"command\":[\"a\"],\"secret_env_names\":[\"A\"]}", "secret_env_names: unknown field"},
        {"{\"command\":[\"a\"],\"batch\":\"-x\"}", "batch: expected a batch name *"},
        {"{\"command\":[\"a\"],\"batch\":\"a/b\"}", "batch: expected a batch name *"},
        {"{\"command\":[\"a\"],\"batch\":\"a\\u0000b\"}", "batch: *"},
        {"{\"command\":[\"a\"],\"batch\":"
         "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}",
         "batch: expected a batch name *"},
        {"{\"command\":[\"a\"],\"batch\":7}", "batch: expected a string*"},
        {"[]", "job spec: expected a JSON object, got an array"},
        {"\"x\"", "job spec: expected a JSON object, got \"x\""},
        {"42", "job spec: expected a JSON object, got 42"},
        {"null", "job spec: expected a JSON object, got null"},
        {"{\"command\":[\"a\"]} {}", "job spec: invalid JSON at byte *"},
        {"{\"command\":[\"a\"],}", "job spec: invalid JSON at byte *"},
        {"{\"command\":[\"a\"] /* c */}", "job spec: invalid JSON at byte *"},
        {"{\"command\":[\"a\"],\"name\":\"x", "name: invalid JSON at byte *"},
        {"{\"command\":[\"a\"],\"name\":\"a\tb\"}", "name: invalid JSON at byte *"},
        {"{\"command\":[\"a\"],\"name\":\"\\x\"}", "name: invalid JSON at byte *"},
        {"{\"command\":[\"a\"],\"resources\":{\"cpus\":01}}", "*"},
        {"{\"command\":[\"a\"]", "job spec: invalid JSON at byte *"},
        /* a syntax error right after an env name (found by fuzzing) */
        {"{\"command\":[\"a\"],\"env\":{\"A\":x}}", "env.A: invalid JSON at byte *"},
        {"{\"command\":[\"a\"],\"env\":{\"A\" \"x\"}}", "env.A: invalid JSON at byte *"},
        {"   ", "job spec: invalid JSON at byte *"},
};

static void test_rejections(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_SIZE(rejections); i++) {
        const char *want = rejections[i].msg;
        char *msg = parse_err_len(rejections[i].doc, strlen(rejections[i].doc), -EINVAL);
        size_t wl = strlen(want);
        bool ok = wl && want[wl - 1] == '*' ? strncmp(msg, want, wl - 1) == 0 : streq(msg, want);
        if (!ok)
            fail_msg("document %s\n  got:  %s\n  want: %s", rejections[i].doc, msg, want);
        free(msg);
    }
    /* empty input, and a document with a NUL byte in the middle */
    char *msg = parse_err_len("", 0, -EINVAL);
    assert_string_equal(msg, "job spec: empty document");
    free(msg);
    msg = parse_err_len("{\"script\":\"a\0b\"}", 16, -EINVAL);
    assert_non_null(strstr(msg, "invalid JSON"));
    free(msg);
}

static void test_long_values_are_quoted_short(void **state)
{
    (void)state;
    char doc[512];
    char img[200];
    memset(img, 'x', sizeof(img) - 1);
    img[sizeof(img) - 1] = '\0';
    snprintf(doc, sizeof(doc), "{\"command\":[\"a\"],\"image\":\"%s\"}", img);
    char *msg = parse_err_len(doc, strlen(doc), -EINVAL);
    /* at most 40 characters of the value, then an ellipsis */
    assert_non_null(strstr(msg, "got \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...\""));
    free(msg);

    char name[200];
    memset(name, 'n', 129);
    name[129] = '\0';
    snprintf(doc, sizeof(doc), "{\"command\":[\"a\"],\"name\":\"%s\"}", name);
    msg = parse_err_len(doc, strlen(doc), -EINVAL);
    assert_string_equal(msg, "name: must be at most 128 bytes, got 129");
    free(msg);
    name[128] = '\0';
    snprintf(doc, sizeof(doc), "{\"command\":[\"a\"],\"name\":\"%s\"}", name);
    job_spec_free(parse_ok(doc));
}

/* Secret values must not show up in any message, whatever is wrong. */
static void test_errors_never_echo_secrets(void **state)
{
    (void)state;
    const char *docs[] = {
            "{\"command\":[\"a\"],\"secret_env\":{\"T\":\"s3cr\"},\"secret_env\":1}",
            "{\"command\":[\"a\"],\"secret_env\":{\"T\":123456789}}",
            "{\"command\":[\"a\"],\"secret_env\":{\"T\":\"s3cret-value\\u0000\"}}",
            "{\"command\":[\"a\"],\"secret_env\":{\"T\":\"s3c\"}}",
            "{\"command\":[\"a\"],\"secret_env\":\"s3cret-value\"}",
            "{\"command\":[\"a\"],\"secret_env\":{\"T\":[\"s3cret-value\"]}}",
            "{\"command\":[\"a\"],\"secret_env\":{\"T\":\"s3cret-value\xff\"}}",
            "{\"command\":[\"a\"],\"secret_env\":{\"T\":\"s3cret-value\"},\"env\":{\"T\":\"x\"}}",
    };
    for (size_t i = 0; i < ARRAY_SIZE(docs); i++) {
        char *msg = parse_err_len(docs[i], strlen(docs[i]), -EINVAL);
        if (strstr(msg, "s3c") || strstr(msg, "123456789"))
            fail_msg("message echoes a secret: %s", msg);
        free(msg);
    }
}

/* A secret value that also sits in another field is masked in the message
 * about that field, whether the secret comes before or after it, is longer
 * than the part of a value a message shows, or is registered by another job. */
static void test_errors_mask_secrets_in_other_fields(void **state)
{
    (void)state;
    const char *docs[] = {
            /* after the field in error */
            "{\"command\":[\"a\"],\"image\":\"tok-0123456789!\","
            "\"secret_env\":{\"T\":\"tok-0123456789\"}}",
            /* the key spelt with an escape */
            "{\"command\":[\"a\"],\"image\":\"tok-0123456789!\","
            "\"secret\\u005fenv\":{\"T\":\"tok-0123456789\"}}",
            /* before it */
            "{\"command\":[\"a\"],\"secret_env\":{\"T\":\"tok-0123456789\"},"
            "\"pool\":\"x tok-0123456789\"}",
            /* a valid name printed unquoted: a duplicate label */
            "{\"command\":[\"a\"],\"secret_env\":{\"T\":\"tok-0123456789\"},"
            "\"labels\":[\"tok-0123456789\",\"tok-0123456789\"]}",
            /* an env name equal to the secret */
            "{\"command\":[\"a\"],\"secret_env\":{\"T\":\"TOK_0123456789\"},"
            "\"env\":{\"TOK_0123456789\":1}}",
            /* a secret longer than the 40 characters shown of a value */
            "{\"command\":[\"a\"],\"artifacts\":[\"../tok-0123456789-0123456789-0123456789-0123\"],"
            "\"secret_env\":{\"T\":\"tok-0123456789-0123456789-0123456789-0123\"}}",
            /* a secret with characters a message escapes */
            "{\"command\":[\"a\"],\"secret_env\":{\"T\":\"tok\\\"01234\\u00e9\"},"
            "\"inject\":\"tok\\\"01234\\u00e9\"}",
            /* a syntax error after both */
            "{\"command\":[\"a\"],\"secret_env\":{\"T\":\"tok-0123456789\"},"
            "\"image\":\"tok-0123456789\" ]",
    };
    for (size_t i = 0; i < ARRAY_SIZE(docs); i++) {
        char *msg = parse_err_len(docs[i], strlen(docs[i]), -EINVAL);
        if (strstr(msg, "tok-0") || strstr(msg, "TOK_0") || strstr(msg, "tok\\\"0"))
            fail_msg("message %zu echoes a secret: %s", i, msg);
        free(msg);
    }
    char *msg = parse_err_len(docs[0], strlen(docs[0]), -EINVAL);
    assert_string_equal(msg, "image: expected a name matching [A-Za-z0-9][A-Za-z0-9._-]{0,62}, "
                             "got \"***!\"");
    free(msg);

    /* a secret registered by another job is masked as well */
    assert_int_equal(al_redact_add("other-job-secret"), 0);
    const char *doc = "{\"command\":[\"a\"],\"pool\":\"other-job-secret?\"}";
    msg = parse_err_len(doc, strlen(doc), -EINVAL);
    al_redact_remove("other-job-secret");
    assert_null(strstr(msg, "other-job"));
    free(msg);
}

/* A \u escape of half a surrogate pair is not text: refused, naming the
 * field, instead of being stored as '?' or as bytes that are not UTF-8. */
static void test_lone_surrogates_refused(void **state)
{
    (void)state;
    static const struct {
        const char *doc, *msg;
    } cases[] = {
            {"{\"command\":[\"a\"],\"name\":\"x\\ud800\"}",
             "name: has a lone UTF-16 surrogate escape \\ud800, which is not text"},
            {"{\"command\":[\"a\"],\"name\":\"\\udc00x\"}",
             "name: has a lone UTF-16 surrogate escape \\udc00, which is not text"},
            {"{\"command\":[\"a\",\"b\",\"\\uD800\\u0041\"]}",
             "command[2]: has a lone UTF-16 surrogate escape \\ud800, which is not text"},
            {"{\"command\":[\"a\"],\"env\":{\"HOME\":\"\\udfff\\ud800\"}}",
             "env.HOME: has a lone UTF-16 surrogate escape \\udfff, which is not text"},
            {"{\"command\":[\"a\"],\"env\":{\"X\\ud800\":\"v\"}}",
             "env: a key has a lone UTF-16 surrogate escape \\ud800, which is not text"},
            {"[\"\\ud800\"]", "[0]: has a lone UTF-16 surrogate escape \\ud800, which is not text"},
            {"{\"script\":\"\\\\ud800 \\ud83d\"}",
             "script: has a lone UTF-16 surrogate escape \\ud83d, which is not text"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        char *msg = parse_err_len(cases[i].doc, strlen(cases[i].doc), -EINVAL);
        assert_string_equal(msg, cases[i].msg);
        free(msg);
    }
    /* a proper pair and an escaped backslash before "ud800" are text */
    struct job_spec *s = parse_ok("{\"command\":[\"a\"],\"name\":\"\\ud83d\\ude00 \\\\ud800\"}");
    assert_string_equal(s->name, "\xf0\x9f\x98\x80 \\ud800");
    job_spec_free(s);
}

static char *repeat_doc(const char *head, const char *unit, size_t n, const char *tail)
{
    struct al_buf b = AL_BUF_INIT;
    assert_int_equal(al_buf_puts(&b, head), 0);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(al_buf_puts(&b, unit), 0);
    assert_int_equal(al_buf_puts(&b, tail), 0);
    return al_buf_steal(&b);
}

static long peak_rss_kb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

static bool under_valgrind(void)
{
    return getenv("AL_UNDER_VALGRIND") != NULL;
}

/* Hostile sizes are refused quickly and without memory growth. */
static void test_limits(void **state)
{
    (void)state;
    /* documents are built before the baseline so only parsing is measured */
    size_t big = 2u << 20;
    char *huge = malloc(big);
    assert_non_null(huge);
    memset(huge, ' ', big);
    memcpy(huge, "{\"script\":\"", 11);
    huge[big - 2] = '"';
    huge[big - 1] = '}';
    char *deep_array = repeat_doc("", "[", 10000, "");
    char *deep_object = repeat_doc("{\"command\":[\"a\"],\"resources\":", "{\"cpus\":", 10000, "");
    char *deep_env = repeat_doc("{\"command\":[\"a\"],\"env\":{\"A\":", "[", 10000, "");
    /* 100,000 env entries with three-letter names: fits in the size limit */
    struct al_buf b = AL_BUF_INIT;
    assert_int_equal(al_buf_puts(&b, "{\"command\":[\"a\"],\"env\":{"), 0);
    static const char alpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    for (int i = 0; i < 100000; i++) {
        char n[4] = {alpha[i / 2704], alpha[(i / 52) % 52], alpha[i % 52], 0};
        assert_int_equal(al_buf_printf(&b, "%s\"%s\":\"\"", i ? "," : "", n), 0);
    }
    assert_int_equal(al_buf_puts(&b, "}}"), 0);
    assert_true(b.len < JOB_SPEC_MAX_BYTES);
    char *many_env = al_buf_steal(&b);
    char *many_args = repeat_doc("{\"command\":[\"a\"", ",\"b\"", JOB_SPEC_MAX_ARGS, "]}");
    char *many_artifacts =
            repeat_doc("{\"command\":[\"a\"],\"artifacts\":[\"a\"", ",\"b\"", 100, "]}");
    assert_int_equal(al_buf_puts(&b, "{\"command\":[\"a\"],\"labels\":[\"l\""), 0);
    for (int i = 0; i < JOB_SPEC_MAX_LABELS; i++)
        assert_int_equal(al_buf_printf(&b, ",\"l%d\"", i), 0);
    assert_int_equal(al_buf_puts(&b, "]}"), 0);
    char *many_labels = al_buf_steal(&b);
    char *big_script = repeat_doc("{\"script\":\"", "x", JOB_SPEC_MAX_SCRIPT + 1, "\"}");

    long rss_before = peak_rss_kb();
    uint64_t t0 = al_now_mono_us();

    char *msg = parse_err_len(huge, big, -E2BIG);
    assert_string_equal(msg, "job spec: 2097152 bytes is more than the limit of 1048576 bytes");
    free(msg);
    /* one byte over the limit is enough */
    msg = parse_err_len(huge, JOB_SPEC_MAX_BYTES + 1, -E2BIG);
    free(msg);

    msg = parse_err_len(deep_array, strlen(deep_array), -EINVAL);
    assert_string_equal(msg, "job spec: expected a JSON object, got an array");
    free(msg);
    msg = parse_err_len(deep_object, strlen(deep_object), -EINVAL);
    assert_string_equal(msg, "resources.cpus: expected an integer from 1 to 64, got an object");
    free(msg);
    msg = parse_err_len(deep_env, strlen(deep_env), -EINVAL);
    assert_string_equal(msg, "env.A: expected a string, got an array");
    free(msg);
    msg = parse_err_len(many_env, strlen(many_env), -EINVAL);
    assert_string_equal(msg, "env: more than 256 entries in env and secret_env");
    free(msg);
    msg = parse_err_len(many_args, strlen(many_args), -EINVAL);
    assert_string_equal(msg, "command: more than 1024 arguments");
    free(msg);
    msg = parse_err_len(many_artifacts, strlen(many_artifacts), -EINVAL);
    assert_string_equal(msg, "artifacts: more than 100 paths");
    free(msg);
    msg = parse_err_len(many_labels, strlen(many_labels), -EINVAL);
    assert_string_equal(msg, "labels: more than 32 labels");
    free(msg);
    msg = parse_err_len(big_script, strlen(big_script), -EINVAL);
    assert_string_equal(msg, "script: must be at most 262144 bytes, got 262145");
    free(msg);

    uint64_t elapsed_us = al_now_mono_us() - t0;
    long rss_growth_kb = peak_rss_kb() - rss_before;
    print_message("hostile documents: %.1f ms, peak RSS growth %ld KiB\n", elapsed_us / 1000.0,
                  rss_growth_kb);
    if (!under_valgrind()) {
        assert_true(elapsed_us < 2000000);
        /* nothing proportional to the documents: a copy of the 1 MiB
         * env document alone would be 1024 KiB */
        assert_true(rss_growth_kb < 1024);
    }

    /* exactly at the limits is fine */
    many_args[strlen(many_args) - 6] = ']';
    many_args[strlen(many_args) - 5] = '}';
    many_args[strlen(many_args) - 4] = '\0';
    job_spec_free(parse_ok(many_args));

    free(huge);
    free(deep_array);
    free(deep_object);
    free(deep_env);
    free(many_env);
    free(many_args);
    free(many_artifacts);
    free(many_labels);
    free(big_script);
}

static void test_env_limit_counts_both_maps(void **state)
{
    (void)state;
    struct al_buf b = AL_BUF_INIT;
    assert_int_equal(al_buf_puts(&b, "{\"command\":[\"a\"],\"env\":{"), 0);
    for (int i = 0; i < 200; i++)
        assert_int_equal(al_buf_printf(&b, "%s\"E%d\":\"v\"", i ? "," : "", i), 0);
    assert_int_equal(al_buf_puts(&b, "},\"secret_env\":{"), 0);
    for (int i = 0; i < 56; i++)
        assert_int_equal(al_buf_printf(&b, "%s\"S%d\":\"secret%d\"", i ? "," : "", i, i), 0);
    size_t at_limit = b.len;
    assert_int_equal(al_buf_puts(&b, "}}"), 0);
    struct job_spec *s = parse_ok(b.data);
    assert_int_equal(s->n_env + s->n_secret_env, JOB_SPEC_MAX_ENV);
    job_spec_free(s);
    b.len = at_limit;
    /* not "secret": a failed document's secret values are masked even where
     * they match the message's own words ("secret_env") */
    assert_int_equal(al_buf_puts(&b, ",\"S999\":\"secret999\"}}"), 0);
    char *msg = parse_err_len(b.data, b.len, -EINVAL);
    assert_string_equal(msg, "secret_env: more than 256 entries in env and secret_env");
    free(msg);
    al_buf_free(&b);
}

static void test_to_json_round_trip_without_secrets(void **state)
{
    (void)state;
    const char *doc = "{\"name\":\"q\\\"uote\\\\ \xc3\xa9\",\"command\":[\"sh\",\"-c\",\"echo "
                      "\\\"$A\\\"\"],\"env\":{\"A\":\"1\\n2\"},"
                      "\"secret_env\":{\"TOKEN\":\"very-secret-token\",\"KEY\":\"other-secret\"},"
                      "\"resources\":{\"cpus\":4},\"timeout_s\":60,\"artifacts\":[\"o/x\"],"
                      "\"labels\":[\"l1\"],\"pool\":\"p\",\"batch\":\"nightly-1\","
                      "\"source\":{\"type\":\"cli\","
                      "\"id\":\"me\"},\"max_attempts\":2,\"inject\":\"seed\"}";
    struct job_spec *s = parse_ok(doc);
    char *json = NULL;
    size_t len = 0;
    assert_int_equal(job_spec_to_json(s, &json, &len, NULL), 0);
    assert_int_equal(strlen(json), len);
    assert_null(strstr(json, "very-secret-token"));
    assert_null(strstr(json, "other-secret"));
    assert_non_null(strstr(json, "\"secret_env_names\":[\"TOKEN\",\"KEY\"]"));

    /* the plain parser refuses the stored form; the stored parser accepts it */
    struct job_spec *bad = NULL;
    assert_int_equal(job_spec_parse(json, len, 0, &bad, NULL), -EINVAL);
    struct job_spec *back = parse_ok_flags(json, JOB_SPEC_PARSE_STORED);
    assert_int_equal(back->n_secret_env, 2);
    assert_string_equal(back->secret_env[0].name, "TOKEN");
    assert_null(back->secret_env[0].value);
    assert_string_equal(back->name, s->name);
    assert_string_equal(back->command[2], "echo \"$A\"");
    assert_string_equal(back->env[0].value, "1\n2");
    assert_int_equal(back->inject, INJECT_SEED);
    assert_int_equal(back->source.type, JOB_SOURCE_CLI);
    assert_string_equal(back->batch, "nightly-1");

    char *json2 = NULL;
    assert_int_equal(job_spec_to_json(back, &json2, NULL, NULL), 0);
    assert_string_equal(json, json2);
    /* registering a stored spec's secrets is a no-op, not an error */
    assert_int_equal(job_spec_register_secrets(back, NULL), 0);
    job_spec_unregister_secrets(back);

    free(json);
    free(json2);
    job_spec_free(s);
    job_spec_free(back);
}

static void test_defaults(void **state)
{
    (void)state;
    unsetenv("AGENTLAB_CONFIG");
    struct config *cfg = NULL;
    assert_int_equal(config_load_string("", 0, "test.conf", &cfg, NULL), 0);

    struct job_spec *s = parse_ok("{\"command\":[\"true\"]}");
    assert_int_equal(job_spec_apply_defaults(s, cfg, NULL), 0);
    assert_string_equal(s->image, cfg->agent.image);
    assert_null(s->pool); /* routing picks the pool (route.h), not defaults */
    assert_int_equal(s->timeout_s, cfg->agent.job_timeout_s);
    assert_int_equal(s->max_attempts, cfg->agent.max_attempts);
    assert_int_equal(s->resources.cpus, cfg->agent.job_cpus);
    assert_int_equal(s->resources.memory_mb, (int)(cfg->agent.job_memory >> 20));
    assert_int_equal(s->resources.disk_gb, 0);
    assert_int_equal(s->inject, -1);
    job_spec_free(s);

    /* given values win */
    s = parse_ok("{\"command\":[\"true\"],\"image\":\"alpine\",\"pool\":\"gpu\",\"timeout_s\":5,"
                 "\"max_attempts\":7,\"resources\":{\"cpus\":3,\"memory_mb\":512}}");
    assert_int_equal(job_spec_apply_defaults(s, cfg, NULL), 0);
    assert_string_equal(s->image, "alpine");
    assert_string_equal(s->pool, "gpu");
    assert_int_equal(s->timeout_s, 5);
    assert_int_equal(s->max_attempts, 7);
    assert_int_equal(s->resources.cpus, 3);
    assert_int_equal(s->resources.memory_mb, 512);
    job_spec_free(s);
    config_free(cfg);

    /* a configured default outside a job's limits is an error, not a bad job */
    const char *conf = "[agent]\njob_cpus = 100\n";
    cfg = NULL;
    assert_int_equal(config_load_string(conf, strlen(conf), "test.conf", &cfg, NULL), 0);
    s = parse_ok("{\"command\":[\"true\"]}");
    struct al_error *err = NULL;
    assert_int_equal(job_spec_apply_defaults(s, cfg, &err), -EINVAL);
    assert_non_null(strstr(al_error_message(err), "agent.job_cpus"));
    al_error_free(err);
    job_spec_free(s);
    config_free(cfg);
}

static void test_register_secrets(void **state)
{
    (void)state;
    struct job_spec *s = parse_ok("{\"command\":[\"a\"],\"secret_env\":{\"A\":\"alpha-secret\","
                                  "\"B\":\"beta-secret\"}}");
    const char *line = "token alpha-secret and beta-secret";
    assert_int_equal(job_spec_register_secrets(s, NULL), 0);
    char *red = al_redact(line, strlen(line), NULL);
    assert_string_equal(red, "token *** and ***");
    free(red);
    job_spec_unregister_secrets(s);
    red = al_redact(line, strlen(line), NULL);
    assert_string_equal(red, line);
    free(red);

    /* all or nothing: a value the redactor refuses rolls back the others */
    free(s->secret_env[1].value);
    s->secret_env[1].value = strdup("abc");
    struct al_error *err = NULL;
    assert_int_equal(job_spec_register_secrets(s, &err), -EINVAL);
    assert_non_null(strstr(al_error_message(err), "secret_env.B"));
    al_error_free(err);
    assert_false(al_redact_contains(line, strlen(line)));
    job_spec_free(s);
    al_redact_clear();
}

static void test_to_json_masks_secrets_elsewhere(void **state)
{
    (void)state;
    /* a secret with characters JSON escapes, also pasted into the command */
    struct job_spec *s = parse_ok("{\"command\":[\"login\",\"--token=pa\\\"ss\\\\word\"],"
                                  "\"secret_env\":{\"PW\":\"pa\\\"ss\\\\word\"}}");
    assert_string_equal(s->secret_env[0].value, "pa\"ss\\word");
    assert_int_equal(job_spec_register_secrets(s, NULL), 0);
    char *json = NULL;
    assert_int_equal(job_spec_to_json(s, &json, NULL, NULL), 0);
    assert_string_equal(json, "{\"command\":[\"login\",\"--token=***\"],"
                              "\"secret_env_names\":[\"PW\"]}");
    free(json);
    job_spec_unregister_secrets(s);
    job_spec_free(s);
}

static void test_names_and_types(void **state)
{
    (void)state;
    assert_true(job_env_name_is_valid("_"));
    assert_true(job_env_name_is_valid("PATH"));
    assert_true(job_env_name_is_valid("a1_B2"));
    assert_false(job_env_name_is_valid("1A"));
    assert_false(job_env_name_is_valid(""));
    assert_false(job_env_name_is_valid(NULL));
    assert_false(job_env_name_is_valid("A=B"));
    char longname[JOB_SPEC_MAX_ENV_NAME + 2];
    memset(longname, 'A', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    assert_false(job_env_name_is_valid(longname));
    longname[JOB_SPEC_MAX_ENV_NAME] = '\0';
    assert_true(job_env_name_is_valid(longname));

    enum job_source_type t = JOB_SOURCE_NONE;
    assert_int_equal(job_source_type_from_string("github", &t), 0);
    assert_int_equal(t, JOB_SOURCE_GITHUB);
    assert_int_equal(job_source_type_from_string("", &t), -EINVAL);
    assert_int_equal(job_source_type_from_string("GitHub", &t), -EINVAL);
    assert_string_equal(job_source_type_to_string(JOB_SOURCE_NONE), "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_full_document),
            cmocka_unit_test(test_minimal_script),
            cmocka_unit_test(test_rejections),
            cmocka_unit_test(test_long_values_are_quoted_short),
            cmocka_unit_test(test_errors_never_echo_secrets),
            cmocka_unit_test(test_errors_mask_secrets_in_other_fields),
            cmocka_unit_test(test_lone_surrogates_refused),
            cmocka_unit_test(test_limits),
            cmocka_unit_test(test_env_limit_counts_both_maps),
            cmocka_unit_test(test_to_json_round_trip_without_secrets),
            cmocka_unit_test(test_defaults),
            cmocka_unit_test(test_register_secrets),
            cmocka_unit_test(test_to_json_masks_secrets_elsewhere),
            cmocka_unit_test(test_names_and_types),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
