#include "runner/sources/github_scaleset.h"

#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <yajl/yajl_gen.h>

#include "runner/base/buf.h"
#include "runner/base/list.h"
#include "runner/base/log.h"
#include "runner/base/sha256.h"
#include "runner/base/util.h"
#include "runner/loop/http_client.h"
#include "runner/sources/github.h"
#include "runner/sources/github_auth.h"
#include "runner/sources/github_payload.h"
#include "runner/sources/orphans.h"

#define API_VERSION       "api-version=6.0-preview"
#define REST_VERSION      "X-GitHub-Api-Version: 2022-11-28"
#define CALL_TIMEOUT_MS   30000L
#define POLL_TIMEOUT_MS   (3L * 60 * 1000) /* the service holds a poll ~50 s */
#define FINAL_TIMEOUT_MS  5000L
#define TICK_MS           1000u
#define ADMIN_MARGIN_S    60 /* the admin token is replaced this long before its exp */
#define REGISTER_TRIES    5  /* runner-registration: 401, 403, 5xx are retried */
#define BACKOFF_MIN_MS    2000u
#define BACKOFF_MAX_MS    60000u
#define DONE_GRACE_MS     60000u /* VM still up after its runner's job completed */
#define ENDED_GRACE_MS    10000u /* JobStarted/JobCompleted may trail a runner's exit */
#define DELETE_TRIES      20
#define DELETE_RETRY_MS   5000u
#define MAX_DONE_IDS      256 /* request ids of jobs seen to end: late JobAvailable skipped */
#define MAX_BODY          (SCALESET_MAX_DOCUMENT + 1)
#define ZERO_UUID         "00000000-0000-0000-0000-000000000000"

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

enum rstate {
    R_CREATING, /* generatejitconfig in flight */
    R_IDLE,     /* its VM runs the runner, which has no job yet */
    R_BUSY,     /* JobStarted named it */
    R_DONE,     /* JobCompleted named it; its VM should end soon */
    R_ENDING,   /* its VM is gone: deleting it from the scale set */
    R_DEAD,     /* freed by the next tick */
};

struct ssrunner {
    struct github_scaleset *g;
    struct al_list link; /* on github_scaleset.runners */
    char name[64];
    int64_t id;
    char engine_id[STORE_JOB_ID_SIZE];
    bool submitted;
    enum rstate state;
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
    uv_loop_t *loop;
    struct engine *e;
    struct al_curl *curl;
    const struct config *cfg;
    const struct config_source *src;
    const char *name;
    char *api;        /* REST base, no trailing slash */
    char *scope;      /* "/repos/O/R", "/orgs/O" or "/enterprises/E" */
    char *config_url; /* what runner-registration is told: https://github.com/O[/R] */
    char *prefix;     /* runner names start with it */
    char *state_path; /* registered runners, for the next start */
    char *owner;      /* ownerName of the session */
    char *user_agent; /* "User-Agent: {...}" */
    struct github_auth *auth;
    struct engine_watch *watch;

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

    /* the calls, newest first */
    struct al_list inflight;
    struct al_list wait_admin;   /* for an admin token */
    struct al_list wait_session; /* for a refreshed session (a 401 on the mq token) */

    struct al_list runners; /* newest first */
    struct al_list jobs;    /* newest first */
    unsigned acquiring; /* ids in acquirejobs calls in flight */
    int64_t done_ids[MAX_DONE_IDS];
    size_t n_done_ids;
    uint64_t scale_after_ms;
    uint64_t scale_backoff_ms;
    bool full_logged;

    uv_timer_t tick_timer;
    uv_timer_t scale_timer; /* scale() on the next turn: observers never re-enter the engine */
    struct scaleset_message pending; /* the message being acknowledged */
    bool lookup_done;                /* the scale set was looked up by name */
    bool stopping;
    bool in_stop; /* github_scaleset_stop() still queues its last call */
    bool closing;
    int handles_open;
    void (*done)(void *data);
    void *done_data;
};

static void scale(struct github_scaleset *g);
static void poll_now(struct github_scaleset *g);
static void admin_refresh(struct github_scaleset *g);
static void session_refresh(struct github_scaleset *g);
static void runner_delete(struct ssrunner *r);
static void maybe_closed(struct github_scaleset *g);

/* ------------------------------------------------------------ helpers */

static uint64_t now_ms(void)
{
    return al_now_mono_ms();
}

static void backoff_grow(uint64_t *b)
{
    *b = *b ? *b * 2 : BACKOFF_MIN_MS;
    if (*b > BACKOFF_MAX_MS)
        *b = BACKOFF_MAX_MS;
}

static void describe(int result, const struct al_http_response *resp, const struct al_error *err,
                     char *buf, size_t size)
{
    if (result < 0 || !resp) {
        snprintf(buf, size, "%s", err ? al_error_message(err) : strerror(-result));
        return;
    }
    char m[240];
    scaleset_error_message(resp->body.data, resp->body.len, m, sizeof(m));
    if (!*m)
        github_error_message(resp->body.data, resp->body.len, m, sizeof(m));
    snprintf(buf, size, "HTTP %ld%s%s", resp->status, *m ? ": " : "", m);
}

static bool is_error(const struct al_http_response *resp, const char *what)
{
    return scaleset_error_is(resp->body.data, resp->body.len, what);
}

static void wipe_body(const struct al_http_response *resp)
{
    explicit_bzero(resp->body.data, resp->body.len);
}

/* Percent-encodes s for a query value. */
static char *query_escape(const char *s)
{
    size_t n = strlen(s);
    char *out = malloc(n * 3 + 1), *o = out;
    if (!out)
        return NULL;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            *p == '-' || *p == '_' || *p == '.' || *p == '~') {
            *o++ = (char)*p;
        } else {
            snprintf(o, 4, "%%%02X", *p);
            o += 3;
        }
    }
    *o = '\0';
    return out;
}

static bool admin_valid(const struct github_scaleset *g)
{
    return g->admin_token && g->svc && al_now_wall_ms() / 1000 + ADMIN_MARGIN_S < g->admin_exp_s;
}

/* ------------------------------------------------------------ calls */

static void call_free(struct sscall *c)
{
    free(c->target);
    if (c->body)
        explicit_bzero(c->body, c->body_len);
    free(c->body);
    free(c);
}

static void push_call(struct al_list *list, struct sscall *c)
{
    al_list_add(list, &c->link);
}

/* Moves the calls of list, in their order, to ret (initialised here): a
 * call sent again may be pushed back on the list it came from. */
static void take_calls(struct al_list *list, struct al_list *ret)
{
    al_list_init(ret);
    al_list_for_each_safe(c, tmp, list, struct sscall, link) {
        al_list_del(&c->link);
        al_list_add_tail(ret, &c->link);
    }
}

static void call_send(struct sscall *c);

/* Sends again every call of a waiting list. */
static void send_list(struct al_list *list)
{
    struct al_list l;
    take_calls(list, &l);
    al_list_for_each_safe(c, tmp, &l, struct sscall, link) {
        al_list_del(&c->link);
        call_send(c);
    }
}

static void call_fail(struct sscall *c, int code, const char *fmt, ...) _printf_(3, 4);
static void call_fail(struct sscall *c, int code, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    struct al_error *err = NULL;
    al_error_set(&err, code, "%s", msg);
    c->cb(c->g, -code, NULL, err, c->data);
    al_error_free(err);
    call_free(c);
}

/* Fails every call of a waiting list. */
static void fail_list(struct al_list *list, int code, const char *why)
{
    struct al_list l;
    take_calls(list, &l);
    al_list_for_each_safe(c, tmp, &l, struct sscall, link) {
        al_list_del(&c->link);
        call_fail(c, code, "%s", why);
    }
}

static void on_http_done(int result, const struct al_http_response *resp,
                         const struct al_error *err, void *data);

