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

/* ------------------------------------------------------------ messages */

/* JobAvailable among jobs[]: acquire what the pool can run now, in their
 * order. Returns how many were offered (new to this listener). */
static unsigned acquire_offered(struct github_scaleset *g, const struct scaleset_job *jobs,
                                size_t n_jobs)
{
    struct counts c = ss_count(g);
    char why[300];
    unsigned room = ss_free_vms(g, &c, why, sizeof(why)) + c.spare;
    unsigned can = room > c.waiting ? room - c.waiting : 0;
    struct al_buf body = {0};
    unsigned n = 0, offered = 0;
    al_buf_append(&body, "[", 1);
    for (size_t i = 0; i < n_jobs; i++) {
        const struct scaleset_job *j = &jobs[i];
        if (j->kind != SCALESET_JOB_AVAILABLE)
            continue;
        if (ss_job_find(g, j->request_id) || ss_job_done_before(g, j->request_id))
            continue;
        bool dup = false;
        for (size_t k = 0; k < i; k++)
            dup |= jobs[k].kind == SCALESET_JOB_AVAILABLE && jobs[k].request_id == j->request_id;
        if (dup)
            continue;
        offered++;
        if (n >= can)
            continue;
        al_buf_printf(&body, "%s%" PRId64, n ? "," : "", j->request_id);
        n++;
    }
    al_buf_append(&body, "]", 1);
    if (offered > n)
        log_info(NULL,
                 "github %s: %u jobs available, room for %u now (%s); the rest stays "
                 "available",
                 g->b.name, offered, n, why);
    if (n) {
        struct acquire_ctx *a = calloc(1, sizeof(*a));
        char *b = strndup(body.data, body.len);
        if (a && b) {
            a->n = n;
            g->acquiring += n;
            ss_call(g, "POST", AUTH_MQ_SVC,
                    ss_svc_path("runtime/runnerscalesets/%" PRId64 "/acquirejobs", g->scaleset_id),
                    b, ss_on_acquired, a);
        } else {
            free(a);
            free(b);
        }
    }
    al_buf_free(&body);
    return offered;
}

static void handle_message(struct github_scaleset *g, const struct scaleset_message *m)
{
    if (acquire_offered(g, m->jobs, m->n_jobs))
        g->last_offer_ms = now_ms();

    for (size_t i = 0; i < m->n_jobs; i++) {
        const struct scaleset_job *j = &m->jobs[i];
        struct ssrunner *r = ss_runner_by_name(g, j->runner_name);
        if (j->kind == SCALESET_JOB_STARTED) {
            struct ssjob *x = ss_job_find(g, j->request_id);
            if (x) {
                x->state = J_RUNNING;
                snprintf(x->runner, sizeof(x->runner), "%s", j->runner_name ? j->runner_name : "");
            } else if (r && !ss_job_done_before(g, j->request_id)) {
                /* a job of ours not acquired by this process (a restart) */
                x = calloc(1, sizeof(*x));
                if (x) {
                    x->request_id = j->request_id;
                    x->state = J_RUNNING;
                    snprintf(x->runner, sizeof(x->runner), "%s", r->name);
                    al_list_add(&g->jobs, &x->link);
                }
            }
            if (r && (r->state == R_IDLE || r->state == R_CREATING)) {
                g->scale_backoff_ms = 0; /* runners work */
                r->state = R_BUSY;
                r->retire_reason = NULL;
                log_info(r->submitted ? r->engine_id : NULL,
                         "github %s: runner %s started job %s (request %" PRId64 ")%s%s", g->b.name,
                         r->name, j->display_name ? j->display_name : "unnamed", j->request_id,
                         j->repo ? " of " : "", j->repo ? j->repo : "");
            }
        } else if (j->kind == SCALESET_JOB_COMPLETED) {
            ss_job_remove(g, j->request_id);
            if (r && r->state != R_ENDING && r->state != R_DEAD) {
                if (r->state != R_DONE)
                    log_info(r->submitted ? r->engine_id : NULL,
                             "github %s: runner %s finished job %s (%s)", g->b.name, r->name,
                             j->display_name ? j->display_name : "unnamed",
                             j->result ? j->result : "no result");
                r->state = R_DONE;
                r->done_ms = now_ms();
            } else if (!j->runner_name) {
                log_info(NULL, "github %s: job request %" PRId64 " ended without a runner (%s)",
                         g->b.name, j->request_id, j->result ? j->result : "no result");
            }
        }
    }
    ss_scale(g);
}

