/* An HTTP/1.1 server on libuv for the control API: listeners (a unix socket
 * and an optional TCP address), connections, limits, timeouts, keep-alive,
 * and the response side (whole bodies or chunked streams).
 *
 * It knows nothing about endpoints: a handler table decides, once a
 * request's headers are in, whether to take its body and where to (see
 * api_server_handler.headers), and then gets the whole request
 * (api_server_handler.request). Handlers answer with exactly one of
 * api_reply()/api_reply_error() or api_stream_start() ... api_stream_end(),
 * at once or later; the connection reads nothing more until they do
 * (pipelined requests wait their turn).
 *
 * Limits, each enforced where the bytes enter: max connections (further
 * ones get a 503 and are closed), request line + header bytes, header
 * count, body size, the time to send the headers (slowloris: 408 and
 * close), the time to send the body, the idle time between keep-alive
 * requests, and a slow reader's write queue (closed when it stops
 * draining for the idle timeout).
 *
 * Loop thread only.
 */
#ifndef AL_API_SERVER_H
#define AL_API_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "runner/base/error.h"
#include "runner/base/macro.h"
#include "runner/loop/http_request.h"

struct api_server_limits {
    unsigned max_connections;   /* 0 = 64 */
    size_t max_header_bytes;    /* 0 = 16 KiB */
    size_t max_headers;         /* 0 = 64 */
    size_t max_body;            /* default body limit; 0 = 1 MiB */
    uint64_t header_timeout_ms; /* first byte -> headers complete; 0 = 10 s */
    uint64_t body_timeout_ms;   /* headers complete -> body complete; 0 = 10 min */
    uint64_t idle_timeout_ms;   /* between requests, and a stalled writer; 0 = 60 s */
    size_t stream_high_water;   /* api_stream_write() asks producers to wait above; 0 = 1 MiB */
};

struct api_req;

struct api_server_handler {
    /* The headers are in. Decide about the body with api_req_set_body()
     * (default: buffered up to max_body). Return 0 to go on, or an HTTP
     * status with a message to refuse the request; the connection then
     * closes, since the body was not read. */
    int (*headers)(struct api_req *r, void *data, char *msg, size_t msg_size);
    /* The whole request is in. */
    void (*request)(struct api_req *r, void *data);
};

struct api_server_params {
    uv_loop_t *loop;
    const char *unix_path; /* NULL = no unix socket */
    mode_t unix_mode;      /* e.g. 0660 */
    gid_t unix_gid;        /* (gid_t)-1 = keep */
    const char *tcp_host;  /* NULL = no TCP listener; an IP literal */
    int tcp_port;          /* 0 = any free port (tests) */
    struct api_server_limits limits;
    const struct api_server_handler *handler;
    void *handler_data;
    /* the limit a body over its size counts as (runner/base/hardlimits.h);
     * 0 = AL_LIMIT_API_BODY, the webhook listener says AL_LIMIT_WEBHOOK_BODY */
    int body_limit;
};

struct api_server;

/* Binds the listeners (not yet accepting). A stale unix socket of a dead
 * daemon is replaced; a live one is an error (-EADDRINUSE). */
int api_server_new(const struct api_server_params *p, struct api_server **ret,
                   struct al_error **err);

/* Starts accepting connections. */
int api_server_start(struct api_server *s, struct al_error **err);

/* The TCP port actually bound (when tcp_port was 0), or 0. */
int api_server_tcp_port(const struct api_server *s);

/* Stops: closes the listeners, aborts every request in progress (their
 * abort callbacks run), closes every connection, removes the unix socket,
 * then calls done and frees the server. */
void api_server_stop(struct api_server *s, void (*done)(void *data), void *data);

struct api_server_stats {
    unsigned connections;           /* open now */
    uint64_t connections_total;     /* accepted */
    uint64_t connections_rejected;  /* over max_connections */
    uint64_t requests_total;        /* answered */
    uint64_t responses_by_class[6]; /* [2] = 2xx ... [5] = 5xx */
    uint64_t timeouts;              /* slowloris and idle closes */
    size_t buffered_peak;           /* most bytes held for one request (headers + body) */
};

void api_server_stats(const struct api_server *s, struct api_server_stats *ret);

/* ---- one request ---- */

const struct http_request *api_req_http(const struct api_req *r);

/* True when the request came in on the TCP listener. */
bool api_req_is_tcp(const struct api_req *r);

/* Per-request data for the handler (set in headers, read in request).
 * free_fn (may be NULL) runs when the request is over, whichever way:
 * answered, refused, failed or aborted. */
void api_req_set_data(struct api_req *r, void *data, void (*free_fn)(void *data));
void *api_req_data(const struct api_req *r);

/* Only inside the headers callback: the body's limit and, optionally, a
 * sink that takes the bytes instead of the buffer (see http_request.h). */
void api_req_set_body(struct api_req *r, uint64_t limit, http_req_body_sink sink, void *data);

/* Runs when the connection goes away (client closed, timeout, server stop)
 * before the handler answered or ended its stream. After it the request
 * must not be touched. */
void api_req_on_abort(struct api_req *r, void (*cb)(struct api_req *r, void *data), void *data);

/* Runs once when a stream's queued bytes drop below the high-water mark
 * again (after api_stream_write() returned 1). */
void api_req_on_drain(struct api_req *r, void (*cb)(struct api_req *r, void *data), void *data);

/* Sends a whole response. extra_headers: NULL or "Name: value\r\n" lines. */
void api_reply(struct api_req *r, int status, const char *content_type, const char *extra_headers,
               const void *body, size_t len);

/* Sends {"error":{"code":CODE,"message":MESSAGE}} with the status. */
void api_reply_error(struct api_req *r, int status, const char *code, const char *fmt, ...)
        _printf_(4, 5);

/* Starts a chunked response. */
void api_stream_start(struct api_req *r, int status, const char *content_type,
                      const char *extra_headers);

/* Queues one chunk. Returns 0, 1 when the queue is above the high-water
 * mark (the producer should wait for the drain callback), or -EPIPE when
 * the connection is closing. */
int api_stream_write(struct api_req *r, const void *data, size_t len);

/* Ends the stream (the last, empty chunk). The request is done. */
void api_stream_end(struct api_req *r);

#endif
