/* GitLab job payloads: parsing at the edge, the job spec and the script made
 * from them (run here with the host's /bin/sh), artifact patterns, CRC-32. */
#include "test_util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runner/base/buf.h"
#include "runner/base/crc32.h"
#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/sources/gitlab_checkout.h"
#include "runner/sources/gitlab_job.h"
#include "runner/sources/gitlab_register.h"

#include "gitlab_payload.h"

static void test_parse_realistic(void **state)
{
    (void)state;
    _cleanup_free_ char *doc = payload(
            "{\"key\": \"CI_JOB_ID\", \"value\": \"4711\", \"public\": true, \"masked\": false},"
            "{\"key\": \"CI_JOB_TOKEN\", \"value\": \"" TOKEN "\", \"public\": false, "
            "\"masked\": true},"
            "{\"key\": \"KEY\", \"value\": \"" SECRET "\", \"masked\": true, \"file\": false,"
            " \"raw\": true},"
            "{\"key\": \"CERT\", \"value\": \"line1\\nline2\\n\", \"file\": true}",
            STEP_SCRIPT("\"echo hi\", \"make\"") "," STEP_AFTER("\"echo bye\""),
            "{\"name\": \"bin\", \"untracked\": false, \"paths\": [\"out/\", \"*.log\"],"
            " \"exclude\": [\"out/tmp/**\"], \"when\": \"always\", \"artifact_type\": "
            "\"archive\", \"artifact_format\": \"zip\", \"expire_in\": \"1 week\"}");
    struct gitlab_job *j = parse_ok(doc);
    assert_int_equal(j->id, 4711);
    assert_string_equal(j->token, TOKEN);
    assert_string_equal(j->sha, SHA);
    assert_string_equal(j->ref, "main");
    assert_int_equal(j->depth, 20);
    assert_int_equal(j->n_refspecs, 1);
    assert_int_equal(j->timeout_s, 1800);
    assert_string_equal(j->job_name, "unit test/job");
    assert_string_equal(j->image, "debian-12");
    assert_int_equal(j->n_variables, 4);
    assert_true(j->variables[2].masked);
    assert_true(j->variables[3].file);
    assert_int_equal(j->n_steps, 2);
    assert_int_equal(j->steps[1].when, GITLAB_WHEN_ALWAYS);
    assert_true(j->steps[1].allow_failure);
    assert_int_equal(j->n_artifacts, 1);
    assert_int_equal(j->artifacts[0].n_paths, 2);
    assert_string_equal(j->artifacts[0].expire_in, "1 week");
    assert_int_equal(j->n_failure_reasons, 2);
    assert_string_equal(gitlab_job_variable(j, "CI_JOB_ID"), "4711");
    gitlab_job_free(j);
}

