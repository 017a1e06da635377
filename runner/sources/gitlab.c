#include "runner/sources/gitlab.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <curl/curl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yajl/yajl_gen.h>

#include "runner/base/buf.h"
#include "runner/base/crc32.h"
#include "runner/base/log.h"
#include "runner/base/sha256.h"
#include "runner/base/util.h"
#include "runner/base/hardlimits.h"
#include "runner/loop/http_client.h"
#include "runner/loop/work.h"
#include "runner/sources/gitlab_artifacts.h"
#include "runner/sources/gitlab_checkout.h"
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
    FS_ARTIFACTS = 0,
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
    struct gljob *next;
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
    struct engine_watch *watch;
    uv_timer_t poll_timer;
    struct al_http_call *poll_call;
    uint64_t backoff_ms;
    bool waiting_room; /* the poll timer waits for capacity */
    bool at_cap;       /* `concurrent` jobs are active (counted once) */
    bool rejected_logged;
    struct gljob *jobs;
    int workers; /* directory removals in flight */
    bool stopping;
    bool closed;
    void (*done)(void *data);
    void *done_data;
};

static void poll_schedule(struct gitlab *g, uint64_t ms);
static void continue_finish(struct gljob *j);
static void trace_tick_arm(struct gljob *j, uint64_t ms);
static void maybe_stopped(struct gitlab *g);

/* ------------------------------------------------------------ helpers */

int gitlab_read_token(const char *path, char **ret_token, struct al_error **err)
{
    if (!path || !*path)
        return al_error_set(err, EINVAL, "no token_file configured");
    _cleanup_free_ char *data = NULL;
    size_t len = 0;
    int r = al_read_secret_file(path, "token_file", 4096, &data, &len, err);
    if (r < 0)
        return r;
    size_t s = 0;
    while (s < len && (data[s] == ' ' || data[s] == '\t' || data[s] == '\n' || data[s] == '\r'))
        s++;
    size_t e = len;
    while (e > s && (data[e - 1] == ' ' || data[e - 1] == '\t' || data[e - 1] == '\n' ||
                     data[e - 1] == '\r'))
        e--;
    int ret = 0;
    for (size_t i = s; i < e; i++) {
        if ((unsigned char)data[i] <= ' ' || data[i] == 0x7f)
            ret = al_error_set(err, EINVAL, "%s: the token must be one line without spaces", path);
    }
    if (ret == 0 && e - s < 8)
        ret = al_error_set(err, EINVAL, "%s: the token is too short", path);
    char *token = ret == 0 ? strndup(data + s, e - s) : NULL;
    explicit_bzero(data, len);
    if (ret < 0)
        return ret;
    if (!token)
        return al_error_set(err, ENOMEM, "out of memory");
    *ret_token = token;
    return 0;
}

static struct gljob *find_job(struct gitlab *g, const char *engine_id)
{
    for (struct gljob *j = g->jobs; j; j = j->next) {
        if (j->submitted && streq(j->engine_id, engine_id))
            return j;
    }
    return NULL;
}

/* Percent-encodes s for a query string. */
static char *url_escape(const char *s)
{
    struct al_buf b = AL_BUF_INIT;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        int r = (isalnum(*p) || *p == '-' || *p == '_' || *p == '.' || *p == '~')
                        ? al_buf_append(&b, p, 1)
                        : al_buf_printf(&b, "%%%02X", *p);
        if (r < 0) {
            al_buf_free(&b);
            return NULL;
        }
    }
    return al_buf_steal(&b);
}

static int gen_kv(yajl_gen g, const char *k, const char *v)
{
    if (yajl_gen_string(g, (const unsigned char *)k, strlen(k)) != yajl_gen_status_ok ||
        yajl_gen_string(g, (const unsigned char *)v, strlen(v)) != yajl_gen_status_ok)
        return -EINVAL;
    return 0;
}

static int gen_key(yajl_gen g, const char *k)
{
    return yajl_gen_string(g, (const unsigned char *)k, strlen(k)) == yajl_gen_status_ok ? 0
                                                                                         : -EINVAL;
}

/* The finished JSON document of g as a new string (wipe it after use:
 * bodies carry tokens). */
static char *gen_take(yajl_gen g, size_t *ret_len)
{
    const unsigned char *buf = NULL;
    size_t len = 0;
    if (yajl_gen_get_buf(g, &buf, &len) != yajl_gen_status_ok)
        return NULL;
    char *s = strndup((const char *)buf, len);
    yajl_gen_clear(g);
    if (s)
        *ret_len = len;
    return s;
}

DEFINE_CLEANUP_FUNC(struct yajl_gen_t, yajl_gen_free)

struct call_opts {
    const char *method;
    const char *path; /* after the base URL */
    const char *job_token;
    const char *content_type;
    const char *content_range;
    const char *body;
    size_t body_len;
    size_t max_response;
    long timeout_ms;
    int (*setup)(CURL *easy, void *data);
    void *setup_data;
};

static int api_call(struct gitlab *g, const struct call_opts *o, al_http_cb cb, void *data,
                    struct al_http_call **ret, struct al_error **err)
{
    _cleanup_free_ char *url = NULL;
    char *token_h = NULL, *type_h = NULL, *range_h = NULL;
    if (asprintf(&url, "%s%s", g->base, o->path) < 0)
        return al_error_set(err, ENOMEM, "out of memory");
    const char *headers[8];
    size_t n = 0;
    headers[n++] = "Accept: application/json";
    int r = 0;
    if (o->job_token && asprintf(&token_h, "JOB-TOKEN: %s", o->job_token) < 0)
        r = -ENOMEM, token_h = NULL;
    if (o->content_type && asprintf(&type_h, "Content-Type: %s", o->content_type) < 0)
        r = -ENOMEM, type_h = NULL;
    if (o->content_range && asprintf(&range_h, "Content-Range: %s", o->content_range) < 0)
        r = -ENOMEM, range_h = NULL;
    if (token_h)
        headers[n++] = token_h;
    if (type_h)
        headers[n++] = type_h;
    if (range_h)
        headers[n++] = range_h;
    headers[n] = NULL;
    if (r == 0) {
        struct al_http_request req = {
                .method = o->method,
                .url = url,
                .headers = headers,
                .body = o->body,
                .body_len = o->body_len,
                .max_response = o->max_response ? o->max_response : SMALL_RESPONSE,
                .timeout_ms = o->timeout_ms ? o->timeout_ms : CALL_TIMEOUT_MS,
                .setup = o->setup,
                .setup_data = o->setup_data,
        };
        r = al_http_start(g->curl, &req, cb, data, ret, err);
    } else {
        al_error_set(err, ENOMEM, "out of memory");
    }
    al_wipe_free(token_h);
    free(type_h);
    free(range_h);
    return r;
}

/* The Range header "0-N": N, the bytes the server holds. */
static bool parse_range(const struct al_http_response *resp, uint64_t *ret)
{
    const char *v = al_http_header(resp, "Range");
    if (!v || strncmp(v, "0-", 2) != 0)
        return false;
    return al_parse_uint64(v + 2, UINT64_MAX, ret) == 0;
}

/* First line of a response body, printable, for messages. */
static void body_excerpt(const struct al_http_response *resp, char *buf, size_t size)
{
    size_t o = 0;
    for (size_t i = 0; i < resp->body.len && o + 1 < size && i < 200; i++) {
        char c = resp->body.data[i];
        if (c == '\n' || c == '\r')
            break;
        buf[o++] = (unsigned char)c < 0x20 ? '?' : c;
    }
    buf[o] = '\0';
}

/* ------------------------------------------------------------ capacity */

