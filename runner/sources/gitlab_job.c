#include "runner/sources/gitlab_job.h"

#include <ctype.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_tree.h>

#include "runner/base/buf.h"
#include "runner/base/json_tree.h"
#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/sources/job_size.h"
#include "images/catalog.h"

static int parse_when(yajl_val obj, const char *path, enum gitlab_when *ret, struct al_error **err)
{
    _cleanup_free_ char *s = NULL;
    int r = al_json_get_string(obj, "when", path, 32, false, al_json_check_word, &s, err);
    if (r < 0 || !s)
        return r;
    if (streq(s, "on_success"))
        *ret = GITLAB_WHEN_ON_SUCCESS;
    else if (streq(s, "on_failure"))
        *ret = GITLAB_WHEN_ON_FAILURE;
    else if (streq(s, "always"))
        *ret = GITLAB_WHEN_ALWAYS;
    else {
        char p[256];
        return al_json_fail(err, al_json_path(p, sizeof(p), path, "when", 0),
                            "expected on_success, on_failure or always");
    }
    return 0;
}

/* ---- the document -------------------------------------------------------- */

static bool is_hex(const char *s)
{
    for (; *s; s++) {
        if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f')))
            return false;
    }
    return true;
}

/* Strings that end up in git's argv: no option injection, no spaces. */
static bool refspec_is_valid(const char *s)
{
    const char *p = s[0] == '+' ? s + 1 : s;
    if (!*p || *p == '-')
        return false;
    for (; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c <= ' ' || c == 0x7f || c == '\\' || c == '~' || c == '^' || c == '?' || c == '[')
            return false;
    }
    return true;
}

static int parse_git(yajl_val root, struct gitlab_job *j, struct al_error **err)
{
    yajl_val g = NULL;
    int r = al_json_get_object(root, "git_info", "", true, &g, err);
    if (r < 0)
        return r;
    const char *path = "git_info";
    if ((r = al_json_get_string(g, "repo_url", path, GITLAB_JOB_MAX_URL, true, al_json_check_word,
                                &j->repo_url, err)) < 0 ||
        (r = al_json_get_string(g, "ref", path, GITLAB_JOB_MAX_REF, false, al_json_check_word,
                                &j->ref, err)) < 0 ||
        (r = al_json_get_string(g, "sha", path, 64, true, al_json_check_word, &j->sha, err)) < 0 ||
        (r = al_json_get_strv(g, "refspecs", path, GITLAB_JOB_MAX_REFSPECS, GITLAB_JOB_MAX_REF,
                              false, al_json_check_word, &j->refspecs, &j->n_refspecs, err)) < 0)
        return r;
    size_t n = strlen(j->sha);
    if ((n != 40 && n != 64) || !is_hex(j->sha))
        return al_json_fail(err, "git_info.sha", "expected 40 or 64 lower-case hex digits");
    for (size_t i = 0; i < j->n_refspecs; i++) {
        if (!refspec_is_valid(j->refspecs[i])) {
            char p[64];
            return al_json_fail(err, al_json_path(p, sizeof(p), "git_info.refspecs", NULL, i),
                                "not a refspec");
        }
    }
    int64_t depth = 0;
    if ((r = al_json_get_int(g, "depth", path, 0, GITLAB_JOB_MAX_DEPTH_GIT, false, &depth, err)) <
        0)
        return r;
    j->depth = (int)depth;
    char *stripped = NULL;
    r = gitlab_url_strip_credentials(j->repo_url, &stripped, NULL);
    free(stripped);
    if (r < 0)
        return al_json_fail(err, "git_info.repo_url", "expected an http or https URL");
    return 0;
}

static int parse_variables(yajl_val root, struct gitlab_job *j, struct al_error **err)
{
    yajl_val arr = NULL;
    int r = al_json_get_array(root, "variables", "", GITLAB_JOB_MAX_VARIABLES, false, &arr, err);
    if (r < 0 || !arr)
        return r;
    j->variables = calloc(arr->u.array.len + 1, sizeof(*j->variables));
    if (!j->variables)
        return al_error_set(err, ENOMEM, "out of memory");
    for (size_t i = 0; i < arr->u.array.len; i++) {
        yajl_val v;
        char p[64];
        if ((r = al_json_element_object(arr, i, "variables", p, sizeof(p), &v, err)) < 0)
            return r;
        struct gitlab_variable *var = &j->variables[j->n_variables++];
        if ((r = al_json_get_string(v, "key", p, GITLAB_JOB_MAX_KEY, true, al_json_check_word,
                                    &var->key, err)) < 0 ||
            (r = al_json_get_string(v, "value", p, GITLAB_JOB_MAX_STRING, false, NULL, &var->value,
                                    err)) < 0 ||
            (r = al_json_get_bool(v, "masked", p, false, &var->masked, err)) < 0 ||
            (r = al_json_get_bool(v, "file", p, false, &var->file, err)) < 0 ||
            (r = al_json_get_bool(v, "raw", p, false, &var->raw, err)) < 0)
            return r;
        if (!var->value && !(var->value = strdup("")))
            return al_error_set(err, ENOMEM, "out of memory");
    }
    return 0;
}

static bool step_name_is_valid(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++) {
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_'))
            return false;
    }
    return true;
}

static int parse_steps(yajl_val root, struct gitlab_job *j, struct al_error **err)
{
    yajl_val arr = NULL;
    int r = al_json_get_array(root, "steps", "", GITLAB_JOB_MAX_STEPS, true, &arr, err);
    if (r < 0)
        return r;
    if (arr->u.array.len == 0)
        return al_json_fail(err, "steps", "no steps");
    j->steps = calloc(arr->u.array.len, sizeof(*j->steps));
    if (!j->steps)
        return al_error_set(err, ENOMEM, "out of memory");
    for (size_t i = 0; i < arr->u.array.len; i++) {
        yajl_val v;
        char p[64];
        if ((r = al_json_element_object(arr, i, "steps", p, sizeof(p), &v, err)) < 0)
            return r;
        struct gitlab_step *s = &j->steps[j->n_steps++];
        if ((r = al_json_get_string(v, "name", p, 64, true, al_json_check_word, &s->name, err)) < 0)
            return r;
        if (!step_name_is_valid(s->name))
            return al_json_fail(err, p, "name: expected [a-z0-9_]+");
        if ((r = al_json_get_strv(v, "script", p, GITLAB_JOB_MAX_LINES, GITLAB_JOB_MAX_STRING,
                                  false, NULL, &s->script, &s->n_script, err)) < 0 ||
            (r = al_json_get_int(v, "timeout", p, 0, JOB_SPEC_MAX_TIMEOUT_S, false, &s->timeout_s,
                                 err)) < 0 ||
            (r = parse_when(v, p, &s->when, err)) < 0 ||
            (r = al_json_get_bool(v, "allow_failure", p, false, &s->allow_failure, err)) < 0)
            return r;
    }
    return 0;
}

