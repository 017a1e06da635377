#include "runner/engine/engine.h"

#include <dirent.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "runner/engine/attempt.h"
#include "runner/base/log.h"
#include "runner/base/util.h"
#include "images/catalog.h"
#include "runner/base/hardlimits.h"
#include "runner/loop/work.h"
#include "runner/engine/owner.h"

#define PRUNE_INTERVAL_MS  (10u * 60u * 1000u)
#define SYNC_INTERVAL_MS   1000u
#define RUN_GRACE_S        30
#define REOPEN_INTERVAL_MS 10000u
#define SWEEP_INTERVAL_MS  (5u * 60u * 1000u)

struct ejob {
    struct engine *e;
    struct ejob *next;
    char id[STORE_JOB_ID_SIZE];
    struct job_spec *spec;
    enum job_state state;
    int attempts; /* attempts started so far */
    int max_attempts;
    char *job_dir;
    char *workdir_tar;
    char *artifacts_dir;
    /* the request handed to the backend; arrays point into spec */
    struct vm_request req;
    struct env_pair *env;
    struct env_pair *secrets;
    bool secrets_registered;
    struct backend *backend;
    struct attempt *attempt;
    char vm_name[160];
    bool cancel_requested;
    bool retry_blocked;  /* secrets lost in a restart: never retried */
    bool silent_retried; /* the boot watchdog's one free retry is used */
};

struct warm_vm {
    struct warm_vm *next;
    struct engine *e;
    const struct config_pool *pool;
    struct backend_slot *slot;
    struct vm *vm;
    char id[STORE_JOB_ID_SIZE];
    struct vm_request req;
    bool ready;
    uint64_t ready_at;
    uint64_t launched_at;
};

struct engine_watch {
    struct engine_observer o;
    void *data;
    bool removed;
    struct engine_watch *next;
};

struct backend_slot {
    struct backend *b; /* NULL when it failed to open */
    const struct config_backend *cfg;
    char open_error[200];
    unsigned jobs_started;
    char last_fallback[160];
};

struct engine {
    uv_loop_t *loop;
    const struct config *cfg;
    struct store *store;
    struct al_curl *curl;
    char *owner_id;
    char *jobs_dir;
    struct backend_slot *slots;
    size_t n_slots;
    struct ejob *queue, *queue_tail;
    struct ejob *running;
    struct engine_watch *watches;
    int notifying;
    uv_timer_t kick;
    uv_timer_t housekeeping;
    bool dirty; /* commits since the last store_sync */
    bool sync_busy;
    int workers; /* store syncs in flight */
    uint64_t last_prune;
    bool started;
    bool stopping;
    bool reconcile_only;
    struct store_vm *recorded; /* VM records found at reconcile */
    size_t n_recorded;
    /* warm pools */
    struct warm_vm *warm;
    int warm_dying;         /* warm VMs being destroyed */
    unsigned warm_failures; /* consecutive warm VMs that died before use */
    uint64_t warm_next_try;
    int pending_closes;
    /* reconcile */
    struct engine_reconcile_report report;
    int sweep_pending; /* list/destroy steps of a reconcile or sweep in flight */
    bool reconciling;  /* the sweep in flight is the start-up reconcile */
    uint64_t last_sweep;
    uint64_t last_reopen;
    void (*reconciled)(const struct engine_reconcile_report *r, void *data);
    void *reconciled_data;
    /* a sweep asked for through engine_sweep() */
    void (*swept)(const struct engine_reconcile_report *r, void *data);
    void *swept_data;
    /* stop */
    void (*stopped)(void *data);
    void *stopped_data;
    int backends_closing;
};

static void schedule(struct engine *e);
static void maybe_finish_stop(struct engine *e);
static void on_kick(uv_timer_t *t);
static void sweep_owned(struct engine *e);
static void warm_orphan_destroyed(int result, const struct al_error *err, void *data);
static struct warm_vm *warm_take(struct engine *e, struct ejob *j);
static void warm_fill(struct engine *e);
static bool slot_has_room(struct backend_slot *slot, int cpus, uint64_t mem, char *why, size_t size,
                          bool *ret_broken);

/* ------------------------------------------------------------ helpers */

static void kick(struct engine *e)
{
    /* coalesce: many changes in one loop turn schedule once */
    if (!e->stopping)
        uv_timer_start(&e->kick, on_kick, 0, 0);
}

/* Ends a round of observer callbacks; watches removed during it go now. */
static void notify_end(struct engine *e)
{
    if (--e->notifying > 0)
        return;
    for (struct engine_watch **pp = &e->watches; *pp;) {
        if ((*pp)->removed) {
            struct engine_watch *dead = *pp;
            *pp = dead->next;
            free(dead);
        } else {
            pp = &(*pp)->next;
        }
    }
}

static void notify_event(struct engine *e, const struct store_event *ev)
{
    e->notifying++;
    for (struct engine_watch *w = e->watches; w; w = w->next) {
        if (!w->removed && w->o.event)
            w->o.event(ev, w->data);
    }
    notify_end(e);
}

/* Commits a transition and tells the observers. */
static int transition(struct ejob *j, enum job_state to, const char *detail, bool has_code,
                      int code)
{
    struct engine *e = j->e;
    struct store_event ev = {0};
    struct al_error *err = NULL;
    struct store_transition t = {
            .to = to, .detail = detail, .has_exit_code = has_code, .exit_code = code};
    int r = store_job_transition(e->store, j->id, &t, &ev, &err);
    if (r < 0) {
        log_error(j->id, "recording %s -> %s failed: %s", job_state_to_string(j->state),
                  job_state_to_string(to), al_error_message(err));
        al_error_free(err);
        return r;
    }
    e->dirty = true;
    log_info(j->id, "%s -> %s%s%s", job_state_to_string(j->state), job_state_to_string(to),
             detail ? ": " : "", detail ? detail : "");
    j->state = to;
    notify_event(e, &ev);
    store_event_clear(&ev);
    return 0;
}

static void ejob_free(struct ejob *j)
{
    if (!j)
        return;
    if (j->secrets_registered)
        job_spec_unregister_secrets(j->spec);
    job_spec_free(j->spec);
    free(j->job_dir);
    free(j->workdir_tar);
    free(j->artifacts_dir);
    free(j->env);
    free(j->secrets);
    free((void *)j->req.artifacts);
    free(j);
}

/* The job is done with for good: tell the observers, then free it. */
static void job_finished(struct ejob *j, const struct attempt_result *last)
{
    struct engine *e = j->e;
    e->notifying++;
    for (struct engine_watch *w = e->watches; w; w = w->next) {
        if (!w->removed && w->o.finished)
            w->o.finished(j->id, j->state, last, w->data);
    }
    notify_end(e);
    ejob_free(j);
}

static void queue_push(struct engine *e, struct ejob *j, bool front)
{
    j->next = NULL;
    if (front) {
        j->next = e->queue;
        e->queue = j;
        if (!e->queue_tail)
            e->queue_tail = j;
    } else {
        if (e->queue_tail)
            e->queue_tail->next = j;
        else
            e->queue = j;
        e->queue_tail = j;
    }
}

static void queue_remove(struct engine *e, struct ejob *j)
{
    struct ejob *prev = NULL;
    for (struct ejob *q = e->queue; q; prev = q, q = q->next) {
        if (q != j)
            continue;
        if (prev)
            prev->next = q->next;
        else
            e->queue = q->next;
        if (e->queue_tail == q)
            e->queue_tail = prev;
        q->next = NULL;
        return;
    }
}

static void running_remove(struct engine *e, struct ejob *j)
{
    for (struct ejob **pp = &e->running; *pp; pp = &(*pp)->next) {
        if (*pp == j) {
            *pp = j->next;
            j->next = NULL;
            return;
        }
    }
}

static struct ejob *find_live(struct engine *e, const char *id)
{
    for (struct ejob *j = e->queue; j; j = j->next) {
        if (streq(j->id, id))
            return j;
    }
    for (struct ejob *j = e->running; j; j = j->next) {
        if (streq(j->id, id))
            return j;
    }
    return NULL;
}

