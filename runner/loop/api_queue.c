#include "runner/loop/api_queue.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runner/base/list.h"
#include "runner/base/log.h"
#include "runner/base/util.h"

#define MAX_HEADERS          12
#define BACKOFF_MIN_MS       5000u
#define BACKOFF_MAX_MS       (5u * 60 * 1000)
#define RATE_LIMIT_DEFAULT_S 60

struct qcall {
    struct api_queue *q;
    struct al_list link; /* on api_queue.queued while waiting */
    char method[8];
    char *path;
    char *body;
    size_t body_len;
    const char *etag; /* If-None-Match; owned by the caller's state */
    long timeout_ms;
    api_queue_cb cb;
    void *data;
    struct al_http_call *call;
    bool auth_retried;
    bool in_flight;
};

struct api_queue {
    struct api_queue_params p;
    char *base;
    char *name;
    struct al_list queued;   /* FIFO: taken from the front */
    struct qcall **inflight; /* max_inflight slots */
    unsigned n_inflight;
    uint64_t blocked_until_ms; /* monotonic: no call before */
    int64_t rate_remaining;    /* -1 = unknown */
    int64_t rate_reset_s;      /* wall clock */
    bool refreshing;
    bool no_auth; /* api_queue_drop_auth() */
    bool stopping;
    uint64_t auth_retry_ms;
    uint64_t auth_backoff_ms;
    uv_timer_t timer;
    void (*closed)(void *data);
    void *closed_data;
};

static void pump(struct api_queue *q);

static void call_free(struct qcall *c)
{
    free(c->path);
    al_wipe_free(c->body);
    free(c);
}

static void call_end(struct qcall *c, int result, const struct al_http_response *resp,
                     const struct al_error *err)
{
    c->cb(result, resp, err, c->data);
    call_free(c);
}

static void call_fail(struct qcall *c, int result, const char *why)
{
    struct al_error *err = NULL;
    al_error_set(&err, -result, "%s", why);
    call_end(c, result, NULL, err);
    al_error_free(err);
}

static void push(struct api_queue *q, struct qcall *c, bool front)
{
    if (front)
        al_list_add(&q->queued, &c->link);
    else
        al_list_add_tail(&q->queued, &c->link);
}

static struct qcall *pop(struct api_queue *q)
{
    if (al_list_empty(&q->queued))
        return NULL;
    struct qcall *c = al_list_first_entry(&q->queued, struct qcall, link);
    al_list_del(&c->link);
    return c;
}

static void inflight_set(struct api_queue *q, struct qcall *c, bool on)
{
    for (unsigned i = 0; i < q->p.max_inflight; i++) {
        if (on ? !q->inflight[i] : q->inflight[i] == c) {
            q->inflight[i] = on ? c : NULL;
            break;
        }
    }
    c->in_flight = on;
    if (on)
        q->n_inflight++;
    else
        q->n_inflight--;
}

static void fail_queued(struct api_queue *q, const char *why)
{
    struct qcall *c;
    while ((c = pop(q)))
        call_fail(c, -ECANCELED, why);
}

static void settled(struct api_queue *q)
{
    if (q->p.settled)
        q->p.settled(q->p.data);
}

/* Reads X-RateLimit-* of any answer. */
static void note_rate(struct api_queue *q, const struct al_http_response *resp)
{
    const char *rem = al_http_header(resp, "X-RateLimit-Remaining");
    const char *reset = al_http_header(resp, "X-RateLimit-Reset");
    int64_t v = 0;
    if (rem && al_parse_int64(rem, 0, INT64_MAX, &v) == 0)
        q->rate_remaining = v;
    if (reset && al_parse_int64(reset, 0, INT64_MAX, &v) == 0)
        q->rate_reset_s = v;
}

/* ms until the rate limit of a 403/429 answer lifts; 0 when the answer is
 * not about a rate limit (a 403 can be a missing permission). */
static uint64_t rate_limit_wait(struct api_queue *q, const struct al_http_response *resp,
                                const char **ret_why)
{
    const char *ra = al_http_header(resp, "Retry-After");
    int64_t secs = 0;
    if (ra && al_parse_int64(ra, 0, 86400, &secs) == 0) {
        *ret_why = "Retry-After";
        return (uint64_t)(secs > 0 ? secs : 1) * 1000u;
    }
    const char *rem = al_http_header(resp, "X-RateLimit-Remaining");
    if (rem && streq(rem, "0")) {
        int64_t wait = q->rate_reset_s - al_now_wall_ms() / 1000;
        *ret_why = "X-RateLimit-Reset";
        return (uint64_t)(wait > 0 ? wait + 1 : 1) * 1000u;
    }
    if (resp->status == 429) {
        *ret_why = "no Retry-After; waiting a minute";
        return RATE_LIMIT_DEFAULT_S * 1000u;
    }
    if (q->p.rate_limited && q->p.rate_limited(resp)) {
        *ret_why = "a secondary rate limit without Retry-After; waiting a minute";
        return RATE_LIMIT_DEFAULT_S * 1000u;
    }
    return 0;
}