static void call_send(struct sscall *c)
{
    struct github_scaleset *g = c->g;
    bool to_svc = c->auth == AUTH_ADMIN || c->auth == AUTH_MQ_SVC;
    if (g->stopping && (to_svc ? !admin_valid(g) : c->auth != AUTH_MQ)) {
        call_fail(c, ECANCELED, "stopping");
        return;
    }
    if (to_svc && !admin_valid(g)) {
        push_call(&g->wait_admin, c);
        admin_refresh(g);
        return;
    }
    if ((c->auth == AUTH_MQ || c->auth == AUTH_MQ_SVC) && g->session_busy) {
        push_call(&g->wait_session, c);
        return;
    }
    if ((c->auth == AUTH_MQ || c->auth == AUTH_MQ_SVC) && !g->session.session_id) {
        call_fail(c, ENOENT, "no message session");
        return;
    }
    _cleanup_free_ char *url = NULL;
    int r = 0;
    switch (c->auth) {
    case AUTH_REST:
    case AUTH_REMOTE:
        r = asprintf(&url, "%s%s", g->api, c->target);
        break;
    case AUTH_ADMIN:
    case AUTH_MQ_SVC:
        r = asprintf(&url, "%s%s", g->svc, c->target);
        break;
    case AUTH_MQ:
        if (!c->target) {
            if (g->last_message_id > 0)
                r = asprintf(&url, "%s%slastMessageId=%" PRId64, g->session.mq_url,
                             strchr(g->session.mq_url, '?') ? "&" : "?", g->last_message_id);
            else
                r = asprintf(&url, "%s", g->session.mq_url);
        } else {
            /* {mq path}/<id>, keeping {mq}'s query */
            const char *q = strchr(g->session.mq_url, '?');
            size_t n = q ? (size_t)(q - g->session.mq_url) : strlen(g->session.mq_url);
            while (n && g->session.mq_url[n - 1] == '/')
                n--;
            r = asprintf(&url, "%.*s%s%s", (int)n, g->session.mq_url, c->target, q ? q : "");
        }
        break;
    }
    if (r < 0) {
        url = NULL;
        call_fail(c, ENOMEM, "out of memory");
        return;
    }
    const char *secret = NULL;
    const char *scheme = "Bearer";
    switch (c->auth) {
    case AUTH_REST:
        secret = NULL; /* github_auth gives the whole line */
        break;
    case AUTH_REMOTE:
        secret = g->reg_token;
        scheme = "RemoteAuth";
        break;
    case AUTH_ADMIN:
        secret = g->admin_token;
        break;
    case AUTH_MQ:
    case AUTH_MQ_SVC:
        secret = g->session.mq_token;
        break;
    }
    char *auth_line = NULL;
    if (c->auth == AUTH_REST) {
        const char *h = github_auth_header(g->auth);
        if (!h) {
            call_fail(c, EAGAIN, "no GitHub credential yet");
            return;
        }
        auth_line = strdup(h);
    } else if (!secret || asprintf(&auth_line, "Authorization: %s %s", scheme, secret) < 0) {
        auth_line = NULL;
    }
    if (!auth_line) {
        call_fail(c, secret || c->auth == AUTH_REST ? ENOMEM : EAGAIN, "no credential");
        return;
    }
    char capacity[64], ctype[96];
    snprintf(capacity, sizeof(capacity), "X-ScaleSetMaxCapacity: %d", g->src->max_runners);
    snprintf(ctype, sizeof(ctype), "Content-Type: %s", c->content_type);
    const char *headers[8];
    size_t n = 0;
    headers[n++] = auth_line;
    headers[n++] = g->user_agent;
    if (c->auth == AUTH_REST) {
        headers[n++] = "Accept: application/vnd.github+json";
        headers[n++] = REST_VERSION;
    }
    if (c->auth == AUTH_MQ && !c->target)
        headers[n++] = "Accept: application/json; " API_VERSION;
    else
        headers[n++] = ctype;
    if (c->capacity)
        headers[n++] = capacity;
    headers[n] = NULL;
    struct al_http_request req = {
            .method = c->method,
            .url = url,
            .headers = headers,
            .body = c->body ? c->body : "",
            .body_len = c->body_len,
            .max_response = MAX_BODY,
            .timeout_ms = g->stopping ? FINAL_TIMEOUT_MS : c->timeout_ms,
    };
    if (!c->body && (streq(c->method, "GET") || streq(c->method, "DELETE")))
        req.body = NULL;
    struct al_error *err = NULL;
    push_call(&g->inflight, c);
    r = al_http_start(g->curl, &req, on_http_done, c, &c->http, &err);
    explicit_bzero(auth_line, strlen(auth_line));
    free(auth_line);
    if (r < 0) {
        al_list_del(&c->link);
        c->cb(g, r, NULL, err, c->data);
        al_error_free(err);
        call_free(c);
    }
}

static void on_http_done(int result, const struct al_http_response *resp,
                         const struct al_error *err, void *data)
{
    struct sscall *c = data;
    struct github_scaleset *g = c->g;
    al_list_del(&c->link);
    c->http = NULL;
    if (result == 0 && resp->status == 401 && !c->retried && !g->stopping) {
        c->retried = true;
        if (c->auth == AUTH_ADMIN) {
            /* the admin token was refused before its exp: a new one */
            al_wipe_free(g->admin_token);
            g->admin_token = NULL;
            call_send(c);
            return;
        }
        if (c->auth == AUTH_MQ || c->auth == AUTH_MQ_SVC) {
            log_info(NULL, "github %s: the message-queue token expired; refreshing the session",
                     g->name);
            push_call(&g->wait_session, c);
            session_refresh(g);
            return;
        }
        if (c->auth == AUTH_REST && github_auth_is_app(g->auth))
            github_auth_invalidate(g->auth);
    }
    c->cb(g, result, resp, err, c->data);
    call_free(c);
    maybe_closed(g);
}

/* Queues a call. target and body (may be NULL) are taken over; a NULL
 * target (out of memory) fails it. cb runs exactly once. */
static void ss_call(struct github_scaleset *g, const char *method, enum auth_kind auth,
                    char *target, char *body, ss_cb cb, void *data)
{
    struct sscall *c = calloc(1, sizeof(*c));
    if (!c || (!target && auth != AUTH_MQ)) {
        free(c);
        free(target);
        al_wipe_free(body);
        struct al_error *err = NULL;
        al_error_set(&err, ENOMEM, "out of memory");
        cb(g, -ENOMEM, NULL, err, data);
        al_error_free(err);
        return;
    }
    *c = (struct sscall){
            .g = g,
            .method = method,
            .auth = auth,
            .target = target,
            .body = body,
            .body_len = body ? strlen(body) : 0,
            .content_type = auth == AUTH_REST ? "application/vnd.github.v3+json"
                                              : "application/json",
            .timeout_ms = CALL_TIMEOUT_MS,
            .cb = cb,
            .data = data,
    };
    al_list_init(&c->link);
    if (auth == AUTH_MQ && !target) {
        c->capacity = true;
        c->timeout_ms = POLL_TIMEOUT_MS;
    }
    call_send(c);
}

/* "/_apis/runtime/<path>?api-version=..." (path has no query). */
static char *svc_path(const char *fmt, ...) _printf_(1, 2);
static char *svc_path(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *p = NULL;
    int r = vasprintf(&p, fmt, ap);
    va_end(ap);
    if (r < 0)
        return NULL;
    char *out = NULL;
    r = asprintf(&out, "/_apis/%s%s" API_VERSION, p, strchr(p, '?') ? "&" : "?");
    free(p);
    return r < 0 ? NULL : out;
}

/* ------------------------------------------------------------ admin token */

static void admin_done(struct github_scaleset *g, const char *failure)
{
    g->admin_refreshing = false;
    al_wipe_free(g->reg_token);
    g->reg_token = NULL;
    if (failure) {
        backoff_grow(&g->admin_backoff_ms);
        g->next_admin_ms = now_ms() + al_jitter_ms(g->admin_backoff_ms);
        log_warn(NULL, "github %s: getting an Actions Service token: %s; trying again in %" PRIu64
                       " s",
                 g->name, failure, g->admin_backoff_ms / 1000);
        fail_list(&g->wait_admin, EAGAIN, failure);
        return;
    }
    g->admin_backoff_ms = 0;
    send_list(&g->wait_admin);
}

static void on_registered(struct github_scaleset *g, int result, const struct al_http_response *resp,
                          const struct al_error *err, void *data);

static void register_send(struct github_scaleset *g)
{
    yajl_gen gen = yajl_gen_alloc(NULL);
    char *body = NULL;
    if (gen) {
        int r = yajl_gen_map_open(gen);
        r |= yajl_gen_string(gen, (const unsigned char *)"url", 3);
        r |= yajl_gen_string(gen, (const unsigned char *)g->config_url, strlen(g->config_url));
        r |= yajl_gen_string(gen, (const unsigned char *)"runner_event", 12);
        r |= yajl_gen_string(gen, (const unsigned char *)"register", 8);
        r |= yajl_gen_map_close(gen);
        const unsigned char *buf = NULL;
        size_t len = 0;
        if (r == yajl_gen_status_ok && yajl_gen_get_buf(gen, &buf, &len) == yajl_gen_status_ok &&
            asprintf(&body, "%.*s\n", (int)len, buf) < 0)
            body = NULL;
        yajl_gen_free(gen);
    }
    struct sscall *c = calloc(1, sizeof(*c));
    char *target = strdup("/actions/runner-registration");
    if (!c || !body || !target) {
        free(c);
        free(body);
        free(target);
        admin_done(g, "out of memory");
        return;
    }
    *c = (struct sscall){.g = g,
                         .method = "POST",
                         .auth = AUTH_REMOTE,
                         .target = target,
                         .body = body,
                         .body_len = strlen(body),
                         .content_type = "application/json",
                         .timeout_ms = CALL_TIMEOUT_MS,
                         .retried = true, /* its 401s are retried below */
                         .cb = on_registered};
    al_list_init(&c->link);
    call_send(c);
}

static void on_registered(struct github_scaleset *g, int result, const struct al_http_response *resp,
                          const struct al_error *err, void *data)
{
    (void)data;
    if (result == -ECANCELED || g->stopping) {
        if (resp)
            wipe_body(resp);
        g->admin_refreshing = false;
        return;
    }
    if (result == 0 && resp->status >= 200 && resp->status < 300) {
        char *url = NULL, *token = NULL;
        int64_t exp = 0;
        struct al_error *perr = NULL;
        int r = scaleset_parse_registration(resp->body.data, resp->body.len, &url, &token, &exp,
                                            &perr);
        wipe_body(resp);
        if (r < 0) {
            char m[300];
            snprintf(m, sizeof(m), "the runner-registration answer: %s", al_error_message(perr));
            al_error_free(perr);
            admin_done(g, m);
            return;
        }
        size_t n = strlen(url);
        while (n && url[n - 1] == '/')
            url[--n] = '\0';
        bool moved = g->svc && !streq(g->svc, url);
        free(g->svc);
        g->svc = url;
        if (g->admin_token) {
            al_redact_remove(g->admin_token);
            al_wipe_free(g->admin_token);
        }
        g->admin_token = token;
        al_redact_add(token);
        g->admin_exp_s = exp;
        log_info(NULL, "github %s: Actions Service token valid for %" PRId64 " s%s", g->name,
                 exp - al_now_wall_ms() / 1000, moved ? " (the service URL changed)" : "");
        admin_done(g, NULL);
        return;
    }
    char what[300];
    describe(result, resp, err, what, sizeof(what));
    if (resp)
        wipe_body(resp);
    bool retry = result < 0 || resp->status == 401 || resp->status == 403 ||
                 resp->status == 429 || (resp->status >= 500 && resp->status != 501);
    if (retry && ++g->register_tries < REGISTER_TRIES) {
        /* the same registration token again, after 1, 2, 4, 8 s */
        g->next_register_ms = now_ms() + (1000u << (g->register_tries - 1));
        log_info(NULL, "github %s: runner-registration: %s; trying again", g->name, what);
        return;
    }
    char m[400];
    snprintf(m, sizeof(m), "runner-registration: %s", what);
    admin_done(g, m);
}

