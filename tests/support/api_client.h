/* A raw HTTP/1.1 client for testing a server that runs on the test's own
 * loop: every wait runs that loop (UV_RUN_NOWAIT) between non-blocking
 * socket calls, so client and server make progress in one thread and
 * cmocka assertions stay on it. Responses are parsed with http-parser
 * (Content-Length and chunked bodies). */
#ifndef AL_TEST_API_CLIENT_H
#define AL_TEST_API_CLIENT_H

#include <http_parser.h>
#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "runner/base/buf.h"

struct tc_resp {
    int status;
    char headers[8192]; /* "name: value\n" lines, names lower-case */
    size_t headers_len;
    struct al_buf body;
    bool complete; /* the whole message arrived */
    bool closed;   /* the server closed the connection */
    bool chunked;
};

struct tc_conn {
    uv_loop_t *loop;
    int fd;
    http_parser hp;
    http_parser_settings settings;
    struct tc_resp *resp;
    char field[256];
    bool in_value;
    bool head_only;       /* the request was HEAD */
    char leftover[16384]; /* bytes of the next response (pipelining) */
    size_t leftover_len;
};

/* Connects to a unix socket path, or to 127.0.0.1:port when path is NULL.
 * Returns 0 or -errno. */
int tc_connect(struct tc_conn *c, uv_loop_t *loop, const char *path, int port);
void tc_close(struct tc_conn *c);

/* Writes all of data, running the loop whenever the socket is full.
 * Returns 0 or -errno (e.g. -EPIPE when the server closed). */
int tc_send(struct tc_conn *c, const void *data, size_t len);

/* Starts reading a response into r (cleared first). */
void tc_begin(struct tc_conn *c, struct tc_resp *r);

/* Runs until the response is complete, the connection closes, the body
 * contains needle (when not NULL), or timeout_ms passes. Returns true when
 * the condition was met (complete/needle), false on close or timeout. */
bool tc_wait(struct tc_conn *c, const char *needle, unsigned timeout_ms);

/* One request on a fresh connection: method, target, extra header lines
 * ("Name: value\r\n"...), body (may be NULL). Returns the status (0 when
 * no response came); r holds the response. */
int tc_request(uv_loop_t *loop, const char *path, int port, const char *method, const char *target,
               const char *headers, const char *body, struct tc_resp *r);

/* A header of the response, or NULL. */
const char *tc_header(const struct tc_resp *r, const char *name, char *buf, size_t size);

void tc_resp_clear(struct tc_resp *r);

/* Runs the loop for ms milliseconds. */
void tc_run_for(uv_loop_t *loop, unsigned ms);

#endif
