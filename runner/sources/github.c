#include "runner/sources/github.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yajl/yajl_gen.h>

#include "runner/base/buf.h"
#include "runner/base/log.h"
#include "runner/base/sha256.h"
#include "runner/base/util.h"
#include "runner/loop/http_client.h"
#include "runner/loop/api_queue.h"
#include "runner/sources/github_auth.h"
#include "runner/sources/github_hook.h"
#include "runner/sources/github_payload.h"

#define API_VERSION_HEADER   "X-GitHub-Api-Version: 2022-11-28"
#define MAX_INFLIGHT         4
#define CALL_TIMEOUT_MS      30000L
#define FINAL_TIMEOUT_MS     5000L
#define TICK_MS              1000u
#define SWEEP_EVERY_MS       60000u
#define HOOKED_POLL_MS       60000u  /* catch-up poll beside webhooks */
#define VERIFY_AFTER_MS      60000u  /* a job waiting this long is checked before serving */
#define DONE_GRACE_MS        120000u /* VM still up after its runner's job completed */
#define DEMAND_KEEP_MS       (60u * 60 * 1000)
#define MAX_DEMAND           4096
#define MAX_RUNNERS_PER_JOB  3 /* runners made for one job that none of them took */
#define MAX_RUNS_SEEN        1024
#define RUNS_PER_PAGE        50
#define RUNNER_PAGES         10
#define DELETE_TRIES         20
#define DELETE_RETRY_MS      30000u
#define BACKOFF_MIN_MS       5000u
#define BACKOFF_MAX_MS       (5u * 60 * 1000)
#define POLL_LOW_REMAINING   100
#define RATE_LIMIT_DEFAULT_S 60

enum rstate {
    R_CREATING, /* generate-jitconfig in flight */
    R_IDLE,     /* the VM runs the runner, which has no job yet */
    R_BUSY,     /* it took a job */
    R_DONE,     /* GitHub says its job completed; the VM should end soon */
    R_ENDING,   /* its VM is gone (or never existed): deleting it from GitHub */
    R_DEAD,     /* nothing left to do; freed by the next tick */
};

struct ghdemand;

struct ghrunner {
    struct github *g;
    struct ghrunner *next;
    char name[64];
    int64_t id;              /* GitHub's runner id; 0 until known */
    struct ghdemand *demand; /* the job it was made for, or NULL */
    char engine_id[STORE_JOB_ID_SIZE];
    bool submitted;
    enum rstate state;
    uint64_t created_ms;
    uint64_t done_ms;
    int64_t took_job;
    bool vm_gone;              /* no VM (any more) */
    bool deleted;              /* GitHub no longer has it */
    bool deleting;             /* a DELETE is in flight */
    bool stopping_vm;          /* engine_cancel was called */
    const char *retire_reason; /* why the VM is stopped once the delete succeeded */
    int delete_tries;
    uint64_t next_delete_ms;
    unsigned calls; /* requests in flight that point at it */
};

enum dstate {
    D_WAITING, /* wants a runner */
    D_SERVED,  /* a runner was made for it */
    D_TAKEN,   /* a runner (any) runs it */
    D_DONE,    /* completed, or not ours to serve */
};

struct ghdemand {
    struct ghdemand *next;
    int64_t job_id;
    char *repo;
    char *name;
    char *html_url;
    enum dstate state;
    struct ghrunner *runner;
    uint64_t since_ms;     /* waiting since */
    uint64_t touched_ms;   /* last change */
    bool verify;           /* check it is still queued before serving */
    bool checking;         /* a GET of the job is in flight */
    unsigned runners_made; /* runners with a VM made for it so far */
};

struct ghrun_seen {
    int64_t id;
    char updated_at[40];
    uint64_t seen_ms;
};

struct ghpoll_repo {
    char *repo;    /* owner/name */
    char *etag[2]; /* of the queued and in_progress run lists */
};

typedef void (*gh_cb)(struct github *g, int result, const struct al_http_response *resp,
                      const struct al_error *err, void *data);

struct github {
    uv_loop_t *loop;
    struct engine *e;
    struct al_curl *curl;
    const struct config *cfg;
    const struct config_source *src;
    const char *name;
    char *base;    /* API base URL, no trailing slash */
    char *scope;   /* "/repos/OWNER/NAME" or "/orgs/ORG" */
    char *prefix;  /* runner names start with it */
    char **labels; /* the runners' labels */
    size_t n_labels;
    char *labels_text;
    struct github_auth *auth;
    struct github_hook *hook;
    struct engine_watch *watch;

    struct api_queue *api; /* every call to GitHub's API */
    uv_timer_t tick_timer;
    uv_timer_t serve_timer; /* serve() on the next loop turn: observers never re-enter the engine */

    struct ghrunner *runners;
    struct ghdemand *demand, *demand_tail;
    unsigned n_demand;
    uint64_t serve_after_ms;
    uint64_t serve_backoff_ms;
    bool max_logged;

    uint64_t next_sweep_ms;
    bool sweeping;
    int sweep_page;
    bool sweep_failed;

    bool polling_enabled;
    uint64_t poll_every_ms;
    uint64_t next_poll_ms;
    unsigned poll_calls;
    bool poll_low_logged;
    bool poll_round_failed;   /* a call of the current poll round failed */
    uint64_t poll_backoff_ms; /* after failed rounds; 0 while polling works */
    struct ghpoll_repo *poll_repos;
    size_t n_poll_repos;
    struct ghrun_seen *runs;
    size_t n_runs;

    bool stopping;
    bool in_stop; /* github_stop() is still queueing its last calls */
    bool hook_open;
    bool closed;
    int handles_open;
    void (*done)(void *data);
    void *done_data;
};

static void serve(struct github *g);
static void runner_retire(struct ghrunner *r, const char *reason);
static void runner_delete(struct ghrunner *r);
static void maybe_stopped(struct github *g);

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

/* "HTTP 422: message" of an answer, for logs. */
static void describe(const struct al_http_response *resp, char *buf, size_t size)
{
    char m[200];
    github_error_message(resp->body.data, resp->body.len, m, sizeof(m));
    snprintf(buf, size, "HTTP %ld%s%s", resp->status, *m ? ": " : "", m);
}

static void describe_result(int result, const struct al_http_response *resp,
                            const struct al_error *err, char *buf, size_t size)
{
    if (result == 0)
        describe(resp, buf, size);
    else
        snprintf(buf, size, "%s", al_error_message(err));
}