static void on_reg_token(struct github_scaleset *g, int result, const struct al_http_response *resp,
                         const struct al_error *err, void *data)
{
    (void)data;
    if (result == -ECANCELED || g->stopping) {
        g->admin_refreshing = false;
        return;
    }
    if (result < 0 || resp->status != 201) {
        char what[300], m[400];
        describe(result, resp, err, what, sizeof(what));
        snprintf(m, sizeof(m), "the registration token: %s", what);
        admin_done(g, m);
        return;
    }
    char *tok = NULL;
    int64_t exp = 0;
    struct al_error *perr = NULL;
    int r = github_parse_token(resp->body.data, resp->body.len, &tok, &exp, &perr);
    wipe_body(resp);
    if (r < 0) {
        char m[300];
        snprintf(m, sizeof(m), "the registration token answer: %s", al_error_message(perr));
        al_error_free(perr);
        admin_done(g, m);
        return;
    }
    al_wipe_free(g->reg_token);
    g->reg_token = tok;
    g->register_tries = 0;
    register_send(g);
}

static void reg_token_request(struct github_scaleset *g)
{
    char *target = NULL;
    if (asprintf(&target, "%s/actions/runners/registration-token", g->scope) < 0)
        target = NULL;
    ss_call(g, "POST", AUTH_REST, target, NULL, on_reg_token, NULL);
}

static void on_auth_refreshed(int result, const char *message, void *data)
{
    struct github_scaleset *g = data;
    if (!g->auth_waiting)
        return;
    g->auth_waiting = false;
    if (g->stopping) {
        g->admin_refreshing = false;
        return;
    }
    if (result < 0) {
        char m[400];
        snprintf(m, sizeof(m), "GitHub App token: %s", message ? message : "failed");
        admin_done(g, m);
        return;
    }
    reg_token_request(g);
}

/* The chain of SCALESET.md 1.3-1.6: an installation token (App), a
 * registration token, runner-registration. Calls wait in wait_admin. */
static void admin_refresh(struct github_scaleset *g)
{
    if (g->admin_refreshing || g->stopping || now_ms() < g->next_admin_ms)
        return;
    g->admin_refreshing = true;
    if (!github_auth_header(g->auth)) {
        int r = github_auth_refresh(g->auth);
        if (r == 0 || r == -EALREADY) {
            g->auth_waiting = true;
            return;
        }
        admin_done(g, "no GitHub credential");
        return;
    }
    reg_token_request(g);
}

/* ------------------------------------------------------------ the state file */

static void state_save(struct github_scaleset *g)
{
    struct al_buf b = {0};
    al_list_for_each(r, &g->runners, struct ssrunner, link) {
        if (r->id > 0 && !r->deleted)
            al_buf_printf(&b, "%" PRId64 " %s\n", r->id, r->name);
    }
    struct al_error *err = NULL;
    if (al_write_file_atomic(g->state_path, b.data ? b.data : "", b.len, 0600, &err) < 0) {
        log_warn(NULL, "github %s: %s", g->name, al_error_message(err));
        al_error_free(err);
    }
    al_buf_free(&b);
}

static struct ssrunner *runner_new(struct github_scaleset *g, const char *name)
{
    struct ssrunner *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->g = g;
    if (name) {
        snprintf(r->name, sizeof(r->name), "%s", name);
    } else {
        char *rnd = al_random_hex(4);
        if (!rnd) {
            free(r);
            return NULL;
        }
        snprintf(r->name, sizeof(r->name), "%s%s", g->prefix, rnd);
        free(rnd);
    }
    r->created_ms = now_ms();
    al_list_add(&g->runners, &r->link);
    return r;
}

/* Runners a previous process registered: none has a VM here now. */
static void state_load(struct github_scaleset *g)
{
    _cleanup_(fclosep) FILE *f = fopen(g->state_path, "re");
    if (!f)
        return;
    char line[256];
    unsigned n = 0;
    while (fgets(line, sizeof(line), f) && n < 10000) {
        char name[64];
        int64_t id = 0;
        if (sscanf(line, "%" SCNd64 " %63s", &id, name) != 2 || id <= 0 ||
            strncmp(name, g->prefix, strlen(g->prefix)) != 0)
            continue;
        struct ssrunner *r = runner_new(g, name);
        if (!r)
            break;
        r->id = id;
        r->vm_gone = true;
        r->state = R_ENDING;
        n++;
        log_info(NULL, "github %s: runner %s (id %" PRId64 ") of a previous agentlabd has no VM "
                       "here; removing it",
                 g->name, r->name, r->id);
    }
}

/* ------------------------------------------------------------ runners */

static void runner_set_dead(struct ssrunner *r)
{
    r->state = R_DEAD;
}

static int env_add(struct job_env_var **v, size_t *n, const char *name, const char *value)
{
    struct job_env_var *x = realloc(*v, (*n + 1) * sizeof(**v));
    if (!x)
        return -ENOMEM;
    *v = x;
    x[*n].name = strdup(name);
    x[*n].value = strdup(value);
    if (!x[*n].name || !x[*n].value) {
        free(x[*n].name);
        al_wipe_free(x[*n].value);
        return -ENOMEM;
    }
    (*n)++;
    return 0;
}

/* The VM's job: the actions runner, reading its config from
 * ACTIONS_RUNNER_INPUT_JITCONFIG (never argv). jit is taken over. */
static int runner_spec(struct ssrunner *r, char *jit, struct job_spec **ret, struct al_error **err)
{
    struct github_scaleset *g = r->g;
    _cleanup_job_spec_ struct job_spec *spec = calloc(1, sizeof(*spec));
    if (!spec) {
        al_wipe_free(jit);
        return al_error_set(err, ENOMEM, "out of memory");
    }
    spec->inject = -1;
    int rc = env_add(&spec->secret_env, &spec->n_secret_env, "ACTIONS_RUNNER_INPUT_JITCONFIG", jit);
    al_wipe_free(jit);
    rc |= env_add(&spec->env, &spec->n_env, "AGENTLAB_GITHUB_RUNNER", r->name);
    const char *dir = g->src->runner_dir;
    if (asprintf(&spec->script,
                 "# agentlab: GitHub Actions runner %s of scale set %s (one job, then this VM "
                 "is gone)\n"
                 "cd '%s' 2>/dev/null || { echo 'agentlab: no actions runner in %s (build the "
                 "image from the debian-12-actions recipe)' >&2; exit 127; }\n"
                 "exec ./run.sh\n",
                 r->name, g->src->scale_set_name, dir, dir) < 0)
        spec->script = NULL;
    if (asprintf(&spec->name, "github runner %s", r->name) < 0)
        spec->name = NULL;
    spec->source.type = JOB_SOURCE_GITHUB;
    spec->source.id = strdup(r->name);
    if (*g->src->pool)
        spec->pool = strdup(g->src->pool);
    spec->max_attempts = 1; /* a JIT config is good for one runner */
    if (rc || !spec->script || !spec->name || !spec->source.id || (*g->src->pool && !spec->pool))
        return al_error_set(err, ENOMEM, "out of memory");
    *ret = TAKE_PTR(spec);
    return 0;
}

static void scale_fail(struct github_scaleset *g, const char *fmt, ...) _printf_(2, 3);
static void scale_fail(struct github_scaleset *g, const char *fmt, ...)
{
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    backoff_grow(&g->scale_backoff_ms);
    g->scale_after_ms = now_ms() + al_jitter_ms(g->scale_backoff_ms);
    log_error(NULL, "github %s: %s; trying again in %" PRIu64 " s", g->name, msg,
              g->scale_backoff_ms / 1000);
}

static void runner_create(struct github_scaleset *g);

static void on_jit(struct github_scaleset *g, int result, const struct al_http_response *resp,
                   const struct al_error *err, void *data)
{
    struct ssrunner *r = data;
    r->calls--;
    if (result == -ECANCELED || g->stopping) {
        if (resp)
            wipe_body(resp);
        runner_set_dead(r);
        return;
    }
    if (result == 0 && resp->status != 200 && is_error(resp, "AgentExistsException")) {
        /* the name is taken (32 random bits): another name */
        runner_set_dead(r);
        runner_create(g);
        return;
    }
    if (result < 0 || resp->status != 200) {
        char what[300];
        describe(result, resp, err, what, sizeof(what));
        scale_fail(g, "generatejitconfig for runner %s: %s", r->name, what);
        runner_set_dead(r);
        return;
    }
    char *jit = NULL;
    struct al_error *perr = NULL;
    int rc = scaleset_parse_jitconfig(resp->body.data, resp->body.len, &r->id, &jit, &perr);
    wipe_body(resp);
    if (rc < 0) {
        scale_fail(g, "the generatejitconfig answer: %s", al_error_message(perr));
        al_error_free(perr);
        runner_set_dead(r);
        return;
    }
    state_save(g);
    struct job_spec *spec = NULL;
    struct al_error *serr = NULL;
    char eid[STORE_JOB_ID_SIZE];
    rc = runner_spec(r, jit, &spec, &serr);
    if (rc == 0)
        rc = engine_submit(g->e, spec, &(struct engine_submit){0}, eid, &serr);
    if (rc < 0) {
        scale_fail(g, "agentlab refused runner %s's VM: %s", r->name, al_error_message(serr));
        al_error_free(serr);
        r->vm_gone = true;
        r->state = R_ENDING;
        runner_delete(r);
        return;
    }
    memcpy(r->engine_id, eid, sizeof(eid));
    r->submitted = true;
    r->created_ms = now_ms();
    if (r->state == R_CREATING)
        r->state = R_IDLE;
    log_info(eid, "github %s: runner %s (id %" PRId64 ") of scale set %s runs as %s", g->name,
             r->name, r->id, g->src->scale_set_name, eid);
}

