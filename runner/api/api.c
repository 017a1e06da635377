#include "runner/api/api.h"

#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/engine/batch.h"
#include "runner/api/batches.h"
#include "runner/api/info.h"
#include "runner/api/jobs.h"
#include "runner/api/json.h"
#include "runner/api/metrics.h"
#include "runner/api/router.h"
#include "runner/api/streams.h"

#define TOKEN_MIN_LEN    16
#define TOKEN_MAX_LEN    4096
#define SMALL_BODY_LIMIT (64u << 10)
#define UPLOAD_MAX_AGE_S 3600

struct api {
    struct api_ctx ctx;
    struct engine_watch *watch;
    char *token;
    size_t token_len;
    void (*stopped)(void *data);
    void *stopped_data;
};

static const api_endpoint_fn endpoints[ROUTE_COUNT] = {
        [ROUTE_STATUS_PAGE] = api_status_page,
        [ROUTE_HEALTHZ] = api_healthz,
        [ROUTE_METRICS] = api_metrics,
        [ROUTE_JOB_SUBMIT] = api_job_submit,
        [ROUTE_JOB_LIST] = api_job_list,
        [ROUTE_JOB_SHOW] = api_job_show,
        [ROUTE_JOB_CANCEL] = api_job_cancel,
        [ROUTE_JOB_EVENTS] = api_events,
        [ROUTE_JOB_LOGS] = api_logs,
        [ROUTE_JOB_ARTIFACTS] = api_job_artifacts,
        [ROUTE_JOB_ARTIFACT] = api_job_artifact,
        [ROUTE_EVENTS] = api_events,
        [ROUTE_IMAGES] = api_images,
        [ROUTE_POOLS] = api_pools,
        [ROUTE_HOSTS] = api_hosts,
        [ROUTE_VMS] = api_vms,
        [ROUTE_STATUS] = api_status,
        [ROUTE_GC] = api_gc,
        [ROUTE_UPLOAD] = api_upload_finish,
        [ROUTE_BATCH_SUBMIT] = api_batch_submit,
        [ROUTE_BATCH_LIST] = api_batch_list,
        [ROUTE_BATCH_SHOW] = api_batch_show,
        [ROUTE_BATCH_CANCEL] = api_batch_cancel,
        [ROUTE_BATCH_JOBS] = api_batch_jobs,
};

/* ------------------------------------------------------------ helpers */

int api_query_uint(struct api_req *r, const char *name, uint64_t max, uint64_t def, uint64_t *ret)
{
    const char *v = http_request_query(api_req_http(r), name);
    if (!v || !*v) {
        *ret = def;
        return 0;
    }
    uint64_t x = 0;
    if (al_parse_uint64(v, max, &x) < 0) {
        api_reply_error(r, 400, "bad_request", "%s: expected an integer from 0 to %llu", name,
                        (unsigned long long)max);
        return -EINVAL;
    }
    *ret = x;
    return 0;
}

int api_get_job(struct api_ctx *ctx, struct api_req *r, const char *id, struct store_job **ret)
{
    struct al_error *err = NULL;
    int rc = store_job_get(ctx->store, id, ret, &err);
    if (rc == -ENOENT)
        api_reply_error(r, 404, "not_found", "no job %s", id);
    else if (rc < 0)
        api_reply_error(r, 500, "internal", "reading job %s: %s", id, al_error_message(err));
    al_error_free(err);
    return rc;
}

/* "Authorization: Bearer <token>", the token compared in constant time. */
static bool authorized(struct api *a, const struct http_request *hr)
{
    const char *h = http_request_header(hr, "authorization");
    if (!h || !a->token)
        return false;
    while (*h == ' ' || *h == '\t')
        h++;
    if (strncasecmp(h, "Bearer", 6) != 0 || (h[6] != ' ' && h[6] != '\t'))
        return false;
    h += 7;
    while (*h == ' ' || *h == '\t')
        h++;
    size_t len = strlen(h);
    while (len && (h[len - 1] == ' ' || h[len - 1] == '\t'))
        len--;
    return al_consttime_equal(h, len, a->token, a->token_len);
}

/* ------------------------------------------------------------ dispatch */