static void block_calls(struct api_queue *q, uint64_t ms, long status, const char *why)
{
    uint64_t until = al_now_mono_ms() + ms;
    if (until <= q->blocked_until_ms)
        return;
    q->blocked_until_ms = until;
    log_warn(NULL, "%s: rate limited (HTTP %ld); no API calls for %" PRIu64 " s (%s)", q->name,
             status, (ms + 999) / 1000, why);
}

static void on_http_done(int result, const struct al_http_response *resp,
                         const struct al_error *err, void *data)
{
    struct qcall *c = data;
    struct api_queue *q = c->q;
    c->call = NULL;
    inflight_set(q, c, false);
    if (result == 0) {
        note_rate(q, resp);
        if (resp->status == 403 || resp->status == 429) {
            const char *why = "";
            uint64_t wait = rate_limit_wait(q, resp, &why);
            if (wait && !q->stopping) {
                block_calls(q, wait, resp->status, why);
                push(q, c, true); /* the same call, once the limit lifts */
                pump(q);
                return;
            }
        } else if (q->rate_remaining == 0 && q->rate_reset_s) {
            int64_t wait = q->rate_reset_s - al_now_wall_ms() / 1000;
            if (wait > 0)
                block_calls(q, (uint64_t)(wait + 1) * 1000u, resp->status,
                            "X-RateLimit-Remaining is 0");
        }
        if (resp->status == 401 && q->p.auth_ops->invalidate && !q->no_auth && !c->auth_retried &&
            !q->stopping && q->p.auth_ops->invalidate(q->p.auth)) {
            /* the credential was revoked or expired early */
            c->auth_retried = true;
            push(q, c, true);
            pump(q);
            return;
        }
    }
    call_end(c, result, resp, err);
    pump(q);
    settled(q);
}

static void start_call(struct api_queue *q, struct qcall *c, const char *auth)
{
    _cleanup_free_ char *url = NULL;
    _cleanup_free_ char *etag_h = NULL;
    if (asprintf(&url, "%s%s", q->base, c->path) < 0) {
        url = NULL;
        call_fail(c, -ENOMEM, "out of memory");
        return;
    }
    const char *headers[MAX_HEADERS + 4];
    size_t n = 0;
    for (const char *const *h = q->p.headers; h && *h && n < MAX_HEADERS; h++)
        headers[n++] = *h;
    headers[n++] = auth;
    if (c->body)
        headers[n++] = "Content-Type: application/json";
    if (c->etag && asprintf(&etag_h, "If-None-Match: %s", c->etag) >= 0)
        headers[n++] = etag_h;
    headers[n] = NULL;
    struct al_http_request req = {
            .method = c->method,
            .url = url,
            .headers = headers,
            .body = c->body,
            .body_len = c->body_len,
            .max_response = q->p.max_response,
            .timeout_ms = c->timeout_ms,
    };
    struct al_error *err = NULL;
    inflight_set(q, c, true);
    int r = al_http_start(q->p.curl, &req, on_http_done, c, &c->call, &err);
    if (r < 0) {
        inflight_set(q, c, false);
        call_end(c, r, NULL, err);
        al_error_free(err);
    }
}

static void on_timer(uv_timer_t *t)
{
    pump(t->data);
}

static void pump(struct api_queue *q)
{
    if (q->no_auth) {
        fail_queued(q, "no credentials");
        return;
    }
    while (!al_list_empty(&q->queued) && q->n_inflight < q->p.max_inflight) {
        uint64_t now = al_now_mono_ms();
        if (q->blocked_until_ms > now) {
            if (q->stopping) {
                fail_queued(q, "agentlabd is stopping"); /* no waiting out a rate limit */
                return;
            }
            uv_timer_start(&q->timer, on_timer, q->blocked_until_ms - now, 0);
            return;
        }
        const char *auth = q->p.auth_ops->header(q->p.auth);
        if (!auth) {
            if (q->stopping && !q->refreshing) {
                fail_queued(q, "agentlabd is stopping");
                return;
            }
            if (q->refreshing)
                return;
            if (q->auth_retry_ms > now) {
                uv_timer_start(&q->timer, on_timer, q->auth_retry_ms - now, 0);
                return;
            }
            q->refreshing = true;
            /* a failure may be reported (api_queue_auth_done) before this returns */
            (void)q->p.auth_ops->refresh(q->p.auth);
            return;
        }
        start_call(q, pop(q), auth);
    }
}