static void runner_create(struct github_scaleset *g)
{
    struct ssrunner *r = runner_new(g, NULL);
    if (!r)
        return;
    r->state = R_CREATING;
    yajl_gen gen = yajl_gen_alloc(NULL);
    char *body = NULL;
    if (gen) {
        int x = yajl_gen_map_open(gen);
        x |= yajl_gen_string(gen, (const unsigned char *)"name", 4);
        x |= yajl_gen_string(gen, (const unsigned char *)r->name, strlen(r->name));
        x |= yajl_gen_string(gen, (const unsigned char *)"workFolder", 10);
        x |= yajl_gen_string(gen, (const unsigned char *)"", 0);
        x |= yajl_gen_map_close(gen);
        const unsigned char *buf = NULL;
        size_t len = 0;
        if (x == yajl_gen_status_ok && yajl_gen_get_buf(gen, &buf, &len) == yajl_gen_status_ok)
            body = strndup((const char *)buf, len);
        yajl_gen_free(gen);
    }
    if (!body) {
        runner_set_dead(r);
        return;
    }
    r->calls++;
    ss_call(g, "POST", AUTH_ADMIN,
            svc_path("runtime/runnerscalesets/%" PRId64 "/generatejitconfig", g->scaleset_id),
            body, on_jit, r);
}

static void runner_stop_vm(struct ssrunner *r, const char *why)
{
    if (r->vm_gone || !r->submitted || r->stopping_vm)
        return;
    r->stopping_vm = true;
    log_info(r->engine_id, "github %s: runner %s: %s; stopping its VM", r->g->name, r->name, why);
    struct al_error *err = NULL;
    if (engine_cancel(r->g->e, r->engine_id, &err) < 0 && err && err->code != EALREADY &&
        err->code != ENOENT)
        log_warn(r->engine_id, "github %s: cancel: %s", r->g->name, al_error_message(err));
    al_error_free(err);
}

static void on_runner_deleted(struct github_scaleset *g, int result,
                              const struct al_http_response *resp, const struct al_error *err,
                              void *data)
{
    struct ssrunner *r = data;
    r->calls--;
    r->deleting = false;
    const char *eid = r->submitted ? r->engine_id : NULL;
    if (result == 0 &&
        (resp->status == 204 || resp->status == 404 || is_error(resp, "AgentNotFoundException"))) {
        r->deleted = true;
        log_info(eid, "github %s: runner %s (id %" PRId64 ") %s", g->name, r->name, r->id,
                 resp->status == 204 ? "removed from the scale set" : "is gone already");
        if (!g->stopping)
            state_save(g);
        if (r->retire_reason && !r->vm_gone)
            runner_stop_vm(r, r->retire_reason);
        if (r->vm_gone)
            runner_set_dead(r);
        return;
    }
    if (result == -ECANCELED || g->stopping)
        return;
    if (result == 0 && is_error(resp, "JobStillRunningException")) {
        /* it took a job at the last moment, or its job is still ending */
        if (r->state == R_IDLE) {
            log_info(eid, "github %s: runner %s is running a job; kept", g->name, r->name);
            r->state = R_BUSY;
            r->retire_reason = NULL;
            return;
        }
    } else {
        char what[300];
        describe(result, resp, err, what, sizeof(what));
        log_warn(eid, "github %s: removing runner %s (id %" PRId64 "): %s", g->name, r->name, r->id,
                 what);
    }
    if (++r->delete_tries >= DELETE_TRIES && r->vm_gone) {
        log_warn(eid, "github %s: runner %s: giving up removing it; the next start tries again",
                 g->name, r->name);
        runner_set_dead(r);
        return;
    }
    r->next_delete_ms = now_ms() + al_jitter_ms(DELETE_RETRY_MS);
}

static void runner_delete(struct ssrunner *r)
{
    struct github_scaleset *g = r->g;
    if (r->deleting || r->deleted)
        return;
    if (!r->id) {
        r->deleted = true;
        if (r->vm_gone)
            runner_set_dead(r);
        return;
    }
    r->deleting = true;
    r->calls++;
    ss_call(g, "DELETE", AUTH_ADMIN,
            svc_path("distributedtask/pools/0/agents/%" PRId64, r->id), NULL, on_runner_deleted, r);
}

static void runner_retire(struct ssrunner *r, const char *reason)
{
    if (r->retire_reason || r->deleting || r->deleted)
        return;
    log_info(r->submitted ? r->engine_id : NULL, "github %s: runner %s: %s; removing it",
             r->g->name, r->name, reason);
    r->retire_reason = reason;
    runner_delete(r);
}

static struct ssrunner *runner_by_name(struct github_scaleset *g, const char *name)
{
    if (!name)
        return NULL;
    al_list_for_each(r, &g->runners, struct ssrunner, link) {
        if (r->state != R_DEAD && streq(r->name, name))
            return r;
    }
    return NULL;
}

/* ------------------------------------------------------------ capacity */

struct counts {
    unsigned live;     /* runners that have (or will have) a VM */
    unsigned creating; /* generatejitconfig in flight: not in the engine yet */
    unsigned spare;    /* creating or idle: can take a job */
    unsigned waiting;  /* acquired jobs no runner took yet, and acquisitions in flight */
};

static struct counts count(const struct github_scaleset *g)
{
    struct counts c = {0};
    al_list_for_each(r, &g->runners, const struct ssrunner, link) {
        if (r->state == R_DEAD || r->vm_gone)
            continue;
        if (r->retire_reason)
            continue; /* leaving */
        c.live++;
        if (r->state == R_CREATING)
            c.creating++;
        if (r->state == R_CREATING || r->state == R_IDLE)
            c.spare++;
    }
    al_list_for_each(j, &g->jobs, const struct ssjob, link) {
        if (j->state == J_WAITING)
            c.waiting++;
    }
    c.waiting += g->acquiring;
    return c;
}

/* New VMs this source may start now: max_runners, and free slots of the
 * pool beyond its queue (engine_admit). */
static unsigned free_vms(struct github_scaleset *g, const struct counts *c, char *why,
                         size_t why_size)
{
    unsigned n = 0;
    if (why)
        snprintf(why, why_size, "max_runners is %d", g->src->max_runners);
    while (c->live + n < (unsigned)g->src->max_runners) {
        struct engine_admit a = {.pool = g->src->pool, .start_now = true, .held = c->creating + n};
        if (engine_admit(g->e, &a, why, why_size) != ENGINE_ADMIT_YES)
            break;
        n++;
    }
    return n;
}

static void scale(struct github_scaleset *g)
{
    if (g->stopping || !g->scaleset_id || now_ms() < g->scale_after_ms)
        return;
    struct counts c = count(g);
    unsigned need = c.waiting + (unsigned)g->src->min_runners;
    char why[300];
    unsigned room = free_vms(g, &c, why, sizeof(why));
    while (c.spare < need && room > 0) {
        runner_create(g);
        c.spare++;
        c.live++;
        c.creating++;
        room--;
    }
    if (c.spare < need && !g->full_logged) {
        log_info(NULL, "github %s: %u more runners wanted, no room: %s", g->name, need - c.spare,
                 why);
        g->full_logged = true;
    } else if (c.spare >= need) {
        g->full_logged = false;
    }
}

static void on_scale_timer(uv_timer_t *t)
{
    struct github_scaleset *g = t->data;
    if (!g->stopping)
        scale(g);
}

static void scale_soon(struct github_scaleset *g)
{
    if (!g->stopping && !g->closing)
        uv_timer_start(&g->scale_timer, on_scale_timer, 0, 0);
}

/* ------------------------------------------------------------ jobs */

static struct ssjob *job_find(struct github_scaleset *g, int64_t rid)
{
    al_list_for_each(j, &g->jobs, struct ssjob, link) {
        if (j->request_id == rid)
            return j;
    }
    return NULL;
}

static bool job_done_before(const struct github_scaleset *g, int64_t rid)
{
    for (size_t i = 0; i < g->n_done_ids; i++) {
        if (g->done_ids[i] == rid)
            return true;
    }
    return false;
}

static void job_remove(struct github_scaleset *g, int64_t rid)
{
    struct ssjob *j = job_find(g, rid);
    if (j) {
        al_list_del(&j->link);
        free(j->name);
        free(j);
    }
    if (!job_done_before(g, rid)) {
        if (g->n_done_ids == MAX_DONE_IDS) {
            memmove(g->done_ids, g->done_ids + 1, (MAX_DONE_IDS - 1) * sizeof(int64_t));
            g->n_done_ids--;
        }
        g->done_ids[g->n_done_ids++] = rid;
    }
}

struct acquire_ctx {
    unsigned n;
};

static void on_acquired(struct github_scaleset *g, int result, const struct al_http_response *resp,
                        const struct al_error *err, void *data)
{
    struct acquire_ctx *a = data;
    g->acquiring -= a->n;
    unsigned asked = a->n;
    free(a);
    if (result == -ECANCELED || g->stopping)
        return;
    if (result < 0 || resp->status != 200) {
        char what[300];
        describe(result, resp, err, what, sizeof(what));
        log_warn(NULL, "github %s: acquiring %u jobs: %s; they stay available", g->name, asked,
                 what);
        return;
    }
    int64_t *ids = NULL;
    size_t n = 0;
    struct al_error *perr = NULL;
    if (scaleset_parse_acquired(resp->body.data, resp->body.len, &ids, &n, &perr) < 0) {
        log_warn(NULL, "github %s: the acquirejobs answer: %s", g->name, al_error_message(perr));
        al_error_free(perr);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        if (job_find(g, ids[i]) || job_done_before(g, ids[i]))
            continue;
        struct ssjob *j = calloc(1, sizeof(*j));
        if (!j)
            break;
        j->request_id = ids[i];
        j->state = J_WAITING;
        al_list_add(&g->jobs, &j->link);
    }
    log_info(NULL, "github %s: acquired %zu of %u jobs", g->name, n, asked);
    free(ids);
    scale(g);
}

/* ------------------------------------------------------------ messages */