static int on_headers(struct api_req *r, void *data, char *msg, size_t msg_size)
{
    struct api *a = data;
    const struct http_request *hr = api_req_http(r);
    struct route_match m;
    route_match(hr->method, hr->path, &m);
    if (api_req_is_tcp(r) && !route_is_public(m.id) && !authorized(a, hr)) {
        snprintf(msg, msg_size, "this listener needs \"Authorization: Bearer <token>\"");
        return 401;
    }
    switch (m.id) {
    case ROUTE_UPLOAD:
        return api_upload_begin(&a->ctx, r, msg, msg_size);
    case ROUTE_JOB_SUBMIT:
        api_req_set_body(r, JOB_SPEC_MAX_BYTES, NULL, NULL);
        return 0;
    case ROUTE_BATCH_SUBMIT:
        api_req_set_body(r, BATCH_MAX_BYTES, NULL, NULL);
        return 0;
    default:
        api_req_set_body(r, SMALL_BODY_LIMIT, NULL, NULL);
        return 0;
    }
}

static void on_request(struct api_req *r, void *data)
{
    struct api *a = data;
    const struct http_request *hr = api_req_http(r);
    struct route_match m;
    route_match(hr->method, hr->path, &m);
    switch (m.id) {
    case ROUTE_NOT_FOUND:
        api_reply_error(r, 404, "not_found", "no endpoint %.200s", hr->path);
        return;
    case ROUTE_BAD_PARAM:
        api_reply_error(r, 400, "bad_request", "%s", m.message);
        return;
    case ROUTE_METHOD_NOT_ALLOWED: {
        char allow[96];
        snprintf(allow, sizeof(allow), "Allow: %s\r\n", m.allow);
        char body[256];
        int n = snprintf(body, sizeof(body),
                         "{\"error\":{\"code\":\"method_not_allowed\",\"message\":\"%s is not "
                         "allowed here; allowed: %s\"}}\n",
                         http_method_str(hr->method), m.allow);
        api_reply(r, 405, "application/json", allow, body, (size_t)n);
        return;
    }
    default:
        break;
    }
    if (a->ctx.stopping) {
        api_reply_error(r, 503, "unavailable", "agentlabd is shutting down");
        return;
    }
    endpoints[m.id](&a->ctx, r, &m);
}

static const struct api_server_handler handler = {
        .headers = on_headers,
        .request = on_request,
};

/* ------------------------------------------------------------ engine */

static void on_event(const struct store_event *ev, void *data)
{
    struct api *a = data;
    api_metrics_on_event(a->ctx.metrics, ev);
    api_streams_on_event(a->ctx.streams, ev);
}

static void on_output(const char *job_id, enum vm_stream s, const char *buf, size_t len, void *data)
{
    (void)s;
    (void)buf;
    (void)len;
    struct api *a = data;
    api_streams_on_output(a->ctx.streams, job_id);
}

static void on_attempt_done(const char *job_id, int attempt, const struct attempt_result *r,
                            void *data)
{
    (void)job_id;
    (void)attempt;
    struct api *a = data;
    api_metrics_on_attempt_done(a->ctx.metrics, r);
}

static void on_finished(const char *job_id, enum job_state state, const struct attempt_result *last,
                        void *data)
{
    (void)last;
    struct api *a = data;
    api_metrics_on_finished(a->ctx.metrics, job_id, state);
    api_streams_on_finished(a->ctx.streams, job_id);
}

/* ------------------------------------------------------------ setup */

static int read_token(const char *path, char **ret, size_t *ret_len, struct al_error **err)
{
    if (!path || !*path)
        return al_error_set(err, EINVAL,
                            "api_listen is set but api_token_file is not: the TCP listener "
                            "needs a bearer token");
    char *data = NULL;
    size_t len = 0;
    int r = al_read_secret_file(path, "api_token_file", TOKEN_MAX_LEN, &data, &len, err);
    if (r < 0)
        return r;
    while (len && (data[len - 1] == '\n' || data[len - 1] == '\r' || data[len - 1] == ' '))
        data[--len] = '\0';
    bool ok = len >= TOKEN_MIN_LEN;
    for (size_t i = 0; i < len && ok; i++)
        ok = data[i] > 0x20 && data[i] < 0x7f;
    if (!ok) {
        explicit_bzero(data, len);
        free(data);
        return al_error_set(err, EINVAL,
                            "api_token_file %s: the token must be one line of at least %d "
                            "printable characters without spaces",
                            path, TOKEN_MIN_LEN);
    }
    *ret = data;
    *ret_len = len;
    return 0;
}

