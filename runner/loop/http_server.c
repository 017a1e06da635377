#include "runner/loop/http_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "runner/base/buf.h"
#include "runner/base/hardlimits.h"
#include "runner/base/list.h"

#define READ_BUF_SIZE      (64u << 10)
#define DEFAULT_MAX_CONNS  64
#define DEFAULT_HEADER_MS  (10u * 1000u)
#define DEFAULT_BODY_MS    (10u * 60u * 1000u)
#define DEFAULT_IDLE_MS    (60u * 1000u)
#define DEFAULT_HIGH_WATER (1u << 20)
/* connections over the limit that are still being told so */
#define MAX_REJECTING 64

enum conn_state {
    CONN_IDLE,     /* waiting for the first byte of a request */
    CONN_READING,  /* a request is arriving */
    CONN_HANDLING, /* the handler has it; nothing is read */
    CONN_CLOSING,
};

struct api_conn;

struct api_req {
    struct api_conn *c;
    void *data;
    void (*data_free)(void *data);
    void (*abort_cb)(struct api_req *r, void *data);
    void *abort_data;
    void (*drain_cb)(struct api_req *r, void *data);
    void *drain_data;
    bool want_drain;
    bool answered;   /* the response is complete (queued) */
    bool streaming;  /* api_stream_start() was called */
    bool raw_stream; /* HTTP/1.0: no chunked encoding; the end closes */
    bool close_after;
    bool is_head;
};

struct api_conn {
    struct api_server *srv;
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_pipe_t pipe;
        uv_tcp_t tcp;
    } h;
    uv_timer_t timer;
    struct al_list link; /* on api_server.conns */
    bool tcp;
    bool rejecting; /* over the connection limit: answer 503 and close */
    enum conn_state state;
    struct http_req_parser parser;
    struct api_req req;
    bool body_timer_set;
    char *pending; /* bytes after the request being handled (pipelining) */
    size_t pending_len;
    size_t write_queued; /* bytes in uv_write requests not yet completed */
    unsigned writes_in_flight;
    int handles_open;
    bool peer_eof;
};

struct api_server {
    uv_loop_t *loop;
    struct api_server_limits lim;
    const struct api_server_handler *handler;
    void *handler_data;
    int body_limit; /* enum al_limit, 0 = AL_LIMIT_API_BODY */
    uv_pipe_t unix_listener;
    bool have_unix;
    uv_tcp_t tcp_listener;
    bool have_tcp;
    int tcp_port;
    char *unix_path;
    struct al_list conns; /* newest first, until both handles are closed */
    unsigned n_conns;
    unsigned n_rejecting;
    int listeners_open;
    bool stopping;
    void (*stopped)(void *data);
    void *stopped_data;
    struct api_server_stats stats;
    char read_buf[READ_BUF_SIZE];
    bool read_buf_busy;
};

struct write_req {
    uv_write_t w;
    struct api_conn *c;
    size_t len;
    char data[];
};

static void conn_close(struct api_conn *c);
static void conn_feed(struct api_conn *c, const char *data, size_t len);
static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);
static void maybe_finish_stop(struct api_server *s);

/* ------------------------------------------------------------ timers */

static void on_timeout(uv_timer_t *t)
{
    struct api_conn *c = t->data;
    c->srv->stats.timeouts++;
    limits_hit(AL_LIMIT_API_TIMEOUT);
    if (c->state == CONN_READING && !c->writes_in_flight && !c->req.answered) {
        /* tell the slow client why, then close */
        uv_read_stop(&c->h.stream);
        c->state = CONN_HANDLING;
        c->req.close_after = true;
        api_reply_error(&c->req, 408, "request_timeout",
                        http_req_parser_headers_done(&c->parser)
                                ? "the request body did not arrive in time"
                                : "the request headers did not arrive in time");
        return;
    }
    conn_close(c);
}