static void handle_message(struct github_scaleset *g, const struct scaleset_message *m)
{
    /* JobAvailable: acquire what the pool can run now, in message order */
    struct counts c = count(g);
    char why[300];
    unsigned room = free_vms(g, &c, why, sizeof(why)) + c.spare;
    unsigned can = room > c.waiting ? room - c.waiting : 0;
    struct al_buf body = {0};
    unsigned n = 0, offered = 0;
    al_buf_append(&body, "[", 1);
    for (size_t i = 0; i < m->n_jobs; i++) {
        const struct scaleset_job *j = &m->jobs[i];
        if (j->kind != SCALESET_JOB_AVAILABLE)
            continue;
        if (job_find(g, j->request_id) || job_done_before(g, j->request_id))
            continue;
        bool dup = false;
        for (size_t k = 0; k < i; k++)
            dup |= m->jobs[k].kind == SCALESET_JOB_AVAILABLE &&
                   m->jobs[k].request_id == j->request_id;
        if (dup)
            continue;
        offered++;
        if (n >= can)
            continue;
        al_buf_printf(&body, "%s%" PRId64, n ? "," : "", j->request_id);
        n++;
    }
    al_buf_append(&body, "]", 1);
    if (offered > n)
        log_info(NULL, "github %s: %u jobs available, room for %u now (%s); the rest stays "
                       "available",
                 g->name, offered, n, why);
    if (n) {
        struct acquire_ctx *a = calloc(1, sizeof(*a));
        char *b = strndup(body.data, body.len);
        if (a && b) {
            a->n = n;
            g->acquiring += n;
            ss_call(g, "POST", AUTH_MQ_SVC,
                    svc_path("runtime/runnerscalesets/%" PRId64 "/acquirejobs", g->scaleset_id), b,
                    on_acquired, a);
        } else {
            free(a);
            free(b);
        }
    }
    al_buf_free(&body);

    for (size_t i = 0; i < m->n_jobs; i++) {
        const struct scaleset_job *j = &m->jobs[i];
        struct ssrunner *r = runner_by_name(g, j->runner_name);
        if (j->kind == SCALESET_JOB_STARTED) {
            struct ssjob *x = job_find(g, j->request_id);
            if (x) {
                x->state = J_RUNNING;
                snprintf(x->runner, sizeof(x->runner), "%s", j->runner_name ? j->runner_name : "");
            } else if (r && !job_done_before(g, j->request_id)) {
                /* a job of ours not acquired by this process (a restart) */
                x = calloc(1, sizeof(*x));
                if (x) {
                    x->request_id = j->request_id;
                    x->state = J_RUNNING;
                    snprintf(x->runner, sizeof(x->runner), "%s", r->name);
                    al_list_add(&g->jobs, &x->link);
                }
            }
            if (r && (r->state == R_IDLE || r->state == R_CREATING)) {
                g->scale_backoff_ms = 0; /* runners work */
                r->state = R_BUSY;
                r->retire_reason = NULL;
                log_info(r->submitted ? r->engine_id : NULL,
                         "github %s: runner %s started job %s (request %" PRId64 ")%s%s", g->name,
                         r->name, j->display_name ? j->display_name : "unnamed", j->request_id,
                         j->repo ? " of " : "", j->repo ? j->repo : "");
            }
        } else if (j->kind == SCALESET_JOB_COMPLETED) {
            job_remove(g, j->request_id);
            if (r && r->state != R_ENDING && r->state != R_DEAD) {
                if (r->state != R_DONE)
                    log_info(r->submitted ? r->engine_id : NULL,
                             "github %s: runner %s finished job %s (%s)", g->name, r->name,
                             j->display_name ? j->display_name : "unnamed",
                             j->result ? j->result : "no result");
                r->state = R_DONE;
                r->done_ms = now_ms();
            } else if (!j->runner_name) {
                log_info(NULL, "github %s: job request %" PRId64 " ended without a runner (%s)",
                         g->name, j->request_id, j->result ? j->result : "no result");
            }
        }
    }
    scale(g);
}

static void on_message_deleted(struct github_scaleset *g, int result,
                               const struct al_http_response *resp, const struct al_error *err,
                               void *data)
{
    (void)data;
    g->acking = false;
    if (result == -ECANCELED || g->stopping) {
        scaleset_message_clear(&g->pending);
        return;
    }
    if (result < 0 || resp->status != 204) {
        char what[300];
        describe(result, resp, err, what, sizeof(what));
        log_warn(NULL, "github %s: deleting message %" PRId64 ": %s", g->name, g->last_message_id,
                 what);
    }
    /* acknowledged before anything is acquired (GitHub's listener does the
     * same): a message is never handled twice */
    handle_message(g, &g->pending);
    scaleset_message_clear(&g->pending);
    poll_now(g);
}

static void session_create(struct github_scaleset *g);

static void session_lost(struct github_scaleset *g, const char *why)
{
    log_warn(NULL, "github %s: the message session is gone (%s); creating a new one", g->name, why);
    if (g->session.mq_token)
        al_redact_remove(g->session.mq_token);
    scaleset_session_clear(&g->session);
    g->phase = PH_SESSION;
    g->next_session_ms = now_ms();
    session_create(g);
}

static void poll_failed(struct github_scaleset *g, const char *what)
{
    bool first = !g->poll_backoff_ms;
    backoff_grow(&g->poll_backoff_ms);
    g->next_poll_ms = now_ms() + al_jitter_ms(g->poll_backoff_ms);
    if (first)
        log_warn(NULL, "github %s: polling for messages: %s; polling again in %" PRIu64 " s",
                 g->name, what, g->poll_backoff_ms / 1000);
    else
        log_debug(NULL, "github %s: polling for messages: %s", g->name, what);
}

static void on_polled(struct github_scaleset *g, int result, const struct al_http_response *resp,
                      const struct al_error *err, void *data)
{
    (void)data;
    g->polling = false;
    if (result == -ECANCELED || g->stopping)
        return;
    g->polls++;
    if (result == -ENOENT || (result == 0 && resp->status == 404)) {
        session_lost(g, result == 0 ? "HTTP 404" : "its refresh failed");
        return;
    }
    if (result == 0 && resp->status == 401) {
        /* the refreshed token was refused too */
        session_lost(g, "HTTP 401 after a refresh");
        return;
    }
    if (result == 0 && resp->status == 202) {
        g->poll_backoff_ms = 0;
        scale(g); /* room may have come without a message */
        poll_now(g);
        return;
    }
    if (result < 0 || resp->status != 200) {
        char what[300];
        describe(result, resp, err, what, sizeof(what));
        poll_failed(g, what);
        return;
    }
    struct scaleset_message m = {0};
    struct al_error *perr = NULL;
    if (scaleset_parse_message(resp->body.data, resp->body.len, &m, &perr) < 0) {
        char what[300];
        snprintf(what, sizeof(what), "a message: %s", al_error_message(perr));
        al_error_free(perr);
        poll_failed(g, what);
        return;
    }
    g->poll_backoff_ms = 0;
    g->messages++;
    g->stats = m.stats;
    g->last_message_id = m.id;
    g->last_message_wall_ms = al_now_wall_ms();
    unsigned kinds[5] = {0};
    for (size_t i = 0; i < m.n_jobs; i++)
        kinds[m.jobs[i].kind]++;
    log_info(NULL,
             "github %s: message %" PRId64 ": %u available, %u assigned, %u started, %u "
             "completed; scale set: %" PRId64 " assigned, %" PRId64 " running, %" PRId64
             " runners (%" PRId64 " busy, %" PRId64 " idle)",
             g->name, m.id, kinds[SCALESET_JOB_AVAILABLE], kinds[SCALESET_JOB_ASSIGNED],
             kinds[SCALESET_JOB_STARTED], kinds[SCALESET_JOB_COMPLETED], m.stats.assigned,
             m.stats.running, m.stats.registered, m.stats.busy, m.stats.idle);
    char *target = NULL;
    if (asprintf(&target, "/%" PRId64, m.id) < 0)
        target = NULL;
    g->acking = true;
    scaleset_message_clear(&g->pending);
    g->pending = m;
    if (target)
        ss_call(g, "DELETE", AUTH_MQ, target, NULL, on_message_deleted, NULL);
    else
        on_message_deleted(g, -ENOMEM, NULL, NULL, NULL);
}

static void poll_now(struct github_scaleset *g)
{
    if (g->stopping || g->phase != PH_POLL || g->polling || g->acking)
        return;
    g->polling = true;
    ss_call(g, "GET", AUTH_MQ, NULL, NULL, on_polled, NULL);
}

/* ------------------------------------------------------------ the session */

static void on_session_refreshed(struct github_scaleset *g, int result,
                                 const struct al_http_response *resp, const struct al_error *err,
                                 void *data)
{
    (void)data;
    g->session_busy = false;
    if (result == -ECANCELED || g->stopping) {
        if (resp)
            wipe_body(resp);
        return;
    }
    struct scaleset_session s = {0};
    struct al_error *perr = NULL;
    if (result == 0 && resp->status == 200 &&
        scaleset_parse_session(resp->body.data, resp->body.len, &s, &perr) == 0) {
        wipe_body(resp);
        if (g->session.mq_token)
            al_redact_remove(g->session.mq_token);
        scaleset_session_clear(&g->session);
        g->session = s;
        al_redact_add(s.mq_token);
        g->stats = s.stats;
        log_info(NULL, "github %s: session %s refreshed", g->name, s.session_id);
        send_list(&g->wait_session);
        return;
    }
    char what[300];
    if (perr)
        snprintf(what, sizeof(what), "%s", al_error_message(perr));
    else
        describe(result, resp, err, what, sizeof(what));
    if (resp)
        wipe_body(resp);
    al_error_free(perr);
    log_warn(NULL, "github %s: refreshing the session: %s", g->name, what);
    /* the callers see ENOENT: the poll makes a new session */
    fail_list(&g->wait_session, ENOENT, what);
}

