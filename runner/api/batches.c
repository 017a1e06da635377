#include "runner/api/batches.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/engine/batch.h"
#include "runner/api/artifact_dir.h"
#include "runner/api/json.h"
#include "runner/api/sync_reply.h"

#define MAX_LABELS_QUERY  1024
#define MAX_TAIL_LINES    100
#define TAIL_BYTES        (8u << 10)
#define MAX_ROW_ARTIFACTS 1000 /* paths listed in one results row */

/* ------------------------------------------------------------ shapes */

static int json_batch(yajl_gen g, struct api_ctx *ctx, const struct store_batch *b)
{
    const unsigned *s = b->by_state;
    unsigned queued = s[JOB_STATE_QUEUED];
    unsigned running = s[JOB_STATE_PROVISIONING] + s[JOB_STATE_BOOTING] + s[JOB_STATE_RUNNING];
    unsigned passed = s[JOB_STATE_SUCCEEDED];
    unsigned failed = s[JOB_STATE_FAILED] + s[JOB_STATE_TIMED_OUT];
    unsigned errors = s[JOB_STATE_ERROR] + s[JOB_STATE_CANCELED];
    unsigned done = passed + failed + errors;
    unsigned stored = done + queued + running;
    int rc = json_open_map(g);
    rc |= json_kv_str(g, "id", b->id);
    rc |= json_kv_str(g, "name", b->name);
    rc |= json_kv_time(g, "created", b->created_ms);
    rc |= json_kv_time(g, "canceled", b->canceled_ms);
    rc |= json_kv_time(g, "updated", b->last_update_ms);
    rc |= json_kv_uint(g, "max_parallel", b->max_parallel);
    rc |= json_kv_uint(g, "total", b->total);
    rc |= json_kv_uint(g, "stored", stored);
    rc |= json_kv_uint(g, "done", done);
    rc |= json_kv_uint(g, "passed", passed);
    rc |= json_kv_uint(g, "failed", failed);
    rc |= json_kv_uint(g, "errors", errors);
    rc |= json_kv_uint(g, "running", running);
    rc |= json_kv_uint(g, "queued", queued);
    rc |= json_kv_uint(g, "running_capped",
                       ctx->batches ? batches_running(ctx->batches, b->id) : 0);
    rc |= json_kv_bool(g, "finished", done == stored);
    rc |= json_key(g, "states");
    rc |= json_open_map(g);
    for (int i = 0; i < JOB_STATE_COUNT; i++)
        rc |= json_kv_uint(g, job_state_to_string((enum job_state)i), s[i]);
    rc |= json_close_map(g);
    rc |= json_kv_int(g, "now_ms", al_now_wall_ms());
    rc |= json_close_map(g);
    return rc;
}

/* Reads a batch from the store; answers 404 (or 500) and returns < 0 when it
 * cannot. The caller clears *ret. */
static int get_batch(struct api_ctx *ctx, struct api_req *r, const char *id,
                     struct store_batch *ret)
{
    _cleanup_error_ struct al_error *err = NULL;
    int rc = store_batch_get(ctx->store, id, ret, &err);
    if (rc == -ENOENT)
        api_reply_error(r, 404, "not_found", "no batch %s", id);
    else if (rc < 0)
        api_reply_error(r, 500, "internal", "%s", al_error_message(err));
    return rc;
}

static void reply_batch(struct api_ctx *ctx, struct api_req *r, int status, const char *id)
{
    struct store_batch b;
    if (get_batch(ctx, r, id, &b) < 0)
        return;
    _cleanup_json_gen_ yajl_gen g = json_gen_new();
    int rc = g ? json_batch(g, ctx, &b) : -ENOMEM;
    store_batch_clear(&b);
    json_reply_built(r, status, g, rc);
}

/* ------------------------------------------------------------ submit */

_Static_assert(STORE_BATCH_ID_SIZE <= API_SYNC_REPLY_ID_SIZE, "a batch id fits a sync reply");

static void reply_batch_submitted(struct api_ctx *ctx, struct api_req *r, const char *id,
                                  int result)
{
    if (result < 0)
        log_warn(NULL, "API: syncing the store before answering batch %s failed; it is committed",
                 id);
    reply_batch(ctx, r, 201, id);
}

/* "a,b,c" into a NULL-terminated vector (owned). */
static char **split_labels(const char *v)
{
    size_t n = 1;
    for (const char *c = v; *c; c++)
        n += *c == ',';
    char **out = calloc(n + 1, sizeof(char *));
    if (!out)
        return NULL;
    size_t i = 0;
    for (const char *c = v; *c;) {
        size_t len = strcspn(c, ",");
        if (len && !(out[i++] = strndup(c, len))) {
            strv_free(out);
            return NULL;
        }
        c += len;
        c += *c == ',';
    }
    return out;
}

