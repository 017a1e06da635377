/* What the GitHub source's two modes (github.c: REST and webhooks;
 * github_scaleset.c: runner scale sets) do alike: where the API is, whom a
 * runner serves, how runners are named, and the job that runs one JIT
 * runner in a VM. */
#ifndef AL_GITHUB_COMMON_H
#define AL_GITHUB_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include <yajl/yajl_gen.h>

#include "runner/base/error.h"
#include "runner/engine/config.h"
#include "runner/engine/engine.h"
#include "runner/engine/spec.h"
#include "runner/loop/curl_uv.h"
#include "runner/sources/github_auth.h"

/* Where a JIT runner is in its life, in both modes. */
enum gh_rstate {
    R_CREATING, /* its JIT config is being generated */
    R_IDLE,     /* its VM runs the runner, which has no job yet */
    R_BUSY,     /* it took a job */
    R_DONE,     /* its job completed; its VM should end soon */
    R_ENDING,   /* its VM is gone (or never was): deleting the runner from GitHub */
    R_DEAD,     /* nothing left to do; freed by the next tick */
};

/* What both modes are built on: where they run, what they serve, the
 * engine watch, the tick and the deferred work timer, and how they stop.
 * The first member (named b) of struct github and struct
 * github_scaleset; the timers' data is that owner. Loop thread only. */
struct gh_base {
    uv_loop_t *loop;
    struct engine *e;
    struct al_curl *curl;
    const struct config *cfg;
    const struct config_source *src;
    const char *name; /* src->name */
    struct engine_watch *watch;
    uv_timer_t tick_timer;
    uv_timer_t soon_timer; /* work on the next loop turn: observers never re-enter the engine */
    bool stopping;
    bool in_stop; /* the stop function still queues its last calls */
    bool closing; /* the handles are being closed */
    int handles_open;
    void (*done)(void *data);
    void *done_data;
};

/* Fills b's settings; what else it holds stays zero. */
void gh_base_init(struct gh_base *b, uv_loop_t *loop, struct engine *e, struct al_curl *curl,
                  const struct config *cfg, const struct config_source *src);

/* Starts b: its timers (owner is their data; two more open handles), the
 * engine observer o (data owner) and tick(every tick_ms, from now). */
void gh_base_start(struct gh_base *b, void *owner, const struct engine_observer *o,
                   uv_timer_cb tick, uint64_t tick_ms);

/* The first step of a stop: marks b stopping and in_stop (the caller clears
 * in_stop once its last calls are queued), keeps done(data) for when the
 * last handle is closed, and stops the tick. */
void gh_base_stop(struct gh_base *b, void (*done)(void *data), void *data);

/* The last step of a stop: no more engine events, and both timers are
 * closed with closed_cb (each call counts one handle off). Once only. */
void gh_base_close(struct gh_base *b, uv_close_cb closed_cb);

/* The REST API base of src (its url, else api.github.com) without a
 * trailing slash, in *ret (the caller's to free). 0 or -ENOMEM. */
int gh_api_base(const struct config_source *src, char **ret);

/* The REST path of src's scope: "/repos/OWNER/NAME", "/orgs/ORG" or
 * "/enterprises/ENTERPRISE", in *ret (the caller's to free). 0 or -ENOMEM. */
int gh_scope(const struct config_source *src, char **ret);

/* What the names of source_name's runners start with:
 * "agentlab-<8 hex of the state dir and the source name>-", stable across
 * restarts and distinct between farms, in *ret (the caller's to free).
 * 0 or -ENOMEM. */
int gh_runner_prefix(const struct config *cfg, const char *source_name, char **ret);

/* A new runner name into buf: prefix and 8 random hex digits. 0 or -ENOMEM. */
int gh_runner_name(const char *prefix, char *buf, size_t size);

/* The VM's job for one JIT runner: the actions runner in src->runner_dir,
 * reading its config from the secret env ACTIONS_RUNNER_INPUT_JITCONFIG
 * (never argv, which every process in the guest can read in /proc).
 * jit is taken over and wiped. scale_set (may be NULL) is named in the
 * script's comment; url (may be NULL, or too long to keep) is the job's
 * source URL. On success *ret is the caller's. */
int gh_runner_job_spec(const struct config_source *src, const char *runner, const char *scale_set,
                       const char *url, char *jit, struct job_spec **ret, struct al_error **err);

/* The credential of src (a token file, or a GitHub App) for the REST API at
 * api_base, as github_auth_new() makes it; on_refreshed(data) as there. */
int gh_auth_new(const struct config_source *src, struct al_curl *curl, const char *api_base,
                void (*on_refreshed)(int result, const char *message, void *data), void *data,
                struct github_auth **ret, struct al_error **err);

/* Cancels the engine job engine_id, the VM of runner runner of the source
 * named source, logging why. May finish the job at once: the engine's
 * observers run inside. */
void gh_stop_vm(struct engine *e, const char *source, const char *runner, const char *engine_id,
                const char *why);

/* Ends gen: its text as a string (the caller's to free) when status, the
 * or-ed results of the calls that built it, is yajl_gen_status_ok; NULL
 * otherwise or out of memory. gen is freed either way. */
char *gh_json_finish(yajl_gen gen, int status);

/* A call that cannot be queued for want of memory: frees path and wipes and
 * frees body (either may be NULL), and returns the ENOMEM error to hand to
 * the call's callback (the caller frees it after). */
struct al_error *gh_call_oom(char *path, char *body);

#endif
