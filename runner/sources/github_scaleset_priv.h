/* Private to the scale-set listener (github_scaleset*.c): its state,
 * the calls to GitHub and the Actions Service, and what one part asks
 * of another. */
#pragma once

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "runner/base/list.h"
#include "runner/base/util.h"
#include "runner/loop/http_client.h"
#include "runner/sources/github_common.h"
#include "runner/sources/github_scaleset.h"

#define API_VERSION      "api-version=6.0-preview"
#define REST_VERSION     "X-GitHub-Api-Version: 2022-11-28"
#define CALL_TIMEOUT_MS  30000L
#define POLL_TIMEOUT_MS  (3L * 60 * 1000) /* the service holds a poll ~50 s */
#define FINAL_TIMEOUT_MS 5000L
#define TICK_MS          1000u
#define ADMIN_MARGIN_S   60 /* the admin token is replaced this long before its exp */
#define REGISTER_TRIES   5  /* runner-registration: 401, 403, 5xx are retried */
#define BACKOFF_MIN_MS   2000u
#define BACKOFF_MAX_MS   60000u
#define DONE_GRACE_MS    60000u /* VM still up after its runner's job completed */
#define ENDED_GRACE_MS   10000u /* JobStarted/JobCompleted may trail a runner's exit */
#define DELETE_TRIES     20
#define DELETE_RETRY_MS  5000u
#define CATCHUP_MS       15000u /* see ss_catch_up() */
#define MAX_DONE_IDS     256    /* request ids of jobs seen to end: late JobAvailable skipped */
#define MAX_BODY         (SCALESET_MAX_DOCUMENT + 1)
#define ZERO_UUID        "00000000-0000-0000-0000-000000000000"

struct github_scaleset;

typedef void (*ss_cb)(struct github_scaleset *g, int result, const struct al_http_response *resp,
                      const struct al_error *err, void *data);

enum auth_kind {
    AUTH_REST,   /* the PAT or the App's installation token (github_auth.h) */
    AUTH_REMOTE, /* RemoteAuth <registration token> */
    AUTH_ADMIN,  /* Bearer <admin token>, to {svc} */
    AUTH_MQ,     /* Bearer <message-queue token>, to {mq} */
    AUTH_MQ_SVC, /* Bearer <message-queue token>, to {svc} (acquirejobs) */
};

struct sscall {
    struct github_scaleset *g;
    struct al_list link; /* on inflight, wait_admin or wait_session */
    const char *method;
    enum auth_kind auth;
    char *target; /* REST: path under the API base; svc: path and query under {svc};
                     MQ: NULL (the poll) or "/<message id>" */
    char *body;   /* NULL: none */
    size_t body_len;
    const char *content_type;
    long timeout_ms;
    bool capacity; /* the poll: X-ScaleSetMaxCapacity */
    bool retried;  /* after a 401 */
    ss_cb cb;
    void *data;
    struct al_http_call *http;
};

struct ssrunner {
    struct github_scaleset *g;
    struct al_list link; /* on github_scaleset.runners */
    char name[64];
    int64_t id;
    char engine_id[STORE_JOB_ID_SIZE];
    bool submitted;
    enum gh_rstate state;
    uint64_t created_ms;
    uint64_t done_ms;
    bool vm_gone;
    bool deleting;
    bool deleted;
    bool stopping_vm;
    const char *retire_reason; /* stop the VM once the delete succeeded */
    int delete_tries;
    uint64_t next_delete_ms;
    unsigned calls;
};

enum jstate {
    J_WAITING, /* acquired; no runner took it yet */
    J_RUNNING, /* JobStarted */
};

struct ssjob {
    struct al_list link; /* on github_scaleset.jobs */
    int64_t request_id;
    enum jstate state;
    char runner[64];
    char *name;
};

enum phase {
    PH_SETUP,   /* runner group and scale set */
    PH_SESSION, /* creating the message session */
    PH_POLL,    /* long-polling */
};

struct github_scaleset {
    struct gh_base b; /* soon_timer: ss_scale() */
    char *api;        /* REST base, no trailing slash */
    char *scope;      /* "/repos/O/R", "/orgs/O" or "/enterprises/E" */
    char *config_url; /* what runner-registration is told: https://github.com/O[/R] */
    char *prefix;     /* runner names start with it */
    char *state_path; /* registered runners, for the next start */
    char *owner;      /* ownerName of the session */
    char *user_agent; /* "User-Agent: {...}" */
    struct github_auth *auth;

    /* the Actions Service */
    char *svc;         /* base URL, no trailing slash */
    char *admin_token; /* a secret */
    int64_t admin_exp_s;
    bool admin_refreshing;
    bool auth_waiting; /* for github_auth's on_refreshed */
    char *reg_token;   /* a secret, spent on runner-registration */
    int register_tries;
    uint64_t next_register_ms;
    uint64_t admin_backoff_ms;
    uint64_t next_admin_ms;

    int64_t group_id;
    int64_t scaleset_id;
    enum phase phase;
    bool setup_busy;
    uint64_t next_setup_ms;
    uint64_t setup_backoff_ms;

    struct scaleset_session session; /* session_id NULL: none */
    bool session_busy;               /* create or refresh in flight */
    uint64_t next_session_ms;
    uint64_t session_backoff_ms;
    unsigned conflicts; /* 409s in a row */

