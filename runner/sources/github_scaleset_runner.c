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

/* ------------------------------------------------------------ runners */

static void runner_set_dead(struct ssrunner *r)
{
    r->state = R_DEAD;
}

static void scale_fail(struct github_scaleset *g, const char *fmt, ...) _printf_(2, 3);
static void scale_fail(struct github_scaleset *g, const char *fmt, ...)
{
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    backoff_grow(&g->scale_backoff_ms);
    g->scale_after_ms = now_ms() + al_jitter_ms(g->scale_backoff_ms);
    log_error(NULL, "github %s: %s; trying again in %" PRIu64 " s", g->b.name, msg,
              g->scale_backoff_ms / 1000);
}

static void runner_create(struct github_scaleset *g);
static void runner_delete(struct ssrunner *r);

static void on_jit(struct github_scaleset *g, int result, const struct al_http_response *resp,
                   const struct al_error *err, void *data)
{
    struct ssrunner *r = data;
    r->calls--;
    if (call_dropped(g, result, resp)) {
        runner_set_dead(r);
        return;
    }
    if (result == 0 && resp->status != 200 && is_error(resp, "AgentExistsException")) {
        /* the name is taken (32 random bits): another name */
        runner_set_dead(r);
        runner_create(g);
        return;
    }
    if (result < 0 || resp->status != 200) {
        char what[300];
        ss_describe(result, resp, err, what, sizeof(what));
        scale_fail(g, "generatejitconfig for runner %s: %s", r->name, what);
        runner_set_dead(r);
        return;
    }
    char *jit = NULL;
    struct al_error *perr = NULL;
    int rc = scaleset_parse_jitconfig(resp->body.data, resp->body.len, &r->id, &jit, &perr);
    wipe_body(resp);
    if (rc < 0) {
        scale_fail(g, "the generatejitconfig answer: %s", al_error_message(perr));
        al_error_free(perr);
        runner_set_dead(r);
        return;
    }
    ss_state_save(g);
    struct job_spec *spec = NULL;
    struct al_error *serr = NULL;
    char eid[STORE_JOB_ID_SIZE];
    rc = gh_runner_job_spec(g->b.src, r->name, g->b.src->scale_set_name, NULL, jit, &spec, &serr);
    if (rc == 0)
        rc = engine_submit(g->b.e, spec, &(struct engine_submit){0}, eid, &serr);
    if (rc < 0) {
        scale_fail(g, "agentlab refused runner %s's VM: %s", r->name, al_error_message(serr));
        al_error_free(serr);
        r->vm_gone = true;
        r->state = R_ENDING;
        runner_delete(r);
        return;
    }
    memcpy(r->engine_id, eid, sizeof(eid));
    r->submitted = true;
    r->created_ms = now_ms();
    if (r->state == R_CREATING)
        r->state = R_IDLE;
    log_info(eid, "github %s: runner %s (id %" PRId64 ") of scale set %s runs as %s", g->b.name,
             r->name, r->id, g->b.src->scale_set_name, eid);
}

static void runner_create(struct github_scaleset *g)
{
    struct ssrunner *r = ss_runner_new(g, NULL);
    if (!r)
        return;
    r->state = R_CREATING;
    yajl_gen gen = yajl_gen_alloc(NULL);
    char *body = NULL;
    if (gen) {
        int x = yajl_gen_map_open(gen);
        x |= yajl_gen_string(gen, (const unsigned char *)"name", 4);
        x |= yajl_gen_string(gen, (const unsigned char *)r->name, strlen(r->name));
        x |= yajl_gen_string(gen, (const unsigned char *)"workFolder", 10);
        x |= yajl_gen_string(gen, (const unsigned char *)"", 0);
        x |= yajl_gen_map_close(gen);
        body = gh_json_finish(gen, x);
    }
    if (!body) {
        runner_set_dead(r);
        return;
    }
    r->calls++;
    ss_call(g, "POST", AUTH_ADMIN,
            ss_svc_path("runtime/runnerscalesets/%" PRId64 "/generatejitconfig", g->scaleset_id),
            body, on_jit, r);
}

static void runner_stop_vm(struct ssrunner *r, const char *why)
{
    if (r->vm_gone || !r->submitted || r->stopping_vm)
        return;
    r->stopping_vm = true;
    gh_stop_vm(r->g->b.e, r->g->b.name, r->name, r->engine_id, why);
}

