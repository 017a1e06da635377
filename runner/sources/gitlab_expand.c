/* Variable expansion in a GitLab job payload, where gitlab-runner expands
 * (gitlab_job.h: gitlab_expand(), gitlab_job_expand()). */
#include "runner/sources/gitlab_job.h"

#include <stdlib.h>
#include <string.h>

#include "runner/base/buf.h"
#include "runner/base/json_tree.h"
#include "runner/base/util.h"

static bool is_special_param(char c)
{
    return strchr("*#$@!?-0123456789", c) != NULL && c != '\0';
}

static bool is_name_char(char c)
{
    return c == '_' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* The value of the variable named name[0..len) for an expansion. */
static const char *expand_lookup(const struct gitlab_variable *vars, size_t n, const char *name,
                                 size_t len)
{
    if (len == 1 && name[0] == '$')
        return "$";
    if (len == 1 && is_special_param(name[0]) && name[0] != '-')
        return "";
    for (size_t i = n; i-- > 0;) {
        if (strlen(vars[i].key) == len && memcmp(vars[i].key, name, len) == 0)
            return vars[i].file ? "" : vars[i].value;
    }
    return "";
}

int gitlab_expand(const char *s, const struct gitlab_variable *vars, size_t n, size_t max,
                  char **ret)
{
    struct al_buf b = AL_BUF_INIT;
    b.limit = max + 1; /* room for the NUL al_buf keeps */
    int r = 0;
    size_t run = 0, i = 0;
    size_t len = strlen(s);
    while (r == 0 && i < len) {
        if (s[i] != '$' || i + 1 == len) {
            i++;
            continue;
        }
        r = al_buf_append(&b, s + run, i - run);
        const char *rest = s + i + 1;
        const char *name = NULL;
        size_t name_len = 0, used = 0; /* bytes after the '$' */
        if (rest[0] == '{') {
            if (rest[1] && is_special_param(rest[1]) && rest[2] == '}') {
                name = rest + 1;
                name_len = 1;
                used = 3;
            } else {
                const char *close = strchr(rest + 1, '}');
                if (!close)
                    used = 1; /* "${" without its "}": dropped */
                else if (close == rest + 1)
                    used = 2; /* "${}" */
                else {
                    name = rest + 1;
                    name_len = (size_t)(close - name);
                    used = name_len + 2;
                }
            }
        } else if (is_special_param(rest[0])) {
            name = rest;
            name_len = 1;
            used = 1;
        } else {
            while (is_name_char(rest[name_len]))
                name_len++;
            name = name_len ? rest : NULL;
            used = name_len;
        }
        if (r == 0 && name)
            r = al_buf_puts(&b, expand_lookup(vars, n, name, name_len));
        else if (r == 0 && used == 0)
            r = al_buf_puts(&b, "$"); /* no name follows: the "$" stays */
        i += 1 + used;
        run = i;
    }
    if (r == 0)
        r = al_buf_append(&b, s + run, len - run);
    if (r == 0 && b.len > max)
        r = -E2BIG;
    if (r < 0) {
        if (b.data)
            explicit_bzero(b.data, b.len);
        al_buf_free(&b);
        return r;
    }
    *ret = al_buf_steal(&b);
    return *ret ? 0 : -ENOMEM;
}

/* Expands every value but the raw ones, each against the values as sent
 * (gitlab-runner's JobVariables.Expand). */
static int expand_variables(struct gitlab_job *j, struct al_error **err)
{
    char **expanded = calloc(j->n_variables + 1, sizeof(char *));
    if (!expanded)
        return al_error_set(err, ENOMEM, "out of memory");
    size_t total = 0;
    int r = 0;
    for (size_t i = 0; r == 0 && i < j->n_variables; i++) {
        const struct gitlab_variable *v = &j->variables[i];
        if (v->raw || !strchr(v->value, '$'))
            continue;
        r = gitlab_expand(v->value, j->variables, j->n_variables, GITLAB_EXPAND_MAX, &expanded[i]);
        if (r == -E2BIG)
            r = al_json_fail(err, "variables", "%s: expanded, the value is longer than %u bytes",
                             v->key, GITLAB_EXPAND_MAX);
        else if (r < 0)
            r = al_error_set(err, ENOMEM, "out of memory");
        else if ((total += strlen(expanded[i])) > GITLAB_EXPAND_MAX_TOTAL)
            r = al_json_fail(err, "variables", "expanded, the values are longer than %u bytes",
                             GITLAB_EXPAND_MAX_TOTAL);
    }
    for (size_t i = 0; i < j->n_variables; i++) {
        if (!expanded[i])
            continue;
        if (r == 0) {
            al_wipe_free(j->variables[i].value);
            j->variables[i].value = expanded[i];
        } else {
            al_wipe_free(expanded[i]);
        }
    }
    free(expanded);
    return r;
}

/* Expands *s in place against the job's (expanded) variables; what comes
 * out must still be one printable line. */
static int expand_field(const struct gitlab_job *j, char **s, const char *path,
                        struct al_error **err)
{
    if (!*s || !strchr(*s, '$'))
        return 0;
    char *out = NULL;
    int r = gitlab_expand(*s, j->variables, j->n_variables, JOB_SPEC_MAX_PATH, &out);
    if (r == -E2BIG)
        return al_json_fail(err, path, "expanded, longer than %d bytes", JOB_SPEC_MAX_PATH);
    if (r < 0)
        return al_error_set(err, ENOMEM, "out of memory");
    if (al_json_check_line(out)) {
        free(out);
        return al_json_fail(err, path, "expanded, it holds control characters");
    }
    free(*s);
    *s = out;
    return 0;
}

static int expand_fields(const struct gitlab_job *j, char **v, size_t n, const char *base,
                         const char *key, struct al_error **err)
{
    char path[128];
    int r = 0;
    for (size_t i = 0; r == 0 && i < n; i++) {
        char field[96];
        al_json_path(field, sizeof(field), base, key, 0);
        r = expand_field(j, &v[i], al_json_path(path, sizeof(path), field, NULL, i), err);
    }
    return r;
}

static size_t count_refs(const char *s)
{
    size_t n = 0;
    for (; s && *s; s++)
        n += *s == '$';
    return n;
}

static size_t count_refs_v(char *const *v, size_t n)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += count_refs(v[i]);
    return total;
}