static void timer_set(struct api_conn *c, uint64_t ms)
{
    if (c->state == CONN_CLOSING)
        return;
    uv_timer_start(&c->timer, on_timeout, ms, 0);
}

/* ------------------------------------------------------------ writing */

static void finish_request(struct api_conn *c);

static void on_written(uv_write_t *w, int status)
{
    struct write_req *wr = container_of(w, struct write_req, w);
    struct api_conn *c = wr->c;
    c->write_queued -= wr->len;
    c->writes_in_flight--;
    free(wr);
    if (c->state == CONN_CLOSING)
        return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    struct api_req *r = &c->req;
    if (r->want_drain && c->write_queued < c->srv->lim.stream_high_water / 2 + 1) {
        r->want_drain = false;
        if (r->drain_cb)
            r->drain_cb(r, r->drain_data);
        if (c->state == CONN_CLOSING)
            return;
    }
    if (c->state != CONN_HANDLING)
        return;
    if (c->writes_in_flight) {
        timer_set(c, c->srv->lim.idle_timeout_ms); /* a stalled reader */
        return;
    }
    uv_timer_stop(&c->timer);
    if (r->answered)
        finish_request(c);
}

/* Queues one write of up to three pieces, copied. */
static int conn_write(struct api_conn *c, const void *a, size_t alen, const void *b, size_t blen,
                      const void *d, size_t dlen)
{
    if (c->state == CONN_CLOSING)
        return -EPIPE;
    size_t len = alen + blen + dlen;
    struct write_req *wr = malloc(sizeof(*wr) + len);
    if (!wr)
        return -ENOMEM;
    wr->c = c;
    wr->len = len;
    if (alen)
        memcpy(wr->data, a, alen);
    if (blen)
        memcpy(wr->data + alen, b, blen);
    if (dlen)
        memcpy(wr->data + alen + blen, d, dlen);
    uv_buf_t buf = uv_buf_init(wr->data, (unsigned)len);
    int r = uv_write(&wr->w, &c->h.stream, &buf, 1, on_written);
    if (r < 0) {
        free(wr);
        return r;
    }
    c->write_queued += len;
    c->writes_in_flight++;
    if (c->state == CONN_HANDLING)
        timer_set(c, c->srv->lim.idle_timeout_ms);
    return 0;
}

static int format_head(struct api_req *r, int status, const char *content_type, const char *extra,
                       bool chunked, size_t len, struct al_buf *out)
{
    struct api_conn *c = r->c;
    const struct http_request *hr = &c->parser.req;
    bool keep = hr->keep_alive && !r->close_after && !c->srv->stopping && !c->peer_eof;
    if (chunked && r->raw_stream)
        keep = false;
    r->close_after = !keep;
    int rc = al_buf_printf(out, "HTTP/1.1 %d %s\r\n", status, http_status_reason(status));
    if (content_type)
        rc |= al_buf_printf(out, "Content-Type: %s\r\n", content_type);
    if (chunked) {
        if (!r->raw_stream)
            rc |= al_buf_puts(out, "Transfer-Encoding: chunked\r\n");
    } else {
        rc |= al_buf_printf(out, "Content-Length: %zu\r\n", len);
    }
    rc |= al_buf_printf(out, "Connection: %s\r\n", keep ? "keep-alive" : "close");
    rc |= al_buf_puts(out, "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n");
    if (extra)
        rc |= al_buf_puts(out, extra);
    rc |= al_buf_puts(out, "\r\n");
    return rc ? -ENOMEM : 0;
}

static void count_status(struct api_server *s, int status)
{
    s->stats.requests_total++;
    int cls = status / 100;
    if (cls >= 1 && cls <= 5)
        s->stats.responses_by_class[cls]++;
}