static bool repo_in_scope(const struct github *g, const char *repo)
{
    if (*g->src->repo)
        return strcasecmp(repo, g->src->repo) == 0;
    size_t n = strlen(g->src->org);
    return strncasecmp(repo, g->src->org, n) == 0 && repo[n] == '/';
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
static void gh_call_etag(struct github *g, const char *method, char *path, char *body,
                         const char *etag, gh_cb cb, void *data)
{
    struct gh_call *c = malloc(sizeof(*c));
    if (!c) {
        free(path);
        al_wipe_free(body);
        struct al_error *err = NULL;
        al_error_set(&err, ENOMEM, "out of memory");
        cb(g, -ENOMEM, NULL, err, data);
        al_error_free(err);
        return;
    }
    *c = (struct gh_call){.g = g, .cb = cb, .data = data};
    api_queue_call(g->api, method, path, body, etag, on_call_done, c);
}

static void gh_call(struct github *g, const char *method, char *path, char *body, gh_cb cb,
                    void *data)
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

/* ------------------------------------------------------------ demand */

static struct ghdemand *demand_find(struct github *g, int64_t job_id)
{
    for (struct ghdemand *d = g->demand; d; d = d->next) {
        if (d->job_id == job_id)
            return d;
    }
    return NULL;
}

static void demand_set(struct ghdemand *d, enum dstate s)
{
    d->state = s;
    d->touched_ms = now_ms();
    if (s == D_WAITING)
        d->since_ms = d->touched_ms;
}

static void demand_free(struct ghdemand *d)
{
    free(d->repo);
    free(d->name);
    free(d->html_url);
    free(d);
}

/* Drops finished entries after an hour (they only guard against late and
 * repeated deliveries); frees room when the list is full. */
static void demand_prune(struct github *g, bool make_room)
{
    uint64_t now = now_ms();
    struct ghdemand **pp = &g->demand;
    g->demand_tail = NULL;
    while (*pp) {
        struct ghdemand *d = *pp;
        bool old = (d->state == D_DONE || d->state == D_TAKEN) && !d->runner && !d->checking &&
                   (now - d->touched_ms > DEMAND_KEEP_MS || make_room);
        if (old && make_room && g->n_demand < MAX_DEMAND)
            old = false;
        if (old) {
            *pp = d->next;
            demand_free(d);
            g->n_demand--;
            continue;
        }
        g->demand_tail = d;
        pp = &d->next;
    }
}

static struct ghdemand *demand_add(struct github *g, const struct github_job *j, const char *repo)
{
    if (g->n_demand >= MAX_DEMAND)
        demand_prune(g, true);
    if (g->n_demand >= MAX_DEMAND) {
        log_warn(NULL, "github %s: %u queued jobs known already; job %" PRId64 " not taken",
                 g->name, g->n_demand, j->id);
        return NULL;
    }
    struct ghdemand *d = calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    d->job_id = j->id;
    d->repo = strdup(repo);
    d->name = j->name ? strdup(j->name) : NULL;
    d->html_url = j->html_url ? strdup(j->html_url) : NULL;
    if (!d->repo) {
        demand_free(d);
        return NULL;
    }
    demand_set(d, D_DONE);
    if (g->demand_tail)
        g->demand_tail->next = d;
    else
        g->demand = d;
    g->demand_tail = d;
    g->n_demand++;
    return d;
}

static struct ghrunner *runner_by_name(struct github *g, const char *name)
{
    if (!name)
        return NULL;
    for (struct ghrunner *r = g->runners; r; r = r->next) {
        if (r->state != R_DEAD && streq(r->name, name))
            return r;
    }
    return NULL;
}

static bool is_ours(const struct github *g, const char *name)
{
    return name && strncmp(name, g->prefix, strlen(g->prefix)) == 0;
}

static void labels_text(char *const *labels, size_t n, char *buf, size_t size)
{
    size_t o = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < n && o + 1 < size; i++) {
        int w = snprintf(buf + o, size - o, "%s%s", i ? ", " : "", labels[i]);
        if (w < 0 || (size_t)w >= size - o)
            break;
        o += (size_t)w;
    }
}

/* A workflow job seen by the webhook or the poller. via: "webhook" or "poll". */
static void handle_job(struct github *g, const struct github_job *j, const char *repo,
                       const char *via)
{
    if (g->stopping)
        return;
    if (!repo_in_scope(g, repo)) {
        log_debug(NULL, "github %s: job %" PRId64 " of %s: not in this source's scope", g->name,
                  j->id, repo);
        return;
    }
    enum github_action a = j->action;
    if (a == GITHUB_ACTION_NONE) {
        if (streq(j->status, "queued"))
            a = GITHUB_ACTION_QUEUED;
        else if (streq(j->status, "in_progress"))
            a = GITHUB_ACTION_IN_PROGRESS;
        else if (streq(j->status, "completed"))
            a = GITHUB_ACTION_COMPLETED;
        else
            a = GITHUB_ACTION_WAITING;
    }
    struct ghdemand *d = demand_find(g, j->id);
    struct ghrunner *r = is_ours(g, j->runner_name) ? runner_by_name(g, j->runner_name) : NULL;
    switch (a) {
    case GITHUB_ACTION_QUEUED: {
        if (d)
            return; /* known: served, running, done, or not ours */
        bool match = github_labels_match(j->labels, j->n_labels, g->labels, g->n_labels);
        d = demand_add(g, j, repo);
        if (!d)
            return;
        char want[512];
        labels_text(j->labels, j->n_labels, want, sizeof(want));
        if (!match) {
            log_info(NULL,
                     "github %s: job %" PRId64 " (%s) of %s wants [%s]: not all among this "
                     "source's labels [%s]; not served",
                     g->name, j->id, j->name ? j->name : "unnamed", repo, want, g->labels_text);
            return;
        }
        log_info(NULL, "github %s: job %" PRId64 " (%s) of %s queued (%s), labels [%s]", g->name,
                 j->id, j->name ? j->name : "unnamed", repo, via, want);
        demand_set(d, D_WAITING);
        serve(g);
        return;
    }
    case GITHUB_ACTION_IN_PROGRESS:
        if (d && d->state != D_DONE)
            demand_set(d, D_TAKEN);
        else if (!d && (d = demand_add(g, j, repo)))
            demand_set(d, D_TAKEN);
        if (r && (r->state == R_IDLE || r->state == R_CREATING)) {
            r->state = R_BUSY;
            r->took_job = j->id;
            log_info(r->submitted ? r->engine_id : NULL,
                     "github %s: runner %s took job %" PRId64 " (%s)", g->name, r->name, j->id,
                     j->name ? j->name : "unnamed");
        }
        return;
    case GITHUB_ACTION_COMPLETED: {
        struct ghrunner *made_for = d ? d->runner : NULL;
        if (d)
            demand_set(d, D_DONE);
        else if ((d = demand_add(g, j, repo)))
            demand_set(d, D_DONE);
        if (r && r->state != R_ENDING && r->state != R_DEAD) {
            if (r->state != R_DONE)
                log_info(r->submitted ? r->engine_id : NULL,
                         "github %s: runner %s finished job %" PRId64 " (%s)", g->name, r->name,
                         j->id, j->conclusion ? j->conclusion : "no conclusion");
            r->state = R_DONE;
            r->took_job = j->id;
            r->done_ms = now_ms();
        }
        if (made_for && made_for != r && made_for->state == R_IDLE)
            runner_retire(made_for, "the job it was made for ended without it");
        return;
    }
    case GITHUB_ACTION_WAITING:
    case GITHUB_ACTION_OTHER:
    case GITHUB_ACTION_NONE:
        return;
    }
}