static unsigned jobs_active(struct gitlab *g, unsigned *ret_checkouts)
{
    unsigned n = 0, c = 0;
    for (struct gljob *j = g->jobs; j; j = j->next) {
        if (j->phase != PHASE_FINISHING)
            n++;
        if (j->phase == PHASE_CHECKOUT)
            c++;
    }
    if (ret_checkouts)
        *ret_checkouts = c;
    return n;
}

/* True when this source may take another job now. */
static bool has_room(struct gitlab *g)
{
    unsigned checkouts = 0;
    struct engine_admit a = {.pool = g->src->pool,
                             .live = jobs_active(g, &checkouts),
                             .cap = (unsigned)g->src->concurrent,
                             .start_now = true};
    a.held = checkouts;
    enum engine_admit_verdict v = engine_admit(g->e, &a, NULL, 0);
    if (v == ENGINE_ADMIT_SOURCE_FULL && !g->at_cap)
        limits_hit(AL_LIMIT_SOURCE_JOBS);
    g->at_cap = v == ENGINE_ADMIT_SOURCE_FULL;
    return v == ENGINE_ADMIT_YES;
}

/* ------------------------------------------------------------ jobs */

static void on_job_closed(uv_handle_t *h)
{
    struct gljob *j = h->data;
    struct gitlab *g = j->g;
    if (j->token) {
        al_redact_remove(j->token);
        al_wipe_free(j->token);
    }
    for (size_t i = 0; j->payload && i < j->payload->n_dependencies; i++) {
        if (j->payload->dependencies[i].token)
            al_redact_remove(j->payload->dependencies[i].token);
    }
    if (j->dep_fd >= 0)
        close(j->dep_fd);
    free(j->deps_dir);
    strv_free(j->dep_zips);
    gitlab_job_free(j->payload);
    job_spec_free(j->spec);
    free(j->checkout_dir);
    al_buf_free(&j->trace);
    al_buf_free(&j->footer);
    free(j->zip_path);
    free(j);
    maybe_stopped(g);
}

static void job_free(struct gljob *j)
{
    struct gitlab *g = j->g;
    for (struct gljob **p = &g->jobs; *p; p = &(*p)->next) {
        if (*p == j) {
            *p = j->next;
            break;
        }
    }
    uv_timer_stop(&j->timer);
    uv_close((uv_handle_t *)&j->timer, on_job_closed);
}

struct rm_req {
    struct gitlab *g;
    char *path;
};

static int rm_req_work(void *data, struct al_error **err)
{
    struct rm_req *q = data;
    return al_rm_rf(q->path, err);
}

static void rm_req_done(void *data, int result, struct al_error *err)
{
    struct rm_req *q = data;
    struct gitlab *g = q->g;
    if (result < 0)
        log_warn(NULL, "gitlab %s: removing %s: %s", g->src->name, q->path, al_error_message(err));
    al_error_free(err);
    free(q->path);
    free(q);
    g->workers--;
    maybe_stopped(g);
}

/* rm -rf path on a worker (checkouts can be large). */
static void remove_async(struct gitlab *g, const char *path)
{
    struct rm_req *q = calloc(1, sizeof(*q));
    if (q)
        q->path = strdup(path);
    if (!q || !q->path) {
        if (q)
            free(q);
        return;
    }
    q->g = g;
    if (al_work_queue(g->loop, rm_req_work, rm_req_done, q, NULL) < 0) {
        free(q->path);
        free(q);
        return;
    }
    g->workers++;
}

static void trace_append(struct gljob *j, const char *data, size_t len)
{
    if (j->trace_truncated || !len)
        return;
    uint64_t limit = j->g->src->output_limit;
    size_t room = j->trace.len < limit ? (size_t)(limit - j->trace.len) : 0;
    if (len <= room) {
        if (al_buf_append(&j->trace, data, len) < 0)
            j->trace_truncated = true;
        return;
    }
    if (room)
        al_buf_append(&j->trace, data, room);
    j->trace_truncated = true;
    char marker[200];
    int n = snprintf(marker, sizeof(marker),
                     "\n[agentlab: the job log exceeded the output limit of %" PRIu64
                     " bytes; the rest is not sent to GitLab]\n",
                     limit);
    al_buf_append(&j->trace, marker, (size_t)n);
}

/* ---- cancellation ---- */

static void request_cancel(struct gljob *j, const char *why)
{
    if (j->cancel_requested || j->phase == PHASE_FINISHING)
        return;
    j->cancel_requested = true;
    if (j->submitted)
        log_info(j->engine_id, "gitlab %s: job %" PRId64 ": %s; cancelling", j->g->src->name, j->id,
                 why);
    else
        log_info(NULL, "gitlab %s: job %" PRId64 ": %s; cancelling", j->g->src->name, j->id, why);
    if (j->phase == PHASE_CHECKOUT && j->checkout) {
        gitlab_checkout_cancel(j->checkout);
    } else if (j->phase == PHASE_CHECKOUT && j->call) {
        al_http_cancel(j->call); /* a dependency's artifacts: fails the job */
    } else if (j->phase == PHASE_ENGINE) {
        struct al_error *err = NULL;
        /* may finish the job at once (observers run inside) */
        if (engine_cancel(j->g->e, j->engine_id, &err) < 0 && err && err->code != EALREADY)
            log_warn(j->engine_id, "gitlab: cancel: %s", al_error_message(err));
        al_error_free(err);
    }
}

/* Job-Status of any answer about the job. */
static void check_job_status(struct gljob *j, const struct al_http_response *resp)
{
    const char *s = al_http_header(resp, "Job-Status");
    if (s && (streq(s, "canceling") || streq(s, "canceled")))
        request_cancel(j, s[6] == 'i' ? "GitLab is cancelling it" : "GitLab cancelled it");
}

static void update_interval(struct gljob *j, const struct al_http_response *resp)
{
    const char *v = al_http_header(resp, "X-GitLab-Trace-Update-Interval");
    int n = 0;
    if (v && al_parse_int(v, 1, (int)TRACE_INTERVAL_MAX_S, &n) == 0)
        j->interval_s = (unsigned)n;
    else if (v && al_parse_int(v, 1, INT32_MAX, &n) == 0)
        j->interval_s = TRACE_INTERVAL_MAX_S;
}

/* ---- trace ---- */

static void on_trace_done(int result, const struct al_http_response *resp,
                          const struct al_error *err, void *data)
{
    struct gljob *j = data;
    j->call = NULL;
    if (result == 0) {
        j->last_contact_ms = al_now_mono_ms();
        update_interval(j, resp);
        uint64_t have = 0;
        if (resp->status == 202) {
            j->tries = 0;
            if (parse_range(resp, &have) && have <= j->trace.len)
                j->sent = (size_t)have;
        } else if (resp->status == 416) {
            /* the server holds a different amount: continue from there */
            j->tries++;
            if (parse_range(resp, &have) && have <= j->trace.len) {
                log_info(j->submitted ? j->engine_id : NULL,
                         "gitlab %s: job %" PRId64 ": trace resent from byte %" PRIu64,
                         j->g->src->name, j->id, have);
                j->sent = (size_t)have;
            }
        } else if (resp->status == 403 || resp->status == 404) {
            j->gone = true;
        } else {
            j->tries++;
        }
        check_job_status(j, resp);
        if (j->gone)
            request_cancel(j, "GitLab no longer accepts updates for it");
    } else if (result != -ECANCELED) {
        j->tries++;
        log_debug(j->submitted ? j->engine_id : NULL, "gitlab: trace update failed: %s",
                  al_error_message(err));
    }
    if (j->phase == PHASE_FINISHING) {
        if (j->tries > 0 && !j->shutdown)
            j->delay_ms = al_jitter_ms(BACKOFF_MIN_MS << (j->tries > 6 ? 6 : j->tries - 1));
        continue_finish(j);
    } else if (j->trace.len - j->sent >= TRACE_CHUNK && j->tries == 0) {
        trace_tick_arm(j, 0); /* a backlog: do not wait for the interval */
    } else {
        trace_tick_arm(j, (uint64_t)j->interval_s * 1000u);
    }
}

