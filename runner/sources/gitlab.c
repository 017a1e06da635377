#include "runner/sources/gitlab.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <yajl/yajl_gen.h>

#include "runner/base/buf.h"
#include "runner/base/log.h"
#include "runner/base/sha256.h"
#include "runner/base/util.h"
#include "runner/base/hardlimits.h"
#include "runner/loop/http_client.h"
#include "runner/loop/work.h"
#include "runner/sources/gitlab_cache.h"
#include "runner/sources/gitlab_job.h"

#include "runner/sources/gitlab_internal.h"
#include "runner/sources/orphans.h"

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
    al_list_for_each(j, &g->jobs, struct gljob, link) {
        if (j->submitted && streq(j->engine_id, engine_id))
            return j;
    }
    return NULL;
}

/* Percent-encodes s for a query string. */
char *gl_url_escape(const char *s)
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

int gl_gen_kv(yajl_gen g, const char *k, const char *v)
{
    if (yajl_gen_string(g, (const unsigned char *)k, strlen(k)) != yajl_gen_status_ok ||
        yajl_gen_string(g, (const unsigned char *)v, strlen(v)) != yajl_gen_status_ok)
        return -EINVAL;
    return 0;
}

int gl_gen_key(yajl_gen g, const char *k)
{
    return yajl_gen_string(g, (const unsigned char *)k, strlen(k)) == yajl_gen_status_ok ? 0
                                                                                         : -EINVAL;
}

/* The finished JSON document of g as a new string (wipe it after use:
 * bodies carry tokens). */
char *gl_gen_take(yajl_gen g, size_t *ret_len)
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

