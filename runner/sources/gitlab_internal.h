/* The GitLab source's private parts, shared by gitlab.c (the request loop:
 * polling for jobs, capacity, observers, start and stop), gitlab_run.c
 * (a job's start: the artifacts of earlier jobs, the checkout, the submit)
 * gitlab_report.c (what goes back to GitLab while and after a job runs:
 * trace, state updates, artifacts, the final state) and gitlab_cache_job.c
 * (a job's caches). Nothing outside these files includes it. Loop thread
 * only. */
#ifndef AL_GITLAB_INTERNAL_H
#define AL_GITLAB_INTERNAL_H

#include <curl/curl.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>
#include <yajl/yajl_gen.h>

#include "runner/base/buf.h"
#include "runner/base/error.h"
#include "runner/base/list.h"
#include "runner/engine/engine.h"
#include "runner/engine/store.h"
#include "runner/loop/http_client.h"
#include "runner/sources/gitlab.h"
#include "runner/sources/gitlab_job.h"

#define API                  "/api/v4"
#define REQUEST_TIMEOUT_MS   90000L /* long polls are held for up to ~50 s */
#define CALL_TIMEOUT_MS      60000L
#define SHUTDOWN_TIMEOUT_MS  10000L
#define UPLOAD_TIMEOUT_MS    (30L * 60 * 1000)
#define BACKOFF_MIN_MS       1000u
#define BACKOFF_MAX_MS       (5u * 60 * 1000)
#define REPOLL_MS            200u /* after a long poll said something changed */
#define TRACE_INTERVAL_S     3u
#define TRACE_INTERVAL_MAX_S 300u
#define KEEPALIVE_MS         30000u
#define TRACE_CHUNK          (512u << 10)
#define SMALL_RESPONSE       (64u << 10)
#define FINISH_TRIES         10
#define ACCEPTED_TRIES       60 /* 202 answers to the final update */
#define CHECKOUT_TIMEOUT_S   1800

enum phase {
    PHASE_CHECKOUT, /* git on the host */
    PHASE_ENGINE,   /* submitted, not finished */
    PHASE_FINISHING,
};

enum finish_step {
    FS_CACHE = 0,
    FS_ARTIFACTS,
    FS_UPLOAD,
    FS_FOOTER,
    FS_SYNC,
    FS_TRACE,
    FS_UPDATE,
    FS_DONE,
};

struct gitlab;

struct gljob {
    struct gitlab *g;
    struct al_list link; /* on gitlab.jobs */
    int64_t id;
    char *token; /* registered with the redactor while the job lives */
    struct gitlab_job *payload;
    struct job_spec *spec; /* until submitted */
    char engine_id[STORE_JOB_ID_SIZE];
    bool submitted;
    enum phase phase;
    struct gitlab_checkout *checkout;
    char *checkout_dir;
    /* artifacts of earlier jobs (payload dependencies), downloaded before
     * the checkout into deps_dir and unpacked over the tree by it */
    char *deps_dir;
    char **dep_zips; /* NULL-terminated */
    size_t n_dep_zips;
    size_t dep_next;
    int dep_fd;
    uint64_t dep_bytes;
    bool dep_over;
    /* caches restored from the store, unpacked before the dependencies' */
    char *cache_dir;
    char **cache_zips; /* NULL-terminated */
    size_t n_cache_zips;

    struct al_buf trace;
    bool trace_truncated;
    size_t sent; /* bytes the server has */
    unsigned interval_s;
    uint64_t last_contact_ms;
    struct al_http_call *call;
    uv_timer_t timer;
    bool timer_armed;
    bool working;      /* a worker or a sync is under way */
    bool freed;        /* job_free() ran: the timer is closing */
    uint64_t delay_ms; /* finishing: wait this long before the next try */
    bool cancel_requested;
    bool gone;     /* the server no longer takes updates (403/404) */
    bool shutdown; /* agentlabd is stopping */

    /* the outcome */
    bool succeeded;
    const char *failure_reason;
    bool has_exit_code;
    int exit_code;
    struct al_buf footer;
    enum finish_step fstep;
    int tries;
    size_t art_next; /* finishing: the payload artifact being uploaded */
    char *zip_path;
    curl_mime *mime;
};

