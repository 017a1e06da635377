/* The job runner of the Proxmox backend, run for real with /bin/sh in a
 * temp dir standing in for the guest: files as the host writes them with
 * agent/file-write, the runner on stdin like agent/exec input-data, and its
 * stdout parsed like the exec-status out-data. */
#include "test_util.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runner/base/buf.h"
#include "runner/base/util.h"
#include "provision/pve_guest.h"

struct guest {
    char *dir;
    char prefix[512]; /* PREFIX */
    char root[512];   /* ROOT */
    char out[64 << 10];
    int rc;
    uint64_t ms;
};

static int setup(void **state)
{
    struct guest *g = calloc(1, sizeof(*g));
    g->dir = test_tmpdir("pve-guest");
    snprintf(g->prefix, sizeof(g->prefix), "%s/run/agentlab-job", g->dir);
    snprintf(g->root, sizeof(g->root), "%s/var/lib/agentlab", g->dir);
    char run[600];
    snprintf(run, sizeof(run), "%s/run", g->dir);
    assert_int_equal(mkdir(run, 0755), 0);
    *state = g;
    return 0;
}

static int teardown(void **state)
{
    struct guest *g = *state;
    test_tmpdir_remove(g->dir);
    free(g);
    return 0;
}

/* Writes data as NAME.000, NAME.001, ... like the host's chunked writes. */
static void put_chunks(struct guest *g, const char *name, const void *data, size_t len)
{
    size_t chunk = 1000; /* small: the joining is what is tested */
    for (size_t off = 0, i = 0; off < len || i == 0; off += chunk, i++) {
        char path[700];
        snprintf(path, sizeof(path), "%s.%s.%03zu", g->prefix, name, i);
        FILE *f = fopen(path, "we");
        assert_non_null(f);
        size_t n = len - off < chunk ? len - off : chunk;
        assert_int_equal(fwrite((const char *)data + off, 1, n, f), n);
        fclose(f);
        if (off + n >= len)
            break;
    }
}

static void put_job(struct guest *g, const struct vm_request *req)
{
    struct al_buf b = AL_BUF_INIT;
    struct al_error *err = NULL;
    assert_int_equal(pve_guest_job_file(req, &b, &err), 0);
    put_chunks(g, "job", b.data, b.len);
    al_buf_reset(&b);
    assert_int_equal(pve_guest_secrets_file(req, &b, &err), 0);
    if (b.len)
        put_chunks(g, "secrets", b.data, b.len);
    al_buf_free(&b);
}

