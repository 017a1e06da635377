/* Periodic housekeeping: store syncs on a worker thread, retention, and
 * the timer that also reopens backends, recycles warm VMs and sweeps. */
#include <inttypes.h>
#include <stdlib.h>

#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/loop/work.h"
#include "runner/engine/engine_priv.h"

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
    eng_maybe_finish_stop(e);
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

void eng_on_housekeeping(uv_timer_t *t)
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
    if (!al_list_empty(&e->queue))
        eng_kick(e);
    if (now - e->last_reopen >= REOPEN_INTERVAL_MS) {
        e->last_reopen = now;
        eng_reopen_backends(e);
    }
    eng_warm_recycle(e);
    eng_warm_fill(e);
    if (e->started && !e->sweep_pending && now - e->last_sweep >= SWEEP_INTERVAL_MS) {
        e->last_sweep = now;
        e->report = (struct engine_reconcile_report){0};
        eng_sweep_owned(e);
    }
}