static void on_runner_deleted(struct github_scaleset *g, int result,
                              const struct al_http_response *resp, const struct al_error *err,
                              void *data)
{
    struct ssrunner *r = data;
    r->calls--;
    r->deleting = false;
    const char *eid = r->submitted ? r->engine_id : NULL;
    if (result == 0 &&
        (resp->status == 204 || resp->status == 404 || is_error(resp, "AgentNotFoundException"))) {
        r->deleted = true;
        log_info(eid, "github %s: runner %s (id %" PRId64 ") %s", g->b.name, r->name, r->id,
                 resp->status == 204 ? "removed from the scale set" : "is gone already");
        if (!g->b.stopping)
            ss_state_save(g);
        if (r->retire_reason && !r->vm_gone)
            runner_stop_vm(r, r->retire_reason);
        if (r->vm_gone)
            runner_set_dead(r);
        return;
    }
    if (result == -ECANCELED || g->b.stopping)
        return;
    if (result == 0 && is_error(resp, "JobStillRunningException")) {
        /* it took a job at the last moment, or its job is still ending */
        if (r->state == R_IDLE) {
            log_info(eid, "github %s: runner %s is running a job; kept", g->b.name, r->name);
            r->state = R_BUSY;
            r->retire_reason = NULL;
            return;
        }
    } else {
        char what[300];
        ss_describe(result, resp, err, what, sizeof(what));
        log_warn(eid, "github %s: removing runner %s (id %" PRId64 "): %s", g->b.name, r->name,
                 r->id, what);
    }
    if (++r->delete_tries >= DELETE_TRIES && r->vm_gone) {
        log_warn(eid, "github %s: runner %s: giving up removing it; the next start tries again",
                 g->b.name, r->name);
        runner_set_dead(r);
        return;
    }
    r->next_delete_ms = now_ms() + al_jitter_ms(DELETE_RETRY_MS);
}

static void runner_delete(struct ssrunner *r)
{
    struct github_scaleset *g = r->g;
    if (r->deleting || r->deleted)
        return;
    if (!r->id) {
        r->deleted = true;
        if (r->vm_gone)
            runner_set_dead(r);
        return;
    }
    r->deleting = true;
    r->calls++;
    ss_call(g, "DELETE", AUTH_ADMIN, ss_svc_path("distributedtask/pools/0/agents/%" PRId64, r->id),
            NULL, on_runner_deleted, r);
}

static void runner_retire(struct ssrunner *r, const char *reason)
{
    if (r->retire_reason || r->deleting || r->deleted)
        return;
    log_info(r->submitted ? r->engine_id : NULL, "github %s: runner %s: %s; removing it",
             r->g->b.name, r->name, reason);
    r->retire_reason = reason;
    runner_delete(r);
}

struct ssrunner *ss_runner_by_name(struct github_scaleset *g, const char *name)
{
    if (!name)
        return NULL;
    al_list_for_each(r, &g->runners, struct ssrunner, link) {
        if (r->state != R_DEAD && streq(r->name, name))
            return r;
    }
    return NULL;
}

/* ------------------------------------------------------------ capacity */

struct counts ss_count(const struct github_scaleset *g)
{
    struct counts c = {0};
    al_list_for_each(r, &g->runners, const struct ssrunner, link) {
        if (r->state == R_DEAD || r->vm_gone)
            continue;
        if (r->retire_reason)
            continue; /* leaving */
        c.live++;
        if (r->state == R_CREATING)
            c.creating++;
        if (r->state == R_CREATING || r->state == R_IDLE)
            c.spare++;
    }
    al_list_for_each(j, &g->jobs, const struct ssjob, link) {
        if (j->state == J_WAITING)
            c.waiting++;
    }
    c.waiting += g->acquiring;
    return c;
}

/* New VMs this source may start now: max_runners, and free slots of the
 * pool beyond its queue (engine_admit). */
unsigned ss_free_vms(struct github_scaleset *g, const struct counts *c, char *why, size_t why_size)
{
    unsigned n = 0;
    if (why)
        snprintf(why, why_size, "max_runners is %d", g->b.src->max_runners);
    while (c->live + n < (unsigned)g->b.src->max_runners) {
        struct engine_admit a = {
                .pool = g->b.src->pool, .start_now = true, .held = c->creating + n};
        if (engine_admit(g->b.e, &a, why, why_size) != ENGINE_ADMIT_YES)
            break;
        n++;
    }
    return n;
}