static int parse_artifacts(yajl_val root, struct gitlab_job *j, struct al_error **err)
{
    yajl_val arr = NULL;
    int r = al_json_get_array(root, "artifacts", "", GITLAB_JOB_MAX_ARTIFACTS, false, &arr, err);
    if (r < 0 || !arr)
        return r;
    j->artifacts = calloc(arr->u.array.len + 1, sizeof(*j->artifacts));
    if (!j->artifacts)
        return al_error_set(err, ENOMEM, "out of memory");
    for (size_t i = 0; i < arr->u.array.len; i++) {
        yajl_val v;
        char p[64];
        if ((r = al_json_element_object(arr, i, "artifacts", p, sizeof(p), &v, err)) < 0)
            return r;
        struct gitlab_artifact *a = &j->artifacts[j->n_artifacts++];
        if ((r = al_json_get_string(v, "name", p, GITLAB_JOB_MAX_NAME, false, al_json_check_line,
                                    &a->name, err)) < 0 ||
            (r = al_json_get_strv(v, "paths", p, GITLAB_JOB_MAX_PATHS, JOB_SPEC_MAX_PATH, false,
                                  al_json_check_line, &a->paths, &a->n_paths, err)) < 0 ||
            (r = al_json_get_strv(v, "exclude", p, GITLAB_JOB_MAX_PATHS, JOB_SPEC_MAX_PATH, false,
                                  al_json_check_line, &a->exclude, &a->n_exclude, err)) < 0 ||
            (r = al_json_get_bool(v, "untracked", p, false, &a->untracked, err)) < 0 ||
            (r = parse_when(v, p, &a->when, err)) < 0 ||
            (r = al_json_get_string(v, "artifact_type", p, 64, false, al_json_check_word, &a->type,
                                    err)) < 0 ||
            (r = al_json_get_string(v, "artifact_format", p, 16, false, al_json_check_word,
                                    &a->format, err)) < 0 ||
            (r = al_json_get_string(v, "expire_in", p, 64, false, al_json_check_line, &a->expire_in,
                                    err)) < 0)
            return r;
        if (!a->type && !(a->type = strdup("archive")))
            return al_error_set(err, ENOMEM, "out of memory");
        if (!a->format && !(a->format = strdup("zip")))
            return al_error_set(err, ENOMEM, "out of memory");
    }
    return 0;
}

static int parse_cache_policy(yajl_val obj, const char *path, enum gitlab_cache_policy *ret,
                              struct al_error **err)
{
    _cleanup_free_ char *s = NULL;
    int r = al_json_get_string(obj, "policy", path, 32, false, al_json_check_word, &s, err);
    if (r < 0 || !s)
        return r;
    if (streq(s, "pull-push") || !*s)
        *ret = GITLAB_CACHE_PULL_PUSH;
    else if (streq(s, "pull"))
        *ret = GITLAB_CACHE_PULL;
    else if (streq(s, "push"))
        *ret = GITLAB_CACHE_PUSH;
    else {
        char p[256];
        return al_json_fail(err, al_json_path(p, sizeof(p), path, "policy", 0),
                            "expected pull, push or pull-push");
    }
    return 0;
}

static int parse_caches(yajl_val root, struct gitlab_job *j, struct al_error **err)
{
    yajl_val arr = NULL;
    int r = al_json_get_array(root, "cache", "", GITLAB_JOB_MAX_CACHES, false, &arr, err);
    if (r < 0 || !arr)
        return r;
    j->caches = calloc(arr->u.array.len + 1, sizeof(*j->caches));
    if (!j->caches)
        return al_error_set(err, ENOMEM, "out of memory");
    for (size_t i = 0; i < arr->u.array.len; i++) {
        yajl_val v;
        char p[64];
        if ((r = al_json_element_object(arr, i, "cache", p, sizeof(p), &v, err)) < 0)
            return r;
        struct gitlab_cache_spec *c = &j->caches[j->n_caches++];
        if ((r = al_json_get_string(v, "key", p, GITLAB_JOB_MAX_CACHE_KEY, false,
                                    al_json_check_line, &c->key, err)) < 0 ||
            (r = al_json_get_strv(v, "paths", p, GITLAB_JOB_MAX_PATHS, JOB_SPEC_MAX_PATH, false,
                                  al_json_check_line, &c->paths, &c->n_paths, err)) < 0 ||
            (r = al_json_get_strv(v, "fallback_keys", p, 5, GITLAB_JOB_MAX_CACHE_KEY, false,
                                  al_json_check_line, &c->fallback_keys, &c->n_fallback_keys,
                                  err)) < 0 ||
            (r = al_json_get_bool(v, "untracked", p, false, &c->untracked, err)) < 0 ||
            (r = parse_cache_policy(v, p, &c->policy, err)) < 0 ||
            (r = parse_when(v, p, &c->when, err)) < 0)
            return r;
        if ((!c->key || !*c->key) && (free(c->key), !(c->key = strdup("default"))))
            return al_error_set(err, ENOMEM, "out of memory");
    }
    return 0;
}

static int token_check(const char *token)
{
    size_t n = strlen(token);
    return n >= 8 && n <= GITLAB_JOB_MAX_TOKEN && !al_json_check_word(token) ? 0 : -EINVAL;
}