static int send_trace(struct gljob *j)
{
    size_t start = j->sent;
    size_t end = j->trace.len;
    if (end - start > TRACE_CHUNK)
        end = start + TRACE_CHUNK;
    char path[96], range[64];
    snprintf(path, sizeof(path), API "/jobs/%" PRId64 "/trace", j->id);
    snprintf(range, sizeof(range), "%zu-%zu", start, end - 1);
    struct call_opts o = {
            .method = "PATCH",
            .path = path,
            .job_token = j->token,
            .content_type = "text/plain",
            .content_range = range,
            .body = j->trace.data + start,
            .body_len = end - start,
            .timeout_ms = j->shutdown ? SHUTDOWN_TIMEOUT_MS : CALL_TIMEOUT_MS,
    };
    struct al_error *err = NULL;
    int r = api_call(j->g, &o, on_trace_done, j, &j->call, &err);
    if (r < 0) {
        log_warn(NULL, "gitlab %s: job %" PRId64 ": %s", j->g->src->name, j->id,
                 al_error_message(err));
        al_error_free(err);
    }
    return r;
}

/* The running-job keep-alive: PUT state=running, whose answer carries
 * Job-Status like every other. */
static int send_update(struct gljob *j, bool final);

static void on_tick(uv_timer_t *t)
{
    struct gljob *j = t->data;
    j->timer_armed = false;
    if (j->phase == PHASE_FINISHING) {
        continue_finish(j);
        return;
    }
    if (j->call || j->gone) {
        trace_tick_arm(j, (uint64_t)j->interval_s * 1000u);
        return;
    }
    int r = 0;
    uint64_t keepalive = (uint64_t)j->interval_s * 1000u;
    if (keepalive < KEEPALIVE_MS)
        keepalive = KEEPALIVE_MS;
    if (j->trace.len > j->sent)
        r = send_trace(j);
    else if (al_now_mono_ms() - j->last_contact_ms >= keepalive)
        r = send_update(j, false);
    if (!j->call || r < 0)
        trace_tick_arm(j, (uint64_t)j->interval_s * 1000u);
}

static void trace_tick_arm(struct gljob *j, uint64_t ms)
{
    uv_timer_start(&j->timer, on_tick, ms, 0);
    j->timer_armed = true;
}

/* ---- the job's state updates ---- */

static bool reason_supported(const struct gljob *j, const char *reason)
{
    if (!j->payload || !j->payload->failure_reasons)
        return true;
    for (size_t i = 0; i < j->payload->n_failure_reasons; i++) {
        if (streq(j->payload->failure_reasons[i], reason))
            return true;
    }
    return false;
}

static void on_update_done(int result, const struct al_http_response *resp,
                           const struct al_error *err, void *data);

static int send_update(struct gljob *j, bool final)
{
    _cleanup_(yajl_gen_freep) yajl_gen gen = yajl_gen_alloc(NULL);
    if (!gen)
        return -ENOMEM;
    int r = yajl_gen_map_open(gen) != yajl_gen_status_ok;
    r |= gen_kv(gen, "token", j->token);
    if (!final) {
        r |= gen_kv(gen, "state", "running");
    } else {
        r |= gen_kv(gen, "state", j->succeeded ? "success" : "failed");
        const char *reason = j->failure_reason;
        if (reason && !reason_supported(j, reason))
            reason = reason_supported(j, "runner_system_failure") ? "runner_system_failure" : NULL;
        if (!j->succeeded && reason)
            r |= gen_kv(gen, "failure_reason", reason);
        if (j->has_exit_code) {
            r |= gen_key(gen, "exit_code");
            r |= yajl_gen_integer(gen, j->exit_code) != yajl_gen_status_ok;
        }
        char crc[32];
        snprintf(crc, sizeof(crc), "crc32:%08" PRIx32,
                 al_crc32(0, j->trace.data ? j->trace.data : "", j->trace.len));
        r |= gen_key(gen, "output");
        r |= yajl_gen_map_open(gen) != yajl_gen_status_ok;
        r |= gen_kv(gen, "checksum", crc);
        r |= gen_key(gen, "bytesize");
        r |= yajl_gen_integer(gen, (long long)j->trace.len) != yajl_gen_status_ok;
        r |= yajl_gen_map_close(gen) != yajl_gen_status_ok;
    }
    r |= yajl_gen_map_close(gen) != yajl_gen_status_ok;
    size_t len = 0;
    char *body = r ? NULL : gen_take(gen, &len);
    if (!body)
        return -ENOMEM;
    char path[64];
    snprintf(path, sizeof(path), API "/jobs/%" PRId64, j->id);
    struct call_opts o = {
            .method = "PUT",
            .path = path,
            .content_type = "application/json",
            .body = body,
            .body_len = len,
            .timeout_ms = j->shutdown ? SHUTDOWN_TIMEOUT_MS : CALL_TIMEOUT_MS,
    };
    struct al_error *err = NULL;
    r = api_call(j->g, &o, on_update_done, j, &j->call, &err);
    al_wipe_free(body);
    if (r < 0) {
        log_warn(NULL, "gitlab %s: job %" PRId64 ": %s", j->g->src->name, j->id,
                 al_error_message(err));
        al_error_free(err);
    }
    return r;
}

static void on_update_done(int result, const struct al_http_response *resp,
                           const struct al_error *err, void *data)
{
    struct gljob *j = data;
    j->call = NULL;
    const char *id = j->submitted ? j->engine_id : NULL;
    if (j->phase != PHASE_FINISHING) {
        /* keep-alive */
        if (result == 0) {
            j->last_contact_ms = al_now_mono_ms();
            update_interval(j, resp);
            if (resp->status == 403 || resp->status == 404)
                j->gone = true;
            check_job_status(j, resp);
            if (j->gone)
                request_cancel(j, "GitLab no longer accepts updates for it");
        }
        if (j->phase != PHASE_FINISHING)
            trace_tick_arm(j, (uint64_t)j->interval_s * 1000u);
        else
            continue_finish(j);
        return;
    }
    if (result == 0 && (resp->status == 200 || resp->status == 201)) {
        log_info(id, "gitlab %s: job %" PRId64 " reported as %s%s%s", j->g->src->name, j->id,
                 j->succeeded ? "success" : "failed", j->failure_reason ? ": " : "",
                 j->failure_reason ? j->failure_reason : "");
        j->fstep = FS_DONE;
    } else if (result == 0 && resp->status == 202) {
        /* accepted, not yet complete (the trace is being verified): again */
        update_interval(j, resp);
        if (++j->tries > (j->shutdown ? 1 : ACCEPTED_TRIES)) {
            log_warn(id, "gitlab %s: job %" PRId64 ": the final update stayed 202 Accepted",
                     j->g->src->name, j->id);
            j->fstep = FS_DONE;
        }
        uint64_t ms = (uint64_t)j->interval_s * 1000u;
        j->delay_ms = ms > 10000u ? 10000u : ms;
    } else if (result == 0 && (resp->status == 403 || resp->status == 404)) {
        char ex[256];
        body_excerpt(resp, ex, sizeof(ex));
        log_info(id, "gitlab %s: job %" PRId64 " is no longer running on GitLab (%ld %s)",
                 j->g->src->name, j->id, resp->status, ex);
        j->fstep = FS_DONE;
    } else {
        char what[320];
        if (result == 0) {
            char ex[256];
            body_excerpt(resp, ex, sizeof(ex));
            snprintf(what, sizeof(what), "HTTP %ld %s", resp->status, ex);
        } else {
            snprintf(what, sizeof(what), "%s", al_error_message(err));
        }
        log_warn(id, "gitlab %s: job %" PRId64 ": final update failed: %s", j->g->src->name, j->id,
                 what);
        if (++j->tries >= (j->shutdown ? 1 : FINISH_TRIES))
            j->fstep = FS_DONE;
        else
            j->delay_ms = al_jitter_ms(BACKOFF_MIN_MS << (j->tries > 6 ? 6 : j->tries - 1));
    }
    continue_finish(j);
}

