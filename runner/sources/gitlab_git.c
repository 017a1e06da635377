#include "runner/sources/gitlab_git.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "runner/base/macro.h"
#include "runner/base/util.h"
#include "runner/sources/gitlab_job.h"

/* Options of each command that only shape what is fetched or removed in
 * the checkout's own directory. Left out on purpose: what names host
 * paths or programs (--reference, --upload-pack, --exec, --template,
 * --separate-git-dir), what waits for input (--interactive) and what
 * takes its value as a separate word (the flags are split on spaces, so
 * "--jobs 4" must be written "--jobs=4"). A "--no-" form is allowed when
 * the option is. */
static const char *const fetch_long[] = {
        "all",
        "append",
        "atomic",
        "auto-gc",
        "auto-maintenance",
        "deepen",
        "depth",
        "dry-run",
        "filter",
        "force",
        "ipv4",
        "ipv6",
        "jobs",
        "keep",
        "negotiation-tip",
        "progress",
        "prune",
        "prune-tags",
        "quiet",
        "recurse-submodules",
        "refetch",
        "server-option",
        "shallow-exclude",
        "shallow-since",
        "show-forced-updates",
        "tags",
        "unshallow",
        "update-shallow",
        "verbose",
        "write-fetch-head",
};
static const char fetch_short[] = "46fkpPqtv";

static const char *const clean_long[] = {"dry-run", "exclude", "force", "quiet"};
static const char clean_short[] = "dfnqxX";

static const char *const submodule_long[] = {
        "checkout",
        "depth",
        "dissociate",
        "fetch",
        "filter",
        "force",
        "jobs",
        "merge",
        "progress",
        "quiet",
        "rebase",
        "recursive",
        "recommend-shallow",
        "remote",
        "single-branch",
};
static const char submodule_short[] = "Nfq";