static bool pool_has_labels(const struct config_pool *p, char *const *labels)
{
    for (char *const *l = labels; l && *l; l++) {
        bool found = false;
        for (char **pl = p->labels; pl && *pl && !found; pl++)
            found = streq(*pl, *l);
        if (!found)
            return false;
    }
    return true;
}

/* A job's pool: the one it names; else the first pool whose labels include
 * all of the job's labels; else the default pool. */
static const struct config_pool *pool_of(struct engine *e, const struct job_spec *spec)
{
    if (spec->pool)
        return config_find_pool(e->cfg, spec->pool);
    if (spec->n_labels) {
        for (size_t i = 0; i < e->cfg->n_pools; i++) {
            if (pool_has_labels(&e->cfg->pools[i], spec->labels))
                return &e->cfg->pools[i];
        }
        return NULL;
    }
    return config_find_pool(e->cfg, e->cfg->agent.pool);
}

/* The backends of a pool in order (every backend when it names none). */
static size_t pool_slots(struct engine *e, const struct config_pool *pool,
                         struct backend_slot **ret, size_t max)
{
    size_t n = 0;
    if (!pool || !pool->backends || !pool->backends[0]) {
        for (size_t i = 0; i < e->n_slots && n < max; i++)
            ret[n++] = &e->slots[i];
        return n;
    }
    for (char **name = pool->backends; *name && n < max; name++) {
        for (size_t i = 0; i < e->n_slots; i++) {
            if (streq(e->slots[i].cfg->name, *name))
                ret[n++] = &e->slots[i];
        }
    }
    return n;
}

char *engine_job_dir(struct engine *e, const char *job_id)
{
    return al_path_join(e->jobs_dir, job_id);
}

struct store *engine_store(struct engine *e)
{
    return e->store;
}

/* Builds the backend request from the spec; arrays point into the spec. */
static int build_request(struct ejob *j, struct al_error **err)
{
    const struct job_spec *s = j->spec;
    const struct config *cfg = j->e->cfg;
    free(j->env);
    free(j->secrets);
    free((void *)j->req.artifacts);
    j->env = calloc(s->n_env + 1, sizeof(*j->env));
    j->secrets = calloc(s->n_secret_env + 1, sizeof(*j->secrets));
    const char **arts = calloc(s->n_artifacts + 1, sizeof(char *));
    if (!j->env || !j->secrets || !arts) {
        free(arts);
        return al_error_set(err, ENOMEM, "building the VM request");
    }
    for (size_t i = 0; i < s->n_env; i++)
        j->env[i] = (struct env_pair){s->env[i].name, s->env[i].value};
    for (size_t i = 0; i < s->n_secret_env; i++)
        j->secrets[i] = (struct env_pair){s->secret_env[i].name, s->secret_env[i].value};
    for (size_t i = 0; i < s->n_artifacts; i++)
        arts[i] = s->artifacts[i];
    j->req = (struct vm_request){
            .job_id = j->id,
            .image = s->image ? s->image : cfg->agent.image,
            .cpus = s->resources.cpus,
            .memory = (uint64_t)s->resources.memory_mb << 20,
            .disk_bytes = (uint64_t)s->resources.disk_gb << 30,
            .inject = s->inject,
            .argv = (const char *const *)s->command,
            .script = s->script,
            .env = j->env,
            .n_env = s->n_env,
            .secret_env = j->secrets,
            .n_secret_env = s->n_secret_env,
            .timeout_s = s->timeout_s,
            .artifacts = s->n_artifacts ? arts : NULL,
            .max_artifact_bytes = cfg->agent.max_artifact_bytes,
            .workdir_tar = j->workdir_tar,
    };
    if (!s->n_artifacts) {
        free(arts);
        j->req.artifacts = NULL;
    }
    return 0;
}

/* ------------------------------------------------------------ attempts */

static enum job_state outcome_state(enum attempt_outcome o)
{
    switch (o) {
    case ATTEMPT_SUCCEEDED:
        return JOB_STATE_SUCCEEDED;
    case ATTEMPT_FAILED:
        return JOB_STATE_FAILED;
    case ATTEMPT_TIMED_OUT:
        return JOB_STATE_TIMED_OUT;
    case ATTEMPT_CANCELED:
        return JOB_STATE_CANCELED;
    case ATTEMPT_ERROR:
        break;
    }
    return JOB_STATE_ERROR;
}

static void on_attempt_phase(struct attempt *a, enum vm_phase phase, void *data)
{
    (void)a;
    struct ejob *j = data;
    if (phase == VM_PHASE_BOOTING && j->state == JOB_STATE_PROVISIONING)
        transition(j, JOB_STATE_BOOTING, j->vm_name, false, 0);
    else if (phase == VM_PHASE_RUNNING && j->state == JOB_STATE_BOOTING)
        transition(j, JOB_STATE_RUNNING, NULL, false, 0);
}

static void on_attempt_output(struct attempt *a, enum vm_stream s, const char *buf, size_t len,
                              void *data)
{
    (void)a;
    struct ejob *j = data;
    struct engine *e = j->e;
    e->notifying++;
    for (struct engine_watch *w = e->watches; w; w = w->next) {
        if (!w->removed && w->o.output)
            w->o.output(j->id, s, buf, len, w->data);
    }
    notify_end(e);
}

static void on_attempt_diag(struct attempt *a, const char *msg, void *data)
{
    (void)a;
    struct ejob *j = data;
    log_info(j->id, "guest: %s", msg);
}

/* A guest the boot watchdog ended never showed a sign of life: the
 * accelerator could not run it, not the job. Its job gets one more attempt
 * (under TCG, which the backend has switched to) that does not count. */
static bool free_retry(const struct ejob *j, const struct attempt_result *r)
{
    return r->silent_boot && !j->silent_retried;
}

static void on_attempt_decided(struct attempt *a, const struct attempt_result *r, void *data)
{
    (void)a;
    struct ejob *j = data;
    struct engine *e = j->e;
    enum job_state to = outcome_state(r->outcome);
    const char *detail = r->reason;
    char buf[700];
    if (e->stopping && !j->cancel_requested && to == JOB_STATE_CANCELED) {
        to = JOB_STATE_ERROR;
        detail = "agentlabd is shutting down";
    } else if (to == JOB_STATE_ERROR && free_retry(j, r) && !j->cancel_requested && !e->stopping) {
        snprintf(buf, sizeof(buf), "%.600s (retrying once on a fresh VM under TCG)", r->reason);
        detail = buf;
    } else if (to == JOB_STATE_ERROR && j->attempts < j->max_attempts && !j->cancel_requested &&
               !e->stopping) {
        snprintf(buf, sizeof(buf), "%.600s (attempt %d of %d; retrying on a fresh VM)", r->reason,
                 j->attempts, j->max_attempts);
        detail = buf;
    }
    bool code = to == JOB_STATE_SUCCEEDED || to == JOB_STATE_FAILED;
    transition(j, to, detail, code, r->exit_code);
}

static void index_artifacts(struct ejob *j, const struct attempt_result *r)
{
    if (!r->have_artifacts || !r->artifacts.files)
        return;
    log_info(j->id, "artifacts: %" PRIu64 " files, %" PRIu64 " bytes%s%s", r->artifacts.files,
             r->artifacts.bytes, r->artifacts.note[0] ? "; " : "", r->artifacts.note);
}

