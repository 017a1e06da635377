/* Runs the real agentlab-guest binary on the host with --port pointing at a
 * unix socket this test listens on; the test plays the host side of the
 * protocol. As root the helper switches the workload to "nobody", so these
 * tests also cover the privilege drop. */
#include "test_util.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/sysmacros.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "provision/proto/proto.h"

#define JOB_ID "job-test-1"

struct frame {
    uint8_t type;
    uint32_t len;
    uint8_t *data;
    uint64_t at_ms;
};

struct host {
    char *dir;
    char sock_path[256];
    char job_path[256];
    char workdir[256];
    char log_path[256];
    int lfd;
    int fd;
    pid_t pid;
    struct al_frame_decoder dec;
    struct frame *frames;
    size_t nframes, next;
    bool eof;
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int setup(void **state)
{
    struct host *h = calloc(1, sizeof(*h));
    h->dir = test_tmpdir("guest");
    assert_non_null(h->dir);
    snprintf(h->sock_path, sizeof(h->sock_path), "%s/port.sock", h->dir);
    snprintf(h->job_path, sizeof(h->job_path), "%s/job.tlv", h->dir);
    snprintf(h->workdir, sizeof(h->workdir), "%s/work", h->dir);
    snprintf(h->log_path, sizeof(h->log_path), "%s/helper.log", h->dir);
    h->lfd = h->fd = -1;
    *state = h;
    return 0;
}

static int teardown(void **state)
{
    struct host *h = *state;
    if (h->pid > 0) {
        kill(h->pid, SIGKILL);
        waitpid(h->pid, NULL, 0);
    }
    if (h->fd >= 0)
        close(h->fd);
    if (h->lfd >= 0)
        close(h->lfd);
    for (size_t i = 0; i < h->nframes; i++)
        free(h->frames[i].data);
    free(h->frames);
    al_frame_decoder_free(&h->dec);
    test_tmpdir_remove(h->dir);
    free(h);
    return 0;
}

static bool as_root(void)
{
    return geteuid() == 0;
}

/* The parts every job of these tests shares. */
static void job_common(struct al_tlv_buf *b, const struct host *h, bool with_id)
{
    if (with_id)
        assert_int_equal(al_tlv_add_str(b, AL_TLV_JOB_ID, JOB_ID), 0);
    if (as_root())
        assert_int_equal(al_tlv_add_str(b, AL_TLV_USER, "nobody"), 0);
    assert_int_equal(al_tlv_add_str(b, AL_TLV_WORKDIR, h->workdir), 0);
    assert_int_equal(al_tlv_add_str(b, AL_TLV_POWEROFF, "0"), 0);
}

static void job_script(struct al_tlv_buf *b, const struct host *h, const char *script)
{
    job_common(b, h, true);
    assert_int_equal(al_tlv_add_str(b, AL_TLV_SCRIPT, script), 0);
}

static void write_file(const char *path, const void *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    close(fd);
}

static char *read_file(const char *path, size_t *ret_len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap + 1);
    for (;;) {
        if (len == cap) {
            cap *= 2;
            buf = realloc(buf, cap + 1);
        }
        ssize_t n = read(fd, buf + len, cap - len);
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    buf[len] = '\0';
    if (ret_len)
        *ret_len = len;
    return buf;
}

/* Starts the helper; job = contents of the job file, or NULL (warm mode). */
static void host_start(struct host *h, const struct al_tlv_buf *job)
{
    if (job)
        write_file(h->job_path, job->data, job->len);
    h->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(h->lfd >= 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    assert_true(strlen(h->sock_path) < sizeof(sa.sun_path));
    memcpy(sa.sun_path, h->sock_path, strlen(h->sock_path) + 1);
    assert_int_equal(bind(h->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(h->lfd, 1), 0);

    char bin[512];
    const char *bd = getenv("AL_BUILD_DIR");
    snprintf(bin, sizeof(bin), "%s/agentlab-guest", bd ? bd : ".");
    h->pid = fork();
    assert_true(h->pid >= 0);
    if (h->pid == 0) {
        int log = open(h->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (log >= 0) {
            dup2(log, 1);
            dup2(log, 2);
        }
        execl(bin, "agentlab-guest", "--port", h->sock_path, "--job", h->job_path, "--no-poweroff",
              (char *)NULL);
        _exit(127);
    }
    struct pollfd p = {.fd = h->lfd, .events = POLLIN};
    assert_int_equal(poll(&p, 1, 10000), 1);
    h->fd = accept4(h->lfd, NULL, NULL, SOCK_CLOEXEC);
    assert_true(h->fd >= 0);
}

/* Reads once (waiting up to timeout_ms) and decodes what arrived. */
static bool host_read_more(struct host *h, int timeout_ms)
{
    if (h->eof)
        return false;
    struct pollfd p = {.fd = h->fd, .events = POLLIN};
    if (poll(&p, 1, timeout_ms) <= 0)
        return false;
    uint8_t buf[65536];
    ssize_t n = read(h->fd, buf, sizeof(buf));
    if (n <= 0) {
        h->eof = true;
        return false;
    }
    uint64_t at = now_ms();
    size_t off = 0;
    while (off < (size_t)n) {
        size_t used;
        struct al_frame f;
        int r = al_frame_decoder_feed(&h->dec, buf + off, (size_t)n - off, &used, &f);
        assert_true(r >= 0);
        off += used;
        if (r == 1) {
            h->frames = realloc(h->frames, (h->nframes + 1) * sizeof(*h->frames));
            struct frame *fr = &h->frames[h->nframes++];
            fr->type = f.type;
            fr->len = f.len;
            fr->data = malloc(f.len + 1);
            memcpy(fr->data, f.payload, f.len);
            fr->data[f.len] = '\0';
            fr->at_ms = at;
        }
    }
    return true;
}

/* Returns the next frame of `type` after the last one returned, consuming
 * everything before it; NULL after timeout_ms. */
static struct frame *host_wait_for(struct host *h, uint8_t type, int timeout_ms)
{
    uint64_t end = now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        while (h->next < h->nframes) {
            struct frame *f = &h->frames[h->next++];
            if (f->type == type)
                return f;
        }
        uint64_t now = now_ms();
        if (now >= end || h->eof)
            return NULL;
        host_read_more(h, (int)(end - now));
    }
}

static void host_send(struct host *h, uint8_t type, const void *data, size_t len)
{
    uint8_t *f;
    size_t n;
    assert_int_equal(al_frame_build(type, data, len, &f, &n), 0);
    assert_int_equal(write(h->fd, f, n), (ssize_t)n);
    free(f);
}

static int host_wait_helper(struct host *h, int timeout_ms)
{
    uint64_t end = now_ms() + (uint64_t)timeout_ms;
    int status;
    for (;;) {
        pid_t r = waitpid(h->pid, &status, WNOHANG);
        if (r == h->pid) {
            h->pid = 0;
            return status;
        }
        if (now_ms() >= end)
            fail_msg("helper did not exit within %d ms", timeout_ms);
        usleep(10000);
    }
}

/* Value of the first item with `tag` as a string, or NULL. */
static char *tlv_get(const struct frame *f, uint16_t tag)
{
    struct al_tlv_iter it;
    al_tlv_iter_init(&it, f->data, f->len);
    uint16_t t;
    const uint8_t *v;
    uint32_t l;
    while (al_tlv_next(&it, &t, &v, &l) == 1)
        if (t == tag)
            return strndup((const char *)v, l);
    return NULL;
}

static void assert_tlv(const struct frame *f, uint16_t tag, const char *want)
{
    char *v = tlv_get(f, tag);
    if (!want) {
        if (v)
            fail_msg("tag %u: unexpected value '%s'", tag, v);
        return;
    }
    if (!v)
        fail_msg("tag %u missing, want '%s'", tag, want);
    if (strcmp(v, want) != 0)
        fail_msg("tag %u: got '%s', want '%s'", tag, v, want);
    free(v);
}

/* Concatenation of all payloads of `type` received so far. */
static char *collect(const struct host *h, uint8_t type, size_t *ret_len)
{
    size_t len = 0;
    char *s = malloc(1);
    for (size_t i = 0; i < h->nframes; i++) {
        if (h->frames[i].type != type)
            continue;
        s = realloc(s, len + h->frames[i].len + 1);
        memcpy(s + len, h->frames[i].data, h->frames[i].len);
        len += h->frames[i].len;
    }
    s[len] = '\0';
    if (ret_len)
        *ret_len = len;
    return s;
}

static size_t count_frames(const struct host *h, uint8_t type)
{
    size_t n = 0;
    for (size_t i = 0; i < h->nframes; i++)
        n += h->frames[i].type == type;
    return n;
}

static ssize_t index_of(const struct host *h, uint8_t type)
{
    for (size_t i = 0; i < h->nframes; i++)
        if (h->frames[i].type == type)
            return (ssize_t)i;
    return -1;
}

/* Cold start: HELLO with the job id, then START. */
static void host_hello_start(struct host *h)
{
    struct frame *hello = host_wait_for(h, AL_FRAME_HELLO, 10000);
    assert_non_null(hello);
    assert_tlv(hello, AL_TLV_VERSION, "1");
    assert_tlv(hello, AL_TLV_JOB_ID, JOB_ID);
    char *up = tlv_get(hello, AL_TLV_UPTIME_MS);
    assert_non_null(up);
    uint64_t v;
    assert_int_equal(al_tlv_value_u64((const uint8_t *)up, (uint32_t)strlen(up), &v), 0);
    free(up);
    host_send(h, AL_FRAME_START, NULL, 0);
}

static struct frame *host_wait_exit(struct host *h, int timeout_ms)
{
    struct frame *f = host_wait_for(h, AL_FRAME_EXIT, timeout_ms);
    if (!f) {
        char *log = read_file(h->log_path, NULL);
        fail_msg("no EXIT frame; helper log:\n%s", log ? log : "");
    }
    return f;
}

/* Live (non-zombie) processes in a process group, from /proc. */
static int live_in_pgroup(pid_t pgid)
{
    DIR *d = opendir("/proc");
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        char path[300];
        snprintf(path, sizeof(path), "/proc/%s/stat", e->d_name);
        char *stat = read_file(path, NULL);
        if (!stat)
            continue;
        char *rp = strrchr(stat, ')');
        char state;
        int ppid, pgrp;
        if (rp && sscanf(rp + 1, " %c %d %d", &state, &ppid, &pgrp) == 3 && pgrp == pgid &&
            state != 'Z')
            n++;
        free(stat);
    }
    closedir(d);
    return n;
}

static pid_t read_pid_file(const char *path)
{
    for (int i = 0; i < 200; i++) {
        char *s = read_file(path, NULL);
        if (s && s[0]) {
            long v = strtol(s, NULL, 10);
            free(s);
            return (pid_t)v;
        }
        free(s);
        usleep(10000);
    }
    fail_msg("no pid file %s", path);
    return -1;
}

static void assert_pgroup_gone(pid_t pgid)
{
    for (int i = 0; i < 300; i++) {
        if (live_in_pgroup(pgid) == 0)
            return;
        usleep(10000);
    }
    fail_msg("process group %d still has live members", (int)pgid);
}

/* ---- cases ---- */

static void test_argv_exit_code(void **state)
{
    struct host *h = *state;
    struct al_tlv_buf job = {0};
    job_common(&job, h, true);
    assert_int_equal(al_tlv_add_str(&job, AL_TLV_ARGV, "sh"), 0);
    assert_int_equal(al_tlv_add_str(&job, AL_TLV_ARGV, "-c"), 0);
    assert_int_equal(al_tlv_add_str(&job, AL_TLV_ARGV, "echo hello; echo oops >&2; id -u; exit 3"),
                     0);
    host_start(h, &job);
    al_tlv_buf_free(&job);
    host_hello_start(h);
    struct frame *exit = host_wait_exit(h, 20000);
    assert_tlv(exit, AL_TLV_EXIT_CODE, "3");
    assert_tlv(exit, AL_TLV_REASON, "exited");
    assert_tlv(exit, AL_TLV_TIMED_OUT, NULL);
    assert_tlv(exit, AL_TLV_SIGNAL, NULL);

    char *out = collect(h, AL_FRAME_STDOUT, NULL);
    char *err = collect(h, AL_FRAME_STDERR, NULL);
    char want[64];
    snprintf(want, sizeof(want), "hello\n%u\n", as_root() ? 65534u : (unsigned)geteuid());
    assert_string_equal(out, want);
    assert_string_equal(err, "oops\n");
    free(out);
    free(err);
    /* order: STARTED before any output, EXIT last, no artifacts asked */
    ssize_t started = index_of(h, AL_FRAME_STARTED);
    assert_true(started >= 0);
    assert_true(started < index_of(h, AL_FRAME_STDOUT));
    assert_true(started < index_of(h, AL_FRAME_STDERR));
    assert_int_equal(index_of(h, AL_FRAME_EXIT), (ssize_t)h->nframes - 1);
    assert_int_equal(count_frames(h, AL_FRAME_ARTIFACT_END), 0);
    int status = host_wait_helper(h, 10000);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    if (as_root()) {
        struct stat st;
        assert_int_equal(stat(h->workdir, &st), 0);
        assert_int_equal(st.st_uid, 65534);
    }
}

static void test_output_is_live(void **state)
{
    struct host *h = *state;
    struct al_tlv_buf job = {0};
    job_script(&job, h, "echo first; sleep 1; echo second");
    host_start(h, &job);
    al_tlv_buf_free(&job);
    host_hello_start(h);
    struct frame *first = host_wait_for(h, AL_FRAME_STDOUT, 10000);
    assert_non_null(first);
    assert_string_equal((char *)first->data, "first\n");
    uint64_t first_at = first->at_ms;
    assert_int_equal(count_frames(h, AL_FRAME_EXIT), 0);
    struct frame *exit = host_wait_exit(h, 10000);
    assert_tlv(exit, AL_TLV_EXIT_CODE, "0");
    /* the first line arrived while the job was still sleeping */
    assert_true(exit->at_ms >= first_at + 700);
    char *out = collect(h, AL_FRAME_STDOUT, NULL);
    assert_string_equal(out, "first\nsecond\n");
    free(out);
    assert_int_equal(WEXITSTATUS(host_wait_helper(h, 10000)), 0);
}

static void test_script_env_and_secrets(void **state)
{
    struct host *h = *state;
    static const char secret[] = "s3cr3t-v4lue-9f2c";
    struct al_tlv_buf job = {0};
    job_script(&job, h,
               "echo \"$GREETING:$API_TOKEN:$HOME:$AGENTLAB_JOB_ID\"\n"
               "test \"$(pwd)\" = \"$EXPECT_PWD\"\n"
               "echo done\n");
    assert_int_equal(al_tlv_add_str(&job, AL_TLV_ENV, "GREETING=hi there"), 0);
    char pwd[300];
    snprintf(pwd, sizeof(pwd), "EXPECT_PWD=%s", h->workdir);
    assert_int_equal(al_tlv_add_str(&job, AL_TLV_ENV, pwd), 0);
    /* an ENV item the secret must override */
    assert_int_equal(al_tlv_add_str(&job, AL_TLV_ENV, "API_TOKEN=not-the-secret"), 0);
    host_start(h, &job);
    al_tlv_buf_free(&job);
    assert_non_null(host_wait_for(h, AL_FRAME_HELLO, 10000));
    struct al_tlv_buf sec = {0};
    char item[100];
    snprintf(item, sizeof(item), "API_TOKEN=%s", secret);
    assert_int_equal(al_tlv_add_str(&sec, AL_TLV_SECRET_ENV, item), 0);
    host_send(h, AL_FRAME_SECRETS, sec.data, sec.len);
    al_tlv_buf_free(&sec);
    host_send(h, AL_FRAME_START, NULL, 0);

    struct frame *exit = host_wait_exit(h, 10000);
    assert_tlv(exit, AL_TLV_EXIT_CODE, "0");
    char *out = collect(h, AL_FRAME_STDOUT, NULL);
    const char *home = as_root() ? "/nonexistent" : getenv("HOME");
    char want[512];
    snprintf(want, sizeof(want), "hi there:%s:%s:%s\ndone\n", secret, home ? home : "", JOB_ID);
    if (as_root() || home)
        assert_string_equal(out, want);
    free(out);
    assert_int_equal(WEXITSTATUS(host_wait_helper(h, 10000)), 0);

    /* the helper never printed the secret, nor sent it anywhere but the job */
    char *log = read_file(h->log_path, NULL);
    assert_non_null(log);
    assert_null(strstr(log, secret));
    free(log);
    char *diag = collect(h, AL_FRAME_DIAG, NULL);
    assert_null(strstr(diag, secret));
    free(diag);
}

static void test_timeout(void **state)
{
    struct host *h = *state;
    struct al_tlv_buf job = {0};
    job_script(&job, h, "echo $$ > pgid; sleep 60 & sleep 60");
    assert_int_equal(al_tlv_add_str(&job, AL_TLV_TIMEOUT_S, "1"), 0);
    host_start(h, &job);
    al_tlv_buf_free(&job);
    uint64_t t0 = now_ms();
    host_hello_start(h);
    struct frame *exit = host_wait_exit(h, 15000);
    uint64_t took = now_ms() - t0;
    assert_tlv(exit, AL_TLV_EXIT_CODE, "124");
    assert_tlv(exit, AL_TLV_TIMED_OUT, "1");
    assert_tlv(exit, AL_TLV_REASON, "timeout");
    assert_true(took >= 900);
    assert_true(took < 8000);
    /* heartbeats flowed while it ran */
    assert_true(count_frames(h, AL_FRAME_HEARTBEAT) >= 1);
    char path[300];
    snprintf(path, sizeof(path), "%s/pgid", h->workdir);
    pid_t pgid = read_pid_file(path);
    assert_true(pgid > 1);
    assert_pgroup_gone(pgid);
    assert_int_equal(WEXITSTATUS(host_wait_helper(h, 10000)), 0);
}

static void test_cancel(void **state)
{
    struct host *h = *state;
    struct al_tlv_buf job = {0};
    job_script(&job, h, "trap '' TERM; echo ready; while :; do sleep 0.1; done");
    host_start(h, &job);
    al_tlv_buf_free(&job);
    host_hello_start(h);
    assert_non_null(host_wait_for(h, AL_FRAME_STDOUT, 10000));
    uint64_t t0 = now_ms();
    host_send(h, AL_FRAME_CANCEL, NULL, 0);
    struct frame *exit = host_wait_exit(h, 15000);
    uint64_t took = now_ms() - t0;
    assert_tlv(exit, AL_TLV_EXIT_CODE, "130");
    assert_tlv(exit, AL_TLV_REASON, "canceled");
    assert_tlv(exit, AL_TLV_TIMED_OUT, NULL);
    /* the shell ignores SIGTERM: SIGKILL came after the 5 s grace */
    assert_true(took >= 4500);
    assert_int_equal(WEXITSTATUS(host_wait_helper(h, 10000)), 0);
}

static char *artifact_entry(const void *tar, size_t len, const char *name, size_t *ret_len,
                            unsigned *ret_entries)
{
    struct archive *a = archive_read_new();
    archive_read_support_format_tar(a);
    assert_int_equal(archive_read_open_memory(a, tar, len), ARCHIVE_OK);
    struct archive_entry *e;
    char *found = NULL;
    unsigned entries = 0;
    while (archive_read_next_header(a, &e) == ARCHIVE_OK) {
        entries++;
        if (strcmp(archive_entry_pathname(e), name) != 0)
            continue;
        size_t size = (size_t)archive_entry_size(e);
        found = malloc(size + 1);
        assert_int_equal(archive_read_data(a, found, size), (ssize_t)size);
        *ret_len = size;
    }
    archive_read_free(a);
    *ret_entries = entries;
    return found;
}

static void test_artifacts(void **state)
{
    struct host *h = *state;
    struct al_tlv_buf job = {0};
    job_script(&job, h,
               "mkdir -p out; head -c 300000 /dev/urandom > out/data.bin;"
               "printf 'x' > -dash.txt; echo made");
    assert_int_equal(al_tlv_add_str(&job, AL_TLV_ARTIFACT, "out/data.bin"), 0);
    assert_int_equal(al_tlv_add_str(&job, AL_TLV_ARTIFACT, "nope.txt"), 0);
    assert_int_equal(al_tlv_add_str(&job, AL_TLV_ARTIFACT, "-dash.txt"), 0);
    host_start(h, &job);
    al_tlv_buf_free(&job);
    host_hello_start(h);
    struct frame *exit = host_wait_exit(h, 20000);
    assert_tlv(exit, AL_TLV_EXIT_CODE, "0");
    assert_tlv(exit, AL_TLV_REASON, "exited");

    ssize_t end_idx = index_of(h, AL_FRAME_ARTIFACT_END);
    assert_true(end_idx >= 0);
    assert_true(end_idx < index_of(h, AL_FRAME_EXIT));
    assert_true(index_of(h, AL_FRAME_ARTIFACT) < end_idx);
    struct frame *end = &h->frames[end_idx];
    size_t tar_len;
    char *tar = collect(h, AL_FRAME_ARTIFACT, &tar_len);
    char bytes[32];
    snprintf(bytes, sizeof(bytes), "%zu", tar_len);
    assert_tlv(end, AL_TLV_BYTES, bytes);
    assert_tlv(end, AL_TLV_FILES, "2");
    assert_tlv(end, AL_TLV_ERROR, "missing: nope.txt");

    char path[300];
    snprintf(path, sizeof(path), "%s/out/data.bin", h->workdir);
    size_t want_len;
    char *want = read_file(path, &want_len);
    assert_non_null(want);
    assert_int_equal(want_len, 300000);
    size_t got_len = 0;
    unsigned entries;
    char *got = artifact_entry(tar, tar_len, "out/data.bin", &got_len, &entries);
    assert_non_null(got);
    assert_int_equal(entries, 2);
    assert_int_equal(got_len, want_len);
    assert_memory_equal(got, want, want_len);
    free(got);
    got = artifact_entry(tar, tar_len, "-dash.txt", &got_len, &entries);
    assert_non_null(got);
    assert_int_equal(got_len, 1);
    free(got);
    free(want);
    free(tar);
    assert_int_equal(WEXITSTATUS(host_wait_helper(h, 10000)), 0);
}

static void test_artifact_limit(void **state)
{
    struct host *h = *state;
    struct al_tlv_buf job = {0};
    job_script(&job, h, "head -c 200000 /dev/zero > big.bin; exit 4");
    assert_int_equal(al_tlv_add_str(&job, AL_TLV_ARTIFACT, "big.bin"), 0);
    assert_int_equal(al_tlv_add_str(&job, AL_TLV_MAX_ARTIFACT_BYTES, "5000"), 0);
    host_start(h, &job);
    al_tlv_buf_free(&job);
    host_hello_start(h);
    struct frame *exit = host_wait_exit(h, 20000);
    assert_tlv(exit, AL_TLV_EXIT_CODE, "4");
    struct frame *end = &h->frames[index_of(h, AL_FRAME_ARTIFACT_END)];
    size_t tar_len;
    free(collect(h, AL_FRAME_ARTIFACT, &tar_len));
    assert_int_equal(tar_len, 5000);
    assert_tlv(end, AL_TLV_BYTES, "5000");
    assert_tlv(end, AL_TLV_ERROR, "limit");
    assert_int_equal(WEXITSTATUS(host_wait_helper(h, 10000)), 0);
}

/* A tar stream in memory built with libarchive. */
struct tar_member {
    const char *name;
    mode_t type;
    const char *content; /* or symlink target */
};

static void *make_tar(const struct tar_member *m, size_t n, size_t *ret_len)
{
    size_t cap = 1 << 20, used = 0;
    void *buf = malloc(cap);
    struct archive *a = archive_write_new();
    archive_write_set_format_pax_restricted(a);
    assert_int_equal(archive_write_open_memory(a, buf, cap, &used), ARCHIVE_OK);
    for (size_t i = 0; i < n; i++) {
        struct archive_entry *e = archive_entry_new();
        archive_entry_set_pathname(e, m[i].name);
        archive_entry_set_filetype(e, m[i].type);
        archive_entry_set_perm(e, m[i].type == AE_IFDIR ? 0755 : 0644);
        if (m[i].type == AE_IFLNK)
            archive_entry_set_symlink(e, m[i].content);
        if (m[i].type == AE_IFCHR)
            archive_entry_set_rdev(e, makedev(1, 3));
        size_t len = m[i].type == AE_IFREG && m[i].content ? strlen(m[i].content) : 0;
        archive_entry_set_size(e, (la_int64_t)len);
        assert_int_equal(archive_write_header(a, e), ARCHIVE_OK);
        if (len)
            assert_int_equal(archive_write_data(a, m[i].content, len), (ssize_t)len);
        archive_entry_free(e);
    }
    assert_int_equal(archive_write_close(a), ARCHIVE_OK);
    archive_write_free(a);
    *ret_len = used;
    return buf;
}

/* Sends a work dir tar in small frames, so headers straddle frames. */
static void send_workdir(struct host *h, const void *tar, size_t len)
{
    const uint8_t *p = tar;
    for (size_t off = 0; off < len; off += 700) {
        size_t n = len - off < 700 ? len - off : 700;
        host_send(h, AL_FRAME_WORKDIR, p + off, n);
    }
    host_send(h, AL_FRAME_WORKDIR_END, NULL, 0);
}

static void test_workdir_unpacked(void **state)
{
    struct host *h = *state;
    char longname[300];
    snprintf(longname, sizeof(longname), "deep/%0200d/file.txt", 0);
    char longdir[300];
    snprintf(longdir, sizeof(longdir), "deep/%0200d", 0);
    const struct tar_member members[] = {
            {"hello.txt", AE_IFREG, "hello from the host\n"},
            {"sub", AE_IFDIR, NULL},
            {"sub/dir", AE_IFDIR, NULL},
            {"sub/dir/file", AE_IFREG, "nested\n"},
            {"sub/link", AE_IFLNK, "dir/file"},
            {"deep", AE_IFDIR, NULL},
            {longdir, AE_IFDIR, NULL},
            {longname, AE_IFREG, "long\n"},
    };
    size_t tar_len;
    void *tar = make_tar(members, sizeof(members) / sizeof(members[0]), &tar_len);

    struct al_tlv_buf job = {0};
    job_script(&job, h, "cat hello.txt sub/link deep/*/file.txt; stat -c %U hello.txt");
    assert_int_equal(al_tlv_add_str(&job, AL_TLV_HAS_WORKDIR, "1"), 0);
    host_start(h, &job);
    al_tlv_buf_free(&job);
    assert_non_null(host_wait_for(h, AL_FRAME_HELLO, 10000));
    send_workdir(h, tar, tar_len);
    free(tar);
    host_send(h, AL_FRAME_START, NULL, 0);
    struct frame *exit = host_wait_exit(h, 20000);
    assert_tlv(exit, AL_TLV_EXIT_CODE, "0");
    char *out = collect(h, AL_FRAME_STDOUT, NULL);
    char want[200];
    snprintf(want, sizeof(want), "hello from the host\nnested\nlong\n%s\n",
             as_root()        ? "nobody"
             : getenv("USER") ? getenv("USER")
                              : "");
    if (as_root() || getenv("USER"))
        assert_string_equal(out, want);
    free(out);
    assert_int_equal(WEXITSTATUS(host_wait_helper(h, 10000)), 0);
}

/* The helper must refuse the stream, never start the job, write nothing
 * outside the work dir. */
static void expect_workdir_refused(struct host *h, const struct tar_member *m, size_t n)
{
    size_t tar_len;
    void *tar = make_tar(m, n, &tar_len);
    struct al_tlv_buf job = {0};
    job_script(&job, h, "echo must-not-run");
    assert_int_equal(al_tlv_add_str(&job, AL_TLV_HAS_WORKDIR, "1"), 0);
    host_start(h, &job);
    al_tlv_buf_free(&job);
    assert_non_null(host_wait_for(h, AL_FRAME_HELLO, 10000));
    send_workdir(h, tar, tar_len);
    free(tar);
    host_send(h, AL_FRAME_START, NULL, 0);
    struct frame *exit = host_wait_exit(h, 20000);
    assert_tlv(exit, AL_TLV_EXIT_CODE, "125");
    char *reason = tlv_get(exit, AL_TLV_REASON);
    assert_non_null(reason);
    assert_true(strncmp(reason, "error: work dir refused", 23) == 0);
    free(reason);
    assert_int_equal(count_frames(h, AL_FRAME_STARTED), 0);
    assert_int_equal(count_frames(h, AL_FRAME_STDOUT), 0);
    assert_true(count_frames(h, AL_FRAME_DIAG) >= 1);
    host_wait_helper(h, 10000);
}

static void test_workdir_malicious(void **state)
{
    struct host *h = *state;
    char outside[300], abs_name[300];
    snprintf(outside, sizeof(outside), "%s/escape", h->dir);
    snprintf(abs_name, sizeof(abs_name), "%s/abs-target", h->dir);

    const struct tar_member dotdot[] = {
            {"ok.txt", AE_IFREG, "fine\n"},
            {"../escape", AE_IFREG, "pwned\n"},
    };
    expect_workdir_refused(h, dotdot, 2);
    assert_int_equal(access(outside, F_OK), -1);
    teardown(state);
    setup(state);
    h = *state;

    const struct tar_member absolute[] = {{abs_name, AE_IFREG, "pwned\n"}};
    expect_workdir_refused(h, absolute, 1);
    assert_int_equal(access(abs_name, F_OK), -1);
    /* tar would have stripped the "/" and written it inside: not even that */
    char stripped[600];
    snprintf(stripped, sizeof(stripped), "%s%s", h->workdir, abs_name);
    assert_int_equal(access(stripped, F_OK), -1);
    teardown(state);
    setup(state);
    h = *state;

    const struct tar_member symlink_escape[] = {
            {"link", AE_IFLNK, ".."},
            {"link/escape", AE_IFREG, "pwned\n"},
    };
    expect_workdir_refused(h, symlink_escape, 2);
    assert_int_equal(access(outside, F_OK), -1);
    teardown(state);
    setup(state);
    h = *state;

    const struct tar_member device[] = {{"null", AE_IFCHR, NULL}};
    expect_workdir_refused(h, device, 1);
}

static void test_warm_mode(void **state)
{
    struct host *h = *state;
    host_start(h, NULL);
    struct frame *hello = host_wait_for(h, AL_FRAME_HELLO, 10000);
    assert_non_null(hello);
    assert_tlv(hello, AL_TLV_VERSION, "1");
    assert_tlv(hello, AL_TLV_JOB_ID, NULL);
    /* HELLO repeats until the host speaks */
    assert_non_null(host_wait_for(h, AL_FRAME_HELLO, 3000));

    struct al_tlv_buf job = {0};
    job_common(&job, h, true);
    assert_int_equal(al_tlv_add_str(&job, AL_TLV_ARGV, "echo"), 0);
    assert_int_equal(al_tlv_add_str(&job, AL_TLV_ARGV, "warm"), 0);
    host_send(h, AL_FRAME_JOB, job.data, job.len);
    al_tlv_buf_free(&job);
    host_send(h, AL_FRAME_START, NULL, 0);
    struct frame *exit = host_wait_exit(h, 10000);
    assert_tlv(exit, AL_TLV_EXIT_CODE, "0");
    char *out = collect(h, AL_FRAME_STDOUT, NULL);
    assert_string_equal(out, "warm\n");
    free(out);
    /* no HELLO after the host's first frame */
    size_t hellos = count_frames(h, AL_FRAME_HELLO);
    assert_true(hellos >= 2 && hellos <= 4);
    assert_true(index_of(h, AL_FRAME_STARTED) > (ssize_t)(hellos - 1));
    assert_int_equal(WEXITSTATUS(host_wait_helper(h, 10000)), 0);
}

static void test_missing_program(void **state)
{
    struct host *h = *state;
    struct al_tlv_buf job = {0};
    job_common(&job, h, true);
    assert_int_equal(al_tlv_add_str(&job, AL_TLV_ARGV, "/no/such/program"), 0);
    host_start(h, &job);
    al_tlv_buf_free(&job);
    host_hello_start(h);
    struct frame *exit = host_wait_exit(h, 10000);
    assert_tlv(exit, AL_TLV_EXIT_CODE, "127");
    assert_tlv(exit, AL_TLV_REASON, "exited");
    char *err = collect(h, AL_FRAME_STDERR, NULL);
    assert_non_null(strstr(err, "/no/such/program"));
    free(err);
    host_wait_helper(h, 10000);
}

static void test_bad_job_and_protocol(void **state)
{
    struct host *h = *state;
    /* a job with neither ARGV nor SCRIPT */
    struct al_tlv_buf job = {0};
    job_common(&job, h, true);
    host_start(h, &job);
    al_tlv_buf_free(&job);
    struct frame *exit = host_wait_exit(h, 10000);
    assert_tlv(exit, AL_TLV_EXIT_CODE, "125");
    char *reason = tlv_get(exit, AL_TLV_REASON);
    assert_non_null(strstr(reason, "neither ARGV nor SCRIPT"));
    free(reason);
    host_wait_helper(h, 10000);
    teardown(state);
    setup(state);
    h = *state;

    /* garbage from the host while the job runs: the job is stopped */
    job = (struct al_tlv_buf){0};
    job_script(&job, h, "sleep 30");
    host_start(h, &job);
    al_tlv_buf_free(&job);
    host_hello_start(h);
    assert_non_null(host_wait_for(h, AL_FRAME_STARTED, 10000));
    static const uint8_t garbage[] = {0x7f, 1, 2, 3, 4, 5, 6, 7};
    assert_int_equal(write(h->fd, garbage, sizeof(garbage)), (ssize_t)sizeof(garbage));
    exit = host_wait_exit(h, 15000);
    reason = tlv_get(exit, AL_TLV_REASON);
    assert_non_null(strstr(reason, "error: protocol"));
    free(reason);
    host_wait_helper(h, 10000);
}

/* A fast writer and a host that does not read for a while: nothing is lost
 * or reordered, the helper holds the workload back instead. */
static void test_backpressure_keeps_order(void **state)
{
    struct host *h = *state;
    struct al_tlv_buf job = {0};
    job_script(&job, h, "seq 1 1000000; echo tail >&2");
    host_start(h, &job);
    al_tlv_buf_free(&job);
    host_hello_start(h);
    usleep(1500 * 1000);
    struct frame *exit = host_wait_exit(h, 60000);
    assert_tlv(exit, AL_TLV_EXIT_CODE, "0");
    size_t len;
    char *out = collect(h, AL_FRAME_STDOUT, &len);
    size_t pos = 0;
    for (unsigned i = 1; i <= 1000000; i++) {
        char line[16];
        int n = snprintf(line, sizeof(line), "%u\n", i);
        if (pos + (size_t)n > len || memcmp(out + pos, line, (size_t)n) != 0)
            fail_msg("stdout differs at line %u (byte %zu)", i, pos);
        pos += (size_t)n;
    }
    assert_int_equal(pos, len);
    free(out);
    char *err = collect(h, AL_FRAME_STDERR, NULL);
    assert_string_equal(err, "tail\n");
    free(err);
    assert_int_equal(WEXITSTATUS(host_wait_helper(h, 10000)), 0);
}

/* Longer than one exec argument may be: run from a tmpfs file instead. */
static void test_long_script(void **state)
{
    struct host *h = *state;
    size_t pad = 200 * 1024;
    char *script = malloc(pad + 64);
    memset(script, '#', pad);
    script[0] = ':';
    script[1] = ' ';
    script[pad - 1] = '\n';
    static const char tail[] = "echo long-ok; echo \"$0\" >&2\n";
    memcpy(script + pad, tail, sizeof(tail));
    struct al_tlv_buf job = {0};
    job_script(&job, h, script);
    free(script);
    host_start(h, &job);
    al_tlv_buf_free(&job);
    host_hello_start(h);
    struct frame *exit = host_wait_exit(h, 20000);
    assert_tlv(exit, AL_TLV_EXIT_CODE, "0");
    char *out = collect(h, AL_FRAME_STDOUT, NULL);
    assert_string_equal(out, "long-ok\n");
    free(out);
    /* $0 is the script file, which is gone after the job */
    char *err = collect(h, AL_FRAME_STDERR, NULL);
    size_t el = strlen(err);
    assert_true(el > 1 && err[el - 1] == '\n');
    err[el - 1] = '\0';
    assert_non_null(strstr(err, "job-script."));
    assert_int_equal(access(err, F_OK), -1);
    free(err);
    assert_int_equal(WEXITSTATUS(host_wait_helper(h, 10000)), 0);
}

static void test_host_gone(void **state)
{
    struct host *h = *state;
    struct al_tlv_buf job = {0};
    job_script(&job, h, "echo $$ > pgid; while :; do echo tick; sleep 0.05; done");
    host_start(h, &job);
    al_tlv_buf_free(&job);
    host_hello_start(h);
    assert_non_null(host_wait_for(h, AL_FRAME_STDOUT, 10000));
    close(h->fd);
    h->fd = -1;
    int status = host_wait_helper(h, 15000);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 1);
    char path[300];
    snprintf(path, sizeof(path), "%s/pgid", h->workdir);
    assert_pgroup_gone(read_pid_file(path));
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_argv_exit_code, setup, teardown),
            cmocka_unit_test_setup_teardown(test_output_is_live, setup, teardown),
            cmocka_unit_test_setup_teardown(test_script_env_and_secrets, setup, teardown),
            cmocka_unit_test_setup_teardown(test_timeout, setup, teardown),
            cmocka_unit_test_setup_teardown(test_cancel, setup, teardown),
            cmocka_unit_test_setup_teardown(test_artifacts, setup, teardown),
            cmocka_unit_test_setup_teardown(test_artifact_limit, setup, teardown),
            cmocka_unit_test_setup_teardown(test_workdir_unpacked, setup, teardown),
            cmocka_unit_test_setup_teardown(test_workdir_malicious, setup, teardown),
            cmocka_unit_test_setup_teardown(test_warm_mode, setup, teardown),
            cmocka_unit_test_setup_teardown(test_missing_program, setup, teardown),
            cmocka_unit_test_setup_teardown(test_bad_job_and_protocol, setup, teardown),
            cmocka_unit_test_setup_teardown(test_backpressure_keeps_order, setup, teardown),
            cmocka_unit_test_setup_teardown(test_long_script, setup, teardown),
            cmocka_unit_test_setup_teardown(test_host_gone, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
