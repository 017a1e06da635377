/* Scheduling: which queued job starts where, and each attempt of a job
 * from its start on a backend to its outcome. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runner/base/hardlimits.h"
#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/engine/engine_priv.h"

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
        eng_transition(j, JOB_STATE_BOOTING, j->vm_name, false, 0);
    else if (phase == VM_PHASE_RUNNING && j->state == JOB_STATE_BOOTING)
        eng_transition(j, JOB_STATE_RUNNING, NULL, false, 0);
}

static void on_attempt_output(struct attempt *a, enum vm_stream s, const char *buf, size_t len,
                              void *data)
{
    (void)a;
    struct ejob *j = data;
    struct engine *e = j->e;
    e->notifying++;
    al_list_for_each(w, &e->watches, struct engine_watch, link) {
        if (!w->removed && w->o.output)
            w->o.output(j->id, s, buf, len, w->data);
    }
    eng_notify_end(e);
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
    eng_transition(j, to, detail, code, r->exit_code);
}

/* The files an attempt collected go into the store's index: their sizes
 * count toward the job's bytes, which retention_size weighs. */
static void index_artifacts(struct ejob *j, const struct attempt_result *r)
{
    if (!r->have_artifacts || !r->artifacts.files)
        return;
    log_info(j->id, "artifacts: %" PRIu64 " files, %" PRIu64 " bytes%s%s", r->artifacts.files,
             r->artifacts.bytes, r->artifacts.note[0] ? "; " : "", r->artifacts.note);
    const struct artifact_index *x = &r->artifact_files;
    if (!x->n)
        return;
    _cleanup_free_ struct store_artifact *v = calloc(x->n, sizeof(*v));
    struct al_error *err = NULL;
    if (!v) {
        log_error(j->id, "indexing %zu artifacts: out of memory", x->n);
        return;
    }
    for (size_t i = 0; i < x->n; i++) {
        v[i].path = x->v[i].path; /* borrowed */
        v[i].size = x->v[i].size;
        memcpy(v[i].sha256, x->v[i].sha256, sizeof(v[i].sha256));
    }
    if (store_artifacts_index(j->e->store, j->id, v, x->n, &err) < 0)
        log_error(j->id, "indexing %zu artifacts: %s", x->n, al_error_message(err));
    al_error_free(err);
}

static void on_attempt_done(struct attempt *a, const struct attempt_result *r, void *data)
{
    (void)a;
    struct ejob *j = data;
    struct engine *e = j->e;
    struct al_error *err = NULL;
    j->attempt = NULL;
    al_list_del(&j->link);

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
    al_list_for_each(w, &e->watches, struct engine_watch, link) {
        if (!w->removed && w->o.attempt_done)
            w->o.attempt_done(j->id, j->attempts, r, w->data);
    }
    eng_notify_end(e);
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
            eng_notify_event(e, &ev);
            store_event_clear(&ev);
            /* a retry goes first: it has waited already */
            eng_queue_push(e, j, true);
            eng_kick(e);
            eng_maybe_finish_stop(e);
            return;
        }
        log_error(j->id, "cannot requeue: %s", al_error_message(err));
        al_error_free(err);
    }
    job_finished(j, r);
    eng_kick(e);
    eng_maybe_finish_stop(e);
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
void eng_start_attempt(struct ejob *j, struct backend_slot *slot, struct vm *warm)
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
    if (eng_transition(j, JOB_STATE_PROVISIONING, detail, false, 0) < 0) {
        /* the store refused: the job cannot make progress; end it */
        eng_transition(j, JOB_STATE_ERROR, "recording the job's progress failed", false, 0);
        job_finished(j, NULL);
        if (warm)
            b->ops->destroy(warm, eng_warm_orphan_destroyed, e);
        return;
    }
    j->attempts++;
    j->backend = b;
    slot->jobs_started++;
    j->req.attempt = j->attempts;
    int nr = warm ? (snprintf(j->vm_name, sizeof(j->vm_name), "%s", warm->name), 0)
                  : b->ops->vm_name(b, j->id, j->attempts, j->vm_name, sizeof(j->vm_name));
    if (nr < 0 || store_vm_add(e->store, b->name, j->vm_name, j->id, &err) < 0) {
        eng_transition(j, JOB_STATE_ERROR, err ? al_error_message(err) : "naming the VM failed",
                       false, 0);
        al_error_free(err);
        job_finished(j, NULL);
        if (warm)
            b->ops->destroy(warm, eng_warm_orphan_destroyed, e);
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
    al_list_add(&e->running, &j->link);
    if ((!warm &&
         eng_image_ref_resolve(e, b, j->req.image_name, &j->image, &j->req.image, &err) < 0) ||
        attempt_start(e->loop, &ap, &attempt_cbs, j, &j->attempt, &err) < 0) {
        al_list_del(&j->link);
        if (warm)
            b->ops->destroy(warm, eng_warm_orphan_destroyed, e);
        struct al_error *rerr = NULL;
        if (store_vm_remove(e->store, b->name, j->vm_name, &rerr) < 0)
            log_error(j->id, "forgetting VM %s in the database: %s", j->vm_name,
                      al_error_message(rerr));
        al_error_free(rerr);
        char msg[600];
        snprintf(msg, sizeof(msg), "%s", al_error_message(err));
        al_error_free(err);
        eng_transition(j, JOB_STATE_ERROR, msg, false, 0);
        j->backend = NULL;
        job_finished(j, NULL);
        return;
    }
    /* a VM restored from a memory snapshot carries the name its state was
     * saved under: record that one, so the sweep and a restart know it */
    const char *actual = j->attempt ? attempt_vm_name(j->attempt) : NULL;
    if (actual && *actual && !streq(actual, j->vm_name)) {
        struct al_error *rerr = NULL;
        if (store_vm_add(e->store, b->name, actual, j->id, &rerr) < 0) {
            log_error(j->id, "recording VM %s in the database: %s", actual, al_error_message(rerr));
            al_error_free(rerr);
            return;
        }
        if (store_vm_remove(e->store, b->name, j->vm_name, &rerr) < 0) {
            log_error(j->id, "forgetting VM %s in the database: %s", j->vm_name,
                      al_error_message(rerr));
            al_error_free(rerr);
        }
        snprintf(j->vm_name, sizeof(j->vm_name), "%s", actual);
    }
}