static int group_id(const char *name, gid_t *ret, struct al_error **err)
{
    if (!name || !*name) {
        *ret = (gid_t)-1;
        return 0;
    }
    struct group gr, *res = NULL;
    char buf[4096];
    int r = getgrnam_r(name, &gr, buf, sizeof(buf), &res);
    if (r != 0 || !res)
        return al_error_set(err, ENOENT, "api_socket_group: no group \"%s\"", name);
    *ret = gr.gr_gid;
    return 0;
}

static struct api *api_free(struct api *a)
{
    if (!a)
        return NULL;
    batches_free(a->ctx.batches);
    api_metrics_free(a->ctx.metrics);
    free(a->ctx.uploads_dir);
    for (size_t i = 0; i < a->ctx.n_source_failures; i++) {
        free(a->ctx.source_failures[i].name);
        free(a->ctx.source_failures[i].reason);
    }
    free(a->ctx.source_failures);
    for (size_t i = 0; i < a->ctx.n_reporters; i++) {
        free(a->ctx.reporters[i].name);
        free(a->ctx.reporters[i].kind);
    }
    free(a->ctx.reporters);
    if (a->token) {
        explicit_bzero(a->token, a->token_len);
        free(a->token);
    }
    free(a);
    return NULL;
}

int api_new(const struct api_params *p, struct api **ret, struct al_error **err)
{
    const struct config *cfg = p->cfg;
    struct api *a = calloc(1, sizeof(*a));
    if (!a)
        return al_error_set(err, ENOMEM, "api");
    struct api_ctx *ctx = &a->ctx;
    ctx->loop = p->loop;
    ctx->cfg = cfg;
    ctx->engine = p->engine;
    ctx->store = engine_store(p->engine);
    ctx->started_ms = al_now_wall_ms();
    ctx->max_upload = cfg->agent.api_max_upload;
    ctx->uploads_dir = al_path_join(cfg->agent.state_dir, "uploads");
    if (!ctx->uploads_dir) {
        api_free(a);
        return al_error_set(err, ENOMEM, "api");
    }

    struct api_server_params sp = {
            .loop = p->loop,
            .unix_path = p->unix_path ? p->unix_path : cfg->agent.api_socket,
            .unix_mode = 0660,
            .handler = &handler,
            .handler_data = a,
            .limits = {.max_connections = (unsigned)cfg->agent.api_max_connections,
                       .max_header_bytes = (size_t)cfg->agent.api_max_header_bytes,
                       .max_body = SMALL_BODY_LIMIT,
                       .header_timeout_ms = (uint64_t)cfg->agent.api_header_timeout_s * 1000,
                       .idle_timeout_ms = (uint64_t)cfg->agent.api_idle_timeout_s * 1000},
    };
    if (p->limits)
        sp.limits = *p->limits;
    char host[64];
    int r = 0;
    if (p->tcp_host) {
        sp.tcp_host = p->tcp_host;
        sp.tcp_port = p->tcp_port;
        if (p->token && !(a->token = strdup(p->token)))
            r = al_error_set(err, ENOMEM, "api");
        a->token_len = p->token ? strlen(p->token) : 0;
    } else if (!p->unix_path && cfg->agent.api_listen && *cfg->agent.api_listen) {
        r = al_parse_host_port(cfg->agent.api_listen, "api_listen", host, sizeof(host),
                               &sp.tcp_port, err);
        if (r == 0)
            r = read_token(cfg->agent.api_token_file, &a->token, &a->token_len, err);
        sp.tcp_host = host;
    }
    if (r == 0)
        r = group_id(cfg->agent.api_socket_group, &sp.unix_gid, err);
    if (r == 0)
        r = api_metrics_new(ctx->store, &ctx->metrics, err);
    if (r == 0 && !(ctx->streams = api_streams_new(ctx)))
        r = al_error_set(err, ENOMEM, "api");
    if (r == 0)
        r = batches_new(p->engine, ctx->store, &ctx->batches, err);
    if (r == 0)
        r = api_server_new(&sp, &ctx->server, err);
    if (r < 0) {
        if (ctx->streams)
            api_streams_stop(ctx->streams, NULL, NULL);
        api_free(a);
        return al_error_wrap(err, "control API");
    }
    static const struct engine_observer obs = {
            .event = on_event,
            .output = on_output,
            .attempt_done = on_attempt_done,
            .finished = on_finished,
    };
    a->watch = engine_observe(p->engine, &obs, a);
    if (!a->watch) {
        api_server_stop(ctx->server, NULL, NULL);
        api_streams_stop(ctx->streams, NULL, NULL);
        api_free(a);
        return al_error_set(err, ENOMEM, "control API");
    }
    api_uploads_sweep(ctx, UPLOAD_MAX_AGE_S);
    *ret = a;
    return 0;
}

