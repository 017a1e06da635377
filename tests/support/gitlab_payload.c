#include "test_util.h"

#include "gitlab_payload.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runner/base/error.h"

/* A payload shaped like GitLab's, with the parts under test filled in.
 * Not inlined: GCC 12 at -O3 then takes pointers into its result for
 * pointers to its local variable (a -Wdangling-pointer false positive). */
__attribute__((noinline)) char *payload_image(const char *image, const char *variables,
                                              const char *steps, const char *artifacts,
                                              const char *dependencies)
{
    char *s = NULL;
    int n = asprintf(
            &s,
            "{\"id\": 4711, \"token\": \"" TOKEN "\", \"allow_git_fetch\": true,"
            " \"job_info\": {\"id\": 4711, \"name\": \"unit test/job\", \"stage\": \"test\","
            "   \"project_id\": 3, \"project_name\": \"demo\"},"
            " \"git_info\": {\"repo_url\": \"https://gitlab-ci-token:" TOKEN
            "@gitlab.example.test/group/demo.git\", \"ref\": \"main\", \"sha\": \"" SHA "\","
            "   \"before_sha\": \"0000000000000000000000000000000000000000\","
            "   \"ref_type\": \"branch\", \"refspecs\": "
            "[\"+refs/heads/main:refs/remotes/origin/main\"],"
            "   \"depth\": 20, \"repo_object_format\": \"sha1\"},"
            " \"runner_info\": {\"timeout\": 1800, \"runner_session_url\": null},"
            " \"variables\": [%s],"
            " \"steps\": [%s],"
            " \"image\": %s,"
            " \"services\": [], \"artifacts\": [%s], \"cache\": [], \"credentials\": [],"
            " \"dependencies\": [%s], \"features\": {\"trace_sections\": true,"
            "   \"failure_reasons\": [\"script_failure\", \"runner_system_failure\"]}}",
            variables, steps, image, artifacts, dependencies);
    assert_true(n > 0);
    return s;
}

char *payload_with(const char *variables, const char *steps, const char *artifacts,
                   const char *dependencies)
{
    return payload_image("{\"name\": \"debian-12\", \"entrypoint\": null, \"ports\": []}",
                         variables, steps, artifacts, dependencies);
}

char *payload(const char *variables, const char *steps, const char *artifacts)
{
    return payload_with(variables, steps, artifacts, "");
}

struct gitlab_job *parse_ok(const char *doc)
{
    struct gitlab_job *j = NULL;
    struct al_error *err = NULL;
    if (gitlab_job_parse(doc, strlen(doc), &j, &err) < 0)
        fail_msg("payload rejected: %s\n%s", al_error_message(err), doc);
    assert_null(err);
    return j;
}

char *parse_err(const char *doc, size_t len, int want)
{
    struct gitlab_job *j = NULL;
    struct al_error *err = NULL;
    int r = gitlab_job_parse(doc, len, &j, &err);
    if (r != want)
        fail_msg("want %d, got %d (%s) for\n%.300s", want, r, al_error_message(err), doc);
    assert_null(j);
    char *msg = strdup(al_error_message(err));
    al_error_free(err);
    return msg;
}
