/* The host-side GitLab checkout against real git over HTTP: the fake
 * GitLab's git http-backend and Git LFS batch API (tests/fakes/
 * gitlab_git_repos.py), with the GIT_* variables (submodules under a
 * relative URL, LFS, depth, no checkout) and the job token checked on every
 * request. Needs python3, git and git-lfs (scripts/setup.sh). */
#include "test_util.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runner/base/macro.h"
#include "runner/base/util.h"
#include "runner/sources/gitlab_checkout.h"
#include "runner/sources/gitlab_git.h"

#define TOKEN   "glcbt-64_CheckoutTestTokenAbCd"
#define REFSPEC "+refs/pipelines/7:refs/pipelines/7"

struct ctx {
    char *tmp;
    pid_t server;
    char url[128];
    char sha[48];
    char gone_sha[48];
    char ssh_sha[48];
};

struct outcome {
    bool done;
    int result;
    char message[1024];
    char notes[1024];
};

static char *joined(const char *a, const char *b)
{
    char *s = al_path_join(a, b);
    assert_non_null(s);
    return s;
}

static int setup(void **state)
{
    struct ctx *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    c->tmp = test_tmpdir("glco");
    const char *src = getenv("AL_SOURCE_DIR");
    assert_non_null(src);
    _cleanup_free_ char *helper = NULL;
    assert_true(asprintf(&helper, "%s/tests/fakes/gitlab_git_repos.py", src) > 0);
    _cleanup_free_ char *info = joined(c->tmp, "info");
    _cleanup_free_ char *log = joined(c->tmp, "server.log");
    c->server = fork();
    assert_true(c->server >= 0);
    if (c->server == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execlp("python3", "python3", helper, c->tmp, TOKEN, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 600; i++) {
        FILE *f = fopen(info, "re");
        if (f) {
            int n = fscanf(f, "%127s %47s %47s %47s", c->url, c->sha, c->gone_sha, c->ssh_sha);
            fclose(f);
            assert_int_equal(n, 4);
            *state = c;
            return 0;
        }
        if (waitpid(c->server, NULL, WNOHANG) == c->server)
            fail_msg("the git server died; see %s", log);
        usleep(50 * 1000);
    }
    fail_msg("the git server did not start; see %s", log);
    return -1;
}

/* Stops the server; it must have seen every request carry the job token
 * and nothing off the LFS contract. */
static int teardown(void **state)
{
    struct ctx *c = *state;
    if (!c)
        return 0;
    kill(c->server, SIGTERM);
    waitpid(c->server, NULL, 0);
    _cleanup_free_ char *status = joined(c->tmp, "status");
    char *text = NULL;
    size_t len = 0;
    struct al_error *err = NULL;
    assert_int_equal(al_read_file(status, 1 << 20, &text, &len, &err), 0);
    if (!strstr(text, "\"auth_failures\": 0,") || !strstr(text, "\"errors\": []"))
        fail_msg("the git server saw bad requests: %s", text);
    free(text);
    test_tmpdir_remove(c->tmp);
    free(c);
    return 0;
}

static void on_done(int result, const char *tar, const char *message, void *data)
{
    (void)tar;
    struct outcome *o = data;
    o->done = true;
    o->result = result;
    snprintf(o->message, sizeof(o->message), "%s", message ? message : "");
}

static void on_note(const char *line, void *data)
{
    struct outcome *o = data;
    size_t n = strlen(o->notes);
    snprintf(o->notes + n, sizeof(o->notes) - n, "%s", line);
}

/* Variables of the job: "KEY", "VALUE" pairs, NULL-terminated. */
static const char *lookup(const void *vars, const char *key)
{
    const char *const *v = vars;
    const char *found = NULL;
    for (; v[0]; v += 2) {
        if (streq(v[0], key))
            found = v[1];
    }
    return found;
}

/* Checks out project at sha with the variables, unpacks the work dir into
 * tmp/NAME; returns the seconds it took. */
static double checkout(struct ctx *c, const char *name, const char *project, const char *sha,
                       const char *const *vars, struct outcome *o)
{
    struct gitlab_git_opts git;
    struct al_error *err = NULL;
    if (gitlab_git_opts_parse(lookup, vars, &git, &err) < 0)
        fail_msg("variables refused: %s", al_error_message(err));
    _cleanup_free_ char *dir = NULL, *url = NULL;
    assert_true(asprintf(&dir, "%s/co-%s", c->tmp, name) > 0);
    assert_true(asprintf(&url, "%s/git/%s.git", c->url, project) > 0);
    const char *refspecs[] = {REFSPEC, NULL};
    struct gitlab_checkout_params p = {
            .dir = dir,
            .repo_url = url,
            .token = TOKEN,
            .sha = sha,
            .refspecs = refspecs,
            .depth = 20,
            .git = &git,
            .note = on_note,
    };
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct gitlab_checkout *co = NULL;
    uint64_t t0 = uv_hrtime();
    assert_int_equal(gitlab_checkout_start(&loop, &p, on_done, o, &co, &err), 0);
    assert_true(test_run_until(&loop, &o->done, 60000));
    double s = (double)(uv_hrtime() - t0) / 1e9;
    test_loop_close(&loop);
    gitlab_git_opts_clear(&git);
    if (o->result == 0) {
        _cleanup_free_ char *cmd = NULL;
        assert_true(asprintf(&cmd, "mkdir -p '%s/%s' && tar -xf '%s/workdir.tar' -C '%s/%s'",
                             c->tmp, name, dir, c->tmp, name) > 0);
        assert_int_equal(system(cmd), 0);
    }
    return s;
}

static char *read_text(struct ctx *c, const char *name, const char *rel)
{
    _cleanup_free_ char *path = NULL;
    assert_true(asprintf(&path, "%s/%s/%s", c->tmp, name, rel) > 0);
    char *text = NULL;
    size_t len = 0;
    struct al_error *err = NULL;
    if (al_read_file(path, 1 << 20, &text, &len, &err) < 0)
        fail_msg("%s: %s", rel, al_error_message(err));
    return text;
}

static bool exists(struct ctx *c, const char *name, const char *rel)
{
    _cleanup_free_ char *path = NULL;
    assert_true(asprintf(&path, "%s/%s/%s", c->tmp, name, rel) > 0);
    return access(path, F_OK) == 0;
}

/* The content gitlab_git_repos.py puts in the LFS object and the submodule. */
static const char *lfs_content(void)
{
    static char buf[64 * 36 + 1];
    if (!buf[0]) {
        for (int i = 0; i < 64; i++)
            strcat(buf, "large file content held by Git LFS\n");
    }
    return buf;
}

static void test_submodules_lfs_depth(void **state)
{
    struct ctx *c = *state;
    const char *vars[] = {"GIT_DEPTH", "1", "GIT_SUBMODULE_STRATEGY", "recursive", NULL};
    struct outcome o = {0};
    double with_lfs = checkout(c, "full", "super", c->sha, vars, &o);
    if (o.result != 0)
        fail_msg("checkout failed: %s", o.message);
    _cleanup_free_ char *sub = read_text(c, "full", "lib/sub.txt");
    assert_string_equal(sub, "a file of the submodule\n");
    _cleanup_free_ char *blob = read_text(c, "full", "data/blob.bin");
    assert_string_equal(blob, lfs_content());
    /* depth 1: the history is cut at the commit itself */
    _cleanup_free_ char *shallow = read_text(c, "full", ".git/shallow");
    assert_int_equal(strlen(shallow), strlen(c->sha) + 1);
    assert_memory_equal(shallow, c->sha, strlen(c->sha));
    assert_string_equal(
            o.notes, "Updating/initializing submodules recursively with git depth set to 1...\n");
    /* no credentials anywhere in the work dir handed to the VM */
    _cleanup_free_ char *grep = NULL;
    assert_true(asprintf(&grep, "grep -rqa -e '" TOKEN "' -e 'Authorization' '%s/full'", c->tmp) >
                0);
    assert_int_not_equal(system(grep), 0);

    /* the same without LFS objects: pointer files */
    const char *skip[] = {
            "GIT_DEPTH", "1", "GIT_SUBMODULE_STRATEGY", "recursive", "GIT_LFS_SKIP_SMUDGE",
            "1",         NULL};
    struct outcome o2 = {0};
    double without_lfs = checkout(c, "skip", "super", c->sha, skip, &o2);
    assert_int_equal(o2.result, 0);
    _cleanup_free_ char *pointer = read_text(c, "skip", "data/blob.bin");
    assert_true(strncmp(pointer, "version https://git-lfs.github.com/spec/v1\n", 43) == 0);
    assert_false(exists(c, "skip", ".git/lfs"));

    /* no submodules, no LFS: the plain checkout */
    const char *plain[] = {"GIT_DEPTH", "1", "GIT_LFS_SKIP_SMUDGE", "true", NULL};
    struct outcome o3 = {0};
    double bare = checkout(c, "plain", "super", c->sha, plain, &o3);
    assert_int_equal(o3.result, 0);
    assert_false(exists(c, "plain", "lib/sub.txt"));
    assert_string_equal(o3.notes, "");
    print_message("checkout: %.2fs with submodules and LFS, %.2fs with submodules, "
                  "%.2fs without either\n",
                  with_lfs, without_lfs, bare);
}

static void test_no_checkout(void **state)
{
    struct ctx *c = *state;
    const char *vars[] = {"GIT_CHECKOUT",
                          "false",
                          "GIT_SUBMODULE_STRATEGY",
                          "normal",
                          "GIT_FETCH_EXTRA_FLAGS",
                          "--no-prune --quiet",
                          NULL};
    struct outcome o = {0};
    checkout(c, "nock", "super", c->sha, vars, &o);
    if (o.result != 0)
        fail_msg("checkout failed: %s", o.message);
    assert_true(exists(c, "nock", ".git/HEAD"));
    assert_false(exists(c, "nock", "README.txt"));
    assert_false(exists(c, "nock", "lib/sub.txt"));
}

static void test_lfs_object_missing(void **state)
{
    struct ctx *c = *state;
    const char *vars[] = {NULL};
    struct outcome o = {0};
    checkout(c, "gone", "lfsgone", c->gone_sha, vars, &o);
    assert_int_equal(o.result, -EIO);
    if (!strstr(o.message, "git lfs pull (Git LFS objects could not be fetched) failed (exit "))
        fail_msg("message: %s", o.message);
    assert_null(strstr(o.message, TOKEN));
    print_message("%s\n", o.message);
}

/* A submodule URL in ssh form: refused (http and https only) unless
 * GIT_SUBMODULE_FORCE_HTTPS rewrites it onto the repository's scheme. */
static void test_submodule_force_https(void **state)
{
    struct ctx *c = *state;
    const char *ssh[] = {"GIT_SUBMODULE_STRATEGY", "normal", "GIT_LFS_SKIP_SMUDGE", "1", NULL};
    struct outcome o = {0};
    checkout(c, "ssh", "sshsub", c->ssh_sha, ssh, &o);
    assert_int_equal(o.result, -EIO);
    if (!strstr(o.message, "git submodule update failed (exit "))
        fail_msg("message: %s", o.message);
    const char *https[] = {"GIT_SUBMODULE_STRATEGY",
                           "normal",
                           "GIT_SUBMODULE_FORCE_HTTPS",
                           "true",
                           "GIT_LFS_SKIP_SMUDGE",
                           "1",
                           NULL};
    struct outcome o2 = {0};
    checkout(c, "https", "sshsub", c->ssh_sha, https, &o2);
    if (o2.result != 0)
        fail_msg("checkout failed: %s", o2.message);
    _cleanup_free_ char *sub = read_text(c, "https", "lib/sub.txt");
    assert_string_equal(sub, "a file of the submodule\n");
    /* the recorded URL is the rewritten one, without credentials */
    _cleanup_free_ char *config = read_text(c, "https", ".git/config");
    assert_non_null(strstr(config, "url = git@127.0.0.1:git/lib.git"));
    assert_null(strstr(config, TOKEN));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_submodules_lfs_depth),
            cmocka_unit_test(test_no_checkout),
            cmocka_unit_test(test_lfs_object_missing),
            cmocka_unit_test(test_submodule_force_https),
    };
    return test_exit_status(cmocka_run_group_tests(tests, setup, teardown));
}
