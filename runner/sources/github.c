#include "runner/sources/github.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "runner/base/log.h"
#include "runner/base/sha256.h"
#include "runner/base/util.h"
#include "runner/loop/api_queue.h"
#include "runner/loop/http_client.h"
#include "runner/sources/github_auth.h"
#include "runner/sources/github_common.h"
#include "runner/sources/github_hook.h"
#include "runner/sources/github_payload.h"

#include "runner/sources/github_internal.h"
#include "runner/sources/orphans.h"

static void maybe_stopped(struct github *g);

/* ------------------------------------------------------------ helpers */

void gh_backoff_grow(uint64_t *b)
{
    *b = *b ? *b * 2 : BACKOFF_MIN_MS;
    if (*b > BACKOFF_MAX_MS)
        *b = BACKOFF_MAX_MS;
}

/* "HTTP 422: message" of an answer, for logs. */
static void describe(const struct al_http_response *resp, char *buf, size_t size)
{
    char m[200];
    github_error_message(resp->body.data, resp->body.len, m, sizeof(m));
    snprintf(buf, size, "HTTP %ld%s%s", resp->status, *m ? ": " : "", m);
}

void gh_describe_result(int result, const struct al_http_response *resp, const struct al_error *err,
                        char *buf, size_t size)
{
    if (result == 0)
        describe(resp, buf, size);
    else
        snprintf(buf, size, "%s", al_error_message(err));
}

bool gh_repo_in_scope(const struct github *g, const char *repo)
{
    if (*g->b.src->repo)
        return strcasecmp(repo, g->b.src->repo) == 0;
    size_t n = strlen(g->b.src->org);
    return strncasecmp(repo, g->b.src->org, n) == 0 && repo[n] == '/';
}

/* ------------------------------------------------------------ calls */

struct gh_call {
    struct github *g;
    gh_cb cb;
    void *data;
};

static void on_call_done(int result, const struct al_http_response *resp,
                         const struct al_error *err, void *data)
{
    struct gh_call c = *(struct gh_call *)data;
    free(data);
    c.cb(c.g, result, resp, err, c.data);
}

/* Queues an API call (api_queue.h). path and body (may be NULL) are taken
 * over; etag (may be NULL) must live until cb. cb runs exactly once: with
 * the answer, a transport error, or -ECANCELED when the source stops first. */
void gh_call_etag(struct github *g, const char *method, char *path, char *body, const char *etag,
                  gh_cb cb, void *data)
{
    struct gh_call *c = malloc(sizeof(*c));
    if (!c) {
        struct al_error *err = gh_call_oom(path, body);
        cb(g, -ENOMEM, NULL, err, data);
        al_error_free(err);
        return;
    }
    *c = (struct gh_call){.g = g, .cb = cb, .data = data};
    api_queue_call(g->api, method, path, body, etag, on_call_done, c);
}

void gh_call(struct github *g, const char *method, char *path, char *body, gh_cb cb, void *data)
{
    gh_call_etag(g, method, path, body, NULL, cb, data);
}

/* GitHub's secondary rate limits can come as a bare 403 that says so: it
 * asks to wait at least a minute then. */
static bool secondary_rate_limit(const struct al_http_response *resp)
{
    char m[200];
    github_error_message(resp->body.data, resp->body.len, m, sizeof(m));
    return strcasestr(m, "rate limit") != NULL;
}

static const char *auth_header(void *auth)
{
    return github_auth_header(auth);
}

static int auth_refresh(void *auth)
{
    return github_auth_refresh(auth);
}

static bool auth_invalidate(void *auth)
{
    /* only an App's installation token can be renewed */
    if (!github_auth_is_app(auth))
        return false;
    github_auth_invalidate(auth);
    return true;
}

static const struct api_queue_auth_ops auth_ops = {
        .header = auth_header,
        .refresh = auth_refresh,
        .invalidate = auth_invalidate,
};

static void on_auth_refreshed(int result, const char *message, void *data)
{
    struct github *g = data;
    api_queue_auth_done(g->api, result, message);
}

static void on_api_settled(void *data)
{
    maybe_stopped(data);
}

/* ------------------------------------------------------------ the tick */