static int parse_dependencies(yajl_val root, struct gitlab_job *j, struct al_error **err)
{
    yajl_val arr = NULL;
    int r = al_json_get_array(root, "dependencies", "", GITLAB_JOB_MAX_DEPENDENCIES, false, &arr,
                              err);
    if (r < 0 || !arr)
        return r;
    j->dependencies = calloc(arr->u.array.len + 1, sizeof(*j->dependencies));
    if (!j->dependencies)
        return al_error_set(err, ENOMEM, "out of memory");
    for (size_t i = 0; i < arr->u.array.len; i++) {
        yajl_val v;
        char p[64];
        if ((r = al_json_element_object(arr, i, "dependencies", p, sizeof(p), &v, err)) < 0)
            return r;
        struct gitlab_dependency *d = &j->dependencies[j->n_dependencies++];
        if ((r = al_json_get_int(v, "id", p, 1, INT64_MAX, true, &d->id, err)) < 0 ||
            (r = al_json_get_string(v, "name", p, GITLAB_JOB_MAX_NAME, false, al_json_check_line,
                                    &d->name, err)) < 0 ||
            (r = al_json_get_string(v, "token", p, GITLAB_JOB_MAX_TOKEN, false, al_json_check_word,
                                    &d->token, err)) < 0)
            return r;
        if (d->token && token_check(d->token) < 0)
            return al_json_fail(err, p, "token: expected 8 to %d printable characters",
                                GITLAB_JOB_MAX_TOKEN);
        yajl_val f = NULL;
        if ((r = al_json_get_object(v, "artifacts_file", p, false, &f, err)) < 0)
            return r;
        char fp[96];
        al_json_path(fp, sizeof(fp), p, "artifacts_file", 0);
        if (f && ((r = al_json_get_string(f, "filename", fp, GITLAB_JOB_MAX_NAME, false,
                                          al_json_check_line, &d->artifacts_file, err)) < 0 ||
                  (r = al_json_get_int(f, "size", fp, 0, INT64_MAX, false, &d->artifacts_size,
                                       err)) < 0))
            return r;
    }
    return 0;
}

/* features.token_mask_prefixes (o may be NULL) plus the default prefix,
 * in order, without duplicates, cut at GITLAB_JOB_MASK_PREFIXES as
 * gitlab-runner does. */
static int parse_mask_prefixes(yajl_val o, struct gitlab_job *j, struct al_error **err)
{
    _cleanup_strv_ char **sent = NULL;
    size_t n_sent = 0;
    int r = o ? al_json_get_strv(o, "token_mask_prefixes", "features",
                                 GITLAB_JOB_MAX_MASK_PREFIXES_SENT, AL_REDACT_PREFIX_MAX_LEN, false,
                                 al_json_check_word, &sent, &n_sent, err)
              : 0;
    if (r < 0)
        return r;
    j->mask_prefixes = calloc(GITLAB_JOB_MASK_PREFIXES + 1, sizeof(char *));
    if (!j->mask_prefixes)
        return al_error_set(err, ENOMEM, "out of memory");
    for (size_t i = 0; i <= n_sent && j->n_mask_prefixes < GITLAB_JOB_MASK_PREFIXES; i++) {
        const char *p = i < n_sent ? sent[i] : GITLAB_DEFAULT_MASK_PREFIX;
        if (!al_redact_prefix_is_valid(p)) {
            char path[96];
            return al_json_fail(
                    err, al_json_path(path, sizeof(path), "features.token_mask_prefixes", NULL, i),
                    "expected %d to %d printable characters without spaces",
                    AL_REDACT_PREFIX_MIN_LEN, AL_REDACT_PREFIX_MAX_LEN);
        }
        bool dup = false;
        for (size_t k = 0; k < j->n_mask_prefixes && !dup; k++)
            dup = streq(j->mask_prefixes[k], p);
        if (dup)
            continue;
        if (!(j->mask_prefixes[j->n_mask_prefixes] = strdup(p)))
            return al_error_set(err, ENOMEM, "out of memory");
        j->n_mask_prefixes++;
    }
    return 0;
}

static int parse_root(yajl_val root, struct gitlab_job *j, struct al_error **err)
{
    if (!YAJL_IS_OBJECT(root))
        return al_json_fail(err, "", "job payload: expected an object, got %s",
                            al_json_type_name(root));
    int r = al_json_get_int(root, "id", "", 1, INT64_MAX, true, &j->id, err);
    if (r < 0)
        return r;
    if ((r = al_json_get_string(root, "token", "", GITLAB_JOB_MAX_TOKEN, true, al_json_check_word,
                                &j->token, err)) < 0)
        return r;
    if (token_check(j->token) < 0)
        return al_json_fail(err, "token", "expected 8 to %d printable characters",
                            GITLAB_JOB_MAX_TOKEN);

    yajl_val o = NULL;
    if ((r = al_json_get_object(root, "job_info", "", false, &o, err)) < 0)
        return r;
    if (o && ((r = al_json_get_string(o, "name", "job_info", GITLAB_JOB_MAX_NAME, false,
                                      al_json_check_line, &j->job_name, err)) < 0 ||
              (r = al_json_get_string(o, "project_name", "job_info", GITLAB_JOB_MAX_NAME, false,
                                      al_json_check_line, &j->project_name, err)) < 0 ||
              (r = al_json_get_int(o, "project_id", "job_info", 0, INT64_MAX, false, &j->project_id,
                                   err)) < 0))
        return r;
    o = NULL;
    if ((r = al_json_get_object(root, "runner_info", "", false, &o, err)) < 0)
        return r;
    if (o && (r = al_json_get_int(o, "timeout", "runner_info", 0, JOB_SPEC_MAX_TIMEOUT_S, false,
                                  &j->timeout_s, err)) < 0)
        return r;
    o = NULL;
    if ((r = al_json_get_object(root, "image", "", false, &o, err)) < 0)
        return r;
    if (o && (r = al_json_get_string(o, "name", "image", GITLAB_JOB_MAX_NAME, false,
                                     al_json_check_word, &j->image, err)) < 0)
        return r;
    o = NULL;
    if ((r = al_json_get_object(root, "features", "", false, &o, err)) < 0)
        return r;
    /* absent stays NULL: GitLab did not say which reasons it knows */
    if (o &&
        ((r = al_json_get_strv(o, "failure_reasons", "features", 64, 64, false, al_json_check_word,
                               &j->failure_reasons, &j->n_failure_reasons, err)) < 0))
        return r;
    if ((r = parse_mask_prefixes(o, j, err)) < 0)
        return r;
    if ((r = parse_git(root, j, err)) < 0 || (r = parse_variables(root, j, err)) < 0 ||
        (r = parse_steps(root, j, err)) < 0 || (r = parse_artifacts(root, j, err)) < 0 ||
        (r = parse_dependencies(root, j, err)) < 0 || (r = parse_caches(root, j, err)) < 0)
        return r;
    return 0;
}

static int parse_tree(const char *data, size_t len, yajl_val *ret, struct al_error **err)
{
    return al_json_parse(data, len, GITLAB_JOB_MAX_BYTES, GITLAB_JOB_MAX_DEPTH,
                         GITLAB_JOB_MAX_VALUES, "job payload", ret, err);
}

