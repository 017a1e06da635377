#include "runner/engine/attempt.h"

#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runner/base/buf.h"
#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/base/hardlimits.h"
#include "runner/loop/work.h"

#define CANCEL_GRACE_MS 15000

enum host_verdict {
    HOST_NONE = 0,
    HOST_BOOT_TIMEOUT,
    HOST_RUN_TIMEOUT,
    HOST_CANCEL_FORCED,
};

struct attempt {
    uv_loop_t *loop;
    struct attempt_params p;
    struct attempt_callbacks cb;
    void *data;
    struct vm *vm;
    uv_timer_t timer; /* boot, then run, then cancel deadline */
    int log_fd;
    int tar_fd;
    char *log_path;
    char *tar_path;
    char *artifacts_dir;
    uint64_t tar_bytes;
    bool tar_truncated;
    struct al_redact_stream red_out, red_err;
    struct attempt_result res;
    struct vm_result vmres;
    bool vm_finished;
    uint64_t t_phase[4]; /* ms after t0 at which each vm_phase was reached */
    bool starting;       /* inside attempt_start: an early end waits a loop turn */
    bool running;        /* the workload started */
    bool cancel_requested;
    enum host_verdict verdict;
    bool ended;
    int pending; /* destroy and extraction in flight */
    uint64_t t0, t_end;
};

static const char *const outcome_names[] = {
        [ATTEMPT_SUCCEEDED] = "succeeded", [ATTEMPT_FAILED] = "failed",
        [ATTEMPT_TIMED_OUT] = "timed_out", [ATTEMPT_CANCELED] = "canceled",
        [ATTEMPT_ERROR] = "error",
};

const char *attempt_outcome_to_string(enum attempt_outcome o)
{
    return (size_t)o < ARRAY_SIZE(outcome_names) ? outcome_names[o] : "?";
}

const char *attempt_vm_name(const struct attempt *a)
{
    return a->vm ? a->vm->name : "";
}

static void attempt_free(struct attempt *a)
{
    if (a->log_fd >= 0)
        close(a->log_fd);
    if (a->tar_fd >= 0)
        close(a->tar_fd);
    al_redact_stream_free(&a->red_out);
    al_redact_stream_free(&a->red_err);
    free(a->log_path);
    free(a->tar_path);
    free(a->artifacts_dir);
    artifact_index_clear(&a->res.artifact_files);
    free(a);
}

static void on_timer_closed(uv_handle_t *h)
{
    attempt_free(h->data);
}

static void maybe_done(struct attempt *a)
{
    if (a->pending)
        return;
    a->res.ms_total = al_now_mono_ms() - a->t0;
    a->res.ms_cleanup = al_now_mono_ms() - a->t_end;
    a->cb.done(a, &a->res, a->data);
    uv_close((uv_handle_t *)&a->timer, on_timer_closed);
}

/* ------------------------------------------------------------ output */

/* Records that this attempt ran into limit l (counted once per attempt). */
static void note_limit(struct attempt *a, enum al_limit l)
{
    if (a->res.limits & (1u << l))
        return;
    a->res.limits |= 1u << l;
    limits_hit(l);
}

/* Writes all of buf, also when the file system takes it in pieces; -1 with
 * errno set (ENOSPC for a full disk, not whatever errno held before a short
 * write). */