static void runners_tick(struct github *g)
{
    uint64_t now = al_now_mono_ms();
    uint64_t idle_ms = (uint64_t)g->b.src->runner_idle_timeout_s * 1000u;
    al_list_for_each(r, &g->runners, struct ghrunner, link) {
        switch (r->state) {
        case R_IDLE:
            if (now - r->created_ms > idle_ms)
                gh_runner_retire(r, "it took no job within runner_idle_timeout");
            else if (r->retire_reason && !r->deleting && !r->deleted && now >= r->next_delete_ms)
                gh_runner_delete(r);
            break;
        case R_DONE:
            if (!r->vm_gone && now - r->done_ms > DONE_GRACE_MS)
                gh_runner_stop_vm(r, "its job completed over 2 minutes ago but the VM is still up");
            break;
        case R_ENDING:
            if (!r->deleting && !r->deleted && now >= r->next_delete_ms)
                gh_runner_delete(r);
            break;
        case R_CREATING:
        case R_BUSY:
        case R_DEAD:
            break;
        }
    }
    /* free what is over */
    al_list_for_each_safe(r, tmp, &g->runners, struct ghrunner, link) {
        if (r->state == R_DEAD && !r->calls) {
            al_list_del(&r->link);
            free(r);
        }
    }
}

static void on_tick(uv_timer_t *t)
{
    struct github *g = t->data;
    if (g->b.stopping)
        return;
    uint64_t now = al_now_mono_ms();
    runners_tick(g);
    gh_demand_prune(g, false);
    if (now >= g->next_sweep_ms) {
        g->next_sweep_ms = now + SWEEP_EVERY_MS;
        gh_sweep(g);
    }
    if (g->polling_enabled && !g->poll_calls && now >= g->next_poll_ms)
        gh_poll_now(g);
    gh_serve(g);
}

/* ------------------------------------------------------------ engine */

static struct ghrunner *runner_by_engine_id(struct github *g, const char *id)
{
    al_list_for_each(r, &g->runners, struct ghrunner, link) {
        if (r->submitted && streq(r->engine_id, id))
            return r;
    }
    return NULL;
}

static void on_serve_timer(uv_timer_t *t)
{
    struct github *g = t->data;
    if (!g->b.stopping)
        gh_serve(g);
}

/* From observer callbacks: serving may submit to the engine, which must not
 * be entered from inside its own notification. Coalesced per loop turn. */
static void serve_soon(struct github *g)
{
    if (!g->b.stopping && !g->b.closing)
        uv_timer_start(&g->b.soon_timer, on_serve_timer, 0, 0);
}

static void on_finished(const char *job_id, enum job_state state, const struct attempt_result *last,
                        void *data)
{
    (void)last;
    struct github *g = data;
    struct ghrunner *r = runner_by_engine_id(g, job_id);
    if (!r || r->vm_gone)
        return;
    r->vm_gone = true;
    log_info(job_id, "github %s: runner %s: its VM ended (%s)", g->b.name, r->name,
             job_state_to_string(state));
    if (r->state != R_BUSY && r->state != R_DONE)
        gh_runner_release_demand(r);
    if (r->deleted) {
        gh_runner_set_dead(r);
    } else {
        r->state = R_ENDING;
        r->retire_reason = NULL;
        if (!g->b.stopping)
            gh_runner_delete(r);
    }
    serve_soon(g);
}

static void on_event(const struct store_event *ev, void *data)
{
    struct github *g = data;
    /* a job ending anywhere may have made room */
    if (job_state_is_terminal(ev->to))
        serve_soon(g);
}

static const struct engine_observer observer = {
        .event = on_event,
        .finished = on_finished,
};

/* ------------------------------------------------------------ lifecycle */

static int add_label(struct github *g, const char *l)
{
    for (size_t i = 0; i < g->n_labels; i++) {
        if (strcasecmp(g->labels[i], l) == 0)
            return 0;
    }
    if (g->n_labels >= GITHUB_MAX_LABELS)
        return -E2BIG;
    char **v = realloc(g->labels, (g->n_labels + 2) * sizeof(char *));
    if (!v)
        return -ENOMEM;
    g->labels = v;
    if (!(v[g->n_labels] = strdup(l)))
        return -ENOMEM;
    v[++g->n_labels] = NULL;
    return 0;
}

/* The pools a job of this source may be routed to: its pools, or every
 * pool when it names none. */