static void on_attempt_done(struct attempt *a, const struct attempt_result *r, void *data)
{
    (void)a;
    struct ejob *j = data;
    struct engine *e = j->e;
    struct al_error *err = NULL;
    j->attempt = NULL;
    running_remove(e, j);

    if (r->cleanup_failed)
        log_error(j->id, "VM %s was not fully removed: %s", j->vm_name, r->cleanup_error);
    else if (store_vm_remove(e->store, j->backend->name, j->vm_name, &err) < 0)
        log_error(j->id, "forgetting VM %s in the database: %s", j->vm_name, al_error_message(err));
    err = al_error_free(err);
    if (store_job_set_log_bytes(e->store, j->id, r->log_bytes, &err) < 0)
        log_error(j->id, "storing the output size: %s", al_error_message(err));
    err = al_error_free(err);
    if (r->limits) {
        char names[256];
        al_limit_mask_format(r->limits, ", ", names, sizeof(names));
        log_warn(j->id, "attempt %d ran into limits: %s%s", j->attempts, names,
                 r->throttled_ms ? " (the guest channel was throttled)" : "");
        if (store_job_add_limits(e->store, j->id, r->limits, &err) < 0)
            log_error(j->id, "storing the limits hit: %s", al_error_message(err));
        err = al_error_free(err);
    }
    index_artifacts(j, r);
    bool free_attempt = j->state == JOB_STATE_ERROR && free_retry(j, r);
    if (free_attempt) {
        j->silent_retried = true;
        j->max_attempts++; /* this attempt does not count */
    }
    bool retry = j->state == JOB_STATE_ERROR && !j->cancel_requested && !j->retry_blocked &&
                 j->attempts < j->max_attempts;
    e->notifying++;
    for (struct engine_watch *w = e->watches; w; w = w->next) {
        if (!w->removed && w->o.attempt_done)
            w->o.attempt_done(j->id, j->attempts, r, w->data);
    }
    notify_end(e);
    log_info(j->id,
             "attempt %d on %s done in %.1fs (provision %.2fs, start %.2fs, boot %.1fs, "
             "run %.1fs, cleanup %.2fs)",
             j->attempts, j->backend->name, (double)r->ms_total / 1000.0,
             (double)r->ms_provision / 1000.0, (double)r->ms_start / 1000.0,
             (double)r->ms_boot / 1000.0, (double)r->ms_run / 1000.0,
             (double)r->ms_cleanup / 1000.0);
    j->backend = NULL;

    if (retry) {
        struct store_event ev = {0};
        if (store_job_retry(e->store, j->id,
                            free_attempt ? "retrying once on a fresh VM under TCG"
                                         : "retrying on a fresh VM",
                            free_attempt, &ev, &err) == 0) {
            j->state = JOB_STATE_QUEUED;
            notify_event(e, &ev);
            store_event_clear(&ev);
            /* a retry goes first: it has waited already */
            queue_push(e, j, true);
            kick(e);
            maybe_finish_stop(e);
            return;
        }
        log_error(j->id, "cannot requeue: %s", al_error_message(err));
        al_error_free(err);
    }
    job_finished(j, r);
    kick(e);
    maybe_finish_stop(e);
}

static const struct attempt_callbacks attempt_cbs = {
        .phase = on_attempt_phase,
        .output = on_attempt_output,
        .diag = on_attempt_diag,
        .decided = on_attempt_decided,
        .done = on_attempt_done,
};

/* Rotates output.log of the previous attempt out of the way. */
static void rotate_log(struct ejob *j)
{
    if (j->attempts <= 1)
        return;
    _cleanup_free_ char *cur = al_path_join(j->job_dir, "output.log");
    _cleanup_free_ char *old = NULL;
    if (cur && asprintf(&old, "%s/output.attempt%d.log", j->job_dir, j->attempts - 1) >= 0)
        rename(cur, old);
}

/* Starts the job's next attempt on slot's backend, on the warm VM vm when
 * one is given (the attempt then owns it). */
static void start_attempt(struct ejob *j, struct backend_slot *slot, struct vm *warm)
{
    struct engine *e = j->e;
    struct backend *b = slot->b;
    struct al_error *err = NULL;
    char detail[240];
    if (warm)
        snprintf(detail, sizeof(detail), "attempt %d on backend %s, warm VM %.120s",
                 j->attempts + 1, b->name, warm->name);
    else
        snprintf(detail, sizeof(detail), "attempt %d on backend %s", j->attempts + 1, b->name);
    if (transition(j, JOB_STATE_PROVISIONING, detail, false, 0) < 0) {
        /* the store refused: the job cannot make progress; end it */
        transition(j, JOB_STATE_ERROR, "recording the job's progress failed", false, 0);
        job_finished(j, NULL);
        if (warm)
            b->ops->destroy(warm, warm_orphan_destroyed, e);
        return;
    }
    j->attempts++;
    j->backend = b;
    slot->jobs_started++;
    j->req.attempt = j->attempts;
    int nr = warm ? (snprintf(j->vm_name, sizeof(j->vm_name), "%s", warm->name), 0)
                  : b->ops->vm_name(b, j->id, j->attempts, j->vm_name, sizeof(j->vm_name));
    if (nr < 0 || store_vm_add(e->store, b->name, j->vm_name, j->id, &err) < 0) {
        transition(j, JOB_STATE_ERROR, err ? al_error_message(err) : "naming the VM failed", false,
                   0);
        al_error_free(err);
        job_finished(j, NULL);
        if (warm)
            b->ops->destroy(warm, warm_orphan_destroyed, e);
        return;
    }
    rotate_log(j);
    struct attempt_params ap = {
            .backend = b,
            .warm_vm = warm,
            .req = &j->req,
            .job_dir = j->job_dir,
            .artifacts_dir = j->artifacts_dir,
            .boot_timeout_s = e->cfg->agent.boot_timeout_s,
            .run_grace_s = RUN_GRACE_S,
            .max_log_bytes = e->cfg->agent.max_log_bytes,
            .artifact_limits = {.max_bytes = e->cfg->agent.max_artifact_bytes,
                                .max_files = (uint64_t)e->cfg->agent.max_artifact_files},
    };
    j->next = e->running;
    e->running = j;
    if (attempt_start(e->loop, &ap, &attempt_cbs, j, &j->attempt, &err) < 0) {
        running_remove(e, j);
        if (warm)
            b->ops->destroy(warm, warm_orphan_destroyed, e);
        struct al_error *rerr = NULL;
        if (store_vm_remove(e->store, b->name, j->vm_name, &rerr) < 0)
            log_error(j->id, "forgetting VM %s in the database: %s", j->vm_name,
                      al_error_message(rerr));
        al_error_free(rerr);
        char msg[600];
        snprintf(msg, sizeof(msg), "%s", al_error_message(err));
        al_error_free(err);
        transition(j, JOB_STATE_ERROR, msg, false, 0);
        j->backend = NULL;
        job_finished(j, NULL);
    }
}

/* ------------------------------------------------------------ warm pools */

/* Each pool with warm = N keeps N VMs booted from fresh overlays, their
 * helper waiting on the channel. A job of the pool that fits (default image,
 * no more vCPUs or memory than the warm VM has) takes one instead of a cold
 * VM; it is destroyed after that job like any other, never reused, and a
 * replacement boots at once. Warm VMs count against capacity, are recycled
 * after warm_max_idle, and are reconciled after a crash like any owned VM. */

static void warm_destroyed(int result, const struct al_error *err, void *data)
{
    (void)result;
    (void)err;
    struct engine *e = data;
    e->warm_dying--;
    kick(e);
    maybe_finish_stop(e);
}

static void warm_orphan_destroyed(int result, const struct al_error *err, void *data)
{
    warm_destroyed(result, err, data);
}

static void warm_unlink(struct warm_vm *w)
{
    for (struct warm_vm **pp = &w->e->warm; *pp; pp = &(*pp)->next) {
        if (*pp == w) {
            *pp = w->next;
            return;
        }
    }
}

/* Destroys a warm VM that will not be used. */
static void warm_destroy(struct warm_vm *w)
{
    struct engine *e = w->e;
    warm_unlink(w);
    e->warm_dying++;
    struct vm *vm = w->vm;
    free(w);
    vm->backend->ops->destroy(vm, warm_destroyed, e);
}

static void warm_phase(struct vm *vm, enum vm_phase phase, void *data)
{
    (void)vm;
    struct warm_vm *w = data;
    if (phase != VM_PHASE_CONNECTED)
        return;
    w->ready = true;
    w->ready_at = uv_now(w->e->loop);
    w->e->warm_failures = 0;
    log_info(NULL, "warm VM %s ready for pool %s", w->vm->name, w->pool->name);
    kick(w->e);
}