void ss_scale(struct github_scaleset *g)
{
    if (g->b.stopping || !g->scaleset_id || now_ms() < g->scale_after_ms)
        return;
    struct counts c = ss_count(g);
    unsigned need = c.waiting + (unsigned)g->b.src->min_runners;
    char why[300];
    unsigned room = ss_free_vms(g, &c, why, sizeof(why));
    while (c.spare < need && room > 0) {
        runner_create(g);
        c.spare++;
        c.live++;
        c.creating++;
        room--;
    }
    if (c.spare < need && !g->full_logged) {
        log_info(NULL, "github %s: %u more runners wanted, no room: %s", g->b.name, need - c.spare,
                 why);
        g->full_logged = true;
    } else if (c.spare >= need) {
        g->full_logged = false;
    }
}

static void on_scale_timer(uv_timer_t *t)
{
    struct github_scaleset *g = t->data;
    if (!g->b.stopping)
        ss_scale(g);
}

static void scale_soon(struct github_scaleset *g)
{
    if (!g->b.stopping && !g->b.closing)
        uv_timer_start(&g->b.soon_timer, on_scale_timer, 0, 0);
}

/* ------------------------------------------------------------ jobs */

struct ssjob *ss_job_find(struct github_scaleset *g, int64_t rid)
{
    al_list_for_each(j, &g->jobs, struct ssjob, link) {
        if (j->request_id == rid)
            return j;
    }
    return NULL;
}

bool ss_job_done_before(const struct github_scaleset *g, int64_t rid)
{
    for (size_t i = 0; i < g->n_done_ids; i++) {
        if (g->done_ids[i] == rid)
            return true;
    }
    return false;
}

void ss_job_remove(struct github_scaleset *g, int64_t rid)
{
    struct ssjob *j = ss_job_find(g, rid);
    if (j) {
        al_list_del(&j->link);
        free(j->name);
        free(j);
    }
    if (!ss_job_done_before(g, rid)) {
        if (g->n_done_ids == MAX_DONE_IDS) {
            memmove(g->done_ids, g->done_ids + 1, (MAX_DONE_IDS - 1) * sizeof(int64_t));
            g->n_done_ids--;
        }
        g->done_ids[g->n_done_ids++] = rid;
    }
}

void ss_on_acquired(struct github_scaleset *g, int result, const struct al_http_response *resp,
                    const struct al_error *err, void *data)
{
    struct acquire_ctx *a = data;
    g->acquiring -= a->n;
    unsigned asked = a->n;
    free(a);
    if (result == -ECANCELED || g->b.stopping)
        return;
    if (result < 0 || resp->status != 200) {
        char what[300];
        ss_describe(result, resp, err, what, sizeof(what));
        log_warn(NULL, "github %s: acquiring %u jobs: %s; they stay available", g->b.name, asked,
                 what);
        return;
    }
    int64_t *ids = NULL;
    size_t n = 0;
    struct al_error *perr = NULL;
    if (scaleset_parse_acquired(resp->body.data, resp->body.len, &ids, &n, &perr) < 0) {
        log_warn(NULL, "github %s: the acquirejobs answer: %s", g->b.name, al_error_message(perr));
        al_error_free(perr);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        if (ss_job_find(g, ids[i]) || ss_job_done_before(g, ids[i]))
            continue;
        struct ssjob *j = calloc(1, sizeof(*j));
        if (!j)
            break;
        j->request_id = ids[i];
        j->state = J_WAITING;
        al_list_add(&g->jobs, &j->link);
    }
    log_info(NULL, "github %s: acquired %zu of %u jobs", g->b.name, n, asked);
    free(ids);
    ss_scale(g);
}

/* ------------------------------------------------------------ the tick */

