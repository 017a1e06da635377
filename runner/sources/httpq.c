#include "runner/sources/httpq.h"

#include <ctype.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yajl/yajl_gen.h>

#include "runner/engine/attempt.h"
#include "runner/base/list.h"
#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/base/hardlimits.h"
#include "runner/loop/http_client.h"

#define LONG_POLL_S      30
#define LOG_TAIL_BYTES   (16u * 1024u)
#define MAX_REPORT_TRIES 60
#define MAX_QUEUE_ID     128
#define BACKOFF_MIN_MS   1000u
#define BACKOFF_MAX_MS   60000u

struct qjob {
    struct al_list link; /* on httpq.jobs */
    char qid[MAX_QUEUE_ID + 1];
    char job[STORE_JOB_ID_SIZE];
};

struct report {
    struct al_list link; /* on httpq.reports */
    char qid[MAX_QUEUE_ID + 1];
    char job[STORE_JOB_ID_SIZE];
    bool result; /* /result rather than /status */
    bool held;   /* the QUEUED acknowledgement waits until the job is durable */
    char *body;
    int tries;
};

struct httpq {
    uv_loop_t *loop;
    struct al_curl *curl;
    struct engine *e;
    const struct config_source *src;
    char *token;
    char *auth;
    struct engine_watch *watch;
    struct al_list jobs; /* newest first */
    unsigned live;
    bool at_cap; /* `concurrent` jobs are live: not polling (counted once) */
    /* polling */
    uv_timer_t poll_timer;
    struct al_http_call *poll_call;
    uint64_t poll_started;
    unsigned poll_backoff;
    int syncing; /* accepted jobs waiting for engine_sync */
    /* reporting, one request at a time so reports stay in order */
    struct al_list reports; /* sent from the front */
    struct al_http_call *report_call;
    uv_timer_t report_timer;
    unsigned report_backoff;
    bool stopping;
    int closes;
    void (*done)(void *data);
    void *done_data;
};

static void poll_soon(struct httpq *q, uint64_t ms);
static void send_next_report(struct httpq *q);
static void maybe_close(struct httpq *q);

static unsigned backoff_next(unsigned cur)
{
    if (cur < BACKOFF_MIN_MS)
        return BACKOFF_MIN_MS;
    return cur * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : cur * 2;
}

static bool queue_id_ok(const char *s)
{
    size_t n = 0;
    for (const char *p = s; *p; p++, n++) {
        if (!isalnum((unsigned char)*p) && !strchr("._:-", *p))
            return false;
    }
    return n > 0 && n <= MAX_QUEUE_ID;
}

static char *url_for(struct httpq *q, const char *path)
{
    const char *base = q->src->url;
    size_t n = strlen(base);
    while (n && base[n - 1] == '/')
        n--;
    char *u = NULL;
    if (asprintf(&u, "%.*s%s", (int)n, base, path) < 0)
        return NULL;
    return u;
}

static struct qjob *find_job(struct httpq *q, const char *job)
{
    al_list_for_each(j, &q->jobs, struct qjob, link) {
        if (streq(j->job, job))
            return j;
    }
    return NULL;
}

/* ------------------------------------------------------------ reports */

