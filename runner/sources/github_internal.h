/* The GitHub source's private parts, shared by github.c (calls to the API,
 * the tick, engine observers, start and stop), github_runner.c (the JIT
 * runners' lives: capacity, create, serve, retire, delete, and the sweep
 * that reconciles them with GitHub's list) and github_intake.c (what jobs
 * want a runner: the demand list, fed by webhooks and by polling workflow
 * runs). Nothing outside these three files includes it. Loop thread only. */
#ifndef AL_GITHUB_INTERNAL_H
#define AL_GITHUB_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "runner/base/error.h"
#include "runner/base/list.h"
#include "runner/engine/engine.h"
#include "runner/engine/store.h"
#include "runner/loop/http_client.h"
#include "runner/sources/github.h"
#include "runner/sources/github_common.h"
#include "runner/sources/github_labels.h"
#include "runner/sources/github_payload.h"

#define API_VERSION_HEADER   "X-GitHub-Api-Version: 2022-11-28"
#define MAX_INFLIGHT         4
#define CALL_TIMEOUT_MS      30000L
#define FINAL_TIMEOUT_MS     5000L
#define TICK_MS              1000u
#define SWEEP_EVERY_MS       60000u
#define HOOKED_POLL_MS       60000u  /* catch-up poll beside webhooks */
#define VERIFY_AFTER_MS      60000u  /* a job waiting this long is checked before serving */
#define DONE_GRACE_MS        120000u /* VM still up after its runner's job completed */
#define DEMAND_KEEP_MS       (60u * 60 * 1000)
#define MAX_DEMAND           4096
#define MAX_RUNNERS_PER_JOB  3 /* runners made for one job that none of them took */
#define MAX_RUNS_SEEN        1024
#define RUNS_PER_PAGE        50
#define RUNNER_PAGES         10
#define DELETE_TRIES         20
#define DELETE_RETRY_MS      30000u
#define BACKOFF_MIN_MS       5000u
#define BACKOFF_MAX_MS       (5u * 60 * 1000)
#define POLL_LOW_REMAINING   100
#define RATE_LIMIT_DEFAULT_S 60

struct ghdemand;

struct ghrunner {
    struct github *g;
    struct al_list link; /* on github.runners */
    char name[64];
    int64_t id;              /* GitHub's runner id; 0 until known */
    struct ghdemand *demand; /* the job it was made for, or NULL */
    char engine_id[STORE_JOB_ID_SIZE];
    bool submitted;
    enum gh_rstate state;
    uint64_t created_ms;
    uint64_t done_ms;
    int64_t took_job;
    bool vm_gone;              /* no VM (any more) */
    bool deleted;              /* GitHub no longer has it */
    bool deleting;             /* a DELETE is in flight */
    bool stopping_vm;          /* engine_cancel was called */
    const char *retire_reason; /* why the VM is stopped once the delete succeeded */
    int delete_tries;
    uint64_t next_delete_ms;
    unsigned calls; /* requests in flight that point at it */
};

enum dstate {
    D_WAITING, /* wants a runner */
    D_SERVED,  /* a runner was made for it */
    D_TAKEN,   /* a runner (any) runs it */
    D_DONE,    /* completed, or not ours to serve */
};

struct ghdemand {
    struct al_list link; /* on github.demand */
    int64_t job_id;
    char *repo;
    char *name;
    char *html_url;
    enum dstate state;
    struct ghrunner *runner;
    uint64_t since_ms;     /* waiting since */
    uint64_t touched_ms;   /* last change */
    bool verify;           /* check it is still queued before serving */
    bool checking;         /* a GET of the job is in flight */
    unsigned runners_made; /* runners with a VM made for it so far */
    char **labels;         /* the job's labels as GitHub sent them; its runners get them all */
    size_t n_labels;
    struct github_job_wants wants; /* the size and image its labels ask for */
    char *pool;                    /* the pool the engine routed it to */
};

struct ghrun_seen {
    int64_t id;
    char updated_at[40];
    uint64_t seen_ms;
};

struct ghpoll_repo {
    char *repo;    /* owner/name */
    char *etag[2]; /* of the queued and in_progress run lists */
};

typedef void (*gh_cb)(struct github *g, int result, const struct al_http_response *resp,
                      const struct al_error *err, void *data);

struct github {
    struct gh_base b; /* soon_timer: gh_serve() */
    char *base;       /* API base URL, no trailing slash */
    char *scope;      /* "/repos/OWNER/NAME" or "/orgs/ORG" */
    char *prefix;     /* runner names start with it */
    char **labels;    /* the runners' labels, before the job's are added */
    size_t n_labels;
    char *labels_text;
    char **pool_labels; /* the labels of the pools this source may route to */
    struct github_auth *auth;
    struct github_hook *hook;