static bool pool_is_ours(const struct github *g, const struct config_pool *p)
{
    if (!g->b.src->pools || !g->b.src->pools[0])
        return true;
    for (char **n = g->b.src->pools; *n; n++) {
        if (streq(*n, p->name))
            return true;
    }
    return false;
}

/* g->pool_labels: every label of the pools a job may be routed to (a job
 * that names one is ours even though the runners' own labels lack it). */
static int collect_pool_labels(struct github *g)
{
    size_t n = 0;
    for (size_t i = 0; i < g->b.cfg->n_pools; i++) {
        for (char **l = g->b.cfg->pools[i].labels; pool_is_ours(g, &g->b.cfg->pools[i]) && l && *l;
             l++)
            n++;
    }
    g->pool_labels = calloc(n + 1, sizeof(*g->pool_labels));
    if (!g->pool_labels)
        return -ENOMEM;
    n = 0;
    for (size_t i = 0; i < g->b.cfg->n_pools; i++) {
        for (char **l = g->b.cfg->pools[i].labels; pool_is_ours(g, &g->b.cfg->pools[i]) && l && *l;
             l++) {
            if (!(g->pool_labels[n++] = strdup(*l)))
                return -ENOMEM;
        }
    }
    return 0;
}

static int check_config(const struct config_source *src, struct al_error **err)
{
    bool has_repo = *src->repo, has_org = *src->org;
    if (has_repo == has_org)
        return al_error_set(err, EINVAL, "set exactly one of repo (OWNER/NAME) and org");
    if (has_repo && !github_repo_is_valid(src->repo))
        return al_error_set(err, EINVAL, "repo \"%s\": expected OWNER/NAME", src->repo);
    if (has_org && !github_login_is_valid(src->org))
        return al_error_set(err, EINVAL, "org \"%s\": expected an organisation login", src->org);
    if (has_repo && src->repos && src->repos[0])
        return al_error_set(err, EINVAL, "repos is for org scope; repo names one already");
    if (*src->url && strncmp(src->url, "https://", 8) != 0 && strncmp(src->url, "http://", 7) != 0)
        return al_error_set(err, EINVAL, "url \"%s\": expected https://HOST[/api/v3]", src->url);
    const char *d = src->runner_dir;
    if (d[0] != '/' || strpbrk(d, "'\\\n\r\t") || strlen(d) > 512)
        return al_error_set(err, EINVAL,
                            "runner_dir \"%s\": expected an absolute path without quotes", d);
    bool listen = *src->webhook_listen;
    if (listen && !*src->webhook_secret_file)
        return al_error_set(err, EINVAL, "webhook_listen needs webhook_secret_file");
    if (!listen && src->poll == GITHUB_POLL_NEVER)
        return al_error_set(err, EINVAL,
                            "poll = never without webhook_listen: no job would ever be seen");
    if (!listen && has_org && !(src->repos && src->repos[0]))
        return al_error_set(err, EINVAL,
                            "org scope without webhook_listen: name the repositories to poll "
                            "with repos");
    return 0;
}

/* Frees what setup() allocates and g itself: the last step of both
 * handle_closed() and github_free_early(). */
static void github_free_fields(struct github *g)
{
    for (size_t i = 0; i < g->n_poll_repos; i++) {
        free(g->poll_repos[i].repo);
        free(g->poll_repos[i].etag[0]);
        free(g->poll_repos[i].etag[1]);
    }
    free(g->poll_repos);
    free(g->runs);
    strv_free(g->labels);
    free(g->labels_text);
    strv_free(g->pool_labels);
    free(g->base);
    free(g->scope);
    free(g->prefix);
    free(g);
}

static void handle_closed(struct github *g)
{
    if (--g->b.handles_open > 0)
        return;
    void (*done)(void *) = g->b.done;
    void *data = g->b.done_data;
    al_list_for_each_safe(r, next, &g->runners, struct ghrunner, link) {
        al_list_del(&r->link);
        free(r);
    }
    al_list_for_each_safe(d, next, &g->demand, struct ghdemand, link) {
        al_list_del(&d->link);
        gh_demand_free(d);
    }
    github_free_fields(g);
    if (done)
        done(data);
}

static void on_handle_closed(uv_handle_t *h)
{
    handle_closed(h->data);
}