static char *gen_body(const char *state, const char *job, bool has_code, int code,
                      const char *reason, const char *log_tail, size_t log_len)
{
    yajl_gen g = yajl_gen_alloc(NULL);
    if (!g)
        return NULL;
    yajl_gen_config(g, yajl_gen_validate_utf8, 0);
    yajl_gen_map_open(g);
    yajl_gen_string(g, (const unsigned char *)"state", 5);
    yajl_gen_string(g, (const unsigned char *)state, strlen(state));
    if (job && *job) {
        yajl_gen_string(g, (const unsigned char *)"job", 3);
        yajl_gen_string(g, (const unsigned char *)job, strlen(job));
    }
    if (has_code) {
        yajl_gen_string(g, (const unsigned char *)"exit_code", 9);
        yajl_gen_integer(g, code);
    }
    if (reason) {
        size_t rl = 0;
        _cleanup_free_ char *red = al_redact(reason, strlen(reason), &rl);
        yajl_gen_string(g, (const unsigned char *)"reason", 6);
        yajl_gen_string(g, (const unsigned char *)(red ? red : ""), red ? rl : 0);
    }
    if (log_tail) {
        /* output is bytes; JSON wants UTF-8: replace what is not printable ASCII,
         * newline or tab */
        _cleanup_free_ char *clean = malloc(log_len + 1);
        if (clean) {
            for (size_t i = 0; i < log_len; i++) {
                unsigned char c = (unsigned char)log_tail[i];
                clean[i] = (c == '\n' || c == '\t' || (c >= 0x20 && c < 0x7f)) ? (char)c : '?';
            }
            yajl_gen_string(g, (const unsigned char *)"log_tail", 8);
            yajl_gen_string(g, (const unsigned char *)clean, log_len);
        }
    }
    yajl_gen_map_close(g);
    const unsigned char *buf;
    size_t len;
    char *out = NULL;
    if (yajl_gen_get_buf(g, &buf, &len) == yajl_gen_status_ok)
        out = strndup((const char *)buf, len);
    yajl_gen_free(g);
    return out;
}

static void report_add_held(struct httpq *q, const char *qid, const char *job, bool result,
                            bool held, char *body)
{
    if (!body)
        return;
    struct report *r = calloc(1, sizeof(*r));
    if (!r) {
        free(body);
        return;
    }
    snprintf(r->qid, sizeof(r->qid), "%s", qid);
    snprintf(r->job, sizeof(r->job), "%s", job ? job : "");
    r->result = result;
    r->held = held;
    r->body = body;
    al_list_add_tail(&q->reports, &r->link);
    send_next_report(q);
}

static void report_add(struct httpq *q, const char *qid, const char *job, bool result, char *body)
{
    report_add_held(q, qid, job, result, false, body);
}

/* The report being sent or next to be, NULL if none. */
static struct report *report_first(struct httpq *q)
{
    if (al_list_empty(&q->reports))
        return NULL;
    return al_list_first_entry(&q->reports, struct report, link);
}

static void report_pop(struct httpq *q)
{
    struct report *r = report_first(q);
    al_list_del(&r->link);
    free(r->body);
    free(r);
}

static void on_report_timer(uv_timer_t *t)
{
    send_next_report(t->data);
}

static void on_report_done(int result, const struct al_http_response *resp,
                           const struct al_error *err, void *data)
{
    struct httpq *q = data;
    q->report_call = NULL;
    if (result == -ECANCELED || q->stopping)
        return;
    struct report *r = report_first(q);
    if (!r)
        return;
    long st = result == 0 ? resp->status : 0;
    if (st >= 200 && st < 300) {
        q->report_backoff = 0;
        report_pop(q);
        send_next_report(q);
        return;
    }
    if (st == 410 && !r->result && r->job[0]) {
        log_info(r->job, "queue %s: the queue withdrew job %s; cancelling", q->src->name, r->qid);
        struct al_error *cerr = NULL;
        if (engine_cancel(q->e, r->job, &cerr) < 0)
            al_error_free(cerr);
        report_pop(q);
        send_next_report(q);
        return;
    }
    if (st >= 400 && st < 500) {
        log_warn(r->job[0] ? r->job : NULL, "queue %s: %s report for %s refused: HTTP %ld %s",
                 q->src->name, r->result ? "result" : "status", r->qid, st, resp->reason);
        report_pop(q);
        send_next_report(q);
        return;
    }
    if (++r->tries >= MAX_REPORT_TRIES) {
        log_error(r->job[0] ? r->job : NULL, "queue %s: giving up reporting to %s: %s",
                  q->src->name, r->qid, result < 0 ? al_error_message(err) : resp->reason);
        report_pop(q);
        send_next_report(q);
        return;
    }
    q->report_backoff = backoff_next(q->report_backoff);
    uv_timer_start(&q->report_timer, on_report_timer, q->report_backoff, 0);
}

