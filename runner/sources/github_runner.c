#include "runner/sources/github_internal.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yajl/yajl_gen.h>

#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/loop/http_client.h"
#include "runner/sources/github_common.h"
#include "runner/sources/github_payload.h"

/* ------------------------------------------------------------ capacity */

static unsigned runners_live(const struct github *g, unsigned *ret_creating)
{
    unsigned n = 0, c = 0;
    al_list_for_each(r, &g->runners, struct ghrunner, link) {
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

/* True when the job's pool has a free VM slot beyond the jobs already
 * waiting. */
static bool engine_room(struct github *g, const struct ghdemand *d)
{
    unsigned creating = 0;
    runners_live(g, &creating);
    struct engine_admit a = {
            .pool = d->pool ? d->pool : g->b.src->pool, .start_now = true, .held = creating};
    return engine_admit(g->b.e, &a, NULL, 0) == ENGINE_ADMIT_YES;
}

/* ------------------------------------------------------------ runners */

/* label is among the first n of v, compared without case as GitHub does. */
static bool label_in(char *const *v, size_t n, const char *label)
{
    for (size_t i = 0; i < n; i++) {
        if (strcasecmp(v[i], label) == 0)
            return true;
    }
    return false;
}

/* The job's routing labels as the configuration spells them (each is one
 * of the source's or its pools', see labels_are_ours()): what the engine
 * routes by, compared exactly. */
static int spec_labels(const struct github *g, const struct ghdemand *d, struct job_spec *spec,
                       struct al_error **err)
{
    spec->labels = calloc(JOB_SPEC_MAX_LABELS + 1, sizeof(*spec->labels));
    if (!spec->labels)
        return al_error_set(err, ENOMEM, "out of memory");
    for (size_t i = 0; i < d->wants.n_labels; i++) {
        const char *l = d->wants.labels[i], *known = NULL;
        for (char **p = g->pool_labels; p && *p && !known; p++)
            known = strcasecmp(*p, l) == 0 ? *p : NULL;
        for (size_t k = 0; k < g->n_labels && !known; k++)
            known = strcasecmp(g->labels[k], l) == 0 ? g->labels[k] : NULL;
        if (!known || label_in(spec->labels, spec->n_labels, known))
            continue;
        if (spec->n_labels == JOB_SPEC_MAX_LABELS)
            return al_error_set(err, EINVAL, "more than %d labels", JOB_SPEC_MAX_LABELS);
        if (!(spec->labels[spec->n_labels++] = strdup(known)))
            return al_error_set(err, ENOMEM, "out of memory");
    }
    if (!spec->n_labels) {
        free(spec->labels);
        spec->labels = NULL;
    }
    return 0;
}

int gh_demand_spec(struct github *g, const struct ghdemand *d, const char *runner, char *jit,
                   struct job_spec **ret, struct al_error **err)
{
    _cleanup_job_spec_ struct job_spec *spec = NULL;
    int r = gh_runner_job_spec(g->b.src, runner, NULL, d->html_url, jit, &spec, err);
    if (r < 0)
        return r;
    spec->resources.cpus = d->wants.cpus;
    spec->resources.memory_mb = d->wants.memory_mb;
    if (d->wants.image && !(spec->image = strdup(d->wants.image)))
        return al_error_set(err, ENOMEM, "out of memory");
    /* routed among the source's pools by the engine (source_check_job()
     * and engine_submit() with opts.pools), not pinned to the first */
    free(spec->pool);
    spec->pool = NULL;
    if ((r = spec_labels(g, d, spec, err)) < 0)
        return r;
    *ret = TAKE_PTR(spec);
    return 0;
}

static struct ghrunner *runner_new(struct github *g)
{
    struct ghrunner *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->g = g;
    if (gh_runner_name(g->prefix, r->name, sizeof(r->name)) < 0) {
        free(r);
        return NULL;
    }
    r->created_ms = al_now_mono_ms();
    al_list_add(&g->runners, &r->link);
    return r;
}

/* Unlinks the runner from its job's bookkeeping. took: it ran a job. */
void gh_runner_release_demand(struct ghrunner *r)
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
                 r->g->b.name, d->job_id, d->runners_made);
        gh_demand_set(d, D_DONE);
        return;
    }
    /* it never ran the job: serve it again if GitHub still has it queued */
    gh_demand_set(d, D_WAITING);
    d->verify = true;
}