/* ------------------------------------------------------------ catching up */

/* GitHub offers a job once with JobAvailable. A job this listener left
 * available for want of room may be offered again later, but nothing
 * documents that it will be, so when the latest statistics count available
 * jobs, none was offered for CATCHUP_MS and there is room, the listener asks
 * for them (GET acquirablejobs, as GitHub's first listener did at start):
 * at most one call per CATCHUP_MS, none at all while idle. */
static void on_acquirable(struct github_scaleset *g, int result,
                          const struct al_http_response *resp, const struct al_error *err,
                          void *data)
{
    (void)data;
    g->catching_up = false;
    if (result == -ECANCELED || g->b.stopping)
        return;
    if (result == 0 && resp->status == 204) {
        g->stats.available = 0; /* nothing to catch up until a message says otherwise */
        return;
    }
    if (result < 0 || resp->status != 200) {
        char what[300];
        ss_describe(result, resp, err, what, sizeof(what));
        log_warn(NULL, "github %s: asking for acquirable jobs: %s", g->b.name, what);
        return;
    }
    struct scaleset_message m = {0};
    struct al_error *perr = NULL;
    if (scaleset_parse_acquirable(resp->body.data, resp->body.len, &m, &perr) < 0) {
        log_warn(NULL, "github %s: the acquirablejobs answer: %s", g->b.name,
                 al_error_message(perr));
        al_error_free(perr);
        return;
    }
    unsigned offered = acquire_offered(g, m.jobs, m.n_jobs);
    if (!offered)
        g->stats.available = 0;
    log_info(NULL, "github %s: caught up: %u acquirable jobs not offered again", g->b.name,
             offered);
    scaleset_message_clear(&m);
}

void ss_catch_up(struct github_scaleset *g)
{
    uint64_t now = now_ms();
    if (g->b.stopping || g->phase != PH_POLL || g->catching_up || g->acquiring ||
        g->stats.available <= 0 || now < g->next_catchup_ms || now - g->last_offer_ms < CATCHUP_MS)
        return;
    struct counts c = ss_count(g);
    char why[300];
    if (ss_free_vms(g, &c, why, sizeof(why)) + c.spare <= c.waiting)
        return;
    g->catching_up = true;
    g->next_catchup_ms = now + CATCHUP_MS;
    g->catchups++;
    ss_call(g, "GET", AUTH_ADMIN,
            ss_svc_path("runtime/runnerscalesets/%" PRId64 "/acquirablejobs", g->scaleset_id), NULL,
            on_acquirable, NULL);
}

static void on_message_deleted(struct github_scaleset *g, int result,
                               const struct al_http_response *resp, const struct al_error *err,
                               void *data)
{
    (void)data;
    g->acking = false;
    if (result == -ECANCELED || g->b.stopping) {
        scaleset_message_clear(&g->pending);
        return;
    }
    if (result < 0 || resp->status != 204) {
        char what[300];
        ss_describe(result, resp, err, what, sizeof(what));
        log_warn(NULL, "github %s: deleting message %" PRId64 ": %s", g->b.name, g->last_message_id,
                 what);
    }
    /* acknowledged before anything is acquired (GitHub's listener does the
     * same): a message is never handled twice */
    handle_message(g, &g->pending);
    scaleset_message_clear(&g->pending);
    ss_poll_now(g);
}