static void send_next_report(struct httpq *q)
{
    struct report *r = report_first(q);
    if (q->stopping || q->report_call || uv_is_active((uv_handle_t *)&q->report_timer) || !r ||
        r->held)
        return;
    char path[MAX_QUEUE_ID + 32];
    snprintf(path, sizeof(path), "/jobs/%s/%s", r->qid, r->result ? "result" : "status");
    _cleanup_free_ char *url = url_for(q, path);
    const char *headers[] = {q->auth, "Content-Type: application/json", NULL};
    struct al_http_request req = {.method = "POST",
                                  .url = url,
                                  .headers = headers,
                                  .body = r->body,
                                  .body_len = strlen(r->body),
                                  .max_response = 64 * 1024,
                                  .timeout_ms = 30000};
    struct al_error *err = NULL;
    if (!url || al_http_start(q->curl, &req, on_report_done, q, &q->report_call, &err) < 0) {
        al_error_free(err);
        q->report_backoff = backoff_next(q->report_backoff);
        uv_timer_start(&q->report_timer, on_report_timer, q->report_backoff, 0);
    }
}

/* ------------------------------------------------------------ engine events */

static void on_event(const struct store_event *ev, void *data)
{
    struct httpq *q = data;
    struct qjob *j = find_job(q, ev->job_id);
    if (!j || job_state_is_terminal(ev->to) || ev->to == JOB_STATE_QUEUED)
        return;
    report_add(q, j->qid, j->job, false,
               gen_body(job_state_to_string(ev->to), j->job, false, 0, NULL, NULL, 0));
}

