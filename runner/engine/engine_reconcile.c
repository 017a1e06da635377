/* Reconcile at start-up and the periodic sweep: jobs a previous process
 * left behind, and owned VMs no live job uses. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/engine/owner.h"
#include "runner/engine/engine_priv.h"

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
        eng_maybe_finish_stop(e);
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
    eng_kick(e);
    eng_maybe_finish_stop(e);
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
    al_list_for_each(j, &e->running, struct ejob, link) {
        if (j->backend == b && streq(j->vm_name, name))
            return true;
    }
    al_list_for_each(w, &e->warm, struct warm_vm, link) {
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
                al_list_init(&j->link);
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
                    eng_transition(j, JOB_STATE_ERROR, msg, false, 0);
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
                    eng_notify_event(e, &ev);
                    store_event_clear(&ev);
                    j->state = JOB_STATE_QUEUED;
                    e->report.jobs_requeued++;
                } else if (j->retry_blocked) {
                    eng_transition(j, JOB_STATE_ERROR,
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
                if (!j->job_dir || eng_build_request(j, &err) < 0) {
                    err = al_error_free(err);
                    eng_ejob_free(j);
                    continue;
                }
                eng_queue_push(e, j, false);
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
    eng_sweep_owned(e);
}

/* Lists every backend's owned VMs and destroys those no running attempt
 * uses. Also runs periodically, for teardowns that failed (libvirtd gone). */
void eng_sweep_owned(struct engine *e)
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
    eng_sweep_owned(e);
    return 0;
}
