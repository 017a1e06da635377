/* agentlab-guest: the in-guest helper.
 *
 * Runs one job inside a throwaway VM and talks to the host over the
 * virtio-serial port org.agentlab.job with the frame protocol of
 * provision/proto/proto.h. One single-threaded poll(2) loop serves the port (both
 * directions), a signalfd (SIGCHLD, SIGTERM, SIGINT, SIGHUP), the workload's
 * stdout and stderr pipes, and the pipes of the two tar helpers (work dir
 * unpack, artifact pack); timers are poll timeouts on CLOCK_MONOTONIC.
 *
 * Phases: SETUP (HELLO, job, secrets, work dir, START) -> RUNNING (workload)
 * -> ARTIFACTS -> FINISHING (EXIT queued, draining the port) -> DONE, then
 * power off unless told not to.
 *
 * Links only libc. Secret values are kept in memory and in the workload's
 * environment only; the helper never prints them.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "runner/base/error.h"
#include "runner/base/macro.h"
#include "provision/guest/job.h"
#include "provision/guest/port.h"
#include "provision/proto/proto.h"
#include "provision/guest/spawn.h"
#include "provision/guest/tarscan.h"

#define DEFAULT_PORT        "/dev/virtio-ports/" AL_PROTO_PORT_NAME
#define PORT_WAIT_MS        30000u
#define HELLO_INTERVAL_MS   1000u
#define KILL_GRACE_MS       5000u /* SIGTERM -> SIGKILL */
#define PIPE_DRAIN_MS       2000u /* after the workload's main process ended */
#define HOST_ABSENT_BACKOFF 250u  /* char device reporting POLLHUP */
/* Output is queued and the port has taken nothing for this long: treat the
 * host as gone. Applies once the host has spoken or the EXIT is queued;
 * before that a warm VM may legitimately wait a long time for its host. */
#define PORT_STALL_MS      120000u
#define POWEROFF_LINGER_MS 2000u
#define READ_CHUNK         (64u * 1024u)
#define COLLECT_MAX        4096u
/* A script longer than this does not fit in one exec argument
 * (MAX_ARG_STRLEN is 128 KiB); it is run from a file on tmpfs instead. */
#define SCRIPT_ARG_MAX (100u * 1024u)
#define EXIT_INFRA     125

enum phase { PHASE_SETUP, PHASE_RUNNING, PHASE_ARTIFACTS, PHASE_FINISHING, PHASE_DONE };

enum end_reason { END_EXITED, END_TIMEOUT, END_CANCELED, END_ERROR };

/* Bytes read from a helper pipe that only matter as a message. */
struct collector {
    int fd;
    char buf[COLLECT_MAX];
    size_t len;
};

struct wqueue {
    uint8_t *data;
    size_t len, off, cap;
};

struct helper {
    /* options */
    const char *port_path;
    const char *job_path;
    bool no_poweroff;

    struct port port;
    struct al_frame_decoder dec;
    bool port_in_failed; /* decoder failed or socket EOF: stop reading */
    uint64_t port_retry_at;
    uint64_t port_progress_at; /* last write progress, or when output got queued */
    int sig_fd;
    enum phase phase;
    bool host_spoke;
    uint64_t next_hello;
    uint64_t next_heartbeat;

    /* the job */
    struct guest_job job;
    bool have_job;
    struct guest_user user;
    char *workdir;
    bool start_received;

    /* work dir unpack */
    bool untar_started, workdir_end, untar_checked;
    pid_t untar_pid;
    bool untar_reaped;
    int untar_status;
    int untar_in;
    struct wqueue wq;
    struct tar_scan untar_scan;
    struct collector untar_err;

    /* the workload */
    pid_t pid;
    bool reaped;
    int status;
    int out_fd, err_fd;
    uint64_t deadline, kill_at, drain_until;
    bool killing, killed_hard;
    enum end_reason reason;
    char *error_text;
    char *script_file;
    int exit_code;
    int exit_signal;

    /* artifacts */
    pid_t art_pid;
    bool art_reaped;
    int art_status;
    int art_fd;
    struct collector art_err, art_missing;
    struct tar_scan art_scan;
    uint64_t art_bytes;
    bool art_limit, art_canceled;