static int write_full(int fd, const void *data, size_t len)
{
    const char *buf = data;
    while (len) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0) {
            errno = ENOSPC;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static void emit(struct attempt *a, enum vm_stream s, const char *buf, size_t len)
{
    if (!len)
        return;
    if (a->p.max_log_bytes && a->res.log_bytes + len > a->p.max_log_bytes) {
        if (a->res.log_truncated)
            return;
        len = (size_t)(a->p.max_log_bytes - a->res.log_bytes);
        a->res.log_truncated = true;
        note_limit(a, AL_LIMIT_LOG_SIZE);
    }
    if (len) {
        if (a->log_fd >= 0 && write_full(a->log_fd, buf, len) < 0) {
            /* the disk is full or failing: the stored log stops here (the
             * live stream goes on); said once, with the real cause */
            log_warn(a->p.req->job_id, "writing %s: %s; the stored log ends at byte %" PRIu64,
                     a->log_path, strerror(errno), a->res.log_bytes);
            close(a->log_fd);
            a->log_fd = -1;
        }
        a->res.log_bytes += len;
        if (a->cb.output)
            a->cb.output(a, s, buf, len, a->data);
    }
    if (a->res.log_truncated) {
        char marker[128];
        int n = snprintf(marker, sizeof(marker),
                         "\n[agentlab: output truncated at %" PRIu64 " bytes]\n",
                         a->p.max_log_bytes);
        if (a->log_fd >= 0 && write_full(a->log_fd, marker, (size_t)n) < 0)
            log_warn(a->p.req->job_id, "writing %s: %s", a->log_path, strerror(errno));
        if (a->cb.output)
            a->cb.output(a, VM_STDERR, marker, (size_t)n, a->data);
    }
}

static void flush_redactors(struct attempt *a)
{
    struct al_buf out = AL_BUF_INIT;
    if (al_redact_stream_flush(&a->red_out, &out) == 0)
        emit(a, VM_STDOUT, out.data ? out.data : "", out.len);
    al_buf_reset(&out);
    if (al_redact_stream_flush(&a->red_err, &out) == 0)
        emit(a, VM_STDERR, out.data ? out.data : "", out.len);
    al_buf_free(&out);
}

static void on_vm_output(struct vm *vm, enum vm_stream s, const uint8_t *buf, size_t len,
                         void *data)
{
    (void)vm;
    struct attempt *a = data;
    if (a->res.log_truncated)
        return;
    struct al_buf out = AL_BUF_INIT;
    struct al_redact_stream *rs = s == VM_STDOUT ? &a->red_out : &a->red_err;
    if (al_redact_stream_feed(rs, buf, len, &out) == 0)
        emit(a, s, out.data ? out.data : "", out.len);
    al_buf_free(&out);
}

static void on_vm_artifact(struct vm *vm, const uint8_t *buf, size_t len, void *data)
{
    (void)vm;
    struct attempt *a = data;
    if (a->tar_truncated)
        return;
    /* the tar stream carries headers and padding: allow the limit plus 10% */
    uint64_t cap = a->p.artifact_limits.max_bytes;
    if (cap && a->tar_bytes + len > cap + cap / 10 + 1024 * 1024) {
        a->tar_truncated = true;
        note_limit(a, AL_LIMIT_ARTIFACT_SIZE);
        return;
    }
    if (a->tar_fd < 0) {
        a->tar_fd = open(a->tar_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (a->tar_fd < 0) {
            log_warn(a->p.req->job_id, "creating %s: %s", a->tar_path, strerror(errno));
            a->tar_truncated = true;
            return;
        }
    }
    if (write_full(a->tar_fd, buf, len) < 0) {
        log_warn(a->p.req->job_id, "writing %s: %s", a->tar_path, strerror(errno));
        a->tar_truncated = true;
        return;
    }
    a->tar_bytes += len;
}

static void on_vm_diag(struct vm *vm, const char *msg, void *data)
{
    (void)vm;
    struct attempt *a = data;
    if (a->cb.diag)
        a->cb.diag(a, msg, a->data);
}

/* ------------------------------------------------------------ the end */

struct extract_job {
    struct attempt *a;
    struct artifact_summary sum;
    struct artifact_index index;
};

static int extract_work(void *data, struct al_error **err)
{
    struct extract_job *x = data;
    return artifacts_extract_indexed(x->a->tar_path, x->a->artifacts_dir, &x->a->p.artifact_limits,
                                     &x->sum, &x->index, err);
}

static void extract_done(void *data, int result, struct al_error *err)
{
    struct extract_job *x = data;
    struct attempt *a = x->a;
    if (result == 0) {
        a->res.have_artifacts = true;
        a->res.artifacts = x->sum;
        a->res.artifact_files = x->index;
        x->index = (struct artifact_index){0};
        if (x->sum.over_bytes)
            note_limit(a, AL_LIMIT_ARTIFACT_SIZE);
        if (x->sum.over_files)
            note_limit(a, AL_LIMIT_ARTIFACT_FILES);
        if (a->tar_truncated) {
            a->res.artifacts.truncated = true;
            if (!a->res.artifacts.note[0])
                snprintf(a->res.artifacts.note, sizeof(a->res.artifacts.note),
                         "the artifact stream exceeded the size limit");
        }
    } else {
        snprintf(a->res.artifacts.note, sizeof(a->res.artifacts.note), "extracting artifacts: %s",
                 al_error_message(err));
    }
    al_error_free(err);
    artifact_index_clear(&x->index);
    free(x);
    a->pending--;
    maybe_done(a);
}

static void on_destroyed(int result, const struct al_error *err, void *data)
{
    struct attempt *a = data;
    if (result < 0) {
        a->res.cleanup_failed = true;
        snprintf(a->res.cleanup_error, sizeof(a->res.cleanup_error), "%s", al_error_message(err));
    }
    a->vm = NULL;
    a->pending--;
    maybe_done(a);
}

static void set_reason(struct attempt *a, const char *fmt, ...) _printf_(2, 3);

static void set_reason(struct attempt *a, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(a->res.reason, sizeof(a->res.reason), fmt, ap);
    va_end(ap);
}

static void decide(struct attempt *a)
{
    struct attempt_result *r = &a->res;
    const struct vm_result *v = &a->vmres;
    /* the backend counted its own limits already; without a vm_result (the
     * host ended the VM) they are still on the VM */
    r->limits |= a->vm_finished ? v->limits : a->vm ? a->vm->limits : 0;
    r->throttled_ms = v->throttled_ms;
    if (a->vm_finished && strstr(v->artifact_error, "limit"))
        note_limit(a, AL_LIMIT_ARTIFACT_SIZE);
    if (a->vm_finished && (v->outcome == VM_EXITED || v->outcome == VM_GUEST_TIMEOUT)) {
        /* the workload's own result wins over a cancel that came too late */
        if (v->outcome == VM_GUEST_TIMEOUT) {
            r->outcome = ATTEMPT_TIMED_OUT;
            r->exit_code = 124;
            set_reason(a, "the job exceeded its timeout of %" PRId64 " s", a->p.req->timeout_s);
        } else {
            r->outcome = v->exit_code == 0 ? ATTEMPT_SUCCEEDED : ATTEMPT_FAILED;
            r->exit_code = v->exit_code;
            set_reason(a, "%s", v->reason);
        }
    } else if (a->cancel_requested) {
        r->outcome = ATTEMPT_CANCELED;
        r->exit_code = 130;
        set_reason(a, "canceled");
    } else if (a->verdict == HOST_BOOT_TIMEOUT) {
        r->outcome = ATTEMPT_ERROR;
        r->exit_code = 125;
        set_reason(a, "the VM did not start the workload within %" PRId64 " s (boot timeout)",
                   a->p.boot_timeout_s);
    } else if (a->verdict == HOST_RUN_TIMEOUT) {
        r->outcome = ATTEMPT_TIMED_OUT;
        r->exit_code = 124;
        set_reason(a, "the job exceeded its timeout of %" PRId64 " s and the guest did not stop it",
                   a->p.req->timeout_s);
    } else if (a->vm_finished && v->outcome == VM_CANCELED) {
        r->outcome = ATTEMPT_CANCELED;
        r->exit_code = 130;
        set_reason(a, "canceled");
    } else {
        r->outcome = ATTEMPT_ERROR;
        r->exit_code = 125;
        set_reason(a, "%s", a->vm_finished ? v->reason : "the VM ended without a result");
        r->silent_boot = a->vm_finished && v->silent_boot;
    }
    if (a->vm_finished)
        snprintf(r->accel, sizeof(r->accel), "%s", v->accel);
    /* phase times as this attempt saw them (also when the host ended it) */
    uint64_t tp = a->t_phase[VM_PHASE_PROVISIONED], tb = a->t_phase[VM_PHASE_BOOTING];
    uint64_t tr = a->t_phase[VM_PHASE_RUNNING], te = a->t_end - a->t0;
    r->ms_provision = tp;
    r->ms_start = tb > tp ? tb - tp : 0;
    r->ms_boot = tr > tb ? tr - tb : (tb && !tr ? te - tb : 0);
    r->ms_run = tr && te > tr ? te - tr : 0;
    r->us_provision_api = a->vm_finished ? v->us_provision_api : 0;
}

/* Ends the attempt once: decides the result, then tears everything down. */
static void end(struct attempt *a)
{
    if (a->ended)
        return;
    a->ended = true;
    a->t_end = al_now_mono_ms();
    uv_timer_stop(&a->timer);
    flush_redactors(a);
    if (a->log_fd >= 0) {
        close(a->log_fd);
        a->log_fd = -1;
    }
    decide(a);
    snprintf(a->res.vm_name, sizeof(a->res.vm_name), "%s", a->vm ? a->vm->name : "");
    if (a->cb.decided)
        a->cb.decided(a, &a->res, a->data);

    if (a->tar_fd >= 0) {
        close(a->tar_fd);
        a->tar_fd = -1;
        struct extract_job *x = calloc(1, sizeof(*x));
        if (x) {
            x->a = a;
            a->pending++;
            if (al_work_queue(a->loop, extract_work, extract_done, x, NULL) < 0) {
                a->pending--;
                free(x);
            }
        }
    }
    if (a->vm) {
        a->pending++;
        a->vm->backend->ops->destroy(a->vm, on_destroyed, a);
    }
    maybe_done(a);
}

static void on_early_end(uv_timer_t *t)
{
    end(t->data);
}

static void on_vm_finished(struct vm *vm, const struct vm_result *r, void *data)
{
    (void)vm;
    struct attempt *a = data;
    a->vm_finished = true;
    a->vmres = *r;
    if (a->starting)
        uv_timer_start(&a->timer, on_early_end, 0, 0);
    else
        end(a);
}

static void on_deadline(uv_timer_t *t)
{
    struct attempt *a = t->data;
    if (a->ended)
        return;
    if (a->cancel_requested) {
        a->verdict = HOST_CANCEL_FORCED;
        log_warn(a->p.req->job_id, "the guest did not confirm the cancel; destroying the VM");
    } else if (a->running) {
        a->verdict = HOST_RUN_TIMEOUT;
    } else {
        a->verdict = HOST_BOOT_TIMEOUT;
    }
    end(a);
}

static void on_vm_phase(struct vm *vm, enum vm_phase phase, void *data)
{
    (void)vm;
    struct attempt *a = data;
    if ((size_t)phase < ARRAY_SIZE(a->t_phase) && !a->t_phase[phase]) {
        uint64_t t = al_now_mono_ms() - a->t0;
        a->t_phase[phase] = t ? t : 1;
    }
    if (phase == VM_PHASE_RUNNING && !a->cancel_requested) {
        /* from now on the run deadline applies: the guest enforces the job's
         * timeout itself; this is the backstop if it cannot */
        a->running = true;
        uint64_t ms = (uint64_t)(a->p.req->timeout_s + a->p.run_grace_s) * 1000u;
        uv_timer_start(&a->timer, on_deadline, ms, 0);
    }
    if (a->cb.phase)
        a->cb.phase(a, phase, a->data);
}

static const struct vm_events vm_events = {
        .phase = on_vm_phase,
        .output = on_vm_output,
        .artifact = on_vm_artifact,
        .diag = on_vm_diag,
        .finished = on_vm_finished,
};

void attempt_cancel(struct attempt *a)
{
    if (!a || a->ended || a->cancel_requested)
        return;
    a->cancel_requested = true;
    uv_timer_start(&a->timer, on_deadline, CANCEL_GRACE_MS, 0);
    if (a->vm && a->vm->backend->ops->cancel)
        a->vm->backend->ops->cancel(a->vm);
    else
        end(a);
}

int attempt_start(uv_loop_t *loop, const struct attempt_params *p,
                  const struct attempt_callbacks *cb, void *data, struct attempt **ret,
                  struct al_error **err)
{
    struct attempt *a = calloc(1, sizeof(*a));
    if (!a)
        return al_error_set(err, ENOMEM, "allocating an attempt");
    a->loop = loop;
    a->p = *p;
    a->cb = *cb;
    a->data = data;
    a->log_fd = a->tar_fd = -1;
    a->t0 = al_now_mono_ms();
    a->log_path = al_path_join(p->job_dir, "output.log");
    a->tar_path = al_path_join(p->job_dir, "artifacts.tar");
    a->artifacts_dir =
            p->artifacts_dir ? strdup(p->artifacts_dir) : al_path_join(p->job_dir, "artifacts");
    if (!a->log_path || !a->tar_path || !a->artifacts_dir) {
        attempt_free(a);
        return al_error_set(err, ENOMEM, "allocating an attempt");
    }
    a->log_fd = open(a->log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0640);
    if (a->log_fd < 0) {
        int r = al_error_set_errno(err, errno, "creating %s", a->log_path);
        attempt_free(a);
        return r;
    }
    uv_timer_init(loop, &a->timer);
    a->timer.data = a;
    a->starting = true;
    int r;
    if (p->warm_vm) {
        a->vm = p->warm_vm;
        r = p->backend->ops->assign ? p->backend->ops->assign(a->vm, p->req, &vm_events, a, err)
                                    : al_error_set(err, ENOTSUP, "the backend has no warm VMs");
        if (r < 0)
            a->vm = NULL;
    } else {
        r = p->backend->ops->launch(p->backend, p->req, &vm_events, a, &a->vm, err);
    }
    a->starting = false;
    if (r < 0) {
        uv_close((uv_handle_t *)&a->timer, on_timer_closed);
        return r;
    }
    if (!a->vm_finished)
        uv_timer_start(&a->timer, on_deadline, (uint64_t)p->boot_timeout_s * 1000u, 0);
    *ret = a;
    return 0;
}