int api_queue_new(const struct api_queue_params *p, struct api_queue **ret, struct al_error **err)
{
    if (!p->max_inflight || !p->auth_ops || !p->auth_ops->header || !p->auth_ops->refresh)
        return al_error_set(err, EINVAL, "api_queue: incomplete parameters");
    struct api_queue *q = calloc(1, sizeof(*q));
    if (!q)
        return al_error_set(err, ENOMEM, "out of memory");
    al_list_init(&q->queued);
    q->p = *p;
    q->base = strdup(p->base);
    q->name = strdup(p->name ? p->name : "api");
    q->inflight = calloc(p->max_inflight, sizeof(*q->inflight));
    if (!q->base || !q->name || !q->inflight) {
        free(q->base);
        free(q->name);
        free(q->inflight);
        free(q);
        return al_error_set(err, ENOMEM, "out of memory");
    }
    q->p.base = q->base;
    q->p.name = q->name;
    q->rate_remaining = -1;
    uv_timer_init(p->loop, &q->timer);
    q->timer.data = q;
    *ret = q;
    return 0;
}

void api_queue_call(struct api_queue *q, const char *method, char *path, char *body,
                    const char *etag, api_queue_cb cb, void *data)
{
    struct qcall *c = calloc(1, sizeof(*c));
    if (!c || !path) {
        free(c);
        free(path);
        al_wipe_free(body);
        struct al_error *err = NULL;
        al_error_set(&err, ENOMEM, "out of memory");
        cb(-ENOMEM, NULL, err, data);
        al_error_free(err);
        return;
    }
    c->q = q;
    al_list_init(&c->link);
    snprintf(c->method, sizeof(c->method), "%s", method);
    c->path = path;
    c->body = body;
    c->body_len = body ? strlen(body) : 0;
    c->etag = etag;
    c->cb = cb;
    c->data = data;
    c->timeout_ms = q->stopping ? q->p.final_timeout_ms : q->p.timeout_ms;
    push(q, c, false);
    pump(q);
}

void api_queue_auth_done(struct api_queue *q, int result, const char *message)
{
    q->refreshing = false;
    if (result < 0) {
        q->auth_backoff_ms = q->auth_backoff_ms ? q->auth_backoff_ms * 2 : BACKOFF_MIN_MS;
        if (q->auth_backoff_ms > BACKOFF_MAX_MS)
            q->auth_backoff_ms = BACKOFF_MAX_MS;
        q->auth_retry_ms = al_now_mono_ms() + al_jitter_ms(q->auth_backoff_ms);
        log_error(NULL, "%s: %s; trying again in %" PRIu64 " s", q->name, message,
                  q->auth_backoff_ms / 1000);
        if (!q->stopping)
            uv_timer_start(&q->timer, on_timer, q->auth_retry_ms - al_now_mono_ms(), 0);
        else
            settled(q);
        return;
    }
    if (q->auth_backoff_ms)
        log_info(NULL, "%s: credentials ready", q->name);
    q->auth_backoff_ms = 0;
    pump(q);
}

void api_queue_rate(const struct api_queue *q, int64_t *ret_remaining, int64_t *ret_reset_s)
{
    *ret_remaining = q->rate_remaining;
    *ret_reset_s = q->rate_reset_s;
}

void api_queue_stop(struct api_queue *q)
{
    q->stopping = true;
    uv_timer_stop(&q->timer);
    fail_queued(q, "agentlabd is stopping");
    for (unsigned i = 0; i < q->p.max_inflight; i++) {
        if (q->inflight[i] && q->inflight[i]->call)
            al_http_cancel(q->inflight[i]->call);
    }
}

void api_queue_drop_auth(struct api_queue *q)
{
    q->no_auth = true;
    q->refreshing = false;
    fail_queued(q, "no credentials");
}

bool api_queue_refreshing(const struct api_queue *q)
{
    return q->refreshing;
}

bool api_queue_busy(const struct api_queue *q)
{
    return !al_list_empty(&q->queued) || q->n_inflight || q->refreshing;
}

static void on_timer_closed(uv_handle_t *h)
{
    struct api_queue *q = h->data;
    void (*closed)(void *) = q->closed;
    void *data = q->closed_data;
    free(q->base);
    free(q->name);
    free(q->inflight);
    free(q);
    if (closed)
        closed(data);
}

void api_queue_free(struct api_queue *q, void (*closed)(void *data), void *data)
{
    q->closed = closed;
    q->closed_data = data;
    uv_timer_stop(&q->timer);
    uv_close((uv_handle_t *)&q->timer, on_timer_closed);
}