static void on_webhook_job(const struct github_job *job, const char *delivery, void *data)
{
    struct github *g = data;
    (void)delivery;
    handle_job(g, job, job->repo, "webhook");
}

/* ------------------------------------------------------------ capacity */

static unsigned runners_live(const struct github *g, unsigned *ret_creating)
{
    unsigned n = 0, c = 0;
    for (struct ghrunner *r = g->runners; r; r = r->next) {
        if (r->state == R_ENDING || r->state == R_DEAD)
            continue;
        n++;
        if (r->state == R_CREATING)
            c++;
    }
    if (ret_creating)
        *ret_creating = c;
    return n;
}

/* True when the pool has a free VM slot beyond the jobs already waiting. */
static bool engine_room(struct github *g)
{
    unsigned creating = 0;
    runners_live(g, &creating);
    struct engine_admit a = {.pool = g->src->pool, .start_now = true, .held = creating};
    return engine_admit(g->e, &a, NULL, 0) == ENGINE_ADMIT_YES;
}

/* ------------------------------------------------------------ runners */

static struct ghrunner *runner_new(struct github *g)
{
    struct ghrunner *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->g = g;
    char *rnd = al_random_hex(4);
    if (!rnd) {
        free(r);
        return NULL;
    }
    snprintf(r->name, sizeof(r->name), "%s%s", g->prefix, rnd);
    free(rnd);
    r->created_ms = now_ms();
    r->next = g->runners;
    g->runners = r;
    return r;
}

/* Unlinks the runner from its job's bookkeeping. took: it ran a job. */
static void runner_release_demand(struct ghrunner *r)
{
    struct ghdemand *d = r->demand;
    if (!d)
        return;
    r->demand = NULL;
    if (d->runner == r)
        d->runner = NULL;
    if (d->state != D_SERVED)
        return;
    if (d->runners_made >= MAX_RUNNERS_PER_JOB) {
        /* something keeps GitHub from handing it to our runners: stop
         * booting VMs for it */
        log_warn(NULL,
                 "github %s: job %" PRId64 ": %u runners made for it took no job; not served "
                 "again (check the runner group's repository access and the job's labels)",
                 r->g->name, d->job_id, d->runners_made);
        demand_set(d, D_DONE);
        return;
    }
    /* it never ran the job: serve it again if GitHub still has it queued */
    demand_set(d, D_WAITING);
    d->verify = true;
}

static void runner_set_dead(struct ghrunner *r)
{
    runner_release_demand(r);
    r->state = R_DEAD;
}

static int env_add(struct job_env_var **v, size_t *n, const char *name, const char *value)
{
    struct job_env_var *g = realloc(*v, (*n + 1) * sizeof(**v));
    if (!g)
        return -ENOMEM;
    *v = g;
    g[*n].name = strdup(name);
    g[*n].value = strdup(value);
    if (!g[*n].name || !g[*n].value) {
        free(g[*n].name);
        al_wipe_free(g[*n].value);
        return -ENOMEM;
    }
    (*n)++;
    return 0;
}

/* The VM's job: run the actions runner, which reads its --jitconfig input
 * from ACTIONS_RUNNER_INPUT_JITCONFIG (not argv, which every process in
 * the guest can read in /proc). */
static int runner_spec(struct ghrunner *r, char *jit, struct job_spec **ret, struct al_error **err)
{
    struct github *g = r->g;
    _cleanup_job_spec_ struct job_spec *spec = calloc(1, sizeof(*spec));
    if (!spec) {
        al_wipe_free(jit);
        return al_error_set(err, ENOMEM, "out of memory");
    }
    spec->inject = -1;
    int rc = env_add(&spec->secret_env, &spec->n_secret_env, "ACTIONS_RUNNER_INPUT_JITCONFIG", jit);
    al_wipe_free(jit);
    const char *dir = g->src->runner_dir;
    struct ghdemand *d = r->demand;
    rc |= env_add(&spec->env, &spec->n_env, "AGENTLAB_GITHUB_RUNNER", r->name);
    if (asprintf(&spec->script,
                 "# agentlab: GitHub Actions runner %s (one job, then this VM is gone)\n"
                 "cd '%s' 2>/dev/null || { echo 'agentlab: no actions runner in %s (build the "
                 "image from the debian-12-actions recipe)' >&2; exit 127; }\n"
                 "exec ./run.sh\n",
                 r->name, dir, dir) < 0)
        spec->script = NULL;
    if (asprintf(&spec->name, "github runner %s", r->name) < 0)
        spec->name = NULL;
    spec->source.type = JOB_SOURCE_GITHUB;
    spec->source.id = strdup(r->name);
    if (d && d->html_url && strlen(d->html_url) <= JOB_SPEC_MAX_URL)
        spec->source.url = strdup(d->html_url);
    if (*g->src->pool)
        spec->pool = strdup(g->src->pool);
    spec->max_attempts = 1; /* a JIT config is good for one runner */
    if (rc || !spec->script || !spec->name || !spec->source.id || (*g->src->pool && !spec->pool))
        return al_error_set(err, ENOMEM, "out of memory");
    *ret = TAKE_PTR(spec);
    return 0;
}

static void on_runner_created(struct github *g, int result, const struct al_http_response *resp,
                              const struct al_error *err, void *data);