static void test_parse_rejects(void **state)
{
    (void)state;
    static const struct {
        const char *variables, *steps, *artifacts;
        const char *want; /* part of the message */
    } cases[] = {
            {"", "", "", "steps: no steps"},
            {"", "{\"name\": \"script\", \"script\": \"echo\"}", "",
             "steps[0].script: expected an array, got a string"},
            {"", STEP_SCRIPT("\"ok\", 42"), "", "steps[0].script[1]: expected a string"},
            {"", "{\"name\": \"Script!\", \"script\": []}", "", "steps[0]: name"},
            {"", "{\"name\": \"script\", \"script\": [], \"when\": \"sometimes\"}", "",
             "steps[0].when: expected on_success, on_failure or always"},
            {"", "{\"name\": \"script\", \"script\": [], \"timeout\": -1}", "",
             "steps[0].timeout: expected an integer from 0"},
            {"{\"value\": \"x\"}", STEP_SCRIPT("\"true\""), "", "variables[0].key: missing"},
            {"{\"key\": \"A\", \"value\": 3}", STEP_SCRIPT("\"true\""), "",
             "variables[0].value: expected a string, got an integer"},
            {"{\"key\": \"A\", \"value\": \"x\", \"masked\": \"yes\"}", STEP_SCRIPT("\"true\""), "",
             "variables[0].masked: expected true or false"},
            {"{\"key\": \"A\", \"key\": \"B\", \"value\": \"x\"}", STEP_SCRIPT("\"true\""), "",
             "variables[0].key: given more than once"},
            {"", STEP_SCRIPT("\"true\""), "{\"paths\": \"out\"}",
             "artifacts[0].paths: expected an array"},
            {"", STEP_SCRIPT("\"true\""), "{\"paths\": [], \"when\": 1}",
             "artifacts[0].when: expected a string"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        _cleanup_free_ char *doc = payload(cases[i].variables, cases[i].steps, cases[i].artifacts);
        _cleanup_free_ char *msg = parse_err(doc, strlen(doc), -EINVAL);
        if (!strstr(msg, cases[i].want))
            fail_msg("case %zu: message \"%s\" lacks \"%s\"", i, msg, cases[i].want);
    }
}

/* The payload with these dependencies. */
static char *with_dependencies(const char *deps)
{
    return payload_with("", STEP_SCRIPT("\"true\""), "", deps);
}

static void test_parse_dependencies(void **state)
{
    (void)state;
    _cleanup_free_ char *doc = with_dependencies(
            "{\"id\": 4700, \"name\": \"build\", \"token\": \"" TOKEN "\","
            " \"artifacts_file\": {\"filename\": \"artifacts.zip\", \"size\": 1234}},"
            "{\"id\": 4701, \"name\": \"lint\", \"token\": \"" TOKEN "\"}");
    struct gitlab_job *j = parse_ok(doc);
    assert_int_equal(j->n_dependencies, 2);
    assert_int_equal(j->dependencies[0].id, 4700);
    assert_string_equal(j->dependencies[0].name, "build");
    assert_string_equal(j->dependencies[0].token, TOKEN);
    assert_string_equal(j->dependencies[0].artifacts_file, "artifacts.zip");
    assert_int_equal(j->dependencies[0].artifacts_size, 1234);
    assert_null(j->dependencies[1].artifacts_file); /* nothing to download */
    gitlab_job_free(j);

    static const struct {
        const char *deps, *want;
    } bad[] = {
            {"{\"name\": \"build\"}", "dependencies[0].id: missing"},
            {"{\"id\": 0}", "dependencies[0].id: expected an integer from 1"},
            {"\"build\"", "dependencies[0]: expected an object, got a string"},
            {"{\"id\": 1, \"token\": \"short\"}", "dependencies[0]: token: expected 8 to"},
            {"{\"id\": 1, \"artifacts_file\": {\"size\": \"big\"}}",
             "dependencies[0].artifacts_file.size: expected an integer"},
            {"{\"id\": 1, \"artifacts_file\": []}",
             "dependencies[0].artifacts_file: expected an object"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        _cleanup_free_ char *d = with_dependencies(bad[i].deps);
        _cleanup_free_ char *msg = parse_err(d, strlen(d), -EINVAL);
        if (!strstr(msg, bad[i].want))
            fail_msg("case %zu: message \"%s\" lacks \"%s\"", i, msg, bad[i].want);
    }
}

static void test_parse_rejects_document(void **state)
{
    (void)state;
    _cleanup_free_ char *m1 = parse_err("[]", 2, -EINVAL);
    assert_non_null(strstr(m1, "expected an object"));
    _cleanup_free_ char *m2 = parse_err("{\"id\": 1", 8, -EINVAL);
    assert_non_null(strstr(m2, "not valid JSON"));
    const char *no_id = "{\"token\": \"" TOKEN "\"}";
    _cleanup_free_ char *m3 = parse_err(no_id, strlen(no_id), -EINVAL);
    assert_non_null(strstr(m3, "id: missing"));
    const char *no_git = "{\"id\": 5, \"token\": \"" TOKEN "\", \"steps\": []}";
    _cleanup_free_ char *m4 = parse_err(no_git, strlen(no_git), -EINVAL);
    assert_non_null(strstr(m4, "git_info: missing"));
    const char *short_token = "{\"id\": 5, \"token\": \"abc\"}";
    _cleanup_free_ char *m5 = parse_err(short_token, strlen(short_token), -EINVAL);
    assert_non_null(strstr(m5, "token: expected 8"));
    assert_null(strstr(m5, "abc"));

    /* nesting bombs cost nothing: refused before yajl sees them */
    size_t depth = 100000;
    char *deep = malloc(depth + 1);
    memset(deep, '[', depth);
    deep[depth] = '\0';
    _cleanup_free_ char *m6 = parse_err(deep, depth, -EINVAL);
    assert_non_null(strstr(m6, "nests deeper"));
    free(deep);

    size_t big = GITLAB_JOB_MAX_BYTES + 1;
    char *huge = calloc(1, big + 1);
    memset(huge, ' ', big);
    _cleanup_free_ char *m7 = parse_err(huge, big, -E2BIG);
    free(huge);
    assert_non_null(strstr(m7, "job payload is larger than"));

    /* many values */
    size_t count = GITLAB_JOB_MAX_VALUES + 10;
    char *many = malloc(count * 2 + 3);
    size_t o = 0;
    many[o++] = '[';
    for (size_t i = 0; i < count; i++) {
        many[o++] = '0';
        many[o++] = i + 1 < count ? ',' : ']';
    }
    _cleanup_free_ char *m8 = parse_err(many, o, -EINVAL);
    assert_non_null(strstr(m8, "more than"));
    free(many);

    const char *nul = "{\"id\": 1,\0 \"token\": \"x\"}";
    _cleanup_free_ char *m9 = parse_err(nul, 25, -EINVAL);
    assert_non_null(strstr(m9, "NUL"));

    /* half a surrogate pair is refused by the shared pre-scan, naming where */
    const char *lone = "{\"id\": 5, \"token\": \"" TOKEN "\", \"steps\": "
                       "[{\"name\": \"script\", \"script\": [\"echo \\ud800\"]}]}";
    _cleanup_free_ char *m10 = parse_err(lone, strlen(lone), -EINVAL);
    assert_string_equal(m10, "steps[0].script[0]: has a lone UTF-16 surrogate escape \\ud800, "
                             "which is not text");
}

static void test_parse_git_info(void **state)
{
    (void)state;
    static const char *const bad[] = {
            /* sha */ "\"sha\": \"zz\"",
            /* option injection through a refspec */
            "\"sha\": \"" SHA "\", \"refspecs\": [\"--upload-pack=evil\"]",
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        char *doc = NULL;
        assert_true(asprintf(&doc,
                             "{\"id\": 1, \"token\": \"" TOKEN "\", \"git_info\": "
                             "{\"repo_url\": \"https://h/x.git\", %s}, \"steps\": [" STEP_SCRIPT(
                                     "\"true\"") "]}",
                             bad[i]) > 0);
        _cleanup_free_ char *msg = parse_err(doc, strlen(doc), -EINVAL);
        assert_non_null(strstr(msg, "git_info."));
        free(doc);
    }
    /* a repository on the host's disk must never be fetched */
    const char *file_url =
            "{\"id\": 1, \"token\": \"" TOKEN "\", \"git_info\": {\"repo_url\": "
            "\"file:///etc\", \"sha\": \"" SHA "\"}, \"steps\": [" STEP_SCRIPT("\"true\"") "]}";
    _cleanup_free_ char *msg = parse_err(file_url, strlen(file_url), -EINVAL);
    assert_non_null(strstr(msg, "git_info.repo_url"));
}

static void test_ident_of_broken_payload(void **state)
{
    (void)state;
    _cleanup_free_ char *doc = payload("", "{\"name\": 7}", "");
    _cleanup_free_ char *msg = parse_err(doc, strlen(doc), -EINVAL);
    assert_non_null(strstr(msg, "steps[0].name: expected a string, got an integer"));
    int64_t id = 0;
    char *token = NULL;
    assert_int_equal(gitlab_job_parse_ident(doc, strlen(doc), &id, &token), 0);
    assert_int_equal(id, 4711);
    assert_string_equal(token, TOKEN);
    free(token);
    assert_int_equal(gitlab_job_parse_ident("{\"id\": 4711}", 12, &id, &token), -EINVAL);
}

static void test_secret_never_in_errors(void **state)
{
    (void)state;
    /* an over-long masked value: the message names the field, not the value */
    size_t n = GITLAB_JOB_MAX_STRING + 10;
    char *val = malloc(n + 1);
    memset(val, 'S', n);
    val[n] = '\0';
    char *vars = NULL;
    assert_true(asprintf(&vars, "{\"key\": \"K\", \"value\": \"%s\", \"masked\": true}", val) > 0);
    _cleanup_free_ char *doc = payload(vars, STEP_SCRIPT("\"true\""), "");
    _cleanup_free_ char *msg = parse_err(doc, strlen(doc), -EINVAL);
    assert_non_null(strstr(msg, "variables[0].value: longer than"));
    assert_null(strstr(msg, "SSSS"));
    free(vars);
    free(val);
}

static struct job_spec *spec_of(const char *doc, enum gitlab_clone clone)
{
    struct gitlab_job *j = parse_ok(doc);
    struct job_spec *spec = NULL;
    struct al_error *err = NULL;
    struct gitlab_spec_opts o = {.clone = clone, .pool = "gitlab"};
    if (gitlab_job_to_spec(j, &o, &spec, &err) < 0)
        fail_msg("to_spec: %s", al_error_message(err));
    gitlab_job_free(j);
    return spec;
}

static const char *env_get(const struct job_env_var *v, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++) {
        if (streq(v[i].name, name))
            return v[i].value;
    }
    return NULL;
}

/* The payload with its "cache" array replaced. */
static char *with_cache(const char *caches)
{
    _cleanup_free_ char *doc = payload("", STEP_SCRIPT("\"true\""), "{\"paths\": [\"bin/\"]}");
    char *at = strstr(doc, "\"cache\": []");
    assert_non_null(at);
    char *s = NULL;
    assert_true(asprintf(&s, "%.*s\"cache\": [%s]%s", (int)(at - doc), doc, caches,
                         at + strlen("\"cache\": []")) > 0);
    return s;
}

static void test_parse_cache(void **state)
{
    (void)state;
    _cleanup_free_ char *doc = with_cache(
            "{\"key\": \"deps-non_protected\", \"untracked\": false, \"policy\": \"pull-push\","
            " \"paths\": [\"vendor/\", \".cache/pip/*.whl\"], \"when\": \"on_success\","
            " \"fallback_keys\": [\"main-non_protected\"]},"
            "{\"key\": \"ro\", \"policy\": \"pull\", \"paths\": [\"ro/\"]},"
            "{\"key\": \"\", \"policy\": \"push\", \"paths\": [\"out/\", \"bin/x\"],"
            " \"when\": \"always\"}");
    struct gitlab_job *j = parse_ok(doc);
    assert_int_equal(j->project_id, 3);
    assert_int_equal(j->n_caches, 3);
    assert_string_equal(j->caches[0].key, "deps-non_protected");
    assert_int_equal(j->caches[0].policy, GITLAB_CACHE_PULL_PUSH);
    assert_int_equal(j->caches[0].n_paths, 2);
    assert_int_equal(j->caches[0].n_fallback_keys, 1);
    assert_string_equal(j->caches[0].fallback_keys[0], "main-non_protected");
    assert_int_equal(j->caches[1].policy, GITLAB_CACHE_PULL);
    assert_string_equal(j->caches[2].key, "default");
    assert_int_equal(j->caches[2].policy, GITLAB_CACHE_PUSH);
    assert_int_equal(j->caches[2].when, GITLAB_WHEN_ALWAYS);
    /* what is saved when */
    assert_true(gitlab_cache_saves(&j->caches[0], true));
    assert_false(gitlab_cache_saves(&j->caches[0], false));
    assert_false(gitlab_cache_saves(&j->caches[1], true));
    assert_true(gitlab_cache_saves(&j->caches[2], false));
    /* the guest hands back the archive's and the saved caches' roots, a
     * pull-only cache's not */
    struct gitlab_spec_opts o = {.clone = GITLAB_CLONE_HOST};
    struct job_spec *spec = NULL;
    assert_int_equal(gitlab_job_to_spec(j, &o, &spec, NULL), 0);
    assert_int_equal(spec->n_artifacts, 4);
    assert_string_equal(spec->artifacts[0], "bin");
    assert_string_equal(spec->artifacts[1], "vendor");
    assert_string_equal(spec->artifacts[2], ".cache/pip");
    assert_string_equal(spec->artifacts[3], "out");
    job_spec_free(spec);
    gitlab_job_free(j);

    static const struct {
        const char *caches, *want;
    } bad[] = {
            {"{\"key\": \"k\", \"policy\": \"sometimes\"}", "cache[0].policy: expected pull"},
            {"{\"key\": \"k\", \"when\": \"never\"}", "cache[0].when: expected on_success"},
            {"{\"key\": 5}", "cache[0].key: expected a string"},
            {"{},{},{},{},{}", "cache: "},
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        _cleanup_free_ char *d = with_cache(bad[i].caches);
        _cleanup_free_ char *msg = parse_err(d, strlen(d), -EINVAL);
        if (!strstr(msg, bad[i].want))
            fail_msg("case %zu: message \"%s\" lacks \"%s\"", i, msg, bad[i].want);
    }
}

static void test_spec(void **state)
{
    (void)state;
    _cleanup_free_ char *doc = payload(
            "{\"key\": \"CI_JOB_TOKEN\", \"value\": \"" TOKEN "\", \"masked\": true},"
            "{\"key\": \"CI_REPOSITORY_URL\", \"value\": \"https://gitlab-ci-token:" TOKEN
            "@h/x.git\"},"
            "{\"key\": \"CI_JOB_URL\", \"value\": \"https://gitlab.example.test/g/d/-/jobs/4711\"},"
            "{\"key\": \"PLAIN\", \"value\": \"one\"},"
            "{\"key\": \"PLAIN\", \"value\": \"two\"},"
            "{\"key\": \"KEY\", \"value\": \"" SECRET "\", \"masked\": true},"
            "{\"key\": \"9BAD\", \"value\": \"x\"},"
            "{\"key\": \"CERT\", \"value\": \"pem\", \"file\": true}",
            STEP_SCRIPT("\"echo $KEY\""),
            "{\"paths\": [\"build/*.bin\", \"build/sub/x\", \"dist/\", \"../up\", \"/abs\"]}");
    struct job_spec *spec = spec_of(doc, GITLAB_CLONE_HOST);
    assert_string_equal(spec->name, "gitlab-4711-unit-test-job");
    assert_string_equal(spec->pool, "gitlab");
    assert_int_equal(spec->timeout_s, 1800);
    assert_int_equal(spec->max_attempts, 1);
    assert_int_equal(spec->source.type, JOB_SOURCE_GITLAB);
    assert_string_equal(spec->source.id, "4711");
    assert_string_equal(spec->source.url, "https://gitlab.example.test/g/d/-/jobs/4711");
    assert_string_equal(env_get(spec->env, spec->n_env, "PLAIN"), "two");
    assert_string_equal(env_get(spec->secret_env, spec->n_secret_env, "KEY"), SECRET);
    assert_null(env_get(spec->env, spec->n_env, "KEY"));
    assert_null(env_get(spec->env, spec->n_env, "9BAD"));
    assert_string_equal(env_get(spec->env, spec->n_env, "CERT"), "pem");
    /* the job token stays on the host */
    assert_null(env_get(spec->env, spec->n_env, "CI_JOB_TOKEN"));
    assert_null(env_get(spec->secret_env, spec->n_secret_env, "CI_JOB_TOKEN"));
    assert_null(env_get(spec->env, spec->n_env, "CI_REPOSITORY_URL"));
    assert_null(strstr(spec->script, TOKEN));
    assert_null(strstr(spec->script, SECRET));
    /* glob patterns hand back their literal directory; ".." and absolute are left out */
    assert_int_equal(spec->n_artifacts, 2);
    assert_string_equal(spec->artifacts[0], "build");
    assert_string_equal(spec->artifacts[1], "dist");
    /* the spec is storable and its secrets registrable */
    char *json = NULL;
    assert_int_equal(job_spec_to_json(spec, &json, NULL, NULL), 0);
    assert_null(strstr(json, SECRET));
    assert_null(strstr(json, TOKEN));
    free(json);
    job_spec_free(spec);

    /* guest checkout: the token goes in, as a secret */
    spec = spec_of(doc, GITLAB_CLONE_GUEST);
    assert_string_equal(env_get(spec->secret_env, spec->n_secret_env, "CI_JOB_TOKEN"), TOKEN);
    assert_non_null(env_get(spec->secret_env, spec->n_secret_env, "CI_REPOSITORY_URL"));
    assert_null(strstr(spec->script, TOKEN));
    assert_non_null(strstr(spec->script, "git fetch"));
    assert_non_null(strstr(spec->script, "${CI_JOB_TOKEN}"));
    job_spec_free(spec);
}

static void test_spec_refusals(void **state)
{
    (void)state;
    _cleanup_free_ char *doc = payload("{\"key\": \"K\", \"value\": \"ab\", \"masked\": true}",
                                       STEP_SCRIPT("\"true\""), "");
    struct gitlab_job *j = parse_ok(doc);
    struct job_spec *spec = NULL;
    struct al_error *err = NULL;
    struct gitlab_spec_opts o = {.clone = GITLAB_CLONE_HOST};
    assert_int_equal(gitlab_job_to_spec(j, &o, &spec, &err), -EINVAL);
    assert_non_null(strstr(al_error_message(err), "variable K is masked but shorter"));
    assert_null(strstr(al_error_message(err), "\"ab\""));
    al_error_free(err);
    gitlab_job_free(j);

    /* more variables than a spec takes */
    struct al_buf vars = AL_BUF_INIT;
    for (int i = 0; i < JOB_SPEC_MAX_ENV + 5; i++)
        assert_int_equal(
                al_buf_printf(&vars, "%s{\"key\": \"V%d\", \"value\": \"x\"}", i ? "," : "", i), 0);
    _cleanup_free_ char *doc2 = payload(vars.data, STEP_SCRIPT("\"true\""), "");
    al_buf_free(&vars);
    j = parse_ok(doc2);
    err = NULL;
    assert_int_equal(gitlab_job_to_spec(j, &o, &spec, &err), -EINVAL);
    assert_non_null(strstr(al_error_message(err), "at most"));
    al_error_free(err);
    gitlab_job_free(j);

    /* GIT_STRATEGY=none: no checkout whatever the source says */
    _cleanup_free_ char *doc3 = payload("{\"key\": \"GIT_STRATEGY\", \"value\": \"none\"}",
                                        STEP_SCRIPT("\"true\""), "");
    j = parse_ok(doc3);
    assert_int_equal(gitlab_job_clone_mode(j, GITLAB_CLONE_GUEST), GITLAB_CLONE_NONE);
    gitlab_job_free(j);
}

/* image: and the AGENTLAB_CPUS/AGENTLAB_MEMORY variables pick the VM. */
static void test_spec_vm(void **state)
{
    (void)state;
    _cleanup_free_ char *doc = payload_image("{\"name\": \"debian-12-actions\"}",
                                             "{\"key\": \"AGENTLAB_CPUS\", \"value\": \"4\"},"
                                             "{\"key\": \"AGENTLAB_MEMORY\", \"value\": \"8g\"}",
                                             STEP_SCRIPT("\"true\""), "", "");
    struct job_spec *spec = spec_of(doc, GITLAB_CLONE_HOST);
    assert_string_equal(spec->image, "debian-12-actions");
    assert_int_equal(spec->resources.cpus, 4);
    assert_int_equal(spec->resources.memory_mb, 8192);
    job_spec_free(spec);

    /* no image: (null or empty) and no variables: the pool decides */
    const char *none[] = {"null", "{\"name\": \"\"}", "{}"};
    for (size_t i = 0; i < ARRAY_SIZE(none); i++) {
        _cleanup_free_ char *d = payload_image(none[i], "", STEP_SCRIPT("\"true\""), "", "");
        spec = spec_of(d, GITLAB_CLONE_HOST);
        assert_null(spec->image);
        assert_int_equal(spec->resources.cpus, 0);
        assert_int_equal(spec->resources.memory_mb, 0);
        job_spec_free(spec);
    }

    _cleanup_free_ char *mib = payload_image("{\"name\": \"micro\"}",
                                             "{\"key\": \"AGENTLAB_MEMORY\", \"value\": "
                                             "\"1536M\"}",
                                             STEP_SCRIPT("\"true\""), "", "");
    spec = spec_of(mib, GITLAB_CLONE_HOST);
    assert_string_equal(spec->image, "micro");
    assert_int_equal(spec->resources.memory_mb, 1536);
    assert_int_equal(spec->resources.cpus, 0);
    job_spec_free(spec);

    static const struct {
        const char *image, *variables, *needle;
    } bad[] = {
            {"{\"name\": \"alpine:3.19\"}", "", "image \"alpine:3.19\": agentlab runs jobs in VM"},
            {"{\"name\": \"registry.example.test/group/img\"}", "", "not a container image"},
            {"{\"name\": \"debian-12@sha256:abc\"}", "", "not a container image"},
            {"null", "{\"key\": \"AGENTLAB_CPUS\", \"value\": \"0\"}",
             "AGENTLAB_CPUS is \"0\"; expected a number of vCPUs from 1 to 64"},
            {"null", "{\"key\": \"AGENTLAB_CPUS\", \"value\": \"two\"}", "AGENTLAB_CPUS"},
            {"null", "{\"key\": \"AGENTLAB_CPUS\", \"value\": \"65\"}", "AGENTLAB_CPUS"},
            {"null", "{\"key\": \"AGENTLAB_MEMORY\", \"value\": \"8\"}",
             "AGENTLAB_MEMORY is \"8\"; expected Ng or Nm"},
            {"null", "{\"key\": \"AGENTLAB_MEMORY\", \"value\": \"64m\"}", "AGENTLAB_MEMORY"},
            {"null", "{\"key\": \"AGENTLAB_MEMORY\", \"value\": \"8 GiB\"}", "AGENTLAB_MEMORY"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        _cleanup_free_ char *d =
                payload_image(bad[i].image, bad[i].variables, STEP_SCRIPT("\"true\""), "", "");
        struct gitlab_job *j = parse_ok(d);
        struct job_spec *s = NULL;
        struct al_error *err = NULL;
        struct gitlab_spec_opts o = {.clone = GITLAB_CLONE_HOST};
        assert_int_equal(gitlab_job_to_spec(j, &o, &s, &err), -EINVAL);
        if (!strstr(al_error_message(err), bad[i].needle))
            fail_msg("case %zu: %s", i, al_error_message(err));
        assert_null(s);
        al_error_free(err);
        gitlab_job_free(j);
    }
}

/* Runs the job's script as the guest helper does (/bin/sh -e -c) in a fresh
 * dir with env; returns the exit status and the output (stdout and stderr
 * together). */
static int run_script_in(const struct job_spec *spec, const char *dir, char **ret_out);

static int run_script(const struct job_spec *spec, char **ret_out)
{
    char *dir = test_tmpdir("gljob");
    int rc = run_script_in(spec, dir, ret_out);
    test_tmpdir_remove(dir);
    return rc;
}

/* Runs the job's script with the host's /bin/sh in dir (which it keeps). */
static int run_script_in(const struct job_spec *spec, const char *dir, char **ret_out)
{
    _cleanup_free_ char *script = al_path_join(dir, "job.sh");
    _cleanup_free_ char *out = al_path_join(dir, "out");
    assert_int_equal(al_write_file_atomic(script, spec->script, strlen(spec->script), 0600, NULL),
                     0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (chdir(dir) < 0 || !freopen(out, "w", stdout) || dup2(1, 2) < 0)
            _exit(126);
        clearenv();
        setenv("PATH", "/usr/bin:/bin", 1);
        setenv("TMPDIR", dir, 1);
        for (size_t i = 0; i < spec->n_env; i++)
            setenv(spec->env[i].name, spec->env[i].value, 1);
        for (size_t i = 0; i < spec->n_secret_env; i++)
            setenv(spec->secret_env[i].name, spec->secret_env[i].value, 1);
        execl("/bin/sh", "/bin/sh", "-e", "-c", spec->script, "agentlab-job", (char *)NULL);
        _exit(127);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    size_t len = 0;
    assert_int_equal(al_read_file(out, 1 << 20, ret_out, &len, NULL), 0);
    unlink(out);
    unlink(script);
    assert_true(WIFEXITED(status));
    return WEXITSTATUS(status);
}

static void test_script_semantics(void **state)
{
    (void)state;
    /* success: every line runs and is echoed; after_script runs in its own shell */
    _cleanup_free_ char *ok = payload(
            "{\"key\": \"CERT\", \"value\": \"pem-data\\n\", \"file\": true},"
            "{\"key\": \"SPACEY\", \"value\": \"a 'b' \\\"c\\\" $d\", \"raw\": true}",
            STEP_SCRIPT("\"echo one\", \"X=kept; echo \\\"$SPACEY\\\"\", \"cat \\\"$CERT\\\"\","
                        "\"case $CERT in /*) echo abs;; esac\"") "," STEP_AFTER("\"echo "
                                                                                "after:${X:-unset}"
                                                                                "\", \"exit 4\""),
            "");
    struct job_spec *spec = spec_of(ok, GITLAB_CLONE_HOST);
    char *out = NULL;
    assert_int_equal(run_script(spec, &out), 0);
    assert_non_null(strstr(out, "$ echo one\033[0;m\none\n"));
    assert_non_null(strstr(out, "a 'b' \"c\" $d\n"));
    assert_non_null(strstr(out, "pem-data\n"));
    assert_non_null(strstr(out, "abs\n"));
    assert_non_null(strstr(out, "after:unset\n"));
    assert_non_null(
            strstr(out, "WARNING: after_script failed, but the job continues: exit code 4"));
    free(out);
    job_spec_free(spec);

    /* failure: the first failing line ends the script with its status;
     * after_script (when: always) still runs */
    _cleanup_free_ char *bad = payload(
            "",
            STEP_SCRIPT("\"echo before\", \"sh -c 'exit 3'\", \"echo never\"") "," STEP_AFTER(
                    "\"echo cleanup\""),
            "");
    spec = spec_of(bad, GITLAB_CLONE_HOST);
    assert_int_equal(run_script(spec, &out), 3);
    assert_non_null(strstr(out, "before\n"));
    assert_null(strstr(out, "\nnever\n"));
    assert_non_null(strstr(out, "cleanup\n"));
    free(out);
    job_spec_free(spec);

    /* on_failure steps run only after a failure, on_success ones only without */
    _cleanup_free_ char *cond = payload(
            "",
            STEP_SCRIPT("\"false\"") ",{\"name\": \"notify\", \"script\": [\"echo failed-hook\"],"
                                     " \"when\": \"on_failure\", \"allow_failure\": true},"
                                     "{\"name\": \"release\", \"script\": [\"echo released\"],"
                                     " \"when\": \"on_success\"}",
            "");
    spec = spec_of(cond, GITLAB_CLONE_HOST);
    assert_int_equal(run_script(spec, &out), 1);
    assert_non_null(strstr(out, "failed-hook\n"));
    assert_null(strstr(out, "released\n"));
    free(out);
    job_spec_free(spec);
}

_printf_(1, 2) static int system_fmt(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *cmd = NULL;
    int n = vasprintf(&cmd, fmt, ap);
    va_end(ap);
    assert_true(n > 0);
    int st = system(cmd);
    free(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static bool exists_in(const char *dir, const char *rel)
{
    _cleanup_free_ char *p = al_path_join(dir, rel);
    return access(p, F_OK) == 0;
}

static void test_script_untracked(void **state)
{
    (void)state;
    _cleanup_free_ char *doc = payload(
            "",
            STEP_SCRIPT("\"mkdir -p dist && echo new > dist/new.txt && echo gen > src/gen.o\","
                        "\"echo changed > src/main.c\""),
            "{\"name\": \"u\", \"untracked\": true, \"exclude\": [\"**/*.o\"]}");
    struct job_spec *spec = spec_of(doc, GITLAB_CLONE_HOST);
    /* the staging dir is handed back */
    assert_int_equal(spec->n_artifacts, 1);
    assert_string_equal(spec->artifacts[0], GITLAB_UNTRACKED_DIR);

    /* no git work tree: everything but .git and the host's list */
    char *dir = test_tmpdir("glu");
    char *out = NULL;
    assert_int_equal(
            system_fmt(
                    "cd '%s' && mkdir -p .git src && echo c > src/main.c && "
                    "echo t > 'a *b' && printf './src/main.c\\n./a *b\\n' > " GITLAB_TRACKED_LIST,
                    dir),
            0);
    assert_int_equal(run_script_in(spec, dir, &out), 0);
    assert_true(exists_in(dir, GITLAB_UNTRACKED_DIR "/dist/new.txt"));
    assert_true(
            exists_in(dir, GITLAB_UNTRACKED_DIR "/src/gen.o")); /* excluded later, by the host */
    assert_false(exists_in(dir, GITLAB_UNTRACKED_DIR "/src/main.c"));
    assert_false(exists_in(dir, GITLAB_UNTRACKED_DIR "/a *b"));
    assert_false(exists_in(dir, GITLAB_UNTRACKED_DIR "/.git"));
    assert_null(strstr(out, "WARNING"));
    free(out);
    test_tmpdir_remove(dir);

    /* a git work tree: what git says is untracked, ignored files too */
    dir = test_tmpdir("glu");
    assert_int_equal(system_fmt("cd '%s' && git init -q . && mkdir src && echo c > src/main.c && "
                                "echo ign > .ignored && echo .ignored > .gitignore && "
                                "git add src/main.c .gitignore >/dev/null 2>&1",
                                dir),
                     0);
    assert_int_equal(run_script_in(spec, dir, &out), 0);
    assert_true(exists_in(dir, GITLAB_UNTRACKED_DIR "/dist/new.txt"));
    assert_true(exists_in(dir, GITLAB_UNTRACKED_DIR "/.ignored"));
    assert_false(exists_in(dir, GITLAB_UNTRACKED_DIR "/src/main.c"));
    assert_false(exists_in(dir, GITLAB_UNTRACKED_DIR "/.gitignore"));
    free(out);
    test_tmpdir_remove(dir);

    /* neither: a warning, nothing copied, the job still succeeds */
    dir = test_tmpdir("glu");
    assert_int_equal(system_fmt("mkdir -p '%s/src'", dir), 0);
    assert_int_equal(run_script_in(spec, dir, &out), 0);
    assert_non_null(strstr(out, "WARNING: untracked: not a git work tree"));
    assert_false(exists_in(dir, GITLAB_UNTRACKED_DIR "/dist/new.txt"));
    free(out);
    test_tmpdir_remove(dir);
    job_spec_free(spec);

    /* what goes into the archive under which name */
    struct gitlab_job *j = parse_ok(doc);
    const struct gitlab_artifact *a = &j->artifacts[0];
    assert_string_equal(gitlab_artifact_member(a, GITLAB_UNTRACKED_DIR "/dist/new.txt"),
                        "dist/new.txt");
    assert_null(gitlab_artifact_member(a, GITLAB_UNTRACKED_DIR "/src/gen.o")); /* excluded */
    assert_null(gitlab_artifact_member(a, GITLAB_UNTRACKED_DIR));
    assert_null(gitlab_artifact_member(a, "dist/new.txt")); /* no paths */
    gitlab_job_free(j);
    char *paths[] = {"dist/", NULL}, *none[] = {NULL};
    struct gitlab_artifact both = {
            .paths = paths, .n_paths = 1, .exclude = none, .untracked = true};
    /* once: from the work dir's part */
    assert_string_equal(gitlab_artifact_member(&both, "dist/new.txt"), "dist/new.txt");
    assert_null(gitlab_artifact_member(&both, GITLAB_UNTRACKED_DIR "/dist/new.txt"));
    assert_string_equal(gitlab_artifact_member(&both, GITLAB_UNTRACKED_DIR "/x"), "x");
    /* the staging dir is never part of the work dir's files */
    char *all[] = {".", NULL};
    struct gitlab_artifact dot = {.paths = all, .n_paths = 1, .exclude = none};
    assert_null(gitlab_artifact_member(&dot, GITLAB_UNTRACKED_DIR "/x"));
    assert_string_equal(gitlab_artifact_member(&dot, "x"), "x");
}

static void test_artifact_patterns(void **state)
{
    (void)state;
    char *paths[] = {"out/*.txt", "logs/", "./docs/**/*.md", "bin", NULL};
    char *exclude[] = {"out/skip.txt", "bin/*.tmp", NULL};
    struct gitlab_artifact a = {.paths = paths,
                                .n_paths = 4,
                                .exclude = exclude,
                                .n_exclude = 2,
                                .when = GITLAB_WHEN_ON_SUCCESS};
    assert_true(gitlab_artifact_wants(&a, "out/result.txt"));
    assert_false(gitlab_artifact_wants(&a, "out/skip.txt"));
    assert_false(gitlab_artifact_wants(&a, "out/x.bin"));
    assert_false(gitlab_artifact_wants(&a, "out/sub/deep.txt"));
    assert_true(gitlab_artifact_wants(&a, "logs/a/b.log"));
    assert_true(gitlab_artifact_wants(&a, "docs/a/b/c.md"));
    assert_false(gitlab_artifact_wants(&a, "docs/a/b/c.txt"));
    assert_true(gitlab_artifact_wants(&a, "bin/tool"));
    assert_false(gitlab_artifact_wants(&a, "bin/x.tmp"));
    assert_false(gitlab_artifact_wants(&a, "README"));
    char **roots = NULL;
    assert_int_equal(gitlab_artifact_roots(&a, &roots, NULL), 0);
    assert_string_equal(roots[0], "out");
    assert_string_equal(roots[1], "logs");
    assert_string_equal(roots[2], "docs");
    assert_string_equal(roots[3], "bin");
    assert_null(roots[4]);
    strv_free(roots);

    char *top[] = {"*.log", "out", NULL};
    struct gitlab_artifact b = {.paths = top, .n_paths = 2};
    assert_int_equal(gitlab_artifact_roots(&b, &roots, NULL), 0);
    assert_string_equal(roots[0], ".");
    assert_null(roots[1]);
    strv_free(roots);
    assert_true(gitlab_artifact_wants(&b, "x.log"));
    assert_false(gitlab_artifact_wants(&b, "sub/x.log"));
    assert_true(gitlab_when_applies(GITLAB_WHEN_ON_FAILURE, false));
    assert_false(gitlab_when_applies(GITLAB_WHEN_ON_FAILURE, true));
    assert_true(gitlab_when_applies(GITLAB_WHEN_ALWAYS, true));
}

static void test_url_and_helpers(void **state)
{
    (void)state;
    char *u = NULL;
    assert_int_equal(
            gitlab_url_strip_credentials("https://gitlab-ci-token:abc@h.example/x.git", &u, NULL),
            0);
    assert_string_equal(u, "https://h.example/x.git");
    free(u);
    assert_int_equal(gitlab_url_strip_credentials("http://h:8080/a?b=c@d", &u, NULL), 0);
    assert_string_equal(u, "http://h:8080/a?b=c@d");
    free(u);
    assert_int_equal(gitlab_url_strip_credentials("ssh://git@h/x", &u, NULL), -EINVAL);
    assert_int_equal(gitlab_url_strip_credentials("https://u@/x", &u, NULL), -EINVAL);
    assert_int_equal(gitlab_url_strip_credentials("https://h/a b", &u, NULL), -EINVAL);

    assert_int_equal(al_crc32(0, "123456789", 9), 0xcbf43926u);
    assert_int_equal(al_crc32(al_crc32(0, "1234", 4), "56789", 5), 0xcbf43926u);
    assert_int_equal(al_crc32(0, "", 0), 0);

    char *b = gitlab_base64("gitlab-ci-token:x", 17);
    assert_string_equal(b, "Z2l0bGFiLWNpLXRva2VuOng=");
    free(b);
    b = gitlab_base64("ab", 2);
    assert_string_equal(b, "YWI=");
    free(b);
}

/* GitLab's answer to runner creation: the token is checked before the
 * CLI writes it to the token file */
static void test_register_answer(void **state)
{
    (void)state;
    char *token = NULL;
    int64_t id = 0;
    char msg[200];
    const char *ok = "{\"id\":42,\"token\":\"glrt-t3_AbCdEfGh\",\"token_expires_at\":null}";
    assert_int_equal(gitlab_register_answer_parse(ok, strlen(ok), &token, &id, msg, sizeof(msg)),
                     0);
    assert_string_equal(token, "glrt-t3_AbCdEfGh");
    assert_int_equal(id, 42);
    free(token);
    static const char *const bad[] = {
            "",
            "[]",
            "{\"id\":42}",
            "{\"id\":\"42\",\"token\":\"glrt-t3_AbCdEfGh\"}",
            "{\"id\":4.2,\"token\":\"glrt-t3_AbCdEfGh\"}",
            "{\"id\":42,\"token\":\"short\"}",
            "{\"id\":42,\"token\":\"glrt-with space\"}",
            "{\"id\":42,\"token\":\"glrt-line\\nbreak\"}",
            /* yajl would store '?' for it: a token that is not the one sent */
            "{\"id\":42,\"token\":\"glrt-t3_AbCd\\ud800\"}",
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        token = NULL;
        msg[0] = '\0';
        assert_int_equal(
                gitlab_register_answer_parse(bad[i], strlen(bad[i]), &token, &id, msg, sizeof(msg)),
                -EINVAL);
        assert_null(token);
        assert_true(msg[0] != '\0');
    }
    /* a NUL inside the body is refused, not read up to */
    static const char nul[] = "{\"id\":42,\"token\":\"glrt-t3_AbCdEfGh\"}\0junk";
    assert_int_equal(
            gitlab_register_answer_parse(nul, sizeof(nul) - 1, &token, &id, msg, sizeof(msg)),
            -EINVAL);
}

static void test_expand(void **state)
{
    (void)state;
    struct gitlab_variable vars[] = {
            {.key = "A", .value = "alpha"},
            {.key = "B_1", .value = "$A"},
            {.key = "A", .value = "last"}, /* the last definition wins */
            {.key = "F", .value = "file contents", .file = true},
            {.key = "-", .value = "dash"},
    };
    static const struct {
        const char *in, *want;
    } cases[] = {
            {"plain", "plain"},
            {"$A/${A}x", "last/lastx"},
            {"$Ax ${A}x", " lastx"}, /* $Ax is the variable Ax */
            {"$B_1", "$A"},          /* one pass: not expanded again */
            {"$UNKNOWN-${NOPE}-", "--"},
            {"$$ ${$} $$A", "$ $ $A"},
            {"$1x $* $# $@ $! $? ${1}", "x      "},
            {"$- ${-}", "dash dash"}, /* not special in gitlab-runner's lookup */
            {"${A:-default}", ""},    /* no shell operators: a name that is not set */
            {"a$", "a$"},
            {"$ $/ $.", "$ $/ $."},
            {"x${}y", "xy"},
            {"x${A", "xA"}, /* an unclosed "${" is dropped */
            {"$F", ""},     /* a file variable's path exists only in the guest */
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        char *out = NULL;
        assert_int_equal(gitlab_expand(cases[i].in, vars, ARRAY_SIZE(vars), 100, &out), 0);
        if (strcmp(out, cases[i].want) != 0)
            fail_msg("case %zu: \"%s\" expanded to \"%s\", want \"%s\"", i, cases[i].in, out,
                     cases[i].want);
        free(out);
    }
    /* the size is bounded, however often a long value is named */
    char *out = NULL;
    assert_int_equal(gitlab_expand("$A$A", vars, ARRAY_SIZE(vars), 8, &out), 0);
    assert_string_equal(out, "lastlast");
    free(out);
    out = NULL;
    assert_int_equal(gitlab_expand("$A$A$A", vars, ARRAY_SIZE(vars), 8, &out), -E2BIG);
    assert_null(out);
    assert_int_equal(gitlab_expand("", vars, 0, 0, &out), 0);
    assert_string_equal(out, "");
    free(out);
}

static void test_expand_payload(void **state)
{
    (void)state;
    _cleanup_free_ char *doc =
            payload("{\"key\": \"CI_COMMIT_REF_SLUG\", \"value\": \"main\"},"
                    "{\"key\": \"VERSION\", \"value\": \"1.2\"},"
                    "{\"key\": \"TAG\", \"value\": \"v$VERSION-${CI_COMMIT_REF_SLUG}\"},"
                    "{\"key\": \"RAW\", \"value\": \"v$VERSION\", \"raw\": true},"
                    "{\"key\": \"URL\", \"value\": \"https://x.test/$CI_JOB_TOKEN\"},"
                    "{\"key\": \"CI_JOB_TOKEN\", \"value\": \"" TOKEN "\", \"masked\": true}",
                    STEP_SCRIPT("\"echo $TAG\""),
                    "{\"name\": \"app-$TAG\", \"paths\": [\"dist/$VERSION/\", \"$RAW.txt\"],"
                    " \"exclude\": [\"dist/$VERSION/tmp\"]},"
                    "{\"name\": \"$NOTSET\", \"paths\": [\"x\"]},"
                    "{\"paths\": [\"y\"]}");
    struct gitlab_job *j = parse_ok(doc);
    assert_string_equal(gitlab_job_variable(j, "TAG"), "v1.2-main");
    assert_string_equal(gitlab_job_variable(j, "RAW"), "v$VERSION"); /* raw: as sent */
    assert_string_equal(j->artifacts[0].name, "app-v1.2-main");
    assert_string_equal(j->artifacts[0].paths[0], "dist/1.2/");
    /* later expansions see the values as expanded; a raw one's "$" stays */
    assert_string_equal(j->artifacts[0].paths[1], "v$VERSION.txt");
    assert_string_equal(j->artifacts[0].exclude[0], "dist/1.2/tmp");
    assert_string_equal(j->artifacts[1].name, "default");
    assert_null(j->artifacts[2].name);
    /* a variable that brings in the job token is treated as holding it */
    assert_string_equal(gitlab_job_variable(j, "URL"), "https://x.test/" TOKEN);
    struct gitlab_spec_opts o = {.clone = GITLAB_CLONE_HOST};
    struct job_spec *spec = NULL;
    assert_int_equal(gitlab_job_to_spec(j, &o, &spec, NULL), 0);
    assert_null(env_get(spec->env, spec->n_env, "URL"));
    assert_null(env_get(spec->secret_env, spec->n_secret_env, "URL"));
    assert_string_equal(env_get(spec->env, spec->n_env, "TAG"), "v1.2-main");
    job_spec_free(spec);
    gitlab_job_free(j);

    /* caches: key, paths, fallback keys */
    _cleanup_free_ char *cdoc =
            with_cache("{\"key\": \"deps-$CI_COMMIT_REF_SLUG-non_protected\", \"paths\": "
                       "[\"$DIR/\"], \"fallback_keys\": [\"deps-${BASE}-non_protected\"]}");
    char *vars = strstr(cdoc, "\"variables\": [");
    assert_non_null(vars);
    char *cdoc2 = NULL;
    assert_true(asprintf(&cdoc2,
                         "%.*s\"variables\": [{\"key\": \"CI_COMMIT_REF_SLUG\", \"value\": "
                         "\"feat\"}, {\"key\": \"DIR\", \"value\": \"vendor\"},"
                         "{\"key\": \"BASE\", \"value\": \"main\"}%s",
                         (int)(vars - cdoc), cdoc, vars + strlen("\"variables\": [")) > 0);
    j = parse_ok(cdoc2);
    free(cdoc2);
    assert_string_equal(j->caches[0].key, "deps-feat-non_protected");
    assert_string_equal(j->caches[0].paths[0], "vendor/");
    assert_string_equal(j->caches[0].fallback_keys[0], "deps-main-non_protected");
    gitlab_job_free(j);

    /* limits: a value that expands too long; control characters brought
     * into a path */
    _cleanup_free_ char *big = malloc(40000);
    memset(big, 'v', 39999);
    big[39999] = '\0';
    _cleanup_free_ char *vbig = NULL;
    assert_true(asprintf(&vbig,
                         "{\"key\": \"BIG\", \"value\": \"%s\"},"
                         "{\"key\": \"TWICE\", \"value\": \"$BIG$BIG\"}",
                         big) > 0);
    _cleanup_free_ char *d = payload(vbig, STEP_SCRIPT("\"true\""), "");
    _cleanup_free_ char *msg = parse_err(d, strlen(d), -EINVAL);
    assert_non_null(strstr(msg, "TWICE: expanded, the value is longer than"));
    _cleanup_free_ char *d2 = payload("{\"key\": \"NL\", \"value\": \"a\\nb\"}",
                                      STEP_SCRIPT("\"true\""), "{\"paths\": [\"$NL\"]}");
    _cleanup_free_ char *msg2 = parse_err(d2, strlen(d2), -EINVAL);
    assert_non_null(strstr(msg2, "artifacts[0].paths[0]: expanded, it holds control"));
    /* references are bounded for the whole job, not per value */
    struct al_buf refs = AL_BUF_INIT;
    for (int i = 0; i < 3; i++) {
        al_buf_printf(&refs, "%s{\"key\": \"R%d\", \"value\": \"", i ? "," : "", i);
        for (int k = 0; k < GITLAB_EXPAND_MAX_REFS / 3 + 1; k++)
            al_buf_puts(&refs, "$X");
        al_buf_puts(&refs, "\"}");
    }
    _cleanup_free_ char *d3 = payload(refs.data, STEP_SCRIPT("\"true\""), "");
    al_buf_free(&refs);
    _cleanup_free_ char *msg3 = parse_err(d3, strlen(d3), -EINVAL);
    assert_non_null(strstr(msg3, "variables: more than 65536 \"$\" to expand"));
}

static char *with_features(const char *features)
{
    _cleanup_free_ char *doc = payload("", STEP_SCRIPT("\"true\""), "");
    char *at = strstr(doc, "\"features\": {");
    assert_non_null(at);
    char *s = NULL;
    assert_true(asprintf(&s, "%.*s\"features\": {%s, %s", (int)(at - doc), doc, features,
                         at + strlen("\"features\": {")) > 0);
    return s;
}

static void test_parse_mask_prefixes(void **state)
{
    (void)state;
    /* none sent: gitlab-runner's default */
    _cleanup_free_ char *doc = payload("", STEP_SCRIPT("\"true\""), "");
    struct gitlab_job *j = parse_ok(doc);
    assert_int_equal(j->n_mask_prefixes, 1);
    assert_string_equal(j->mask_prefixes[0], "glpat-");
    gitlab_job_free(j);

    _cleanup_free_ char *d =
            with_features("\"token_mask_prefixes\": [\"glrt-\", \"gldt-\", \"glpat-\", \"glrt-\"]");
    j = parse_ok(d);
    assert_int_equal(j->n_mask_prefixes, 3);
    assert_string_equal(j->mask_prefixes[0], "glrt-");
    assert_string_equal(j->mask_prefixes[1], "gldt-");
    assert_string_equal(j->mask_prefixes[2], "glpat-");
    assert_null(j->mask_prefixes[3]);
    gitlab_job_free(j);

    /* more than gitlab-runner uses: the first 15, the rest ignored */
    struct al_buf b = AL_BUF_INIT;
    al_buf_puts(&b, "\"token_mask_prefixes\": [");
    for (int i = 0; i < 20; i++)
        al_buf_printf(&b, "%s\"pfx%02d-\"", i ? ", " : "", i);
    al_buf_puts(&b, "]");
    _cleanup_free_ char *d20 = with_features(b.data);
    al_buf_free(&b);
    j = parse_ok(d20);
    assert_int_equal(j->n_mask_prefixes, GITLAB_JOB_MASK_PREFIXES);
    assert_string_equal(j->mask_prefixes[14], "pfx14-");
    gitlab_job_free(j);

    static const struct {
        const char *features, *want;
    } bad[] = {
            {"\"token_mask_prefixes\": [\"gl\"]", "features.token_mask_prefixes[0]: expected 3"},
            {"\"token_mask_prefixes\": [\"ok-\", \"a b-\"]", "features.token_mask_prefixes[1]"},
            {"\"token_mask_prefixes\": \"glpat-\"", "features.token_mask_prefixes: expected"},
            {"\"token_mask_prefixes\": [7]", "features.token_mask_prefixes[0]: expected a string"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        _cleanup_free_ char *bd = with_features(bad[i].features);
        _cleanup_free_ char *msg = parse_err(bd, strlen(bd), -EINVAL);
        if (!strstr(msg, bad[i].want))
            fail_msg("case %zu: message \"%s\" lacks \"%s\"", i, msg, bad[i].want);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_parse_realistic),
            cmocka_unit_test(test_register_answer),
            cmocka_unit_test(test_parse_rejects),
            cmocka_unit_test(test_parse_rejects_document),
            cmocka_unit_test(test_parse_dependencies),
            cmocka_unit_test(test_parse_cache),
            cmocka_unit_test(test_expand),
            cmocka_unit_test(test_expand_payload),
            cmocka_unit_test(test_parse_mask_prefixes),
            cmocka_unit_test(test_parse_git_info),
            cmocka_unit_test(test_ident_of_broken_payload),
            cmocka_unit_test(test_secret_never_in_errors),
            cmocka_unit_test(test_spec),
            cmocka_unit_test(test_spec_refusals),
            cmocka_unit_test(test_spec_vm),
            cmocka_unit_test(test_script_semantics),
            cmocka_unit_test(test_script_untracked),
            cmocka_unit_test(test_artifact_patterns),
            cmocka_unit_test(test_url_and_helpers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
