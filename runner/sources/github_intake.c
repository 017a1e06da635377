#include "runner/sources/github_internal.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/loop/http_client.h"
#include "runner/loop/api_queue.h"
#include "runner/sources/github_payload.h"
#include "runner/sources/source_route.h"

/* ------------------------------------------------------------ demand */

static struct ghdemand *demand_find(struct github *g, int64_t job_id)
{
    al_list_for_each(d, &g->demand, struct ghdemand, link) {
        if (d->job_id == job_id)
            return d;
    }
    return NULL;
}

void gh_demand_set(struct ghdemand *d, enum dstate s)
{
    d->state = s;
    d->touched_ms = al_now_mono_ms();
    if (s == D_WAITING)
        d->since_ms = d->touched_ms;
}

void gh_demand_free(struct ghdemand *d)
{
    strv_free(d->labels);
    github_job_wants_clear(&d->wants);
    free(d->pool);
    free(d->repo);
    free(d->name);
    free(d->html_url);
    free(d);
}

/* Drops finished entries after an hour (they only guard against late and
 * repeated deliveries); frees room when the list is full. */
void gh_demand_prune(struct github *g, bool make_room)
{
    uint64_t now = al_now_mono_ms();
    al_list_for_each_safe(d, tmp, &g->demand, struct ghdemand, link) {
        bool old = (d->state == D_DONE || d->state == D_TAKEN) && !d->runner && !d->checking &&
                   (now - d->touched_ms > DEMAND_KEEP_MS || make_room);
        if (old && make_room && g->n_demand < MAX_DEMAND)
            old = false;
        if (old) {
            al_list_del(&d->link);
            gh_demand_free(d);
            g->n_demand--;
        }
    }
}

static struct ghdemand *demand_add(struct github *g, const struct github_job *j, const char *repo)
{
    if (g->n_demand >= MAX_DEMAND)
        gh_demand_prune(g, true);
    if (g->n_demand >= MAX_DEMAND) {
        log_warn(NULL, "github %s: %u queued jobs known already; job %" PRId64 " not taken",
                 g->b.name, g->n_demand, j->id);
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
        gh_demand_free(d);
        return NULL;
    }
    gh_demand_set(d, D_DONE);
    al_list_add_tail(&g->demand, &d->link);
    g->n_demand++;
    return d;
}

struct ghrunner *gh_runner_by_name(struct github *g, const char *name)
{
    if (!name)
        return NULL;
    al_list_for_each(r, &g->runners, struct ghrunner, link) {
        if (r->state != R_DEAD && streq(r->name, name))
            return r;
    }
    return NULL;
}

bool gh_is_ours(const struct github *g, const char *name)
{
    return name && strncmp(name, g->prefix, strlen(g->prefix)) == 0;
}

void gh_labels_text(char *const *labels, size_t n, char *buf, size_t size)
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

/* Every label is one of the runners' own or one of our pools' (compared
 * without case, as GitHub does); a job with none is no job for us. */
static bool labels_are_ours(const struct github *g, char *const *labels, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        bool known = false;
        for (size_t k = 0; k < g->n_labels && !known; k++)
            known = strcasecmp(labels[i], g->labels[k]) == 0;
        for (char **p = g->pool_labels; p && *p && !known; p++)
            known = strcasecmp(labels[i], *p) == 0;
        if (!known)
            return false;
    }
    return n > 0;
}

/* Asks the engine where the job's runner would run, with the size and
 * image its labels ask for, before any runner is registered: a job no pool
 * takes, or beyond its pool's limits, gets none. Keeps the job's labels
 * and the pool in d. */
static int demand_route(struct github *g, struct ghdemand *d, const struct github_job *j,
                        struct al_error **err)
{
    d->labels = calloc(j->n_labels + 1, sizeof(*d->labels));
    if (!d->labels)
        return al_error_set(err, ENOMEM, "out of memory");
    for (size_t i = 0; i < j->n_labels; i++) {
        if (!(d->labels[i] = strdup(j->labels[i])))
            return al_error_set(err, ENOMEM, "out of memory");
        d->n_labels++;
    }
    /* the spec a runner would get, with a stand-in for its JIT config */
    char *jit = strdup("-");
    _cleanup_job_spec_ struct job_spec *spec = NULL;
    if (!jit)
        return al_error_set(err, ENOMEM, "out of memory");
    const struct config_pool *pool = NULL;
    int r = gh_demand_spec(g, d, "routing", jit, &spec, err);
    if (r == 0)
        r = source_check_job(g->b.e, g->b.src, spec, &pool, err);
    if (r < 0)
        return r;
    if (!(d->pool = strdup(pool->name)))
        return al_error_set(err, ENOMEM, "out of memory");
    return 0;
}