void api_batch_submit(struct api_ctx *ctx, struct api_req *r, const struct route_match *m)
{
    (void)m;
    const struct http_request *hr = api_req_http(r);
    if (ctx->stopping || !ctx->batches) {
        api_reply_error(r, 503, "unavailable", "agentlabd is shutting down");
        return;
    }
    struct batch_options o = {.retries = -1};
    o.name = http_request_query(hr, "name");
    if (!o.name || !*o.name) {
        api_reply_error(r, 400, "invalid_batch", "name: a batch needs a name");
        return;
    }
    uint64_t v = 0;
    if (api_query_uint(r, "max_parallel", 100000, 0, &v) < 0)
        return;
    o.max_parallel = (unsigned)v;
    if (http_request_query(hr, "retries")) {
        if (api_query_uint(r, "retries", JOB_SPEC_MAX_MAX_ATTEMPTS - 1, 0, &v) < 0)
            return;
        o.retries = (int)v;
    }
    const char *pool = http_request_query(hr, "pool");
    o.pool = pool && *pool ? pool : NULL;
    _cleanup_strv_ char **labels = NULL;
    const char *lq = http_request_query(hr, "labels");
    if (lq && *lq) {
        if (strlen(lq) > MAX_LABELS_QUERY) {
            api_reply_error(r, 400, "invalid_batch", "labels: longer than %d bytes",
                            MAX_LABELS_QUERY);
            return;
        }
        labels = split_labels(lq);
        if (!labels) {
            api_reply_error(r, 500, "internal", "out of memory");
            return;
        }
        o.labels = labels;
    }
    struct batch_items items = {0};
    _cleanup_error_ struct al_error *err = NULL;
    const char *body = hr->body.data ? hr->body.data : "";
    int rc = batch_parse(body, hr->body.len, &o, &items, &err);
    if (rc == 0) {
        struct api_sync_reply *p = api_sync_reply_new(ctx, r, reply_batch_submitted);
        if (!p) {
            batch_items_clear(&items);
            api_reply_error(r, 500, "internal", "out of memory");
            return;
        }
        size_t n = items.n;
        rc = batches_submit(ctx->batches, &o, &items, p->id, &err);
        if (rc == 0) {
            log_info(NULL, "batch %s (%s): %zu jobs accepted, max_parallel %u", p->id, o.name, n,
                     o.max_parallel);
            api_sync_reply_start(p);
            return;
        }
        free(p);
    }
    if (rc == -E2BIG)
        api_reply_error(r, 413, "payload_too_large", "%s", al_error_message(err));
    else if (rc == -ROUTE_ENOPOOL)
        api_reply_error(r, 400, "no_pool", "%s", al_error_message(err));
    else if (rc == -EINVAL || rc == -ENOENT)
        api_reply_error(r, 400, "invalid_batch", "%s", al_error_message(err));
    else if (rc == -ESHUTDOWN)
        api_reply_error(r, 503, "unavailable", "%s", al_error_message(err));
    else
        api_reply_error(r, 500, "internal", "%s", al_error_message(err));
}

/* ------------------------------------------------------------ list, show, cancel */

struct batch_rows {
    struct api_ctx *ctx;
    const struct store_batch *v;
};

static int batch_row(yajl_gen g, size_t i, void *data)
{
    const struct batch_rows *b = data;
    return json_batch(g, b->ctx, &b->v[i]);
}

void api_batch_list(struct api_ctx *ctx, struct api_req *r, const struct route_match *m)
{
    (void)m;
    uint64_t limit = 0;
    if (api_query_uint(r, "limit", 1000, 50, &limit) < 0)
        return;
    struct store_batch *v = NULL;
    size_t n = 0;
    _cleanup_error_ struct al_error *err = NULL;
    if (store_batch_list(ctx->store, (unsigned)limit, &v, &n, &err) < 0) {
        api_reply_error(r, 500, "internal", "listing batches: %s", al_error_message(err));
        return;
    }
    struct batch_rows rows = {.ctx = ctx, .v = v};
    json_reply_list(
            r, 200,
            &(struct json_list){.key = "batches", .n = n, .item = batch_row, .data = &rows});
    store_batches_free(v, n);
}

void api_batch_show(struct api_ctx *ctx, struct api_req *r, const struct route_match *m)
{
    reply_batch(ctx, r, 200, m->batch_id);
}