int gl_api_call(struct gitlab *g, const struct call_opts *o, al_http_cb cb, void *data,
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
bool gl_parse_range(const struct al_http_response *resp, uint64_t *ret)
{
    const char *v = al_http_header(resp, "Range");
    if (!v || strncmp(v, "0-", 2) != 0)
        return false;
    return al_parse_uint64(v + 2, UINT64_MAX, ret) == 0;
}

/* First line of a response body, printable, for messages. */
void gl_body_excerpt(const struct al_http_response *resp, char *buf, size_t size)
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
    al_list_for_each(j, &g->jobs, struct gljob, link) {
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
    gl_maybe_stopped(g);
}

/* rm -rf path on a worker (checkouts can be large). */
void gl_remove_async(struct gitlab *g, const char *path)
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

/* ------------------------------------------------------------ polling */

static int request_body(struct gitlab *g, char **ret, size_t *ret_len)
{
    _cleanup_(yajl_gen_freep) yajl_gen gen = yajl_gen_alloc(NULL);
    if (!gen)
        return -ENOMEM;
    static const char *const on[] = {
            "variables",
            "artifacts",
            "refspecs",
            "masking",
            "raw_variables",
            "artifacts_exclude",
            "multi_build_steps",
            "trace_checksum",
            "trace_size",
            "cancelable",
            "return_exit_code",
            /* report artifacts: one upload per artifacts[] entry, gzip or raw */
            "upload_multiple_artifacts",
            "upload_raw_artifacts",
    };
    static const char *const off[] = {
            "image",    "services", "shared",      "session",
            "terminal", "proxy",    "trace_reset", "vault_secrets",
    };
    int r = yajl_gen_map_open(gen) != yajl_gen_status_ok;
    r |= gl_gen_kv(gen, "token", g->token);
    r |= gl_gen_kv(gen, "system_id", g->system_id);
    r |= gl_gen_key(gen, "info");
    r |= yajl_gen_map_open(gen) != yajl_gen_status_ok;
    r |= gl_gen_kv(gen, "name", "agentlab");
    r |= gl_gen_kv(gen, "version", AL_VERSION);
    r |= gl_gen_kv(gen, "revision", "");
    r |= gl_gen_kv(gen, "platform", "linux");
    r |= gl_gen_kv(gen, "architecture", "amd64");
    r |= gl_gen_kv(gen, "executor", "agentlab");
    r |= gl_gen_kv(gen, "shell", "sh");
    r |= gl_gen_key(gen, "features");
    r |= yajl_gen_map_open(gen) != yajl_gen_status_ok;
    for (size_t i = 0; i < ARRAY_SIZE(on); i++) {
        r |= gl_gen_key(gen, on[i]);
        r |= yajl_gen_bool(gen, 1) != yajl_gen_status_ok;
    }
    for (size_t i = 0; i < ARRAY_SIZE(off); i++) {
        r |= gl_gen_key(gen, off[i]);
        r |= yajl_gen_bool(gen, 0) != yajl_gen_status_ok;
    }
    r |= gl_gen_key(gen, "cache");
    r |= yajl_gen_bool(gen, g->cache != NULL) != yajl_gen_status_ok;
    r |= yajl_gen_map_close(gen) != yajl_gen_status_ok;
    r |= yajl_gen_map_close(gen) != yajl_gen_status_ok;
    if (g->last_update)
        r |= gl_gen_kv(gen, "last_update", g->last_update);
    r |= yajl_gen_map_close(gen) != yajl_gen_status_ok;
    if (r)
        return -EINVAL;
    char *body = gl_gen_take(gen, ret_len);
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
    gl_poll_schedule(g, ms);
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
        gl_start_job(g, resp->body.data ? resp->body.data : "", resp->body.len);
        gl_poll_schedule(g, 0);
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
        gl_poll_schedule(g, changed ? REPOLL_MS : (uint64_t)g->src->poll_interval_s * 1000u);
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
        gl_poll_schedule(g, (uint64_t)g->src->poll_interval_s * 1000u);
        return;
    default: {
        char ex[256];
        gl_body_excerpt(resp, ex, sizeof(ex));
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
        gl_poll_schedule(g, (uint64_t)g->src->poll_interval_s * 1000u);
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
    r = gl_api_call(g, &o, on_poll_done, g, &g->poll_call, &err);
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

void gl_poll_schedule(struct gitlab *g, uint64_t ms)
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
        gl_poll_schedule(g, REPOLL_MS);
}

static void on_output(const char *job_id, enum vm_stream stream, const char *buf, size_t len,
                      void *data)
{
    (void)stream;
    struct gljob *j = find_job(data, job_id);
    if (j && j->phase == PHASE_ENGINE)
        gl_trace_append(j, buf, len);
}

static void on_finished(const char *job_id, enum job_state state, const struct attempt_result *last,
                        void *data)
{
    struct gljob *j = find_job(data, job_id);
    if (j && j->phase == PHASE_ENGINE)
        gl_on_engine_finished(j, state, last);
}

static const struct engine_observer observer = {
        .event = on_event,
        .output = on_output,
        .finished = on_finished,
};

/* ------------------------------------------------------------ lifecycle */

static bool is_ours(const char *job_id, void *data)
{
    return find_job(data, job_id) != NULL;
}

/* The cache store; without it the source runs, without caches (a shared
 * directory that is not mounted yet must not stop the jobs). */
static void cache_open(struct gitlab *g)
{
    const struct config_source *src = g->src;
    _cleanup_free_ char *dir = NULL;
    if (src->cache_dir && *src->cache_dir)
        dir = strdup(src->cache_dir);
    else if (asprintf(&dir, "%s/gitlab-cache/%s", g->cfg->agent.state_dir, src->name) < 0)
        dir = NULL;
    struct al_error *err = NULL;
    uint64_t evicted = 0;
    if (!dir) {
        log_error(NULL, "gitlab %s: out of memory", src->name);
    } else if (gitlab_cache_store_new(dir, src->cache_max_bytes, &g->cache, &err) < 0 ||
               gitlab_cache_store_evict(g->cache, &evicted, &err) < 0) {
        log_error(NULL, "gitlab %s: no cache: %s", src->name, al_error_message(err));
        g->cache = gitlab_cache_store_free(g->cache);
    } else {
        struct gitlab_cache_stats st;
        gitlab_cache_store_stats(g->cache, &st);
        log_info(NULL,
                 "gitlab %s: cache in %s: %" PRIu64 " archives, %" PRIu64 " of %" PRIu64 " bytes",
                 src->name, dir, st.archives, st.bytes, src->cache_max_bytes);
    }
    al_error_free(err);
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
    al_list_init(&g->jobs);
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
        gl_remove_async(g, old);
    if (src->cache_max_bytes)
        cache_open(g);
    uv_timer_init(loop, &g->poll_timer);
    g->poll_timer.data = g;
    g->watch = engine_observe(e, &observer, g);
    char name[160];
    snprintf(name, sizeof(name), "gitlab %s", src->name);
    orphans_cancel(e, JOB_SOURCE_GITLAB, name, is_ours, g,
                   "its GitLab job token was lost with the previous agentlabd (GitLab ends such "
                   "jobs as stuck)");
    log_info(NULL, "gitlab %s: polling %s for jobs (system id %s, clone %s, concurrent %d)",
             src->name, g->base, g->system_id,
             src->clone == GITLAB_CLONE_GUEST  ? "guest"
             : src->clone == GITLAB_CLONE_NONE ? "none"
                                               : "host",
             src->concurrent);
    gl_poll_schedule(g, 0);
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
    gitlab_cache_store_free(g->cache);
    free(g);
    if (done)
        done(data);
}

void gitlab_cache_stats(struct gitlab *g, struct gitlab_cache_stats *ret)
{
    if (g->cache)
        gitlab_cache_store_stats(g->cache, ret);
    else
        *ret = (struct gitlab_cache_stats){0};
}

void gl_maybe_stopped(struct gitlab *g)
{
    if (!g->stopping || g->closed || !al_list_empty(&g->jobs) || g->workers > 0 || g->poll_call)
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
    al_list_for_each_safe(j, next, &g->jobs, struct gljob, link) {
        j->shutdown = true;
        if (j->phase != PHASE_FINISHING)
            gl_request_cancel(j, "agentlabd is stopping");
        else if (j->timer_armed)
            uv_timer_start(&j->timer, gl_on_tick, 0, 0); /* no more waiting between tries */
        j->cancel_requested = true;
    }
    gl_maybe_stopped(g);
}