static const char *lookup_variable(const void *job, const char *key)
{
    return gitlab_job_variable(job, key);
}

int gitlab_job_parse(const char *data, size_t len, struct gitlab_job **ret_job,
                     struct al_error **err)
{
    _cleanup_(yajl_tree_freep) yajl_val root = NULL;
    int r = parse_tree(data, len, &root, err);
    if (r < 0)
        return r;
    _cleanup_gitlab_job_ struct gitlab_job *j = calloc(1, sizeof(*j));
    if (!j)
        return al_error_set(err, ENOMEM, "out of memory");
    r = parse_root(root, j, err);
    if (r == 0)
        r = gitlab_job_expand(j, err);
    if (r == 0)
        r = gitlab_git_opts_parse(lookup_variable, j, &j->git, err);
    if (r < 0)
        return r;
    *ret_job = TAKE_PTR(j);
    return 0;
}

int gitlab_job_parse_ident(const char *data, size_t len, int64_t *ret_id, char **ret_token)
{
    _cleanup_(yajl_tree_freep) yajl_val root = NULL;
    if (parse_tree(data, len, &root, NULL) < 0 || !YAJL_IS_OBJECT(root))
        return -EINVAL;
    int64_t id = 0;
    char *token = NULL;
    if (al_json_get_int(root, "id", "", 1, INT64_MAX, true, &id, NULL) < 0 ||
        al_json_get_string(root, "token", "", GITLAB_JOB_MAX_TOKEN, true, al_json_check_word,
                           &token, NULL) < 0)
        return -EINVAL;
    if (token_check(token) < 0) {
        explicit_bzero(token, strlen(token));
        free(token);
        return -EINVAL;
    }
    *ret_id = id;
    *ret_token = token;
    return 0;
}

struct gitlab_job *gitlab_job_free(struct gitlab_job *j)
{
    if (!j)
        return NULL;
    al_wipe_free(j->token);
    al_wipe_free(j->repo_url);
    free(j->job_name);
    free(j->project_name);
    free(j->ref);
    free(j->sha);
    strv_free(j->refspecs);
    gitlab_git_opts_clear(&j->git);
    for (size_t i = 0; i < j->n_variables; i++) {
        free(j->variables[i].key);
        al_wipe_free(j->variables[i].value);
    }
    free(j->variables);
    for (size_t i = 0; i < j->n_steps; i++) {
        free(j->steps[i].name);
        strv_free(j->steps[i].script);
    }
    free(j->steps);
    for (size_t i = 0; i < j->n_artifacts; i++) {
        struct gitlab_artifact *a = &j->artifacts[i];
        free(a->name);
        strv_free(a->paths);
        strv_free(a->exclude);
        free(a->type);
        free(a->format);
        free(a->expire_in);
    }
    free(j->artifacts);
    for (size_t i = 0; i < j->n_dependencies; i++) {
        struct gitlab_dependency *d = &j->dependencies[i];
        free(d->name);
        al_wipe_free(d->token);
        free(d->artifacts_file);
    }
    free(j->dependencies);
    for (size_t i = 0; i < j->n_caches; i++) {
        struct gitlab_cache_spec *c = &j->caches[i];
        free(c->key);
        strv_free(c->paths);
        strv_free(c->fallback_keys);
    }
    free(j->caches);
    free(j->image);
    strv_free(j->failure_reasons);
    strv_free(j->mask_prefixes);
    free(j);
    return NULL;
}

/* ---- helpers ------------------------------------------------------------- */

const char *gitlab_job_variable(const struct gitlab_job *job, const char *key)
{
    const char *v = NULL;
    for (size_t i = 0; i < job->n_variables; i++) {
        if (streq(job->variables[i].key, key))
            v = job->variables[i].value;
    }
    return v;
}

enum gitlab_clone gitlab_job_clone_mode(const struct gitlab_job *job, enum gitlab_clone configured)
{
    const char *s = gitlab_job_variable(job, "GIT_STRATEGY");
    if (s && streq(s, "none"))
        return GITLAB_CLONE_NONE;
    return configured;
}

bool gitlab_when_applies(enum gitlab_when when, bool succeeded)
{
    switch (when) {
    case GITLAB_WHEN_ON_SUCCESS:
        return succeeded;
    case GITLAB_WHEN_ON_FAILURE:
        return !succeeded;
    case GITLAB_WHEN_ALWAYS:
        return true;
    }
    return false;
}

int gitlab_url_strip_credentials(const char *url, char **ret_url, struct al_error **err)
{
    size_t scheme;
    if (strncmp(url, "https://", 8) == 0)
        scheme = 8;
    else if (strncmp(url, "http://", 7) == 0)
        scheme = 7;
    else
        return al_error_set(err, EINVAL, "not an http or https URL");
    const char *rest = url + scheme;
    size_t auth_end = strcspn(rest, "/?#");
    const char *at = memrchr(rest, '@', auth_end);
    const char *host = at ? at + 1 : rest;
    if (!*host || *host == '/' || *host == ':' || *host == '?' || *host == '#')
        return al_error_set(err, EINVAL, "URL without a host");
    if (al_json_check_word(url))
        return al_error_set(err, EINVAL, "URL with spaces or control characters");
    char *out = NULL;
    if (asprintf(&out, "%.*s%s", (int)scheme, url, host) < 0)
        return al_error_set(err, ENOMEM, "out of memory");
    *ret_url = out;
    return 0;
}

const struct gitlab_artifact *gitlab_job_archive(const struct gitlab_job *job)
{
    for (size_t i = 0; i < job->n_artifacts; i++) {
        if (streq(job->artifacts[i].type, "archive"))
            return &job->artifacts[i];
    }
    return NULL;
}

/* ---- artifact patterns --------------------------------------------------- */

/* Copies a pattern without leading "./" and trailing "/"; NULL when it is
 * absolute or has a ".." component (GitLab refuses those too). */
static char *pattern_normalize(const char *pat)
{
    while (pat[0] == '.' && pat[1] == '/')
        pat += 2;
    if (pat[0] == '/')
        return NULL;
    size_t n = strlen(pat);
    while (n > 1 && pat[n - 1] == '/')
        n--;
    for (size_t i = 0; i < n;) {
        size_t c = strcspn(pat + i, "/");
        if (c > n - i)
            c = n - i;
        if (c == 2 && pat[i] == '.' && pat[i + 1] == '.')
            return NULL;
        i += c + 1;
    }
    return n ? strndup(pat, n) : strdup(".");
}