/* ------------------------------------------------------------ scheduling */

/* Whether the backend has room for a VM of that size now; ret_cap gets the
 * capacity it read when it does. */
static bool slot_room(struct backend_slot *slot, int cpus, uint64_t mem, char *why, size_t size,
                      bool *ret_broken, struct backend_capacity *ret_cap)
{
    if (!slot->b) {
        snprintf(why, size, "backend %.63s is not available: %.80s", slot->cfg->name,
                 slot->open_error);
        return false;
    }
    struct backend_capacity c;
    slot->b->ops->capacity(slot->b, &c);
    if (!c.healthy) {
        snprintf(why, size, "backend %.63s is unhealthy: %.150s", slot->cfg->name, c.reason);
        *ret_broken = c.broken;
        return false;
    }
    if (c.used_vms >= c.max_vms || c.used_vcpus + cpus > c.vcpus ||
        c.used_memory + mem > c.memory) {
        snprintf(why, size, "backend %.63s is full (%d/%d VMs, %d/%d vCPUs)", slot->cfg->name,
                 c.used_vms, c.max_vms, c.used_vcpus, c.vcpus);
        return false;
    }
    *ret_cap = c;
    return true;
}

/* Whether the VM fits the backend now; ret_cap gets the backend's capacity
 * when it does. ret_broken says the backend cannot take it until an
 * operator fixes something (bad credentials, a certificate mismatch, no
 * template for the image). */
static bool slot_fits(struct engine *e, struct backend_slot *slot, const struct slot_need *need,
                      char *why, size_t size, bool *ret_broken, struct backend_capacity *ret_cap)
{
    *ret_broken = false;
    if (!eng_slot_serves_image(e, slot, need->image)) {
        *ret_broken = true;
        snprintf(why, size, "backend %.63s has no template for image %.63s", slot->cfg->name,
                 need->image);
        return false;
    }
    if (need->warm && slot->b && !slot->b->ops->assign) {
        *ret_broken = true;
        snprintf(why, size, "backend %.63s keeps no warm VMs", slot->cfg->name);
        return false;
    }
    return slot_room(slot, need->cpus, need->memory, why, size, ret_broken, ret_cap);
}

/* True when capacity a is less loaded than b: a lower share of its VM slots
 * in use, then more vCPUs free. Equal loads are not "less": the earlier
 * backend of the pool keeps the VM. */
