#include "test_util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "runner/base/error.h"
#include "runner/base/util.h"

char *test_tmpdir(const char *tag)
{
    const char *base = getenv("TMPDIR");
    char *path = NULL;
    if (asprintf(&path, "%s/agentlab-test-%s-XXXXXX", base && *base ? base : "/tmp", tag) < 0)
        return NULL;
    if (!mkdtemp(path)) {
        free(path);
        return NULL;
    }
    chmod(path, 0711);
    return path;
}

void test_tmpdir_remove(char *path)
{
    if (!path)
        return;
    struct al_error *err = NULL;
    al_rm_rf(path, &err);
    al_error_free(err);
    free(path);
}

void test_destroy_storage_pools(const char *dir)
{
    _cleanup_free_ char *cmd = NULL;
    if (!dir || strchr(dir, '\'') ||
        asprintf(&cmd,
                 "for p in $(virsh -c qemu:///system pool-list --name 2>/dev/null | "
                 "grep '^agentlab-'); do "
                 "case \"$(virsh -c qemu:///system pool-dumpxml \"$p\" 2>/dev/null | "
                 "sed -n 's|.*<path>\\(.*\\)</path>.*|\\1|p' | head -n 1)\" in "
                 "'%s'/*) virsh -c qemu:///system pool-destroy \"$p\" >/dev/null 2>&1;; esac; "
                 "done",
                 dir) < 0)
        return;
    if (system(cmd) != 0)
        fprintf(stderr, "destroying the storage pools below %s failed\n", dir);
}

char *test_micro_tmpdir(const char *tag)
{
    const char *shared = getenv("AGENTLAB_TEST_STATE");
    if (!shared)
        test_skip("AGENTLAB_TEST_STATE is not set: run through ctest (the micro fixture)");
    char *dir = test_tmpdir(tag);
    _cleanup_free_ char *cmd = NULL;
    if (!dir ||
        asprintf(&cmd, "mkdir -p '%s/state/images' && cp -a '%s/images/micro' '%s/state/images/'",
                 dir, shared, dir) < 0 ||
        system(cmd) != 0) {
        fprintf(stderr, "copying the micro image from %s failed\n", shared);
        abort();
    }
    unsetenv("AGENTLAB_STATE_DIR");
    unsetenv("AGENTLAB_RUN_DIR");
    return dir;
}

struct deadline {
    uv_timer_t timer;
    uv_timer_t check;
    const bool *flag;
    bool expired;
};

static void on_deadline(uv_timer_t *t)
{
    struct deadline *d = t->data;
    d->expired = true;
    uv_stop(t->loop);
}

/* libuv runs timers before it polls, so a flag set by a timer callback would
 * otherwise wait for the next I/O or the deadline: look every few ms. */
static void on_check(uv_timer_t *t)
{
    struct deadline *d = t->data;
    if (*d->flag)
        uv_stop(t->loop);
}

bool test_run_until(uv_loop_t *loop, const bool *flag, unsigned timeout_ms)
{
    struct deadline d = {.flag = flag};
    uv_timer_init(loop, &d.timer);
    uv_timer_init(loop, &d.check);
    d.timer.data = d.check.data = &d;
    uv_timer_start(&d.timer, on_deadline, timeout_ms, 0);
    uv_timer_start(&d.check, on_check, 5, 5);
    while (!*flag && !d.expired)
        uv_run(loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&d.timer, NULL);
    uv_close((uv_handle_t *)&d.check, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return *flag;
}

static void count_open(uv_handle_t *h, void *arg)
{
    unsigned *n = arg;
    if (!uv_is_closing(h)) {
        fprintf(stderr, "test: handle of type %s left open\n", uv_handle_type_name(h->type));
        (*n)++;
    }
}

void test_loop_close(uv_loop_t *loop)
{
    /* let pending close callbacks run; anything still open is a leak */
    uv_run(loop, UV_RUN_NOWAIT);
    unsigned open = 0;
    uv_walk(loop, count_open, &open);
    assert_int_equal(open, 0);
    uv_run(loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(loop), 0);
}

const char *test_outdir(void)
{
    static char *dir;
    if (dir)
        return dir;
    const char *env = getenv("AL_TEST_OUTDIR");
    if (env && *env) {
        struct al_error *err = NULL;
        if (al_mkdir_p(env, 0755, &err) == 0)
            dir = strdup(env);
        al_error_free(err);
    }
    if (!dir)
        dir = test_tmpdir("out");
    return dir;
}

static bool skipped;

bool test_skip_allowed(void)
{
    const char *ci = getenv("CI");
    if (ci && *ci && strcmp(ci, "0") != 0 && strcmp(ci, "false") != 0)
        return false;
    const char *allow = getenv("AGENTLAB_ALLOW_SKIP");
    return allow && strcmp(allow, "1") == 0;
}

void test_skip_at(const char *file, int line, const char *fmt, ...)
{
    char reason[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof(reason), fmt, ap);
    va_end(ap);
    if (test_skip_allowed()) {
        skipped = true;
        print_message("SKIP: %s\n", reason);
        _skip(file, line);
    } else {
        print_error("FAIL: %s (a test that cannot run fails; AGENTLAB_ALLOW_SKIP=1 lets it "
                    "skip outside CI)\n",
                    reason);
        _fail(file, line);
    }
    /* cmocka jumps out of the test above; outside a test it exits */
    abort();
}

int test_exit_status(int failed)
{
    if (failed)
        return failed;
    return skipped ? 77 : 0;
}

int test_run_first_line(const char *path, const char *args, char *out, size_t out_size)
{
    char *cmd = NULL;
    assert_true(asprintf(&cmd, "'%s' %s", path, args) > 0);
    FILE *f = popen(cmd, "r");
    free(cmd);
    assert_non_null(f);
    char line[256] = "";
    if (!fgets(line, sizeof(line), f))
        line[0] = '\0';
    while (fgetc(f) != EOF)
        ;
    int st = pclose(f);
    line[strcspn(line, "\n")] = '\0';
    if (out)
        snprintf(out, out_size, "%s", line);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}