int api_start(struct api *a, const struct engine_reconcile_report *r, struct al_error **err)
{
    if (r) {
        a->ctx.reconcile = *r;
        api_metrics_add_reconcile(a->ctx.metrics, r);
    }
    int rc = api_server_start(a->ctx.server, err);
    if (rc < 0)
        return al_error_wrap(err, "control API");
    if (api_server_tcp_port(a->ctx.server))
        log_info(NULL, "control API on %s and TCP port %d (bearer token required)",
                 a->ctx.cfg->agent.api_socket, api_server_tcp_port(a->ctx.server));
    else
        log_info(NULL, "control API on %s", a->ctx.cfg->agent.api_socket);
    return 0;
}

int api_source_failed(struct api *a, const char *name, const char *reason)
{
    struct api_ctx *ctx = &a->ctx;
    struct api_source_failure *f =
            reallocarray(ctx->source_failures, ctx->n_source_failures + 1, sizeof(*f));
    if (!f)
        return -ENOMEM;
    ctx->source_failures = f;
    _cleanup_free_ char *n = strdup(name);
    _cleanup_free_ char *why = al_redact(reason, strlen(reason), NULL);
    if (!n || !why)
        return -ENOMEM;
    f[ctx->n_source_failures++] =
            (struct api_source_failure){.name = TAKE_PTR(n), .reason = TAKE_PTR(why)};
    return 0;
}

int api_source_status(struct api *a, const char *name, const char *kind, api_source_status_fn fn,
                      void *data)
{
    struct api_ctx *ctx = &a->ctx;
    for (size_t i = 0; i < ctx->n_reporters; i++) {
        if (!streq(ctx->reporters[i].name, name))
            continue;
        if (fn) {
            ctx->reporters[i].fn = fn;
            ctx->reporters[i].data = data;
            return 0;
        }
        free(ctx->reporters[i].name);
        free(ctx->reporters[i].kind);
        ctx->reporters[i] = ctx->reporters[--ctx->n_reporters];
        return 0;
    }
    if (!fn)
        return 0;
    struct api_source_reporter *v = reallocarray(ctx->reporters, ctx->n_reporters + 1, sizeof(*v));
    if (!v)
        return -ENOMEM;
    ctx->reporters = v;
    _cleanup_free_ char *n = strdup(name), *k = strdup(kind);
    if (!n || !k)
        return -ENOMEM;
    v[ctx->n_reporters++] = (struct api_source_reporter){
            .name = TAKE_PTR(n), .kind = TAKE_PTR(k), .fn = fn, .data = data};
    return 0;
}

int api_tcp_port(const struct api *a)
{
    return api_server_tcp_port(a->ctx.server);
}

struct api_server *api_get_server(struct api *a)
{
    return a->ctx.server;
}

static void on_streams_stopped(void *data)
{
    struct api *a = data;
    void (*done)(void *) = a->stopped;
    void *done_data = a->stopped_data;
    api_free(a);
    if (done)
        done(done_data);
}

static void on_server_stopped(void *data)
{
    struct api *a = data;
    a->ctx.server = NULL;
    api_streams_stop(a->ctx.streams, on_streams_stopped, a);
}

void api_stop(struct api *a, void (*done)(void *data), void *data)
{
    if (a->ctx.stopping)
        return;
    a->ctx.stopping = true;
    a->stopped = done;
    a->stopped_data = data;
    engine_unobserve(a->ctx.engine, a->watch);
    a->watch = NULL;
    a->ctx.batches = batches_free(a->ctx.batches);
    api_gc_forget(&a->ctx);
    api_server_stop(a->ctx.server, on_server_stopped, a);
}