bool gitlab_git_flag_allowed(enum gitlab_git_command cmd, const char *word)
{
    const char *const *longs;
    size_t n_longs;
    const char *shorts;
    switch (cmd) {
    case GITLAB_GIT_FETCH:
        longs = fetch_long, n_longs = ARRAY_SIZE(fetch_long), shorts = fetch_short;
        break;
    case GITLAB_GIT_CLEAN:
        longs = clean_long, n_longs = ARRAY_SIZE(clean_long), shorts = clean_short;
        break;
    case GITLAB_GIT_SUBMODULE_UPDATE:
        longs = submodule_long, n_longs = ARRAY_SIZE(submodule_long), shorts = submodule_short;
        break;
    default:
        return false;
    }
    if (word[0] != '-' || word[1] == '\0')
        return false;
    if (word[1] != '-') {
        /* bundled short options without values: -ffdx */
        for (const char *p = word + 1; *p; p++) {
            if (!strchr(shorts, *p))
                return false;
        }
        return true;
    }
    const char *name = word + 2;
    size_t len = strcspn(name, "=");
    if (len == 0)
        return false;
    if (strncmp(name, "no-", 3) == 0 && name[len] == '\0') {
        name += 3;
        len -= 3;
    }
    for (size_t i = 0; i < n_longs; i++) {
        if (strlen(longs[i]) == len && strncmp(longs[i], name, len) == 0)
            return true;
    }
    return false;
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* Splits s on white space (Go's strings.Fields) into a new
 * NULL-terminated array. */
static int split_words(const char *key, const char *s, char ***ret, struct al_error **err)
{
    _cleanup_strv_ char **v = calloc(GITLAB_GIT_MAX_WORDS + 1, sizeof(char *));
    if (!v)
        return al_error_set(err, ENOMEM, "out of memory");
    size_t n = 0;
    const char *p = s;
    for (;;) {
        while (is_space(*p))
            p++;
        if (!*p)
            break;
        size_t len = 0;
        while (p[len] && !is_space(p[len]))
            len++;
        if (n == GITLAB_GIT_MAX_WORDS)
            return al_error_set(err, EINVAL, "%s: more than %d words", key, GITLAB_GIT_MAX_WORDS);
        if (!(v[n++] = strndup(p, len)))
            return al_error_set(err, ENOMEM, "out of memory");
        p += len;
    }
    *ret = TAKE_PTR(v);
    return 0;
}

static const char *value_of(gitlab_git_lookup_fn lookup, const void *vars, const char *key,
                            struct al_error **err, int *r)
{
    const char *v = lookup(vars, key);
    *r = 0;
    if (!v || !*v)
        return NULL;
    if (strlen(v) > GITLAB_GIT_MAX_VALUE) {
        *r = al_error_set(err, EINVAL, "%s: longer than %d bytes", key, GITLAB_GIT_MAX_VALUE);
        return NULL;
    }
    for (const char *p = v; *p; p++) {
        if ((unsigned char)*p < 0x20 && !is_space(*p)) {
            *r = al_error_set(err, EINVAL, "%s: holds a control character", key);
            return NULL;
        }
    }
    return v;
}

/* Go's strconv.ParseBool, which gitlab-runner and git-lfs use. */
static int parse_bool(const char *key, const char *v, bool *ret, struct al_error **err)
{
    static const char *const yes[] = {"1", "t", "T", "TRUE", "true", "True"};
    static const char *const no[] = {"0", "f", "F", "FALSE", "false", "False"};
    for (size_t i = 0; i < ARRAY_SIZE(yes); i++) {
        if (streq(v, yes[i])) {
            *ret = true;
            return 0;
        }
        if (streq(v, no[i])) {
            *ret = false;
            return 0;
        }
    }
    return al_error_set(err, EINVAL, "%s: \"%s\" is not a boolean (true or false)", key, v);
}

static int parse_depth(const char *key, const char *v, int *ret, bool *ret_set,
                       struct al_error **err)
{
    char *end = NULL;
    errno = 0;
    long d = strtol(v, &end, 10);
    if (v[0] < '0' || v[0] > '9' || errno || *end || d > GITLAB_JOB_MAX_DEPTH_GIT)
        return al_error_set(err, EINVAL, "%s: \"%s\" is not a depth (0 to %d)", key, v,
                            GITLAB_JOB_MAX_DEPTH_GIT);
    *ret = (int)d;
    *ret_set = true;
    return 0;
}

static int parse_flags(gitlab_git_lookup_fn lookup, const void *vars, const char *key,
                       const char *def, enum gitlab_git_command cmd, char ***ret,
                       struct al_error **err)
{
    int r;
    const char *v = value_of(lookup, vars, key, err, &r);
    if (r < 0)
        return r;
    if (!v)
        v = def;
    if (streq(v, "none"))
        v = "";
    _cleanup_strv_ char **words = NULL;
    if ((r = split_words(key, v, &words, err)) < 0)
        return r;
    for (char **w = words; *w; w++) {
        if ((*w)[0] != '-')
            return al_error_set(err, EINVAL,
                                "%s: \"%s\" is not an option; agentlab passes only options "
                                "(words starting with '-', values joined with '=') to git",
                                key, *w);
        if (!gitlab_git_flag_allowed(cmd, *w))
            return al_error_set(err, EINVAL,
                                "%s: agentlab does not pass \"%s\" to git on its host (see "
                                "README.md, \"GitLab runner\", for the options it passes)",
                                key, *w);
    }
    *ret = TAKE_PTR(words);
    return 0;
}

static int parse_paths(gitlab_git_lookup_fn lookup, const void *vars, char ***ret,
                       struct al_error **err)
{
    static const char key[] = "GIT_SUBMODULE_PATHS";
    int r;
    const char *v = value_of(lookup, vars, key, err, &r);
    if (r < 0)
        return r;
    /* they follow "--" on git's command line: pathspecs, never options */
    return split_words(key, v ? v : "", ret, err);
}

void gitlab_git_opts_clear(struct gitlab_git_opts *o)
{
    if (!o)
        return;
    strv_free(o->clean_flags);
    strv_free(o->fetch_flags);
    strv_free(o->submodule_paths);
    strv_free(o->submodule_update_flags);
    memset(o, 0, sizeof(*o));
}

int gitlab_git_opts_parse(gitlab_git_lookup_fn lookup, const void *vars,
                          struct gitlab_git_opts *ret, struct al_error **err)
{
    struct gitlab_git_opts o = {0};
    const char *v;
    int r;
    if ((v = value_of(lookup, vars, "GIT_DEPTH", err, &r)) && r == 0)
        r = parse_depth("GIT_DEPTH", v, &o.depth, &o.depth_set, err);
    if (r == 0 && (v = value_of(lookup, vars, "GIT_CHECKOUT", err, &r)) && r == 0) {
        bool checkout = true;
        r = parse_bool("GIT_CHECKOUT", v, &checkout, err);
        o.no_checkout = !checkout;
    }
    if (r == 0 && (v = value_of(lookup, vars, "GIT_LFS_SKIP_SMUDGE", err, &r)) && r == 0)
        r = parse_bool("GIT_LFS_SKIP_SMUDGE", v, &o.lfs_skip_smudge, err);
    if (r == 0 && (v = value_of(lookup, vars, "GIT_SUBMODULE_STRATEGY", err, &r)) && r == 0) {
        if (streq(v, "none"))
            o.submodules = GITLAB_SUBMODULES_NONE;
        else if (streq(v, "normal"))
            o.submodules = GITLAB_SUBMODULES_NORMAL;
        else if (streq(v, "recursive"))
            o.submodules = GITLAB_SUBMODULES_RECURSIVE;
        else
            r = al_error_set(err, EINVAL,
                             "GIT_SUBMODULE_STRATEGY: unknown strategy \"%s\" (none, normal or "
                             "recursive)",
                             v);
    }
    if (r == 0 && (v = value_of(lookup, vars, "GIT_SUBMODULE_DEPTH", err, &r)) && r == 0)
        r = parse_depth("GIT_SUBMODULE_DEPTH", v, &o.submodule_depth, &o.submodule_depth_set, err);
    if (r == 0 && (v = value_of(lookup, vars, "GIT_SUBMODULE_FORCE_HTTPS", err, &r)) && r == 0)
        r = parse_bool("GIT_SUBMODULE_FORCE_HTTPS", v, &o.submodule_force_https, err);
    if (r == 0)
        r = parse_flags(lookup, vars, "GIT_CLEAN_FLAGS", "-ffdx", GITLAB_GIT_CLEAN, &o.clean_flags,
                        err);
    if (r == 0)
        r = parse_flags(lookup, vars, "GIT_FETCH_EXTRA_FLAGS", "--prune --quiet", GITLAB_GIT_FETCH,
                        &o.fetch_flags, err);
    if (r == 0)
        r = parse_flags(lookup, vars, "GIT_SUBMODULE_UPDATE_FLAGS", "", GITLAB_GIT_SUBMODULE_UPDATE,
                        &o.submodule_update_flags, err);
    if (r == 0)
        r = parse_paths(lookup, vars, &o.submodule_paths, err);
    if (r < 0) {
        gitlab_git_opts_clear(&o);
        return r;
    }
    *ret = o;
    return 0;
}

int gitlab_git_depth(const struct gitlab_git_opts *o, int payload_depth)
{
    return o && o->depth_set ? o->depth : payload_depth;
}

int gitlab_git_submodule_depth(const struct gitlab_git_opts *o, int payload_depth)
{
    if (o && o->submodule_depth_set)
        return o->submodule_depth;
    return gitlab_git_depth(o, payload_depth);
}
