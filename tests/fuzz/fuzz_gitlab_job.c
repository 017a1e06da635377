/* libFuzzer target for the GitLab job payload parser and what is built from
 * a payload (runner/sources/gitlab_job.c).
 *
 * Beyond "no crash, no sanitizer report" it checks the contract: a result
 * or an error, never both, with only the documented codes; the ident
 * reader agrees with the full parser; an accepted job turns into a spec
 * (or a clear refusal) that never hands the job token to the guest unless it
 * clones there, whose serialisation (what the store keeps) carries neither
 * the token nor a masked value, whose secrets the redactor accepts, and whose
 * artifact roots are relative paths without "..".
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "runner/base/log.h"
#include "runner/engine/spec.h"
#include "runner/sources/gitlab_job.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int cond)
{
    if (!cond)
        abort();
}

static int in_a_name(const struct job_spec *spec, const char *s)
{
    for (size_t i = 0; i < spec->n_env; i++) {
        if (strstr(spec->env[i].name, s))
            return 1;
    }
    for (size_t i = 0; i < spec->n_secret_env; i++) {
        if (strstr(spec->secret_env[i].name, s))
            return 1;
    }
    return 0;
}

static void spec_checks(const struct gitlab_job *j, enum gitlab_clone clone)
{
    struct gitlab_spec_opts o = {.clone = clone};
    struct job_spec *spec = NULL;
    struct al_error *err = NULL;
    int r = gitlab_job_to_spec(j, &o, &spec, &err);
    if (r < 0) {
        check(spec == NULL && err && err->message[0]);
        check(r == -EINVAL || r == -E2BIG || r == -ENOMEM);
        al_error_free(err);
        return;
    }
    check(err == NULL && spec && spec->script && !spec->command);
    check(spec->n_env + spec->n_secret_env <= JOB_SPEC_MAX_ENV);
    check(strlen(spec->script) <= JOB_SPEC_MAX_SCRIPT);
    for (size_t i = 0; i < spec->n_env; i++) {
        check(job_env_name_is_valid(spec->env[i].name));
        if (clone != GITLAB_CLONE_GUEST)
            check(!strstr(spec->env[i].value, j->token));
    }
    for (size_t i = 0; i < spec->n_artifacts; i++) {
        const char *p = spec->artifacts[i];
        check(p[0] && p[0] != '/' && !strstr(p, "../") && strcmp(p, "..") != 0);
    }
    /* what the store would keep: no secret values */
    check(job_spec_register_secrets(spec, NULL) == 0);
    check(al_redact_add(j->token) == 0);
    char *json = NULL;
    check(job_spec_to_json(spec, &json, NULL, NULL) == 0);
    check(!strstr(json, j->token));
    /* variable names are stored as they are: a value may show up inside one */
    for (size_t i = 0; i < spec->n_secret_env; i++)
        check(!strstr(json, spec->secret_env[i].value) ||
              in_a_name(spec, spec->secret_env[i].value));
    free(json);
    al_redact_remove(j->token);
    job_spec_unregister_secrets(spec);
    job_spec_free(spec);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    struct gitlab_job *j = NULL;
    struct al_error *err = NULL;
    int r = gitlab_job_parse(text, size, &j, &err);
    int64_t id = 0;
    char *token = NULL;
    int ri = gitlab_job_parse_ident(text, size, &id, &token);
    if (r < 0) {
        check(j == NULL && err && err->message && err->message[0]);
        check(r == -EINVAL || r == -E2BIG || r == -ENOMEM);
        al_error_free(err);
        free(token);
        return 0;
    }
    check(r == 0 && j && !err);
    check(ri == 0 && id == j->id && strcmp(token, j->token) == 0);
    free(token);
    check(j->n_steps >= 1 && j->sha && (strlen(j->sha) == 40 || strlen(j->sha) == 64));
    spec_checks(j, GITLAB_CLONE_HOST);
    spec_checks(j, GITLAB_CLONE_GUEST);
    const struct gitlab_artifact *a = gitlab_job_archive(j);
    if (a) {
        char **roots = NULL;
        if (gitlab_artifact_roots(a, &roots, NULL) == 0) {
            for (char **p = roots; p && *p; p++)
                (void)gitlab_artifact_wants(a, *p);
            strv_free(roots);
        }
    }
    gitlab_job_free(j);
    return 0;
}
