#include "runner/loop/http_request.h"

#include <ctype.h>
#include <stdarg.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "runner/base/hex.h"

#define DEFAULT_MAX_HEADER_BYTES (16u << 10)
#define DEFAULT_MAX_HEADERS      64
#define DEFAULT_MAX_BODY         (1u << 20)
/* what ": " and CRLF of each header add to the bytes we count */
#define HEADER_OVERHEAD 4

static struct http_req_parser *of(http_parser *hp)
{
    return hp->data;
}

static int fail(struct http_req_parser *p, int status, const char *fmt, ...) _printf_(3, 4);

static int fail(struct http_req_parser *p, int status, const char *fmt, ...)
{
    if (!p->error_status) {
        p->error_status = status;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(p->error_message, sizeof(p->error_message), fmt, ap);
        va_end(ap);
    }
    return -1;
}

static int count_header_bytes(struct http_req_parser *p, size_t len)
{
    p->header_bytes += len;
    if (p->header_bytes > p->lim.max_header_bytes) {
        return fail(p, 431, "request line and headers exceed %zu bytes", p->lim.max_header_bytes);
    }
    return 0;
}

static int on_message_begin(http_parser *hp)
{
    of(hp)->started = true;
    return 0;
}

static int on_url(http_parser *hp, const char *at, size_t len)
{
    struct http_req_parser *p = of(hp);
    p->started = true;
    if (count_header_bytes(p, len) < 0)
        return -1;
    size_t have = p->req.target ? strlen(p->req.target) : 0;
    if (have + len > HTTP_REQ_MAX_TARGET)
        return fail(p, 414, "request target longer than %d bytes", HTTP_REQ_MAX_TARGET);
    char *t = realloc(p->req.target, have + len + 1);
    if (!t)
        return fail(p, 500, "out of memory");
    memcpy(t + have, at, len);
    t[have + len] = '\0';
    p->req.target = t;
    return 0;
}

/* RFC 7230 tchar: what a header field name may consist of. */
static bool is_tchar(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* Moves the header assembled in field/value into the request. */
static int finish_header(struct http_req_parser *p)
{
    if (!p->field.len)
        return 0;
    for (size_t i = 0; i < p->field.len; i++) {
        if (!is_tchar((unsigned char)p->field.data[i]))
            return fail(p, 400, "malformed header field name");
    }
    for (size_t i = 0; i < p->value.len; i++) {
        unsigned char c = (unsigned char)p->value.data[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return fail(p, 400, "control character in a header value");
    }
    if (p->req.n_headers >= p->lim.max_headers) {
        return fail(p, 431, "more than %zu header fields", p->lim.max_headers);
    }
    if (p->req.n_headers == p->cap_headers) {
        size_t cap = p->cap_headers ? p->cap_headers * 2 : 8;
        if (cap > p->lim.max_headers)
            cap = p->lim.max_headers;
        struct http_header *h = realloc(p->req.headers, cap * sizeof(*h));
        if (!h)
            return fail(p, 500, "out of memory");
        p->req.headers = h;
        p->cap_headers = cap;
    }
    for (size_t i = 0; i < p->field.len; i++)
        p->field.data[i] = (char)tolower((unsigned char)p->field.data[i]);
    struct http_header *h = &p->req.headers[p->req.n_headers];
    h->name = al_buf_steal(&p->field);
    h->value = p->value.len ? al_buf_steal(&p->value) : strdup("");
    if (!h->name || !h->value) {
        free(h->name);
        free(h->value);
        return fail(p, 500, "out of memory");
    }
    p->req.n_headers++;
    al_buf_reset(&p->value);
    p->in_value = false;
    return 0;
}

static int on_header_field(http_parser *hp, const char *at, size_t len)
{
    struct http_req_parser *p = of(hp);
    if (p->in_value && finish_header(p) < 0)
        return -1;
    if (count_header_bytes(p, len + (p->field.len ? 0 : HEADER_OVERHEAD)) < 0)
        return -1;
    if (al_buf_append(&p->field, at, len) < 0)
        return fail(p, 500, "out of memory");
    return 0;
}

static int on_header_value(http_parser *hp, const char *at, size_t len)
{
    struct http_req_parser *p = of(hp);
    p->in_value = true;
    if (count_header_bytes(p, len) < 0)
        return -1;
    if (al_buf_append(&p->value, at, len) < 0)
        return fail(p, 500, "out of memory");
    return 0;
}

int http_percent_decode(const char *s, size_t len, bool plus_is_space, char **ret)
{
    char *out = malloc(len + 1);
    if (!out)
        return -ENOMEM;
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '%') {
            if (len - i < 3) {
                free(out);
                return -EINVAL;
            }
            if (al_hex_decode(s + i + 1, &c, 1) < 0) {
                free(out);
                return -EINVAL;
            }
            i += 2;
        } else if (c == '+' && plus_is_space) {
            c = ' ';
        }
        if (c < 0x20 || c == 0x7f) {
            free(out);
            return -EINVAL;
        }
        out[n++] = (char)c;
    }
    out[n] = '\0';
    *ret = out;
    return 0;
}