static void warm_finished(struct vm *vm, const struct vm_result *r, void *data)
{
    (void)vm;
    struct warm_vm *w = data;
    struct engine *e = w->e;
    log_warn(NULL, "warm VM %s ended before it got a job: %s", w->vm->name, r->reason);
    /* back off while warm VMs keep dying: 2 s, 4 s, ... up to 5 min */
    e->warm_failures++;
    unsigned shift = e->warm_failures < 8 ? e->warm_failures : 8;
    e->warm_next_try = uv_now(e->loop) + (1000u << shift);
    warm_destroy(w);
}

static const struct vm_events warm_events = {
        .phase = warm_phase,
        .finished = warm_finished,
};

/* Takes a ready warm VM for job j out of the pool, or returns NULL. */
static struct warm_vm *warm_take(struct engine *e, struct ejob *j)
{
    const struct config_pool *pool = pool_of(e, j->spec);
    const struct job_spec *s = j->spec;
    for (struct warm_vm *w = e->warm; w; w = w->next) {
        if (!w->ready || w->pool != pool || !w->slot->b || !w->vm->backend->ops->assign)
            continue;
        if (!streq(s->image ? s->image : e->cfg->agent.image, w->req.image) ||
            s->resources.cpus > w->req.cpus ||
            ((uint64_t)s->resources.memory_mb << 20) > w->req.memory)
            continue;
        warm_unlink(w);
        return w;
    }
    return NULL;
}

static void warm_launch(struct engine *e, const struct config_pool *pool, struct backend_slot *slot)
{
    struct warm_vm *w = calloc(1, sizeof(*w));
    _cleanup_free_ char *rnd = al_random_hex(4);
    if (!w || !rnd) {
        free(w);
        return;
    }
    snprintf(w->id, sizeof(w->id), "w%012llx%s", (unsigned long long)al_now_wall_ms(), rnd);
    w->e = e;
    w->pool = pool;
    w->slot = slot;
    w->req = (struct vm_request){
            .job_id = w->id,
            .image = e->cfg->agent.image,
            .cpus = e->cfg->agent.job_cpus,
            .memory = e->cfg->agent.job_memory,
            .inject = -1,
            .warm = true,
    };
    struct al_error *err = NULL;
    if (slot->b->ops->launch(slot->b, &w->req, &warm_events, w, &w->vm, &err) < 0) {
        log_warn(NULL, "pool %s: starting a warm VM on %s: %s", pool->name, slot->cfg->name,
                 al_error_message(err));
        al_error_free(err);
        free(w);
        e->warm_failures++;
        e->warm_next_try = uv_now(e->loop) + 5000;
        return;
    }
    w->launched_at = uv_now(e->loop);
    w->next = e->warm;
    e->warm = w;
    log_info(NULL, "pool %s: booting warm VM %s on %s", pool->name, w->vm->name, slot->cfg->name);
}

/* Tops every pool up to its warm count where a backend has room. */
static void warm_fill(struct engine *e)
{
    if (!e->started || e->stopping || e->reconcile_only || uv_now(e->loop) < e->warm_next_try)
        return;
    for (size_t p = 0; p < e->cfg->n_pools; p++) {
        const struct config_pool *pool = &e->cfg->pools[p];
        int have = 0;
        int want = engine_warm_target(pool, al_now_wall_ms());
        for (struct warm_vm *w = e->warm; w; w = w->next)
            have += w->pool == pool;
        struct backend_slot *slots[32];
        size_t n = pool_slots(e, pool, slots, ARRAY_SIZE(slots));
        while (have < want) {
            struct backend_slot *slot = NULL;
            for (size_t i = 0; i < n && !slot; i++) {
                char why[256];
                if (slots[i]->b && slots[i]->b->ops->assign &&
                    slot_has_room(slots[i], e->cfg->agent.job_cpus, e->cfg->agent.job_memory, why,
                                  sizeof(why), NULL))
                    slot = slots[i];
            }
            if (!slot)
                break;
            warm_launch(e, pool, slot);
            have++;
            if (uv_now(e->loop) < e->warm_next_try)
                return; /* the launch failed */
        }
    }
}

size_t engine_warm_list(struct engine *e, struct engine_warm_info *ret, size_t max)
{
    size_t n = 0;
    for (struct warm_vm *w = e->warm; w; w = w->next, n++) {
        if (n >= max)
            continue;
        struct engine_warm_info *i = &ret[n];
        snprintf(i->name, sizeof(i->name), "%s", w->vm->name);
        i->backend = w->slot->cfg->name;
        i->pool = w->pool->name;
        i->ready = w->ready;
        i->age_ms = uv_now(e->loop) - w->launched_at;
    }
    return n;
}

int engine_warm_target(const struct config_pool *pool, int64_t now_wall_ms)
{
    if (pool->warm_peak <= 0 || pool->warm_peak_end <= pool->warm_peak_start)
        return pool->warm;
    time_t t = (time_t)(now_wall_ms / 1000);
    struct tm tm;
    localtime_r(&t, &tm);
    bool weekday = tm.tm_wday >= 1 && tm.tm_wday <= 5;
    bool in_hours = tm.tm_hour >= pool->warm_peak_start && tm.tm_hour < pool->warm_peak_end;
    return weekday && in_hours ? pool->warm_peak : pool->warm;
}

/* Recycles warm VMs idle longer than their pool's warm_max_idle, and those a
 * pool no longer wants (its peak hours ended). */
static void warm_recycle(struct engine *e)
{
    uint64_t now = uv_now(e->loop);
    for (size_t p = 0; p < e->cfg->n_pools; p++) {
        const struct config_pool *pool = &e->cfg->pools[p];
        int surplus = -engine_warm_target(pool, al_now_wall_ms());
        for (struct warm_vm *w = e->warm; w; w = w->next)
            surplus += w->pool == pool;
        for (struct warm_vm *w = e->warm, *next; w && surplus > 0; w = next) {
            next = w->next;
            if (w->pool == pool && w->ready) {
                log_info(NULL, "pool %s: fewer warm VMs wanted now; destroying %s", pool->name,
                         w->vm->name);
                warm_destroy(w);
                surplus--;
            }
        }
    }
    for (struct warm_vm *w = e->warm, *next; w; w = next) {
        next = w->next;
        if (w->ready && now - w->ready_at > (uint64_t)w->pool->warm_max_idle_s * 1000u) {
            log_info(NULL, "recycling warm VM %s after %" PRId64 " s idle", w->vm->name,
                     w->pool->warm_max_idle_s);
            warm_destroy(w);
        }
    }
}

/* ------------------------------------------------------------ scheduling */

static bool slot_fits(struct backend_slot *slot, const struct ejob *j, char *why, size_t size,
                      bool *ret_broken)
{
    return slot_has_room(slot, j->spec->resources.cpus,
                         (uint64_t)j->spec->resources.memory_mb << 20, why, size, ret_broken);
}

/* Whether the backend can take a VM of that size now. ret_broken (may be
 * NULL) says the backend cannot work until an operator fixes it (bad
 * credentials, a certificate mismatch). */
static bool slot_has_room(struct backend_slot *slot, int cpus, uint64_t mem, char *why, size_t size,
                          bool *ret_broken)
{
    if (ret_broken)
        *ret_broken = false;
    if (!slot->b) {
        snprintf(why, size, "backend %.63s is not available: %.80s", slot->cfg->name,
                 slot->open_error);
        return false;
    }
    struct backend_capacity c;
    slot->b->ops->capacity(slot->b, &c);
    if (!c.healthy) {
        snprintf(why, size, "backend %.63s is unhealthy: %.150s", slot->cfg->name, c.reason);
        if (ret_broken)
            *ret_broken = c.broken;
        return false;
    }
    if (c.used_vms >= c.max_vms || c.used_vcpus + cpus > c.vcpus ||
        c.used_memory + mem > c.memory) {
        snprintf(why, size, "backend %.63s is full (%d/%d VMs, %d/%d vCPUs)", slot->cfg->name,
                 c.used_vms, c.max_vms, c.used_vcpus, c.vcpus);
        return false;
    }
    return true;
}