struct gitlab {
    uv_loop_t *loop;
    struct engine *e;
    struct al_curl *curl;
    const struct config *cfg;
    const struct config_source *src;
    char *base; /* the URL without a trailing slash */
    char *token;
    char system_id[16];
    char *last_update;
    char *checkout_root;
    struct gitlab_cache_store *cache; /* NULL: cache_max_size = 0 */
    struct engine_watch *watch;
    uv_timer_t poll_timer;
    struct al_http_call *poll_call;
    uint64_t backoff_ms;
    bool waiting_room; /* the poll timer waits for capacity */
    bool at_cap;       /* `concurrent` jobs are active (counted once) */
    bool rejected_logged;
    struct al_list jobs; /* newest first */
    int workers;         /* directory removals in flight */
    bool stopping;
    bool closed;
    void (*done)(void *data);
    void *done_data;
};

DEFINE_CLEANUP_FUNC(struct yajl_gen_t, yajl_gen_free)

/* One call to GitLab's API (gl_api_call()); unset fields take defaults. */
struct call_opts {
    const char *method;
    const char *path; /* after the base URL */
    const char *job_token;
    const char *content_type;
    const char *content_range;
    const char *body;
    size_t body_len;
    size_t max_response; /* 0: SMALL_RESPONSE */
    long timeout_ms;     /* 0: CALL_TIMEOUT_MS */
    int (*setup)(CURL *easy, void *data);
    void *setup_data;
};

/* ---- gitlab.c: the request loop and helpers ---- */

/* Percent-encodes s for a query string; NULL when out of memory. */
char *gl_url_escape(const char *s);
/* A key and a string value, or a key, into g: 0 or -EINVAL. */
int gl_gen_kv(yajl_gen g, const char *k, const char *v);
int gl_gen_key(yajl_gen g, const char *k);
/* The finished JSON document of g as a new string (wipe it after use:
 * bodies carry tokens); NULL when out of memory. */
char *gl_gen_take(yajl_gen g, size_t *ret_len);
/* Starts a call to g's GitLab with the headers o asks for; cb as
 * al_http_start(). */
int gl_api_call(struct gitlab *g, const struct call_opts *o, al_http_cb cb, void *data,
                struct al_http_call **ret, struct al_error **err);
/* The Range header "0-N" of an answer: N, the bytes the server holds. */
bool gl_parse_range(const struct al_http_response *resp, uint64_t *ret);
/* The first line of an answer's body, printable, for messages. */
void gl_body_excerpt(const struct al_http_response *resp, char *buf, size_t size);
/* rm -rf path on a worker (checkouts can be large); g stops after it. */
void gl_remove_async(struct gitlab *g, const char *path);
/* The next request for a job in ms. */
void gl_poll_schedule(struct gitlab *g, uint64_t ms);
/* Closes g once gitlab_stop() ran and nothing is left under way. */
void gl_maybe_stopped(struct gitlab *g);

/* ---- gitlab_run.c: a job's start ---- */

/* Takes a job GitLab handed out (the request's answer body): refuses it to
 * GitLab when it does not parse, else fetches what it needs and submits it. */
void gl_start_job(struct gitlab *g, const char *body, size_t len);
/* Unlinks j from g and frees it once its timer is closed. */
void gl_job_free(struct gljob *j);

/* ---- gitlab_report.c: what goes back to GitLab ---- */

/* Output of the job's VM, up to the source's output limit. */
void gl_trace_append(struct gljob *j, const char *data, size_t len);
/* Cancels the job in the engine (or its checkout) once; why is logged. */
void gl_request_cancel(struct gljob *j, const char *why);
/* The job's timer: trace and keep-alive while it runs, the next finishing
 * step after. */
void gl_on_tick(uv_timer_t *t);
void gl_trace_tick_arm(struct gljob *j, uint64_t ms);
/* The job ends before it ran (refused, checkout failed, cancelled): reports
 * it failed with the message in its trace. */
void gl_fail_early(struct gljob *j, const char *fmt, ...) _printf_(2, 3);
/* The engine finished the job: report the outcome to GitLab. */
void gl_on_engine_finished(struct gljob *j, enum job_state state,
                           const struct attempt_result *last);
/* The next finishing step, once work that set j->working is done. */
void gl_finish_continue(struct gljob *j);

/* ---- gitlab_cache_job.c: a job's caches ---- */

/* Restores the job's caches (a worker copies them out of the store; the
 * trace says what was found), then calls next; a failure is a warning
 * in the trace. A cancel meanwhile fails the job instead. */
void gl_cache_restore(struct gljob *j, void (*next)(struct gljob *j));
/* Says in the trace that the job's caches are not restored (no host
 * checkout), when it has any to restore. */
void gl_cache_skip_restore(struct gljob *j);
/* Saves the job's caches that apply from what its guest handed back;
 * true when that work started (j->working, then gl_finish_continue()). */
bool gl_cache_save(struct gljob *j);

#endif