static int generate_body(const struct github *g, const char *name, char **ret)
{
    yajl_gen gen = yajl_gen_alloc(NULL);
    if (!gen)
        return -ENOMEM;
    int r = yajl_gen_map_open(gen);
    r |= yajl_gen_string(gen, (const unsigned char *)"name", 4);
    r |= yajl_gen_string(gen, (const unsigned char *)name, strlen(name));
    r |= yajl_gen_string(gen, (const unsigned char *)"runner_group_id", 15);
    r |= yajl_gen_integer(gen, g->src->runner_group_id);
    r |= yajl_gen_string(gen, (const unsigned char *)"labels", 6);
    r |= yajl_gen_array_open(gen);
    for (size_t i = 0; i < g->n_labels; i++)
        r |= yajl_gen_string(gen, (const unsigned char *)g->labels[i], strlen(g->labels[i]));
    r |= yajl_gen_array_close(gen);
    r |= yajl_gen_string(gen, (const unsigned char *)"work_folder", 11);
    r |= yajl_gen_string(gen, (const unsigned char *)"_work", 5);
    r |= yajl_gen_map_close(gen);
    const unsigned char *buf = NULL;
    size_t len = 0;
    char *s = NULL;
    if (r == yajl_gen_status_ok && yajl_gen_get_buf(gen, &buf, &len) == yajl_gen_status_ok)
        s = strndup((const char *)buf, len);
    yajl_gen_free(gen);
    if (!s)
        return r ? -EINVAL : -ENOMEM;
    *ret = s;
    return 0;
}

static void runner_create(struct github *g, struct ghdemand *d)
{
    struct ghrunner *r = runner_new(g);
    char *body = NULL;
    if (!r || generate_body(g, r->name, &body) < 0) {
        if (r)
            r->state = R_DEAD;
        return;
    }
    r->state = R_CREATING;
    r->demand = d;
    d->runner = r;
    demand_set(d, D_SERVED);
    d->verify = false;
    char *path = NULL;
    if (asprintf(&path, "%s/actions/runners/generate-jitconfig", g->scope) < 0)
        path = NULL;
    r->calls++;
    gh_call(g, "POST", path, body, on_runner_created, r);
}

static void serve_fail(struct github *g, struct ghrunner *r, const char *fmt, ...) _printf_(3, 4);
static void serve_fail(struct github *g, struct ghrunner *r, const char *fmt, ...)
{
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    backoff_grow(&g->serve_backoff_ms);
    g->serve_after_ms = now_ms() + al_jitter_ms(g->serve_backoff_ms);
    log_error(NULL, "github %s: runner %s for job %" PRId64 ": %s; trying again in %" PRIu64 " s",
              g->name, r->name, r->demand ? r->demand->job_id : 0, msg, g->serve_backoff_ms / 1000);
}

static void on_runner_created(struct github *g, int result, const struct al_http_response *resp,
                              const struct al_error *err, void *data)
{
    struct ghrunner *r = data;
    r->calls--;
    if (result == -ECANCELED || g->stopping) {
        /* GitHub may have made it: the next start's sweep deletes it */
        runner_set_dead(r);
        return;
    }
    if (result < 0 || resp->status != 201) {
        char what[300];
        describe_result(result, resp, err, what, sizeof(what));
        if (result == 0 && resp->status == 409) {
            /* the name is taken (very unlikely with 32 random bits): another name */
            struct ghdemand *d = r->demand;
            runner_set_dead(r);
            if (d && d->state == D_WAITING) {
                d->verify = false;
                runner_create(g, d);
            }
            return;
        }
        serve_fail(g, r, "generate-jitconfig failed: %s", what);
        runner_set_dead(r);
        return;
    }
    int64_t id = 0;
    char *jit = NULL;
    struct al_error *perr = NULL;
    int rc = github_parse_jitconfig(resp->body.data, resp->body.len, &id, &jit, &perr);
    /* the answer held the config: leave nothing in the freed buffer */
    explicit_bzero(resp->body.data, resp->body.len);
    if (rc < 0) {
        serve_fail(g, r, "the generate-jitconfig answer: %s", al_error_message(perr));
        al_error_free(perr);
        runner_set_dead(r);
        return;
    }
    r->id = id;
    /* the spec takes the config over; the engine registers it with the
     * redactor before anything could print it */
    struct job_spec *spec = NULL;
    struct al_error *serr = NULL;
    char eid[STORE_JOB_ID_SIZE];
    rc = runner_spec(r, jit, &spec, &serr);
    if (rc == 0)
        rc = engine_submit(g->e, spec, &(struct engine_submit){0}, eid, &serr);
    if (rc < 0) {
        serve_fail(g, r, "agentlab refused the runner's VM: %s", al_error_message(serr));
        al_error_free(serr);
        r->vm_gone = true;
        runner_retire(r, NULL);
        return;
    }
    g->serve_backoff_ms = 0;
    if (r->demand)
        r->demand->runners_made++;
    memcpy(r->engine_id, eid, sizeof(eid));
    r->submitted = true;
    r->vm_gone = false;
    r->created_ms = now_ms();
    if (r->state == R_CREATING)
        r->state = R_IDLE;
    struct ghdemand *d = r->demand;
    log_info(eid, "github %s: runner %s (id %" PRId64 ") for job %" PRId64 " (%s) runs as %s",
             g->name, r->name, r->id, d ? d->job_id : 0, d && d->name ? d->name : "unnamed", eid);
}

static void runner_stop_vm(struct ghrunner *r, const char *why)
{
    if (r->vm_gone || !r->submitted || r->stopping_vm)
        return;
    r->stopping_vm = true;
    log_info(r->engine_id, "github %s: runner %s: %s; stopping its VM", r->g->name, r->name, why);
    struct al_error *err = NULL;
    /* may finish the job at once (observers run inside) */
    if (engine_cancel(r->g->e, r->engine_id, &err) < 0 && err && err->code != EALREADY &&
        err->code != ENOENT)
        log_warn(r->engine_id, "github %s: cancel: %s", r->g->name, al_error_message(err));
    al_error_free(err);
}

