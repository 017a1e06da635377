#include "runner/api/streams.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runner/base/list.h"
#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/api/json.h"

#define PIECE        (64u << 10)
#define MAX_WAIT_S   300
#define EVENTS_LIMIT 1000
#define HEARTBEAT_MS 25000u

enum stream_kind {
    ST_FILE,          /* a download: the file to its end */
    ST_LOG,           /* a job's output.log, maybe followed */
    ST_EVENTS_POLL,   /* a long-poll waiting for an event */
    ST_EVENTS_FOLLOW, /* an NDJSON event stream */
};

struct stream {
    struct api_streams *owner;
    struct al_list link; /* on owner->list */
    enum stream_kind kind;
    struct api_req *req;            /* NULL once answered or aborted */
    char job_id[STORE_JOB_ID_SIZE]; /* "" = every job */
    uv_timer_t timer;
    int busy;     /* inside pump: the abort callback must not free */
    bool dead;    /* aborted while busy */
    bool blocked; /* waiting for the client to drain */
    /* files */
    int fd;
    uint64_t offset;
    char *path; /* ST_LOG: output.log, reopened after a retry */
    bool follow;
    bool job_done;
    bool rotate; /* a new attempt started: finish this file, then reopen */
    /* events */
    int64_t after;
    unsigned limit;
};

struct api_streams {
    struct api_ctx *ctx;
    struct al_list list; /* struct stream, newest first */
    int closing;         /* timers being closed */
    bool stopping;
    int64_t last_seq; /* -1 until known */
    void (*done)(void *data);
    void *done_data;
};

static char piece[PIECE];

static void maybe_stopped(struct api_streams *s)
{
    if (!s->stopping || !al_list_empty(&s->list) || s->closing)
        return;
    void (*done)(void *) = s->done;
    void *data = s->done_data;
    free(s);
    if (done)
        done(data);
}

static void on_timer_closed(uv_handle_t *h)
{
    struct stream *st = h->data;
    struct api_streams *s = st->owner;
    free(st->path);
    free(st);
    s->closing--;
    maybe_stopped(s);
}

static void stream_free(struct stream *st)
{
    struct api_streams *s = st->owner;
    al_list_del(&st->link);
    if (st->fd >= 0)
        close(st->fd);
    st->fd = -1;
    s->closing++;
    uv_close((uv_handle_t *)&st->timer, on_timer_closed);
}

static void on_abort(struct api_req *r, void *data)
{
    (void)r;
    struct stream *st = data;
    st->req = NULL;
    if (st->busy)
        st->dead = true;
    else
        stream_free(st);
}

static void pump(struct stream *st);

static void on_drain(struct api_req *r, void *data)
{
    (void)r;
    struct stream *st = data;
    st->blocked = false;
    pump(st);
}

static struct stream *stream_new(struct api_ctx *ctx, struct api_req *r, enum stream_kind kind,
                                 const char *job_id)
{
    struct api_streams *s = ctx->streams;
    struct stream *st = calloc(1, sizeof(*st));
    if (!st)
        return NULL;
    st->owner = s;
    st->kind = kind;
    st->req = r;
    st->fd = -1;
    snprintf(st->job_id, sizeof(st->job_id), "%s", job_id ? job_id : "");
    uv_timer_init(ctx->loop, &st->timer);
    st->timer.data = st;
    al_list_add(&s->list, &st->link);
    api_req_on_abort(r, on_abort, st);
    api_req_on_drain(r, on_drain, st);
    return st;
}

/* The response is complete: forget the request, free the stream. */
static void stream_finish(struct stream *st)
{
    if (st->req) {
        api_req_on_abort(st->req, NULL, NULL);
        st->req = NULL;
    }
    if (st->busy)
        st->dead = true;
    else
        stream_free(st);
}

/* ------------------------------------------------------------ files and logs */