void api_batch_cancel(struct api_ctx *ctx, struct api_req *r, const struct route_match *m)
{
    if (!ctx->batches) {
        api_reply_error(r, 503, "unavailable", "agentlabd is shutting down");
        return;
    }
    unsigned n = 0;
    _cleanup_error_ struct al_error *err = NULL;
    int rc = batches_cancel(ctx->batches, m->batch_id, &n, &err);
    if (rc == -ENOENT) {
        api_reply_error(r, 404, "not_found", "no batch %s", m->batch_id);
        return;
    }
    if (rc < 0) {
        api_reply_error(r, 500, "internal", "%s", al_error_message(err));
        return;
    }
    log_info(NULL, "batch %s: cancel requested through the API for %u jobs", m->batch_id, n);
    _cleanup_json_gen_ yajl_gen g = json_gen_new();
    rc = g ? 0 : -ENOMEM;
    if (g) {
        rc |= json_open_map(g);
        rc |= json_kv_str(g, "id", m->batch_id);
        rc |= json_kv_uint(g, "cancel_requested", n);
        rc |= json_close_map(g);
    }
    json_reply_built(r, 200, g, rc);
}

/* ------------------------------------------------------------ jobs (results) */

/* The last lines of the job's output.log, at most TAIL_BYTES. */
static int json_output_tail(yajl_gen g, struct api_ctx *ctx, const char *job_id, unsigned lines)
{
    _cleanup_free_ char *dir = engine_job_dir(ctx->engine, job_id);
    _cleanup_free_ char *path = dir ? al_path_join(dir, "output.log") : NULL;
    int fd = path && lines ? open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW) : -1;
    if (fd < 0)
        return json_str(g, "");
    char buf[TAIL_BYTES];
    struct stat st;
    off_t off = 0;
    if (fstat(fd, &st) == 0 && st.st_size > (off_t)sizeof(buf))
        off = st.st_size - (off_t)sizeof(buf);
    ssize_t n = pread(fd, buf, sizeof(buf), off);
    close(fd);
    if (n <= 0)
        return json_str(g, "");
    size_t len = (size_t)n;
    size_t end = len;
    if (end && buf[end - 1] == '\n')
        end--;
    size_t start = end;
    unsigned seen = 0;
    while (start > 0) {
        if (buf[start - 1] == '\n' && ++seen == lines)
            break;
        start--;
    }
    return json_strn(g, buf + start, len - start);
}

static int json_artifact_path(void *data, const char *path, const struct stat *st)
{
    (void)st;
    return json_str(data, path);
}

/* The paths of the job's artifacts, at most MAX_ROW_ARTIFACTS of them. */
static int json_artifact_paths(yajl_gen g, struct api_ctx *ctx, const char *job_id)
{
    int dfd = api_artifact_dir_open(ctx, job_id);
    if (dfd < 0)
        return 0;
    return api_artifact_dir_walk(dfd, MAX_ROW_ARTIFACTS, json_artifact_path, g, NULL);
}

struct batch_job_rows {
    struct api_ctx *ctx;
    const struct store_batch_job *v;
    size_t n;
    unsigned limit;
    unsigned tail; /* output lines per row */
};

static int batch_job_row(yajl_gen g, size_t i, void *data)
{
    const struct batch_job_rows *b = data;
    const struct store_batch_job *j = &b->v[i];
    int rc = json_open_map(g);
    rc |= json_kv_uint(g, "index", j->idx);
    rc |= json_kv_str(g, "id", j->job_id);
    rc |= json_kv_str(g, "name", j->name);
    rc |= json_key(g, "params");
    if (j->params)
        rc |= json_raw_value(g, j->params);
    else
        rc |= yajl_gen_null(g) == yajl_gen_status_ok ? 0 : -EINVAL;
    rc |= json_kv_str(g, "state", job_state_to_string(j->state));
    if (j->has_exit_code)
        rc |= json_kv_int(g, "exit_code", j->exit_code);
    else
        rc |= json_kv_null(g, "exit_code");
    rc |= json_kv_str(g, "reason", j->reason);
    rc |= json_kv_int(g, "attempts", j->attempts);
    rc |= json_kv_time(g, "created", j->created_ms);
    rc |= json_kv_time(g, "started", j->started_ms);
    rc |= json_kv_time(g, "ended", j->ended_ms);
    if (j->started_ms && j->ended_ms >= j->started_ms)
        rc |= json_kv_int(g, "duration_ms", j->ended_ms - j->started_ms);
    else
        rc |= json_kv_null(g, "duration_ms");
    rc |= json_key(g, "output_tail");
    rc |= json_output_tail(g, b->ctx, j->job_id, b->tail);
    rc |= json_key(g, "artifacts");
    rc |= json_open_array(g);
    rc |= json_artifact_paths(g, b->ctx, j->job_id);
    rc |= json_close_array(g);
    rc |= json_close_map(g);
    return rc;
}

/* the cursor: a full page may have more after it */
static int batch_jobs_next(yajl_gen g, void *data)
{
    const struct batch_job_rows *b = data;
    if (b->n == b->limit)
        return json_kv_uint(g, "next_after", b->v[b->n - 1].idx);
    return json_kv_null(g, "next_after");
}