    bool exit_queued;
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void note(const char *fmt, ...) _printf_(1, 2);

static void note(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("agentlab-guest: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void flush_port(struct helper *h);

static void send_frame(struct helper *h, uint8_t type, const void *data, size_t len)
{
    if (port_backlog(&h->port) == 0)
        h->port_progress_at = now_ms();
    if (port_send(&h->port, type, data, len) == 0)
        flush_port(h);
}

static void send_tlv(struct helper *h, uint8_t type, struct al_tlv_buf *b, int build_result)
{
    if (build_result == 0)
        send_frame(h, type, b->data, b->len);
    else
        note("cannot build frame %u: %s", type, strerror(-build_result));
    al_tlv_buf_free(b);
}

/* A message from the helper itself: on its stderr (the guest console) and
 * to the host as DIAG. Callers never pass secret values. */
static void diag(struct helper *h, const char *fmt, ...) _printf_(2, 3);

static void diag(struct helper *h, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    /* a longer message is cut, which is fine for a diagnostic */
    note("%s", msg);
    struct al_tlv_buf b = {0};
    send_tlv(h, AL_FRAME_DIAG, &b, al_tlv_add_str(&b, AL_TLV_REASON, msg));
}

static void collector_init(struct collector *c)
{
    c->fd = -1;
    c->len = 0;
    c->buf[0] = '\0';
}

/* Reads what is there; returns false at EOF or error (fd closed then). */
static bool collector_read(struct collector *c)
{
    char tmp[1024];
    ssize_t n = read(c->fd, tmp, sizeof(tmp));
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return true;
    if (n <= 0) {
        close(c->fd);
        c->fd = -1;
        return false;
    }
    size_t room = COLLECT_MAX - 1 - c->len;
    size_t take = (size_t)n < room ? (size_t)n : room;
    memcpy(c->buf + c->len, tmp, take);
    c->len += take;
    c->buf[c->len] = '\0';
    return true;
}

static void collector_close(struct collector *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

/* First line of collected text, for a one-line reason. */
static const char *first_line(struct collector *c)
{
    char *nl = strchr(c->buf, '\n');
    if (nl)
        *nl = '\0';
    return c->buf;
}

static int make_pipe(int fds[2], bool nonblock_read, bool nonblock_write)
{
    if (pipe2(fds, O_CLOEXEC) < 0)
        return -errno;
    if (nonblock_read)
        fcntl(fds[0], F_SETFL, O_NONBLOCK);
    if (nonblock_write)
        fcntl(fds[1], F_SETFL, O_NONBLOCK);
    return 0;
}

/* ---- frames to the host ---- */

static uint64_t uptime_ms(void)
{
    char buf[64];
    int fd = open("/proc/uptime", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    uint64_t secs = 0, frac = 0, scale = 1000;
    const char *p = buf;
    for (; *p >= '0' && *p <= '9'; p++)
        secs = secs * 10 + (uint64_t)(*p - '0');
    if (*p == '.')
        for (p++; *p >= '0' && *p <= '9' && scale > 1; p++) {
            scale /= 10;
            frac += (uint64_t)(*p - '0') * scale;
        }
    return secs * 1000 + frac;
}

static void send_hello(struct helper *h)
{
    struct al_tlv_buf b = {0};
    int r = al_tlv_add_u64(&b, AL_TLV_VERSION, AL_PROTO_VERSION);
    if (r == 0 && h->have_job && h->job.job_id)
        r = al_tlv_add_str(&b, AL_TLV_JOB_ID, h->job.job_id);
    if (r == 0)
        r = al_tlv_add_u64(&b, AL_TLV_UPTIME_MS, uptime_ms());
    send_tlv(h, AL_FRAME_HELLO, &b, r);
    h->next_hello = now_ms() + HELLO_INTERVAL_MS;
}

static void send_exit(struct helper *h, int code, int sig, bool timed_out, const char *reason)
{
    struct al_tlv_buf b = {0};
    int r = al_tlv_add_u64(&b, AL_TLV_EXIT_CODE, (uint64_t)code);
    if (r == 0 && sig > 0)
        r = al_tlv_add_u64(&b, AL_TLV_SIGNAL, (uint64_t)sig);
    if (r == 0 && timed_out)
        r = al_tlv_add_str(&b, AL_TLV_TIMED_OUT, "1");
    if (r == 0)
        r = al_tlv_add_str(&b, AL_TLV_REASON, reason);
    send_tlv(h, AL_FRAME_EXIT, &b, r);
    h->exit_queued = true;
    h->phase = PHASE_FINISHING;
    h->port_progress_at = now_ms(); /* the full stall window for the last frames */
}

/* The job cannot run (bad job, user, work dir, protocol): report and finish. */
static void fail_setup(struct helper *h, const char *fmt, ...) _printf_(2, 3);

static void fail_setup(struct helper *h, const char *fmt, ...)
{
    char msg[900];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n < 0)
        msg[0] = '\0';
    if (h->untar_pid > 0 && !h->untar_reaped)
        kill(-h->untar_pid, SIGKILL);
    if (h->phase != PHASE_SETUP)
        return;
    diag(h, "%s", msg);
    char reason[1024];
    snprintf(reason, sizeof(reason), "error: %s", msg); /* cut short is fine */
    send_exit(h, EXIT_INFRA, 0, false, reason);
}

static void flush_port(struct helper *h)
{
    long n = port_flush(&h->port);
    if (n > 0)
        h->port_progress_at = now_ms();
    else if (n < 0 && !h->port_in_failed)
        h->port_in_failed = true; /* dead: handled in advance() */
}

/* ---- job setup ---- */

static int read_job_file(struct helper *h, struct al_error **err)
{
    int fd = open(h->job_path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        if (errno == ENOENT)
            return 0; /* warm mode: the job comes as a JOB frame */
        return al_error_set_errno(err, errno, "job file '%s'", h->job_path);
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > AL_PROTO_MAX_PAYLOAD) {
        close(fd);
        return al_error_set(err, EINVAL, "job file '%s': not a regular file of at most %u bytes",
                            h->job_path, AL_PROTO_MAX_PAYLOAD);
    }
    size_t size = (size_t)st.st_size;
    uint8_t *data = malloc(size ? size : 1);
    if (!data) {
        close(fd);
        return al_error_set(err, ENOMEM, "out of memory");
    }
    size_t got = 0;
    while (got < size) {
        ssize_t n = read(fd, data + got, size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    int r = 0;
    if (got != size)
        r = al_error_set(err, EIO, "job file '%s': short read", h->job_path);
    if (r == 0)
        r = guest_job_parse(&h->job, data, size, err);
    explicit_bzero(data, size);
    free(data);
    if (r == 0 && !h->job.job_id)
        r = al_error_set(err, EINVAL, "job file '%s' has no JOB_ID", h->job_path);
    if (r < 0)
        return r;
    h->have_job = true;
    return 0;
}

/* Resolves the user and creates the work dir, as soon as the job is known. */
static void prepare_job(struct helper *h)
{
    _cleanup_error_ struct al_error *err = NULL;
    const char *name = h->job.user ? h->job.user : GUEST_JOB_DEFAULT_USER;
    if (guest_user_resolve(name, &h->user, &err) < 0) {
        fail_setup(h, "%s", al_error_message(err));
        return;
    }
    if (h->job.workdir) {
        h->workdir = strdup(h->job.workdir);
    } else if (asprintf(&h->workdir, "%s/work", h->user.home) < 0) {
        h->workdir = NULL;
    }
    if (!h->workdir) {
        fail_setup(h, "out of memory");
        return;
    }
    if (guest_make_workdir(h->workdir, &h->user, &err) < 0)
        fail_setup(h, "work dir: %s", al_error_message(err));
}

/* ---- work dir unpack ---- */

/* GNU tar running as the job's user does the unpacking, fed only with bytes
 * that tarscan has already accepted. The user is the trust boundary: the
 * archive cannot do anything the workload could not do a moment later, and
 * a non-root tar cannot create device nodes or files owned by others. The
 * scanner refuses absolute names, "..", escaping symlinks, devices and
 * FIFOs up front (tar alone would silently strip a leading "/"), and tar
 * adds its own defences (it skips ".." members and defers symlinks that
 * point outside until the end, so nothing is written through them).
 * Reusing tar rather than a private extractor keeps permissions, long names
 * and pax extensions behaving exactly as users expect. */
static void untar_start(struct helper *h)
{
    int in[2], errp[2];
    if (make_pipe(in, false, true) < 0) {
        fail_setup(h, "work dir: pipe: %s", strerror(errno));
        return;
    }
    if (make_pipe(errp, true, false) < 0) {
        close(in[0]);
        close(in[1]);
        fail_setup(h, "work dir: pipe: %s", strerror(errno));
        return;
    }
    static char *const tar_argv[] = {"tar",
                                     "-x",
                                     "-f",
                                     "-",
                                     "--no-same-owner",
                                     "--no-same-permissions",
                                     "--no-overwrite-dir",
                                     "--warning=no-timestamp",
                                     NULL};
    static char *const tar_env[] = {"PATH=/usr/local/bin:/usr/bin:/bin", "LC_ALL=C", NULL};
    struct guest_spawn_opts o = {
            .user = &h->user,
            .cwd = h->workdir,
            .argv = tar_argv,
            .envp = tar_env,
            .stdin_fd = in[0],
            .stdout_fd = -1,
            .stderr_fd = errp[1],
            .fd3 = -1,
            .new_pgroup = true,
    };
    _cleanup_error_ struct al_error *err = NULL;
    int r = guest_spawn(&o, &h->untar_pid, NULL, &err);
    close(in[0]);
    close(errp[1]);
    if (r < 0) {
        close(in[1]);
        close(errp[0]);
        fail_setup(h, "work dir: %s", al_error_message(err));
        return;
    }
    h->untar_started = true;
    h->untar_in = in[1];
    h->untar_err.fd = errp[0];
}

static void untar_close_input(struct helper *h)
{
    if (h->untar_in >= 0)
        close(h->untar_in);
    h->untar_in = -1;
}

static void untar_flush(struct helper *h)
{
    struct wqueue *q = &h->wq;
    while (h->untar_in >= 0 && q->off < q->len) {
        ssize_t n = write(h->untar_in, q->data + q->off, q->len - q->off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (n < 0) {
            /* tar went away early; its exit status tells why */
            untar_close_input(h);
            q->len = q->off = 0;
            return;
        }
        q->off += (size_t)n;
    }
    if (q->off == q->len)
        q->off = q->len = 0;
    if (h->workdir_end && q->len == 0)
        untar_close_input(h);
}

static void untar_feed(struct helper *h, const uint8_t *data, size_t len)
{
    if (!h->untar_started) {
        untar_start(h);
        if (h->phase != PHASE_SETUP)
            return;
    }
    _cleanup_error_ struct al_error *err = NULL;
    if (tar_scan_feed(&h->untar_scan, data, len, &err) < 0) {
        fail_setup(h, "work dir refused: %s", al_error_message(err));
        return;
    }
    struct wqueue *q = &h->wq;
    if (q->len + len > q->cap) {
        size_t cap = q->cap ? q->cap : 256 * 1024;
        while (cap < q->len + len)
            cap *= 2;
        uint8_t *p = realloc(q->data, cap);
        if (!p) {
            fail_setup(h, "work dir: out of memory");
            return;
        }
        q->data = p;
        q->cap = cap;
    }
    memcpy(q->data + q->len, data, len);
    q->len += len;
    untar_flush(h);
}

static bool workdir_ready(struct helper *h)
{
    if (!h->job.has_workdir)
        return true;
    if (!h->workdir_end)
        return false;
    if (!h->untar_started)
        return true;
    if (!h->untar_reaped || h->untar_err.fd >= 0)
        return false;
    if (!h->untar_checked) {
        h->untar_checked = true;
        if (!tar_scan_finished(&h->untar_scan)) {
            fail_setup(h, "work dir: archive is truncated");
        } else if (!WIFEXITED(h->untar_status) || WEXITSTATUS(h->untar_status) != 0) {
            fail_setup(h, "work dir: tar failed (status %d): %s",
                       WIFEXITED(h->untar_status) ? WEXITSTATUS(h->untar_status) : -1,
                       first_line(&h->untar_err));
        }
    }
    return h->phase == PHASE_SETUP;
}

/* ---- the workload ---- */

static int env_set(char ***envp, size_t *n, char *item)
{
    size_t name_len = (size_t)(strchr(item, '=') - item);
    for (size_t i = 0; i < *n; i++)
        if (strncmp((*envp)[i], item, name_len + 1) == 0) {
            (*envp)[i] = item;
            return 0;
        }
    char **v = realloc(*envp, (*n + 2) * sizeof(*v));
    if (!v)
        return -ENOMEM;
    v[(*n)++] = item;
    v[*n] = NULL;
    *envp = v;
    return 0;
}

/* The workload's environment: a clean login-like base, then ENV, then
 * SECRET_ENV (later items win). The array borrows the job's strings; only
 * the base entries in *ret_owned are allocated here. */
static int build_env(struct helper *h, char ***ret_env, char ***ret_owned)
{
    _cleanup_strv_ char **owned = calloc(8, sizeof(char *));
    char **env = NULL;
    size_t n = 0;
    if (!owned)
        return -ENOMEM;
    const struct guest_user *u = &h->user;
    int k = 0;
    if (asprintf(&owned[k++], "HOME=%s", u->home) < 0 ||
        asprintf(&owned[k++], "USER=%s", u->name) < 0 ||
        asprintf(&owned[k++], "LOGNAME=%s", u->name) < 0 ||
        asprintf(&owned[k++], "SHELL=%s", u->shell) < 0 ||
        asprintf(&owned[k++], "PATH=%s",
                 "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin") < 0 ||
        asprintf(&owned[k++], "LANG=C.UTF-8") < 0 ||
        asprintf(&owned[k++], "AGENTLAB_JOB_ID=%s", h->job.job_id ? h->job.job_id : "") < 0) {
        owned[k - 1] = NULL;
        return -ENOMEM;
    }
    int r = 0;
    for (int i = 0; i < k && r == 0; i++)
        r = env_set(&env, &n, owned[i]);
    for (size_t i = 0; i < h->job.env.n && r == 0; i++)
        r = env_set(&env, &n, h->job.env.v[i]);
    for (size_t i = 0; i < h->job.secret.n && r == 0; i++)
        r = env_set(&env, &n, h->job.secret.v[i]);
    if (r < 0) {
        free(env);
        return r;
    }
    *ret_env = env;
    *ret_owned = TAKE_PTR(owned);
    return 0;
}

/* Writes a long script to tmpfs (/run/agentlab when root), readable only by
 * the job's user. */
static int write_script_file(struct helper *h, struct al_error **err)
{
    const char *dir = "/run/agentlab";
    if (geteuid() != 0) {
        const char *rt = getenv("XDG_RUNTIME_DIR");
        dir = rt && rt[0] == '/' ? rt : "/tmp";
    } else if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
        return al_error_set_errno(err, errno, "creating %s", dir);
    }
    if (asprintf(&h->script_file, "%s/job-script.XXXXXX", dir) < 0) {
        h->script_file = NULL;
        return al_error_set(err, ENOMEM, "out of memory");
    }
    int fd = mkostemp(h->script_file, O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        free(h->script_file);
        h->script_file = NULL;
        return al_error_set_errno(err, e, "creating the script file");
    }
    const char *s = h->job.script;
    size_t len = strlen(s), off = 0;
    int r = 0;
    while (off < len && r == 0) {
        ssize_t n = write(fd, s + off, len - off);
        if (n < 0 && errno != EINTR)
            r = al_error_set_errno(err, errno, "writing the script file");
        else if (n > 0)
            off += (size_t)n;
    }
    if (r == 0 && h->user.drop && fchown(fd, h->user.uid, h->user.gid) < 0)
        r = al_error_set_errno(err, errno, "handing the script file to the user");
    if (r == 0 && fchmod(fd, 0400) < 0)
        r = al_error_set_errno(err, errno, "chmod of the script file");
    close(fd);
    return r;
}

static void workload_result(struct helper *h, int code, int sig, const char *why)
{
    h->exit_code = code;
    h->exit_signal = sig;
    if (why && !h->error_text)
        h->error_text = strdup(why);
}

static void start_artifacts(struct helper *h);

/* The workload is over (or never started): collect artifacts, then EXIT. */
static void finish_workload(struct helper *h)
{
    if (h->out_fd >= 0)
        close(h->out_fd);
    if (h->err_fd >= 0)
        close(h->err_fd);
    h->out_fd = h->err_fd = -1;
    if (h->pid > 0)
        kill(-h->pid, SIGKILL); /* whatever is left of the process group */
    if (h->script_file) {
        unlink(h->script_file);
        free(h->script_file);
        h->script_file = NULL;
    }

    if (h->pid > 0) {
        switch (h->reason) {
        case END_TIMEOUT:
            workload_result(h, 124, 0, NULL);
            break;
        case END_CANCELED:
            workload_result(h, 130, 0, NULL);
            break;
        case END_ERROR:
            workload_result(h, EXIT_INFRA, 0, NULL);
            break;
        case END_EXITED:
            if (WIFEXITED(h->status))
                workload_result(h, WEXITSTATUS(h->status), 0, NULL);
            else if (WIFSIGNALED(h->status))
                workload_result(h, 128 + WTERMSIG(h->status), WTERMSIG(h->status), NULL);
            break;
        }
    }
    bool want_artifacts = h->job.artifacts.n > 0 &&
                          (h->reason == END_EXITED || h->reason == END_TIMEOUT) && !h->port.dead;
    h->phase = PHASE_ARTIFACTS;
    if (want_artifacts)
        start_artifacts(h);
}

static void send_final_exit(struct helper *h)
{
    const char *reason = "exited";
    char buf[1024];
    switch (h->reason) {
    case END_EXITED:
        break;
    case END_TIMEOUT:
        reason = "timeout";
        break;
    case END_CANCELED:
        reason = "canceled";
        break;
    case END_ERROR:
        snprintf(buf, sizeof(buf), "error: %s", h->error_text ? h->error_text : "helper error");
        reason = buf;
        break;
    }
    send_exit(h, h->exit_code, h->exit_signal, h->reason == END_TIMEOUT, reason);
}

static void start_kill(struct helper *h, enum end_reason reason, const char *why)
{
    if (h->phase != PHASE_RUNNING || h->killing)
        return;
    if (h->reaped) {
        /* it ended on its own already; just stop waiting for stragglers */
        h->drain_until = now_ms();
        return;
    }
    h->reason = reason;
    if (why)
        h->error_text = strdup(why);
    h->killing = true;
    h->kill_at = now_ms() + KILL_GRACE_MS;
    kill(-h->pid, SIGTERM);
}

static void start_workload(struct helper *h)
{
    char *script_argv[] = {"/bin/sh", "-e", "-c", h->job.script, "agentlab-job", NULL};
    char **argv = h->job.argv.v;
    _cleanup_error_ struct al_error *err = NULL;
    if (h->job.script) {
        argv = script_argv;
        if (strlen(h->job.script) > SCRIPT_ARG_MAX) {
            if (write_script_file(h, &err) < 0) {
                fail_setup(h, "%s", al_error_message(err));
                return;
            }
            script_argv[2] = h->script_file;
            script_argv[3] = NULL;
        }
    }
    char **env = NULL;
    _cleanup_strv_ char **owned = NULL;
    if (build_env(h, &env, &owned) < 0) {
        fail_setup(h, "out of memory");
        return;
    }
    int out[2], errp[2];
    if (make_pipe(out, true, false) < 0) {
        free(env);
        fail_setup(h, "pipe: %s", strerror(errno));
        return;
    }
    if (make_pipe(errp, true, false) < 0) {
        close(out[0]);
        close(out[1]);
        free(env);
        fail_setup(h, "pipe: %s", strerror(errno));
        return;
    }
    struct guest_spawn_opts o = {
            .user = &h->user,
            .cwd = h->workdir,
            .argv = argv,
            .envp = env,
            .stdin_fd = -1,
            .stdout_fd = out[1],
            .stderr_fd = errp[1],
            .fd3 = -1,
            .new_pgroup = true,
    };
    bool exec_failed = false;
    int r = guest_spawn(&o, &h->pid, &exec_failed, &err);
    free(env);
    close(out[1]);
    close(errp[1]);
    if (r < 0) {
        close(out[0]);
        close(errp[0]);
        if (!exec_failed) {
            fail_setup(h, "%s", al_error_message(err));
            return;
        }
        /* like a shell: a missing program is the workload failing (127),
         * not the infrastructure */
        send_frame(h, AL_FRAME_STARTED, NULL, 0);
        char line[1100];
        int n = snprintf(line, sizeof(line), "agentlab-guest: %s\n", al_error_message(err));
        if (n > 0)
            send_frame(h, AL_FRAME_STDERR, line,
                       (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
        h->pid = 0;
        h->reason = END_EXITED;
        workload_result(h, r == -ENOENT ? 127 : 126, 0, NULL);
        h->phase = PHASE_RUNNING;
        finish_workload(h);
        return;
    }
    h->out_fd = out[0];
    h->err_fd = errp[0];
    h->phase = PHASE_RUNNING;
    h->reason = END_EXITED;
    uint64_t now = now_ms();
    if (h->job.timeout_s)
        h->deadline = now + h->job.timeout_s * 1000u;
    send_frame(h, AL_FRAME_STARTED, NULL, 0);
    h->next_heartbeat = now + AL_PROTO_HEARTBEAT_MS;
}

/* Forwards what the workload wrote, as soon as it is there. */
static void forward_output(struct helper *h, int *fd, uint8_t type)
{
    uint8_t buf[READ_CHUNK];
    ssize_t n = read(*fd, buf, sizeof(buf));
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        close(*fd);
        *fd = -1;
        return;
    }
    send_frame(h, type, buf, (size_t)n);
}

static void workload_reaped(struct helper *h, int status)
{
    h->reaped = true;
    h->status = status;
    uint64_t now = now_ms();
    if (!h->killing) {
        /* the job is its main process: background leftovers go now */
        kill(-h->pid, SIGKILL);
        h->drain_until = now + PIPE_DRAIN_MS;
    } else {
        h->drain_until = (h->killed_hard ? now : h->kill_at) + PIPE_DRAIN_MS;
    }
}

/* ---- artifacts ---- */

struct artifact_prep {
    size_t first_path;
};

/* Runs in the artifact child, as the user in the work dir: reports paths
 * that do not exist (NUL-separated on fd 3) and leaves them out, so one
 * missing path does not fail the others. */
static int artifact_prepare(void *data, char ***argv)
{
    struct artifact_prep *prep = data;
    char **v = *argv;
    size_t out = prep->first_path;
    for (size_t i = prep->first_path; v[i]; i++) {
        struct stat st;
        if (lstat(v[i], &st) == 0) {
            v[out++] = v[i];
            continue;
        }
        size_t len = strlen(v[i]) + 1;
        ssize_t w = write(3, v[i], len);
        (void)w;
    }
    v[out] = NULL;
    close(3);
    return out == prep->first_path ? 1 : 0;
}

/* Artifact collection could not even start: END still goes out, with why. */
static void artifacts_failed(struct helper *h, const char *msg)
{
    diag(h, "artifacts: %s", msg);
    snprintf(h->art_err.buf, sizeof(h->art_err.buf), "%s", msg);
    h->art_err.len = strlen(h->art_err.buf);
    h->art_pid = 0;
    h->art_reaped = true;
    h->art_status = 2 << 8; /* as if tar had exited 2 */
}

static void start_artifacts(struct helper *h)
{
    const struct guest_strv *paths = &h->job.artifacts;
    /* "--": paths come from the job and may start with "-" */
    static const char *const head[] = {"tar", "-c", "-f", "-", "--"};
    const size_t nhead = sizeof(head) / sizeof(head[0]);
    tar_scan_init(&h->art_scan, false);
    _cleanup_free_ char **argv = calloc(nhead + paths->n + 1, sizeof(char *));
    if (!argv) {
        artifacts_failed(h, "out of memory");
        return;
    }
    for (size_t i = 0; i < nhead; i++)
        argv[i] = (char *)head[i];
    for (size_t i = 0; i < paths->n; i++)
        argv[nhead + i] = paths->v[i];

    int out[2], errp[2], miss[2];
    if (make_pipe(out, true, false) < 0) {
        artifacts_failed(h, strerror(errno));
        return;
    }
    if (make_pipe(errp, true, false) < 0) {
        artifacts_failed(h, strerror(errno));
        close(out[0]);
        close(out[1]);
        return;
    }
    if (make_pipe(miss, true, false) < 0) {
        artifacts_failed(h, strerror(errno));
        close(out[0]);
        close(out[1]);
        close(errp[0]);
        close(errp[1]);
        return;
    }
    static char *const tar_env[] = {"PATH=/usr/local/bin:/usr/bin:/bin", "LC_ALL=C", NULL};
    struct artifact_prep prep = {.first_path = nhead};
    struct guest_spawn_opts o = {
            .user = &h->user,
            .cwd = h->workdir,
            .argv = argv,
            .envp = tar_env,
            .stdin_fd = -1,
            .stdout_fd = out[1],
            .stderr_fd = errp[1],
            .fd3 = miss[1],
            .new_pgroup = true,
            .prepare = artifact_prepare,
            .prepare_data = &prep,
    };
    _cleanup_error_ struct al_error *err = NULL;
    int r = guest_spawn(&o, &h->art_pid, NULL, &err);
    close(out[1]);
    close(errp[1]);
    close(miss[1]);
    if (r < 0) {
        close(out[0]);
        close(errp[0]);
        close(miss[0]);
        artifacts_failed(h, al_error_message(err));
        return;
    }
    h->art_fd = out[0];
    h->art_err.fd = errp[0];
    h->art_missing.fd = miss[0];
}

static void forward_artifact(struct helper *h)
{
    uint8_t buf[READ_CHUNK];
    ssize_t n = read(h->art_fd, buf, sizeof(buf));
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        close(h->art_fd);
        h->art_fd = -1;
        return;
    }
    size_t len = (size_t)n;
    if (h->job.has_max_artifact_bytes && len > h->job.max_artifact_bytes - h->art_bytes) {
        len = (size_t)(h->job.max_artifact_bytes - h->art_bytes);
        h->art_limit = true;
    }
    if (len > 0) {
        send_frame(h, AL_FRAME_ARTIFACT, buf, len);
        h->art_bytes += len;
        tar_scan_feed(&h->art_scan, buf, len, NULL); /* counting only */
    }
    if (h->art_limit) {
        if (h->art_pid > 0 && !h->art_reaped)
            kill(-h->art_pid, SIGKILL);
        close(h->art_fd);
        h->art_fd = -1;
    }
}

static void append_part(char *buf, size_t size, const char *part)
{
    size_t len = strlen(buf);
    if (len + 1 >= size)
        return;
    snprintf(buf + len, size - len, "%s%s", len ? "; " : "", part);
}

static void send_artifact_end(struct helper *h)
{
    char error[2048] = "";
    if (h->art_limit)
        append_part(error, sizeof(error), "limit");
    if (h->art_canceled)
        append_part(error, sizeof(error), "canceled");
    if (h->art_missing.len) {
        char missing[1100] = "missing: ";
        size_t ml = strlen(missing);
        for (size_t i = 0; i < h->art_missing.len && ml + 2 < sizeof(missing); i++) {
            char c = h->art_missing.buf[i];
            if (c == '\0') {
                if (i + 1 < h->art_missing.len) {
                    missing[ml++] = ',';
                    missing[ml++] = ' ';
                }
            } else {
                missing[ml++] = c;
            }
        }
        missing[ml] = '\0';
        append_part(error, sizeof(error), missing);
    }
    /* tar exits 1 when a file changed while being read: not an error here */
    bool tar_failed = !h->art_limit && !h->art_canceled &&
                      (!WIFEXITED(h->art_status) || WEXITSTATUS(h->art_status) > 1);
    if (tar_failed) {
        char part[1200];
        snprintf(part, sizeof(part), "tar failed: %s", first_line(&h->art_err));
        append_part(error, sizeof(error), part);
    }
    struct al_tlv_buf b = {0};
    int r = al_tlv_add_u64(&b, AL_TLV_BYTES, h->art_bytes);
    if (r == 0)
        r = al_tlv_add_u64(&b, AL_TLV_FILES, h->art_scan.members);
    if (r == 0 && error[0])
        r = al_tlv_add_str(&b, AL_TLV_ERROR, error);
    send_tlv(h, AL_FRAME_ARTIFACT_END, &b, r);
}

/* ---- frames from the host ---- */

static void cancel(struct helper *h, enum end_reason reason, const char *why)
{
    switch (h->phase) {
    case PHASE_SETUP:
        if (h->untar_pid > 0 && !h->untar_reaped)
            kill(-h->untar_pid, SIGKILL);
        if (reason == END_CANCELED)
            send_exit(h, 130, 0, false, "canceled");
        else
            fail_setup(h, "%s", why);
        break;
    case PHASE_RUNNING:
        start_kill(h, reason, why);
        break;
    case PHASE_ARTIFACTS:
        if (h->art_pid > 0 && !h->art_reaped) {
            kill(-h->art_pid, SIGKILL);
            h->art_canceled = true;
        }
        break;
    default:
        break;
    }
}

static const char *frame_name(uint8_t type)
{
    switch (type) {
    case AL_FRAME_JOB:
        return "JOB";
    case AL_FRAME_SECRETS:
        return "SECRETS";
    case AL_FRAME_WORKDIR:
        return "WORKDIR";
    case AL_FRAME_WORKDIR_END:
        return "WORKDIR_END";
    case AL_FRAME_START:
        return "START";
    case AL_FRAME_CANCEL:
        return "CANCEL";
    default:
        return "guest-to-host";
    }
}

static void handle_frame(struct helper *h, struct al_frame *f)
{
    h->host_spoke = true;
    if (f->type == AL_FRAME_CANCEL) {
        cancel(h, END_CANCELED, NULL);
        return;
    }
    if (h->phase != PHASE_SETUP) {
        if (h->phase == PHASE_RUNNING || h->phase == PHASE_ARTIFACTS)
            diag(h, "ignoring %s frame while the job runs", frame_name(f->type));
        if (f->type == AL_FRAME_SECRETS)
            explicit_bzero(f->payload, f->len);
        return;
    }
    _cleanup_error_ struct al_error *err = NULL;
    switch (f->type) {
    case AL_FRAME_JOB: {
        if (h->have_job || h->start_received) {
            fail_setup(h, "protocol: unexpected JOB frame (the job is already known)");
            return;
        }
        int r = guest_job_parse(&h->job, f->payload, f->len, &err);
        explicit_bzero(f->payload, f->len); /* may carry SECRET_ENV */
        if (r < 0) {
            fail_setup(h, "%s", al_error_message(err));
            return;
        }
        h->have_job = true;
        prepare_job(h);
        return;
    }
    case AL_FRAME_SECRETS: {
        int r = guest_job_add_secrets(&h->job, f->payload, f->len, &err);
        explicit_bzero(f->payload, f->len);
        if (r < 0)
            fail_setup(h, "%s", al_error_message(err));
        return;
    }
    case AL_FRAME_WORKDIR:
        if (!h->have_job || !h->job.has_workdir || h->workdir_end) {
            fail_setup(h, "protocol: unexpected WORKDIR frame");
            return;
        }
        if (f->len)
            untar_feed(h, f->payload, f->len);
        return;
    case AL_FRAME_WORKDIR_END:
        if (!h->have_job || !h->job.has_workdir || h->workdir_end) {
            fail_setup(h, "protocol: unexpected WORKDIR_END frame");
            return;
        }
        h->workdir_end = true;
        untar_flush(h);
        return;
    case AL_FRAME_START:
        if (!h->have_job || (h->job.has_workdir && !h->workdir_end) || h->start_received) {
            fail_setup(h, "protocol: START before the job%s is complete",
                       h->job.has_workdir ? " and its work dir" : "");
            return;
        }
        h->start_received = true;
        return;
    default:
        fail_setup(h, "protocol: unexpected %s frame type %u", frame_name(f->type), f->type);
        return;
    }
}

static void read_port(struct helper *h)
{
    uint8_t buf[READ_CHUNK];
    ssize_t n = read(h->port.fd, buf, sizeof(buf));
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        if (h->port.is_socket || n < 0) {
            h->port_in_failed = true;
            h->port.dead = true;
        } else {
            /* virtio port without a host connection: try again shortly */
            h->port_retry_at = now_ms() + HOST_ABSENT_BACKOFF;
        }
        return;
    }
    size_t off = 0;
    while (off < (size_t)n && !h->port_in_failed) {
        size_t used = 0;
        struct al_frame f;
        int r = al_frame_decoder_feed(&h->dec, buf + off, (size_t)n - off, &used, &f);
        if (r < 0) {
            h->port_in_failed = true;
            cancel(h, END_ERROR, "protocol: malformed frame from the host");
            if (h->phase == PHASE_RUNNING)
                diag(h, "protocol: malformed frame from the host; stopping the job");
            break;
        }
        off += used;
        if (r == 1)
            handle_frame(h, &f);
    }
    explicit_bzero(buf, (size_t)n);
}

/* ---- children ---- */

static void reap(struct helper *h)
{
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid <= 0)
            return;
        if (pid == h->pid && !h->reaped)
            workload_reaped(h, status);
        else if (pid == h->untar_pid) {
            h->untar_reaped = true;
            h->untar_status = status;
        } else if (pid == h->art_pid) {
            h->art_reaped = true;
            h->art_status = status;
        }
        /* anything else is an orphan of the job reparented to us */
    }
}

static void read_signals(struct helper *h)
{
    struct signalfd_siginfo si;
    while (read(h->sig_fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        if (si.ssi_signo == SIGCHLD)
            continue;
        diag(h, "got signal %u; stopping", si.ssi_signo);
        cancel(h, END_ERROR, "helper terminated by a signal");
    }
    reap(h);
}

/* ---- state machine ---- */

static void advance_once(struct helper *h)
{
    uint64_t now = now_ms();

    bool stall_limit = h->host_spoke || h->phase == PHASE_FINISHING;
    if (!h->port.dead && stall_limit && port_backlog(&h->port) > 0 &&
        now >= h->port_progress_at + PORT_STALL_MS) {
        note("the host has not read from the port for %u s; giving up on it", PORT_STALL_MS / 1000);
        h->port.dead = true;
    }

    if (h->port.dead && h->phase != PHASE_DONE) {
        /* host gone: nothing can be reported, stop everything */
        if (h->phase == PHASE_SETUP) {
            if (h->untar_pid > 0 && !h->untar_reaped)
                kill(-h->untar_pid, SIGKILL);
            h->phase = PHASE_DONE;
            return;
        }
        if (h->phase == PHASE_RUNNING)
            start_kill(h, END_ERROR, "host gone");
        if (h->phase == PHASE_ARTIFACTS && h->art_pid > 0 && !h->art_reaped)
            kill(-h->art_pid, SIGKILL);
        if (h->phase == PHASE_FINISHING)
            h->phase = PHASE_DONE;
    }

    switch (h->phase) {
    case PHASE_SETUP:
        if (!h->host_spoke && now >= h->next_hello && port_backlog(&h->port) == 0)
            send_hello(h);
        if (h->start_received && workdir_ready(h))
            start_workload(h);
        break;
    case PHASE_RUNNING:
        if (!h->reaped && h->deadline && now >= h->deadline)
            start_kill(h, END_TIMEOUT, NULL);
        if (h->killing && !h->killed_hard && now >= h->kill_at) {
            kill(-h->pid, SIGKILL);
            h->killed_hard = true;
        }
        if (h->reaped && ((h->out_fd < 0 && h->err_fd < 0) || now >= h->drain_until))
            finish_workload(h);
        break;
    case PHASE_ARTIFACTS:
        if (h->art_fd < 0 && h->art_err.fd < 0 && h->art_missing.fd < 0 &&
            (h->art_pid == 0 || h->art_reaped)) {
            if (h->art_pid > 0 || h->art_reaped)
                send_artifact_end(h);
            send_final_exit(h);
        }
        break;
    case PHASE_FINISHING:
        if (port_backlog(&h->port) == 0)
            h->phase = PHASE_DONE;
        break;
    case PHASE_DONE:
        break;
    }

    if ((h->phase == PHASE_RUNNING || h->phase == PHASE_ARTIFACTS) && now >= h->next_heartbeat) {
        if (port_backlog(&h->port) < PORT_HIGH_WATER)
            send_frame(h, AL_FRAME_HEARTBEAT, NULL, 0);
        h->next_heartbeat = now + AL_PROTO_HEARTBEAT_MS;
    }
}

/* Steps the state machine until it settles: one step may enable the next
 * (workload reaped -> artifacts -> EXIT queued -> done). */
static void advance(struct helper *h)
{
    enum phase before;
    do {
        before = h->phase;
        advance_once(h);
    } while (h->phase != before);
}

static void take_min(uint64_t *t, uint64_t v)
{
    if (v && (*t == 0 || v < *t))
        *t = v;
}

static int poll_timeout(struct helper *h)
{
    uint64_t t = 0;
    switch (h->phase) {
    case PHASE_SETUP:
        if (!h->host_spoke)
            take_min(&t, h->next_hello);
        break;
    case PHASE_RUNNING:
        if (!h->reaped)
            take_min(&t, h->deadline);
        if (h->killing && !h->killed_hard)
            take_min(&t, h->kill_at);
        if (h->reaped)
            take_min(&t, h->drain_until);
        take_min(&t, h->next_heartbeat);
        break;
    case PHASE_ARTIFACTS:
        take_min(&t, h->next_heartbeat);
        break;
    case PHASE_FINISHING:
        break;
    case PHASE_DONE:
        return 0;
    }
    if ((h->host_spoke || h->phase == PHASE_FINISHING) && port_backlog(&h->port) > 0)
        take_min(&t, h->port_progress_at + PORT_STALL_MS);
    if (h->port_retry_at)
        take_min(&t, h->port_retry_at);
    if (t == 0)
        return -1;
    uint64_t now = now_ms();
    if (t <= now)
        return 0;
    return t - now > 60000 ? 60000 : (int)(t - now);
}

enum watch_kind { W_PORT, W_SIG, W_OUT, W_ERR, W_UNTAR_IN, W_UNTAR_ERR, W_ART, W_ART_ERR, W_MISS };

static void run_loop(struct helper *h)
{
    for (;;) {
        advance(h);
        if (h->phase == PHASE_DONE)
            break;
        struct pollfd pfd[9];
        enum watch_kind kind[9];
        int n = 0;
        uint64_t now = now_ms();
        bool room = port_backlog(&h->port) < PORT_HIGH_WATER;

        if (h->port_retry_at && now >= h->port_retry_at)
            h->port_retry_at = 0;
        if (!h->port.dead && !h->port_retry_at) {
            short ev = 0;
            bool wq_room = h->wq.len - h->wq.off < PORT_HIGH_WATER;
            if (!h->port_in_failed && wq_room)
                ev |= POLLIN;
            if (port_backlog(&h->port))
                ev |= POLLOUT;
            pfd[n] = (struct pollfd){.fd = h->port.fd, .events = ev};
            kind[n++] = W_PORT;
        }
        pfd[n] = (struct pollfd){.fd = h->sig_fd, .events = POLLIN};
        kind[n++] = W_SIG;
        if (h->out_fd >= 0 && room) {
            pfd[n] = (struct pollfd){.fd = h->out_fd, .events = POLLIN};
            kind[n++] = W_OUT;
        }
        if (h->err_fd >= 0 && room) {
            pfd[n] = (struct pollfd){.fd = h->err_fd, .events = POLLIN};
            kind[n++] = W_ERR;
        }
        if (h->untar_in >= 0 && h->wq.len > h->wq.off) {
            pfd[n] = (struct pollfd){.fd = h->untar_in, .events = POLLOUT};
            kind[n++] = W_UNTAR_IN;
        }
        if (h->untar_err.fd >= 0) {
            pfd[n] = (struct pollfd){.fd = h->untar_err.fd, .events = POLLIN};
            kind[n++] = W_UNTAR_ERR;
        }
        if (h->art_fd >= 0 && room) {
            pfd[n] = (struct pollfd){.fd = h->art_fd, .events = POLLIN};
            kind[n++] = W_ART;
        }
        if (h->art_err.fd >= 0) {
            pfd[n] = (struct pollfd){.fd = h->art_err.fd, .events = POLLIN};
            kind[n++] = W_ART_ERR;
        }
        if (h->art_missing.fd >= 0) {
            pfd[n] = (struct pollfd){.fd = h->art_missing.fd, .events = POLLIN};
            kind[n++] = W_MISS;
        }

        int r = poll(pfd, (nfds_t)n, poll_timeout(h));
        if (r < 0 && errno != EINTR) {
            note("poll: %s", strerror(errno));
            h->port.dead = true;
        }
        for (int i = 0; r > 0 && i < n; i++) {
            short re = pfd[i].revents;
            if (!re)
                continue;
            switch (kind[i]) {
            case W_PORT:
                if (re & POLLOUT)
                    flush_port(h);
                if (re & (POLLIN | POLLHUP | POLLERR)) {
                    if (!h->port.is_socket && (re & POLLHUP) && !(re & POLLIN))
                        h->port_retry_at = now_ms() + HOST_ABSENT_BACKOFF;
                    else if (!h->port_in_failed)
                        read_port(h);
                    else if (h->port.is_socket)
                        h->port.dead = true;
                }
                break;
            case W_SIG:
                read_signals(h);
                break;
            case W_OUT:
                forward_output(h, &h->out_fd, AL_FRAME_STDOUT);
                break;
            case W_ERR:
                forward_output(h, &h->err_fd, AL_FRAME_STDERR);
                break;
            case W_UNTAR_IN:
                untar_flush(h);
                break;
            case W_UNTAR_ERR:
                collector_read(&h->untar_err);
                break;
            case W_ART:
                forward_artifact(h);
                break;
            case W_ART_ERR:
                collector_read(&h->art_err);
                break;
            case W_MISS:
                collector_read(&h->art_missing);
                break;
            }
        }
    }
}

/* ---- startup and shutdown ---- */

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: agentlab-guest [--port PATH] [--job FILE] [--no-poweroff]\n"
            "\n"
            "Runs the agentlab job of this VM and reports over the host channel.\n"
            "\n"
            "  --port PATH     virtio-serial port or unix socket (default %s)\n"
            "  --job FILE      job description; when missing, wait for the host to\n"
            "                  send one (warm mode) (default %s)\n"
            "  --no-poweroff   stay up after the job instead of powering off\n"
            "  --help          show this help\n",
            DEFAULT_PORT, AL_PROTO_JOB_FILE);
}

static void ensure_std_fds(void)
{
    for (int fd = 0; fd < 3; fd++) {
        if (fcntl(fd, F_GETFD) >= 0)
            continue;
        int n = open("/dev/null", O_RDWR | O_CLOEXEC); /* lands on fd: the lowest free */
        if (n > 2)
            close(n);
    }
}

static int setup_signals(struct helper *h)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    if (sigprocmask(SIG_BLOCK, &set, NULL) < 0)
        return -errno;
    h->sig_fd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (h->sig_fd < 0)
        return -errno;
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

static void linger_then_poweroff(struct helper *h)
{
    if (h->port.fd >= 0 && !h->port.dead) {
        /* give the host a moment to read the last frames and hang up */
        struct pollfd p = {.fd = h->port.fd, .events = POLLIN};
        uint64_t end = now_ms() + POWEROFF_LINGER_MS;
        for (uint64_t now = now_ms(); now < end; now = now_ms()) {
            if (poll(&p, 1, (int)(end - now)) <= 0 || (p.revents & (POLLHUP | POLLERR)))
                break;
            uint8_t tmp[4096];
            if (read(h->port.fd, tmp, sizeof(tmp)) == 0)
                break;
        }
    }
    sync();
    /* The VM is thrown away: no orderly shutdown, just off. */
    if (reboot(RB_POWER_OFF) < 0)
        note("power off failed: %s", strerror(errno));
}

static void helper_free(struct helper *h)
{
    port_close(&h->port);
    al_frame_decoder_free(&h->dec);
    guest_job_free(&h->job);
    guest_user_free(&h->user);
    free(h->workdir);
    free(h->wq.data);
    free(h->error_text);
    tar_scan_free(&h->untar_scan);
    tar_scan_free(&h->art_scan);
    untar_close_input(h);
    collector_close(&h->untar_err);
    collector_close(&h->art_err);
    collector_close(&h->art_missing);
    if (h->out_fd >= 0)
        close(h->out_fd);
    if (h->err_fd >= 0)
        close(h->err_fd);
    if (h->art_fd >= 0)
        close(h->art_fd);
    if (h->sig_fd >= 0)
        close(h->sig_fd);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
            {"port", required_argument, NULL, 'p'},
            {"job", required_argument, NULL, 'j'},
            {"no-poweroff", no_argument, NULL, 'n'},
            {"help", no_argument, NULL, 'h'},
            {0},
    };
    struct helper h = {
            .port_path = DEFAULT_PORT,
            .job_path = AL_PROTO_JOB_FILE,
            .sig_fd = -1,
            .untar_in = -1,
            .out_fd = -1,
            .err_fd = -1,
            .art_fd = -1,
            .dec = {.max_payload = AL_PROTO_MAX_PAYLOAD},
    };
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'p':
            h.port_path = optarg;
            break;
        case 'j':
            h.job_path = optarg;
            break;
        case 'n':
            h.no_poweroff = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }

    ensure_std_fds();
    umask(022);
    guest_job_init(&h.job);
    collector_init(&h.untar_err);
    collector_init(&h.art_err);
    collector_init(&h.art_missing);
    tar_scan_init(&h.untar_scan, true);
    tar_scan_init(&h.art_scan, false);
    h.port.fd = -1;
    if (setup_signals(&h) < 0) {
        note("signals: %s", strerror(errno));
        return 1;
    }
    /* orphans of the job are reparented to us, so none outlive the job */
    prctl(PR_SET_CHILD_SUBREAPER, 1);

    _cleanup_error_ struct al_error *job_err = NULL;
    int jr = read_job_file(&h, &job_err);

    _cleanup_error_ struct al_error *err = NULL;
    if (port_open(&h.port, h.port_path, PORT_WAIT_MS, &err) < 0) {
        note("%s", al_error_message(err));
        helper_free(&h);
        return 1;
    }

    h.phase = PHASE_SETUP;
    send_hello(&h);
    if (jr < 0) {
        guest_job_free(&h.job);
        h.have_job = false;
        fail_setup(&h, "%s", al_error_message(job_err));
    } else if (h.have_job) {
        prepare_job(&h);
    }

    run_loop(&h);

    bool delivered = h.exit_queued && !h.port.dead && port_backlog(&h.port) == 0;
    bool poweroff = !h.no_poweroff && (!h.have_job || h.job.poweroff);
    if (!delivered)
        note("the host did not get the job's result");
    if (poweroff)
        linger_then_poweroff(&h);
    helper_free(&h);
    return delivered ? 0 : 1;
}