static void on_runner_deleted(struct github *g, int result, const struct al_http_response *resp,
                              const struct al_error *err, void *data)
{
    struct ghrunner *r = data;
    r->calls--;
    r->deleting = false;
    const char *eid = r->submitted ? r->engine_id : NULL;
    if (result == 0 && (resp->status == 204 || resp->status == 404)) {
        r->deleted = true;
        log_info(eid, "github %s: runner %s (id %" PRId64 ") %s", g->name, r->name, r->id,
                 resp->status == 204 ? "deleted from GitHub" : "is gone from GitHub already");
        if (r->retire_reason && !r->vm_gone)
            runner_stop_vm(r, r->retire_reason);
        if (r->vm_gone)
            runner_set_dead(r);
        return;
    }
    if (result == 0 && resp->status == 422) {
        /* GitHub refuses to delete a busy runner: it is running a job */
        if (r->state == R_IDLE) {
            log_info(eid, "github %s: runner %s is busy with a job; kept", g->name, r->name);
            r->state = R_BUSY;
        } else if (r->delete_tries == 0) {
            log_info(eid,
                     "github %s: runner %s is busy with a job (HTTP 422); kept, deleting it "
                     "again later",
                     g->name, r->name);
        }
        r->retire_reason = NULL;
        if (r->vm_gone && ++r->delete_tries >= DELETE_TRIES) {
            log_warn(eid,
                     "github %s: runner %s still counts as busy %d tries after its VM ended; "
                     "the next sweep tries again",
                     g->name, r->name, r->delete_tries);
            runner_set_dead(r);
            return;
        }
        r->next_delete_ms = now_ms() + DELETE_RETRY_MS;
        return;
    }
    if (result == -ECANCELED || g->stopping) {
        if (r->vm_gone)
            runner_set_dead(r);
        return;
    }
    char what[300];
    describe_result(result, resp, err, what, sizeof(what));
    log_warn(eid, "github %s: deleting runner %s (id %" PRId64 "): %s", g->name, r->name, r->id,
             what);
    if (++r->delete_tries >= DELETE_TRIES && r->vm_gone) {
        runner_set_dead(r);
        return;
    }
    r->next_delete_ms = now_ms() + al_jitter_ms(DELETE_RETRY_MS);
}

static void runner_delete(struct ghrunner *r)
{
    struct github *g = r->g;
    if (r->deleting || r->deleted)
        return;
    if (!r->id) {
        /* GitHub never gave it an id: nothing to delete */
        r->deleted = true;
        if (r->vm_gone)
            runner_set_dead(r);
        return;
    }
    char *path = NULL;
    if (asprintf(&path, "%s/actions/runners/%" PRId64, g->scope, r->id) < 0)
        path = NULL;
    r->deleting = true;
    r->calls++;
    gh_call(g, "DELETE", path, NULL, on_runner_deleted, r);
}

/* Removes the runner from GitHub; with reason (the VM is still up) its VM
 * is stopped once GitHub agreed, so a runner that took a job at the last
 * moment keeps its VM. */
static void runner_retire(struct ghrunner *r, const char *reason)
{
    if (r->state == R_DEAD)
        return;
    if (reason && !r->vm_gone) {
        if (r->retire_reason || r->deleting)
            return;
        log_info(r->submitted ? r->engine_id : NULL, "github %s: runner %s: %s; removing it",
                 r->g->name, r->name, reason);
        r->retire_reason = reason;
        runner_delete(r);
        return;
    }
    r->state = R_ENDING;
    runner_delete(r);
}

/* ------------------------------------------------------------ serving */

static void on_job_checked(struct github *g, int result, const struct al_http_response *resp,
                           const struct al_error *err, void *data);

static void check_job(struct github *g, struct ghdemand *d)
{
    char *path = NULL;
    if (asprintf(&path, "/repos/%s/actions/jobs/%" PRId64, d->repo, d->job_id) < 0)
        path = NULL;
    d->checking = true;
    gh_call(g, "GET", path, NULL, on_job_checked, d);
}

static void on_job_checked(struct github *g, int result, const struct al_http_response *resp,
                           const struct al_error *err, void *data)
{
    struct ghdemand *d = data;
    d->checking = false;
    if (result == -ECANCELED || g->stopping)
        return;
    if (result < 0 || (resp->status != 200 && resp->status != 404)) {
        char what[300];
        describe_result(result, resp, err, what, sizeof(what));
        log_warn(NULL, "github %s: checking job %" PRId64 ": %s", g->name, d->job_id, what);
        backoff_grow(&g->serve_backoff_ms);
        g->serve_after_ms = now_ms() + al_jitter_ms(g->serve_backoff_ms);
        return;
    }
    struct github_job *j = NULL;
    struct al_error *perr = NULL;
    if (resp->status == 404 || github_parse_job(resp->body.data, resp->body.len, &j, &perr) < 0) {
        if (perr)
            log_warn(NULL, "github %s: job %" PRId64 ": %s", g->name, d->job_id,
                     al_error_message(perr));
        al_error_free(perr);
        demand_set(d, D_DONE);
        return;
    }
    if (d->state == D_WAITING && streq(j->status, "queued")) {
        d->verify = false;
        d->since_ms = now_ms();
        serve(g);
    } else if (d->state == D_WAITING) {
        log_info(NULL, "github %s: job %" PRId64 " is %s now; no runner needed", g->name, d->job_id,
                 j->status);
        demand_set(d, D_DONE);
    }
    github_job_free(j);
}

static void serve(struct github *g)
{
    if (g->stopping || g->closed)
        return;
    uint64_t now = now_ms();
    if (now < g->serve_after_ms)
        return;
    for (struct ghdemand *d = g->demand; d; d = d->next) {
        if (d->state != D_WAITING || d->checking)
            continue;
        if (runners_live(g, NULL) >= (unsigned)g->src->max_runners) {
            if (!g->max_logged)
                log_info(NULL, "github %s: %d runners live (max_runners); job %" PRId64 " waits",
                         g->name, g->src->max_runners, d->job_id);
            g->max_logged = true;
            return;
        }
        if (!engine_room(g))
            return;
        g->max_logged = false;
        if (d->verify || now - d->since_ms > VERIFY_AFTER_MS) {
            check_job(g, d);
            continue;
        }
        runner_create(g, d);
    }
}

/* ------------------------------------------------------------ sweep */

static void sweep_page(struct github *g, int page);