static bool has_glob(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '*' || s[i] == '?' || s[i] == '[')
            return true;
    }
    return false;
}

int gitlab_artifact_roots(const struct gitlab_artifact *a, char ***ret_roots, struct al_error **err)
{
    if (a->n_paths > GITLAB_JOB_MAX_PATHS)
        return al_error_set(err, EINVAL, "artifacts: more than %d paths", GITLAB_JOB_MAX_PATHS);
    _cleanup_strv_ char **roots = calloc(a->n_paths + 1, sizeof(char *));
    if (!roots)
        return al_error_set(err, ENOMEM, "out of memory");
    size_t n = 0;
    for (size_t i = 0; i < a->n_paths; i++) {
        _cleanup_free_ char *p = pattern_normalize(a->paths[i]);
        if (!p)
            continue;
        size_t keep = 0; /* bytes of the literal leading components */
        for (size_t at = 0; p[at];) {
            size_t c = strcspn(p + at, "/");
            if (has_glob(p + at, c))
                break;
            keep = at + c;
            at += c + (p[at + c] == '/');
        }
        char *root = keep ? strndup(p, keep) : strdup(".");
        if (!root)
            return al_error_set(err, ENOMEM, "out of memory");
        bool dup = false;
        for (size_t k = 0; k < n && !dup; k++)
            dup = streq(roots[k], root);
        if (dup) {
            free(root);
            continue;
        }
        roots[n++] = root;
    }
    /* a root inside another one adds nothing; "." covers everything */
    bool inside[GITLAB_JOB_MAX_PATHS] = {false};
    for (size_t k = 0; k < n; k++) {
        for (size_t m = 0; m < n && !inside[k]; m++) {
            size_t len = strlen(roots[m]);
            inside[k] = m != k && (streq(roots[m], ".") ||
                                   (strncmp(roots[k], roots[m], len) == 0 && roots[k][len] == '/'));
        }
    }
    size_t kept = 0;
    for (size_t k = 0; k < n; k++) {
        if (inside[k])
            free(roots[k]);
        else
            roots[kept++] = roots[k];
    }
    for (size_t k = kept; k < n; k++)
        roots[k] = NULL;
    n = kept;
    if (n > JOB_SPEC_MAX_ARTIFACTS)
        return al_error_set(err, EINVAL, "artifacts: more than %d distinct paths",
                            JOB_SPEC_MAX_ARTIFACTS);
    *ret_roots = n ? TAKE_PTR(roots) : NULL;
    return 0;
}

static bool pattern_matches(const char *pat, const char *path)
{
    _cleanup_free_ char *p = pattern_normalize(pat);
    if (!p)
        return false;
    if (streq(p, "."))
        return true;
    int flags = strstr(p, "**") ? 0 : FNM_PATHNAME;
    /* the path itself, or a directory above it */
    _cleanup_free_ char *prefix = strdup(path);
    if (!prefix)
        return false;
    for (;;) {
        if (fnmatch(p, prefix, flags) == 0)
            return true;
        char *slash = strrchr(prefix, '/');
        if (!slash)
            return false;
        *slash = '\0';
    }
}

static bool artifact_excludes(const struct gitlab_artifact *a, const char *path)
{
    for (size_t i = 0; i < a->n_exclude; i++) {
        if (pattern_matches(a->exclude[i], path))
            return true;
    }
    return false;
}

bool gitlab_artifact_wants(const struct gitlab_artifact *a, const char *path)
{
    bool in = false;
    for (size_t i = 0; i < a->n_paths && !in; i++)
        in = pattern_matches(a->paths[i], path);
    return in && !artifact_excludes(a, path);
}

bool gitlab_job_wants_untracked(const struct gitlab_job *job)
{
    for (size_t i = 0; i < job->n_artifacts; i++) {
        if (job->artifacts[i].untracked)
            return true;
    }
    for (size_t i = 0; i < job->n_caches; i++) {
        const struct gitlab_cache_spec *c = &job->caches[i];
        if (c->untracked && (gitlab_cache_saves(c, true) || gitlab_cache_saves(c, false)))
            return true;
    }
    return false;
}

const char *gitlab_artifact_member(const struct gitlab_artifact *a, const char *rel)
{
    size_t n = strlen(GITLAB_UNTRACKED_DIR);
    bool staged = strncmp(rel, GITLAB_UNTRACKED_DIR, n) == 0 && (!rel[n] || rel[n] == '/');
    if (!staged)
        return gitlab_artifact_wants(a, rel) ? rel : NULL;
    if (!a->untracked || !rel[n] || !rel[n + 1])
        return NULL;
    const char *path = rel + n + 1;
    if (artifact_excludes(a, path))
        return NULL;
    /* in the work dir's part already: one member a path */
    for (size_t i = 0; i < a->n_paths; i++) {
        if (pattern_matches(a->paths[i], path))
            return NULL;
    }
    return path;
}

/* ---- the script ---------------------------------------------------------- */

/* Appends s as one single-quoted shell word. */
static int sh_quote(struct al_buf *b, const char *s)
{
    int r = al_buf_puts(b, "'");
    for (const char *p = s; r == 0 && *p; p++) {
        if (*p == '\'')
            r = al_buf_puts(b, "'\\''");
        else
            r = al_buf_append(b, p, 1);
    }
    return r ? r : al_buf_puts(b, "'");
}

static bool variable_is_exported(const struct gitlab_variable *v)
{
    return job_env_name_is_valid(v->key);
}

/* The last definition of each exported variable, in first-seen order. */
static bool variable_is_last(const struct gitlab_job *j, size_t i)
{
    for (size_t k = i + 1; k < j->n_variables; k++) {
        if (streq(j->variables[k].key, j->variables[i].key))
            return false;
    }
    return true;
}