static int parse_query(struct http_req_parser *p, const char *q)
{
    while (*q) {
        const char *amp = strchr(q, '&');
        size_t len = amp ? (size_t)(amp - q) : strlen(q);
        if (len) {
            if (p->req.n_query >= HTTP_REQ_MAX_QUERY)
                return fail(p, 400, "more than %d query parameters", HTTP_REQ_MAX_QUERY);
            const char *eq = memchr(q, '=', len);
            size_t nlen = eq ? (size_t)(eq - q) : len;
            struct http_query_param *qp = &p->req.query[p->req.n_query];
            if (http_percent_decode(q, nlen, true, &qp->name) < 0)
                return fail(p, 400, "bad escape in the query string");
            if (http_percent_decode(eq ? eq + 1 : q + len, eq ? len - nlen - 1 : 0, true,
                                    &qp->value) < 0) {
                free(qp->name);
                qp->name = NULL;
                return fail(p, 400, "bad escape in the query string");
            }
            p->req.n_query++;
        }
        q += len;
        if (*q == '&')
            q++;
    }
    return 0;
}

/* Splits the origin-form target into a decoded path and query parameters. */
static int split_target(struct http_req_parser *p)
{
    const char *t = p->req.target;
    if (!t || t[0] != '/')
        return fail(p, 400, "the request target must be a path starting with \"/\"");
    size_t plen = strcspn(t, "?#");
    if (http_percent_decode(t, plen, false, &p->req.path) < 0)
        return fail(p, 400, "bad escape or control character in the path");
    if (t[plen] == '?') {
        const char *q = t + plen + 1;
        size_t qlen = strcspn(q, "#");
        char *query = strndup(q, qlen);
        if (!query)
            return fail(p, 500, "out of memory");
        int r = parse_query(p, query);
        free(query);
        if (r < 0)
            return r;
    }
    return 0;
}

static int on_headers_complete(http_parser *hp)
{
    struct http_req_parser *p = of(hp);
    if (finish_header(p) < 0)
        return -1;
    p->headers_done = true;
    p->req.method = (enum http_method)hp->method;
    p->req.http_major = hp->http_major;
    p->req.http_minor = hp->http_minor;
    if (hp->http_major != 1)
        return fail(p, 505, "only HTTP/1.0 and HTTP/1.1 are supported");
    if (split_target(p) < 0)
        return -1;
    p->req.keep_alive = http_should_keep_alive(hp) != 0;
    const char *expect = http_request_header(&p->req, "expect");
    if (expect) {
        if (strcasecmp(expect, "100-continue") != 0)
            return fail(p, 417, "unsupported Expect header");
        p->req.expect_continue = true;
    }
    if (p->on_headers) {
        char msg[sizeof(p->error_message)] = "";
        int status = p->on_headers(p, p->on_headers_data, msg, sizeof(msg));
        if (status)
            return fail(p, status, "%s", msg);
    }
    /* A declared length over the limit fails now, not after reading it. */
    if ((hp->flags & F_CHUNKED) == 0 && hp->content_length != (uint64_t)-1 &&
        hp->content_length > p->body_limit) {
        return fail(p, 413, "request body larger than %llu bytes",
                    (unsigned long long)p->body_limit);
    }
    return 0;
}

static int on_body(http_parser *hp, const char *at, size_t len)
{
    struct http_req_parser *p = of(hp);
    if (len > p->body_limit || p->req.body_bytes > p->body_limit - len) {
        return fail(p, 413, "request body larger than %llu bytes",
                    (unsigned long long)p->body_limit);
    }
    p->req.body_bytes += len;
    if (p->sink) {
        int status = p->sink(p->sink_data, at, len);
        if (status)
            return fail(p, status, "the request body could not be stored");
        return 0;
    }
    if (al_buf_append(&p->req.body, at, len) < 0)
        return fail(p, 500, "out of memory");
    return 0;
}

static int on_message_complete(http_parser *hp)
{
    struct http_req_parser *p = of(hp);
    p->done = true;
    /* stop here: the next request (pipelined) waits for this one's response */
    http_parser_pause(hp, 1);
    return 0;
}