static void on_api_closed(void *data)
{
    handle_closed(data);
}

static void github_free_early(struct github *g)
{
    if (g->api)
        api_queue_free(g->api, NULL, NULL);
    github_auth_free(g->auth);
    github_free_fields(g);
}

static int setup(struct github *g, struct al_error **err)
{
    const struct config_source *src = g->b.src;
    int r = gh_api_base(src, &g->base);
    if (r == 0)
        r = gh_scope(src, &g->scope);
    if (r == 0)
        r = gh_runner_prefix(g->b.cfg, src->name, &g->prefix);
    if (r < 0)
        return r;
    static const char *const implied[] = {"self-hosted", "Linux", "X64"};
    for (size_t i = 0; i < ARRAY_SIZE(implied); i++) {
        if ((r = add_label(g, implied[i])) < 0)
            return r;
    }
    for (char **l = src->labels; l && *l; l++) {
        if ((r = add_label(g, *l)) < 0)
            return r == -E2BIG ? al_error_set(err, E2BIG, "more than %d labels", GITHUB_MAX_LABELS)
                               : r;
    }
    char text[1024];
    gh_labels_text(g->labels, g->n_labels, text, sizeof(text));
    if (!(g->labels_text = strdup(text)))
        return -ENOMEM;
    if ((r = collect_pool_labels(g)) < 0)
        return r;
    /* what polling looks at */
    size_t np = 0;
    if (*src->repo)
        np = 1;
    else
        for (char **p = src->repos; p && *p; p++)
            np++;
    g->poll_repos = calloc(np ? np : 1, sizeof(*g->poll_repos));
    g->runs = calloc(MAX_RUNS_SEEN, sizeof(*g->runs));
    if (!g->poll_repos || !g->runs)
        return -ENOMEM;
    for (size_t i = 0; i < np; i++) {
        int k = *src->repo ? asprintf(&g->poll_repos[i].repo, "%s", src->repo)
                           : asprintf(&g->poll_repos[i].repo, "%s/%s", src->org, src->repos[i]);
        if (k < 0) {
            g->poll_repos[i].repo = NULL;
            return -ENOMEM;
        }
        g->n_poll_repos++;
    }
    bool listen = *src->webhook_listen;
    uint64_t every = (uint64_t)src->poll_interval_s * 1000u;
    g->polling_enabled = src->poll != GITHUB_POLL_NEVER && g->n_poll_repos > 0;
    g->poll_every_ms = listen && src->poll == GITHUB_POLL_AUTO && every < HOOKED_POLL_MS
                               ? HOOKED_POLL_MS
                               : every;
    return 0;
}

/* g's credential, its API call queue and, when one is configured, its
 * webhook listener. What was made before a failure is freed by
 * github_free_early(). */
static int open_clients(struct github *g, struct al_error **err)
{
    const struct config_source *src = g->b.src;
    int r = gh_auth_new(src, g->b.curl, g->base, on_auth_refreshed, g, &g->auth, err);
    if (r < 0)
        return r;
    static const char *const headers[] = {"Accept: application/vnd.github+json", API_VERSION_HEADER,
                                          NULL};
    char qname[128];
    snprintf(qname, sizeof(qname), "github %s", src->name);
    struct api_queue_params qp = {
            .loop = g->b.loop,
            .curl = g->b.curl,
            .base = g->base,
            .name = qname,
            .headers = headers,
            .max_inflight = MAX_INFLIGHT,
            .timeout_ms = CALL_TIMEOUT_MS,
            .final_timeout_ms = FINAL_TIMEOUT_MS,
            .max_response = GITHUB_MAX_DOCUMENT + 1,
            .auth_ops = &auth_ops,
            .auth = g->auth,
            .rate_limited = secondary_rate_limit,
            .settled = on_api_settled,
            .data = g,
    };
    r = api_queue_new(&qp, &g->api, err);
    if (r < 0 || !*src->webhook_listen)
        return r;
    struct github_hook_params hp = {
            .loop = g->b.loop,
            .name = src->name,
            .listen = src->webhook_listen,
            .secret_file = src->webhook_secret_file,
            .max_body = src->webhook_max_body,
            .on_job = gh_on_webhook_job,
            .data = g,
    };
    r = github_hook_new(&hp, &g->hook, err);
    if (r == 0)
        g->hook_open = true;
    return r;
}