static void session_lost(struct github_scaleset *g, const char *why)
{
    log_warn(NULL, "github %s: the message session is gone (%s); creating a new one", g->b.name,
             why);
    if (g->session.mq_token)
        al_redact_remove(g->session.mq_token);
    scaleset_session_clear(&g->session);
    g->phase = PH_SESSION;
    g->next_session_ms = now_ms();
    ss_session_create(g);
}

static void poll_failed(struct github_scaleset *g, const char *what)
{
    bool first = !g->poll_backoff_ms;
    backoff_grow(&g->poll_backoff_ms);
    g->next_poll_ms = now_ms() + al_jitter_ms(g->poll_backoff_ms);
    if (first)
        log_warn(NULL, "github %s: polling for messages: %s; polling again in %" PRIu64 " s",
                 g->b.name, what, g->poll_backoff_ms / 1000);
    else
        log_debug(NULL, "github %s: polling for messages: %s", g->b.name, what);
}

static void on_polled(struct github_scaleset *g, int result, const struct al_http_response *resp,
                      const struct al_error *err, void *data)
{
    (void)data;
    g->polling = false;
    if (result == -ECANCELED || g->b.stopping)
        return;
    g->polls++;
    if (result == -ENOENT || (result == 0 && resp->status == 404)) {
        session_lost(g, result == 0 ? "HTTP 404" : "its refresh failed");
        return;
    }
    if (result == 0 && resp->status == 401) {
        /* the refreshed token was refused too */
        session_lost(g, "HTTP 401 after a refresh");
        return;
    }
    if (result == 0 && resp->status == 202) {
        g->poll_backoff_ms = 0;
        ss_scale(g); /* room may have come without a message */
        ss_poll_now(g);
        return;
    }
    if (result < 0 || resp->status != 200) {
        char what[300];
        ss_describe(result, resp, err, what, sizeof(what));
        poll_failed(g, what);
        return;
    }
    struct scaleset_message m = {0};
    struct al_error *perr = NULL;
    if (scaleset_parse_message(resp->body.data, resp->body.len, &m, &perr) < 0) {
        char what[300];
        snprintf(what, sizeof(what), "a message: %s", al_error_message(perr));
        al_error_free(perr);
        poll_failed(g, what);
        return;
    }
    g->poll_backoff_ms = 0;
    g->messages++;
    g->stats = m.stats;
    g->last_message_id = m.id;
    g->last_message_wall_ms = al_now_wall_ms();
    unsigned kinds[5] = {0};
    for (size_t i = 0; i < m.n_jobs; i++)
        kinds[m.jobs[i].kind]++;
    log_info(NULL,
             "github %s: message %" PRId64 ": %u available, %u assigned, %u started, %u "
             "completed; scale set: %" PRId64 " assigned, %" PRId64 " running, %" PRId64
             " runners (%" PRId64 " busy, %" PRId64 " idle)",
             g->b.name, m.id, kinds[SCALESET_JOB_AVAILABLE], kinds[SCALESET_JOB_ASSIGNED],
             kinds[SCALESET_JOB_STARTED], kinds[SCALESET_JOB_COMPLETED], m.stats.assigned,
             m.stats.running, m.stats.registered, m.stats.busy, m.stats.idle);
    char *target = NULL;
    if (asprintf(&target, "/%" PRId64, m.id) < 0)
        target = NULL;
    g->acking = true;
    scaleset_message_clear(&g->pending);
    g->pending = m;
    if (target)
        ss_call(g, "DELETE", AUTH_MQ, target, NULL, on_message_deleted, NULL);
    else
        on_message_deleted(g, -ENOMEM, NULL, NULL, NULL);
}

void ss_poll_now(struct github_scaleset *g)
{
    if (g->b.stopping || g->phase != PH_POLL || g->polling || g->acking)
        return;
    g->polling = true;
    ss_call(g, "GET", AUTH_MQ, NULL, NULL, on_polled, NULL);
}

/* ------------------------------------------------------------ the session */