static void try_open_log(struct stream *st)
{
    if (st->fd >= 0 || !st->path)
        return;
    st->fd = open(st->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
}

static void pump_file(struct stream *st)
{
    while (st->req && !st->blocked) {
        if (st->kind == ST_LOG)
            try_open_log(st);
        if (st->fd < 0)
            break;
        ssize_t n = pread(st->fd, piece, sizeof(piece), (off_t)st->offset);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            log_warn(st->job_id[0] ? st->job_id : NULL, "API: reading %s: %s",
                     st->path ? st->path : "a file", strerror(errno));
            api_stream_end(st->req);
            stream_finish(st);
            return;
        }
        if (n == 0) {
            if (st->rotate) {
                /* the previous attempt's file is done; the new one starts at 0 */
                close(st->fd);
                st->fd = -1;
                st->offset = 0;
                st->rotate = false;
                continue;
            }
            break;
        }
        st->offset += (uint64_t)n;
        int w = api_stream_write(st->req, piece, (size_t)n);
        if (w < 0 || !st->req)
            return;
        if (w > 0)
            st->blocked = true;
    }
    if (!st->req || st->blocked)
        return;
    if (st->kind == ST_FILE || !st->follow || st->job_done) {
        api_stream_end(st->req);
        stream_finish(st);
    }
}

/* ------------------------------------------------------------ events */

static int write_events(struct stream *st, const struct store_event *ev, size_t n)
{
    _cleanup_json_gen_ yajl_gen g = json_gen_new();
    _cleanup_buf_ struct al_buf out = AL_BUF_INIT;
    if (!g)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        yajl_gen_reset(g, NULL);
        yajl_gen_clear(g);
        if (json_event(g, &ev[i]) < 0)
            return -EINVAL;
        const unsigned char *buf;
        size_t len;
        yajl_gen_get_buf(g, &buf, &len);
        if (al_buf_append(&out, buf, len) < 0 || al_buf_puts(&out, "\n") < 0)
            return -ENOMEM;
        st->after = ev[i].seq;
    }
    return api_stream_write(st->req, out.data, out.len);
}

static void pump_events(struct stream *st)
{
    struct api_ctx *ctx = st->owner->ctx;
    while (st->req && !st->blocked) {
        struct store_event *ev = NULL;
        size_t n = 0;
        struct al_error *err = NULL;
        if (store_events_since(ctx->store, st->job_id[0] ? st->job_id : NULL, st->after,
                               EVENTS_LIMIT, &ev, &n, &err) < 0) {
            log_warn(NULL, "API: reading events: %s", al_error_message(err));
            al_error_free(err);
            api_stream_end(st->req);
            stream_finish(st);
            return;
        }
        int w = n ? write_events(st, ev, n) : 0;
        store_events_free(ev, n);
        if (w < 0 || !st->req)
            return;
        if (w > 0)
            st->blocked = true;
        if (n < EVENTS_LIMIT)
            break;
    }
    if (st->req && !st->blocked && st->job_done) {
        api_stream_end(st->req);
        stream_finish(st);
    }
}

/* Answers a long-poll with what there is (possibly nothing). */
static void answer_poll(struct stream *st, bool only_if_any)
{
    struct api_ctx *ctx = st->owner->ctx;
    struct store_event *ev = NULL;
    size_t n = 0;
    struct al_error *err = NULL;
    if (store_events_since(ctx->store, st->job_id[0] ? st->job_id : NULL, st->after, st->limit, &ev,
                           &n, &err) < 0) {
        api_reply_error(st->req, 500, "internal", "reading events: %s", al_error_message(err));
        al_error_free(err);
        stream_finish(st);
        return;
    }
    if (!n && only_if_any) {
        store_events_free(ev, n);
        return;
    }
    _cleanup_json_gen_ yajl_gen g = json_gen_new();
    int r = g ? 0 : -ENOMEM;
    int64_t next = st->after;
    if (g) {
        r |= json_open_map(g);
        r |= json_key(g, "events");
        r |= json_open_array(g);
        for (size_t i = 0; i < n; i++) {
            r |= json_event(g, &ev[i]);
            next = ev[i].seq;
        }
        r |= json_close_array(g);
        r |= json_kv_int(g, "next_after", next);
        r |= json_close_map(g);
    }
    store_events_free(ev, n);
    if (r)
        api_reply_error(st->req, 500, "internal", "generating the response failed");
    else
        json_reply(st->req, 200, g);
    stream_finish(st);
}

