/* One attempt of a job (runner/engine/attempt.c) without the engine: its
 * phases, the host's boot and run deadlines, cancellation at each phase,
 * how a VM's result maps to the attempt's outcome, output limits and
 * redaction, artifacts, warm VMs and failures to start.
 *
 * Whole runs go against the fake backend (tests/support/fake_backend.c),
 * whose VMs play FAKE=ok|fail:N|hang|timeout|stream:N|error. What the fake
 * cannot do on cue (a result of any kind, a guest that ignores a cancel,
 * artifacts, a VM that dies inside launch, warm VMs) a "puppet" backend
 * here does: its VM sends exactly the events the test tells it to.
 */
#include "test_util.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fake_backend.h"
#include "runner/base/hardlimits.h"
#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/engine/attempt.h"
#include "runner/engine/config.h"

/* ------------------------------------------------------------ the puppet */

struct puppet_vm {
    struct vm base;
    uv_timer_t timer; /* never started: closing it makes destroy asynchronous */
    backend_done_cb done;
    void *done_data;
};

static struct {
    bool launch_fails;
    bool finish_in_launch; /* the VM dies before launch returns */
    bool cancel_confirms;  /* a cancel ends the workload at once */
    int launches, assigns, cancels, destroys;
    struct puppet_vm *vm; /* the VM the test drives */
    const struct vm_request *req;
} pup;

static struct puppet_vm *puppet_vm_new(struct backend *b, const char *name)
{
    struct puppet_vm *v = calloc(1, sizeof(*v));
    assert_non_null(v);
    v->base.backend = b;
    v->base.name = strdup(name);
    assert_non_null(v->base.name);
    uv_timer_init(b->env.loop, &v->timer);
    v->timer.data = v;
    return v;
}

static int puppet_launch(struct backend *b, const struct vm_request *req,
                         const struct vm_events *ev, void *ev_data, struct vm **ret,
                         struct al_error **err)
{
    pup.launches++;
    if (pup.launch_fails)
        return al_error_set(err, EIO, "the puppet refuses to launch");
    struct puppet_vm *v = puppet_vm_new(b, "puppet-vm");
    v->base.ev = ev;
    v->base.ev_data = ev_data;
    pup.vm = v;
    pup.req = req;
    if (pup.finish_in_launch) {
        struct vm_result r = {.outcome = VM_INFRA_ERROR};
        snprintf(r.reason, sizeof(r.reason), "died while launching");
        ev->finished(&v->base, &r, ev_data);
    }
    *ret = &v->base;
    return 0;
}

static int puppet_assign(struct vm *vm, const struct vm_request *req, const struct vm_events *ev,
                         void *ev_data, struct al_error **err)
{
    (void)err;
    pup.assigns++;
    vm->ev = ev;
    vm->ev_data = ev_data;
    pup.req = req;
    return 0;
}

static int puppet_cancel(struct vm *vm)
{
    pup.cancels++;
    if (pup.cancel_confirms) {
        struct vm_result r = {.outcome = VM_CANCELED, .exit_code = 130};
        vm->ev->finished(vm, &r, vm->ev_data);
    }
    return 0;
}

static void puppet_closed(uv_handle_t *h)
{
    struct puppet_vm *v = h->data;
    v->done(0, NULL, v->done_data);
    free(v->base.name);
    free(v);
}

static void puppet_destroy(struct vm *vm, backend_done_cb done, void *data)
{
    struct puppet_vm *v = container_of(vm, struct puppet_vm, base);
    pup.destroys++;
    if (pup.vm == v)
        pup.vm = NULL;
    v->done = done;
    v->done_data = data;
    uv_close((uv_handle_t *)&v->timer, puppet_closed);
}

static const struct backend_ops puppet_ops = {
        .type = "puppet",
        .launch = puppet_launch,
        .assign = puppet_assign,
        .cancel = puppet_cancel,
        .destroy = puppet_destroy,
};

/* A backend that can neither cancel a workload nor take warm VMs. */
static const struct backend_ops puppet_plain_ops = {
        .type = "puppet-plain",
        .launch = puppet_launch,
        .destroy = puppet_destroy,
};

static void pup_phases(enum vm_phase last)
{
    for (int p = VM_PHASE_PROVISIONED; p <= (int)last; p++) {
        assert_non_null(pup.vm);
        pup.vm->base.ev->phase(&pup.vm->base, (enum vm_phase)p, pup.vm->base.ev_data);
    }
}

