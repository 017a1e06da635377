/* The GIT_* variables of a GitLab job's host checkout, parsed with its
 * payload (runner/sources/gitlab_git.c). */
#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runner/base/buf.h"
#include "runner/base/util.h"
#include "runner/sources/gitlab_checkout.h"
#include "runner/sources/gitlab_git.h"
#include "runner/sources/gitlab_job.h"

#include "gitlab_payload.h"

#define GIT_VAR(k, v) \
    "{\"key\": \"" k "\", \"value\": \"" v "\", \"public\": true, \"masked\": false}"

static struct gitlab_job *parse_git_vars(const char *variables)
{
    _cleanup_free_ char *doc = payload(variables, STEP_SCRIPT("\"true\""), "");
    return parse_ok(doc);
}

static void assert_strv(char **v, const char *const *want, size_t n)
{
    assert_non_null(v);
    for (size_t i = 0; i < n; i++) {
        assert_non_null(v[i]);
        assert_string_equal(v[i], want[i]);
    }
    assert_null(v[n]);
}

/* The GIT_* variables of the host checkout: gitlab-runner's defaults and
 * meanings, parsed with the payload. */
static void test_parse_git_variables(void **state)
{
    (void)state;
    /* nothing set: gitlab-runner's defaults, git_info.depth applies */
    _cleanup_gitlab_job_ struct gitlab_job *d = parse_git_vars(GIT_VAR("OTHER", "1"));
    assert_false(d->git.depth_set);
    assert_int_equal(gitlab_git_depth(&d->git, d->depth), 20);
    assert_int_equal(gitlab_git_submodule_depth(&d->git, d->depth), 20);
    assert_false(d->git.no_checkout);
    assert_false(d->git.lfs_skip_smudge);
    assert_false(d->git.submodule_force_https);
    assert_int_equal(d->git.submodules, GITLAB_SUBMODULES_NONE);
    assert_strv(d->git.clean_flags, (const char *[]){"-ffdx"}, 1);
    assert_strv(d->git.fetch_flags, (const char *[]){"--prune", "--quiet"}, 2);
    assert_strv(d->git.submodule_update_flags, NULL, 0);
    assert_strv(d->git.submodule_paths, NULL, 0);

    /* everything set; values are expanded first; the last definition wins */
    _cleanup_gitlab_job_ struct gitlab_job *j = parse_git_vars(GIT_VAR("MY_DEPTH", "1") "," GIT_VAR("GIT_DEPTH", "7") "," GIT_VAR(
            "GIT_DEPTH",
            "$MY_"
            "DEPTH") "," GIT_VAR("GIT_CHECKOUT",
                                 "false") "," GIT_VAR("GIT_CLEAN_FLAGS",
                                                      " -ffdx\\t--exclude=keep/"
                                                      " ") "," GIT_VAR("GIT_"
                                                                       "FETCH_"
                                                                       "EXTRA_"
                                                                       "FLAGS",
                                                                       "--tags "
                                                                       "--jobs="
                                                                       "4 "
                                                                       "--no-"
                                                                       "prune") "," GIT_VAR("GIT_"
                                                                                            "SUBMOD"
                                                                                            "ULE_"
                                                                                            "STRATE"
                                                                                            "GY",
                                                                                            "recurs"
                                                                                            "ive") "," GIT_VAR("GIT_"
                                                                                                               "SUBMODULE_"
                                                                                                               "PATHS",
                                                                                                               "lib "
                                                                                                               ":(exclude)"
                                                                                                               "vendor") "," GIT_VAR("GIT_SUBMODULE_UPDATE_FLAGS",
                                                                                                                                     "--remote --jobs=2 -N") "," GIT_VAR("GIT_SUBMODULE_DEPTH",
                                                                                                                                                                         "3") "," GIT_VAR("GIT_SUBMODULE_FORCE_HTTPS",
                                                                                                                                                                                          "True") "," GIT_VAR("GIT_LFS_SKIP_SMUDGE",
                                                                                                                                                                                                              "1"));
    assert_true(j->git.depth_set);
    assert_int_equal(gitlab_git_depth(&j->git, j->depth), 1);
    assert_int_equal(gitlab_git_submodule_depth(&j->git, j->depth), 3);
    assert_true(j->git.no_checkout);
    assert_true(j->git.lfs_skip_smudge);
    assert_true(j->git.submodule_force_https);
    assert_int_equal(j->git.submodules, GITLAB_SUBMODULES_RECURSIVE);
    assert_strv(j->git.clean_flags, (const char *[]){"-ffdx", "--exclude=keep/"}, 2);
    assert_strv(j->git.fetch_flags, (const char *[]){"--tags", "--jobs=4", "--no-prune"}, 3);
    assert_strv(j->git.submodule_update_flags, (const char *[]){"--remote", "--jobs=2", "-N"}, 3);
    assert_strv(j->git.submodule_paths, (const char *[]){"lib", ":(exclude)vendor"}, 2);

    /* "none" turns the default flags off; GIT_DEPTH=0 is the full history
     * and the submodules follow it; empty values count as unset */
    _cleanup_gitlab_job_ struct gitlab_job *n =
            parse_git_vars(GIT_VAR("GIT_CLEAN_FLAGS", "none") "," GIT_VAR(
                    "GIT_FETCH_EXTRA_FLAGS",
                    "none") "," GIT_VAR("GIT_DEPTH",
                                        "0") "," GIT_VAR("GIT_SUBMODULE_STRATEGY",
                                                         "normal") "," GIT_VAR("GIT_CHECKOUT",
                                                                               "") "," GIT_VAR("GIT"
                                                                                               "_SU"
                                                                                               "BMO"
                                                                                               "DUL"
                                                                                               "E_"
                                                                                               "DEP"
                                                                                               "TH",
                                                                                               ""));
    assert_strv(n->git.clean_flags, NULL, 0);
    assert_strv(n->git.fetch_flags, NULL, 0);
    assert_int_equal(gitlab_git_depth(&n->git, n->depth), 0);
    assert_int_equal(gitlab_git_submodule_depth(&n->git, n->depth), 0);
    assert_int_equal(n->git.submodules, GITLAB_SUBMODULES_NORMAL);
    assert_false(n->git.no_checkout);

    /* refused, with the variable named: option injection and host paths
     * among the flags, unknown values, bad numbers */
    static const struct {
        const char *vars, *want;
    } bad[] = {
            {GIT_VAR("GIT_SUBMODULE_STRATEGY", "sometimes"), "GIT_SUBMODULE_STRATEGY: unknown"},
            {GIT_VAR("GIT_DEPTH", "-1"), "GIT_DEPTH: \"-1\" is not a depth"},
            {GIT_VAR("GIT_DEPTH", "1x"), "GIT_DEPTH: "},
            {GIT_VAR("GIT_DEPTH", " 5"), "GIT_DEPTH: "},
            {GIT_VAR("GIT_DEPTH", "99999999999"), "GIT_DEPTH: "},
            {GIT_VAR("GIT_SUBMODULE_DEPTH", "deep"), "GIT_SUBMODULE_DEPTH: "},
            {GIT_VAR("GIT_CHECKOUT", "maybe"), "GIT_CHECKOUT: \"maybe\" is not a boolean"},
            {GIT_VAR("GIT_LFS_SKIP_SMUDGE", "yes"), "GIT_LFS_SKIP_SMUDGE: "},
            {GIT_VAR("GIT_SUBMODULE_FORCE_HTTPS", "on"), "GIT_SUBMODULE_FORCE_HTTPS: "},
            {GIT_VAR("GIT_FETCH_EXTRA_FLAGS", "--prune origin"),
             "GIT_FETCH_EXTRA_FLAGS: \"origin\" is not an option"},
            {GIT_VAR("GIT_FETCH_EXTRA_FLAGS", "--jobs 4"), "\"4\" is not an option"},
            {GIT_VAR("GIT_FETCH_EXTRA_FLAGS", "--upload-pack=/bin/evil"),
             "GIT_FETCH_EXTRA_FLAGS: agentlab does not pass \"--upload-pack=/bin/evil\""},
            {GIT_VAR("GIT_FETCH_EXTRA_FLAGS", "-u/bin/evil"), "does not pass \"-u/bin/evil\""},
            {GIT_VAR("GIT_CLEAN_FLAGS", "-ffdx -e keep"), "GIT_CLEAN_FLAGS: agentlab does not"},
            {GIT_VAR("GIT_CLEAN_FLAGS", "-ffdxi"), "GIT_CLEAN_FLAGS: "},
            {GIT_VAR("GIT_SUBMODULE_UPDATE_FLAGS", "--reference=/var/lib/other.git"),
             "GIT_SUBMODULE_UPDATE_FLAGS: agentlab does not pass"},
            {GIT_VAR("GIT_SUBMODULE_UPDATE_FLAGS", "--"), "GIT_SUBMODULE_UPDATE_FLAGS: "},
            {GIT_VAR("GIT_SUBMODULE_PATHS", "a\\u0001b"), "control character"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        _cleanup_free_ char *doc = payload(bad[i].vars, STEP_SCRIPT("\"true\""), "");
        _cleanup_free_ char *msg = parse_err(doc, strlen(doc), -EINVAL);
        if (!strstr(msg, bad[i].want))
            fail_msg("%s: got \"%s\"", bad[i].vars, msg);
    }
    /* limits: words and bytes */
    _cleanup_buf_ struct al_buf many = {0};
    assert_int_equal(al_buf_puts(&many, GIT_VAR("GIT_SUBMODULE_PATHS", "")), 0);
    many.len -= strlen("\", \"public\": true, \"masked\": false}");
    for (int i = 0; i <= GITLAB_GIT_MAX_WORDS; i++)
        assert_int_equal(al_buf_printf(&many, "p%d ", i), 0);
    assert_int_equal(al_buf_puts(&many, "\", \"public\": true, \"masked\": false}"), 0);
    _cleanup_free_ char *doc = payload(many.data, STEP_SCRIPT("\"true\""), "");
    _cleanup_free_ char *msg = parse_err(doc, strlen(doc), -EINVAL);
    assert_non_null(strstr(msg, "GIT_SUBMODULE_PATHS: more than"));

    /* the allowlists themselves */
    assert_true(gitlab_git_flag_allowed(GITLAB_GIT_FETCH, "--no-tags"));
    assert_true(gitlab_git_flag_allowed(GITLAB_GIT_FETCH, "-pq"));
    assert_true(gitlab_git_flag_allowed(GITLAB_GIT_FETCH, "--depth=5"));
    assert_false(gitlab_git_flag_allowed(GITLAB_GIT_FETCH, "--no-"));
    assert_false(gitlab_git_flag_allowed(GITLAB_GIT_FETCH, "-"));
    assert_false(gitlab_git_flag_allowed(GITLAB_GIT_FETCH, "--=x"));
    assert_false(gitlab_git_flag_allowed(GITLAB_GIT_FETCH, "--no-upload-pack=x"));
    assert_false(gitlab_git_flag_allowed(GITLAB_GIT_SUBMODULE_UPDATE, "--reference-if-able=x"));
    assert_false(gitlab_git_flag_allowed(GITLAB_GIT_CLEAN, "--interactive"));
    assert_true(gitlab_git_flag_allowed(GITLAB_GIT_CLEAN, "-ffdX"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_parse_git_variables),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