    struct api_queue *api; /* every call to GitHub's API */

    struct al_list runners; /* newest first */
    struct al_list demand;  /* oldest first */
    unsigned n_demand;
    uint64_t serve_after_ms;
    uint64_t serve_backoff_ms;
    bool max_logged;

    uint64_t next_sweep_ms;
    bool sweeping;
    int sweep_page;
    bool sweep_failed;

    bool polling_enabled;
    uint64_t poll_every_ms;
    uint64_t next_poll_ms;
    unsigned poll_calls;
    bool poll_low_logged;
    bool poll_round_failed;   /* a call of the current poll round failed */
    uint64_t poll_backoff_ms; /* after failed rounds; 0 while polling works */
    struct ghpoll_repo *poll_repos;
    size_t n_poll_repos;
    struct ghrun_seen *runs;
    size_t n_runs;

    bool hook_open;
};

/* ---- github.c: calls and helpers ---- */

/* Doubles a back-off, from BACKOFF_MIN_MS up to BACKOFF_MAX_MS. */
void gh_backoff_grow(uint64_t *b);
/* "HTTP 422: message" of an answer, or the transport error, for logs. */
void gh_describe_result(int result, const struct al_http_response *resp, const struct al_error *err,
                        char *buf, size_t size);
/* repo (OWNER/NAME) is the configured repository or in the organisation. */
bool gh_repo_in_scope(const struct github *g, const char *repo);
/* Queues an API call (runner/loop/api_queue.h). path and body (may be NULL)
 * are taken over; etag (may be NULL) must live until cb. cb runs exactly
 * once: with the answer, a transport error, or -ECANCELED when the source
 * stops first. */
void gh_call_etag(struct github *g, const char *method, char *path, char *body, const char *etag,
                  gh_cb cb, void *data);
void gh_call(struct github *g, const char *method, char *path, char *body, gh_cb cb, void *data);

/* ---- github_runner.c: the JIT runners ---- */

/* Unlinks the runner from its job's bookkeeping. */
void gh_runner_release_demand(struct ghrunner *r);
/* Nothing is left to do for r: the next tick frees it. */
void gh_runner_set_dead(struct ghrunner *r);
/* Cancels r's VM in the engine once; why is logged. */
void gh_runner_stop_vm(struct ghrunner *r, const char *why);
/* DELETEs r from GitHub, retried up to DELETE_TRIES times. */
void gh_runner_delete(struct ghrunner *r);
/* Removes the runner from GitHub; with reason (the VM is still up) its VM
 * is stopped once GitHub agreed, so a runner that took a job at the last
 * moment keeps its VM. */
void gh_runner_retire(struct ghrunner *r, const char *reason);
/* The engine job spec of a runner for d: gh_runner_job_spec() (jit taken
 * over) with the size, image and labels the job's labels ask for, and no
 * pool: the engine routes it among the source's pools. */
int gh_demand_spec(struct github *g, const struct ghdemand *d, const char *runner, char *jit,
                   struct job_spec **ret, struct al_error **err);
/* Makes runners for waiting jobs while max_runners and the engine allow. */
void gh_serve(struct github *g);
/* Lists GitHub's runners and reconciles them with ours: a runner with our
 * prefix and no VM here (a previous agentlabd's) is deleted, and a busy
 * one of ours is marked as having taken its job. */
void gh_sweep(struct github *g);

/* ---- github_intake.c: jobs that want a runner ---- */

void gh_demand_set(struct ghdemand *d, enum dstate s);
void gh_demand_free(struct ghdemand *d);
/* Drops finished entries after an hour (they only guard against late and
 * repeated deliveries); frees room when the list is full. */
void gh_demand_prune(struct github *g, bool make_room);
struct ghrunner *gh_runner_by_name(struct github *g, const char *name);
/* name is one of this source's runner names (it has our prefix). */
bool gh_is_ours(const struct github *g, const char *name);
/* labels as "a, b, c" for messages. */
void gh_labels_text(char *const *labels, size_t n, char *buf, size_t size);
/* A workflow_job delivery (github_hook.h). */
void gh_on_webhook_job(const struct github_job *job, const char *delivery, void *data);
/* One poll round: the queued and in-progress workflow runs of every
 * polled repository, then the jobs of the runs that changed. */
void gh_poll_now(struct github *g);

#endif