static int script_file_variables(const struct gitlab_job *j, struct al_buf *b)
{
    bool any = false;
    for (size_t i = 0; i < j->n_variables; i++) {
        const struct gitlab_variable *v = &j->variables[i];
        any |= v->file && variable_is_exported(v) && variable_is_last(j, i);
    }
    if (!any)
        return 0;
    /* tmpfs first: file variables are often credentials */
    int r = al_buf_puts(b, "__al_tmp=\n"
                           "for __al_d in /dev/shm \"${TMPDIR:-/tmp}\" /tmp; do\n"
                           "    if [ -d \"$__al_d\" ] && [ -w \"$__al_d\" ]; then\n"
                           "        __al_tmp=$__al_d/agentlab-vars.$$\n"
                           "        break\n"
                           "    fi\n"
                           "done\n"
                           "(umask 077 && mkdir \"$__al_tmp\") || {\n"
                           "    echo 'ERROR: no directory for file variables' >&2\n"
                           "    exit 1\n"
                           "}\n"
                           "trap 'rm -rf \"$__al_tmp\"' EXIT\n");
    for (size_t i = 0; r == 0 && i < j->n_variables; i++) {
        const struct gitlab_variable *v = &j->variables[i];
        if (!v->file || !variable_is_exported(v) || !variable_is_last(j, i))
            continue;
        r = al_buf_printf(b,
                          "(umask 077 && printf '%%s' \"$%s\" >\"$__al_tmp/%s\")\n"
                          "%s=$__al_tmp/%s\n"
                          "export %s\n",
                          v->key, v->key, v->key, v->key, v->key);
    }
    return r;
}

static int script_guest_checkout(const struct gitlab_job *j, struct al_buf *b)
{
    _cleanup_free_ char *clean = NULL;
    int r = gitlab_url_strip_credentials(j->repo_url, &clean, NULL);
    if (r < 0)
        return r;
    size_t scheme = strncmp(clean, "https://", 8) == 0 ? 8 : 7;
    r = al_buf_puts(b, "printf 'Fetching %s at %s\\n' ");
    if (r == 0)
        r = sh_quote(b, clean);
    if (r == 0)
        r = al_buf_printf(b, " '%s'\n", j->sha);
    /* the token comes from the environment, never from the script text */
    if (r == 0)
        r = al_buf_printf(b, "__al_url=\"%.*sgitlab-ci-token:${CI_JOB_TOKEN}@\"", (int)scheme,
                          clean);
    if (r == 0)
        r = sh_quote(b, clean + scheme);
    if (r == 0)
        r = al_buf_puts(b, "\n{ git -c init.defaultBranch=agentlab init -q . &&\n"
                           "  git remote add origin ");
    if (r == 0)
        r = sh_quote(b, clean);
    if (r == 0)
        r = al_buf_puts(b, " &&\n  git fetch -q --no-tags");
    if (r == 0 && j->depth > 0)
        r = al_buf_printf(b, " --depth %d", j->depth);
    if (r == 0)
        r = al_buf_puts(b, " \"$__al_url\"");
    for (size_t i = 0; r == 0 && i < j->n_refspecs; i++) {
        r = al_buf_puts(b, " ");
        if (r == 0)
            r = sh_quote(b, j->refspecs[i]);
    }
    if (r == 0 && j->n_refspecs == 0)
        r = al_buf_printf(b, " %s", j->sha);
    if (r == 0)
        r = al_buf_printf(b,
                          " &&\n  git -c advice.detachedHead=false checkout -q -f %s; } || {\n"
                          "    echo 'ERROR: fetching the sources failed' >&2\n"
                          "    exit 1\n"
                          "}\n"
                          "unset __al_url\n",
                          j->sha);
    return r;
}

static int script_step(const struct gitlab_step *s, struct al_buf *b)
{
    struct al_buf body = AL_BUF_INIT;
    body.limit = JOB_SPEC_MAX_SCRIPT;
    int r = 0;
    for (size_t i = 0; r == 0 && i < s->n_script; i++) {
        r = al_buf_puts(&body, "printf '\\033[32;1m$ %s\\033[0;m\\n' ");
        if (r == 0)
            r = sh_quote(&body, s->script[i]);
        if (r == 0)
            r = al_buf_printf(&body, "\n%s\n", s->script[i]);
    }
    const char *cond = s->when == GITLAB_WHEN_ALWAYS       ? "true"
                       : s->when == GITLAB_WHEN_ON_FAILURE ? "[ \"$__al_failed\" != 0 ]"
                                                           : "[ \"$__al_failed\" = 0 ]";
    bool main_step = streq(s->name, "script");
    int64_t limit = 0;
    if (!main_step) {
        limit = GITLAB_AFTER_SCRIPT_TIMEOUT_S;
        if (s->timeout_s > 0 && s->timeout_s < limit)
            limit = s->timeout_s;
    }
    if (r == 0)
        r = al_buf_printf(b, "# step %s\nif %s; then\n", s->name, cond);
    if (r == 0 && !main_step)
        r = al_buf_printf(b, "    printf '\\n\\033[36;1mRunning %s\\033[0;m\\n'\n", s->name);
    if (r == 0)
        r = al_buf_printf(b, "    __al_step %" PRId64 " sh -e -c ", limit);
    if (r == 0)
        r = sh_quote(b, body.data ? body.data : "");
    if (r == 0)
        r = al_buf_puts(b, "\n    __al_rc=$?\n    if [ \"$__al_rc\" != 0 ]; then\n");
    if (r == 0 && s->allow_failure)
        r = al_buf_printf(b,
                          "        printf 'WARNING: %s failed, but the job continues: exit code "
                          "%%s\\n' \"$__al_rc\"\n",
                          s->name);
    else if (r == 0)
        r = al_buf_puts(b, "        __al_failed=1\n"
                           "        __al_code=$__al_rc\n");
    if (r == 0)
        r = al_buf_puts(b, "    fi\nfi\n");
    al_buf_free(&body);
    return r;
}

/* The untracked files into GITLAB_UNTRACKED_DIR (see gitlab_job.h); GNU
 * tar's options, as the images' tar. */
