#include "runner/sources/github_scaleset_priv.h"

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
#include "runner/sources/github_common.h"
#include "runner/sources/github_payload.h"
#include "runner/sources/orphans.h"

/* ------------------------------------------------------------ helpers */

void ss_describe(int result, const struct al_http_response *resp, const struct al_error *err,
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

/* Percent-encodes s for a query value. */
char *ss_query_escape(const char *s)
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

/* Sends again every call of a waiting list. */
void ss_send_list(struct al_list *list)
{
    struct al_list l;
    take_calls(list, &l);
    al_list_for_each_safe(c, tmp, &l, struct sscall, link) {
        al_list_del(&c->link);
        ss_call_send(c);
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
void ss_fail_list(struct al_list *list, int code, const char *why)
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

void ss_call_send(struct sscall *c)
{
    struct github_scaleset *g = c->g;
    bool to_svc = c->auth == AUTH_ADMIN || c->auth == AUTH_MQ_SVC;
    if (g->b.stopping && (to_svc ? !admin_valid_at_stop(g) : c->auth != AUTH_MQ)) {
        call_fail(c, ECANCELED, "stopping");
        return;
    }
    if (to_svc && !g->b.stopping && !admin_valid(g)) {
        push_call(&g->wait_admin, c);
        ss_admin_refresh(g);
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
    snprintf(capacity, sizeof(capacity), "X-ScaleSetMaxCapacity: %d", g->b.src->max_runners);
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
            .timeout_ms = g->b.stopping ? FINAL_TIMEOUT_MS : c->timeout_ms,
    };
    if (!c->body && (streq(c->method, "GET") || streq(c->method, "DELETE")))
        req.body = NULL;
    struct al_error *err = NULL;
    push_call(&g->inflight, c);
    r = al_http_start(g->b.curl, &req, on_http_done, c, &c->http, &err);
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
    if (result == 0 && resp->status == 401 && !c->retried && !g->b.stopping) {
        c->retried = true;
        if (c->auth == AUTH_ADMIN) {
            /* the admin token was refused before its exp: a new one */
            al_wipe_free(g->admin_token);
            g->admin_token = NULL;
            ss_call_send(c);
            return;
        }
        if (c->auth == AUTH_MQ || c->auth == AUTH_MQ_SVC) {
            log_info(NULL, "github %s: the message-queue token expired; refreshing the session",
                     g->b.name);
            push_call(&g->wait_session, c);
            ss_session_refresh(g);
            return;
        }
        if (c->auth == AUTH_REST && github_auth_is_app(g->auth))
            github_auth_invalidate(g->auth);
    }
    c->cb(g, result, resp, err, c->data);
    call_free(c);
    ss_maybe_closed(g);
}

/* Queues a call. target and body (may be NULL) are taken over; a NULL
 * target (out of memory) fails it. cb runs exactly once. */
void ss_call(struct github_scaleset *g, const char *method, enum auth_kind auth, char *target,
             char *body, ss_cb cb, void *data)
{
    struct sscall *c = calloc(1, sizeof(*c));
    if (!c || (!target && auth != AUTH_MQ)) {
        free(c);
        struct al_error *err = gh_call_oom(target, body);
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
            .content_type =
                    auth == AUTH_REST ? "application/vnd.github.v3+json" : "application/json",
            .timeout_ms = CALL_TIMEOUT_MS,
            .cb = cb,
            .data = data,
    };
    al_list_init(&c->link);
    if (auth == AUTH_MQ && !target) {
        c->capacity = true;
        c->timeout_ms = POLL_TIMEOUT_MS;
    }
    ss_call_send(c);
}

/* "/_apis/runtime/<path>?api-version=..." (path has no query). */
char *ss_svc_path(const char *fmt, ...)
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
