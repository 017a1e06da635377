#include "runner/sources/github_hook.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "runner/loop/http_server.h"
#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/base/hardlimits.h"
#include "runner/sources/github_auth.h"

#define HOOK_MAX_CONNECTIONS 32
#define HOOK_HEADER_BYTES    (16u << 10)
#define HOOK_HEADER_MS       10000u
#define HOOK_BODY_MS         30000u
#define HOOK_IDLE_MS         30000u

struct github_hook {
    char *name;
    char *secret;
    size_t secret_len;
    uint64_t max_body;
    struct api_server *srv;
    int port;
    void (*on_job)(const struct github_job *job, const char *delivery, void *data);
    void *data;
    /* the last GITHUB_HOOK_DEDUPE delivery ids, a ring */
    char (*seen)[65];
    size_t seen_next;
    size_t seen_n;
    struct github_hook_stats stats;
    void (*done)(void *data);
    void *done_data;
};

static bool seen_before(struct github_hook *h, const char *id)
{
    for (size_t i = 0; i < h->seen_n; i++) {
        if (streq(h->seen[i], id))
            return true;
    }
    return false;
}

static void remember(struct github_hook *h, const char *id)
{
    snprintf(h->seen[h->seen_next], sizeof(h->seen[0]), "%s", id);
    h->seen_next = (h->seen_next + 1) % GITHUB_HOOK_DEDUPE;
    if (h->seen_n < GITHUB_HOOK_DEDUPE)
        h->seen_n++;
}

static void reply_text(struct api_req *r, int status, const char *text)
{
    api_reply(r, status, "text/plain; charset=utf-8", NULL, text, strlen(text));
}

static bool is_json(const char *ct)
{
    static const char want[] = "application/json";
    if (!ct || strncasecmp(ct, want, sizeof(want) - 1) != 0)
        return false;
    char next = ct[sizeof(want) - 1];
    return next == '\0' || next == ';' || next == ' ';
}

static int on_headers(struct api_req *r, void *data, char *msg, size_t msg_size)
{
    struct github_hook *h = data;
    const struct http_request *hr = api_req_http(r);
    if (hr->method != HTTP_POST) {
        snprintf(msg, msg_size, "webhook deliveries are POST requests");
        return 405;
    }
    if (!is_json(http_request_header(hr, "content-type"))) {
        snprintf(msg, msg_size, "set the webhook's content type to application/json");
        return 415;
    }
    api_req_set_body(r, h->max_body, NULL, NULL);
    return 0;
}

/* The delivery id as it may appear in a log line. */
static const char *loggable_id(const char *id)
{
    return id && github_delivery_id_valid(id) ? id : "(none or malformed)";
}

static void on_request(struct api_req *r, void *data)
{
    struct github_hook *h = data;
    const struct http_request *hr = api_req_http(r);
    const char *delivery = http_request_header(hr, "x-github-delivery");
    const char *event = http_request_header(hr, "x-github-event");
    const char *sig = http_request_header(hr, "x-hub-signature-256");
    h->stats.deliveries++;
    if (!github_signature_valid(h->secret, h->secret_len, hr->body.data ? hr->body.data : "",
                                hr->body.len, sig)) {
        h->stats.bad_signature++;
        log_warn(NULL,
                 "github %s: webhook delivery %s (%zu bytes): %s; rejected with 401 (check "
                 "the webhook secret)",
                 h->name, loggable_id(delivery), hr->body.len,
                 sig ? "the X-Hub-Signature-256 signature does not match"
                     : "no X-Hub-Signature-256 signature");
        api_reply_error(r, 401, "bad_signature", "the signature does not match");
        return;
    }
    if (!delivery || !github_delivery_id_valid(delivery)) {
        h->stats.malformed++;
        api_reply_error(r, 400, "bad_request", "missing or malformed X-GitHub-Delivery");
        return;
    }
    if (seen_before(h, delivery)) {
        h->stats.duplicates++;
        log_info(NULL, "github %s: webhook delivery %s seen before; ignored", h->name, delivery);
        reply_text(r, 200, "duplicate delivery, ignored\n");
        return;
    }
    if (!event || strcmp(event, "workflow_job") != 0) {
        remember(h, delivery);
        if (event && streq(event, "ping")) {
            log_info(NULL, "github %s: webhook ping (delivery %s)", h->name, delivery);
            reply_text(r, 200, "pong\n");
        } else {
            reply_text(r, 200, "event ignored: only workflow_job is used\n");
        }
        return;
    }
    struct github_job *job = NULL;
    struct al_error *err = NULL;
    if (github_webhook_parse(hr->body.data ? hr->body.data : "", hr->body.len, &job, &err) < 0) {
        h->stats.malformed++;
        log_warn(NULL, "github %s: webhook delivery %s: unusable workflow_job payload: %s", h->name,
                 delivery, al_error_message(err));
        api_reply_error(r, 400, "bad_payload", "%s", al_error_message(err));
        al_error_free(err);
        return;
    }
    remember(h, delivery);
    h->stats.accepted++;
    if (h->on_job)
        h->on_job(job, delivery, h->data);
    github_job_free(job);
    reply_text(r, 202, "accepted\n");
}