static void session_refresh(struct github_scaleset *g)
{
    if (g->session_busy || !g->session.session_id)
        return;
    g->session_busy = true;
    ss_call(g, "PATCH", AUTH_ADMIN,
            svc_path("runtime/runnerscalesets/%" PRId64 "/sessions/%s", g->scaleset_id,
                     g->session.session_id),
            NULL, on_session_refreshed, NULL);
}

static void on_session_created(struct github_scaleset *g, int result,
                               const struct al_http_response *resp, const struct al_error *err,
                               void *data)
{
    (void)data;
    g->session_busy = false;
    if (result == -ECANCELED || g->stopping) {
        if (resp)
            wipe_body(resp);
        return;
    }
    if (result == 0 && resp->status == 200) {
        struct scaleset_session s = {0};
        struct al_error *perr = NULL;
        int r = scaleset_parse_session(resp->body.data, resp->body.len, &s, &perr);
        wipe_body(resp);
        if (r == 0) {
            if (g->session.mq_token)
                al_redact_remove(g->session.mq_token);
            scaleset_session_clear(&g->session);
            g->session = s;
            al_redact_add(s.mq_token);
            g->stats = s.stats;
            g->session_backoff_ms = 0;
            g->conflicts = 0;
            g->last_message_id = 0;
            g->phase = PH_POLL;
            g->poll_backoff_ms = 0;
            log_info(NULL,
                     "github %s: session %s on scale set %s (id %" PRId64 "): %" PRId64
                     " jobs assigned, %" PRId64 " runners registered",
                     g->name, s.session_id, g->src->scale_set_name, g->scaleset_id, s.stats.assigned,
                     s.stats.registered);
            scale(g);
            poll_now(g);
            return;
        }
        char m[300];
        snprintf(m, sizeof(m), "the session: %s", al_error_message(perr));
        al_error_free(perr);
        backoff_grow(&g->session_backoff_ms);
        g->next_session_ms = now_ms() + al_jitter_ms(g->session_backoff_ms);
        log_warn(NULL, "github %s: %s", g->name, m);
        return;
    }
    char what[300];
    describe(result, resp, err, what, sizeof(what));
    backoff_grow(&g->session_backoff_ms);
    g->next_session_ms = now_ms() + al_jitter_ms(g->session_backoff_ms);
    if (result == 0 && (resp->status == 409 ||
                        is_error(resp, "RunnerScaleSetSessionConflictException"))) {
        g->conflicts++;
        log_warn(NULL,
                 "github %s: scale set %s already has an active session (another listener, or "
                 "one a killed agentlabd left until it expires): %s; trying again in %" PRIu64
                 " s (conflict %u)",
                 g->name, g->src->scale_set_name, what, g->session_backoff_ms / 1000,
                 g->conflicts);
        return;
    }
    if (result == 0 && (resp->status == 404 || is_error(resp, "RunnerScaleSetNotFoundException"))) {
        log_warn(NULL, "github %s: scale set %s is gone (%s); registering it again", g->name,
                 g->src->scale_set_name, what);
        g->scaleset_id = 0;
        g->lookup_done = false;
        g->phase = PH_SETUP;
        g->next_setup_ms = now_ms();
        return;
    }
    log_warn(NULL, "github %s: creating the session: %s; trying again in %" PRIu64 " s", g->name,
             what, g->session_backoff_ms / 1000);
}

static void session_create(struct github_scaleset *g)
{
    if (g->session_busy || g->stopping)
        return;
    yajl_gen gen = yajl_gen_alloc(NULL);
    char *body = NULL;
    if (gen) {
        int x = yajl_gen_map_open(gen);
        x |= yajl_gen_string(gen, (const unsigned char *)"sessionId", 9);
        x |= yajl_gen_string(gen, (const unsigned char *)ZERO_UUID, strlen(ZERO_UUID));
        x |= yajl_gen_string(gen, (const unsigned char *)"ownerName", 9);
        x |= yajl_gen_string(gen, (const unsigned char *)g->owner, strlen(g->owner));
        x |= yajl_gen_map_close(gen);
        const unsigned char *buf = NULL;
        size_t len = 0;
        if (x == yajl_gen_status_ok && yajl_gen_get_buf(gen, &buf, &len) == yajl_gen_status_ok)
            body = strndup((const char *)buf, len);
        yajl_gen_free(gen);
    }
    if (!body)
        return;
    g->session_busy = true;
    ss_call(g, "POST", AUTH_ADMIN,
            svc_path("runtime/runnerscalesets/%" PRId64 "/sessions", g->scaleset_id), body,
            on_session_created, NULL);
}

/* ------------------------------------------------------------ setup */

static void setup_step(struct github_scaleset *g);

static void setup_failed(struct github_scaleset *g, const char *what)
{
    g->setup_busy = false;
    backoff_grow(&g->setup_backoff_ms);
    g->next_setup_ms = now_ms() + al_jitter_ms(g->setup_backoff_ms);
    log_warn(NULL, "github %s: %s; trying again in %" PRIu64 " s", g->name, what,
             g->setup_backoff_ms / 1000);
}

static void on_group(struct github_scaleset *g, int result, const struct al_http_response *resp,
                     const struct al_error *err, void *data)
{
    (void)data;
    if (result == -ECANCELED || g->stopping)
        return;
    char what[400];
    int64_t id = 0;
    struct al_error *perr = NULL;
    if (result < 0 || resp->status != 200) {
        describe(result, resp, err, what, sizeof(what));
    } else if (scaleset_parse_lookup(resp->body.data, resp->body.len, &id, &perr) < 0) {
        snprintf(what, sizeof(what), "%s", al_error_message(perr));
        al_error_free(perr);
    } else if (!id) {
        snprintf(what, sizeof(what), "no runner group named %s", g->src->runner_group);
    }
    if (!id) {
        char m[500];
        snprintf(m, sizeof(m), "runner group %s: %s", g->src->runner_group, what);
        setup_failed(g, m);
        return;
    }
    g->group_id = id;
    g->setup_busy = false;
    setup_step(g);
}

static void on_scaleset(struct github_scaleset *g, int result, const struct al_http_response *resp,
                        const struct al_error *err, void *data)
{
    bool created = data != NULL;
    if (result == -ECANCELED || g->stopping)
        return;
    if (created)
        g->lookup_done = false; /* after a failed create, look again first */
    char what[400];
    int64_t id = 0;
    struct al_error *perr = NULL;
    if (result < 0 || resp->status != 200) {
        describe(result, resp, err, what, sizeof(what));
    } else if ((created ? scaleset_parse_scaleset(resp->body.data, resp->body.len, &id, &perr)
                        : scaleset_parse_lookup(resp->body.data, resp->body.len, &id, &perr)) < 0) {
        snprintf(what, sizeof(what), "%s", al_error_message(perr));
        al_error_free(perr);
        id = -1;
    }
    if (result < 0 || resp->status != 200 || id < 0) {
        char m[500];
        snprintf(m, sizeof(m), "%s scale set %s: %s", created ? "creating" : "looking up",
                 g->src->scale_set_name, what);
        setup_failed(g, m);
        return;
    }
    g->setup_busy = false;
    if (!id) {
        g->lookup_done = true;
        setup_step(g); /* not there: create it */
        return;
    }
    g->scaleset_id = id;
    g->setup_backoff_ms = 0;
    char ua[512];
    snprintf(ua, sizeof(ua),
             "User-Agent: {\"system\":\"agentlab\",\"version\":\"%s\",\"subsystem\":\"agentlabd\","
             "\"kind\":\"scaleset\",\"scale_set_id\":%" PRId64 "}",
             AL_VERSION, id);
    char *x = strdup(ua);
    if (x) {
        free(g->user_agent);
        g->user_agent = x;
    }
    log_info(NULL, "github %s: scale set %s (id %" PRId64 ") %s in runner group %s", g->name,
             g->src->scale_set_name, id, created ? "created" : "found", g->src->runner_group);
    g->phase = PH_SESSION;
    g->next_session_ms = now_ms();
    session_create(g);
}

static char *scaleset_body(const struct github_scaleset *g)
{
    yajl_gen gen = yajl_gen_alloc(NULL);
    if (!gen)
        return NULL;
    const char *name = g->src->scale_set_name;
    int x = yajl_gen_map_open(gen);
    x |= yajl_gen_string(gen, (const unsigned char *)"name", 4);
    x |= yajl_gen_string(gen, (const unsigned char *)name, strlen(name));
    x |= yajl_gen_string(gen, (const unsigned char *)"runnerGroupId", 13);
    x |= yajl_gen_integer(gen, g->group_id);
    x |= yajl_gen_string(gen, (const unsigned char *)"labels", 6);
    x |= yajl_gen_array_open(gen);
    /* the name first, then the extra labels without duplicates */
    for (int i = -1; g->src->labels && (i < 0 || g->src->labels[i]); i++) {
        const char *l = i < 0 ? name : g->src->labels[i];
        bool dup = i >= 0 && strcasecmp(l, name) == 0;
        for (int k = 0; k < i && !dup; k++)
            dup = strcasecmp(l, g->src->labels[k]) == 0;
        if (dup)
            continue;
        x |= yajl_gen_map_open(gen);
        x |= yajl_gen_string(gen, (const unsigned char *)"type", 4);
        x |= yajl_gen_string(gen, (const unsigned char *)"System", 6);
        x |= yajl_gen_string(gen, (const unsigned char *)"name", 4);
        x |= yajl_gen_string(gen, (const unsigned char *)l, strlen(l));
        x |= yajl_gen_map_close(gen);
    }
    if (!g->src->labels) {
        x |= yajl_gen_map_open(gen);
        x |= yajl_gen_string(gen, (const unsigned char *)"type", 4);
        x |= yajl_gen_string(gen, (const unsigned char *)"System", 6);
        x |= yajl_gen_string(gen, (const unsigned char *)"name", 4);
        x |= yajl_gen_string(gen, (const unsigned char *)name, strlen(name));
        x |= yajl_gen_map_close(gen);
    }
    x |= yajl_gen_array_close(gen);
    x |= yajl_gen_string(gen, (const unsigned char *)"RunnerSetting", 13);
    x |= yajl_gen_map_open(gen);
    x |= yajl_gen_string(gen, (const unsigned char *)"disableUpdate", 13);
    x |= yajl_gen_bool(gen, 1);
    x |= yajl_gen_map_close(gen);
    x |= yajl_gen_string(gen, (const unsigned char *)"createdOn", 9);
    x |= yajl_gen_string(gen, (const unsigned char *)"0001-01-01T00:00:00Z", 20);
    x |= yajl_gen_map_close(gen);
    const unsigned char *buf = NULL;
    size_t len = 0;
    char *s = NULL;
    if (x == yajl_gen_status_ok && yajl_gen_get_buf(gen, &buf, &len) == yajl_gen_status_ok)
        s = strndup((const char *)buf, len);
    yajl_gen_free(gen);
    return s;
}