/* Every reference costs a scan of the variables: bounded for the job. */
static size_t job_refs(const struct gitlab_job *j)
{
    size_t n = 0;
    for (size_t i = 0; i < j->n_variables; i++)
        n += j->variables[i].raw ? 0 : count_refs(j->variables[i].value);
    for (size_t i = 0; i < j->n_artifacts; i++) {
        const struct gitlab_artifact *a = &j->artifacts[i];
        n += count_refs(a->name) + count_refs_v(a->paths, a->n_paths) +
             count_refs_v(a->exclude, a->n_exclude);
    }
    for (size_t i = 0; i < j->n_caches; i++) {
        const struct gitlab_cache_spec *c = &j->caches[i];
        n += count_refs(c->key) + count_refs_v(c->paths, c->n_paths) +
             count_refs_v(c->fallback_keys, c->n_fallback_keys);
    }
    return n;
}

int gitlab_job_expand(struct gitlab_job *j, struct al_error **err)
{
    if (job_refs(j) > GITLAB_EXPAND_MAX_REFS)
        return al_json_fail(err, "variables", "more than %d \"$\" to expand",
                            GITLAB_EXPAND_MAX_REFS);
    int r = expand_variables(j, err);
    for (size_t i = 0; r == 0 && i < j->n_artifacts; i++) {
        struct gitlab_artifact *a = &j->artifacts[i];
        char p[64], f[96];
        al_json_path(p, sizeof(p), "artifacts", NULL, i);
        bool named = a->name && *a->name;
        if ((r = expand_field(j, &a->name, al_json_path(f, sizeof(f), p, "name", 0), err)) < 0 ||
            (r = expand_fields(j, a->paths, a->n_paths, p, "paths", err)) < 0)
            break;
        /* gitlab-runner's uploader calls a name that expanded to nothing
         * "default" (no name at all is "artifacts") */
        if (named && !*a->name && (free(a->name), !(a->name = strdup("default")))) {
            r = al_error_set(err, ENOMEM, "out of memory");
            break;
        }
        r = expand_fields(j, a->exclude, a->n_exclude, p, "exclude", err);
    }
    for (size_t i = 0; r == 0 && i < j->n_caches; i++) {
        struct gitlab_cache_spec *c = &j->caches[i];
        char p[64], f[96];
        al_json_path(p, sizeof(p), "cache", NULL, i);
        if ((r = expand_field(j, &c->key, al_json_path(f, sizeof(f), p, "key", 0), err)) < 0 ||
            (r = expand_fields(j, c->paths, c->n_paths, p, "paths", err)) < 0)
            break;
        r = expand_fields(j, c->fallback_keys, c->n_fallback_keys, p, "fallback_keys", err);
    }
    return r;
}
