/* The engine: every job from acceptance to its terminal state.
 *
 * It owns the queue, the backends and the running attempts. A submitted job
 * is validated, stored as QUEUED and scheduled FIFO per pool: the first
 * backend of the job's pool that is healthy and has room for it (VMs, vCPUs,
 * memory) gets it; when none has, the job waits (later jobs that fit may go
 * first). Each state change is committed to the store before the action it
 * announces, and broadcast to observers. Infrastructure errors are retried
 * on a fresh VM while attempts remain; workload failures never are.
 *
 * At start the engine reconciles: jobs left in a running phase by a crash
 * end as ERROR (requeued when attempts remain), and every VM this instance
 * owns with no live job is destroyed, with its disks and run dir.
 *
 * Loop thread only.
 */
#ifndef AL_ENGINE_H
#define AL_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "runner/base/error.h"
#include "runner/engine/config.h"
#include "runner/engine/spec.h"
#include "provision/backend.h"
#include "runner/engine/route.h"
#include "runner/engine/store.h"

struct engine;

struct engine_params {
    uv_loop_t *loop;
    const struct config *cfg;
    struct store *store;
    struct al_curl *curl; /* for HTTP-based backends; may be NULL */
    const char *owner_id;
    const char *jobs_dir; /* job logs and artifacts; NULL = <state_dir>/jobs */
    bool reconcile_only;  /* `agentlab gc`: sweep, but never start a job */
};

/* Opens every configured backend. A backend that fails to open is kept as
 * unhealthy (the error is logged) so the other backends still work. */
int engine_new(const struct engine_params *p, struct engine **ret, struct al_error **err);

/* What reconcile did, for `agentlab gc` and the logs. */
struct engine_reconcile_report {
    unsigned jobs_failed;   /* running jobs of a previous process ended as ERROR */
    unsigned jobs_requeued; /* ... and queued again */
    unsigned jobs_resumed;  /* QUEUED jobs taken back into the queue */
    unsigned vms_destroyed; /* owned VMs (and leftovers) without a live job */
    unsigned dirs_removed;  /* job run dirs without a live job */
    unsigned errors;
};

/* Reconciles, then starts scheduling. done (may be NULL) runs once the
 * reconcile is over; each action is also logged. */
void engine_start(struct engine *e,
                  void (*done)(const struct engine_reconcile_report *r, void *data), void *data);

/* Sweeps now what the periodic sweep would (`agentlab gc` while the daemon
 * runs): every VM this engine owns that no running attempt uses is
 * destroyed, with its disks and run dir. done runs once with what it did.
 * -EBUSY (done will not run) before the start-up reconcile is over, while
 * another sweep is in flight, or once stopping. */
int engine_sweep(struct engine *e,
                 void (*done)(const struct engine_reconcile_report *r, void *data), void *data);

/* Stops: no new admissions; running jobs are cancelled with reason
 * "agentlabd is shutting down" (ERROR, requeued when attempts remain, so a
 * restarted daemon runs them again); every VM is destroyed; the backends are
 * closed; then done runs and the engine is freed. */
void engine_stop(struct engine *e, void (*done)(void *data), void *data);

struct engine_submit {
    /* A tar to unpack as the job's work dir; moved into the job dir. */
    const char *workdir_tar;
    /* Where artifacts go; NULL = <job dir>/artifacts. */
    const char *artifacts_dir;
    /* The pools the source routes its jobs among (config_source.pools);
     * NULL = every pool. */
    char *const *pools;
};

/* Routes a job without submitting it (runner/engine/route.h has the rule):
 * the pool spec goes to among the pools named in among (NULL = every pool),
 * and why (may be NULL; why_size bytes) gets the reason, such as "labels big
 * matched pool big". -ROUTE_ENOPOOL (ENXIO) with a message naming the job's
 * labels and the pools with theirs when no pool takes it. Sources and the
 * API call it to refuse a job before they take it; engine_submit() routes
 * the same way. */
int engine_route(struct engine *e, const struct job_spec *spec, char *const *among,
                 const struct config_pool **ret_pool, char *why, size_t why_size,
                 struct al_error **err);

/* Routes spec (engine_route with opts->pools), gives it the pool's image and
 * size where it asks none, refuses what exceeds the pool's max_cpus,
 * max_memory or allowed_images (-EINVAL naming the limit), applies the
 * agent's defaults, and validates it against the configuration: image,
 * resources some backend of the pool can ever hold. The spec records its
 * pool and pool_reason. Takes ownership
 * of spec in every case. On success the job is QUEUED and its id is in
 * ret_id. Errors name the problem; nothing is stored then. */
int engine_submit(struct engine *e, struct job_spec *spec, const struct engine_submit *opts,
                  char ret_id[STORE_JOB_ID_SIZE], struct al_error **err);

/* What engine_submit() checks before it stores anything (defaults are
 * applied to spec), for callers that accept many jobs all or nothing. */
int engine_check(struct engine *e, struct job_spec *spec, struct al_error **err);

/* A gate the scheduler asks before it starts a queued job (batch.c's
 * max_parallel): false leaves the job queued and lets later jobs go. One
 * gate; NULL removes it. */
void engine_set_gate(struct engine *e, bool (*gate)(const char *job_id, void *data), void *data);

/* Cancels a job in any non-terminal phase. -ENOENT for an unknown job,
 * -EALREADY when it is already terminal. */