int github_start(uv_loop_t *loop, struct engine *e, struct al_curl *curl, const struct config *cfg,
                 const struct config_source *src, struct github **ret, struct al_error **err)
{
    if (!curl)
        return al_error_set(err, EINVAL, "no HTTP client");
    int r = check_config(src, err);
    if (r < 0)
        return r;
    struct github *g = calloc(1, sizeof(*g));
    if (!g)
        return al_error_set(err, ENOMEM, "out of memory");
    gh_base_init(&g->b, loop, e, curl, cfg, src);
    al_list_init(&g->runners);
    al_list_init(&g->demand);
    r = setup(g, err);
    if (r == -ENOMEM)
        r = al_error_set(err, ENOMEM, "out of memory");
    if (r == 0)
        r = open_clients(g, err);
    if (r < 0) {
        github_free_early(g);
        return r;
    }
    g->b.handles_open = 1; /* the API queue; gh_base_start() adds the timers */
    uint64_t now = al_now_mono_ms();
    g->next_sweep_ms = now; /* the start-up sweep: runners a previous process left */
    g->next_poll_ms = now;
    gh_base_start(&g->b, g, &observer, on_tick, TICK_MS);
    char name[160];
    snprintf(name, sizeof(name), "github %s", g->b.name);
    /* jobs a previous agentlabd left queued: their JIT configs died with it
     * (secret values are never stored) */
    orphans_cancel(g->b.e, JOB_SOURCE_GITHUB, name, NULL, NULL,
                   "its JIT runner config was lost with the previous agentlabd (the runner "
                   "is deleted by the sweep)");
    char where[128] = "no webhook listener";
    if (g->hook)
        snprintf(where, sizeof(where), "webhooks on port %d", github_hook_port(g->hook));
    log_info(NULL,
             "github %s: serving %s%s at %s with %s auth; %s; %s; labels [%s]; runner names "
             "%s*; max_runners %d",
             src->name, *src->repo ? "repository " : "organisation ",
             *src->repo ? src->repo : src->org, g->base,
             github_auth_is_app(g->auth) ? "GitHub App" : "token", where,
             g->polling_enabled ? "polling" : "no polling", g->labels_text, g->prefix,
             src->max_runners);
    if (g->polling_enabled)
        log_info(NULL, "github %s: polling every %" PRIu64 " s", src->name,
                 g->poll_every_ms / 1000);
    *ret = g;
    return 0;
}

int github_webhook_port(const struct github *g)
{
    return g->hook ? github_hook_port(g->hook) : 0;
}

static void on_hook_stopped(void *data)
{
    struct github *g = data;
    g->hook = NULL;
    g->hook_open = false;
    maybe_stopped(g);
}

static void maybe_stopped(struct github *g)
{
    if (!g->b.stopping || g->b.in_stop || g->b.closing || g->hook_open || api_queue_busy(g->api))
        return;
    github_auth_free(g->auth);
    g->auth = NULL;
    api_queue_free(g->api, on_api_closed, g);
    g->api = NULL;
    gh_base_close(&g->b, on_handle_closed);
}

void github_stop(struct github *g, void (*done)(void *data), void *data)
{
    /* in_stop: cancelling calls in flight runs their callbacks, which must
     * not close the source before the deletes below are queued */
    gh_base_stop(&g->b, done, data);
    if (g->hook)
        github_hook_stop(g->hook, on_hook_stopped, g);
    /* queued calls are dropped; calls in flight end now */
    api_queue_stop(g->api);
    /* idle runners must not be handed jobs their VMs will never run: one
     * DELETE each, short timeouts; busy ones are left to the next sweep */
    al_list_for_each(r, &g->runners, struct ghrunner, link) {
        if (r->id && !r->deleted && !r->deleting && (r->state == R_IDLE || r->state == R_ENDING)) {
            r->retire_reason = NULL;
            gh_runner_delete(r);
        }
    }
    if (api_queue_refreshing(g->api)) {
        /* no token yet: nothing can be deleted */
        api_queue_drop_auth(g->api);
        github_auth_free(g->auth);
        g->auth = NULL;
    }
    g->b.in_stop = false;
    maybe_stopped(g);
}