    bool polling; /* the GET is in flight */
    bool acking;  /* a DELETE of a message is in flight */
    uint64_t next_poll_ms;
    uint64_t poll_backoff_ms;
    int64_t last_message_id;
    int64_t last_message_wall_ms;
    struct scaleset_stats stats;
    uint64_t polls, messages;
    uint64_t last_offer_ms;   /* a message last offered a job new to this listener */
    uint64_t next_catchup_ms; /* ss_catch_up() */
    bool catching_up;
    uint64_t catchups;

    /* the calls, newest first */
    struct al_list inflight;
    struct al_list wait_admin;   /* for an admin token */
    struct al_list wait_session; /* for a refreshed session (a 401 on the mq token) */

    struct al_list runners; /* newest first */
    struct al_list jobs;    /* newest first */
    unsigned acquiring;     /* ids in acquirejobs calls in flight */
    int64_t done_ids[MAX_DONE_IDS];
    size_t n_done_ids;
    uint64_t scale_after_ms;
    uint64_t scale_backoff_ms;
    bool full_logged;

    struct scaleset_message pending; /* the message being acknowledged */
    bool lookup_done;                /* the scale set was looked up by name */
};

struct counts {
    unsigned live;     /* runners that have (or will have) a VM */
    unsigned creating; /* generatejitconfig in flight: not in the engine yet */
    unsigned spare;    /* creating or idle: can take a job */
    unsigned waiting;  /* acquired jobs no runner took yet, and acquisitions in flight */
};

struct acquire_ctx {
    unsigned n;
};

static inline uint64_t now_ms(void)
{
    return al_now_mono_ms();
}

static inline void backoff_grow(uint64_t *b)
{
    *b = *b ? *b * 2 : BACKOFF_MIN_MS;
    if (*b > BACKOFF_MAX_MS)
        *b = BACKOFF_MAX_MS;
}

static inline bool is_error(const struct al_http_response *resp, const char *what)
{
    return scaleset_error_is(resp->body.data, resp->body.len, what);
}

static inline void wipe_body(const struct al_http_response *resp)
{
    explicit_bzero(resp->body.data, resp->body.len);
}

/* True when a call's answer comes too late to act on (cancelled, or the
 * listener stops); what it carried, which may hold a token, is wiped. */
static inline bool call_dropped(const struct github_scaleset *g, int result,
                                const struct al_http_response *resp)
{
    if (result != -ECANCELED && !g->b.stopping)
        return false;
    if (resp)
        wipe_body(resp);
    return true;
}

static inline bool admin_valid(const struct github_scaleset *g)
{
    return g->admin_token && g->svc && al_now_wall_ms() / 1000 + ADMIN_MARGIN_S < g->admin_exp_s;
}

/* While stopping: good for the last calls (FINAL_TIMEOUT_MS), even when it
 * is due for replacement, which a stopping listener no longer fetches. */
static inline bool admin_valid_at_stop(const struct github_scaleset *g)
{
    return g->admin_token && g->svc && al_now_wall_ms() + FINAL_TIMEOUT_MS < g->admin_exp_s * 1000;
}

/* github_scaleset_call.c */
void ss_call_send(struct sscall *c);
void ss_describe(int result, const struct al_http_response *resp, const struct al_error *err,
                 char *buf, size_t size);
void ss_fail_list(struct al_list *list, int code, const char *why);
char *ss_query_escape(const char *s);
void ss_send_list(struct al_list *list);
void ss_call(struct github_scaleset *g, const char *method, enum auth_kind auth, char *target,
             char *body, ss_cb cb, void *data);
char *ss_svc_path(const char *fmt, ...) _printf_(1, 2);

/* github_scaleset_admin.c */
void ss_admin_refresh(struct github_scaleset *g);
void ss_on_auth_refreshed(int result, const char *message, void *data);
void ss_register_send(struct github_scaleset *g);
struct ssrunner *ss_runner_new(struct github_scaleset *g, const char *name);
void ss_state_load(struct github_scaleset *g);
void ss_state_save(struct github_scaleset *g);

/* github_scaleset_runner.c */
void ss_cancel_orphans(struct github_scaleset *g);
struct counts ss_count(const struct github_scaleset *g);
unsigned ss_free_vms(struct github_scaleset *g, const struct counts *c, char *why, size_t why_size);
bool ss_job_done_before(const struct github_scaleset *g, int64_t rid);
struct ssjob *ss_job_find(struct github_scaleset *g, int64_t rid);
void ss_job_remove(struct github_scaleset *g, int64_t rid);
void ss_on_acquired(struct github_scaleset *g, int result, const struct al_http_response *resp,
                    const struct al_error *err, void *data);
void ss_on_tick(uv_timer_t *t);
struct ssrunner *ss_runner_by_name(struct github_scaleset *g, const char *name);
void ss_scale(struct github_scaleset *g);

/* the engine observer: a finished VM moves its runner on */
extern const struct engine_observer ss_observer;

/* github_scaleset_session.c */
void ss_poll_now(struct github_scaleset *g);
void ss_catch_up(struct github_scaleset *g);
bool ss_call_creates_session(const struct sscall *c);
void ss_on_session_deleted(struct github_scaleset *g, int result,
                           const struct al_http_response *resp, const struct al_error *err,
                           void *data);
void ss_session_create(struct github_scaleset *g);
void ss_session_refresh(struct github_scaleset *g);

/* github_scaleset.c */
void ss_maybe_closed(struct github_scaleset *g);
void ss_setup_step(struct github_scaleset *g);