static char *log_tail(struct httpq *q, const char *job, size_t *ret_len)
{
    _cleanup_free_ char *dir = engine_job_dir(q->e, job);
    _cleanup_free_ char *path = dir ? al_path_join(dir, "output.log") : NULL;
    if (!path)
        return NULL;
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    struct stat st;
    if (fstat(fd, &st) < 0)
        return NULL;
    off_t from = st.st_size > (off_t)LOG_TAIL_BYTES ? st.st_size - (off_t)LOG_TAIL_BYTES : 0;
    char *buf = malloc(LOG_TAIL_BYTES + 1);
    if (!buf)
        return NULL;
    ssize_t n = pread(fd, buf, LOG_TAIL_BYTES, from);
    if (n < 0) {
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *ret_len = (size_t)n;
    return buf;
}

static void on_finished(const char *job, enum job_state state, const struct attempt_result *last,
                        void *data)
{
    struct httpq *q = data;
    struct qjob *j = find_job(q, job);
    if (!j)
        return;
    al_list_del(&j->link);
    q->live--;
    size_t tl = 0;
    _cleanup_free_ char *tail = log_tail(q, job, &tl);
    bool code = last && (state == JOB_STATE_SUCCEEDED || state == JOB_STATE_FAILED);
    report_add(q, j->qid, j->job, true,
               gen_body(job_state_to_string(state), j->job, code, code ? last->exit_code : 0,
                        last ? last->reason : "", tail, tl));
    free(j);
    poll_soon(q, 0);
}

/* ------------------------------------------------------------ polling */

struct accepted {
    struct httpq *q;
    char qid[MAX_QUEUE_ID + 1];
    char job[STORE_JOB_ID_SIZE];
};

static void on_synced(int result, void *data)
{
    struct accepted *a = data;
    struct httpq *q = a->q;
    q->syncing--;
    if (result < 0)
        log_warn(a->job, "queue %s: could not make the job durable before acknowledging it",
                 q->src->name);
    al_list_for_each(r, &q->reports, struct report, link) {
        if (r->held && streq(r->job, a->job))
            r->held = false;
    }
    free(a);
    send_next_report(q);
    maybe_close(q);
}

static void accept_job(struct httpq *q, const struct al_http_response *resp)
{
    struct job_spec *spec = NULL;
    struct al_error *err = NULL;
    const char *hdr_id = al_http_header(resp, "X-Job-Id");
    int r = job_spec_parse(resp->body.data, resp->body.len, 0, &spec, &err);
    const char *qid = r == 0 && spec->source.id ? spec->source.id : hdr_id;
    char qid_buf[MAX_QUEUE_ID + 1] = "";
    if (qid && queue_id_ok(qid))
        snprintf(qid_buf, sizeof(qid_buf), "%s", qid);
    if (r == 0 && !qid_buf[0]) {
        r = al_error_set(&err, EINVAL, "source.id: the queue's job id is missing or invalid");
    }
    if (r == 0) {
        spec->source.type = JOB_SOURCE_HTTP;
        /* routed among the queue's pools; a refusal is reported REJECTED */
        struct engine_submit opts = {.pools = q->src->pools};
        char id[STORE_JOB_ID_SIZE];
        r = engine_submit(q->e, TAKE_PTR(spec), &opts, id, &err);
        if (r == 0) {
            struct qjob *j = calloc(1, sizeof(*j));
            struct accepted *a = calloc(1, sizeof(*a));
            if (j && a) {
                snprintf(j->qid, sizeof(j->qid), "%s", qid_buf);
                memcpy(j->job, id, sizeof(id));
                al_list_add(&q->jobs, &j->link);
                q->live++;
                a->q = q;
                memcpy(a->qid, qid_buf, sizeof(a->qid));
                memcpy(a->job, id, sizeof(id));
                q->syncing++;
                log_info(id, "queue %s: accepted %s", q->src->name, qid_buf);
                /* first in line, sent once the job is durable */
                report_add_held(q, qid_buf, id, false, true,
                                gen_body("QUEUED", id, false, 0, NULL, NULL, 0));
                engine_sync(q->e, on_synced, a);
            } else {
                free(j);
                free(a);
                engine_cancel(q->e, id, &err);
                al_error_free(err);
            }
            return;
        }
    }
    job_spec_free(spec);
    log_warn(NULL, "queue %s: rejected %s: %s", q->src->name, qid_buf[0] ? qid_buf : "a job",
             al_error_message(err));
    if (qid_buf[0])
        report_add(q, qid_buf, NULL, true,
                   gen_body("REJECTED", NULL, false, 0, al_error_message(err), NULL, 0));
    al_error_free(err);
}

static void on_poll_done(int result, const struct al_http_response *resp,
                         const struct al_error *err, void *data)
{
    struct httpq *q = data;
    q->poll_call = NULL;
    if (result == -ECANCELED || q->stopping)
        return;
    uint64_t took = uv_now(q->loop) - q->poll_started;
    uint64_t interval = (uint64_t)q->src->poll_interval_s * 1000u;
    if (result == 0 && resp->status == 200) {
        q->poll_backoff = 0;
        accept_job(q, resp);
        poll_soon(q, 0);
        return;
    }
    if (result == 0 && resp->status == 204) {
        q->poll_backoff = 0;
        /* a server that long-polls answered after waiting: ask again now;
         * one that answers at once is asked again after poll_interval */
        poll_soon(q, took >= 1000 ? 0 : interval);
        return;
    }
    q->poll_backoff = backoff_next(q->poll_backoff);
    log_warn(NULL, "queue %s: polling failed (%s); retrying in %u s", q->src->name,
             result < 0        ? al_error_message(err)
             : resp->reason[0] ? resp->reason
                               : "bad status",
             q->poll_backoff / 1000);
    poll_soon(q, q->poll_backoff);
}

static void on_poll_timer(uv_timer_t *t)
{
    struct httpq *q = t->data;
    if (q->stopping || q->poll_call)
        return;
    /* the queue holds what is not taken: no need for a free VM now */
    struct engine_admit a = {
            .pool = q->src->pool, .live = q->live, .cap = (unsigned)q->src->concurrent};
    if (engine_admit(q->e, &a, NULL, 0) != ENGINE_ADMIT_YES) {
        if (!q->at_cap)
            limits_hit(AL_LIMIT_SOURCE_JOBS);
        q->at_cap = true;
        return;
    }
    q->at_cap = false;
    char path[64];
    snprintf(path, sizeof(path), "/jobs/next?wait=%d", LONG_POLL_S);
    _cleanup_free_ char *url = url_for(q, path);
    const char *headers[] = {q->auth, "Accept: application/json", NULL};
    struct al_http_request req = {.url = url,
                                  .headers = headers,
                                  .max_response = JOB_SPEC_MAX_BYTES,
                                  .timeout_ms = (LONG_POLL_S + 15) * 1000L};
    struct al_error *err = NULL;
    q->poll_started = uv_now(q->loop);
    if (!url || al_http_start(q->curl, &req, on_poll_done, q, &q->poll_call, &err) < 0) {
        log_warn(NULL, "queue %s: %s", q->src->name, err ? al_error_message(err) : "no memory");
        al_error_free(err);
        q->poll_backoff = backoff_next(q->poll_backoff);
        poll_soon(q, q->poll_backoff);
    }
}

static void poll_soon(struct httpq *q, uint64_t ms)
{
    if (!q->stopping && !q->poll_call)
        uv_timer_start(&q->poll_timer, on_poll_timer, ms, 0);
}

/* ------------------------------------------------------------ lifecycle */

int httpq_start(uv_loop_t *loop, struct al_curl *curl, struct engine *e,
                const struct config_source *src, struct httpq **ret, struct al_error **err)
{
    if (!curl)
        return al_error_set(err, EINVAL, "queue %s needs the HTTP client", src->name);
    if (!*src->token_file)
        return al_error_set(err, EINVAL, "queue %s: token_file is required", src->name);
    struct httpq *q = calloc(1, sizeof(*q));
    if (!q)
        return al_error_set(err, ENOMEM, "queue %s", src->name);
    q->loop = loop;
    q->curl = curl;
    al_list_init(&q->jobs);
    al_list_init(&q->reports);
    q->e = e;
    q->src = src;
    size_t len = 0;
    int r = al_read_secret_file(src->token_file, "token_file", 4096, &q->token, &len, err);
    if (r < 0) {
        free(q);
        return al_error_wrap(err, "queue %s", src->name);
    }
    while (len && isspace((unsigned char)q->token[len - 1]))
        q->token[--len] = '\0';
    if (len < AL_REDACT_MIN_LEN || strpbrk(q->token, "\r\n") || al_redact_add(q->token) < 0 ||
        asprintf(&q->auth, "Authorization: Bearer %s", q->token) < 0) {
        explicit_bzero(q->token, len);
        free(q->token);
        free(q);
        return al_error_set(err, EINVAL,
                            "queue %s: the token in %s is empty, too short or not one line",
                            src->name, src->token_file);
    }
    static const struct engine_observer obs = {.event = on_event, .finished = on_finished};
    q->watch = engine_observe(e, &obs, q);
    uv_timer_init(loop, &q->poll_timer);
    uv_timer_init(loop, &q->report_timer);
    q->poll_timer.data = q->report_timer.data = q;
    poll_soon(q, 0);
    log_info(NULL, "queue %s: polling %s", src->name, src->url);
    *ret = q;
    return 0;
}

static void on_closed(uv_handle_t *h)
{
    struct httpq *q = h->data;
    if (--q->closes > 0)
        return;
    while (!al_list_empty(&q->reports))
        report_pop(q);
    al_list_for_each_safe(j, tmp, &q->jobs, struct qjob, link) {
        al_list_del(&j->link);
        free(j);
    }
    al_redact_remove(q->token);
    explicit_bzero(q->token, strlen(q->token));
    explicit_bzero(q->auth, strlen(q->auth));
    free(q->token);
    free(q->auth);
    void (*done)(void *) = q->done;
    void *data = q->done_data;
    free(q);
    if (done)
        done(data);
}

/* Closes the handles once nothing is in flight (stop waits for syncs). */
static void maybe_close(struct httpq *q)
{
    if (!q->stopping || q->syncing || q->closes)
        return;
    q->closes = 2;
    uv_close((uv_handle_t *)&q->poll_timer, on_closed);
    uv_close((uv_handle_t *)&q->report_timer, on_closed);
}

void httpq_stop(struct httpq *q, void (*done)(void *data), void *data)
{
    q->stopping = true;
    q->done = done;
    q->done_data = data;
    engine_unobserve(q->e, q->watch);
    q->watch = NULL;
    if (q->poll_call)
        al_http_cancel(q->poll_call);
    if (q->report_call)
        al_http_cancel(q->report_call);
    uv_timer_stop(&q->poll_timer);
    uv_timer_stop(&q->report_timer);
    maybe_close(q);
}