/* group id, then the scale set by name, then created when absent */
static void setup_step(struct github_scaleset *g)
{
    if (g->setup_busy || g->stopping)
        return;
    g->setup_busy = true;
    if (!g->group_id) {
        if (strcasecmp(g->src->runner_group, "default") == 0) {
            g->group_id = 1;
        } else {
            _cleanup_free_ char *q = query_escape(g->src->runner_group);
            ss_call(g, "GET", AUTH_ADMIN,
                    q ? svc_path("runtime/runnergroups/?groupName=%s", q) : NULL, NULL, on_group,
                    NULL);
            return;
        }
    }
    if (!g->lookup_done) {
        /* first a lookup (an earlier run registered it), then a create */
        _cleanup_free_ char *q = query_escape(g->src->scale_set_name);
        ss_call(g, "GET", AUTH_ADMIN,
                q ? svc_path("runtime/runnerscalesets?name=%s&runnerGroupId=%" PRId64, q,
                             g->group_id)
                  : NULL,
                NULL, on_scaleset, NULL);
        return;
    }
    char *body = scaleset_body(g);
    ss_call(g, "POST", AUTH_ADMIN, body ? svc_path("runtime/runnerscalesets") : NULL, body,
            on_scaleset, g);
}

/* ------------------------------------------------------------ the tick */

static void runners_tick(struct github_scaleset *g)
{
    uint64_t now = now_ms();
    uint64_t idle_ms = (uint64_t)g->src->runner_idle_timeout_s * 1000u;
    struct counts c = count(g);
    unsigned need = c.waiting + (unsigned)g->src->min_runners;
    unsigned spare = c.spare;
    al_list_for_each(r, &g->runners, struct ssrunner, link) {
        switch (r->state) {
        case R_IDLE:
            if (!r->retire_reason && spare > need && now - r->created_ms > idle_ms) {
                spare--;
                runner_retire(r, "it took no job within runner_idle_timeout and is not needed");
            } else if (r->retire_reason && !r->deleting && !r->deleted && now >= r->next_delete_ms) {
                runner_delete(r);
            }
            break;
        case R_DONE:
            if (!r->vm_gone && now - r->done_ms > DONE_GRACE_MS)
                runner_stop_vm(r, "its job completed a minute ago but the VM is still up");
            break;
        case R_ENDING:
            if (!r->deleting && !r->deleted && now >= r->next_delete_ms)
                runner_delete(r);
            break;
        case R_CREATING:
        case R_BUSY:
        case R_DEAD:
            break;
        }
    }
    al_list_for_each_safe(r, tmp, &g->runners, struct ssrunner, link) {
        if (r->state == R_DEAD && !r->calls) {
            al_list_del(&r->link);
            free(r);
        }
    }
}

static void on_tick(uv_timer_t *t)
{
    struct github_scaleset *g = t->data;
    if (g->stopping)
        return;
    uint64_t now = now_ms();
    if (g->admin_refreshing && g->reg_token && g->next_register_ms &&
        now >= g->next_register_ms) {
        g->next_register_ms = 0;
        register_send(g);
    }
    if (!al_list_empty(&g->wait_admin) && !g->admin_refreshing && now >= g->next_admin_ms)
        admin_refresh(g);
    if (g->phase == PH_SETUP && !g->setup_busy && now >= g->next_setup_ms)
        setup_step(g);
    if (g->phase == PH_SESSION && !g->session_busy && now >= g->next_session_ms)
        session_create(g);
    if (g->phase == PH_POLL && now >= g->next_poll_ms)
        poll_now(g);
    runners_tick(g);
    scale(g);
}

/* ------------------------------------------------------------ engine */

static struct ssrunner *runner_by_engine_id(struct github_scaleset *g, const char *id)
{
    al_list_for_each(r, &g->runners, struct ssrunner, link) {
        if (r->submitted && streq(r->engine_id, id))
            return r;
    }
    return NULL;
}

static void on_finished(const char *job_id, enum job_state state, const struct attempt_result *last,
                        void *data)
{
    (void)last;
    struct github_scaleset *g = data;
    struct ssrunner *r = runner_by_engine_id(g, job_id);
    if (!r || r->vm_gone)
        return;
    r->vm_gone = true;
    log_info(job_id, "github %s: runner %s: its VM ended (%s)", g->name, r->name,
             job_state_to_string(state));
    if ((r->state == R_IDLE || r->state == R_CREATING) && state != JOB_STATE_SUCCEEDED &&
        !r->retire_reason && !r->stopping_vm && !g->stopping) {
        /* its VM failed before the runner took a job (a broken image, a
         * guest that does not boot): the replacement waits, longer each
         * time, so a broken image does not burn JIT configs in a loop */
        scale_fail(g, "runner %s's VM ended (%s) before it took a job", r->name,
                   job_state_to_string(state));
    } else if (r->state == R_IDLE && state == JOB_STATE_SUCCEEDED) {
        /* an ephemeral runner exits 0 after its job: the messages saying so
         * are likely on their way; a replacement made now would be surplus */
        uint64_t until = now_ms() + ENDED_GRACE_MS;
        if (g->scale_after_ms < until)
            g->scale_after_ms = until;
    }
    if (r->deleted) {
        runner_set_dead(r);
    } else {
        /* an ephemeral runner that ran its job is gone from the scale set
         * already (404); one that did not must go */
        r->state = R_ENDING;
        r->retire_reason = NULL;
        r->next_delete_ms = 0;
    }
    scale_soon(g);
}

static void on_event(const struct store_event *ev, void *data)
{
    struct github_scaleset *g = data;
    if (job_state_is_terminal(ev->to))
        scale_soon(g);
}

static const struct engine_observer observer = {
        .event = on_event,
        .finished = on_finished,
};

/* Queued jobs of a previous agentlabd: their JIT configs died with it
 * (no job of this process exists yet when the source starts). */
static void cancel_orphans(struct github_scaleset *g)
{
    char name[160];
    snprintf(name, sizeof(name), "github %s", g->name);
    orphans_cancel(g->e, JOB_SOURCE_GITHUB, name, NULL, NULL,
                   "its JIT runner config was lost with the previous agentlabd (its runner is "
                   "removed from the scale set at start)");
}

/* ------------------------------------------------------------ lifecycle */

static int check_config(const struct config_source *src, struct al_error **err)
{
    int scopes = !!*src->repo + !!*src->org + !!*src->enterprise;
    if (scopes != 1)
        return al_error_set(err, EINVAL, "mode = scaleset: set exactly one of repo, org and "
                                         "enterprise");
    if (*src->repo && !github_repo_is_valid(src->repo))
        return al_error_set(err, EINVAL, "repo \"%s\": expected OWNER/NAME", src->repo);
    if (*src->org && !github_login_is_valid(src->org))
        return al_error_set(err, EINVAL, "org \"%s\": expected an organisation login", src->org);
    if (*src->enterprise && !github_login_is_valid(src->enterprise))
        return al_error_set(err, EINVAL, "enterprise \"%s\": expected an enterprise slug",
                            src->enterprise);
    if (*src->enterprise && *src->app_id)
        return al_error_set(err, EINVAL, "enterprise scope needs token_file (a GitHub App cannot "
                                         "be installed on an enterprise)");
    const char *n = src->scale_set_name;
    if (!*n || strlen(n) > 100 || strpbrk(n, " \t\r\n'\"\\&#+%?/"))
        return al_error_set(err, EINVAL,
                            "scale_set_name \"%s\": expected a name of 1 to 100 characters "
                            "without spaces, quotes or &#+%%?/",
                            n);
    if (!*src->runner_group || strlen(src->runner_group) > 256)
        return al_error_set(err, EINVAL, "runner_group: expected a name");
    if (src->min_runners > src->max_runners)
        return al_error_set(err, EINVAL, "min_runners (%d) is above max_runners (%d)",
                            src->min_runners, src->max_runners);
    if (*src->webhook_listen)
        return al_error_set(err, EINVAL, "mode = scaleset takes no webhook_listen");
    for (const char *u = *src->url ? src->url : NULL; u; u = NULL) {
        if (strncmp(u, "https://", 8) != 0 && strncmp(u, "http://", 7) != 0)
            return al_error_set(err, EINVAL, "url \"%s\": expected https://HOST[/api/v3]", u);
    }
    const char *gu = src->github_url;
    if (*gu && strncmp(gu, "https://", 8) != 0 && strncmp(gu, "http://", 7) != 0)
        return al_error_set(err, EINVAL, "github_url \"%s\": expected https://HOST", gu);
    const char *d = src->runner_dir;
    if (d[0] != '/' || strpbrk(d, "'\\\n\r\t") || strlen(d) > 512)
        return al_error_set(err, EINVAL,
                            "runner_dir \"%s\": expected an absolute path without quotes", d);
    return 0;
}

/* The web URL runner-registration wants: https://github.com for the
 * public API, https://HOST for https://HOST/api/v3 (GHES), else github_url. */