static void pup_output(enum vm_stream s, const char *text)
{
    pup.vm->base.ev->output(&pup.vm->base, s, (const uint8_t *)text, strlen(text),
                            pup.vm->base.ev_data);
}

static void pup_finish(const struct vm_result *r)
{
    assert_non_null(pup.vm);
    pup.vm->base.ev->finished(&pup.vm->base, r, pup.vm->base.ev_data);
}

/* ------------------------------------------------------------ harness */

struct ctx {
    uv_loop_t loop;
    char *dir;
    struct config *cfg;
    struct backend *fake;
    struct backend puppet;
    struct env_pair env[2];
    struct vm_request req;
    struct attempt_params p;
    struct attempt *a;
    /* what the callbacks saw */
    enum vm_phase phases[16];
    size_t n_phases;
    char out[8192];
    size_t out_len;
    char diag[128];
    int n_decided, n_done;
    bool done;
    struct attempt_result decided, result;
    int vms_at_decided; /* the fake's VMs when decided ran */
    /* cancel on the next loop turn once this phase is reached */
    bool cancel_armed;
    enum vm_phase cancel_at;
    uv_timer_t cancel_timer;
    bool cancel_in_decided;
};

static int fake_vms(struct ctx *c)
{
    struct backend_capacity cap = {0};
    c->fake->ops->capacity(c->fake, &cap);
    return cap.used_vms;
}

static void on_cancel_timer(uv_timer_t *t)
{
    struct ctx *c = t->data;
    if (!c->done)
        attempt_cancel(c->a);
}

static void on_phase(struct attempt *a, enum vm_phase phase, void *data)
{
    struct ctx *c = data;
    assert_ptr_equal(a, c->a);
    if (c->n_phases < ARRAY_SIZE(c->phases))
        c->phases[c->n_phases++] = phase;
    if (c->cancel_armed && phase == c->cancel_at) {
        c->cancel_armed = false;
        uv_timer_start(&c->cancel_timer, on_cancel_timer, 0, 0);
    }
}

static void on_output(struct attempt *a, enum vm_stream s, const char *buf, size_t len, void *data)
{
    (void)a;
    (void)s;
    struct ctx *c = data;
    assert_true(c->out_len + len < sizeof(c->out));
    memcpy(c->out + c->out_len, buf, len);
    c->out_len += len;
    c->out[c->out_len] = '\0';
}

static void on_diag(struct attempt *a, const char *msg, void *data)
{
    (void)a;
    struct ctx *c = data;
    snprintf(c->diag, sizeof(c->diag), "%s", msg);
}

static void on_decided(struct attempt *a, const struct attempt_result *r, void *data)
{
    struct ctx *c = data;
    assert_int_equal(c->n_done, 0);
    c->n_decided++;
    c->decided = *r;
    if (c->p.backend == c->fake)
        c->vms_at_decided = fake_vms(c);
    if (c->cancel_in_decided)
        attempt_cancel(a);
}

static void on_done(struct attempt *a, const struct attempt_result *r, void *data)
{
    (void)a;
    struct ctx *c = data;
    c->n_done++;
    c->result = *r;
    c->done = true;
    c->a = NULL; /* freed when this returns */
}

static const struct attempt_callbacks cbs = {
        .phase = on_phase,
        .output = on_output,
        .diag = on_diag,
        .decided = on_decided,
        .done = on_done,
};

static const char conf_fmt[] = "[agent]\n"
                               "state_dir = %s\n"
                               "run_dir = %s/run\n"
                               "log_level = error\n"
                               "[backend \"f\"]\n"
                               "max_vms = 4\n";

/* The next attempt starts from scratch: nothing seen, FAKE=mode. */
static void reset(struct ctx *c, const char *mode)
{
    c->n_phases = 0;
    c->out_len = 0;
    c->out[0] = '\0';
    c->diag[0] = '\0';
    c->n_decided = c->n_done = 0;
    c->done = false;
    c->vms_at_decided = -1;
    c->cancel_armed = false;
    c->cancel_in_decided = false;
    c->env[0] = (struct env_pair){"FAKE", mode};
    c->req.n_env = 1;
}

/* The image the engine would resolve; the fake reads only that it is there. */
static const struct vm_image test_image = {.name = "debian-12",
                                           .disk = "/var/lib/agentlab/images/debian-12/disk.qcow2",
                                           .kernel = "/var/lib/agentlab/images/debian-12/vmlinuz",
                                           .initrd =
                                                   "/var/lib/agentlab/images/debian-12/initrd.img"};

