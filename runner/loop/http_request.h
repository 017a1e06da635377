/* The control API's request parser: the one place where bytes from an API
 * client are read.
 *
 * It drives http-parser over whatever arrives on a connection and turns one
 * HTTP/1.x request at a time into a struct http_request, enforcing every
 * limit while the bytes come in: request-target length, bytes of the request
 * line and headers together, header count, body size (per request, decided
 * by the owner once the headers are known), and query parameter count.
 * Nothing is buffered past a limit: the request fails with the matching
 * 4xx status at the byte that exceeds it.
 *
 * The path is percent-decoded (a decoded NUL, a control character or a bad
 * escape is a 400); the query is split into decoded name/value pairs.
 * Header names are lower-cased. Pure code: no I/O, no loop, so it is fuzzed
 * directly (tests/fuzz/fuzz_api_request.c).
 */
#ifndef AL_API_HTTP_REQUEST_H
#define AL_API_HTTP_REQUEST_H

#include <http_parser.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runner/base/buf.h"

#define HTTP_REQ_MAX_HEADERS_CAP 256 /* hard cap of max_headers */
#define HTTP_REQ_MAX_QUERY       32  /* query parameters */
#define HTTP_REQ_MAX_TARGET      8192

struct http_limits {
    size_t max_header_bytes; /* request line + headers; 0 = 16 KiB */
    size_t max_headers;      /* 0 = 64, at most HTTP_REQ_MAX_HEADERS_CAP */
    size_t max_body; /* default body limit (0 = 1 MiB); the owner may change it per request */
};

struct http_header {
    char *name; /* lower-case */
    char *value;
};

struct http_query_param {
    char *name; /* decoded */
    char *value;
};

struct http_request {
    enum http_method method;
    unsigned short http_major, http_minor;
    char *target; /* raw request-target */
    char *path;   /* decoded path */
    struct http_query_param query[HTTP_REQ_MAX_QUERY];
    size_t n_query;
    struct http_header *headers;
    size_t n_headers;
    struct al_buf body; /* unless the owner installed a body sink */
    uint64_t body_bytes;
    bool keep_alive;      /* known once the headers are complete */
    bool expect_continue; /* "Expect: 100-continue" */
};

/* What the parser reports after a feed. */
enum http_req_status {
    HTTP_REQ_MORE = 0, /* every byte consumed; feed more */
    HTTP_REQ_DONE,     /* a whole request is in ->req; *consumed says how much of the input */
    HTTP_REQ_ERROR,    /* ->error_status and ->error_message say what */
};

struct http_req_parser;

/* Called once the headers are complete, before any body byte is taken.
 * It may change the body limit or install a sink. Returns 0 to go on, or an
 * HTTP status (4xx/5xx) to fail the request with, message in msg. */
typedef int (*http_req_headers_cb)(struct http_req_parser *p, void *data, char *msg,
                                   size_t msg_size);

/* Receives body bytes instead of req.body; returns 0, or an HTTP status to
 * fail the request with. */
typedef int (*http_req_body_sink)(void *data, const char *buf, size_t len);

struct http_req_parser {
    http_parser hp;
    http_parser_settings settings;
    struct http_limits lim;
    struct http_request req;
    size_t cap_headers;
    size_t header_bytes;
    struct al_buf field, value;
    bool in_value;
    bool headers_done;
    bool done;
    bool started; /* a byte of the current request was seen */
    uint64_t body_limit;
    http_req_body_sink sink;
    void *sink_data;
    http_req_headers_cb on_headers;
    void *on_headers_data;
    int error_status; /* 0, or the 4xx/5xx the request failed with */
    char error_message[160];
};

/* Prepares a parser (no allocation until bytes arrive). on_headers may be
 * NULL. lim may be NULL for the defaults. */
void http_req_parser_init(struct http_req_parser *p, const struct http_limits *lim,
                          http_req_headers_cb on_headers, void *data);

/* Feeds bytes. *consumed gets how many were used: all of them for
 * HTTP_REQ_MORE; up to the end of the request for HTTP_REQ_DONE (the rest
 * belongs to the next request: call http_req_parser_next() first). After
 * HTTP_REQ_ERROR the parser is unusable (the connection must close). */
enum http_req_status http_req_parser_feed(struct http_req_parser *p, const char *data, size_t len,
                                          size_t *consumed);

/* True once a byte of the current request has arrived (for timeouts). */
bool http_req_parser_started(const struct http_req_parser *p);

/* True once the current request's headers are complete. */
bool http_req_parser_headers_done(const struct http_req_parser *p);

/* Per-request body settings; only valid inside the on_headers callback. */
void http_req_parser_set_body(struct http_req_parser *p, uint64_t limit, http_req_body_sink sink,
                              void *sink_data);

/* Frees the finished request and gets ready for the next one on the same
 * connection. */
void http_req_parser_next(struct http_req_parser *p);

/* Frees everything. */
void http_req_parser_free(struct http_req_parser *p);

/* Case-insensitive header lookup (the first one); NULL when absent. */
const char *http_request_header(const struct http_request *r, const char *name);

/* The first query parameter called name, or NULL. */
const char *http_request_query(const struct http_request *r, const char *name);

/* Decodes %XX escapes (and '+' as space when plus_is_space) of s[0..len)
 * into a new string. Rejects bad escapes, NUL and other control
 * characters (-EINVAL). */
int http_percent_decode(const char *s, size_t len, bool plus_is_space, char **ret);

/* The reason phrase of a status code ("Not Found"); "Unknown" otherwise. */
const char *http_status_reason(int status);

#endif