static void on_poll_timeout(uv_timer_t *t)
{
    struct stream *st = t->data;
    if (st->req)
        answer_poll(st, false);
}

static void on_heartbeat(uv_timer_t *t)
{
    struct stream *st = t->data;
    if (st->req && !st->blocked)
        api_stream_write(st->req, "\n", 1);
}

static void pump(struct stream *st)
{
    st->busy++;
    switch (st->kind) {
    case ST_FILE:
    case ST_LOG:
        pump_file(st);
        break;
    case ST_EVENTS_FOLLOW:
        pump_events(st);
        break;
    case ST_EVENTS_POLL:
        if (st->req)
            answer_poll(st, true);
        break;
    }
    st->busy--;
    if (st->dead && !st->busy) {
        st->dead = false;
        stream_free(st);
    }
}

/* ------------------------------------------------------------ endpoints */

/* Sends the head of a chunked response and the first of the body. */
static void start_stream(struct stream *st, int status, const char *content_type, const char *extra)
{
    st->busy++;
    api_stream_start(st->req, status, content_type, extra);
    st->busy--;
    if (st->dead) {
        st->dead = false;
        stream_free(st);
        return;
    }
    pump(st);
}

static bool query_flag(struct api_req *r, const char *name)
{
    const char *v = http_request_query(api_req_http(r), name);
    bool b = false;
    return v && (!*v || (al_parse_bool(v, &b) == 0 && b));
}

void api_logs(struct api_ctx *ctx, struct api_req *r, const struct route_match *m)
{
    uint64_t offset = 0;
    if (api_query_uint(r, "offset", UINT64_MAX / 2, 0, &offset) < 0)
        return;
    struct store_job *job = NULL;
    if (api_get_job(ctx, r, m->job_id, &job) < 0)
        return;
    bool terminal = job_state_is_terminal(job->state);
    store_job_free(job);
    _cleanup_free_ char *dir = engine_job_dir(ctx->engine, m->job_id);
    _cleanup_free_ char *path = dir ? al_path_join(dir, "output.log") : NULL;
    if (!path) {
        api_reply_error(r, 500, "internal", "out of memory");
        return;
    }
    struct stream *st = stream_new(ctx, r, ST_LOG, m->job_id);
    if (!st) {
        api_reply_error(r, 500, "internal", "out of memory");
        return;
    }
    st->path = TAKE_PTR(path);
    st->offset = offset;
    st->follow = query_flag(r, "follow");
    st->job_done = terminal;
    char extra[96];
    snprintf(extra, sizeof(extra), "X-Agentlab-Job-State: %s\r\n", terminal ? "terminal" : "live");
    start_stream(st, 200, "text/plain; charset=utf-8", extra);
}

void api_send_file(struct api_ctx *ctx, struct api_req *r, int fd, const char *content_type)
{
    struct stream *st = stream_new(ctx, r, ST_FILE, NULL);
    if (!st) {
        close(fd);
        api_reply_error(r, 500, "internal", "out of memory");
        return;
    }
    st->fd = fd;
    start_stream(st, 200, content_type, NULL);
}