static bool less_loaded(const struct backend_capacity *a, const struct backend_capacity *b)
{
    /* used_a/max_a < used_b/max_b without division (max_vms > 0 here: a
     * backend with no slot never fits) */
    int64_t la = (int64_t)a->used_vms * b->max_vms, lb = (int64_t)b->used_vms * a->max_vms;
    if (la != lb)
        return la < lb;
    return a->vcpus - a->used_vcpus > b->vcpus - b->used_vcpus;
}

struct backend_slot *eng_choose_slot(struct engine *e, struct backend_slot **slots, size_t n,
                                     const struct slot_need *need, char (*reasons)[160], char *why,
                                     size_t why_size, bool *ret_all_broken)
{
    bool all_broken = n > 0;
    size_t best = n;
    struct backend_capacity best_cap = {0};
    for (int tier = 0; tier < 2 && best == n; tier++) {
        for (size_t i = 0; i < n; i++) {
            bool fallback_tier = slots[i]->cfg->type == BACKEND_PROXMOX;
            if (fallback_tier != (tier == 1))
                continue;
            char reason[256];
            bool broken;
            struct backend_capacity cap;
            if (!slot_fits(e, slots[i], need, reason, sizeof(reason), &broken, &cap)) {
                if (reasons)
                    snprintf(reasons[i], sizeof(reasons[i]), "%.150s", reason);
                if (why_size && !why[0])
                    snprintf(why, why_size, "%s", reason);
                all_broken &= broken;
                continue;
            }
            all_broken = false;
            if (best == n || (!fallback_tier && less_loaded(&cap, &best_cap))) {
                best = i;
                best_cap = cap;
                if (fallback_tier)
                    break; /* in the pool's order */
            }
        }
    }
    if (ret_all_broken)
        *ret_all_broken = all_broken;
    return best < n ? slots[best] : NULL;
}

void eng_schedule(struct engine *e)
{
    if (!e->started || e->stopping || e->reconcile_only)
        return;
    al_list_for_each_safe(j, next, &e->queue, struct ejob, link) {
        if (e->gate && !e->gate(j->id, e->gate_data))
            continue;
        struct warm_vm *w = eng_warm_take(e, j);
        if (w) {
            al_list_del(&j->link);
            struct backend_slot *slot = w->slot;
            struct vm *vm = w->vm;
            free(w);
            eng_start_attempt(j, slot, vm);
            continue;
        }
        struct backend_slot *slots[32];
        char reasons[32][160];
        size_t n = eng_pool_slots(e, eng_pool_of(e, j->spec), slots, ARRAY_SIZE(slots));
        for (size_t i = 0; i < n; i++)
            reasons[i][0] = '\0';
        char why[256] = "";
        bool all_broken;
        const struct slot_need need = {
                .image = j->spec->image,
                .cpus = j->spec->resources.cpus,
                .memory = (uint64_t)j->spec->resources.memory_mb << 20,
        };
        struct backend_slot *chosen =
                eng_choose_slot(e, slots, n, &need, reasons, why, sizeof(why), &all_broken);
        if (chosen) {
            /* each backend that could not take it keeps why; one that had
             * room but more load was not skipped. It is a fallback when the
             * job goes to the Proxmox tier or past a backend listed before. */
            const char *past = NULL;
            bool to_fallback_tier = chosen->cfg->type == BACKEND_PROXMOX, before = true;
            for (size_t i = 0; i < n; i++) {
                if (slots[i] == chosen)
                    before = false;
                if (!reasons[i][0])
                    continue;
                snprintf(slots[i]->last_fallback, sizeof(slots[i]->last_fallback), "%.159s",
                         reasons[i]);
                bool passed = to_fallback_tier ? slots[i]->cfg->type != BACKEND_PROXMOX || before
                                               : before;
                if (!past && passed)
                    past = reasons[i];
            }
            if (past)
                log_info(j->id, "falling back to backend %s: %s", chosen->cfg->name, past);
            al_list_del(&j->link);
            eng_start_attempt(j, chosen, NULL);
        } else if (all_broken) {
            /* waiting would be forever: only an operator can fix this */
            char msg[400];
            snprintf(msg, sizeof(msg),
                     "no backend of the pool can run jobs until its "
                     "configuration is fixed: %s",
                     why);
            al_list_del(&j->link);
            eng_transition(j, JOB_STATE_ERROR, msg, false, 0);
            job_finished(j, NULL);
        }
    }
}

void eng_on_kick(uv_timer_t *t)
{
    eng_schedule(t->data);
    eng_warm_fill(t->data);
}