/* A workflow job seen by the webhook or the poller. via: "webhook" or "poll". */
static void handle_job(struct github *g, const struct github_job *j, const char *repo,
                       const char *via)
{
    if (g->b.stopping)
        return;
    if (!gh_repo_in_scope(g, repo)) {
        log_debug(NULL, "github %s: job %" PRId64 " of %s: not in this source's scope", g->b.name,
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
    struct ghrunner *r =
            gh_is_ours(g, j->runner_name) ? gh_runner_by_name(g, j->runner_name) : NULL;
    switch (a) {
    case GITHUB_ACTION_QUEUED: {
        if (d)
            return; /* known: served, running, done, refused, or not ours */
        d = demand_add(g, j, repo);
        if (!d)
            return;
        char want[512];
        gh_labels_text(j->labels, j->n_labels, want, sizeof(want));
        struct al_error *err = NULL;
        int rc = github_job_wants_parse(j->labels, j->n_labels, &d->wants, &err);
        if (rc == 0 && !labels_are_ours(g, d->wants.labels, d->wants.n_labels)) {
            log_info(NULL,
                     "github %s: job %" PRId64 " (%s) of %s wants [%s]: not all among this "
                     "source's labels [%s] and its pools'; not served",
                     g->b.name, j->id, j->name ? j->name : "unnamed", repo, want, g->labels_text);
            return;
        }
        if (rc == 0)
            rc = demand_route(g, d, j, &err);
        if (rc < 0) {
            /* once per job: the entry stays D_DONE, so later deliveries and
             * polls of the same job end at "known" above */
            log_warn(NULL,
                     "github %s: job %" PRId64 " (%s) of %s wants [%s]: %s; no runner is made "
                     "for it",
                     g->b.name, j->id, j->name ? j->name : "unnamed", repo, want,
                     al_error_message(err));
            al_error_free(err);
            return;
        }
        log_info(NULL, "github %s: job %" PRId64 " (%s) of %s queued (%s), labels [%s], pool %s",
                 g->b.name, j->id, j->name ? j->name : "unnamed", repo, via, want, d->pool);
        gh_demand_set(d, D_WAITING);
        gh_serve(g);
        return;
    }
    case GITHUB_ACTION_IN_PROGRESS:
        if (d && d->state != D_DONE)
            gh_demand_set(d, D_TAKEN);
        else if (!d && (d = demand_add(g, j, repo)))
            gh_demand_set(d, D_TAKEN);
        if (r && (r->state == R_IDLE || r->state == R_CREATING)) {
            r->state = R_BUSY;
            r->took_job = j->id;
            log_info(r->submitted ? r->engine_id : NULL,
                     "github %s: runner %s took job %" PRId64 " (%s)", g->b.name, r->name, j->id,
                     j->name ? j->name : "unnamed");
        }
        return;
    case GITHUB_ACTION_COMPLETED: {
        struct ghrunner *made_for = d ? d->runner : NULL;
        if (d)
            gh_demand_set(d, D_DONE);
        else if ((d = demand_add(g, j, repo)))
            gh_demand_set(d, D_DONE);
        if (r && r->state != R_ENDING && r->state != R_DEAD) {
            if (r->state != R_DONE)
                log_info(r->submitted ? r->engine_id : NULL,
                         "github %s: runner %s finished job %" PRId64 " (%s)", g->b.name, r->name,
                         j->id, j->conclusion ? j->conclusion : "no conclusion");
            r->state = R_DONE;
            r->took_job = j->id;
            r->done_ms = al_now_mono_ms();
        }
        if (made_for && made_for != r && made_for->state == R_IDLE)
            gh_runner_retire(made_for, "the job it was made for ended without it");
        return;
    }
    case GITHUB_ACTION_WAITING:
    case GITHUB_ACTION_OTHER:
    case GITHUB_ACTION_NONE:
        return;
    }
}

void gh_on_webhook_job(const struct github_job *job, const char *delivery, void *data)
{
    struct github *g = data;
    (void)delivery;
    handle_job(g, job, job->repo, "webhook");
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
    uint64_t now = al_now_mono_ms();
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
        log_debug(NULL, "github %s: %s", g->b.name, msg);
    else
        log_warn(NULL, "github %s: %s", g->b.name, msg);
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
        gh_backoff_grow(&g->poll_backoff_ms);
        uint64_t b = al_jitter_ms(g->poll_backoff_ms);
        if (b > wait)
            wait = b;
        if (first)
            log_warn(NULL,
                     "github %s: polling again in %" PRIu64 " s, then less often while it "
                     "fails",
                     g->b.name, (wait + 999) / 1000);
    } else if (g->poll_backoff_ms) {
        log_info(NULL, "github %s: polling works again", g->b.name);
        g->poll_backoff_ms = 0;
    }
    g->poll_round_failed = false;
    g->next_poll_ms = al_now_mono_ms() + wait;
}

static void on_jobs_listed(struct github *g, int result, const struct al_http_response *resp,
                           const struct al_error *err, void *data)
{
    struct poll_ctx *c = data;
    struct ghpoll_repo *pr = c->pr;
    int64_t run_id = c->run_id;
    free(c);
    if (result == -ECANCELED || g->b.stopping) {
        poll_call_done(g);
        return;
    }
    if (result < 0 || resp->status != 200) {
        char what[300];
        gh_describe_result(result, resp, err, what, sizeof(what));
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
    if (result == -ECANCELED || g->b.stopping) {
        poll_call_done(g);
        return;
    }
    if (result == 0 && resp->status == 304) {
        poll_call_done(g);
        return;
    }
    if (result < 0 || resp->status != 200) {
        char what[300];
        gh_describe_result(result, resp, err, what, sizeof(what));
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

void gh_poll_now(struct github *g)
{
    if (g->b.stopping || g->poll_calls)
        return;
    int64_t remaining, reset_s;
    api_queue_rate(g->api, &remaining, &reset_s);
    if (remaining >= 0 && remaining < POLL_LOW_REMAINING && reset_s > al_now_wall_ms() / 1000) {
        if (!g->poll_low_logged)
            log_warn(NULL,
                     "github %s: %" PRId64 " API calls left until the rate limit resets; "
                     "polling pauses",
                     g->b.name, remaining);
        g->poll_low_logged = true;
        g->next_poll_ms = al_now_mono_ms() + g->poll_every_ms;
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
        g->next_poll_ms = al_now_mono_ms() + g->poll_every_ms;
}