static void on_runners_listed(struct github *g, int result, const struct al_http_response *resp,
                              const struct al_error *err, void *data)
{
    int page = (int)(intptr_t)data;
    if (result == -ECANCELED || g->stopping) {
        g->sweeping = false;
        return;
    }
    if (result < 0 || resp->status != 200) {
        char what[300];
        describe_result(result, resp, err, what, sizeof(what));
        log_warn(NULL, "github %s: listing runners: %s", g->name, what);
        g->sweeping = false;
        return;
    }
    struct github_runner_list l = {0};
    struct al_error *perr = NULL;
    if (github_parse_runners(resp->body.data, resp->body.len, &l, &perr) < 0) {
        log_warn(NULL, "github %s: the runner list: %s", g->name, al_error_message(perr));
        al_error_free(perr);
        g->sweeping = false;
        return;
    }
    for (size_t i = 0; i < l.n; i++) {
        const struct github_runner *x = &l.v[i];
        if (!is_ours(g, x->name))
            continue;
        struct ghrunner *r = runner_by_name(g, x->name);
        if (r) {
            if (!r->id)
                r->id = x->id;
            if (x->busy && r->state == R_IDLE) {
                r->state = R_BUSY;
                log_info(r->submitted ? r->engine_id : NULL,
                         "github %s: runner %s is busy with a job", g->name, r->name);
            }
            continue;
        }
        /* no VM of this process runs it: left by a crash or a lost answer */
        r = runner_new(g);
        if (!r)
            continue;
        snprintf(r->name, sizeof(r->name), "%s", x->name);
        r->id = x->id;
        r->vm_gone = true;
        log_info(NULL, "github %s: runner %s (id %" PRId64 ", %s%s) has no VM here; deleting it",
                 g->name, r->name, r->id, x->status ? x->status : "status unknown",
                 x->busy ? ", busy" : "");
        runner_retire(r, NULL);
    }
    bool more = l.n > 0 && (int64_t)page * 100 < l.total_count && page < RUNNER_PAGES;
    github_runner_list_clear(&l);
    if (more) {
        sweep_page(g, page + 1);
        return;
    }
    g->sweeping = false;
}

static void sweep_page(struct github *g, int page)
{
    char *path = NULL;
    if (asprintf(&path, "%s/actions/runners?per_page=100&page=%d", g->scope, page) < 0)
        path = NULL;
    gh_call(g, "GET", path, NULL, on_runners_listed, (void *)(intptr_t)page);
}

static void sweep(struct github *g)
{
    if (g->sweeping || g->stopping)
        return;
    g->sweeping = true;
    sweep_page(g, 1);
}

/* ------------------------------------------------------------ polling */

struct poll_ctx {
    struct ghpoll_repo *pr;
    int which; /* 0 queued, 1 in_progress */
    int64_t run_id;
};

static struct ghrun_seen *run_seen(struct github *g, int64_t id)
{
    for (size_t i = 0; i < g->n_runs; i++) {
        if (g->runs[i].id == id)
            return &g->runs[i];
    }
    return NULL;
}

/* Records a run; true when it is new or changed since the last look. */
static bool run_changed(struct github *g, const struct github_run *run)
{
    const char *u = run->updated_at ? run->updated_at : "";
    struct ghrun_seen *s = run_seen(g, run->id);
    uint64_t now = now_ms();
    if (s) {
        bool changed = strncmp(s->updated_at, u, sizeof(s->updated_at) - 1) != 0;
        snprintf(s->updated_at, sizeof(s->updated_at), "%s", u);
        s->seen_ms = now;
        return changed;
    }
    if (g->n_runs == MAX_RUNS_SEEN) {
        size_t oldest = 0;
        for (size_t i = 1; i < g->n_runs; i++) {
            if (g->runs[i].seen_ms < g->runs[oldest].seen_ms)
                oldest = i;
        }
        s = &g->runs[oldest];
    } else {
        s = &g->runs[g->n_runs++];
    }
    s->id = run->id;
    snprintf(s->updated_at, sizeof(s->updated_at), "%s", u);
    s->seen_ms = now;
    return true;
}

/* A failed poll call: warned about once per streak of failed rounds (the
 * rest at debug level), so an unreachable GitHub does not flood the log. */
static void poll_failed(struct github *g, const char *fmt, ...) _printf_(2, 3);
static void poll_failed(struct github *g, const char *fmt, ...)
{
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (g->poll_backoff_ms)
        log_debug(NULL, "github %s: %s", g->name, msg);
    else
        log_warn(NULL, "github %s: %s", g->name, msg);
    g->poll_round_failed = true;
}

/* The end of one call of a poll round; the round's last one schedules the
 * next round, later after failed rounds (5 s doubling to 5 min). */
static void poll_call_done(struct github *g)
{
    if (g->poll_calls)
        g->poll_calls--;
    if (g->poll_calls)
        return;
    uint64_t wait = g->poll_every_ms;
    if (g->poll_round_failed) {
        bool first = !g->poll_backoff_ms;
        backoff_grow(&g->poll_backoff_ms);
        uint64_t b = al_jitter_ms(g->poll_backoff_ms);
        if (b > wait)
            wait = b;
        if (first)
            log_warn(NULL,
                     "github %s: polling again in %" PRIu64 " s, then less often while it "
                     "fails",
                     g->name, (wait + 999) / 1000);
    } else if (g->poll_backoff_ms) {
        log_info(NULL, "github %s: polling works again", g->name);
        g->poll_backoff_ms = 0;
    }
    g->poll_round_failed = false;
    g->next_poll_ms = now_ms() + wait;
}

static void on_jobs_listed(struct github *g, int result, const struct al_http_response *resp,
                           const struct al_error *err, void *data)
{
    struct poll_ctx *c = data;
    struct ghpoll_repo *pr = c->pr;
    int64_t run_id = c->run_id;
    free(c);
    if (result == -ECANCELED || g->stopping) {
        poll_call_done(g);
        return;
    }
    if (result < 0 || resp->status != 200) {
        char what[300];
        describe_result(result, resp, err, what, sizeof(what));
        poll_failed(g, "jobs of run %" PRId64 ": %s", run_id, what);
        struct ghrun_seen *s = run_seen(g, run_id);
        if (s)
            s->updated_at[0] = '\0'; /* look again next time */
        poll_call_done(g);
        return;
    }
    struct github_job_list l = {0};
    struct al_error *perr = NULL;
    if (github_parse_jobs(resp->body.data, resp->body.len, &l, &perr) < 0) {
        poll_failed(g, "jobs of run %" PRId64 ": %s", run_id, al_error_message(perr));
        al_error_free(perr);
        poll_call_done(g);
        return;
    }
    for (size_t i = 0; i < l.n; i++)
        handle_job(g, l.v[i], pr->repo, "poll");
    github_job_list_clear(&l);
    poll_call_done(g);
}