static int setup(void **state)
{
    struct ctx *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    uv_loop_init(&c->loop);
    c->dir = test_tmpdir("attempt");
    unsetenv("AGENTLAB_STATE_DIR");
    unsetenv("AGENTLAB_RUN_DIR");
    char conf[1024];
    snprintf(conf, sizeof(conf), conf_fmt, c->dir, c->dir);
    struct al_error *err = NULL;
    assert_int_equal(config_load_string(conf, strlen(conf), "test.conf", &c->cfg, &err), 0);
    fake_backend_register();
    fake_backend_delay_ms = 5;
    struct backend_env env = {.loop = &c->loop,
                              .owner_id = "test:1",
                              .state_dir = c->cfg->agent.state_dir,
                              .run_dir = c->cfg->agent.run_dir};
    assert_int_equal(backend_new(&env, &c->cfg->backends[0], &c->fake, &err), 0);
    c->puppet = (struct backend){.ops = &puppet_ops, .name = (char *)"puppet", .env = env};
    memset(&pup, 0, sizeof(pup));
    pup.cancel_confirms = true;
    uv_timer_init(&c->loop, &c->cancel_timer);
    c->cancel_timer.data = c;
    c->req = (struct vm_request){
            .job_id = "job1",
            .attempt = 1,
            .image_name = "debian-12",
            .image = &test_image,
            .cpus = 1,
            .memory = 512ull << 20,
            .inject = -1,
            .env = c->env,
            .timeout_s = 7,
    };
    c->p = (struct attempt_params){
            .backend = c->fake,
            .req = &c->req,
            .job_dir = c->dir,
            .boot_timeout_s = 30,
            .run_grace_s = 30,
    };
    reset(c, "ok");
    al_log_set_level(AL_LOG_ERROR);
    *state = c;
    return 0;
}

static int teardown(void **state)
{
    struct ctx *c = *state;
    assert_null(c->a); /* every attempt ran to done */
    uv_close((uv_handle_t *)&c->cancel_timer, NULL);
    backend_free(c->fake, NULL, NULL);
    test_loop_close(&c->loop);
    config_free(c->cfg);
    test_tmpdir_remove(c->dir);
    al_redact_clear();
    free(c);
    return 0;
}

static void start(struct ctx *c)
{
    struct al_error *err = NULL;
    int r = attempt_start(&c->loop, &c->p, &cbs, c, &c->a, &err);
    if (r < 0)
        fail_msg("attempt_start: %s", al_error_message(err));
    assert_non_null(c->a);
}

static void run_to_done(struct ctx *c, unsigned timeout_ms)
{
    assert_true(test_run_until(&c->loop, &c->done, timeout_ms));
    assert_int_equal(c->n_decided, 1);
    assert_int_equal(c->n_done, 1);
    /* what decided reported is what done reports */
    assert_int_equal(c->decided.outcome, c->result.outcome);
    assert_int_equal(c->decided.exit_code, c->result.exit_code);
    assert_string_equal(c->decided.reason, c->result.reason);
}

static char *read_job_file(struct ctx *c, const char *name)
{
    char *path = al_path_join(c->dir, name);
    char *data = NULL;
    size_t len = 0;
    struct al_error *err = NULL;
    assert_int_equal(al_read_file(path, 1 << 20, &data, &len, &err), 0);
    free(path);
    return data;
}

static void assert_phases(struct ctx *c, const enum vm_phase *want, size_t n)
{
    assert_int_equal(c->n_phases, n);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(c->phases[i], want[i]);
}

static const enum vm_phase all_phases[] = {VM_PHASE_PROVISIONED, VM_PHASE_BOOTING,
                                           VM_PHASE_CONNECTED, VM_PHASE_RUNNING};

/* ------------------------------------------------------------ tests */

/* A clean run: every phase in order, the output live and in output.log,
 * the result decided while the VM still exists, done after it is gone. */