/* ---- artifacts ---- */

struct zip_req {
    struct gljob *j;
    char *dir;
    char *zip;
    uint64_t max;
    struct gitlab_zip_result res;
};

static int zip_work(void *data, struct al_error **err)
{
    struct zip_req *q = data;
    return gitlab_artifacts_zip(q->dir, gitlab_job_archive(q->j->payload), q->zip, q->max, &q->res,
                                err);
}

static void job_failed_by_runner(struct gljob *j, const char *fmt, ...) _printf_(2, 3);

static void zip_done(void *data, int result, struct al_error *err)
{
    struct zip_req *q = data;
    struct gljob *j = q->j;
    j->working = false;
    if (result < 0) {
        job_failed_by_runner(j, "ERROR: Packing the artifacts failed: %s", al_error_message(err));
        j->fstep = FS_FOOTER;
    } else if (q->res.files == 0) {
        al_buf_puts(&j->footer, "WARNING: No files to upload as artifacts\n");
        j->fstep = FS_FOOTER;
    } else {
        j->zip_path = TAKE_PTR(q->zip);
        j->fstep = FS_UPLOAD;
        j->tries = 0;
    }
    al_error_free(err);
    free(q->dir);
    free(q->zip);
    free(q);
    continue_finish(j);
}

static void job_failed_by_runner(struct gljob *j, const char *fmt, ...)
{
    char raw[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(raw, sizeof(raw), fmt, ap);
    va_end(ap);
    size_t len = 0;
    _cleanup_free_ char *red = al_redact(raw, strlen(raw), &len);
    if (red) {
        al_buf_append(&j->footer, red, len);
        al_buf_puts(&j->footer, "\n");
    }
    if (j->succeeded) {
        j->succeeded = false;
        j->failure_reason = "runner_system_failure";
        j->has_exit_code = false;
    }
}

static int upload_setup(CURL *easy, void *data)
{
    struct gljob *j = data;
    j->mime = curl_mime_init(easy);
    if (!j->mime)
        return -1;
    curl_mimepart *part = curl_mime_addpart(j->mime);
    if (!part || curl_mime_name(part, "file") != CURLE_OK ||
        curl_mime_filedata(part, j->zip_path) != CURLE_OK ||
        curl_mime_filename(part, "artifacts.zip") != CURLE_OK ||
        curl_mime_type(part, "application/zip") != CURLE_OK ||
        curl_easy_setopt(easy, CURLOPT_MIMEPOST, j->mime) != CURLE_OK)
        return -1;
    return 0;
}

static void upload_cleanup(struct gljob *j)
{
    if (j->mime) {
        curl_mime_free(j->mime);
        j->mime = NULL;
    }
}

static void on_upload_done(int result, const struct al_http_response *resp,
                           const struct al_error *err, void *data)
{
    struct gljob *j = data;
    j->call = NULL;
    upload_cleanup(j);
    const char *id = j->submitted ? j->engine_id : NULL;
    if (result == 0) {
        j->last_contact_ms = al_now_mono_ms();
        check_job_status(j, resp);
    }
    if (result == 0 && resp->status == 201) {
        log_info(id, "gitlab %s: job %" PRId64 ": artifacts uploaded", j->g->src->name, j->id);
        j->fstep = FS_FOOTER;
    } else if (result == 0 && resp->status < 500 && resp->status != 429) {
        char ex[256];
        body_excerpt(resp, ex, sizeof(ex));
        job_failed_by_runner(j, "ERROR: Uploading artifacts failed: %ld %s %s", resp->status,
                             resp->reason ? resp->reason : "", ex);
        j->fstep = FS_FOOTER;
    } else if (++j->tries < (j->shutdown ? 1 : 3)) {
        j->delay_ms = al_jitter_ms(BACKOFF_MIN_MS << j->tries);
    } else {
        if (result == 0)
            job_failed_by_runner(j, "ERROR: Uploading artifacts failed: HTTP %ld", resp->status);
        else
            job_failed_by_runner(j, "ERROR: Uploading artifacts failed: %s", al_error_message(err));
        j->fstep = FS_FOOTER;
    }
    if (j->fstep == FS_FOOTER && j->zip_path) {
        unlink(j->zip_path);
        free(j->zip_path);
        j->zip_path = NULL;
    }
    continue_finish(j);
}

static int send_upload(struct gljob *j)
{
    const struct gitlab_artifact *a = gitlab_job_archive(j->payload);
    _cleanup_free_ char *expire = a && a->expire_in ? url_escape(a->expire_in) : NULL;
    char path[512];
    snprintf(path, sizeof(path),
             API "/jobs/%" PRId64 "/artifacts?artifact_format=zip&artifact_type=archive%s%s", j->id,
             expire ? "&expire_in=" : "", expire ? expire : "");
    struct call_opts o = {
            .method = "POST",
            .path = path,
            .job_token = j->token,
            .timeout_ms = j->shutdown ? SHUTDOWN_TIMEOUT_MS : UPLOAD_TIMEOUT_MS,
            .setup = upload_setup,
            .setup_data = j,
    };
    struct al_error *err = NULL;
    int r = api_call(j->g, &o, on_upload_done, j, &j->call, &err);
    if (r < 0) {
        upload_cleanup(j);
        job_failed_by_runner(j, "ERROR: Uploading artifacts failed: %s", al_error_message(err));
        al_error_free(err);
    }
    return r;
}

/* ---- finishing ---- */

static void on_synced(int result, void *data)
{
    struct gljob *j = data;
    (void)result; /* committed either way: only power loss could take it */
    j->working = false;
    continue_finish(j);
}

static void retry_later(struct gljob *j, uint64_t ms)
{
    uv_timer_start(&j->timer, on_tick, ms, 0);
    j->timer_armed = true;
}

static void continue_finish(struct gljob *j)
{
    struct gitlab *g = j->g;
    if (j->freed || j->call || j->working || j->timer_armed)
        return;
    if (j->delay_ms) {
        retry_later(j, j->delay_ms);
        j->delay_ms = 0;
        return;
    }
    for (;;) {
        switch (j->fstep) {
        case FS_ARTIFACTS: {
            const struct gitlab_artifact *a = j->payload ? gitlab_job_archive(j->payload) : NULL;
            j->fstep = FS_FOOTER;
            if (!a || !j->submitted || j->gone || !gitlab_when_applies(a->when, j->succeeded))
                continue;
            _cleanup_free_ char *job_dir = engine_job_dir(g->e, j->engine_id);
            struct zip_req *q = calloc(1, sizeof(*q));
            if (!q || !job_dir || !(q->dir = al_path_join(job_dir, "artifacts")) ||
                !(q->zip = al_path_join(job_dir, "gitlab-artifacts.zip"))) {
                if (q) {
                    free(q->dir);
                    free(q);
                }
                job_failed_by_runner(j, "ERROR: Packing the artifacts failed: out of memory");
                continue;
            }
            q->j = j;
            q->max = g->cfg->agent.max_artifact_bytes;
            if (al_work_queue(g->loop, zip_work, zip_done, q, NULL) < 0) {
                free(q->dir);
                free(q->zip);
                free(q);
                job_failed_by_runner(j, "ERROR: Packing the artifacts failed");
                continue;
            }
            j->fstep = FS_ARTIFACTS;
            j->working = true;
            return;
        }
        case FS_UPLOAD:
            if (j->gone) {
                j->fstep = FS_FOOTER;
                continue;
            }
            if (send_upload(j) == 0)
                return;
            j->fstep = FS_FOOTER;
            continue;
        case FS_FOOTER:
            if (j->footer.len) {
                if (j->trace.len && j->trace.data[j->trace.len - 1] != '\n')
                    al_buf_puts(&j->trace, "\n");
                al_buf_append(&j->trace, j->footer.data, j->footer.len);
                al_buf_reset(&j->footer);
            }
            j->fstep = FS_SYNC;
            j->tries = 0;
            continue;
        case FS_SYNC:
            j->fstep = FS_TRACE;
            if (!j->submitted)
                continue;
            j->working = true;
            engine_sync(g->e, on_synced, j);
            return;
        case FS_TRACE:
            if (j->gone || j->sent >= j->trace.len ||
                j->tries >= (j->shutdown ? 1 : FINISH_TRIES)) {
                if (!j->gone && j->sent < j->trace.len)
                    log_warn(j->submitted ? j->engine_id : NULL,
                             "gitlab %s: job %" PRId64 ": %zu bytes of the log not delivered",
                             g->src->name, j->id, j->trace.len - j->sent);
                j->fstep = j->gone ? FS_DONE : FS_UPDATE;
                j->tries = 0;
                continue;
            }
            if (send_trace(j) == 0)
                return;
            j->tries++;
            continue;
        case FS_UPDATE:
            if (send_update(j, true) == 0)
                return;
            if (++j->tries >= (j->shutdown ? 1 : FINISH_TRIES))
                j->fstep = FS_DONE;
            continue;
        case FS_DONE:
            if (j->zip_path) {
                unlink(j->zip_path);
                free(j->zip_path);
                j->zip_path = NULL;
            }
            j->freed = true;
            job_free(j);
            if (!g->stopping && !g->backoff_ms)
                poll_schedule(g, 0);
            return;
        }
    }
}

/* Enters the finishing phase with the outcome set. */
static void start_finishing(struct gljob *j, enum finish_step from)
{
    j->phase = PHASE_FINISHING;
    j->fstep = from;
    j->tries = 0;
    uv_timer_stop(&j->timer);
    j->timer_armed = false;
    continue_finish(j);
}

/* The job could not be started: report it failed with why. */
static void fail_early(struct gljob *j, const char *fmt, ...) _printf_(2, 3);
static void fail_early(struct gljob *j, const char *fmt, ...)
{
    char raw[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(raw, sizeof(raw), fmt, ap);
    va_end(ap);
    log_warn(NULL, "gitlab %s: job %" PRId64 ": %s", j->g->src->name, j->id, raw);
    j->succeeded = false;
    bool canceled = j->cancel_requested && !j->shutdown;
    j->failure_reason = canceled ? "job_canceled" : "runner_system_failure";
    size_t len = 0;
    _cleanup_free_ char *red = al_redact(raw, strlen(raw), &len);
    al_buf_printf(&j->footer, "ERROR: Job failed%s: %s\n", canceled ? "" : " (system failure)",
                  red ? red : "agentlab could not start the job");
    start_finishing(j, FS_FOOTER);
}

static void on_engine_finished(struct gljob *j, enum job_state state,
                               const struct attempt_result *last)
{
    struct gitlab *g = j->g;
    (void)last;
    _cleanup_(store_job_freep) struct store_job *sj = NULL;
    struct al_error *err = NULL;
    if (store_job_get(engine_store(g->e), j->engine_id, &sj, &err) < 0)
        err = al_error_free(err);
    const char *reason = sj && sj->reason ? sj->reason : "";
    int code = sj && sj->has_exit_code ? sj->exit_code : 0;
    j->succeeded = state == JOB_STATE_SUCCEEDED;
    j->has_exit_code = false;
    switch (state) {
    case JOB_STATE_SUCCEEDED:
        j->has_exit_code = true;
        j->exit_code = 0;
        break;
    case JOB_STATE_FAILED:
        j->failure_reason = "script_failure";
        j->has_exit_code = sj && sj->has_exit_code;
        j->exit_code = code;
        al_buf_printf(&j->footer, "ERROR: Job failed: exit code %d\n", code);
        break;
    case JOB_STATE_TIMED_OUT:
        j->failure_reason = "job_execution_timeout";
        al_buf_printf(&j->footer,
                      "ERROR: Job failed: execution took longer than %" PRId64 " seconds\n",
                      j->payload && j->payload->timeout_s ? j->payload->timeout_s
                                                          : g->cfg->agent.job_timeout_s);
        break;
    case JOB_STATE_CANCELED:
        if (j->shutdown) {
            j->failure_reason = "runner_system_failure";
            al_buf_puts(&j->footer, "ERROR: Job failed (system failure): agentlabd stopped\n");
        } else {
            j->failure_reason = "job_canceled";
            al_buf_puts(&j->footer, "ERROR: Job failed: canceled\n");
        }
        break;
    default:
        j->failure_reason = "runner_system_failure";
        al_buf_printf(&j->footer, "ERROR: Job failed (system failure): %s\n",
                      *reason ? reason : "the VM could not run the job");
        break;
    }
    /* the checkout was only needed to start the VM */
    _cleanup_free_ char *job_dir = engine_job_dir(g->e, j->engine_id);
    _cleanup_free_ char *tar = job_dir ? al_path_join(job_dir, "workdir.tar") : NULL;
    if (tar)
        unlink(tar);
    log_info(j->engine_id, "gitlab %s: job %" PRId64 " ended %s", g->src->name, j->id,
             job_state_to_string(state));
    start_finishing(j, FS_ARTIFACTS);
}

/* ---- start ---- */

static void submit(struct gljob *j, const char *tar)
{
    struct gitlab *g = j->g;
    struct engine_submit opts = {.workdir_tar = tar};
    struct al_error *err = NULL;
    char id[STORE_JOB_ID_SIZE];
    int r = engine_submit(g->e, TAKE_PTR(j->spec), &opts, id, &err);
    if (j->checkout_dir)
        remove_async(g, j->checkout_dir);
    if (r < 0) {
        fail_early(j, "agentlab refused the job: %s", al_error_message(err));
        al_error_free(err);
        return;
    }
    memcpy(j->engine_id, id, sizeof(id));
    j->submitted = true;
    j->phase = PHASE_ENGINE;
    log_info(id, "gitlab %s: GitLab job %" PRId64 " (%s) runs as %s", g->src->name, j->id,
             j->payload->job_name ? j->payload->job_name : "unnamed", id);
}

static void on_checkout_done(int result, const char *tar, const char *message, void *data)
{
    struct gljob *j = data;
    j->checkout = NULL;
    if (j->n_dep_zips)
        remove_async(j->g, j->deps_dir);
    if (result < 0) {
        if (j->checkout_dir)
            remove_async(j->g, j->checkout_dir);
        if (result == -ECANCELED)
            fail_early(j, "%s", j->shutdown ? "agentlabd stopped" : "canceled");
        else
            fail_early(j, "fetching the sources failed: %s", message);
        return;
    }
    submit(j, tar);
}

/* ---- artifacts of earlier jobs ---- */

static void checkout_begin(struct gljob *j);

/* The response body goes to the zip file, within the checkout cap. */
static size_t on_dep_body(char *ptr, size_t size, size_t nmemb, void *data)
{
    struct gljob *j = data;
    size_t n = size * nmemb;
    uint64_t cap = j->g->src->max_checkout_bytes;
    if (cap && j->dep_bytes + n > cap) {
        j->dep_over = true;
        return 0;
    }
    for (size_t off = 0; off < n;) {
        ssize_t w = write(j->dep_fd, ptr + off, n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return 0;
        off += (size_t)w;
    }
    j->dep_bytes += n;
    return n;
}

static int dep_setup(CURL *easy, void *data)
{
    if (curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_dep_body) != CURLE_OK ||
        curl_easy_setopt(easy, CURLOPT_WRITEDATA, data) != CURLE_OK)
        return -1;
    return 0;
}

static void deps_next(struct gljob *j);

static void on_dep_done(int result, const struct al_http_response *resp, const struct al_error *err,
                        void *data)
{
    struct gljob *j = data;
    j->call = NULL;
    if (j->dep_fd >= 0) {
        close(j->dep_fd);
        j->dep_fd = -1;
    }
    const struct gitlab_dependency *d = &j->payload->dependencies[j->dep_next];
    const char *name = d->name ? d->name : "job";
    char what[320];
    snprintf(what, sizeof(what), "downloading the artifacts of %s (%" PRId64 ")", name, d->id);
    if (result == 0)
        j->last_contact_ms = al_now_mono_ms();
    if (result < 0 || j->dep_over || resp->status != 200) {
        remove_async(j->g, j->deps_dir);
        if (result == -ECANCELED || j->cancel_requested)
            fail_early(j, "%s", j->shutdown ? "agentlabd stopped" : "canceled");
        else if (result < 0)
            fail_early(j, "%s failed: %s", what, al_error_message(err));
        else if (j->dep_over)
            fail_early(j, "%s failed: larger than max_checkout_bytes (%" PRIu64 ")", what,
                       j->g->src->max_checkout_bytes);
        else
            fail_early(j, "%s failed: HTTP %ld%s", what, resp->status,
                       resp->status == 403   ? " (forbidden)"
                       : resp->status == 404 ? " (not found: expired or never uploaded?)"
                                             : "");
        return;
    }
    char line[400];
    int n = snprintf(line, sizeof(line), "Downloading artifacts for %s (%" PRId64 ")... ok\n", name,
                     d->id);
    trace_append(j, line, n > 0 && (size_t)n < sizeof(line) ? (size_t)n : 0);
    j->n_dep_zips++;
    j->dep_next++;
    deps_next(j);
}

/* Downloads the next dependency's artifacts, then starts the checkout. */
static void deps_next(struct gljob *j)
{
    struct gitlab *g = j->g;
    const struct gitlab_job *p = j->payload;
    while (j->dep_next < p->n_dependencies && !p->dependencies[j->dep_next].artifacts_file)
        j->dep_next++;
    if (j->dep_next == p->n_dependencies) {
        checkout_begin(j);
        return;
    }
    const struct gitlab_dependency *d = &p->dependencies[j->dep_next];
    struct al_error *err = NULL;
    if (!j->dep_zips) {
        j->dep_zips = calloc(p->n_dependencies + 1, sizeof(char *));
        if (!j->dep_zips || al_rm_rf(j->deps_dir, NULL) < 0 ||
            al_mkdir_p(j->deps_dir, 0700, &err) < 0) {
            fail_early(j, "preparing %s: %s", j->deps_dir, err ? al_error_message(err) : "failed");
            al_error_free(err);
            return;
        }
    }
    char file[40];
    snprintf(file, sizeof(file), "%" PRId64 ".zip", d->id);
    char *zip = al_path_join(j->deps_dir, file);
    if (!zip) {
        fail_early(j, "out of memory");
        return;
    }
    j->dep_zips[j->n_dep_zips] = zip;
    j->dep_fd = open(zip, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (j->dep_fd < 0) {
        fail_early(j, "creating %s: %s", zip, strerror(errno));
        return;
    }
    j->dep_bytes = 0;
    j->dep_over = false;
    char path[64];
    snprintf(path, sizeof(path), "/api/v4/jobs/%" PRId64 "/artifacts", d->id);
    struct call_opts o = {.method = "GET",
                          .path = path,
                          .job_token = d->token ? d->token : j->token,
                          .timeout_ms = UPLOAD_TIMEOUT_MS,
                          .setup = dep_setup,
                          .setup_data = j};
    if (api_call(g, &o, on_dep_done, j, &j->call, &err) < 0) {
        fail_early(j, "downloading the artifacts of job %" PRId64 ": %s", d->id,
                   al_error_message(err));
        al_error_free(err);
    }
}

static struct gljob *job_new(struct gitlab *g, int64_t id, char *token)
{
    struct gljob *j = calloc(1, sizeof(*j));
    if (!j) {
        al_wipe_free(token);
        return NULL;
    }
    j->g = g;
    j->id = id;
    j->dep_fd = -1;
    if (al_redact_add(token) < 0) {
        al_wipe_free(token);
        free(j);
        return NULL;
    }
    j->token = token;
    j->interval_s = TRACE_INTERVAL_S;
    j->last_contact_ms = al_now_mono_ms();
    uv_timer_init(g->loop, &j->timer);
    j->timer.data = j;
    j->next = g->jobs;
    g->jobs = j;
    return j;
}

static void start_job(struct gitlab *g, const char *body, size_t len)
{
    struct al_error *err = NULL;
    struct gitlab_job *payload = NULL;
    int r = gitlab_job_parse(body, len, &payload, &err);
    if (r < 0) {
        int64_t id = 0;
        char *token = NULL;
        if (gitlab_job_parse_ident(body, len, &id, &token) < 0) {
            log_error(NULL, "gitlab %s: unreadable job payload, cannot report it: %s", g->src->name,
                      al_error_message(err));
            al_error_free(err);
            return;
        }
        struct gljob *j = job_new(g, id, token);
        if (j)
            fail_early(j, "agentlab could not read the job: %s", al_error_message(err));
        al_error_free(err);
        return;
    }
    char *token = strdup(payload->token);
    struct gljob *j = token ? job_new(g, payload->id, token) : NULL;
    if (!j) {
        log_error(NULL, "gitlab %s: job %" PRId64 ": out of memory", g->src->name, payload->id);
        gitlab_job_free(payload);
        return;
    }
    j->payload = payload;
    for (size_t i = 0; i < payload->n_dependencies; i++) {
        if (payload->dependencies[i].token && al_redact_add(payload->dependencies[i].token) < 0) {
            /* not registered: on_job_closed must not drop a registration */
            al_wipe_free(payload->dependencies[i].token);
            payload->dependencies[i].token = NULL;
        }
    }
    j->phase = PHASE_CHECKOUT;
    log_info(NULL, "gitlab %s: job %" PRId64 " (%s, %s at %.12s)", g->src->name, j->id,
             payload->job_name ? payload->job_name : "unnamed",
             payload->project_name ? payload->project_name : "project", payload->sha);
    trace_tick_arm(j, (uint64_t)j->interval_s * 1000u);

    enum gitlab_clone clone = gitlab_job_clone_mode(payload, (enum gitlab_clone)g->src->clone);
    struct gitlab_spec_opts so = {.clone = clone, .pool = *g->src->pool ? g->src->pool : NULL};
    r = gitlab_job_to_spec(payload, &so, &j->spec, &err);
    if (r < 0) {
        fail_early(j, "%s", al_error_message(err));
        al_error_free(err);
        return;
    }
    bool need_deps = false;
    for (size_t i = 0; i < payload->n_dependencies; i++)
        need_deps |= payload->dependencies[i].artifacts_file != NULL;
    if (clone != GITLAB_CLONE_HOST) {
        if (need_deps) {
            fail_early(j, "the artifacts of earlier jobs (dependencies, needs) are unpacked by "
                          "agentlabd into the sources it checks out: they need clone = host");
            return;
        }
        submit(j, NULL);
        return;
    }
    char name[40];
    snprintf(name, sizeof(name), "%" PRId64 ".deps", j->id);
    j->deps_dir = al_path_join(g->checkout_root, name);
    if (!j->deps_dir) {
        fail_early(j, "out of memory");
        return;
    }
    deps_next(j);
}

static void checkout_begin(struct gljob *j)
{
    struct gitlab *g = j->g;
    const struct gitlab_job *payload = j->payload;
    struct al_error *err = NULL;
    char name[32];
    snprintf(name, sizeof(name), "%" PRId64, j->id);
    j->checkout_dir = al_path_join(g->checkout_root, name);
    struct gitlab_checkout_params cp = {
            .dir = j->checkout_dir,
            .repo_url = payload->repo_url,
            .token = payload->token,
            .sha = payload->sha,
            .refspecs = (const char *const *)payload->refspecs,
            .depth = payload->depth,
            .max_bytes = g->src->max_checkout_bytes,
            .timeout_s = CHECKOUT_TIMEOUT_S,
            .unpack_zips = (const char *const *)j->dep_zips,
    };
    if (!j->checkout_dir ||
        gitlab_checkout_start(g->loop, &cp, on_checkout_done, j, &j->checkout, &err) < 0) {
        if (j->n_dep_zips)
            remove_async(g, j->deps_dir);
        fail_early(j, "fetching the sources failed: %s",
                   err ? al_error_message(err) : "out of memory");
        al_error_free(err);
    }
}

/* ------------------------------------------------------------ polling */

static int request_body(struct gitlab *g, char **ret, size_t *ret_len)
{
    _cleanup_(yajl_gen_freep) yajl_gen gen = yajl_gen_alloc(NULL);
    if (!gen)
        return -ENOMEM;
    static const char *const on[] = {
            "variables",     "artifacts",         "refspecs",          "masking",
            "raw_variables", "artifacts_exclude", "multi_build_steps", "trace_checksum",
            "trace_size",    "cancelable",        "return_exit_code",
    };
    static const char *const off[] = {
            "image",
            "services",
            "cache",
            "shared",
            "upload_multiple_artifacts",
            "session",
            "terminal",
            "proxy",
            "upload_raw_artifacts",
            "trace_reset",
            "vault_secrets",
    };
    int r = yajl_gen_map_open(gen) != yajl_gen_status_ok;
    r |= gen_kv(gen, "token", g->token);
    r |= gen_kv(gen, "system_id", g->system_id);
    r |= gen_key(gen, "info");
    r |= yajl_gen_map_open(gen) != yajl_gen_status_ok;
    r |= gen_kv(gen, "name", "agentlab");
    r |= gen_kv(gen, "version", AL_VERSION);
    r |= gen_kv(gen, "revision", "");
    r |= gen_kv(gen, "platform", "linux");
    r |= gen_kv(gen, "architecture", "amd64");
    r |= gen_kv(gen, "executor", "agentlab");
    r |= gen_kv(gen, "shell", "sh");
    r |= gen_key(gen, "features");
    r |= yajl_gen_map_open(gen) != yajl_gen_status_ok;
    for (size_t i = 0; i < ARRAY_SIZE(on); i++) {
        r |= gen_key(gen, on[i]);
        r |= yajl_gen_bool(gen, 1) != yajl_gen_status_ok;
    }
    for (size_t i = 0; i < ARRAY_SIZE(off); i++) {
        r |= gen_key(gen, off[i]);
        r |= yajl_gen_bool(gen, 0) != yajl_gen_status_ok;
    }
    r |= yajl_gen_map_close(gen) != yajl_gen_status_ok;
    r |= yajl_gen_map_close(gen) != yajl_gen_status_ok;
    if (g->last_update)
        r |= gen_kv(gen, "last_update", g->last_update);
    r |= yajl_gen_map_close(gen) != yajl_gen_status_ok;
    if (r)
        return -EINVAL;
    char *body = gen_take(gen, ret_len);
    if (!body)
        return -ENOMEM;
    *ret = body;
    return 0;
}

static void backoff(struct gitlab *g, const struct al_http_response *resp)
{
    g->backoff_ms = g->backoff_ms ? g->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (g->backoff_ms > BACKOFF_MAX_MS)
        g->backoff_ms = BACKOFF_MAX_MS;
    uint64_t ms = al_jitter_ms(g->backoff_ms);
    const char *ra = resp ? al_http_header(resp, "Retry-After") : NULL;
    int secs = 0;
    if (ra && al_parse_int(ra, 0, 3600, &secs) == 0 && (uint64_t)secs * 1000u > ms)
        ms = (uint64_t)secs * 1000u;
    poll_schedule(g, ms);
}

static bool last_update_is_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 128)
        return false;
    for (const char *p = s; *p; p++) {
        if ((unsigned char)*p <= ' ' || *p == 0x7f || *p == '"' || *p == '\\')
            return false;
    }
    return true;
}

static void on_poll_done(int result, const struct al_http_response *resp,
                         const struct al_error *err, void *data)
{
    struct gitlab *g = data;
    g->poll_call = NULL;
    if (g->stopping || result == -ECANCELED)
        return;
    if (result < 0) {
        if (!g->backoff_ms)
            log_warn(NULL, "gitlab %s: requesting a job failed: %s; backing off", g->src->name,
                     al_error_message(err));
        backoff(g, NULL);
        return;
    }
    switch (resp->status) {
    case 201:
        g->backoff_ms = 0;
        g->rejected_logged = false;
        /* ask again at once and without last_update: another job may be
         * waiting under the same queue version, which a long poll would
         * sit on */
        free(g->last_update);
        g->last_update = NULL;
        start_job(g, resp->body.data ? resp->body.data : "", resp->body.len);
        poll_schedule(g, 0);
        return;
    case 204: {
        g->backoff_ms = 0;
        g->rejected_logged = false;
        const char *lu = al_http_header(resp, "X-GitLab-Last-Update");
        bool changed = false;
        if (lu && last_update_is_valid(lu) && (!g->last_update || !streq(lu, g->last_update))) {
            char *copy = strdup(lu);
            if (copy) {
                free(g->last_update);
                g->last_update = copy;
                changed = true;
            }
        }
        poll_schedule(g, changed ? REPOLL_MS : (uint64_t)g->src->poll_interval_s * 1000u);
        return;
    }
    case 403:
        if (!g->rejected_logged)
            log_error(NULL, "gitlab %s: GitLab rejected the runner token (403); check %s",
                      g->src->name, g->src->token_file);
        g->rejected_logged = true;
        g->backoff_ms = g->backoff_ms < 60000u ? 60000u : g->backoff_ms;
        backoff(g, resp);
        return;
    case 409:
        /* another request of this runner is being served: wait a little */
        poll_schedule(g, (uint64_t)g->src->poll_interval_s * 1000u);
        return;
    default: {
        char ex[256];
        body_excerpt(resp, ex, sizeof(ex));
        if (!g->backoff_ms)
            log_warn(NULL, "gitlab %s: requesting a job: HTTP %ld %s; backing off", g->src->name,
                     resp->status, ex);
        backoff(g, resp);
        return;
    }
    }
}

static void poll_now(struct gitlab *g)
{
    if (g->stopping || g->poll_call)
        return;
    if (!has_room(g)) {
        poll_schedule(g, (uint64_t)g->src->poll_interval_s * 1000u);
        g->waiting_room = true;
        return;
    }
    g->waiting_room = false;
    char *body = NULL;
    size_t len = 0;
    int r = request_body(g, &body, &len);
    if (r < 0) {
        backoff(g, NULL);
        return;
    }
    struct call_opts o = {
            .method = "POST",
            .path = API "/jobs/request",
            .content_type = "application/json",
            .body = body,
            .body_len = len,
            .max_response = GITLAB_JOB_MAX_BYTES + 1,
            .timeout_ms = REQUEST_TIMEOUT_MS,
    };
    struct al_error *err = NULL;
    r = api_call(g, &o, on_poll_done, g, &g->poll_call, &err);
    al_wipe_free(body);
    if (r < 0) {
        log_warn(NULL, "gitlab %s: %s", g->src->name, al_error_message(err));
        al_error_free(err);
        backoff(g, NULL);
    }
}

static void on_poll_timer(uv_timer_t *t)
{
    poll_now(t->data);
}

static void poll_schedule(struct gitlab *g, uint64_t ms)
{
    if (g->stopping || g->poll_call)
        return;
    g->waiting_room = false;
    uv_timer_start(&g->poll_timer, on_poll_timer, ms, 0);
}

/* ------------------------------------------------------------ observers */

static void on_event(const struct store_event *ev, void *data)
{
    struct gitlab *g = data;
    /* a job ending anywhere may have made room */
    if (g->waiting_room && job_state_is_terminal(ev->to) && !g->backoff_ms)
        poll_schedule(g, REPOLL_MS);
}

static void on_output(const char *job_id, enum vm_stream stream, const char *buf, size_t len,
                      void *data)
{
    (void)stream;
    struct gljob *j = find_job(data, job_id);
    if (j && j->phase == PHASE_ENGINE)
        trace_append(j, buf, len);
}

static void on_finished(const char *job_id, enum job_state state, const struct attempt_result *last,
                        void *data)
{
    struct gljob *j = find_job(data, job_id);
    if (j && j->phase == PHASE_ENGINE)
        on_engine_finished(j, state, last);
}

static const struct engine_observer observer = {
        .event = on_event,
        .output = on_output,
        .finished = on_finished,
};

/* ------------------------------------------------------------ lifecycle */

/* Jobs of this source type that a previous agentlabd left queued: their job
 * tokens died with it, so nobody could report them. */
static void cancel_orphans(struct gitlab *g)
{
    struct store_job_filter f = {
            .state = JOB_STATE_QUEUED, .source = JOB_SOURCE_GITLAB, .limit = STORE_LIST_MAX};
    struct store_job_page page = {0};
    struct al_error *err = NULL;
    if (store_job_list(engine_store(g->e), &f, &page, &err) < 0) {
        log_warn(NULL, "gitlab %s: listing orphaned jobs: %s", g->src->name, al_error_message(err));
        al_error_free(err);
        return;
    }
    for (size_t i = 0; i < page.n; i++) {
        if (find_job(g, page.jobs[i]->id))
            continue;
        if (engine_cancel(g->e, page.jobs[i]->id, &err) == 0)
            log_warn(page.jobs[i]->id,
                     "gitlab %s: cancelled: its GitLab job token was lost with the previous "
                     "agentlabd (GitLab ends such jobs as stuck)",
                     g->src->name);
        err = al_error_free(err);
    }
    store_job_page_clear(&page);
}

int gitlab_start(uv_loop_t *loop, struct engine *e, struct al_curl *curl, const struct config *cfg,
                 const struct config_source *src, struct gitlab **ret, struct al_error **err)
{
    if (!curl)
        return al_error_set(err, EINVAL, "gitlab source %s: no HTTP client", src->name);
    struct gitlab *g = calloc(1, sizeof(*g));
    if (!g)
        return al_error_set(err, ENOMEM, "out of memory");
    g->loop = loop;
    g->e = e;
    g->curl = curl;
    g->cfg = cfg;
    g->src = src;
    int r = gitlab_read_token(src->token_file, &g->token, err);
    if (r < 0) {
        free(g);
        return r;
    }
    if (al_redact_add(g->token) < 0) {
        al_wipe_free(g->token);
        free(g);
        return al_error_set(err, ENOMEM, "registering the runner token");
    }
    size_t n = strlen(src->url);
    while (n && src->url[n - 1] == '/')
        n--;
    g->base = strndup(src->url, n);
    _cleanup_free_ char *root = al_path_join(cfg->agent.state_dir, "gitlab");
    if (root)
        g->checkout_root = al_path_join(root, src->name);
    char hex[AL_SHA256_HEX_SIZE];
    _cleanup_free_ char *seed = NULL;
    if (asprintf(&seed, "%s\n%s", cfg->agent.state_dir, src->name) < 0)
        seed = NULL;
    if (!g->base || !g->checkout_root || !seed) {
        al_redact_remove(g->token);
        al_wipe_free(g->token);
        free(g->base);
        free(g->checkout_root);
        free(g);
        return al_error_set(err, ENOMEM, "out of memory");
    }
    al_sha256_hex(seed, strlen(seed), hex);
    snprintf(g->system_id, sizeof(g->system_id), "s_%.12s", hex);
    /* checkouts of a previous run are of no use; move them out of the way
     * at once so new checkouts cannot race their removal */
    _cleanup_free_ char *old = NULL;
    if (asprintf(&old, "%s.old.%" PRIu64, g->checkout_root, al_now_mono_us()) >= 0 &&
        rename(g->checkout_root, old) == 0)
        remove_async(g, old);
    uv_timer_init(loop, &g->poll_timer);
    g->poll_timer.data = g;
    g->watch = engine_observe(e, &observer, g);
    cancel_orphans(g);
    log_info(NULL, "gitlab %s: polling %s for jobs (system id %s, clone %s, concurrent %d)",
             src->name, g->base, g->system_id,
             src->clone == GITLAB_CLONE_GUEST  ? "guest"
             : src->clone == GITLAB_CLONE_NONE ? "none"
                                               : "host",
             src->concurrent);
    poll_schedule(g, 0);
    *ret = g;
    return 0;
}

static void on_poll_timer_closed(uv_handle_t *h)
{
    struct gitlab *g = h->data;
    void (*done)(void *) = g->done;
    void *data = g->done_data;
    al_redact_remove(g->token);
    al_wipe_free(g->token);
    free(g->base);
    free(g->last_update);
    free(g->checkout_root);
    free(g);
    if (done)
        done(data);
}

static void maybe_stopped(struct gitlab *g)
{
    if (!g->stopping || g->closed || g->jobs || g->workers > 0 || g->poll_call)
        return;
    g->closed = true;
    if (g->watch)
        engine_unobserve(g->e, g->watch);
    g->watch = NULL;
    uv_close((uv_handle_t *)&g->poll_timer, on_poll_timer_closed);
}

void gitlab_stop(struct gitlab *g, void (*done)(void *data), void *data)
{
    g->stopping = true;
    g->done = done;
    g->done_data = data;
    uv_timer_stop(&g->poll_timer);
    if (g->poll_call)
        al_http_cancel(g->poll_call);
    for (struct gljob *j = g->jobs, *next; j; j = next) {
        next = j->next;
        j->shutdown = true;
        if (j->phase != PHASE_FINISHING)
            request_cancel(j, "agentlabd is stopping");
        else if (j->timer_armed)
            uv_timer_start(&j->timer, on_tick, 0, 0); /* no more waiting between tries */
        j->cancel_requested = true;
    }
    maybe_stopped(g);
}