static void runners_tick(struct github_scaleset *g)
{
    uint64_t now = now_ms();
    uint64_t idle_ms = (uint64_t)g->b.src->runner_idle_timeout_s * 1000u;
    struct counts c = ss_count(g);
    unsigned need = c.waiting + (unsigned)g->b.src->min_runners;
    unsigned spare = c.spare;
    al_list_for_each(r, &g->runners, struct ssrunner, link) {
        switch (r->state) {
        case R_IDLE:
            if (!r->retire_reason && spare > need && now - r->created_ms > idle_ms) {
                spare--;
                runner_retire(r, "it took no job within runner_idle_timeout and is not needed");
            } else if (r->retire_reason && !r->deleting && !r->deleted &&
                       now >= r->next_delete_ms) {
                runner_delete(r);
            }
            break;
        case R_DONE:
            if (!r->vm_gone && now - r->done_ms > DONE_GRACE_MS)
                runner_stop_vm(r, "its job completed a minute ago but the VM is still up");
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
    al_list_for_each_safe(r, tmp, &g->runners, struct ssrunner, link) {
        if (r->state == R_DEAD && !r->calls) {
            al_list_del(&r->link);
            free(r);
        }
    }
}

void ss_on_tick(uv_timer_t *t)
{
    struct github_scaleset *g = t->data;
    if (g->b.stopping)
        return;
    uint64_t now = now_ms();
    if (g->admin_refreshing && g->reg_token && g->next_register_ms && now >= g->next_register_ms) {
        g->next_register_ms = 0;
        ss_register_send(g);
    }
    if (!al_list_empty(&g->wait_admin) && !g->admin_refreshing && now >= g->next_admin_ms)
        ss_admin_refresh(g);
    if (g->phase == PH_SETUP && !g->setup_busy && now >= g->next_setup_ms)
        ss_setup_step(g);
    if (g->phase == PH_SESSION && !g->session_busy && now >= g->next_session_ms)
        ss_session_create(g);
    if (g->phase == PH_POLL && now >= g->next_poll_ms)
        ss_poll_now(g);
    runners_tick(g);
    ss_scale(g);
    ss_catch_up(g);
}

/* ------------------------------------------------------------ engine */

static struct ssrunner *runner_by_engine_id(struct github_scaleset *g, const char *id)
{
    al_list_for_each(r, &g->runners, struct ssrunner, link) {
        if (r->submitted && streq(r->engine_id, id))
            return r;
    }
    return NULL;
}

static void on_finished(const char *job_id, enum job_state state, const struct attempt_result *last,
                        void *data)
{
    (void)last;
    struct github_scaleset *g = data;
    struct ssrunner *r = runner_by_engine_id(g, job_id);
    if (!r || r->vm_gone)
        return;
    r->vm_gone = true;
    log_info(job_id, "github %s: runner %s: its VM ended (%s)", g->b.name, r->name,
             job_state_to_string(state));
    if ((r->state == R_IDLE || r->state == R_CREATING) && state != JOB_STATE_SUCCEEDED &&
        !r->retire_reason && !r->stopping_vm && !g->b.stopping) {
        /* its VM failed before the runner took a job (a broken image, a
         * guest that does not boot): the replacement waits, longer each
         * time, so a broken image does not burn JIT configs in a loop */
        scale_fail(g, "runner %s's VM ended (%s) before it took a job", r->name,
                   job_state_to_string(state));
    } else if (r->state == R_IDLE && state == JOB_STATE_SUCCEEDED) {
        /* an ephemeral runner exits 0 after its job: the messages saying so
         * are likely on their way; a replacement made now would be surplus */
        uint64_t until = now_ms() + ENDED_GRACE_MS;
        if (g->scale_after_ms < until)
            g->scale_after_ms = until;
    }
    if (r->deleted) {
        runner_set_dead(r);
    } else {
        /* an ephemeral runner that ran its job is gone from the scale set
         * already (404); one that did not must go */
        r->state = R_ENDING;
        r->retire_reason = NULL;
        r->next_delete_ms = 0;
    }
    scale_soon(g);
}

static void on_event(const struct store_event *ev, void *data)
{
    struct github_scaleset *g = data;
    if (job_state_is_terminal(ev->to))
        scale_soon(g);
}

const struct engine_observer ss_observer = {
        .event = on_event,
        .finished = on_finished,
};

/* Queued jobs of a previous agentlabd: their JIT configs died with it
 * (no job of this process exists yet when the source starts). */
void ss_cancel_orphans(struct github_scaleset *g)
{
    char name[160];
    snprintf(name, sizeof(name), "github %s", g->b.name);
    orphans_cancel(g->b.e, JOB_SOURCE_GITHUB, name, NULL, NULL,
                   "its JIT runner config was lost with the previous agentlabd (its runner is "
                   "removed from the scale set at start)");
}