static void schedule(struct engine *e)
{
    if (!e->started || e->stopping || e->reconcile_only)
        return;
    for (struct ejob *j = e->queue, *next; j; j = next) {
        next = j->next;
        struct warm_vm *w = warm_take(e, j);
        if (w) {
            queue_remove(e, j);
            struct backend_slot *slot = w->slot;
            struct vm *vm = w->vm;
            free(w);
            start_attempt(j, slot, vm);
            continue;
        }
        struct backend_slot *slots[32];
        size_t n = pool_slots(e, pool_of(e, j->spec), slots, ARRAY_SIZE(slots));
        char why[256] = "";
        bool all_broken = n > 0, started = false;
        for (size_t i = 0; i < n; i++) {
            char reason[256];
            bool broken;
            if (!slot_fits(slots[i], j, reason, sizeof(reason), &broken)) {
                if (!why[0])
                    snprintf(why, sizeof(why), "%s", reason);
                all_broken &= broken;
                continue;
            }
            if (i > 0) {
                snprintf(slots[0]->last_fallback, sizeof(slots[0]->last_fallback), "%.150s", why);
                log_info(j->id, "falling back to backend %s: %s", slots[i]->cfg->name, why);
            }
            queue_remove(e, j);
            start_attempt(j, slots[i], NULL);
            started = true;
            break;
        }
        if (!started && all_broken) {
            /* waiting would be forever: only an operator can fix this */
            char msg[400];
            snprintf(msg, sizeof(msg),
                     "no backend of the pool can run jobs until its "
                     "configuration is fixed: %s",
                     why);
            queue_remove(e, j);
            transition(j, JOB_STATE_ERROR, msg, false, 0);
            job_finished(j, NULL);
        }
    }
}

static void on_kick(uv_timer_t *t)
{
    schedule(t->data);
    warm_fill(t->data);
}

/* ------------------------------------------------------------ submit */

static int job_dir_prepare(struct engine *e, struct ejob *j, const struct engine_submit *opts,
                           struct al_error **err)
{
    j->job_dir = engine_job_dir(e, j->id);
    if (!j->job_dir)
        return al_error_set(err, ENOMEM, "job dir");
    int r = al_mkdir_p(j->job_dir, 0750, err);
    if (r < 0)
        return r;
    if (opts && opts->artifacts_dir) {
        j->artifacts_dir = strdup(opts->artifacts_dir);
        if (!j->artifacts_dir)
            return al_error_set(err, ENOMEM, "job dir");
    }
    if (opts && opts->workdir_tar) {
        j->workdir_tar = al_path_join(j->job_dir, "workdir.tar");
        if (!j->workdir_tar)
            return al_error_set(err, ENOMEM, "job dir");
        if (rename(opts->workdir_tar, j->workdir_tar) < 0)
            return al_error_set_errno(err, errno, "moving the work dir archive into %s",
                                      j->job_dir);
    }
    return 0;
}

static int validate(struct engine *e, struct job_spec *spec, struct al_error **err)
{
    const struct config_pool *pool = pool_of(e, spec);
    if (!pool && !spec->pool && spec->n_labels)
        return al_error_set(err, EINVAL, "labels: no pool carries all of the job's labels");
    if (!pool)
        return al_error_set(err, EINVAL, "pool: no pool named \"%s\"",
                            spec->pool ? spec->pool : e->cfg->agent.pool);
    struct backend_slot *slots[32];
    size_t n = pool_slots(e, pool, slots, ARRAY_SIZE(slots));
    bool fits = false, needs_image = false;
    uint64_t mem = (uint64_t)spec->resources.memory_mb << 20;
    for (size_t i = 0; i < n; i++) {
        if (slots[i]->cfg->type == BACKEND_LIBVIRT)
            needs_image = true;
        if (!slots[i]->b) {
            fits = true; /* unknown capacity: it may come back */
            continue;
        }
        struct backend_capacity c;
        slots[i]->b->ops->capacity(slots[i]->b, &c);
        if (spec->resources.cpus <= c.vcpus && mem <= c.memory && c.max_vms > 0)
            fits = true;
    }
    if (!fits)
        return al_error_set(err, EINVAL,
                            "resources: %d vCPUs and %d MiB fit no backend of pool \"%s\"",
                            spec->resources.cpus, spec->resources.memory_mb, pool->name);
    /* the overlay may grow to the disk's virtual size on the host */
    uint64_t max_disk = e->cfg->agent.max_disk_bytes;
    uint64_t disk = (uint64_t)spec->resources.disk_gb << 30;
    if (max_disk && disk > max_disk) {
        limits_hit(AL_LIMIT_DISK_SIZE);
        return al_error_set(err, EINVAL,
                            "resources.disk_gb: %d GiB is more than max_disk_size (%" PRIu64
                            " GiB)",
                            spec->resources.disk_gb, max_disk >> 30);
    }
    if (needs_image) {
        struct image_info *img = NULL;
        int r = image_find(e->cfg->agent.state_dir, spec->image, &img, err);
        uint64_t vsize = img ? img->virtual_size : 0;
        image_info_free(img);
        if (r < 0)
            return al_error_wrap(err, "image");
        if (max_disk && vsize > max_disk) {
            limits_hit(AL_LIMIT_DISK_SIZE);
            return al_error_set(err, EINVAL,
                                "image: the disk of %s is %" PRIu64
                                " MiB, more than max_disk_size (%" PRIu64 " MiB)",
                                spec->image, vsize >> 20, max_disk >> 20);
        }
    }
    return 0;
}

int engine_submit(struct engine *e, struct job_spec *spec, const struct engine_submit *opts,
                  char ret_id[STORE_JOB_ID_SIZE], struct al_error **err)
{
    if (e->stopping) {
        job_spec_free(spec);
        return al_error_set(err, ESHUTDOWN, "agentlabd is shutting down");
    }
    if (e->notifying) {
        /* an observer must defer its submissions to the loop (engine.h) */
        job_spec_free(spec);
        return al_error_set(err, EDEADLK, "engine_submit from inside an observer callback");
    }
    int r = job_spec_apply_defaults(spec, e->cfg, err);
    if (r == 0)
        r = validate(e, spec, err);
    if (r < 0) {
        job_spec_free(spec);
        return r;
    }
    struct ejob *j = calloc(1, sizeof(*j));
    if (!j) {
        job_spec_free(spec);
        return al_error_set(err, ENOMEM, "accepting the job");
    }
    j->e = e;
    j->spec = spec;
    r = job_spec_register_secrets(spec, err);
    if (r < 0) {
        ejob_free(j);
        return r;
    }
    j->secrets_registered = true;
    struct store_event ev = {0};
    r = store_job_insert(e->store, spec, j->id, &ev, err);
    if (r < 0) {
        ejob_free(j);
        return r;
    }
    e->dirty = true;
    j->state = JOB_STATE_QUEUED;
    j->max_attempts = spec->max_attempts;
    r = job_dir_prepare(e, j, opts, err);
    if (r == 0)
        r = build_request(j, err);
    if (r < 0) {
        char msg[400];
        snprintf(msg, sizeof(msg), "accepting the job: %s", err ? al_error_message(*err) : "");
        struct store_transition t = {.to = JOB_STATE_ERROR, .detail = msg};
        struct al_error *terr = NULL;
        if (store_job_transition(e->store, j->id, &t, NULL, &terr) < 0)
            log_error(j->id, "storing the refusal (%s): %s", msg, al_error_message(terr));
        al_error_free(terr);
        store_event_clear(&ev);
        ejob_free(j);
        return r;
    }
    log_info(j->id, "accepted (%s, pool %s, image %s)",
             spec->name ? spec->name : (spec->script ? "script" : spec->command[0]),
             spec->pool ? spec->pool : e->cfg->agent.pool, spec->image);
    notify_event(e, &ev);
    store_event_clear(&ev);
    memcpy(ret_id, j->id, STORE_JOB_ID_SIZE);
    queue_push(e, j, false);
    kick(e);
    return 0;
}