void api_reply(struct api_req *r, int status, const char *content_type, const char *extra_headers,
               const void *body, size_t len)
{
    struct api_conn *c = r->c;
    if (r->answered || r->streaming || c->state == CONN_CLOSING)
        return;
    _cleanup_buf_ struct al_buf head = AL_BUF_INIT;
    count_status(c->srv, status);
    r->answered = true;
    if (format_head(r, status, content_type, extra_headers, false, len, &head) < 0 ||
        conn_write(c, head.data, head.len, r->is_head ? NULL : body, r->is_head ? 0 : len, NULL,
                   0) < 0) {
        conn_close(c);
        return;
    }
}

/* Appends s as a JSON string body (quotes included). */
static int json_escape(struct al_buf *b, const char *s)
{
    int rc = al_buf_puts(b, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p && rc == 0; p++) {
        if (*p == '"' || *p == '\\')
            rc = al_buf_printf(b, "\\%c", *p);
        else if (*p < 0x20)
            rc = al_buf_printf(b, "\\u%04x", *p);
        else
            rc = al_buf_append(b, p, 1);
    }
    return rc ? rc : al_buf_puts(b, "\"");
}

void api_reply_error(struct api_req *r, int status, const char *code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    _cleanup_buf_ struct al_buf body = AL_BUF_INIT;
    int rc = al_buf_puts(&body, "{\"error\":{\"code\":");
    rc |= json_escape(&body, code);
    rc |= al_buf_puts(&body, ",\"message\":");
    rc |= json_escape(&body, msg);
    rc |= al_buf_puts(&body, "}}\n");
    if (rc) {
        r->close_after = true;
        api_reply(r, 500, "text/plain", NULL, "out of memory\n", 14);
        return;
    }
    api_reply(r, status, "application/json", NULL, body.data, body.len);
}

void api_stream_start(struct api_req *r, int status, const char *content_type,
                      const char *extra_headers)
{
    struct api_conn *c = r->c;
    if (r->answered || r->streaming || c->state == CONN_CLOSING)
        return;
    r->streaming = true;
    r->raw_stream = c->parser.req.http_minor == 0;
    count_status(c->srv, status);
    _cleanup_buf_ struct al_buf head = AL_BUF_INIT;
    if (format_head(r, status, content_type, extra_headers, true, 0, &head) < 0 ||
        conn_write(c, head.data, head.len, NULL, 0, NULL, 0) < 0) {
        conn_close(c);
        return;
    }
    /* a stream may last long: read on, so a client that leaves is noticed */
    if (uv_read_start(&c->h.stream, alloc_cb, on_read) < 0)
        conn_close(c);
}

int api_stream_write(struct api_req *r, const void *data, size_t len)
{
    struct api_conn *c = r->c;
    if (!r->streaming || r->answered || c->state == CONN_CLOSING)
        return -EPIPE;
    if (!len)
        return 0;
    int rc;
    if (r->raw_stream || r->is_head) {
        rc = r->is_head ? 0 : conn_write(c, data, len, NULL, 0, NULL, 0);
    } else {
        char size[24];
        int n = snprintf(size, sizeof(size), "%zx\r\n", len);
        rc = conn_write(c, size, (size_t)n, data, len, "\r\n", 2);
    }
    if (rc < 0) {
        conn_close(c);
        return -EPIPE;
    }
    if (c->write_queued > c->srv->lim.stream_high_water) {
        r->want_drain = true;
        return 1;
    }
    return 0;
}

void api_stream_end(struct api_req *r)
{
    struct api_conn *c = r->c;
    if (!r->streaming || r->answered || c->state == CONN_CLOSING)
        return;
    r->answered = true;
    if (r->raw_stream || r->is_head) {
        r->close_after = r->close_after || r->raw_stream;
        if (!c->writes_in_flight)
            finish_request(c);
        return;
    }
    if (conn_write(c, "0\r\n\r\n", 5, NULL, 0, NULL, 0) < 0)
        conn_close(c);
}

/* ------------------------------------------------------------ reading */

static void req_data_free(struct api_req *r)
{
    void (*fn)(void *) = r->data_free;
    void *data = r->data;
    r->data_free = NULL;
    r->data = NULL;
    if (fn)
        fn(data);
}