static void test_success(void **state)
{
    struct ctx *c = *state;
    start(c);
    assert_string_equal(attempt_vm_name(c->a), "fake-f-job1-1");
    assert_int_equal(c->n_phases, 0); /* the fake boots on the loop */
    run_to_done(c, 5000);
    assert_phases(c, all_phases, ARRAY_SIZE(all_phases));
    const struct attempt_result *r = &c->result;
    assert_int_equal(r->outcome, ATTEMPT_SUCCEEDED);
    assert_int_equal(r->exit_code, 0);
    assert_string_equal(r->vm_name, "fake-f-job1-1");
    assert_string_equal(c->out, "hello\n");
    assert_int_equal(r->log_bytes, 6);
    assert_false(r->log_truncated);
    char *log = read_job_file(c, "output.log");
    assert_string_equal(log, "hello\n");
    free(log);
    assert_int_equal(c->vms_at_decided, 1);
    assert_int_equal(fake_vms(c), 0);
    assert_false(r->cleanup_failed);
    assert_false(r->have_artifacts);
    assert_int_equal(r->limits, 0);
    /* the phase times add up to no more than the whole */
    assert_true(r->ms_provision > 0);
    assert_true(r->ms_provision + r->ms_start + r->ms_boot + r->ms_run <= r->ms_total);
    assert_true(r->ms_cleanup <= r->ms_total);
    assert_string_equal(attempt_outcome_to_string(r->outcome), "succeeded");
}

/* How the fake's endings map to outcomes. */
static void test_outcomes_of_fake_runs(void **state)
{
    struct ctx *c = *state;
    static const struct {
        const char *mode;
        enum attempt_outcome outcome;
        int exit_code;
        const char *reason;
        const char *out;
        bool ran;
    } cases[] = {
            {"fail:3", ATTEMPT_FAILED, 3, "", "hello\n", true},
            {"timeout", ATTEMPT_TIMED_OUT, 124, "the job exceeded its timeout of 7 s", "hello\n",
             true},
            {"error", ATTEMPT_ERROR, 125, "simulated infrastructure failure", "", false},
            {"stream:3", ATTEMPT_SUCCEEDED, 0, "", "line 1\nline 2\nline 3\n", true},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        reset(c, cases[i].mode);
        c->env[1] = (struct env_pair){"FAKE_MS", "1"};
        c->req.n_env = 2;
        start(c);
        run_to_done(c, 5000);
        const struct attempt_result *r = &c->result;
        assert_int_equal(r->outcome, cases[i].outcome);
        assert_int_equal(r->exit_code, cases[i].exit_code);
        assert_string_equal(r->reason, cases[i].reason);
        assert_string_equal(c->out, cases[i].out);
        assert_int_equal(r->log_bytes, strlen(cases[i].out));
        if (cases[i].ran)
            assert_phases(c, all_phases, ARRAY_SIZE(all_phases));
        else
            assert_int_equal(c->n_phases, 0);
        assert_int_equal(fake_vms(c), 0);
    }
}

/* Every vm_result the backend can report, and what the attempt makes of
 * it: the outcome, the exit code, the reason and what it carries over. */