static void on_runs_listed(struct github *g, int result, const struct al_http_response *resp,
                           const struct al_error *err, void *data)
{
    struct poll_ctx *c = data;
    struct ghpoll_repo *pr = c->pr;
    int which = c->which;
    free(c);
    if (result == -ECANCELED || g->stopping) {
        poll_call_done(g);
        return;
    }
    if (result == 0 && resp->status == 304) {
        poll_call_done(g);
        return;
    }
    if (result < 0 || resp->status != 200) {
        char what[300];
        describe_result(result, resp, err, what, sizeof(what));
        poll_failed(g, "listing workflow runs of %s: %s", pr->repo, what);
        poll_call_done(g);
        return;
    }
    struct github_run_list l = {0};
    struct al_error *perr = NULL;
    if (github_parse_runs(resp->body.data, resp->body.len, &l, &perr) < 0) {
        poll_failed(g, "workflow runs of %s: %s", pr->repo, al_error_message(perr));
        al_error_free(perr);
        poll_call_done(g);
        return;
    }
    const char *etag = al_http_header(resp, "ETag");
    free(pr->etag[which]);
    pr->etag[which] = etag && strlen(etag) < 256 && !strpbrk(etag, "\r\n") ? strdup(etag) : NULL;
    for (size_t i = 0; i < l.n; i++) {
        if (!run_changed(g, &l.v[i]))
            continue;
        struct poll_ctx *jc = calloc(1, sizeof(*jc));
        char *path = NULL;
        if (!jc ||
            asprintf(&path, "/repos/%s/actions/runs/%" PRId64 "/jobs?filter=latest&per_page=100",
                     pr->repo, l.v[i].id) < 0) {
            free(jc);
            continue;
        }
        jc->pr = pr;
        jc->run_id = l.v[i].id;
        g->poll_calls++;
        gh_call(g, "GET", path, NULL, on_jobs_listed, jc);
    }
    github_run_list_clear(&l);
    poll_call_done(g);
}

static void poll_now(struct github *g)
{
    if (g->stopping || g->poll_calls)
        return;
    int64_t remaining, reset_s;
    api_queue_rate(g->api, &remaining, &reset_s);
    if (remaining >= 0 && remaining < POLL_LOW_REMAINING && reset_s > al_now_wall_ms() / 1000) {
        if (!g->poll_low_logged)
            log_warn(NULL,
                     "github %s: %" PRId64 " API calls left until the rate limit resets; "
                     "polling pauses",
                     g->name, remaining);
        g->poll_low_logged = true;
        g->next_poll_ms = now_ms() + g->poll_every_ms;
        return;
    }
    g->poll_low_logged = false;
    static const char *const status[2] = {"queued", "in_progress"};
    for (size_t i = 0; i < g->n_poll_repos; i++) {
        for (int w = 0; w < 2; w++) {
            struct poll_ctx *c = calloc(1, sizeof(*c));
            char *path = NULL;
            if (!c || asprintf(&path, "/repos/%s/actions/runs?status=%s&per_page=%d",
                               g->poll_repos[i].repo, status[w], RUNS_PER_PAGE) < 0) {
                free(c);
                continue;
            }
            c->pr = &g->poll_repos[i];
            c->which = w;
            g->poll_calls++;
            /* the etag stays in poll_repos until the answer replaces it */
            gh_call_etag(g, "GET", path, NULL, g->poll_repos[i].etag[w], on_runs_listed, c);
        }
    }
    if (!g->poll_calls)
        g->next_poll_ms = now_ms() + g->poll_every_ms;
}

/* ------------------------------------------------------------ the tick */