static void req_reset(struct api_conn *c)
{
    req_data_free(&c->req);
    c->req = (struct api_req){.c = c};
    c->body_timer_set = false;
}

static int on_parser_headers(struct http_req_parser *p, void *data, char *msg, size_t msg_size)
{
    struct api_conn *c = data;
    struct api_req *r = &c->req;
    r->is_head = p->req.method == HTTP_HEAD;
    int status = 0;
    if (c->srv->handler->headers)
        status = c->srv->handler->headers(r, c->srv->handler_data, msg, msg_size);
    if (status)
        return status;
    bool has_body = (p->hp.flags & F_CHUNKED) ||
                    (p->hp.content_length != (uint64_t)-1 && p->hp.content_length > 0);
    if (p->req.expect_continue && has_body &&
        conn_write(c, "HTTP/1.1 100 Continue\r\n\r\n", 25, NULL, 0, NULL, 0) < 0)
        return 500;
    return 0;
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    struct api_conn *c = h->data;
    struct api_server *s = c->srv;
    if (s->read_buf_busy) {
        *buf = uv_buf_init(NULL, 0);
        return;
    }
    s->read_buf_busy = true;
    *buf = uv_buf_init(s->read_buf, sizeof(s->read_buf));
}

static void track_buffered(struct api_conn *c)
{
    size_t held = c->parser.header_bytes + c->parser.req.body.len + c->pending_len;
    if (held > c->srv->stats.buffered_peak)
        c->srv->stats.buffered_peak = held;
}

static void dispatch(struct api_conn *c)
{
    uv_timer_stop(&c->timer);
    c->state = CONN_HANDLING;
    c->srv->handler->request(&c->req, c->srv->handler_data);
}

static void parser_failed(struct api_conn *c)
{
    struct http_req_parser *p = &c->parser;
    uv_read_stop(&c->h.stream);
    c->state = CONN_HANDLING;
    c->req.close_after = true;
    int st = p->error_status ? p->error_status : 400;
    if (st == 413)
        limits_hit(c->srv->body_limit ? (enum al_limit)c->srv->body_limit : AL_LIMIT_API_BODY);
    else if (st == 414 || st == 431)
        limits_hit(AL_LIMIT_API_HEADERS);
    const char *code = "bad_request";
    switch (st) {
    case 401:
        code = "unauthorized";
        break;
    case 404:
        code = "not_found";
        break;
    case 413:
        code = "payload_too_large";
        break;
    case 414:
        code = "uri_too_long";
        break;
    case 417:
        code = "expectation_failed";
        break;
    case 431:
        code = "headers_too_large";
        break;
    case 501:
        code = "not_implemented";
        break;
    case 503:
        code = "unavailable";
        break;
    case 505:
        code = "http_version_not_supported";
        break;
    default:
        if (st >= 500)
            code = "internal";
        break;
    }
    const char *extra = st == 401 ? "WWW-Authenticate: Bearer realm=\"agentlab\"\r\n" : NULL;
    if (c->req.answered || c->req.streaming) {
        conn_close(c);
        return;
    }
    _cleanup_buf_ struct al_buf body = AL_BUF_INIT;
    int rc = al_buf_puts(&body, "{\"error\":{\"code\":");
    rc |= json_escape(&body, code);
    rc |= al_buf_puts(&body, ",\"message\":");
    rc |= json_escape(&body, p->error_message[0] ? p->error_message : http_status_reason(st));
    rc |= al_buf_puts(&body, "}}\n");
    if (rc) {
        conn_close(c);
        return;
    }
    api_reply(&c->req, st, "application/json", extra, body.data, body.len);
}