int engine_cancel(struct engine *e, const char *job_id, struct al_error **err)
{
    struct ejob *j = find_live(e, job_id);
    if (!j) {
        struct store_job *sj = NULL;
        struct al_error *gerr = NULL;
        int r = store_job_get(e->store, job_id, &sj, &gerr);
        al_error_free(gerr);
        if (r < 0)
            return al_error_set(err, ENOENT, "no job %s", job_id);
        bool terminal = job_state_is_terminal(sj->state);
        store_job_free(sj);
        return terminal ? al_error_set(err, EALREADY, "job %s has already ended", job_id)
                        : al_error_set(err, EBUSY, "job %s is not handled by this daemon", job_id);
    }
    if (j->cancel_requested)
        return 0;
    j->cancel_requested = true;
    if (j->state == JOB_STATE_QUEUED) {
        queue_remove(e, j);
        transition(j, JOB_STATE_CANCELED, "canceled while queued", false, 0);
        job_finished(j, NULL);
        return 0;
    }
    log_info(job_id, "cancel requested in %s", job_state_to_string(j->state));
    attempt_cancel(j->attempt);
    return 0;
}

/* ------------------------------------------------------------ sync, prune */

struct sync_req {
    struct engine *e;
    void (*done)(int result, void *data);
    void *data;
};

static int sync_work(void *data, struct al_error **err)
{
    struct sync_req *s = data;
    return store_sync(s->e->store, err);
}

static void sync_done(void *data, int result, struct al_error *err)
{
    struct sync_req *s = data;
    struct engine *e = s->e;
    if (result < 0)
        log_warn(NULL, "store sync failed: %s", al_error_message(err));
    al_error_free(err);
    if (s->done)
        s->done(result, s->data);
    else
        e->sync_busy = false;
    free(s);
    e->workers--;
    maybe_finish_stop(e);
}

void engine_sync(struct engine *e, void (*done)(int result, void *data), void *data)
{
    struct sync_req *s = calloc(1, sizeof(*s));
    if (s) {
        s->e = e;
        s->done = done;
        s->data = data;
    }
    if (!s || al_work_queue(e->loop, sync_work, sync_done, s, NULL) < 0) {
        free(s);
        if (done)
            done(-ENOMEM, data);
        else
            e->sync_busy = false;
        return;
    }
    e->workers++;
    e->dirty = false;
}

void engine_prune(struct engine *e)
{
    struct store_prune_policy pol = {
            .now_ms = al_now_wall_ms(),
            .max_age_ms = e->cfg->agent.retention_s * 1000,
            .max_bytes = e->cfg->agent.retention_bytes,
    };
    struct store_prune_result res = {0};
    struct al_error *err = NULL;
    if (store_prune(e->store, &pol, &res, &err) < 0) {
        log_warn(NULL, "retention pass failed: %s", al_error_message(err));
        al_error_free(err);
        return;
    }
    for (size_t i = 0; i < res.n; i++) {
        _cleanup_free_ char *dir = engine_job_dir(e, res.jobs[i].id);
        if (dir && al_rm_rf(dir, &err) < 0)
            err = al_error_free(err);
    }
    if (res.n)
        log_info(NULL, "retention: pruned %zu finished jobs (%" PRIu64 " bytes)", res.n, res.bytes);
    store_prune_result_clear(&res);
}

/* Backends that failed to open (libvirtd down at start) are tried again. */
static void reopen_backends(struct engine *e)
{
    struct backend_env env = {
            .loop = e->loop, .curl = e->curl, .cfg = e->cfg, .owner_id = e->owner_id};
    for (size_t i = 0; i < e->n_slots; i++) {
        struct backend_slot *s = &e->slots[i];
        if (s->b)
            continue;
        struct al_error *err = NULL;
        if (backend_new(&env, s->cfg, &s->b, &err) == 0) {
            log_info(NULL, "backend %s is available again", s->cfg->name);
            s->open_error[0] = '\0';
            kick(e);
        } else {
            snprintf(s->open_error, sizeof(s->open_error), "%s", al_error_message(err));
            al_error_free(err);
            s->b = NULL;
        }
    }
}

static void on_housekeeping(uv_timer_t *t)
{
    struct engine *e = t->data;
    if (e->dirty && !e->sync_busy) {
        e->sync_busy = true;
        engine_sync(e, NULL, NULL);
    }
    uint64_t now = uv_now(e->loop);
    if (now - e->last_prune >= PRUNE_INTERVAL_MS) {
        e->last_prune = now;
        engine_prune(e);
    }
    /* a backend may have become healthy again; schedule() is cheap */
    if (e->queue)
        kick(e);
    if (now - e->last_reopen >= REOPEN_INTERVAL_MS) {
        e->last_reopen = now;
        reopen_backends(e);
    }
    warm_recycle(e);
    warm_fill(e);
    if (e->started && !e->sweep_pending && now - e->last_sweep >= SWEEP_INTERVAL_MS) {
        e->last_sweep = now;
        e->report = (struct engine_reconcile_report){0};
        sweep_owned(e);
    }
}

/* ------------------------------------------------------------ reconcile */

static void sweep_step_done(struct engine *e)
{
    if (--e->sweep_pending > 0)
        return;
    if (!e->reconciling) {
        if (e->report.vms_destroyed)
            log_info(NULL, "sweep: destroyed %u VMs no job was using", e->report.vms_destroyed);
        if (e->swept) {
            void (*cb)(const struct engine_reconcile_report *, void *) = e->swept;
            e->swept = NULL;
            cb(&e->report, e->swept_data);
        }
        maybe_finish_stop(e);
        return;
    }
    e->reconciling = false;
    /* the VM records found at the start described what was just swept */
    struct al_error *err = NULL;
    for (size_t i = 0; i < e->n_recorded; i++) {
        const struct store_vm *vm = &e->recorded[i];
        if (store_vm_remove(e->store, vm->backend, vm->vm_name, &err) < 0)
            log_error(vm->job_id[0] ? vm->job_id : NULL,
                      "forgetting swept VM %s in the database: %s", vm->vm_name,
                      al_error_message(err));
        err = al_error_free(err);
    }
    store_vms_free(e->recorded, e->n_recorded);
    e->recorded = NULL;
    e->n_recorded = 0;
    const struct engine_reconcile_report *r = &e->report;
    log_info(NULL,
             "reconcile: %u running jobs ended as ERROR (%u requeued), %u queued jobs resumed, "
             "%u VMs destroyed, %u errors",
             r->jobs_failed, r->jobs_requeued, r->jobs_resumed, r->vms_destroyed, r->errors);
    e->started = true;
    if (e->reconciled)
        e->reconciled(&e->report, e->reconciled_data);
    kick(e);
    maybe_finish_stop(e);
}

struct destroy_ctx {
    struct engine *e;
    char name[160];
    char backend[64];
};

static void on_owned_destroyed(int result, const struct al_error *err, void *data)
{
    struct destroy_ctx *d = data;
    if (result < 0) {
        d->e->report.errors++;
        log_error(NULL, "reconcile: destroying %s on %s failed: %s", d->name, d->backend,
                  al_error_message(err));
    } else {
        d->e->report.vms_destroyed++;
        log_info(NULL, "reconcile: destroyed %s on %s", d->name, d->backend);
    }
    struct engine *e = d->e;
    free(d);
    sweep_step_done(e);
}

static bool owned_by_us(struct engine *e, struct backend *b, const struct owned_vm *v)
{
    if (v->owner)
        return streq(v->owner, e->owner_id) || owner_is_dead_run(v->owner);
    /* a leftover without an owner record (its run dir was on tmpfs and the
     * host rebooted) is ours only if our store recorded it */
    for (size_t i = 0; i < e->n_recorded; i++) {
        if (streq(e->recorded[i].backend, b->name) && streq(e->recorded[i].vm_name, v->name))
            return true;
    }
    return false;
}

/* True when the VM belongs to a running attempt of this engine. */
static bool vm_is_live(struct engine *e, struct backend *b, const char *name)
{
    for (struct ejob *j = e->running; j; j = j->next) {
        if (j->backend == b && streq(j->vm_name, name))
            return true;
    }
    for (struct warm_vm *w = e->warm; w; w = w->next) {
        if (w->slot->b == b && streq(w->vm->name, name))
            return true;
    }
    return false;
}