/* s (taken over) replaces the session: only its token is redacted now. */
static void session_take(struct github_scaleset *g, struct scaleset_session *s)
{
    if (g->session.mq_token)
        al_redact_remove(g->session.mq_token);
    scaleset_session_clear(&g->session);
    g->session = *s;
    al_redact_add(s->mq_token);
    g->stats = s->stats;
}

/* What a session call's answer goes to once on_session_answer() has seen
 * it is not dropped. */
struct session_answer {
    void (*fn)(struct github_scaleset *g, int result, const struct al_http_response *resp,
               const struct al_error *err);
};

/* The callback of both session calls: the session is no longer busy, and
 * data (a struct session_answer) takes an answer that is not dropped. */
static struct session_answer created;

/* data: which session, for the log ("the session") */
void ss_on_session_deleted(struct github_scaleset *g, int result,
                           const struct al_http_response *resp, const struct al_error *err,
                           void *data)
{
    const char *which = data;
    char what[300];
    ss_describe(result, resp, err, what, sizeof(what));
    if (result == 0 && resp->status == 204)
        log_info(NULL, "github %s: deleted %s", g->b.name, which);
    else
        log_warn(NULL, "github %s: deleting %s: %s", g->b.name, which, what);
}

/* A session the service created while this listener was stopping: it would
 * hold the scale set (409s) until it expires, so it is deleted at once. */
static void session_created_at_stop(struct github_scaleset *g, int result,
                                    const struct al_http_response *resp)
{
    struct scaleset_session s = {0};
    if (result != 0 || resp->status != 200 ||
        scaleset_parse_session(resp->body.data, resp->body.len, &s, NULL) < 0) {
        if (resp)
            wipe_body(resp);
        return;
    }
    wipe_body(resp);
    ss_call(g, "DELETE", AUTH_ADMIN,
            ss_svc_path("runtime/runnerscalesets/%" PRId64 "/sessions/%s", g->scaleset_id,
                        s.session_id),
            NULL, ss_on_session_deleted, "the session created while stopping");
    scaleset_session_clear(&s);
}

static void on_session_answer(struct github_scaleset *g, int result,
                              const struct al_http_response *resp, const struct al_error *err,
                              void *data)
{
    const struct session_answer *a = data;
    g->session_busy = false;
    if (g->b.stopping && a == &created && result != -ECANCELED) {
        session_created_at_stop(g, result, resp);
        return;
    }
    if (call_dropped(g, result, resp))
        return;
    a->fn(g, result, resp, err);
}

bool ss_call_creates_session(const struct sscall *c)
{
    return c->cb == on_session_answer && c->data == &created;
}

static void session_refreshed(struct github_scaleset *g, int result,
                              const struct al_http_response *resp, const struct al_error *err)
{
    struct scaleset_session s = {0};
    struct al_error *perr = NULL;
    if (result == 0 && resp->status == 200 &&
        scaleset_parse_session(resp->body.data, resp->body.len, &s, &perr) == 0) {
        wipe_body(resp);
        session_take(g, &s);
        log_info(NULL, "github %s: session %s refreshed", g->b.name, s.session_id);
        ss_send_list(&g->wait_session);
        return;
    }
    char what[300];
    if (perr)
        snprintf(what, sizeof(what), "%s", al_error_message(perr));
    else
        ss_describe(result, resp, err, what, sizeof(what));
    if (resp)
        wipe_body(resp);
    al_error_free(perr);
    log_warn(NULL, "github %s: refreshing the session: %s", g->b.name, what);
    /* the callers see ENOENT: the poll makes a new session */
    ss_fail_list(&g->wait_session, ENOENT, what);
}

static struct session_answer refreshed = {session_refreshed};

void ss_session_refresh(struct github_scaleset *g)
{
    if (g->session_busy || !g->session.session_id)
        return;
    g->session_busy = true;
    ss_call(g, "PATCH", AUTH_ADMIN,
            ss_svc_path("runtime/runnerscalesets/%" PRId64 "/sessions/%s", g->scaleset_id,
                        g->session.session_id),
            NULL, on_session_answer, &refreshed);
}