int engine_cancel(struct engine *e, const char *job_id, struct al_error **err);

/* Makes every commit so far durable against power loss (store_sync on a
 * worker thread), then calls done. Sources call it before acknowledging a
 * job to the outside world. */
void engine_sync(struct engine *e, void (*done)(int result, void *data), void *data);

struct attempt_result;

/* Observers see every transition, every chunk of (redacted) output, and
 * each attempt's full result (timings, artifacts) once its VM is gone.
 * They must not call back into the engine to submit (engine_submit fails
 * with -EDEADLK then): whatever a callback wants done with the engine goes
 * on the loop's next turn (a zero timer). */
struct engine_observer {
    void (*event)(const struct store_event *ev, void *data);
    void (*output)(const char *job_id, enum vm_stream stream, const char *buf, size_t len,
                   void *data);
    void (*attempt_done)(const char *job_id, int attempt, const struct attempt_result *r,
                         void *data);
    /* The job reached its final state and left the engine, whichever way
     * (also cancelled while queued, or failed before any VM existed). last is
     * its last attempt's result, or NULL when it never had one. */
    void (*finished)(const char *job_id, enum job_state state, const struct attempt_result *last,
                     void *data);
};

struct engine_watch;
struct engine_watch *engine_observe(struct engine *e, const struct engine_observer *o, void *data);
void engine_unobserve(struct engine *e, struct engine_watch *w);

/* Status of one backend for `pool status` and /metrics. */
struct engine_backend_status {
    const char *name;
    const char *type;
    struct backend_capacity cap;
    unsigned jobs_started;   /* attempts started on it since the engine started */
    unsigned warm_ready;     /* warm VMs booted and waiting on it */
    unsigned warm_booting;   /* warm VMs still booting on it */
    char last_fallback[160]; /* why a job last skipped it, or "" */
};

/* Fills up to max entries; returns the number of backends. */
size_t engine_backends(struct engine *e, struct engine_backend_status *ret, size_t max);

/* One backend and its host for `agentlab host ls`: the status of
 * engine_backends() and what the backend knows of its host (its host_info
 * op; a backend without one reports only reachable = healthy and why not). */
struct engine_host {
    struct engine_backend_status st;
    struct backend_host_info info;
};

/* Fills up to max entries; returns the number of backends. The caller frees
 * each info with backend_host_info_clear() (engine_hosts_clear()). */
size_t engine_hosts(struct engine *e, struct engine_host *ret, size_t max);
void engine_hosts_clear(struct engine_host *v, size_t n);

/* Warm VMs of a pool (NULL = all pools): booted and waiting, and booting. */
void engine_warm_counts(struct engine *e, const char *pool, unsigned *ret_ready,
                        unsigned *ret_booting);

struct engine_warm_info {
    char name[160];
    const char *backend;
    const char *pool;
    bool ready;
    uint64_t age_ms; /* since it was launched */
};

/* Lists up to max warm VMs; returns how many there are. */
size_t engine_warm_list(struct engine *e, struct engine_warm_info *ret, size_t max);

/* How many warm VMs a pool should have now: warm, or warm_peak during its
 * peak hours (Monday to Friday, local time). */
int engine_warm_target(const struct config_pool *pool, int64_t now_wall_ms);

/* How many more jobs of the default size (job_cpus) the healthy backends of
 * a pool (NULL or "" = the default pool) have room for now, by VM count and
 * by vCPUs; queued jobs are not subtracted. */
long engine_pool_room(struct engine *e, const char *pool);

/* The one admission rule, asked by every source and the API before they take
 * a job. A source says how many of its jobs are live (as it counts them:
 * queued or running, also those it holds outside the engine) and its cap. A
 * source that claims work from a forge (GitLab, GitHub), where a job taken
 * is a job promised, asks for start_now: then the job's pool must also have
 * a free slot beyond the jobs already queued for that pool and the held
 * ones. Other pools' queues do not count. */
struct engine_admit {
    const char *pool; /* NULL or "" = the default pool */
    unsigned live;    /* the source's live jobs */
    unsigned cap;     /* at most this many; 0 = no cap */
    bool start_now;
    unsigned held; /* start_now: jobs taken, not queued in the engine yet */
};

enum engine_admit_verdict {
    ENGINE_ADMIT_YES = 0,
    ENGINE_ADMIT_SOURCE_FULL, /* the source's cap */
    ENGINE_ADMIT_POOL_FULL,   /* start_now, and no slot is free */
};

/* Answers for one more job; why (may be NULL) gets a sentence when not. */
enum engine_admit_verdict engine_admit(struct engine *e, const struct engine_admit *a, char *why,
                                       size_t why_size);

/* Live jobs of one pool: queued, and running (from starting to finishing). */
void engine_pool_counts(struct engine *e, const char *pool, unsigned *ret_queued,
                        unsigned *ret_running);

/* Counts of live jobs. */
void engine_counts(struct engine *e, unsigned *ret_queued, unsigned *ret_running);

/* Live (queued or running) jobs whose spec names this source type, also
 * those taken back after a restart: what a source's cap counts. */
unsigned engine_live_jobs(struct engine *e, enum job_source_type source);

/* <state_dir>/jobs/<id>: the job's log (output.log) and artifacts/. */
char *engine_job_dir(struct engine *e, const char *job_id);

struct store *engine_store(struct engine *e);

/* Runs a bounded retention pass now (also done periodically). */
void engine_prune(struct engine *e);

#endif
