#include "provision/guest/helper.h"

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

void finish_workload(struct helper *h)
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

void send_final_exit(struct helper *h)
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

void start_kill(struct helper *h, enum end_reason reason, const char *why)
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

void start_workload(struct helper *h)
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

void forward_output(struct helper *h, int *fd, uint8_t type)
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

void workload_reaped(struct helper *h, int status)
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