static void runners_tick(struct github *g)
{
    uint64_t now = now_ms();
    uint64_t idle_ms = (uint64_t)g->src->runner_idle_timeout_s * 1000u;
    for (struct ghrunner *r = g->runners; r; r = r->next) {
        switch (r->state) {
        case R_IDLE:
            if (now - r->created_ms > idle_ms)
                runner_retire(r, "it took no job within runner_idle_timeout");
            else if (r->retire_reason && !r->deleting && !r->deleted && now >= r->next_delete_ms)
                runner_delete(r);
            break;
        case R_DONE:
            if (!r->vm_gone && now - r->done_ms > DONE_GRACE_MS)
                runner_stop_vm(r, "its job completed over 2 minutes ago but the VM is still up");
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
    /* free what is over */
    for (struct ghrunner **pp = &g->runners; *pp;) {
        struct ghrunner *r = *pp;
        if (r->state == R_DEAD && !r->calls) {
            *pp = r->next;
            free(r);
            continue;
        }
        pp = &r->next;
    }
}

static void on_tick(uv_timer_t *t)
{
    struct github *g = t->data;
    if (g->stopping)
        return;
    uint64_t now = now_ms();
    runners_tick(g);
    demand_prune(g, false);
    if (now >= g->next_sweep_ms) {
        g->next_sweep_ms = now + SWEEP_EVERY_MS;
        sweep(g);
    }
    if (g->polling_enabled && !g->poll_calls && now >= g->next_poll_ms)
        poll_now(g);
    serve(g);
}

/* ------------------------------------------------------------ engine */

static struct ghrunner *runner_by_engine_id(struct github *g, const char *id)
{
    for (struct ghrunner *r = g->runners; r; r = r->next) {
        if (r->submitted && streq(r->engine_id, id))
            return r;
    }
    return NULL;
}

static void on_serve_timer(uv_timer_t *t)
{
    struct github *g = t->data;
    if (!g->stopping)
        serve(g);
}

/* From observer callbacks: serving may submit to the engine, which must not
 * be entered from inside its own notification. Coalesced per loop turn. */
static void serve_soon(struct github *g)
{
    if (!g->stopping && !g->closed)
        uv_timer_start(&g->serve_timer, on_serve_timer, 0, 0);
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
    log_info(job_id, "github %s: runner %s: its VM ended (%s)", g->name, r->name,
             job_state_to_string(state));
    if (r->state != R_BUSY && r->state != R_DONE)
        runner_release_demand(r);
    if (r->deleted) {
        runner_set_dead(r);
    } else {
        r->state = R_ENDING;
        r->retire_reason = NULL;
        if (!g->stopping)
            runner_delete(r);
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

/* Jobs a previous agentlabd left queued: their JIT configs died with it
 * (secret values are never stored). */
static void cancel_orphans(struct github *g)
{
    struct store_job_filter f = {
            .state = JOB_STATE_QUEUED, .source = JOB_SOURCE_GITHUB, .limit = STORE_LIST_MAX};
    struct store_job_page page = {0};
    struct al_error *err = NULL;
    if (store_job_list(engine_store(g->e), &f, &page, &err) < 0) {
        log_warn(NULL, "github %s: listing orphaned jobs: %s", g->name, al_error_message(err));
        al_error_free(err);
        return;
    }
    for (size_t i = 0; i < page.n; i++) {
        if (engine_cancel(g->e, page.jobs[i]->id, &err) == 0)
            log_warn(page.jobs[i]->id,
                     "github %s: cancelled: its JIT runner config was lost with the previous "
                     "agentlabd (the runner is deleted by the sweep)",
                     g->name);
        err = al_error_free(err);
    }
    store_job_page_clear(&page);
}

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

static void handle_closed(struct github *g)
{
    if (--g->handles_open > 0)
        return;
    void (*done)(void *) = g->done;
    void *data = g->done_data;
    for (struct ghrunner *r = g->runners, *next; r; r = next) {
        next = r->next;
        free(r);
    }
    for (struct ghdemand *d = g->demand, *next; d; d = next) {
        next = d->next;
        demand_free(d);
    }
    for (size_t i = 0; i < g->n_poll_repos; i++) {
        free(g->poll_repos[i].repo);
        free(g->poll_repos[i].etag[0]);
        free(g->poll_repos[i].etag[1]);
    }
    free(g->poll_repos);
    free(g->runs);
    strv_free(g->labels);
    free(g->labels_text);
    free(g->base);
    free(g->scope);
    free(g->prefix);
    free(g);
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
    for (size_t i = 0; i < g->n_poll_repos; i++)
        free(g->poll_repos[i].repo);
    free(g->poll_repos);
    free(g->runs);
    strv_free(g->labels);
    free(g->labels_text);
    free(g->base);
    free(g->scope);
    free(g->prefix);
    free(g);
}

static int setup(struct github *g, struct al_error **err)
{
    const struct config_source *src = g->src;
    const char *url = *src->url ? src->url : GITHUB_DEFAULT_API;
    size_t n = strlen(url);
    while (n && url[n - 1] == '/')
        n--;
    if (!(g->base = strndup(url, n)))
        return -ENOMEM;
    int r = *src->repo ? asprintf(&g->scope, "/repos/%s", src->repo)
                       : asprintf(&g->scope, "/orgs/%s", src->org);
    if (r < 0) {
        g->scope = NULL;
        return -ENOMEM;
    }
    /* runner names: agentlab-<8 hex of state dir and source>-<8 random hex> */
    char hex[AL_SHA256_HEX_SIZE];
    _cleanup_free_ char *seed = NULL;
    if (asprintf(&seed, "%s\n%s", g->cfg->agent.state_dir, src->name) < 0)
        return -ENOMEM;
    al_sha256_hex(seed, strlen(seed), hex);
    if (asprintf(&g->prefix, "agentlab-%.8s-", hex) < 0) {
        g->prefix = NULL;
        return -ENOMEM;
    }
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
    labels_text(g->labels, g->n_labels, text, sizeof(text));
    if (!(g->labels_text = strdup(text)))
        return -ENOMEM;
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
    g->loop = loop;
    g->e = e;
    g->curl = curl;
    g->cfg = cfg;
    g->src = src;
    g->name = src->name;
    r = setup(g, err);
    if (r < 0) {
        github_free_early(g);
        return r == -ENOMEM ? al_error_set(err, ENOMEM, "out of memory") : r;
    }
    struct github_auth_params ap = {
            .curl = curl,
            .api_base = g->base,
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
        github_free_early(g);
        return r;
    }
    static const char *const headers[] = {"Accept: application/vnd.github+json", API_VERSION_HEADER,
                                          NULL};
    char qname[128];
    snprintf(qname, sizeof(qname), "github %s", src->name);
    struct api_queue_params qp = {
            .loop = loop,
            .curl = curl,
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
    if (r < 0) {
        github_free_early(g);
        return r;
    }
    if (*src->webhook_listen) {
        struct github_hook_params hp = {
                .loop = loop,
                .name = src->name,
                .listen = src->webhook_listen,
                .secret_file = src->webhook_secret_file,
                .max_body = src->webhook_max_body,
                .on_job = on_webhook_job,
                .data = g,
        };
        r = github_hook_new(&hp, &g->hook, err);
        if (r < 0) {
            github_free_early(g);
            return r;
        }
        g->hook_open = true;
    }
    uv_timer_init(loop, &g->tick_timer);
    uv_timer_init(loop, &g->serve_timer);
    g->tick_timer.data = g->serve_timer.data = g;
    g->handles_open = 3; /* the timers and the API queue */
    g->watch = engine_observe(e, &observer, g);
    cancel_orphans(g);
    uint64_t now = now_ms();
    g->next_sweep_ms = now; /* the start-up sweep: runners a previous process left */
    g->next_poll_ms = now;
    uv_timer_start(&g->tick_timer, on_tick, 0, TICK_MS);
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
    if (!g->stopping || g->in_stop || g->closed || g->hook_open || api_queue_busy(g->api))
        return;
    g->closed = true;
    if (g->watch)
        engine_unobserve(g->e, g->watch);
    g->watch = NULL;
    github_auth_free(g->auth);
    g->auth = NULL;
    uv_timer_stop(&g->tick_timer);
    uv_timer_stop(&g->serve_timer);
    api_queue_free(g->api, on_api_closed, g);
    g->api = NULL;
    uv_close((uv_handle_t *)&g->tick_timer, on_handle_closed);
    uv_close((uv_handle_t *)&g->serve_timer, on_handle_closed);
}

void github_stop(struct github *g, void (*done)(void *data), void *data)
{
    g->stopping = true;
    /* cancelling calls in flight runs their callbacks, which must not close
     * the source before the deletes below are queued */
    g->in_stop = true;
    g->done = done;
    g->done_data = data;
    uv_timer_stop(&g->tick_timer);
    if (g->hook)
        github_hook_stop(g->hook, on_hook_stopped, g);
    /* queued calls are dropped; calls in flight end now */
    api_queue_stop(g->api);
    /* idle runners must not be handed jobs their VMs will never run: one
     * DELETE each, short timeouts; busy ones are left to the next sweep */
    for (struct ghrunner *r = g->runners; r; r = r->next) {
        if (r->id && !r->deleted && !r->deleting && (r->state == R_IDLE || r->state == R_ENDING)) {
            r->retire_reason = NULL;
            runner_delete(r);
        }
    }
    if (api_queue_refreshing(g->api)) {
        /* no token yet: nothing can be deleted */
        api_queue_drop_auth(g->api);
        github_auth_free(g->auth);
        g->auth = NULL;
    }
    g->in_stop = false;
    maybe_stopped(g);
}
