/* Warm pools: VMs booted ahead of the jobs that will take them. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "images/catalog.h"
#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/engine/engine_priv.h"

/* ------------------------------------------------------------ warm pools */

/* Each pool with warm = N keeps N VMs of its flavour (image, cpus, memory,
 * disk) booted from fresh overlays, their helper waiting on the channel. A
 * job of the pool with exactly that flavour takes one instead of a cold VM
 * (one asking another size or image boots cold); it is destroyed after that job like any other,
 * never reused, and a replacement boots at once. Warm VMs count against capacity, are recycled
 * after warm_max_idle, and are reconciled after a crash like any owned VM. */

static void warm_destroyed(int result, const struct al_error *err, void *data)
{
    (void)result;
    (void)err;
    struct engine *e = data;
    e->warm_dying--;
    eng_kick(e);
    eng_maybe_finish_stop(e);
}

void eng_warm_orphan_destroyed(int result, const struct al_error *err, void *data)
{
    warm_destroyed(result, err, data);
}

static void warm_unlink(struct warm_vm *w)
{
    al_list_del(&w->link);
}

/* Destroys a warm VM that will not be used. */
void eng_warm_destroy(struct warm_vm *w)
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
    eng_kick(w->e);
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
    eng_warm_destroy(w);
}

static const struct vm_events warm_events = {
        .phase = warm_phase,
        .finished = warm_finished,
};

/* Takes a ready warm VM for job j out of the pool, or returns NULL. */
struct warm_vm *eng_warm_take(struct engine *e, struct ejob *j)
{
    const struct config_pool *pool = eng_pool_of(e, j->spec);
    const struct job_spec *s = j->spec;
    al_list_for_each(w, &e->warm, struct warm_vm, link) {
        if (!w->ready || w->pool != pool || !w->slot->b || !w->vm->backend->ops->assign)
            continue;
        /* a job of another size or image in the pool boots cold: a warm VM
         * of the pool's flavour never changes size */
        if (!streq(s->image ? s->image : pool->image, w->req.image_name) ||
            s->resources.cpus != w->req.cpus ||
            ((uint64_t)s->resources.memory_mb << 20) != w->req.memory ||
            ((uint64_t)s->resources.disk_gb << 30) != w->req.disk_bytes)
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
            .image_name = pool->image,
            .cpus = pool->cpus,
            .memory = pool->memory,
            .disk_bytes = pool->disk,
            .inject = -1,
            .warm = true,
    };
    struct al_error *err = NULL;
    struct image_ref image = {0};
    int r = eng_image_ref_resolve(e, slot->b, w->req.image_name, &image, &w->req.image, &err);
    if (r == 0)
        r = slot->b->ops->launch(slot->b, &w->req, &warm_events, w, &w->vm, &err);
    image_info_free(image.info);
    w->req.image = NULL; /* the backend keeps its own copy */
    if (r < 0) {
        log_warn(NULL, "pool %s: starting a warm VM on %s: %s", pool->name, slot->cfg->name,
                 al_error_message(err));
        al_error_free(err);
        free(w);
        e->warm_failures++;
        e->warm_next_try = uv_now(e->loop) + 5000;
        return;
    }
    w->launched_at = uv_now(e->loop);
    al_list_add(&e->warm, &w->link);
    log_info(NULL, "pool %s: booting warm VM %s on %s", pool->name, w->vm->name, slot->cfg->name);
}

/* Has the backends of every pool whose jobs start from memory snapshots
 * make them in the background, from the daemon's start and after an image
 * changed, rather than on the first job (every PREPARE_MS; cheap when they
 * are made). */