static int script_untracked(struct al_buf *b)
{
    return al_buf_puts(
            b,
            "# untracked files for the artifacts\n"
            "rm -rf " GITLAB_UNTRACKED_DIR " && mkdir " GITLAB_UNTRACKED_DIR " && {\n"
            "    __al_l=\"${TMPDIR:-/tmp}/agentlab-untracked.$$\"\n"
            "    __al_ucopy=\n"
            "    if command -v git >/dev/null 2>&1 && [ -e .git ] &&\n"
            "        GIT_CEILING_DIRECTORIES=\"${PWD%/*}\" git ls-files -o -z >\"$__al_l\" \\\n"
            "            2>/dev/null; then\n"
            "        tar -c -f - --verbatim-files-from --null -T \"$__al_l\" |\n"
            "            tar -x -f - -C " GITLAB_UNTRACKED_DIR " || __al_ucopy=1\n"
            "    elif [ -f " GITLAB_TRACKED_LIST " ]; then\n"
            "        tar -c -f - --anchored --no-wildcards -X " GITLAB_TRACKED_LIST
            " --exclude=./.git \\\n"
            "            --exclude=./" GITLAB_UNTRACKED_DIR
            " . | tar -x -f - -C " GITLAB_UNTRACKED_DIR " || __al_ucopy=1\n"
            "    else\n"
            "        echo 'WARNING: untracked: not a git work tree, no untracked files' >&2\n"
            "    fi\n"
            "    rm -f \"$__al_l\"\n"
            "    [ -z \"$__al_ucopy\" ] ||\n"
            "        echo 'WARNING: untracked: copying the files failed, some may be missing' >&2\n"
            "}\n");
}

int gitlab_job_script(const struct gitlab_job *j, enum gitlab_clone clone, char **ret_script,
                      struct al_error **err)
{
    struct al_buf b = AL_BUF_INIT;
    b.limit = JOB_SPEC_MAX_SCRIPT;
    int r = al_buf_printf(&b,
                          "# GitLab job %" PRId64 ", generated by agentlab\n"
                          "set +e\n"
                          "__al_failed=0\n"
                          "__al_code=0\n"
                          "__al_timeout=\n"
                          "command -v timeout >/dev/null 2>&1 && __al_timeout=1\n"
                          "__al_step() {\n"
                          "    if [ \"$1\" -gt 0 ] && [ -n \"$__al_timeout\" ]; then\n"
                          "        __al_t=$1\n"
                          "        shift\n"
                          "        timeout -k 5 \"$__al_t\" \"$@\"\n"
                          "    else\n"
                          "        shift\n"
                          "        \"$@\"\n"
                          "    fi\n"
                          "}\n"
                          "CI_PROJECT_DIR=$PWD\n"
                          "export CI_PROJECT_DIR\n",
                          j->id);
    if (r == 0)
        r = script_file_variables(j, &b);
    if (r == 0 && clone == GITLAB_CLONE_GUEST)
        r = script_guest_checkout(j, &b);
    for (size_t i = 0; r == 0 && i < j->n_steps; i++)
        r = script_step(&j->steps[i], &b);
    if (r == 0 && gitlab_job_wants_untracked(j))
        r = script_untracked(&b);
    if (r == 0)
        r = al_buf_puts(&b, "exit \"$__al_code\"\n");
    if (r < 0) {
        al_buf_free(&b);
        if (r == -E2BIG)
            return al_error_set(err, E2BIG, "the job's script is longer than %u bytes",
                                JOB_SPEC_MAX_SCRIPT);
        return al_error_set(err, -r, "building the job's script failed");
    }
    *ret_script = al_buf_steal(&b);
    return 0;
}

/* ---- the spec ------------------------------------------------------------ */

static int env_set(struct job_env_var **vars, size_t *n, const char *key, const char *value)
{
    for (size_t i = 0; i < *n; i++) {
        if (streq((*vars)[i].name, key)) {
            char *copy = strdup(value);
            if (!copy)
                return -ENOMEM;
            al_wipe_free((*vars)[i].value);
            (*vars)[i].value = copy;
            return 0;
        }
    }
    struct job_env_var *grown = realloc(*vars, (*n + 1) * sizeof(**vars));
    if (!grown)
        return -ENOMEM;
    *vars = grown;
    char *name = strdup(key), *copy = strdup(value);
    if (!name || !copy) {
        free(name);
        free(copy);
        return -ENOMEM;
    }
    (*vars)[(*n)++] = (struct job_env_var){.name = name, .value = copy};
    return 0;
}

static void env_remove(struct job_env_var *vars, size_t *n, const char *key)
{
    for (size_t i = 0; i < *n; i++) {
        if (streq(vars[i].name, key)) {
            free(vars[i].name);
            al_wipe_free(vars[i].value);
            memmove(&vars[i], &vars[i + 1], (*n - i - 1) * sizeof(*vars));
            (*n)--;
            return;
        }
    }
}

bool gitlab_cache_saves(const struct gitlab_cache_spec *c, bool succeeded)
{
    return c->policy != GITLAB_CACHE_PULL && (c->n_paths || c->untracked) &&
           gitlab_when_applies(c->when, succeeded);
}

/* What the guest hands back: the roots of every artifact entry (archive
 * and reports) and of every cache that may be saved (the host sorts them
 * out after the job). */
static int spec_artifact_roots(const struct gitlab_job *j, struct job_spec *spec,
                               struct al_error **err)
{
    size_t n = gitlab_job_wants_untracked(j) ? 1 : 0;
    for (size_t i = 0; i < j->n_artifacts; i++)
        n += j->artifacts[i].n_paths;
    for (size_t i = 0; i < j->n_caches; i++) {
        if (gitlab_cache_saves(&j->caches[i], true) || gitlab_cache_saves(&j->caches[i], false))
            n += j->caches[i].n_paths;
    }
    if (!n)
        return 0;
    if (n > GITLAB_JOB_MAX_PATHS)
        return al_error_set(err, EINVAL, "artifacts and caches: more than %d paths",
                            GITLAB_JOB_MAX_PATHS);
    _cleanup_free_ char **paths = calloc(n + 1, sizeof(char *));
    if (!paths)
        return al_error_set(err, ENOMEM, "out of memory");
    size_t k = 0;
    if (gitlab_job_wants_untracked(j))
        paths[k++] = (char *)GITLAB_UNTRACKED_DIR;
    for (size_t i = 0; i < j->n_artifacts; i++) {
        for (size_t m = 0; m < j->artifacts[i].n_paths; m++)
            paths[k++] = j->artifacts[i].paths[m];
    }
    for (size_t i = 0; i < j->n_caches; i++) {
        const struct gitlab_cache_spec *c = &j->caches[i];
        if (!gitlab_cache_saves(c, true) && !gitlab_cache_saves(c, false))
            continue;
        for (size_t m = 0; m < c->n_paths; m++)
            paths[k++] = c->paths[m];
    }
    struct gitlab_artifact all = {.paths = paths, .n_paths = k};
    int r = gitlab_artifact_roots(&all, &spec->artifacts, err);
    if (r < 0)
        return r;
    for (char **p = spec->artifacts; p && *p; p++)
        spec->n_artifacts++;
    return 0;
}