void gh_runner_set_dead(struct ghrunner *r)
{
    gh_runner_release_demand(r);
    r->state = R_DEAD;
}

static void on_runner_created(struct github *g, int result, const struct al_http_response *resp,
                              const struct al_error *err, void *data);

/* The runner's labels: the source's, and every label of the job it is made
 * for, so that GitHub hands it that job (GitHub gives a job to a runner
 * that has all its labels). */
static int generate_body(const struct github *g, const struct ghdemand *d, const char *name,
                         char **ret)
{
    yajl_gen gen = yajl_gen_alloc(NULL);
    if (!gen)
        return -ENOMEM;
    int r = yajl_gen_map_open(gen);
    r |= yajl_gen_string(gen, (const unsigned char *)"name", 4);
    r |= yajl_gen_string(gen, (const unsigned char *)name, strlen(name));
    r |= yajl_gen_string(gen, (const unsigned char *)"runner_group_id", 15);
    r |= yajl_gen_integer(gen, g->b.src->runner_group_id);
    r |= yajl_gen_string(gen, (const unsigned char *)"labels", 6);
    r |= yajl_gen_array_open(gen);
    size_t n = 0;
    for (size_t i = 0; i < g->n_labels && n < GITHUB_MAX_LABELS; i++, n++)
        r |= yajl_gen_string(gen, (const unsigned char *)g->labels[i], strlen(g->labels[i]));
    for (size_t i = 0; d && i < d->n_labels && n < GITHUB_MAX_LABELS; i++) {
        const char *l = d->labels[i];
        if (label_in(g->labels, g->n_labels, l) || label_in(d->labels, i, l))
            continue;
        r |= yajl_gen_string(gen, (const unsigned char *)l, strlen(l));
        n++;
    }
    r |= yajl_gen_array_close(gen);
    r |= yajl_gen_string(gen, (const unsigned char *)"work_folder", 11);
    r |= yajl_gen_string(gen, (const unsigned char *)"_work", 5);
    r |= yajl_gen_map_close(gen);
    char *s = gh_json_finish(gen, r);
    if (!s)
        return r ? -EINVAL : -ENOMEM;
    *ret = s;
    return 0;
}

static void runner_create(struct github *g, struct ghdemand *d)
{
    struct ghrunner *r = runner_new(g);
    char *body = NULL;
    if (!r || generate_body(g, d, r->name, &body) < 0) {
        if (r)
            r->state = R_DEAD;
        return;
    }
    r->state = R_CREATING;
    r->demand = d;
    d->runner = r;
    gh_demand_set(d, D_SERVED);
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
    gh_backoff_grow(&g->serve_backoff_ms);
    g->serve_after_ms = al_now_mono_ms() + al_jitter_ms(g->serve_backoff_ms);
    log_error(NULL, "github %s: runner %s for job %" PRId64 ": %s; trying again in %" PRIu64 " s",
              g->b.name, r->name, r->demand ? r->demand->job_id : 0, msg,
              g->serve_backoff_ms / 1000);
}

