/* What the engine's files share: its structs and the helpers one file of
 * the engine calls in another. Nothing outside runner/engine/engine*.c
 * includes this; the API is engine.h.
 *
 * Loop thread only, like the engine.
 */
#ifndef AL_ENGINE_PRIV_H
#define AL_ENGINE_PRIV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "runner/base/list.h"
#include "runner/engine/attempt.h"
#include "runner/engine/engine.h"

#define PRUNE_INTERVAL_MS  (10u * 60u * 1000u)
#define SYNC_INTERVAL_MS   1000u
#define RUN_GRACE_S        30
#define REOPEN_INTERVAL_MS 10000u
#define SWEEP_INTERVAL_MS  (5u * 60u * 1000u)

/* The catalogue entry a request's image points into. */
struct image_ref {
    struct image_info *info;
    struct vm_image vm;
};

struct ejob {
    struct engine *e;
    struct al_list link; /* on e->queue or e->running */
    char id[STORE_JOB_ID_SIZE];
    struct job_spec *spec;
    enum job_state state;
    int attempts; /* attempts started so far */
    int max_attempts;
    char *job_dir;
    char *workdir_tar;
    char *artifacts_dir;
    /* the request handed to the backend; arrays point into spec, the image
     * into image */
    struct vm_request req;
    struct image_ref image;
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
    struct al_list link; /* on e->warm */
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
    struct al_list link; /* on e->watches */
};

struct backend_slot {
    struct backend *b; /* NULL when it failed to open */
    const struct backend_settings *cfg;
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
    struct al_list queue;   /* struct ejob, FIFO but retries go first */
    struct al_list running; /* struct ejob with an attempt, newest first */
    struct al_list watches; /* struct engine_watch, newest first */
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
    struct al_list warm;    /* struct warm_vm, newest first */
    int warm_dying;         /* warm VMs being destroyed */
    unsigned warm_failures; /* consecutive warm VMs that died before use */
    uint64_t warm_next_try;
    uint64_t prepare_next; /* when pools' snapshots are next looked at (uv_now) */
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
    /* batches' max_parallel (batch.c) */
    bool (*gate)(const char *job_id, void *data);
    void *gate_data;
};

/* ---- engine.c: jobs, the queue, observers */

/* Turns schedule() (and warm_fill()) once on the next loop iteration. */
void eng_kick(struct engine *e);
/* Observer rounds: e->notifying++, the callbacks, then notify_end(). */
void eng_notify_end(struct engine *e);
void eng_notify_event(struct engine *e, const struct store_event *ev);
/* Commits a transition and tells the observers; <0 when the store refused. */
int eng_transition(struct ejob *j, enum job_state to, const char *detail, bool has_code, int code);
void eng_ejob_free(struct ejob *j);
/* The job is done with for good: tell the observers, then free it. */
void job_finished(struct ejob *j, const struct attempt_result *last);
void eng_queue_push(struct engine *e, struct ejob *j, bool front);
/* The job's pool (the one in its spec, else the default pool), or NULL. */
const struct config_pool *eng_pool_of(struct engine *e, const struct job_spec *spec);
/* The backends of a pool in order (every backend when it names none). */
size_t eng_pool_slots(struct engine *e, const struct config_pool *pool, struct backend_slot **ret,
                      size_t max);
/* False for a proxmox backend with no template for image (config.h's
 * config_backend_template): the job skips that backend. */
bool eng_slot_serves_image(struct engine *e, const struct backend_slot *slot, const char *image);
/* Builds j->req from the spec; arrays point into the spec. */
int eng_build_request(struct ejob *j, struct al_error **err);
/* Points *ret at the image named name when backend b boots VMs from the
 * local catalogue (NULL otherwise); ref keeps what it points into until the
 * next call or image_info_free(ref->info). */
int eng_image_ref_resolve(struct engine *e, const struct backend *b, const char *name,
                          struct image_ref *ref, const struct vm_image **ret,
                          struct al_error **err);
/* Backends that failed to open are tried again. */
void eng_reopen_backends(struct engine *e);
/* Finishes engine_stop() once nothing is in flight any more. */
void eng_maybe_finish_stop(struct engine *e);

/* ---- engine_sched.c: scheduling and attempts */

void eng_on_kick(uv_timer_t *t);
void eng_schedule(struct engine *e);
/* Starts the job's next attempt on slot's backend, on the warm VM warm when
 * one is given (the attempt then owns it). */
void eng_start_attempt(struct ejob *j, struct backend_slot *slot, struct vm *warm);
/* What a VM about to be placed asks of a backend. */
struct slot_need {
    const char *image; /* NULL = the default image (the proxmox template check) */
    int cpus;
    uint64_t memory; /* bytes */
    bool warm;       /* booted ahead of its job: only backends with assign */
};
/* The spread rule, one for jobs and warm VMs: the slot of slots[0..n) that
 * takes a VM with need now, or NULL. The first tier is every backend that
 * is not Proxmox (libvirt hosts): the least loaded one that fits takes the
 * VM (the lowest share of its VM slots in use, then the most vCPUs free,
 * then the earliest), so VMs spread across hosts. Every VM a backend holds,
 * warm or running a job, counts as its load. Proxmox backends are the
 * fallback tier, tried in the pool's order only when no host of the first
 * tier fits. reasons (NULL, or n entries the caller cleared) gets why each
 * slot that does not fit was skipped; why (why_size 0 for none) the first of
 * those; ret_all_broken (may be NULL) whether every slot is skipped until an
 * operator fixes something. */
struct backend_slot *eng_choose_slot(struct engine *e, struct backend_slot **slots, size_t n,
                                     const struct slot_need *need, char (*reasons)[160], char *why,
                                     size_t why_size, bool *ret_all_broken);

/* ---- engine_warm.c: warm pools */

/* A backend destroy callback for a warm VM the engine no longer tracks. */
void eng_warm_orphan_destroyed(int result, const struct al_error *err, void *data);
/* Takes a ready warm VM for job j out of the pool, or returns NULL. */
struct warm_vm *eng_warm_take(struct engine *e, struct ejob *j);
void eng_warm_fill(struct engine *e);
void eng_warm_recycle(struct engine *e);
/* Destroys a warm VM that will not be used. */
void eng_warm_destroy(struct warm_vm *w);

/* ---- engine_housekeeping.c, engine_reconcile.c */

void eng_on_housekeeping(uv_timer_t *t);
/* Destroys every owned VM no live job uses; see engine_sweep(). */
void eng_sweep_owned(struct engine *e);

#endif