/* Runs the runner the way agent/exec does and collects its stdout. */
static void run(struct guest *g, const struct vm_request *req)
{
    char **cmd = pve_guest_command(req);
    assert_non_null(cmd);
    /* the guest paths, mapped into the temp dir */
    free(cmd[3]);
    cmd[3] = strdup(g->prefix);
    free(cmd[4]);
    cmd[4] = strdup(g->root);
    int in[2], out[2];
    assert_int_equal(pipe2(in, O_CLOEXEC), 0);
    assert_int_equal(pipe2(out, O_CLOEXEC), 0);
    uint64_t t0 = al_now_mono_ms();
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        if (chdir(g->dir) < 0)
            _exit(126);
        execv("/bin/sh", cmd);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    const char *script = pve_guest_runner();
    assert_int_equal(write(in[1], script, strlen(script)), (ssize_t)strlen(script));
    close(in[1]);
    size_t n = 0;
    ssize_t r;
    while ((r = read(out[0], g->out + n, sizeof(g->out) - 1 - n)) > 0)
        n += (size_t)r;
    g->out[n] = '\0';
    close(out[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    g->rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    g->ms = al_now_mono_ms() - t0;
    strv_free(cmd);
}

static char *slurp(const struct guest *g, const char *rel)
{
    char path[700];
    snprintf(path, sizeof(path), "%s/%s", g->root, rel);
    char *text = NULL;
    struct al_error *err = NULL;
    if (al_read_file(path, 1 << 20, &text, NULL, &err) < 0) {
        al_error_free(err);
        return NULL;
    }
    return text;
}

static void test_argv_env_secrets(void **state)
{
    struct guest *g = *state;
    const char *argv[] = {"sh",
                          "-c",
                          "echo \"$1|$GREETING|$TOKEN|$AGENTLAB_JOB_ID|$(pwd)\"; echo e >&2; "
                          "ls /proc/self/fd | wc -l >/dev/null; exit 5",
                          "x",
                          "it's \"quoted\" $HOME `x` \\ \n newline",
                          NULL};
    struct env_pair env[] = {{"GREETING", "hi there; $(rm -rf /)"}};
    struct env_pair secrets[] = {{"TOKEN", "s3cret 'value'"}};
    struct vm_request req = {
            .job_id = "j0123",
            .argv = argv,
            .env = env,
            .n_env = 1,
            .secret_env = secrets,
            .n_secret_env = 1,
            .timeout_s = 60,
    };
    put_job(g, &req);
    run(g, &req);
    assert_int_equal(g->rc, 0);
    struct pve_guest_status st;
    assert_int_equal(pve_guest_status_parse(g->out, strlen(g->out), &st), 0);
    assert_true(st.have_status);
    assert_true(st.ok);
    assert_int_equal(st.exit_code, 5);
    assert_false(st.timed_out);
    _cleanup_free_ char *out = slurp(g, "out");
    _cleanup_free_ char *err = slurp(g, "err");
    assert_non_null(out);
    char want[1200];
    snprintf(
            want, sizeof(want),
            "it's \"quoted\" $HOME `x` \\ \n newline|hi there; $(rm -rf /)|s3cret 'value'|j0123|%s/"
            "work\n",
            g->root);
    assert_string_equal(out, want);
    assert_string_equal(err, "e\n");
    assert_int_equal(st.out_bytes, strlen(want));
    assert_int_equal(st.err_bytes, 2);
    /* the secrets file is gone; no chunk is left behind */
    char path[700];
    snprintf(path, sizeof(path), "%s.secrets", g->prefix);
    assert_int_equal(access(path, F_OK), -1);
    snprintf(path, sizeof(path), "%s.secrets.000", g->prefix);
    assert_int_equal(access(path, F_OK), -1);
}

static void test_script_and_artifacts(void **state)
{
    struct guest *g = *state;
    /* a script longer than one chunk, run like sh -e */
    struct al_buf script = AL_BUF_INIT;
    for (int i = 0; i < 200; i++)
        al_buf_printf(&script, ": padding line %d\n", i);
    al_buf_puts(&script, "mkdir -p d/e; echo one > d/e/f; echo two > g.txt\n"
                         "false\necho not reached\n");
    const char *arts[] = {"d", "g.txt", "missing one", NULL};
    struct vm_request req = {.job_id = "j1", .script = script.data, .artifacts = arts};
    put_job(g, &req);
    run(g, &req);
    struct pve_guest_status st;
    assert_int_equal(pve_guest_status_parse(g->out, strlen(g->out), &st), 0);
    assert_true(st.ok);
    assert_int_equal(st.exit_code, 1); /* set -e stopped at false */
    assert_int_equal(st.out_bytes, 0);
    assert_string_equal(st.missing, "missing one");
    assert_int_equal(st.art_rc, 0);
    assert_true(st.art_bytes >= 3 * 512);
    char list[800];
    snprintf(list, sizeof(list), "tar -tf %s/art/a.tar | sort | tr '\\n' ' '", g->root);
    FILE *p = popen(list, "re");
    char got[256] = "";
    assert_non_null(fgets(got, sizeof(got), p));
    pclose(p);
    assert_string_equal(got, "d/ d/e/ d/e/f g.txt ");
    al_buf_free(&script);
}

static void test_timeout(void **state)
{
    struct guest *g = *state;
    const char *argv[] = {"sh", "-c", "echo started; sleep 30 & wait; echo never", NULL};
    struct vm_request req = {.job_id = "j2", .argv = argv, .timeout_s = 1};
    put_job(g, &req);
    run(g, &req);
    struct pve_guest_status st;
    assert_int_equal(pve_guest_status_parse(g->out, strlen(g->out), &st), 0);
    assert_true(st.ok);
    assert_true(st.timed_out);
    /* the whole session went, the background sleep too, within the grace */
    assert_true(g->ms < 8000);
    _cleanup_free_ char *out = slurp(g, "out");
    assert_string_equal(out, "started\n");
}

static void test_missing_job(void **state)
{
    struct guest *g = *state;
    const char *argv[] = {"true", NULL};
    struct vm_request req = {.job_id = "j3", .argv = argv};
    run(g, &req); /* nothing written */
    struct pve_guest_status st;
    assert_int_equal(pve_guest_status_parse(g->out, strlen(g->out), &st), 0);
    assert_true(st.have_status);
    assert_false(st.ok);
    assert_string_equal(st.diag, "the job file did not arrive");
}

static void test_workdir(void **state)
{
    struct guest *g = *state;
    /* a tar made like the host's work dir archive */
    char cmd[1500];
    snprintf(cmd, sizeof(cmd),
             "mkdir -p %1$s/src/sub && echo payload > %1$s/src/sub/in.txt && "
             "tar -C %1$s/src -cf %1$s/wd.tar .",
             g->dir);
    assert_int_equal(system(cmd), 0);
    char tarpath[600];
    snprintf(tarpath, sizeof(tarpath), "%s/wd.tar", g->dir);
    char *tar = NULL;
    size_t len = 0;
    struct al_error *err = NULL;
    assert_int_equal(al_read_file(tarpath, 1 << 20, &tar, &len, &err), 0);
    put_chunks(g, "wd", tar, len);
    free(tar);
    const char *argv[] = {"cat", "sub/in.txt", NULL};
    struct vm_request req = {.job_id = "j4", .argv = argv, .workdir_tar = tarpath};
    put_job(g, &req);
    run(g, &req);
    struct pve_guest_status st;
    assert_int_equal(pve_guest_status_parse(g->out, strlen(g->out), &st), 0);
    assert_true(st.ok);
    assert_int_equal(st.exit_code, 0);
    _cleanup_free_ char *out = slurp(g, "out");
    assert_string_equal(out, "payload\n");
}

static void test_status_parse(void **state)
{
    (void)state;
    struct pve_guest_status st;
    const char text[] = "noise\nagentlab-diag artifacts: tar: x: Cannot stat\n"
                        "agentlab-missing a b\nagentlab-missing c\n"
                        "agentlab-status ok=1 exit=3 timedout=0 out=10 err=2 art=10240 artrc=2\n";
    assert_int_equal(pve_guest_status_parse(text, strlen(text), &st), 0);
    assert_true(st.have_status && st.ok);
    assert_int_equal(st.exit_code, 3);
    assert_int_equal(st.art_bytes, 10240);
    assert_int_equal(st.art_rc, 2);
    assert_string_equal(st.missing, "a b c");
    assert_string_equal(st.diag, "artifacts: tar: x: Cannot stat");
    const char *bad[] = {"agentlab-status ok=1 exit=300 timedout=0 out=0 err=0 art=0 artrc=0",
                         "agentlab-status ok=1 exit=1 timedout=0 out=-1 err=0 art=0 artrc=0",
                         "agentlab-status ok=1 exit=1"};
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
        assert_int_equal(pve_guest_status_parse(bad[i], strlen(bad[i]), &st), -EINVAL);
    assert_int_equal(pve_guest_status_parse("", 0, &st), 0);
    assert_false(st.have_status);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_argv_env_secrets, setup, teardown),
            cmocka_unit_test_setup_teardown(test_script_and_artifacts, setup, teardown),
            cmocka_unit_test_setup_teardown(test_timeout, setup, teardown),
            cmocka_unit_test_setup_teardown(test_missing_job, setup, teardown),
            cmocka_unit_test_setup_teardown(test_workdir, setup, teardown),
            cmocka_unit_test(test_status_parse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