static void conn_feed(struct api_conn *c, const char *data, size_t len)
{
    while (len && (c->state == CONN_IDLE || c->state == CONN_READING)) {
        if (c->state == CONN_IDLE) {
            c->state = CONN_READING;
            timer_set(c, c->srv->lim.header_timeout_ms);
        }
        size_t used = 0;
        enum http_req_status st = http_req_parser_feed(&c->parser, data, len, &used);
        track_buffered(c);
        if (c->state == CONN_CLOSING)
            return;
        if (st == HTTP_REQ_ERROR) {
            parser_failed(c);
            return;
        }
        if (http_req_parser_headers_done(&c->parser) && !c->body_timer_set) {
            c->body_timer_set = true;
            timer_set(c, c->srv->lim.body_timeout_ms);
        }
        data += used;
        len -= used;
        if (st == HTTP_REQ_DONE) {
            if (len) {
                char *rest = malloc(len);
                if (!rest) {
                    conn_close(c);
                    return;
                }
                memcpy(rest, data, len);
                free(c->pending);
                c->pending = rest;
                c->pending_len = len;
            }
            uv_read_stop(&c->h.stream);
            dispatch(c);
            return;
        }
    }
}

static void on_read_bytes(struct api_conn *c, ssize_t nread, const uv_buf_t *buf);

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct api_conn *c = stream->data;
    struct api_server *s = c->srv;
    on_read_bytes(c, nread, buf);
    if (buf->base == s->read_buf) {
        /* requests carry tokens and secret values: leave nothing behind */
        if (nread > 0)
            explicit_bzero(s->read_buf, (size_t)nread);
        s->read_buf_busy = false;
    }
}

static void on_read_bytes(struct api_conn *c, ssize_t nread, const uv_buf_t *buf)
{
    uv_stream_t *stream = &c->h.stream;
    if (nread == 0)
        return;
    if (nread < 0) {
        c->peer_eof = true;
        if (c->state == CONN_HANDLING && !c->req.streaming) {
            /* the client half-closed after its request: answer, then close */
            uv_read_stop(stream);
            return;
        }
        conn_close(c);
        return;
    }
    if (c->state == CONN_CLOSING || c->rejecting)
        return;
    if (c->state == CONN_HANDLING) {
        /* bytes behind a stream: keep them for later, within one buffer */
        if (c->pending_len + (size_t)nread > READ_BUF_SIZE) {
            conn_close(c);
            return;
        }
        char *p = realloc(c->pending, c->pending_len + (size_t)nread);
        if (!p) {
            conn_close(c);
            return;
        }
        memcpy(p + c->pending_len, buf->base, (size_t)nread);
        c->pending = p;
        c->pending_len += (size_t)nread;
        return;
    }
    conn_feed(c, buf->base, (size_t)nread);
}

/* The response is on the wire: next request or close. */
static void finish_request(struct api_conn *c)
{
    if (c->state == CONN_CLOSING)
        return;
    if (c->rejecting || c->req.close_after || c->peer_eof || c->srv->stopping) {
        conn_close(c);
        return;
    }
    uv_read_stop(&c->h.stream);
    http_req_parser_next(&c->parser);
    req_reset(c);
    c->state = CONN_IDLE;
    timer_set(c, c->srv->lim.idle_timeout_ms);
    char *pending = c->pending;
    size_t plen = c->pending_len;
    c->pending = NULL;
    c->pending_len = 0;
    if (pending) {
        conn_feed(c, pending, plen);
        explicit_bzero(pending, plen);
        free(pending);
    }
    if (c->state == CONN_IDLE || c->state == CONN_READING) {
        if (uv_read_start(&c->h.stream, alloc_cb, on_read) < 0)
            conn_close(c);
    }
}

/* ------------------------------------------------------------ connections */

static void on_conn_handle_closed(uv_handle_t *h)
{
    struct api_conn *c = h->data;
    if (--c->handles_open > 0)
        return;
    struct api_server *s = c->srv;
    al_list_del(&c->link);
    if (c->rejecting)
        s->n_rejecting--;
    else
        s->n_conns--;
    req_data_free(&c->req);
    http_req_parser_free(&c->parser);
    if (c->pending)
        explicit_bzero(c->pending, c->pending_len);
    free(c->pending);
    free(c);
    maybe_finish_stop(s);
}