int64_t api_streams_last_seq(struct store *store)
{
    /* events only ever get higher numbers: find the highest by bisection */
    int64_t lo = 0, hi = INT64_MAX / 2;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        struct store_event *ev = NULL;
        size_t n = 0;
        struct al_error *err = NULL;
        if (store_events_since(store, NULL, mid, 1, &ev, &n, &err) < 0) {
            al_error_free(err);
            return lo;
        }
        store_events_free(ev, n);
        if (n)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

void api_events(struct api_ctx *ctx, struct api_req *r, const struct route_match *m)
{
    const char *job_id = m->id == ROUTE_JOB_EVENTS ? m->job_id : NULL;
    bool follow = query_flag(r, "follow");
    const char *after_s = http_request_query(api_req_http(r), "after");
    uint64_t after = 0, limit = 0, wait = 0;
    if (api_query_uint(r, "after", INT64_MAX / 2, 0, &after) < 0 ||
        api_query_uint(r, "limit", STORE_LIST_MAX, 100, &limit) < 0 ||
        api_query_uint(r, "wait", MAX_WAIT_S, 0, &wait) < 0)
        return;
    bool terminal = false;
    if (job_id) {
        struct store_job *job = NULL;
        if (api_get_job(ctx, r, job_id, &job) < 0)
            return;
        terminal = job_state_is_terminal(job->state);
        store_job_free(job);
    }
    struct stream *st = stream_new(ctx, r, follow ? ST_EVENTS_FOLLOW : ST_EVENTS_POLL, job_id);
    if (!st) {
        api_reply_error(r, 500, "internal", "out of memory");
        return;
    }
    st->after = (int64_t)after;
    st->limit = limit ? (unsigned)limit : 100;
    if (follow) {
        /* a stream of every job starts now unless told where */
        if (!job_id && !after_s) {
            if (ctx->streams->last_seq < 0)
                ctx->streams->last_seq = api_streams_last_seq(ctx->store);
            st->after = ctx->streams->last_seq;
        }
        st->job_done = terminal;
        uv_timer_start(&st->timer, on_heartbeat, HEARTBEAT_MS, HEARTBEAT_MS);
        start_stream(st, 200, "application/x-ndjson", NULL);
        return;
    }
    st->busy++;
    answer_poll(st, wait > 0 && !terminal);
    st->busy--;
    if (st->dead) {
        stream_free(st);
        return;
    }
    if (st->req)
        uv_timer_start(&st->timer, on_poll_timeout, wait * 1000, 0);
}

/* ------------------------------------------------------------ engine events */

struct api_streams *api_streams_new(struct api_ctx *ctx)
{
    struct api_streams *s = calloc(1, sizeof(*s));
    if (s) {
        s->ctx = ctx;
        s->last_seq = -1;
        al_list_init(&s->list);
    }
    return s;
}

void api_streams_stop(struct api_streams *s, void (*done)(void *data), void *data)
{
    s->stopping = true;
    s->done = done;
    s->done_data = data;
    /* requests still here were never aborted (the server is gone): end them */
    while (!al_list_empty(&s->list)) {
        struct stream *st = al_list_first_entry(&s->list, struct stream, link);
        st->req = NULL;
        stream_free(st);
    }
    maybe_stopped(s);
}

/* Runs fn on every stream that matches job_id; fn may free the stream. */
static void each_stream(struct api_streams *s, const char *job_id, bool all_jobs_too,
                        void (*fn)(struct stream *st, void *arg), void *arg)
{
    al_list_for_each_safe(st, next, &s->list, struct stream, link) {
        bool match = st->job_id[0] ? streq(st->job_id, job_id) : all_jobs_too;
        if (match && st->req)
            fn(st, arg);
    }
}

static void wake_event(struct stream *st, void *arg)
{
    const struct store_event *ev = arg;
    if (st->kind == ST_LOG) {
        /* a retry's new attempt writes a new output.log */
        if (ev->to == JOB_STATE_PROVISIONING && st->fd >= 0)
            st->rotate = true;
        return;
    }
    if (st->kind == ST_EVENTS_POLL || st->kind == ST_EVENTS_FOLLOW)
        pump(st);
}

void api_streams_on_event(struct api_streams *s, const struct store_event *ev)
{
    if (ev->seq > s->last_seq && s->last_seq >= 0)
        s->last_seq = ev->seq;
    each_stream(s, ev->job_id, true, wake_event, (void *)ev);
}

static void wake_output(struct stream *st, void *arg)
{
    (void)arg;
    if (st->kind == ST_LOG)
        pump(st);
}

void api_streams_on_output(struct api_streams *s, const char *job_id)
{
    each_stream(s, job_id, false, wake_output, NULL);
}

static void wake_finished(struct stream *st, void *arg)
{
    (void)arg;
    if (st->kind == ST_LOG || st->kind == ST_EVENTS_FOLLOW) {
        st->job_done = true;
        pump(st);
    }
}

void api_streams_on_finished(struct api_streams *s, const char *job_id)
{
    each_stream(s, job_id, false, wake_finished, NULL);
}