static void session_created(struct github_scaleset *g, int result,
                            const struct al_http_response *resp, const struct al_error *err)
{
    if (result == 0 && resp->status == 200) {
        struct scaleset_session s = {0};
        struct al_error *perr = NULL;
        int r = scaleset_parse_session(resp->body.data, resp->body.len, &s, &perr);
        wipe_body(resp);
        if (r == 0) {
            session_take(g, &s);
            g->session_backoff_ms = 0;
            g->conflicts = 0;
            g->last_message_id = 0;
            g->phase = PH_POLL;
            g->poll_backoff_ms = 0;
            log_info(NULL,
                     "github %s: session %s on scale set %s (id %" PRId64 "): %" PRId64
                     " jobs assigned, %" PRId64 " runners registered",
                     g->b.name, s.session_id, g->b.src->scale_set_name, g->scaleset_id,
                     s.stats.assigned, s.stats.registered);
            ss_scale(g);
            ss_poll_now(g);
            return;
        }
        char m[300];
        snprintf(m, sizeof(m), "the session: %s", al_error_message(perr));
        al_error_free(perr);
        backoff_grow(&g->session_backoff_ms);
        g->next_session_ms = now_ms() + al_jitter_ms(g->session_backoff_ms);
        log_warn(NULL, "github %s: %s", g->b.name, m);
        return;
    }
    char what[300];
    ss_describe(result, resp, err, what, sizeof(what));
    backoff_grow(&g->session_backoff_ms);
    g->next_session_ms = now_ms() + al_jitter_ms(g->session_backoff_ms);
    if (result == 0 &&
        (resp->status == 409 || is_error(resp, "RunnerScaleSetSessionConflictException"))) {
        g->conflicts++;
        log_warn(NULL,
                 "github %s: scale set %s already has an active session (another listener, or "
                 "one a killed agentlabd left until it expires): %s; trying again in %" PRIu64
                 " s (conflict %u)",
                 g->b.name, g->b.src->scale_set_name, what, g->session_backoff_ms / 1000,
                 g->conflicts);
        return;
    }
    if (result == 0 && (resp->status == 404 || is_error(resp, "RunnerScaleSetNotFoundException"))) {
        log_warn(NULL, "github %s: scale set %s is gone (%s); registering it again", g->b.name,
                 g->b.src->scale_set_name, what);
        g->scaleset_id = 0;
        g->lookup_done = false;
        g->phase = PH_SETUP;
        g->next_setup_ms = now_ms();
        return;
    }
    log_warn(NULL, "github %s: creating the session: %s; trying again in %" PRIu64 " s", g->b.name,
             what, g->session_backoff_ms / 1000);
}

static struct session_answer created = {session_created};

void ss_session_create(struct github_scaleset *g)
{
    if (g->session_busy || g->b.stopping)
        return;
    yajl_gen gen = yajl_gen_alloc(NULL);
    char *body = NULL;
    if (gen) {
        int x = yajl_gen_map_open(gen);
        x |= yajl_gen_string(gen, (const unsigned char *)"sessionId", 9);
        x |= yajl_gen_string(gen, (const unsigned char *)ZERO_UUID, strlen(ZERO_UUID));
        x |= yajl_gen_string(gen, (const unsigned char *)"ownerName", 9);
        x |= yajl_gen_string(gen, (const unsigned char *)g->owner, strlen(g->owner));
        x |= yajl_gen_map_close(gen);
        body = gh_json_finish(gen, x);
    }
    if (!body)
        return;
    g->session_busy = true;
    ss_call(g, "POST", AUTH_ADMIN,
            ss_svc_path("runtime/runnerscalesets/%" PRId64 "/sessions", g->scaleset_id), body,
            on_session_answer, &created);
}