#define PREPARE_MS 30000u
static void snapshots_prepare(struct engine *e)
{
    if (uv_now(e->loop) < e->prepare_next)
        return;
    e->prepare_next = uv_now(e->loop) + PREPARE_MS;
    for (size_t p = 0; p < e->cfg->n_pools; p++) {
        const struct config_pool *pool = &e->cfg->pools[p];
        if (pool->start == VM_START_BOOT)
            continue;
        struct backend_slot *slots[32];
        size_t n = eng_pool_slots(e, pool, slots, ARRAY_SIZE(slots));
        for (size_t i = 0; i < n; i++) {
            struct backend *b = slots[i]->b;
            if (!b || !b->ops->prepare || !eng_slot_serves_image(e, slots[i], pool->image))
                continue;
            struct vm_request req = {.image_name = pool->image,
                                     .cpus = pool->cpus,
                                     .memory = pool->memory,
                                     .disk_bytes = pool->disk,
                                     .start = pool->start};
            struct image_ref image = {0};
            struct al_error *err = NULL;
            if (eng_image_ref_resolve(e, b, pool->image, &image, &req.image, &err) == 0 &&
                req.image)
                b->ops->prepare(b, &req);
            al_error_free(err);
            image_info_free(image.info);
        }
    }
}

/* Tops every pool up to its warm count where a backend has room, each VM
 * placed by the spread rule of jobs (eng_choose_slot), so a pool's warm VMs
 * spread over its libvirt hosts and one host's loss does not take them all. */
void eng_warm_fill(struct engine *e)
{
    if (!e->started || e->stopping || e->reconcile_only)
        return;
    snapshots_prepare(e);
    if (uv_now(e->loop) < e->warm_next_try)
        return;
    for (size_t p = 0; p < e->cfg->n_pools; p++) {
        const struct config_pool *pool = &e->cfg->pools[p];
        int have = 0;
        int want = engine_warm_target(pool, al_now_wall_ms());
        al_list_for_each(w, &e->warm, struct warm_vm, link)
            have += w->pool == pool;
        struct backend_slot *slots[32];
        size_t n = eng_pool_slots(e, pool, slots, ARRAY_SIZE(slots));
        const struct slot_need need = {
                .image = pool->image, .cpus = pool->cpus, .memory = pool->memory, .warm = true};
        while (have < want) {
            /* a launched VM counts on its backend at once, so the next one
             * goes to the then least loaded host */
            struct backend_slot *slot = eng_choose_slot(e, slots, n, &need, NULL, NULL, 0, NULL);
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
    al_list_for_each(w, &e->warm, struct warm_vm, link) {
        if (n < max) {
            struct engine_warm_info *i = &ret[n];
            snprintf(i->name, sizeof(i->name), "%s", w->vm->name);
            i->backend = w->slot->cfg->name;
            i->pool = w->pool->name;
            i->ready = w->ready;
            i->age_ms = uv_now(e->loop) - w->launched_at;
        }
        n++;
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
void eng_warm_recycle(struct engine *e)
{
    uint64_t now = uv_now(e->loop);
    for (size_t p = 0; p < e->cfg->n_pools; p++) {
        const struct config_pool *pool = &e->cfg->pools[p];
        int surplus = -engine_warm_target(pool, al_now_wall_ms());
        al_list_for_each(w, &e->warm, struct warm_vm, link)
            surplus += w->pool == pool;
        al_list_for_each_safe(w, next, &e->warm, struct warm_vm, link) {
            if (surplus <= 0)
                break;
            if (w->pool == pool && w->ready) {
                log_info(NULL, "pool %s: fewer warm VMs wanted now; destroying %s", pool->name,
                         w->vm->name);
                eng_warm_destroy(w);
                surplus--;
            }
        }
    }
    al_list_for_each_safe(w, next, &e->warm, struct warm_vm, link) {
        if (w->ready && now - w->ready_at > (uint64_t)w->pool->warm_max_idle_s * 1000u) {
            log_info(NULL, "recycling warm VM %s after %" PRId64 " s idle", w->vm->name,
                     w->pool->warm_max_idle_s);
            eng_warm_destroy(w);
        }
    }
}

void engine_warm_counts(struct engine *e, const char *pool, unsigned *ret_ready,
                        unsigned *ret_booting)
{
    unsigned ready = 0, booting = 0;
    al_list_for_each(w, &e->warm, struct warm_vm, link) {
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