struct list_ctx {
    struct engine *e;
    struct backend_slot *slot;
};

static void on_listed(int result, struct owned_vm *vms, size_t n, const struct al_error *err,
                      void *data)
{
    struct list_ctx *lc = data;
    struct engine *e = lc->e;
    struct backend *b = lc->slot->b;
    free(lc);
    if (result < 0) {
        e->report.errors++;
        log_error(NULL, "reconcile: listing VMs on %s failed: %s", b->name, al_error_message(err));
        sweep_step_done(e);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        if (!owned_by_us(e, b, &vms[i]) || vm_is_live(e, b, vms[i].name))
            continue;
        struct destroy_ctx *d = calloc(1, sizeof(*d));
        if (!d)
            continue;
        d->e = e;
        snprintf(d->name, sizeof(d->name), "%s", vms[i].name);
        snprintf(d->backend, sizeof(d->backend), "%s", b->name);
        e->sweep_pending++;
        if (b->ops->destroy_owned(b, vms[i].name, on_owned_destroyed, d) < 0) {
            e->sweep_pending--;
            e->report.errors++;
            free(d);
        }
    }
    owned_vm_array_free(vms, n);
    sweep_step_done(e);
}

/* Ends or resumes the jobs a previous process left behind. */
static void reconcile_jobs(struct engine *e)
{
    /* QUEUED first: the jobs requeued below are QUEUED too and must not be
     * picked up a second time */
    static const enum job_state states[] = {JOB_STATE_QUEUED, JOB_STATE_PROVISIONING,
                                            JOB_STATE_BOOTING, JOB_STATE_RUNNING};
    for (size_t si = 0; si < ARRAY_SIZE(states); si++) {
        struct store_job_filter f = {
                .state = states[si], .oldest_first = true, .limit = STORE_LIST_MAX};
        char cursor[STORE_JOB_ID_SIZE] = "";
        do {
            struct store_job_page page = {0};
            struct al_error *err = NULL;
            f.cursor = cursor[0] ? cursor : NULL;
            if (store_job_list(e->store, &f, &page, &err) < 0) {
                log_error(NULL, "reconcile: listing jobs: %s", al_error_message(err));
                al_error_free(err);
                e->report.errors++;
                break;
            }
            for (size_t i = 0; i < page.n; i++) {
                const struct store_job *sj = page.jobs[i];
                struct ejob *j = calloc(1, sizeof(*j));
                if (!j)
                    break;
                j->e = e;
                memcpy(j->id, sj->id, STORE_JOB_ID_SIZE);
                j->state = sj->state;
                j->attempts = sj->attempts;
                j->max_attempts = sj->max_attempts;
                int r = job_spec_parse(sj->spec_json, strlen(sj->spec_json), JOB_SPEC_PARSE_STORED,
                                       &j->spec, &err);
                bool secrets_lost = false;
                for (size_t k = 0; r == 0 && k < j->spec->n_secret_env; k++)
                    secrets_lost |= j->spec->secret_env[k].value == NULL;
                j->retry_blocked = secrets_lost;
                if (r < 0) {
                    log_error(j->id, "reconcile: stored spec unreadable: %s",
                              al_error_message(err));
                    err = al_error_free(err);
                    j->retry_blocked = true;
                }
                if (sj->state != JOB_STATE_QUEUED) {
                    char msg[200];
                    snprintf(msg, sizeof(msg), "agentlabd restarted while the job was %s",
                             job_state_to_string(sj->state));
                    transition(j, JOB_STATE_ERROR, msg, false, 0);
                    e->report.jobs_failed++;
                    if (j->retry_blocked || j->attempts >= j->max_attempts) {
                        job_finished(j, NULL);
                        continue;
                    }
                    struct store_event ev = {0};
                    if (store_job_retry(e->store, j->id, "requeued after restart", false, &ev,
                                        &err) < 0) {
                        err = al_error_free(err);
                        job_finished(j, NULL);
                        continue;
                    }
                    notify_event(e, &ev);
                    store_event_clear(&ev);
                    j->state = JOB_STATE_QUEUED;
                    e->report.jobs_requeued++;
                } else if (j->retry_blocked) {
                    transition(j, JOB_STATE_ERROR,
                               r < 0 ? "the stored job spec is unreadable"
                                     : "secret values are not kept across agentlabd restarts; "
                                       "submit the job again",
                               false, 0);
                    job_finished(j, NULL);
                    continue;
                } else {
                    e->report.jobs_resumed++;
                }
                j->job_dir = engine_job_dir(e, j->id);
                _cleanup_free_ char *wd =
                        j->job_dir ? al_path_join(j->job_dir, "workdir.tar") : NULL;
                if (wd && access(wd, R_OK) == 0)
                    j->workdir_tar = TAKE_PTR(wd);
                if (!j->job_dir || build_request(j, &err) < 0) {
                    err = al_error_free(err);
                    ejob_free(j);
                    continue;
                }
                queue_push(e, j, false);
            }
            snprintf(cursor, sizeof(cursor), "%s", page.next_cursor);
            store_job_page_clear(&page);
        } while (cursor[0]);
    }
}

void engine_start(struct engine *e,
                  void (*done)(const struct engine_reconcile_report *r, void *data), void *data)
{
    e->reconciled = done;
    e->reconciled_data = data;
    struct al_error *err = NULL;
    if (store_vm_list(e->store, NULL, &e->recorded, &e->n_recorded, &err) < 0) {
        log_warn(NULL, "reconcile: reading VM records: %s", al_error_message(err));
        al_error_free(err);
        e->recorded = NULL;
        e->n_recorded = 0;
    }
    reconcile_jobs(e);
    e->reconciling = true;
    sweep_owned(e);
}

/* Lists every backend's owned VMs and destroys those no running attempt
 * uses. Also runs periodically, for teardowns that failed (libvirtd gone). */
static void sweep_owned(struct engine *e)
{
    e->sweep_pending = 1; /* released below, after every backend was asked */
    for (size_t i = 0; i < e->n_slots; i++) {
        struct backend_slot *slot = &e->slots[i];
        if (!slot->b || !slot->b->ops->list_owned)
            continue;
        struct list_ctx *lc = calloc(1, sizeof(*lc));
        if (!lc)
            continue;
        lc->e = e;
        lc->slot = slot;
        e->sweep_pending++;
        if (slot->b->ops->list_owned(slot->b, on_listed, lc) < 0) {
            e->sweep_pending--;
            e->report.errors++;
            free(lc);
        }
    }
    sweep_step_done(e);
}

int engine_sweep(struct engine *e,
                 void (*done)(const struct engine_reconcile_report *r, void *data), void *data)
{
    if (!e->started || e->stopping || e->sweep_pending)
        return -EBUSY;
    e->report = (struct engine_reconcile_report){0};
    e->last_sweep = uv_now(e->loop);
    e->swept = done;
    e->swept_data = data;
    sweep_owned(e);
    return 0;
}

/* ------------------------------------------------------------ observers */

struct engine_watch *engine_observe(struct engine *e, const struct engine_observer *o, void *data)
{
    struct engine_watch *w = calloc(1, sizeof(*w));
    if (!w)
        return NULL;
    w->o = *o;
    w->data = data;
    w->next = e->watches;
    e->watches = w;
    return w;
}

void engine_unobserve(struct engine *e, struct engine_watch *w)
{
    if (!w)
        return;
    if (e->notifying) {
        w->removed = true;
        return;
    }
    for (struct engine_watch **pp = &e->watches; *pp; pp = &(*pp)->next) {
        if (*pp == w) {
            *pp = w->next;
            free(w);
            return;
        }
    }
}

