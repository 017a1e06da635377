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
    case AL_FRAME_SYNC:
        return "SYNC";
    case AL_FRAME_FRESHEN:
        return "FRESHEN";
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
    case AL_FRAME_SYNC:
        if (h->have_job || h->start_received) {
            fail_setup(h, "protocol: SYNC after the job");
            return;
        }
        sync_for_snapshot(h);
        return;
    case AL_FRAME_FRESHEN:
        if (h->start_received) {
            fail_setup(h, "protocol: FRESHEN after START");
            return;
        }
        if (apply_freshen(h, f->payload, f->len) < 0)
            fail_setup(h, "the guest could not be made fresh after a restore");
        explicit_bzero(f->payload, f->len);
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
        if (si.ssi_signo == SIGIO) {
            /* the host connected: read the port now, not after the backoff */
            h->port_retry_at = 0;
            continue;
        }
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

void advance(struct helper *h)
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

void run_loop(struct helper *h)
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