/* "gitlab-<id>-<job name>", reduced to a valid spec name. */
static char *spec_name(const struct gitlab_job *j)
{
    char buf[AL_NAME_MAX + 1];
    int n = snprintf(buf, sizeof(buf), "gitlab-%" PRId64 "%s%s", j->id, j->job_name ? "-" : "",
                     j->job_name ? j->job_name : "");
    if (n < 0)
        return NULL;
    size_t len = strlen(buf);
    for (size_t i = 0; i < len; i++) {
        char c = buf[i];
        if (!isalnum((unsigned char)c) && c != '.' && c != '_' && c != '-')
            buf[i] = '-';
    }
    while (len > 1 && buf[len - 1] == '-')
        buf[--len] = '\0';
    return strdup(buf);
}

/* The VM the job asks for: image: names an agentlab image; AGENTLAB_CPUS
 * and AGENTLAB_MEMORY its size (job_size.h). A container image reference
 * is refused rather than cut to a name that may mean another image. */
static int apply_vm_wants(const struct gitlab_job *j, struct job_spec *spec, struct al_error **err)
{
    if (j->image && *j->image) {
        if (!image_name_is_valid(j->image))
            return al_error_set(err, EINVAL,
                                "image \"%s\": agentlab runs jobs in VM images; image: must "
                                "name one (`agentlab image list`, e.g. debian-12-actions), not "
                                "a container image",
                                j->image);
        free(spec->image);
        if (!(spec->image = strdup(j->image)))
            return al_error_set(err, ENOMEM, "out of memory");
    }
    const char *v = gitlab_job_variable(j, GITLAB_VAR_CPUS);
    if (v && !job_size_parse_cpus(v, &spec->resources.cpus))
        return al_error_set(err, EINVAL,
                            "variable " GITLAB_VAR_CPUS " is \"%.32s\"; expected a number of "
                            "vCPUs from 1 to %d",
                            v, JOB_SPEC_MAX_CPUS);
    v = gitlab_job_variable(j, GITLAB_VAR_MEMORY);
    if (v && !job_size_parse_memory(v, &spec->resources.memory_mb))
        return al_error_set(err, EINVAL,
                            "variable " GITLAB_VAR_MEMORY " is \"%.32s\"; expected Ng or Nm "
                            "(GiB or MiB), %d MiB to %d GiB",
                            v, JOB_SPEC_MIN_MEMORY_MB, JOB_SPEC_MAX_MEMORY_MB / 1024);
    return 0;
}

int gitlab_job_to_spec(const struct gitlab_job *j, const struct gitlab_spec_opts *o,
                       struct job_spec **ret_spec, struct al_error **err)
{
    _cleanup_job_spec_ struct job_spec *spec = calloc(1, sizeof(*spec));
    if (!spec)
        return al_error_set(err, ENOMEM, "out of memory");
    spec->inject = -1;
    enum gitlab_clone clone = gitlab_job_clone_mode(j, o->clone);
    int r;
    for (size_t i = 0; i < j->n_variables; i++) {
        const struct gitlab_variable *v = &j->variables[i];
        if (!variable_is_exported(v))
            continue;
        bool has_token = strstr(v->value, j->token) != NULL;
        if (has_token && clone != GITLAB_CLONE_GUEST) {
            /* the job token stays on the host */
            env_remove(spec->env, &spec->n_env, v->key);
            env_remove(spec->secret_env, &spec->n_secret_env, v->key);
            continue;
        }
        bool secret = v->masked || has_token;
        if (secret && strlen(v->value) < AL_REDACT_MIN_LEN)
            return al_error_set(err, EINVAL,
                                "variable %s is masked but shorter than %d characters, so it "
                                "cannot be masked in the job log",
                                v->key, AL_REDACT_MIN_LEN);
        env_remove(secret ? spec->env : spec->secret_env,
                   secret ? &spec->n_env : &spec->n_secret_env, v->key);
        r = secret ? env_set(&spec->secret_env, &spec->n_secret_env, v->key, v->value)
                   : env_set(&spec->env, &spec->n_env, v->key, v->value);
        if (r < 0)
            return al_error_set(err, ENOMEM, "out of memory");
    }
    if (clone == GITLAB_CLONE_GUEST) {
        bool have = false;
        for (size_t i = 0; i < spec->n_secret_env && !have; i++)
            have = streq(spec->secret_env[i].name, "CI_JOB_TOKEN");
        if (!have) {
            env_remove(spec->env, &spec->n_env, "CI_JOB_TOKEN");
            if (env_set(&spec->secret_env, &spec->n_secret_env, "CI_JOB_TOKEN", j->token) < 0)
                return al_error_set(err, ENOMEM, "out of memory");
        }
    }
    if (spec->n_env + spec->n_secret_env > JOB_SPEC_MAX_ENV)
        return al_error_set(err, EINVAL, "the job has %zu variables; at most %d can be passed",
                            spec->n_env + spec->n_secret_env, JOB_SPEC_MAX_ENV);
    if ((r = gitlab_job_script(j, clone, &spec->script, err)) < 0)
        return r;
    if ((r = spec_artifact_roots(j, spec, err)) < 0)
        return r;
    if (j->timeout_s > 0)
        spec->timeout_s = j->timeout_s;
    spec->max_attempts = 1; /* GitLab retries jobs itself (`retry:`) */
    spec->source.type = JOB_SOURCE_GITLAB;
    if (asprintf(&spec->source.id, "%" PRId64, j->id) < 0) {
        spec->source.id = NULL;
        return al_error_set(err, ENOMEM, "out of memory");
    }
    const char *url = gitlab_job_variable(j, "CI_JOB_URL");
    if (url && strlen(url) <= JOB_SPEC_MAX_URL && !al_json_check_word(url) &&
        !strstr(url, j->token) && !(spec->source.url = strdup(url)))
        return al_error_set(err, ENOMEM, "out of memory");
    if (!(spec->name = spec_name(j)))
        return al_error_set(err, ENOMEM, "out of memory");
    if (o->pool && *o->pool && !(spec->pool = strdup(o->pool)))
        return al_error_set(err, ENOMEM, "out of memory");
    if (o->image && *o->image && !(spec->image = strdup(o->image)))
        return al_error_set(err, ENOMEM, "out of memory");
    if ((r = apply_vm_wants(j, spec, err)) < 0)
        return r;
    *ret_spec = TAKE_PTR(spec);
    return 0;
}