static void on_runner_created(struct github *g, int result, const struct al_http_response *resp,
                              const struct al_error *err, void *data)
{
    struct ghrunner *r = data;
    r->calls--;
    if (result == -ECANCELED || g->b.stopping) {
        /* GitHub may have made it: the next start's sweep deletes it */
        gh_runner_set_dead(r);
        return;
    }
    if (result < 0 || resp->status != 201) {
        char what[300];
        gh_describe_result(result, resp, err, what, sizeof(what));
        if (result == 0 && resp->status == 409) {
            /* the name is taken (very unlikely with 32 random bits): another name */
            struct ghdemand *d = r->demand;
            gh_runner_set_dead(r);
            if (d && d->state == D_WAITING) {
                d->verify = false;
                runner_create(g, d);
            }
            return;
        }
        serve_fail(g, r, "generate-jitconfig failed: %s", what);
        gh_runner_set_dead(r);
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
        gh_runner_set_dead(r);
        return;
    }
    r->id = id;
    /* the spec takes the config over; the engine registers it with the
     * redactor before anything could print it */
    struct job_spec *spec = NULL;
    struct al_error *serr = NULL;
    char eid[STORE_JOB_ID_SIZE];
    rc = r->demand ? gh_demand_spec(g, r->demand, r->name, jit, &spec, &serr)
                   : gh_runner_job_spec(g->b.src, r->name, NULL, NULL, jit, &spec, &serr);
    if (rc == 0)
        rc = engine_submit(g->b.e, spec, &(struct engine_submit){.pools = g->b.src->pools}, eid,
                           &serr);
    if (rc < 0) {
        serve_fail(g, r, "agentlab refused the runner's VM: %s", al_error_message(serr));
        al_error_free(serr);
        r->vm_gone = true;
        gh_runner_retire(r, NULL);
        return;
    }
    g->serve_backoff_ms = 0;
    if (r->demand)
        r->demand->runners_made++;
    memcpy(r->engine_id, eid, sizeof(eid));
    r->submitted = true;
    r->vm_gone = false;
    r->created_ms = al_now_mono_ms();
    if (r->state == R_CREATING)
        r->state = R_IDLE;
    struct ghdemand *d = r->demand;
    log_info(eid, "github %s: runner %s (id %" PRId64 ") for job %" PRId64 " (%s) runs as %s",
             g->b.name, r->name, r->id, d ? d->job_id : 0, d && d->name ? d->name : "unnamed", eid);
}

void gh_runner_stop_vm(struct ghrunner *r, const char *why)
{
    if (r->vm_gone || !r->submitted || r->stopping_vm)
        return;
    r->stopping_vm = true;
    gh_stop_vm(r->g->b.e, r->g->b.name, r->name, r->engine_id, why);
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
        log_info(eid, "github %s: runner %s (id %" PRId64 ") %s", g->b.name, r->name, r->id,
                 resp->status == 204 ? "deleted from GitHub" : "is gone from GitHub already");
        if (r->retire_reason && !r->vm_gone)
            gh_runner_stop_vm(r, r->retire_reason);
        if (r->vm_gone)
            gh_runner_set_dead(r);
        return;
    }
    if (result == 0 && resp->status == 422) {
        /* GitHub refuses to delete a busy runner: it is running a job */
        if (r->state == R_IDLE) {
            log_info(eid, "github %s: runner %s is busy with a job; kept", g->b.name, r->name);
            r->state = R_BUSY;
        } else if (r->delete_tries == 0) {
            log_info(eid,
                     "github %s: runner %s is busy with a job (HTTP 422); kept, deleting it "
                     "again later",
                     g->b.name, r->name);
        }
        r->retire_reason = NULL;
        if (r->vm_gone && ++r->delete_tries >= DELETE_TRIES) {
            log_warn(eid,
                     "github %s: runner %s still counts as busy %d tries after its VM ended; "
                     "the next sweep tries again",
                     g->b.name, r->name, r->delete_tries);
            gh_runner_set_dead(r);
            return;
        }
        r->next_delete_ms = al_now_mono_ms() + DELETE_RETRY_MS;
        return;
    }
    if (result == -ECANCELED || g->b.stopping) {
        if (r->vm_gone)
            gh_runner_set_dead(r);
        return;
    }
    char what[300];
    gh_describe_result(result, resp, err, what, sizeof(what));
    log_warn(eid, "github %s: deleting runner %s (id %" PRId64 "): %s", g->b.name, r->name, r->id,
             what);
    if (++r->delete_tries >= DELETE_TRIES && r->vm_gone) {
        gh_runner_set_dead(r);
        return;
    }
    r->next_delete_ms = al_now_mono_ms() + al_jitter_ms(DELETE_RETRY_MS);
}