static void conn_close(struct api_conn *c)
{
    if (c->state == CONN_CLOSING)
        return;
    bool in_handler = c->state == CONN_HANDLING && !c->req.answered;
    c->state = CONN_CLOSING;
    if (in_handler && c->req.abort_cb) {
        void (*cb)(struct api_req *, void *) = c->req.abort_cb;
        c->req.abort_cb = NULL;
        cb(&c->req, c->req.abort_data);
    }
    uv_timer_stop(&c->timer);
    uv_close(&c->h.handle, on_conn_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
}

static const char reject_body[] =
        "{\"error\":{\"code\":\"too_many_connections\",\"message\":\"too many open "
        "connections\"}}\n";

/* Answers a connection over the limit with a 503 and closes it. */
static void reject(struct api_conn *c)
{
    char head[160];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                     sizeof(reject_body) - 1);
    c->state = CONN_HANDLING;
    c->req.answered = true;
    c->req.close_after = true;
    if (c->srv->n_rejecting > MAX_REJECTING || n < 0 || (size_t)n >= sizeof(head) ||
        conn_write(c, head, (size_t)n, reject_body, sizeof(reject_body) - 1, NULL, 0) < 0)
        conn_close(c);
}

static void on_connection(uv_stream_t *listener, int status)
{
    struct api_server *s = listener->data;
    if (status < 0 || s->stopping)
        return;
    struct api_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return;
    c->srv = s;
    c->tcp = listener == (uv_stream_t *)&s->tcp_listener;
    int r = c->tcp ? uv_tcp_init(s->loop, &c->h.tcp) : uv_pipe_init(s->loop, &c->h.pipe, 0);
    if (r < 0) {
        free(c);
        return;
    }
    c->h.handle.data = c;
    uv_timer_init(s->loop, &c->timer);
    c->timer.data = c;
    c->handles_open = 2;
    al_list_add(&s->conns, &c->link);
    http_req_parser_init(&c->parser,
                         &(struct http_limits){.max_header_bytes = s->lim.max_header_bytes,
                                               .max_headers = s->lim.max_headers,
                                               .max_body = s->lim.max_body},
                         on_parser_headers, c);
    req_reset(c);
    bool over = s->n_conns >= s->lim.max_connections;
    if (over) {
        c->rejecting = true;
        s->n_rejecting++;
        s->stats.connections_rejected++;
        limits_hit(AL_LIMIT_API_CONNECTIONS);
    } else {
        s->n_conns++;
        s->stats.connections_total++;
    }
    if (uv_accept(listener, &c->h.stream) < 0) {
        conn_close(c);
        return;
    }
    if (c->tcp)
        uv_tcp_nodelay(&c->h.tcp, 1);
    if (over) {
        reject(c);
        return;
    }
    c->state = CONN_IDLE;
    timer_set(c, s->lim.idle_timeout_ms);
    if (uv_read_start(&c->h.stream, alloc_cb, on_read) < 0)
        conn_close(c);
}

/* ------------------------------------------------------------ requests */

const struct http_request *api_req_http(const struct api_req *r)
{
    return &r->c->parser.req;
}

bool api_req_is_tcp(const struct api_req *r)
{
    return r->c->tcp;
}

void api_req_set_data(struct api_req *r, void *data, void (*free_fn)(void *data))
{
    r->data = data;
    r->data_free = free_fn;
}

void *api_req_data(const struct api_req *r)
{
    return r->data;
}

void api_req_set_body(struct api_req *r, uint64_t limit, http_req_body_sink sink, void *data)
{
    http_req_parser_set_body(&r->c->parser, limit, sink, data);
}

void api_req_on_abort(struct api_req *r, void (*cb)(struct api_req *r, void *data), void *data)
{
    r->abort_cb = cb;
    r->abort_data = data;
}