size_t engine_backends(struct engine *e, struct engine_backend_status *ret, size_t max)
{
    for (size_t i = 0; i < e->n_slots && i < max; i++) {
        struct backend_slot *s = &e->slots[i];
        struct engine_backend_status st = {
                .name = s->cfg->name,
                .type = backend_type_to_string(s->cfg->type),
                .jobs_started = s->jobs_started,
        };
        for (struct warm_vm *w = e->warm; w; w = w->next) {
            if (w->slot == s) {
                if (w->ready)
                    st.warm_ready++;
                else
                    st.warm_booting++;
            }
        }
        if (s->b) {
            s->b->ops->capacity(s->b, &st.cap);
        } else {
            st.cap.healthy = false;
            snprintf(st.cap.reason, sizeof(st.cap.reason), "%.150s", s->open_error);
        }
        snprintf(st.last_fallback, sizeof(st.last_fallback), "%.150s", s->last_fallback);
        ret[i] = st;
    }
    return e->n_slots;
}

void engine_warm_counts(struct engine *e, const char *pool, unsigned *ret_ready,
                        unsigned *ret_booting)
{
    unsigned ready = 0, booting = 0;
    for (struct warm_vm *w = e->warm; w; w = w->next) {
        if (pool && !streq(w->pool->name, pool))
            continue;
        if (w->ready)
            ready++;
        else
            booting++;
    }
    if (ret_ready)
        *ret_ready = ready;
    if (ret_booting)
        *ret_booting = booting;
}

unsigned engine_live_jobs(struct engine *e, enum job_source_type source)
{
    unsigned n = 0;
    for (struct ejob *j = e->queue; j; j = j->next)
        n += j->spec->source.type == source;
    for (struct ejob *j = e->running; j; j = j->next)
        n += j->spec->source.type == source;
    return n;
}

long engine_pool_room(struct engine *e, const char *pool)
{
    const struct config_pool *p =
            config_find_pool(e->cfg, pool && *pool ? pool : e->cfg->agent.pool);
    struct backend_slot *slots[32];
    size_t n = pool_slots(e, p, slots, ARRAY_SIZE(slots));
    int cpus = e->cfg->agent.job_cpus > 0 ? e->cfg->agent.job_cpus : 1;
    long room = 0;
    for (size_t i = 0; i < n; i++) {
        if (!slots[i]->b)
            continue;
        struct backend_capacity c = {0};
        slots[i]->b->ops->capacity(slots[i]->b, &c);
        if (!c.healthy)
            continue;
        long by_vms = (long)c.max_vms - c.used_vms;
        long by_cpus = ((long)c.vcpus - c.used_vcpus) / cpus;
        long f = by_vms < by_cpus ? by_vms : by_cpus;
        if (f > 0)
            room += f;
    }
    return room;
}

enum engine_admit_verdict engine_admit(struct engine *e, const struct engine_admit *a, char *why,
                                       size_t why_size)
{
    if (a->cap && a->live >= a->cap) {
        if (why)
            snprintf(why, why_size, "%u jobs of this source are live, its limit", a->live);
        return ENGINE_ADMIT_SOURCE_FULL;
    }
    if (!a->start_now)
        return ENGINE_ADMIT_YES;
    const char *name = a->pool && *a->pool ? a->pool : e->cfg->agent.pool;
    const struct config_pool *p = config_find_pool(e->cfg, name);
    long queued = 0;
    for (struct ejob *j = e->queue; j; j = j->next)
        queued += pool_of(e, j->spec) == p;
    long room = engine_pool_room(e, name);
    if (room > queued + (long)a->held)
        return ENGINE_ADMIT_YES;
    if (why)
        snprintf(why, why_size,
                 "pool %s has room for %ld more jobs and %ld are queued for it, %u more held", name,
                 room, queued, a->held);
    return ENGINE_ADMIT_POOL_FULL;
}

void engine_counts(struct engine *e, unsigned *ret_queued, unsigned *ret_running)
{
    unsigned q = 0, r = 0;
    for (struct ejob *j = e->queue; j; j = j->next)
        q++;
    for (struct ejob *j = e->running; j; j = j->next)
        r++;
    if (ret_queued)
        *ret_queued = q;
    if (ret_running)
        *ret_running = r;
}

/* ------------------------------------------------------------ lifecycle */

int engine_new(const struct engine_params *p, struct engine **ret, struct al_error **err)
{
    struct engine *e = calloc(1, sizeof(*e));
    if (!e)
        return al_error_set(err, ENOMEM, "allocating the engine");
    e->loop = p->loop;
    e->cfg = p->cfg;
    e->store = p->store;
    e->curl = p->curl;
    e->owner_id = strdup(p->owner_id);
    e->jobs_dir = p->jobs_dir ? strdup(p->jobs_dir) : al_path_join(p->cfg->agent.state_dir, "jobs");
    e->reconcile_only = p->reconcile_only;
    e->slots = calloc(p->cfg->n_backends, sizeof(*e->slots));
    if (!e->owner_id || !e->jobs_dir || !e->slots) {
        free(e->owner_id);
        free(e->jobs_dir);
        free(e->slots);
        free(e);
        return al_error_set(err, ENOMEM, "allocating the engine");
    }
    int r = al_mkdir_p(e->jobs_dir, 0711, err);
    if (r < 0) {
        free(e->owner_id);
        free(e->jobs_dir);
        free(e->slots);
        free(e);
        return r;
    }
    struct backend_env env = {
            .loop = p->loop, .curl = p->curl, .cfg = p->cfg, .owner_id = e->owner_id};
    e->n_slots = p->cfg->n_backends;
    for (size_t i = 0; i < e->n_slots; i++) {
        struct backend_slot *s = &e->slots[i];
        s->cfg = &p->cfg->backends[i];
        struct al_error *berr = NULL;
        if (backend_new(&env, s->cfg, &s->b, &berr) < 0) {
            snprintf(s->open_error, sizeof(s->open_error), "%s", al_error_message(berr));
            log_error(NULL, "%s", al_error_message(berr));
            al_error_free(berr);
            s->b = NULL;
        }
    }
    uv_timer_init(p->loop, &e->kick);
    e->kick.data = e;
    uv_timer_init(p->loop, &e->housekeeping);
    e->housekeeping.data = e;
    uv_timer_start(&e->housekeeping, on_housekeeping, SYNC_INTERVAL_MS, SYNC_INTERVAL_MS);
    *ret = e;
    return 0;
}

static void on_engine_handle_closed(uv_handle_t *h)
{
    struct engine *e = h->data;
    if (--e->pending_closes > 0)
        return;
    void (*done)(void *) = e->stopped;
    void *data = e->stopped_data;
    for (struct engine_watch *w = e->watches, *next; w; w = next) {
        next = w->next;
        free(w);
    }
    free(e->slots);
    free(e->owner_id);
    free(e->jobs_dir);
    free(e);
    if (done)
        done(data);
}

static void on_backend_closed(void *data)
{
    struct engine *e = data;
    if (--e->backends_closing > 0)
        return;
    e->pending_closes = 2;
    uv_close((uv_handle_t *)&e->kick, on_engine_handle_closed);
    uv_close((uv_handle_t *)&e->housekeeping, on_engine_handle_closed);
}

static void maybe_finish_stop(struct engine *e)
{
    if (!e->stopping || e->running || e->backends_closing || e->pending_closes ||
        e->sweep_pending || e->workers || e->warm || e->warm_dying)
        return;
    /* queued jobs stay QUEUED in the store: a restart resumes them */
    while (e->queue) {
        struct ejob *j = e->queue;
        e->queue = j->next;
        ejob_free(j);
    }
    e->queue_tail = NULL;
    e->backends_closing = 1;
    for (size_t i = 0; i < e->n_slots; i++) {
        if (e->slots[i].b) {
            e->backends_closing++;
            backend_free(e->slots[i].b, on_backend_closed, e);
            e->slots[i].b = NULL;
        }
    }
    on_backend_closed(e);
}

void engine_stop(struct engine *e, void (*done)(void *data), void *data)
{
    if (e->stopping)
        return;
    e->stopping = true;
    e->stopped = done;
    e->stopped_data = data;
    uv_timer_stop(&e->kick);
    uv_timer_stop(&e->housekeeping);
    for (struct ejob *j = e->running; j; j = j->next)
        attempt_cancel(j->attempt);
    while (e->warm)
        warm_destroy(e->warm);
    maybe_finish_stop(e);
}