static void test_result_mapping(void **state)
{
    struct ctx *c = *state;
    c->p.backend = &c->puppet;
    static const struct {
        struct vm_result vm;
        enum attempt_outcome outcome;
        int exit_code;
        const char *reason;
    } cases[] = {
            {{.outcome = VM_EXITED, .exit_code = 0}, ATTEMPT_SUCCEEDED, 0, ""},
            {{.outcome = VM_EXITED, .exit_code = 2, .reason = "exit status 2"},
             ATTEMPT_FAILED,
             2,
             "exit status 2"},
            {{.outcome = VM_EXITED, .exit_code = 137, .signal = 9, .reason = "killed by signal 9"},
             ATTEMPT_FAILED,
             137,
             "killed by signal 9"},
            {{.outcome = VM_GUEST_TIMEOUT, .exit_code = 124},
             ATTEMPT_TIMED_OUT,
             124,
             "the job exceeded its timeout of 7 s"},
            /* the guest stopped the workload though nobody here asked */
            {{.outcome = VM_CANCELED, .exit_code = 130}, ATTEMPT_CANCELED, 130, "canceled"},
            {{.outcome = VM_INFRA_ERROR, .reason = "the guest channel broke"},
             ATTEMPT_ERROR,
             125,
             "the guest channel broke"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        reset(c, "ok");
        int destroys = pup.destroys;
        start(c);
        pup_phases(VM_PHASE_RUNNING);
        pup_finish(&cases[i].vm);
        run_to_done(c, 2000);
        assert_int_equal(c->result.outcome, cases[i].outcome);
        assert_int_equal(c->result.exit_code, cases[i].exit_code);
        assert_string_equal(c->result.reason, cases[i].reason);
        assert_false(c->result.silent_boot);
        assert_int_equal(pup.destroys, destroys + 1);
        assert_null(pup.vm);
    }

    /* a silent boot is flagged for the engine's free retry; the accelerator,
     * the limits and the throttling the backend saw are carried over */
    reset(c, "ok");
    start(c);
    pup_phases(VM_PHASE_BOOTING);
    struct vm_result silent = {.outcome = VM_INFRA_ERROR,
                               .reason = "no sign of life from the guest",
                               .accel = "kvm",
                               .silent_boot = true,
                               .limits = 1u << AL_LIMIT_CHANNEL_RATE,
                               .throttled_ms = 250};
    pup_finish(&silent);
    run_to_done(c, 2000);
    assert_int_equal(c->result.outcome, ATTEMPT_ERROR);
    assert_true(c->result.silent_boot);
    assert_string_equal(c->result.accel, "kvm");
    assert_int_equal(c->result.limits, 1u << AL_LIMIT_CHANNEL_RATE);
    assert_int_equal(c->result.throttled_ms, 250);
    /* it never ran: no run time */
    assert_int_equal(c->result.ms_run, 0);

    /* an artifact error about a limit counts as the artifact size limit */
    reset(c, "ok");
    start(c);
    pup_phases(VM_PHASE_RUNNING);
    struct vm_result cut = {.outcome = VM_EXITED,
                            .artifact_error = "artifacts over the size limit"};
    pup_finish(&cut);
    run_to_done(c, 2000);
    assert_int_equal(c->result.outcome, ATTEMPT_SUCCEEDED);
    assert_true(c->result.limits & (1u << AL_LIMIT_ARTIFACT_SIZE));
}

/* A cancel before the VM exists, while it boots and while the workload
 * runs: CANCELED (exit 130) each time, the VM destroyed, done once, and no
 * waiting for the cancel deadline. */
static void test_cancel_at_each_phase(void **state)
{
    struct ctx *c = *state;
    static const struct {
        bool at_start;
        enum vm_phase at;
        size_t phases_seen;
        const char *out;
    } cases[] = {
            {true, 0, 0, ""},
            {false, VM_PHASE_BOOTING, 2, ""},
            {false, VM_PHASE_RUNNING, 4, "hello\n"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        reset(c, "hang");
        start(c);
        if (cases[i].at_start) {
            attempt_cancel(c->a);
        } else {
            c->cancel_armed = true;
            c->cancel_at = cases[i].at;
        }
        run_to_done(c, 5000);
        const struct attempt_result *r = &c->result;
        assert_int_equal(r->outcome, ATTEMPT_CANCELED);
        assert_int_equal(r->exit_code, 130);
        assert_string_equal(r->reason, "canceled");
        assert_phases(c, all_phases, cases[i].phases_seen);
        assert_string_equal(c->out, cases[i].out);
        assert_int_equal(fake_vms(c), 0);
        assert_true(r->ms_total < 5000);
        assert_string_equal(attempt_outcome_to_string(r->outcome), "canceled");
    }
}

/* Cancelling twice is cancelling once; a cancel after the result is known
 * changes nothing; NULL is ignored. */
static void test_cancel_twice_and_too_late(void **state)
{
    struct ctx *c = *state;
    attempt_cancel(NULL);
    start(c);
    attempt_cancel(c->a);
    attempt_cancel(c->a);
    run_to_done(c, 5000);
    assert_int_equal(c->result.outcome, ATTEMPT_CANCELED);

    reset(c, "ok");
    c->cancel_in_decided = true;
    start(c);
    run_to_done(c, 5000);
    assert_int_equal(c->result.outcome, ATTEMPT_SUCCEEDED);
    assert_int_equal(c->result.exit_code, 0);
}

/* The workload's own result wins over a cancel the guest had no time to
 * act on; a backend that cannot cancel has its VM destroyed at once. */
static void test_cancel_races_and_backends_without_cancel(void **state)
{
    struct ctx *c = *state;
    c->p.backend = &c->puppet;
    pup.cancel_confirms = false;
    start(c);
    pup_phases(VM_PHASE_RUNNING);
    attempt_cancel(c->a);
    assert_int_equal(pup.cancels, 1);
    uv_run(&c->loop, UV_RUN_NOWAIT);
    assert_false(c->done);
    struct vm_result exited = {.outcome = VM_EXITED, .exit_code = 0};
    pup_finish(&exited);
    run_to_done(c, 2000);
    assert_int_equal(c->result.outcome, ATTEMPT_SUCCEEDED);
    assert_int_equal(pup.destroys, 1);

    struct backend plain = c->puppet;
    plain.ops = &puppet_plain_ops;
    c->p.backend = &plain;
    reset(c, "ok");
    start(c);
    pup_phases(VM_PHASE_RUNNING);
    attempt_cancel(c->a);
    assert_int_equal(c->n_decided, 1); /* decided at once */
    assert_int_equal(c->decided.outcome, ATTEMPT_CANCELED);
    run_to_done(c, 2000);
    assert_int_equal(c->result.outcome, ATTEMPT_CANCELED);
    assert_int_equal(c->result.exit_code, 130);
    assert_int_equal(pup.cancels, 1); /* no cancel slot to call */
    assert_int_equal(pup.destroys, 2);
}

/* A VM that never starts the workload is ended at the boot deadline as an
 * infrastructure ERROR, keeping the limits it ran into. */
static void test_boot_timeout(void **state)
{
    struct ctx *c = *state;
    c->p.backend = &c->puppet;
    c->p.boot_timeout_s = 1;
    start(c);
    pup_phases(VM_PHASE_CONNECTED);
    pup.vm->base.limits = 1u << AL_LIMIT_FRAME_SIZE;
    uint64_t t0 = al_now_mono_ms();
    run_to_done(c, 5000);
    assert_true(al_now_mono_ms() - t0 >= 900);
    const struct attempt_result *r = &c->result;
    assert_int_equal(r->outcome, ATTEMPT_ERROR);
    assert_int_equal(r->exit_code, 125);
    assert_non_null(strstr(r->reason, "within 1 s (boot timeout)"));
    assert_int_equal(r->limits, 1u << AL_LIMIT_FRAME_SIZE);
    assert_false(r->silent_boot);
    assert_int_equal(pup.destroys, 1);
    assert_int_equal(r->ms_run, 0);
    assert_true(r->ms_boot >= 900); /* booting until the host gave up */
}

/* A guest whose own timeout does not fire is stopped by the host after the
 * job's timeout plus the grace: TIMED_OUT, not ERROR. */
static void test_run_timeout(void **state)
{
    struct ctx *c = *state;
    reset(c, "hang");
    c->req.timeout_s = 1;
    c->p.run_grace_s = 0;
    start(c);
    run_to_done(c, 5000);
    const struct attempt_result *r = &c->result;
    assert_int_equal(r->outcome, ATTEMPT_TIMED_OUT);
    assert_int_equal(r->exit_code, 124);
    assert_non_null(strstr(r->reason, "timeout of 1 s and the guest did not stop it"));
    assert_string_equal(c->out, "hello\n");
    assert_true(r->ms_run >= 900);
    assert_int_equal(fake_vms(c), 0);
}

/* Output over max_log_bytes is cut at the limit, once, with a marker. */
static void test_log_limit(void **state)
{
    struct ctx *c = *state;
    reset(c, "stream:50");
    c->env[1] = (struct env_pair){"FAKE_MS", "1"};
    c->req.n_env = 2;
    c->p.max_log_bytes = 20;
    start(c);
    run_to_done(c, 5000);
    const struct attempt_result *r = &c->result;
    assert_int_equal(r->outcome, ATTEMPT_SUCCEEDED);
    assert_true(r->log_truncated);
    assert_int_equal(r->log_bytes, 20);
    assert_int_equal(r->limits, 1u << AL_LIMIT_LOG_SIZE);
    static const char want[] = "line 1\nline 2\nline 3"
                               "\n[agentlab: output truncated at 20 bytes]\n";
    char *log = read_job_file(c, "output.log");
    assert_string_equal(log, want);
    free(log);
    assert_string_equal(c->out, want);
}

/* A registered secret never reaches output.log or the live output, also
 * when the guest sends it split across two chunks. */
static void test_output_redacted(void **state)
{
    struct ctx *c = *state;
    c->p.backend = &c->puppet;
    assert_int_equal(al_redact_add("s3cr3t-token"), 0);
    start(c);
    pup_phases(VM_PHASE_RUNNING);
    pup_output(VM_STDOUT, "token: s3cr");
    pup_output(VM_STDOUT, "3t-token\n");
    pup_output(VM_STDERR, "again s3cr3t-token");
    pup.vm->base.ev->diag(&pup.vm->base, "helper says hi", pup.vm->base.ev_data);
    struct vm_result exited = {.outcome = VM_EXITED};
    pup_finish(&exited);
    run_to_done(c, 2000);
    char *log = read_job_file(c, "output.log");
    assert_null(strstr(log, "s3cr"));
    assert_non_null(strstr(log, "token: ***\n"));
    assert_non_null(strstr(log, "again ***"));
    assert_null(strstr(c->out, "s3cr"));
    assert_int_equal(c->result.log_bytes, strlen(log));
    free(log);
    assert_string_equal(c->diag, "helper says hi");
}

static size_t make_tar(char *buf, size_t size)
{
    struct archive *a = archive_write_new();
    size_t used = 0;
    assert_int_equal(archive_write_set_format_pax_restricted(a), ARCHIVE_OK);
    assert_int_equal(archive_write_open_memory(a, buf, size, &used), ARCHIVE_OK);
    struct archive_entry *e = archive_entry_new();
    archive_entry_set_pathname(e, "out/result.txt");
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    archive_entry_set_size(e, 3);
    assert_int_equal(archive_write_header(a, e), ARCHIVE_OK);
    assert_int_equal(archive_write_data(a, "42\n", 3), 3);
    archive_entry_free(e);
    assert_int_equal(archive_write_close(a), ARCHIVE_OK);
    archive_write_free(a);
    return used;
}

/* The guest's artifact stream is kept as artifacts.tar and unpacked into
 * the artifacts dir after the VM is gone; a damaged one is reported. */
static void test_artifacts(void **state)
{
    struct ctx *c = *state;
    c->p.backend = &c->puppet;
    char *dest = al_path_join(c->dir, "unpacked");
    c->p.artifacts_dir = dest;
    static char tar[16384];
    size_t len = make_tar(tar, sizeof(tar));
    start(c);
    pup_phases(VM_PHASE_RUNNING);
    pup.vm->base.ev->artifact(&pup.vm->base, (const uint8_t *)tar, 700, pup.vm->base.ev_data);
    pup.vm->base.ev->artifact(&pup.vm->base, (const uint8_t *)tar + 700, len - 700,
                              pup.vm->base.ev_data);
    struct vm_result exited = {.outcome = VM_EXITED};
    pup_finish(&exited);
    assert_false(c->decided.have_artifacts); /* not known when decided runs */
    run_to_done(c, 5000);
    const struct attempt_result *r = &c->result;
    assert_true(r->have_artifacts);
    assert_int_equal(r->artifacts.files, 1);
    assert_int_equal(r->artifacts.bytes, 3);
    assert_false(r->artifacts.truncated);
    char *path = al_path_join(dest, "out/result.txt");
    char *data = NULL;
    size_t n = 0;
    assert_int_equal(al_read_file(path, 100, &data, &n, NULL), 0);
    assert_string_equal(data, "42\n");
    free(data);
    free(path);
    char *kept = read_job_file(c, "artifacts.tar");
    free(kept);

    reset(c, "ok");
    start(c);
    pup_phases(VM_PHASE_RUNNING);
    pup.vm->base.ev->artifact(&pup.vm->base, (const uint8_t *)"not a tar at all", 16,
                              pup.vm->base.ev_data);
    pup_finish(&exited);
    run_to_done(c, 5000);
    assert_int_equal(c->result.outcome, ATTEMPT_SUCCEEDED); /* the job's result stands */
    assert_false(c->result.have_artifacts);
    assert_non_null(strstr(c->result.artifacts.note, "extracting artifacts"));
    free(dest);
}

/* A ready warm VM is assigned the job instead of a launch, and destroyed
 * after it like any other. */
static void test_warm_vm(void **state)
{
    struct ctx *c = *state;
    c->p.backend = &c->puppet;
    struct puppet_vm *warm = puppet_vm_new(&c->puppet, "warm-1");
    pup.vm = warm;
    c->p.warm_vm = &warm->base;
    start(c);
    assert_int_equal(pup.assigns, 1);
    assert_int_equal(pup.launches, 0);
    assert_ptr_equal(pup.req, &c->req);
    assert_string_equal(attempt_vm_name(c->a), "warm-1");
    pup_phases(VM_PHASE_RUNNING);
    pup_output(VM_STDOUT, "warm\n");
    struct vm_result exited = {.outcome = VM_EXITED};
    pup_finish(&exited);
    run_to_done(c, 2000);
    assert_int_equal(c->result.outcome, ATTEMPT_SUCCEEDED);
    assert_string_equal(c->result.vm_name, "warm-1");
    assert_string_equal(c->out, "warm\n");
    assert_int_equal(pup.destroys, 1);
}

static void on_destroyed(int result, const struct al_error *err, void *data)
{
    (void)err;
    assert_int_equal(result, 0);
    *(bool *)data = true;
}

/* When attempt_start fails nothing was created and no callback ever runs:
 * a launch error, an unusable job dir, a warm VM on a backend without
 * warm VMs. */
static void test_start_failures(void **state)
{
    struct ctx *c = *state;
    struct al_error *err = NULL;
    struct attempt *a = NULL;
    c->p.backend = &c->puppet;
    pup.launch_fails = true;
    assert_int_equal(attempt_start(&c->loop, &c->p, &cbs, c, &a, &err), -EIO);
    assert_non_null(strstr(al_error_message(err), "the puppet refuses to launch"));
    err = al_error_free(err);
    assert_null(a);
    pup.launch_fails = false;

    c->p.job_dir = "/nonexistent/agentlab-test";
    assert_int_equal(attempt_start(&c->loop, &c->p, &cbs, c, &a, &err), -ENOENT);
    err = al_error_free(err);
    assert_int_equal(pup.launches, 1); /* the failed one above only */
    c->p.job_dir = c->dir;

    struct backend plain = c->puppet;
    plain.ops = &puppet_plain_ops;
    struct puppet_vm *warm = puppet_vm_new(&plain, "warm-2");
    c->p.backend = &plain;
    c->p.warm_vm = &warm->base;
    assert_int_equal(attempt_start(&c->loop, &c->p, &cbs, c, &a, &err), -ENOTSUP);
    err = al_error_free(err);
    assert_null(a);
    /* the warm VM is still the caller's to destroy */
    bool destroyed = false;
    puppet_destroy(&warm->base, on_destroyed, &destroyed);
    assert_true(test_run_until(&c->loop, &destroyed, 1000));

    for (int i = 0; i < 5; i++)
        uv_run(&c->loop, UV_RUN_NOWAIT);
    assert_int_equal(c->n_phases, 0);
    assert_int_equal(c->n_decided, 0);
    assert_int_equal(c->n_done, 0);
}

/* A VM that dies inside launch: attempt_start still succeeds, and the end
 * comes on the next loop turn, not from inside attempt_start. */
static void test_finish_during_launch(void **state)
{
    struct ctx *c = *state;
    c->p.backend = &c->puppet;
    pup.finish_in_launch = true;
    start(c);
    assert_int_equal(c->n_decided, 0);
    run_to_done(c, 2000);
    assert_int_equal(c->result.outcome, ATTEMPT_ERROR);
    assert_int_equal(c->result.exit_code, 125);
    assert_string_equal(c->result.reason, "died while launching");
    assert_int_equal(c->n_phases, 0);
    assert_int_equal(pup.destroys, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_success, setup, teardown),
            cmocka_unit_test_setup_teardown(test_outcomes_of_fake_runs, setup, teardown),
            cmocka_unit_test_setup_teardown(test_result_mapping, setup, teardown),
            cmocka_unit_test_setup_teardown(test_cancel_at_each_phase, setup, teardown),
            cmocka_unit_test_setup_teardown(test_cancel_twice_and_too_late, setup, teardown),
            cmocka_unit_test_setup_teardown(test_cancel_races_and_backends_without_cancel, setup,
                                            teardown),
            cmocka_unit_test_setup_teardown(test_boot_timeout, setup, teardown),
            cmocka_unit_test_setup_teardown(test_run_timeout, setup, teardown),
            cmocka_unit_test_setup_teardown(test_log_limit, setup, teardown),
            cmocka_unit_test_setup_teardown(test_output_redacted, setup, teardown),
            cmocka_unit_test_setup_teardown(test_artifacts, setup, teardown),
            cmocka_unit_test_setup_teardown(test_warm_vm, setup, teardown),
            cmocka_unit_test_setup_teardown(test_start_failures, setup, teardown),
            cmocka_unit_test_setup_teardown(test_finish_during_launch, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