void api_req_on_drain(struct api_req *r, void (*cb)(struct api_req *r, void *data), void *data)
{
    r->drain_cb = cb;
    r->drain_data = data;
}

/* ------------------------------------------------------------ listeners */

/* Refuses to replace anything but a socket nobody answers on. */
static int clear_stale_socket(const char *path, struct al_error **err)
{
    struct stat st;
    if (lstat(path, &st) < 0)
        return errno == ENOENT ? 0 : al_error_set_errno(err, errno, "checking %s", path);
    if (!S_ISSOCK(st.st_mode))
        return al_error_set(err, EEXIST, "%s exists and is not a socket; not replacing it", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return al_error_set_errno(err, errno, "socket");
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    int r = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
    int e = errno;
    close(fd);
    if (r == 0)
        return al_error_set(err, EADDRINUSE, "%s: another agentlabd answers on this socket", path);
    if (e != ECONNREFUSED && e != ENOENT)
        return al_error_set_errno(err, e, "probing %s", path);
    if (unlink(path) < 0 && errno != ENOENT)
        return al_error_set_errno(err, errno, "removing the stale socket %s", path);
    return 0;
}

static void on_listener_closed(uv_handle_t *h)
{
    struct api_server *s = h->data;
    s->listeners_open--;
    maybe_finish_stop(s);
}

static int bind_unix(struct api_server *s, const struct api_server_params *p, struct al_error **err)
{
    struct sockaddr_un sa;
    if (strlen(p->unix_path) >= sizeof(sa.sun_path))
        return al_error_set(err, ENAMETOOLONG, "api_socket %s: longer than %zu bytes", p->unix_path,
                            sizeof(sa.sun_path) - 1);
    int r = clear_stale_socket(p->unix_path, err);
    if (r < 0)
        return r;
    if (!(s->unix_path = strdup(p->unix_path)))
        return al_error_set(err, ENOMEM, "api socket");
    uv_pipe_init(s->loop, &s->unix_listener, 0);
    s->unix_listener.data = s;
    s->have_unix = true;
    s->listeners_open++;
    /* until the chmod below the socket has the umask's mode; connecting
     * needs write permission, which the umask never grants to others */
    r = uv_pipe_bind(&s->unix_listener, p->unix_path);
    if (r < 0)
        return al_error_set(err, -r, "binding %s: %s", p->unix_path, uv_strerror(r));
    if (p->unix_gid != (gid_t)-1 && chown(p->unix_path, (uid_t)-1, p->unix_gid) < 0)
        return al_error_set_errno(err, errno, "chown %s", p->unix_path);
    if (chmod(p->unix_path, p->unix_mode) < 0)
        return al_error_set_errno(err, errno, "chmod %s", p->unix_path);
    return 0;
}

static int bind_tcp(struct api_server *s, const struct api_server_params *p, struct al_error **err)
{
    struct sockaddr_storage ss;
    int r = uv_ip4_addr(p->tcp_host, p->tcp_port, (struct sockaddr_in *)&ss);
    if (r < 0)
        r = uv_ip6_addr(p->tcp_host, p->tcp_port, (struct sockaddr_in6 *)&ss);
    if (r < 0)
        return al_error_set(err, EINVAL, "api_listen: \"%s\" is not an IP address", p->tcp_host);
    uv_tcp_init(s->loop, &s->tcp_listener);
    s->tcp_listener.data = s;
    s->have_tcp = true;
    s->listeners_open++;
    r = uv_tcp_bind(&s->tcp_listener, (struct sockaddr *)&ss, 0);
    if (r == 0) {
        struct sockaddr_storage got;
        int len = sizeof(got);
        r = uv_tcp_getsockname(&s->tcp_listener, (struct sockaddr *)&got, &len);
        if (r == 0)
            s->tcp_port =
                    ntohs(got.ss_family == AF_INET ? ((struct sockaddr_in *)&got)->sin_port
                                                   : ((struct sockaddr_in6 *)&got)->sin6_port);
    }
    if (r < 0)
        return al_error_set(err, -r, "binding %s port %d: %s", p->tcp_host, p->tcp_port,
                            uv_strerror(r));
    return 0;
}

static void server_free_now(struct api_server *s)
{
    free(s->unix_path);
    free(s);
}

int api_server_new(const struct api_server_params *p, struct api_server **ret,
                   struct al_error **err)
{
    struct api_server *s = calloc(1, sizeof(*s));
    if (!s)
        return al_error_set(err, ENOMEM, "api server");
    al_list_init(&s->conns);
    s->loop = p->loop;
    s->handler = p->handler;
    s->handler_data = p->handler_data;
    s->body_limit = p->body_limit;
    s->lim = p->limits;
    if (!s->lim.max_connections)
        s->lim.max_connections = DEFAULT_MAX_CONNS;
    if (!s->lim.header_timeout_ms)
        s->lim.header_timeout_ms = DEFAULT_HEADER_MS;
    if (!s->lim.body_timeout_ms)
        s->lim.body_timeout_ms = DEFAULT_BODY_MS;
    if (!s->lim.idle_timeout_ms)
        s->lim.idle_timeout_ms = DEFAULT_IDLE_MS;
    if (!s->lim.stream_high_water)
        s->lim.stream_high_water = DEFAULT_HIGH_WATER;
    int r = 0;
    if (p->unix_path)
        r = bind_unix(s, p, err);
    if (r == 0 && p->tcp_host)
        r = bind_tcp(s, p, err);
    if (r < 0) {
        /* the handles were initialised: close them before freeing */
        s->stopping = true;
        if (s->have_unix) {
            uv_close((uv_handle_t *)&s->unix_listener, on_listener_closed);
            unlink(s->unix_path);
        }
        if (s->have_tcp)
            uv_close((uv_handle_t *)&s->tcp_listener, on_listener_closed);
        if (!s->listeners_open)
            server_free_now(s);
        /* else freed by maybe_finish_stop once the loop runs the closes */
        return r;
    }
    *ret = s;
    return 0;
}

int api_server_start(struct api_server *s, struct al_error **err)
{
    int r;
    if (s->have_unix && (r = uv_listen((uv_stream_t *)&s->unix_listener, 128, on_connection)) < 0)
        return al_error_set(err, -r, "listening on %s: %s", s->unix_path, uv_strerror(r));
    if (s->have_tcp && (r = uv_listen((uv_stream_t *)&s->tcp_listener, 128, on_connection)) < 0)
        return al_error_set(err, -r, "listening on TCP port %d: %s", s->tcp_port, uv_strerror(r));
    return 0;
}

int api_server_tcp_port(const struct api_server *s)
{
    return s->have_tcp ? s->tcp_port : 0;
}

static void maybe_finish_stop(struct api_server *s)
{
    if (!s->stopping || s->listeners_open || !al_list_empty(&s->conns))
        return;
    void (*done)(void *) = s->stopped;
    void *data = s->stopped_data;
    server_free_now(s);
    if (done)
        done(data);
}

void api_server_stop(struct api_server *s, void (*done)(void *data), void *data)
{
    if (s->stopping)
        return;
    s->stopping = true;
    s->stopped = done;
    s->stopped_data = data;
    if (s->have_unix) {
        uv_close((uv_handle_t *)&s->unix_listener, on_listener_closed);
        unlink(s->unix_path);
    }
    if (s->have_tcp)
        uv_close((uv_handle_t *)&s->tcp_listener, on_listener_closed);
    /* conn_close() only starts closing: c stays on the list until its
     * close callbacks run */
    al_list_for_each(c, &s->conns, struct api_conn, link)
        conn_close(c);
    maybe_finish_stop(s);
}

void api_server_stats(const struct api_server *s, struct api_server_stats *ret)
{
    *ret = s->stats;
    ret->connections = s->n_conns;
}