void http_req_parser_init(struct http_req_parser *p, const struct http_limits *lim,
                          http_req_headers_cb on_headers, void *data)
{
    memset(p, 0, sizeof(*p));
    if (lim)
        p->lim = *lim;
    if (!p->lim.max_header_bytes)
        p->lim.max_header_bytes = DEFAULT_MAX_HEADER_BYTES;
    if (!p->lim.max_headers)
        p->lim.max_headers = DEFAULT_MAX_HEADERS;
    if (!p->lim.max_body)
        p->lim.max_body = DEFAULT_MAX_BODY;
    if (p->lim.max_headers > HTTP_REQ_MAX_HEADERS_CAP)
        p->lim.max_headers = HTTP_REQ_MAX_HEADERS_CAP;
    p->on_headers = on_headers;
    p->on_headers_data = data;
    http_parser_settings_init(&p->settings);
    p->settings.on_message_begin = on_message_begin;
    p->settings.on_url = on_url;
    p->settings.on_header_field = on_header_field;
    p->settings.on_header_value = on_header_value;
    p->settings.on_headers_complete = on_headers_complete;
    p->settings.on_body = on_body;
    p->settings.on_message_complete = on_message_complete;
    http_parser_init(&p->hp, HTTP_REQUEST);
    p->hp.data = p;
    p->body_limit = p->lim.max_body;
}

void http_req_parser_set_body(struct http_req_parser *p, uint64_t limit, http_req_body_sink sink,
                              void *sink_data)
{
    p->body_limit = limit;
    p->sink = sink;
    p->sink_data = sink_data;
}

static int status_for_errno(enum http_errno e)
{
    switch (e) {
    case HPE_HEADER_OVERFLOW:
        return 431;
    case HPE_INVALID_METHOD:
        return 501;
    case HPE_INVALID_VERSION:
        return 505;
    default:
        return 400;
    }
}

enum http_req_status http_req_parser_feed(struct http_req_parser *p, const char *data, size_t len,
                                          size_t *consumed)
{
    *consumed = 0;
    if (p->error_status)
        return HTTP_REQ_ERROR;
    if (p->done)
        return HTTP_REQ_DONE;
    if (!len)
        return HTTP_REQ_MORE;
    size_t n = http_parser_execute(&p->hp, &p->settings, data, len);
    enum http_errno e = HTTP_PARSER_ERRNO(&p->hp);
    if (p->error_status)
        return HTTP_REQ_ERROR;
    if (p->hp.upgrade) {
        p->error_status = 400;
        snprintf(p->error_message, sizeof(p->error_message), "protocol upgrades are not supported");
        return HTTP_REQ_ERROR;
    }
    if (e == HPE_PAUSED && p->done) {
        *consumed = n;
        return HTTP_REQ_DONE;
    }
    if (e != HPE_OK) {
        p->error_status = status_for_errno(e);
        snprintf(p->error_message, sizeof(p->error_message), "malformed request: %s",
                 http_errno_description(e));
        return HTTP_REQ_ERROR;
    }
    *consumed = n;
    return HTTP_REQ_MORE;
}

bool http_req_parser_started(const struct http_req_parser *p)
{
    return p->started;
}

bool http_req_parser_headers_done(const struct http_req_parser *p)
{
    return p->headers_done;
}

/* Bodies carry secret values (secret_env of a job spec) and headers the
 * bearer token: wiped before they go back to the allocator. */
static void wipe_buf(struct al_buf *b)
{
    if (b->data)
        explicit_bzero(b->data, b->cap);
    al_buf_free(b);
}

static void request_clear(struct http_request *r)
{
    free(r->target);
    free(r->path);
    for (size_t i = 0; i < r->n_query; i++) {
        free(r->query[i].name);
        free(r->query[i].value);
    }
    for (size_t i = 0; i < r->n_headers; i++) {
        free(r->headers[i].name);
        explicit_bzero(r->headers[i].value, strlen(r->headers[i].value));
        free(r->headers[i].value);
    }
    free(r->headers);
    wipe_buf(&r->body);
    memset(r, 0, sizeof(*r));
}

void http_req_parser_next(struct http_req_parser *p)
{
    request_clear(&p->req);
    p->cap_headers = 0;
    p->header_bytes = 0;
    if (p->value.data)
        explicit_bzero(p->value.data, p->value.cap);
    al_buf_reset(&p->field);
    al_buf_reset(&p->value);
    p->in_value = false;
    p->headers_done = false;
    p->done = false;
    p->started = false;
    p->body_limit = p->lim.max_body;
    p->sink = NULL;
    p->sink_data = NULL;
    http_parser_pause(&p->hp, 0);
}

void http_req_parser_free(struct http_req_parser *p)
{
    request_clear(&p->req);
    al_buf_free(&p->field);
    wipe_buf(&p->value);
    p->cap_headers = 0;
}

const char *http_request_header(const struct http_request *r, const char *name)
{
    for (size_t i = 0; i < r->n_headers; i++) {
        if (strcasecmp(r->headers[i].name, name) == 0)
            return r->headers[i].value;
    }
    return NULL;
}

const char *http_request_query(const struct http_request *r, const char *name)
{
    for (size_t i = 0; i < r->n_query; i++) {
        if (strcmp(r->query[i].name, name) == 0)
            return r->query[i].value;
    }
    return NULL;
}

const char *http_status_reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 411:
        return "Length Required";
    case 413:
        return "Payload Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 417:
        return "Expectation Failed";
    case 422:
        return "Unprocessable Entity";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 503:
        return "Service Unavailable";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Unknown";
    }
}