void gh_runner_delete(struct ghrunner *r)
{
    struct github *g = r->g;
    if (r->deleting || r->deleted)
        return;
    if (!r->id) {
        /* GitHub never gave it an id: nothing to delete */
        r->deleted = true;
        if (r->vm_gone)
            gh_runner_set_dead(r);
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
void gh_runner_retire(struct ghrunner *r, const char *reason)
{
    if (r->state == R_DEAD)
        return;
    if (reason && !r->vm_gone) {
        if (r->retire_reason || r->deleting)
            return;
        log_info(r->submitted ? r->engine_id : NULL, "github %s: runner %s: %s; removing it",
                 r->g->b.name, r->name, reason);
        r->retire_reason = reason;
        gh_runner_delete(r);
        return;
    }
    r->state = R_ENDING;
    gh_runner_delete(r);
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
    if (result == -ECANCELED || g->b.stopping)
        return;
    if (result < 0 || (resp->status != 200 && resp->status != 404)) {
        char what[300];
        gh_describe_result(result, resp, err, what, sizeof(what));
        log_warn(NULL, "github %s: checking job %" PRId64 ": %s", g->b.name, d->job_id, what);
        gh_backoff_grow(&g->serve_backoff_ms);
        g->serve_after_ms = al_now_mono_ms() + al_jitter_ms(g->serve_backoff_ms);
        return;
    }
    struct github_job *j = NULL;
    struct al_error *perr = NULL;
    if (resp->status == 404 || github_parse_job(resp->body.data, resp->body.len, &j, &perr) < 0) {
        if (perr)
            log_warn(NULL, "github %s: job %" PRId64 ": %s", g->b.name, d->job_id,
                     al_error_message(perr));
        al_error_free(perr);
        gh_demand_set(d, D_DONE);
        return;
    }
    if (d->state == D_WAITING && streq(j->status, "queued")) {
        d->verify = false;
        d->since_ms = al_now_mono_ms();
        gh_serve(g);
    } else if (d->state == D_WAITING) {
        log_info(NULL, "github %s: job %" PRId64 " is %s now; no runner needed", g->b.name,
                 d->job_id, j->status);
        gh_demand_set(d, D_DONE);
    }
    github_job_free(j);
}

void gh_serve(struct github *g)
{
    if (g->b.stopping || g->b.closing)
        return;
    uint64_t now = al_now_mono_ms();
    if (now < g->serve_after_ms)
        return;
    al_list_for_each(d, &g->demand, struct ghdemand, link) {
        if (d->state != D_WAITING || d->checking)
            continue;
        if (runners_live(g, NULL) >= (unsigned)g->b.src->max_runners) {
            if (!g->max_logged)
                log_info(NULL, "github %s: %d runners live (max_runners); job %" PRId64 " waits",
                         g->b.name, g->b.src->max_runners, d->job_id);
            g->max_logged = true;
            return;
        }
        if (!engine_room(g, d))
            continue; /* a job of another pool may fit */
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
    if (result == -ECANCELED || g->b.stopping) {
        g->sweeping = false;
        return;
    }
    if (result < 0 || resp->status != 200) {
        char what[300];
        gh_describe_result(result, resp, err, what, sizeof(what));
        log_warn(NULL, "github %s: listing runners: %s", g->b.name, what);
        g->sweeping = false;
        return;
    }
    struct github_runner_list l = {0};
    struct al_error *perr = NULL;
    if (github_parse_runners(resp->body.data, resp->body.len, &l, &perr) < 0) {
        log_warn(NULL, "github %s: the runner list: %s", g->b.name, al_error_message(perr));
        al_error_free(perr);
        g->sweeping = false;
        return;
    }
    for (size_t i = 0; i < l.n; i++) {
        const struct github_runner *x = &l.v[i];
        if (!gh_is_ours(g, x->name))
            continue;
        struct ghrunner *r = gh_runner_by_name(g, x->name);
        if (r) {
            if (!r->id)
                r->id = x->id;
            if (x->busy && r->state == R_IDLE) {
                r->state = R_BUSY;
                log_info(r->submitted ? r->engine_id : NULL,
                         "github %s: runner %s is busy with a job", g->b.name, r->name);
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
                 g->b.name, r->name, r->id, x->status ? x->status : "status unknown",
                 x->busy ? ", busy" : "");
        gh_runner_retire(r, NULL);
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

void gh_sweep(struct github *g)
{
    if (g->sweeping || g->b.stopping)
        return;
    g->sweeping = true;
    sweep_page(g, 1);
}