static int web_url(const struct github_scaleset *g, char **ret, struct al_error **err)
{
    const struct config_source *src = g->src;
    _cleanup_free_ char *base = NULL;
    if (*src->github_url) {
        base = strdup(src->github_url);
    } else if (strcasecmp(g->api, GITHUB_DEFAULT_API) == 0) {
        base = strdup("https://github.com");
    } else {
        size_t n = strlen(g->api);
        if (n > 7 && strcasecmp(g->api + n - 7, "/api/v3") == 0)
            base = strndup(g->api, n - 7);
        else
            return al_error_set(err, EINVAL,
                                "github_url: needed when url (%s) is neither GitHub's API nor "
                                "https://HOST/api/v3",
                                g->api);
    }
    if (!base)
        return -ENOMEM;
    size_t n = strlen(base);
    while (n && base[n - 1] == '/')
        base[--n] = '\0';
    int r;
    if (*src->repo)
        r = asprintf(ret, "%s/%s", base, src->repo);
    else if (*src->org)
        r = asprintf(ret, "%s/%s", base, src->org);
    else
        r = asprintf(ret, "%s/enterprises/%s", base, src->enterprise);
    if (r < 0) {
        *ret = NULL;
        return -ENOMEM;
    }
    return 0;
}

static void free_all(struct github_scaleset *g)
{
    github_auth_free(g->auth);
    al_list_for_each_safe(r, next, &g->runners, struct ssrunner, link) {
        al_list_del(&r->link);
        free(r);
    }
    al_list_for_each_safe(j, next, &g->jobs, struct ssjob, link) {
        al_list_del(&j->link);
        free(j->name);
        free(j);
    }
    if (g->session.mq_token)
        al_redact_remove(g->session.mq_token);
    scaleset_session_clear(&g->session);
    scaleset_message_clear(&g->pending);
    if (g->admin_token) {
        al_redact_remove(g->admin_token);
        al_wipe_free(g->admin_token);
    }
    al_wipe_free(g->reg_token);
    free(g->svc);
    free(g->api);
    free(g->scope);
    free(g->config_url);
    free(g->prefix);
    free(g->state_path);
    free(g->owner);
    free(g->user_agent);
    free(g);
}

static int setup(struct github_scaleset *g, struct al_error **err)
{
    const struct config_source *src = g->src;
    const char *url = *src->url ? src->url : GITHUB_DEFAULT_API;
    size_t n = strlen(url);
    while (n && url[n - 1] == '/')
        n--;
    if (!(g->api = strndup(url, n)))
        return -ENOMEM;
    int r = *src->repo  ? asprintf(&g->scope, "/repos/%s", src->repo)
            : *src->org ? asprintf(&g->scope, "/orgs/%s", src->org)
                        : asprintf(&g->scope, "/enterprises/%s", src->enterprise);
    if (r < 0) {
        g->scope = NULL;
        return -ENOMEM;
    }
    if ((r = web_url(g, &g->config_url, err)) < 0)
        return r;
    char hex[AL_SHA256_HEX_SIZE];
    _cleanup_free_ char *seed = NULL;
    if (asprintf(&seed, "%s\n%s", g->cfg->agent.state_dir, src->name) < 0)
        return -ENOMEM;
    al_sha256_hex(seed, strlen(seed), hex);
    if (asprintf(&g->prefix, "agentlab-%.8s-", hex) < 0) {
        g->prefix = NULL;
        return -ENOMEM;
    }
    if (asprintf(&g->state_path, "%s/github-scaleset-%.8s.runners", g->cfg->agent.state_dir, hex) <
        0) {
        g->state_path = NULL;
        return -ENOMEM;
    }
    char host[256] = "";
    if (gethostname(host, sizeof(host) - 1) < 0 || !*host)
        snprintf(host, sizeof(host), "agentlab");
    if (asprintf(&g->owner, "%s-%.8s", host, hex) < 0) {
        g->owner = NULL;
        return -ENOMEM;
    }
    if (asprintf(&g->user_agent,
                 "User-Agent: {\"system\":\"agentlab\",\"version\":\"%s\",\"subsystem\":"
                 "\"agentlabd\",\"kind\":\"scaleset\",\"scale_set_id\":0}",
                 AL_VERSION) < 0) {
        g->user_agent = NULL;
        return -ENOMEM;
    }
    return 0;
}

int github_scaleset_start(uv_loop_t *loop, struct engine *e, struct al_curl *curl,
                          const struct config *cfg, const struct config_source *src,
                          struct github_scaleset **ret, struct al_error **err)
{
    if (!curl)
        return al_error_set(err, EINVAL, "no HTTP client");
    int r = check_config(src, err);
    if (r < 0)
        return r;
    struct github_scaleset *g = calloc(1, sizeof(*g));
    if (!g)
        return al_error_set(err, ENOMEM, "out of memory");
    g->loop = loop;
    al_list_init(&g->inflight);
    al_list_init(&g->wait_admin);
    al_list_init(&g->wait_session);
    al_list_init(&g->runners);
    al_list_init(&g->jobs);
    g->e = e;
    g->curl = curl;
    g->cfg = cfg;
    g->src = src;
    g->name = src->name;
    r = setup(g, err);
    if (r < 0) {
        free_all(g);
        return r == -ENOMEM ? al_error_set(err, ENOMEM, "out of memory") : r;
    }
    struct github_auth_params ap = {
            .curl = curl,
            .api_base = g->api,
            .token_file = src->token_file,
            .app_id = src->app_id,
            .app_key_file = src->app_key_file,
            .installation_id = src->installation_id,
            .repo = src->repo,
            .org = src->org,
            .on_refreshed = on_auth_refreshed,
            .data = g,
    };
    r = github_auth_new(&ap, &g->auth, err);
    if (r < 0) {
        free_all(g);
        return r;
    }
    uv_timer_init(loop, &g->tick_timer);
    uv_timer_init(loop, &g->scale_timer);
    g->tick_timer.data = g->scale_timer.data = g;
    g->handles_open = 2;
    g->watch = engine_observe(e, &observer, g);
    cancel_orphans(g);
    state_load(g);
    g->phase = PH_SETUP;
    uv_timer_start(&g->tick_timer, on_tick, 0, TICK_MS);
    log_info(NULL,
             "github %s: runner scale set %s for %s %s at %s with %s auth (registered as %s); "
             "max_runners %d, min_runners %d; runner names %s*",
             src->name, src->scale_set_name,
             *src->repo ? "repository" : *src->org ? "organisation" : "enterprise",
             *src->repo ? src->repo : *src->org ? src->org : src->enterprise, g->api,
             github_auth_is_app(g->auth) ? "GitHub App" : "token", g->config_url, src->max_runners,
             src->min_runners, g->prefix);
    *ret = g;
    return 0;
}

void github_scaleset_status(const struct github_scaleset *g, struct github_scaleset_status *ret)
{
    struct counts c = count(g);
    unsigned busy = 0;
    al_list_for_each(r, &g->runners, const struct ssrunner, link)
        busy += r->state == R_BUSY && !r->vm_gone;
    const char *state = g->stopping                           ? "stopping"
                        : g->phase == PH_SETUP                ? "registering the scale set"
                        : g->phase == PH_SESSION && g->conflicts ? "session conflict (409)"
                        : g->phase == PH_SESSION              ? "creating the session"
                        : g->poll_backoff_ms                  ? "polling, failing"
                                                              : "polling";
    *ret = (struct github_scaleset_status){
            .state = state,
            .last_message_wall_ms = g->last_message_wall_ms,
            .stats = g->stats,
            .runners_idle = c.spare,
            .runners_busy = busy,
            .jobs_waiting = c.waiting,
            .conflicts = g->conflicts,
            .messages = g->messages,
    };
}

static void on_handle_closed(uv_handle_t *h)
{
    struct github_scaleset *g = h->data;
    if (--g->handles_open > 0)
        return;
    void (*done)(void *) = g->done;
    void *data = g->done_data;
    free_all(g);
    if (done)
        done(data);
}

static void maybe_closed(struct github_scaleset *g)
{
    if (!g->stopping || g->in_stop || g->closing || !al_list_empty(&g->inflight))
        return;
    g->closing = true;
    if (g->watch)
        engine_unobserve(g->e, g->watch);
    g->watch = NULL;
    uv_timer_stop(&g->tick_timer);
    uv_timer_stop(&g->scale_timer);
    uv_close((uv_handle_t *)&g->tick_timer, on_handle_closed);
    uv_close((uv_handle_t *)&g->scale_timer, on_handle_closed);
}

static void on_session_deleted(struct github_scaleset *g, int result,
                               const struct al_http_response *resp, const struct al_error *err,
                               void *data)
{
    (void)data;
    char what[300];
    describe(result, resp, err, what, sizeof(what));
    if (result == 0 && resp->status == 204)
        log_info(NULL, "github %s: session deleted", g->name);
    else
        log_warn(NULL, "github %s: deleting the session: %s", g->name, what);
}

void github_scaleset_stop(struct github_scaleset *g, void (*done)(void *data), void *data)
{
    g->stopping = true;
    g->done = done;
    g->done_data = data;
    g->in_stop = true;
    uv_timer_stop(&g->tick_timer);
    /* calls in flight end now (their callbacks see stopping) */
    while (!al_list_empty(&g->inflight))
        al_http_cancel(al_list_first_entry(&g->inflight, struct sscall, link)->http);
    fail_list(&g->wait_admin, ECANCELED, "stopping");
    fail_list(&g->wait_session, ECANCELED, "stopping");
    if (g->session.session_id && admin_valid(g)) {
        /* the next listener (this farm restarted, or another) gets it at once */
        ss_call(g, "DELETE", AUTH_ADMIN,
                svc_path("runtime/runnerscalesets/%" PRId64 "/sessions/%s", g->scaleset_id,
                         g->session.session_id),
                NULL, on_session_deleted, NULL);
    }
    state_save(g);
    g->in_stop = false;
    maybe_closed(g);
}