void api_batch_jobs(struct api_ctx *ctx, struct api_req *r, const struct route_match *m)
{
    uint64_t after = 0, limit = 0, tail = 0;
    if (api_query_uint(r, "after", BATCH_MAX_JOBS, 0, &after) < 0 ||
        api_query_uint(r, "limit", 1000, 100, &limit) < 0 ||
        api_query_uint(r, "tail", MAX_TAIL_LINES, 5, &tail) < 0)
        return;
    struct store_batch b;
    if (get_batch(ctx, r, m->batch_id, &b) < 0)
        return;
    store_batch_clear(&b);
    struct store_batch_job *v = NULL;
    size_t n = 0;
    _cleanup_error_ struct al_error *err = NULL;
    if (store_batch_jobs(ctx->store, m->batch_id, (unsigned)after, (unsigned)limit, &v, &n, &err) <
        0) {
        api_reply_error(r, 500, "internal", "%s", al_error_message(err));
        return;
    }
    struct batch_job_rows rows = {
            .ctx = ctx, .v = v, .n = n, .limit = (unsigned)limit, .tail = (unsigned)tail};
    json_reply_list(r, 200,
                    &(struct json_list){.key = "jobs",
                                        .n = n,
                                        .item = batch_job_row,
                                        .tail = batch_jobs_next,
                                        .data = &rows});
    store_batch_jobs_free(v, n);
}

/* ------------------------------------------------------------ metrics */

#define METRICS_BATCHES   50
#define METRICS_RECENT_MS (3600 * 1000)

int api_batches_metrics(struct api_ctx *ctx, struct al_buf *out)
{
    struct store_batch *v = NULL;
    size_t n = 0;
    struct al_error *err = NULL;
    int r = store_batch_list(ctx->store, METRICS_BATCHES, &v, &n, &err);
    al_error_free(err);
    if (r < 0)
        return r;
    int64_t now = al_now_wall_ms();
    bool *shown = calloc(n ? n : 1, sizeof(bool));
    if (!shown) {
        store_batches_free(v, n);
        return -ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned live = v[i].by_state[JOB_STATE_QUEUED] + v[i].by_state[JOB_STATE_PROVISIONING] +
                        v[i].by_state[JOB_STATE_BOOTING] + v[i].by_state[JOB_STATE_RUNNING];
        shown[i] = live > 0 || now - v[i].last_update_ms < METRICS_RECENT_MS;
    }
    r = al_buf_puts(out, "# HELP agentlab_batch_jobs Jobs of a batch by state.\n"
                         "# TYPE agentlab_batch_jobs gauge\n");
    for (size_t i = 0; i < n; i++) {
        for (int st = 0; shown[i] && st < JOB_STATE_COUNT; st++)
            r |= al_buf_printf(
                    out, "agentlab_batch_jobs{batch=\"%s\",name=\"%s\",state=\"%s\"} %u\n", v[i].id,
                    v[i].name, job_state_to_string((enum job_state)st), v[i].by_state[st]);
    }
    r |= al_buf_puts(out, "# HELP agentlab_batch_jobs_submitted Jobs submitted in a batch.\n"
                          "# TYPE agentlab_batch_jobs_submitted gauge\n");
    for (size_t i = 0; i < n; i++) {
        if (shown[i])
            r |= al_buf_printf(out, "agentlab_batch_jobs_submitted{batch=\"%s\",name=\"%s\"} %u\n",
                               v[i].id, v[i].name, v[i].total);
    }
    r |= al_buf_puts(out, "# HELP agentlab_batch_throughput_jobs_per_second Ended jobs of a batch "
                          "per second since it was submitted.\n"
                          "# TYPE agentlab_batch_throughput_jobs_per_second gauge\n");
    for (size_t i = 0; i < n; i++) {
        if (!shown[i])
            continue;
        const unsigned *s = v[i].by_state;
        unsigned done = s[JOB_STATE_SUCCEEDED] + s[JOB_STATE_FAILED] + s[JOB_STATE_TIMED_OUT] +
                        s[JOB_STATE_CANCELED] + s[JOB_STATE_ERROR];
        unsigned live = s[JOB_STATE_QUEUED] + s[JOB_STATE_PROVISIONING] + s[JOB_STATE_BOOTING] +
                        s[JOB_STATE_RUNNING];
        int64_t end = live ? now : v[i].last_update_ms;
        double secs = (double)(end - v[i].created_ms) / 1000.0;
        r |= al_buf_printf(out,
                           "agentlab_batch_throughput_jobs_per_second{batch=\"%s\",name=\"%s\"} "
                           "%.3f\n",
                           v[i].id, v[i].name, secs > 0 ? (double)done / secs : 0.0);
    }
    free(shown);
    store_batches_free(v, n);
    return r < 0 ? -ENOMEM : 0;
}