static const struct api_server_handler handler = {
        .headers = on_headers,
        .request = on_request,
};

static void hook_free(struct github_hook *h)
{
    if (h->secret) {
        al_redact_remove(h->secret);
        explicit_bzero(h->secret, h->secret_len);
        free(h->secret);
    }
    free(h->seen);
    free(h->name);
    free(h);
}

int github_hook_new(const struct github_hook_params *p, struct github_hook **ret,
                    struct al_error **err)
{
    char host[64];
    int port = 0;
    int r = al_parse_host_port(p->listen, "webhook_listen", host, sizeof(host), &port, err);
    if (r < 0)
        return r;
    struct github_hook *h = calloc(1, sizeof(*h));
    if (!h)
        return al_error_set(err, ENOMEM, "out of memory");
    h->max_body = p->max_body;
    h->on_job = p->on_job;
    h->data = p->data;
    h->name = strdup(p->name);
    h->seen = calloc(GITHUB_HOOK_DEDUPE, sizeof(*h->seen));
    if (!h->name || !h->seen) {
        hook_free(h);
        return al_error_set(err, ENOMEM, "out of memory");
    }
    r = github_read_secret(p->secret_file, "webhook_secret", 8, &h->secret, err);
    if (r == 0) {
        h->secret_len = strlen(h->secret);
        if (al_redact_add(h->secret) < 0) {
            explicit_bzero(h->secret, h->secret_len);
            free(h->secret);
            h->secret = NULL;
            r = al_error_set(err, ENOMEM, "out of memory");
        }
    }
    if (r < 0) {
        hook_free(h);
        return r;
    }
    struct api_server_params sp = {
            .loop = p->loop,
            .tcp_host = host,
            .tcp_port = port,
            .limits =
                    {
                            .max_connections = HOOK_MAX_CONNECTIONS,
                            .max_header_bytes = HOOK_HEADER_BYTES,
                            .max_body = (size_t)p->max_body,
                            .header_timeout_ms = HOOK_HEADER_MS,
                            .body_timeout_ms = HOOK_BODY_MS,
                            .idle_timeout_ms = HOOK_IDLE_MS,
                    },
            .handler = &handler,
            .handler_data = h,
            .body_limit = AL_LIMIT_WEBHOOK_BODY,
    };
    r = api_server_new(&sp, &h->srv, err);
    if (r == 0 && (r = api_server_start(h->srv, err)) < 0) {
        /* the server frees itself once its handles are closed */
        api_server_stop(h->srv, NULL, NULL);
        h->srv = NULL;
    }
    if (r < 0) {
        hook_free(h);
        return al_error_wrap(err, "webhook_listen %s", p->listen);
    }
    h->port = api_server_tcp_port(h->srv);
    *ret = h;
    return 0;
}

int github_hook_port(const struct github_hook *h)
{
    return h->port;
}

void github_hook_stats(const struct github_hook *h, struct github_hook_stats *ret)
{
    *ret = h->stats;
}

static void on_server_stopped(void *data)
{
    struct github_hook *h = data;
    void (*done)(void *) = h->done;
    void *done_data = h->done_data;
    hook_free(h);
    if (done)
        done(done_data);
}

void github_hook_stop(struct github_hook *h, void (*done)(void *data), void *data)
{
    h->done = done;
    h->done_data = data;
    api_server_stop(h->srv, on_server_stopped, h);
}
