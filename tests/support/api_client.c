#include "api_client.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "runner/base/util.h"

static struct tc_conn *of(http_parser *p)
{
    return p->data;
}

static int on_status_cb(http_parser *p, const char *at, size_t len)
{
    (void)at;
    (void)len;
    of(p)->resp->status = p->status_code;
    return 0;
}

static int on_field(http_parser *p, const char *at, size_t len)
{
    struct tc_conn *c = of(p);
    if (c->in_value || !c->field[0]) {
        c->field[0] = '\0';
        c->in_value = false;
    }
    size_t have = strlen(c->field);
    if (have + len < sizeof(c->field)) {
        memcpy(c->field + have, at, len);
        c->field[have + len] = '\0';
    }
    return 0;
}

static int on_value(http_parser *p, const char *at, size_t len)
{
    struct tc_conn *c = of(p);
    struct tc_resp *r = c->resp;
    if (!c->in_value) {
        c->in_value = true;
        for (char *s = c->field; *s; s++)
            *s = (char)tolower((unsigned char)*s);
        int n = snprintf(r->headers + r->headers_len, sizeof(r->headers) - r->headers_len,
                         "%s: ", c->field);
        if (n > 0 && (size_t)n < sizeof(r->headers) - r->headers_len)
            r->headers_len += (size_t)n;
    } else if (r->headers_len && r->headers[r->headers_len - 1] == '\n') {
        r->headers_len--;
    }
    if (r->headers_len + len + 2 < sizeof(r->headers)) {
        memcpy(r->headers + r->headers_len, at, len);
        r->headers_len += len;
        r->headers[r->headers_len++] = '\n';
        r->headers[r->headers_len] = '\0';
    }
    return 0;
}

static int on_headers_done(http_parser *p)
{
    struct tc_conn *c = of(p);
    c->resp->status = p->status_code;
    c->resp->chunked = (p->flags & F_CHUNKED) != 0;
    c->field[0] = '\0';
    c->in_value = false;
    /* 1xx interim responses are followed by the real one */
    return c->head_only ? 1 : 0;
}

static int on_body_cb(http_parser *p, const char *at, size_t len)
{
    al_buf_append(&of(p)->resp->body, at, len);
    return 0;
}

static int on_done(http_parser *p)
{
    struct tc_conn *c = of(p);
    if (p->status_code >= 100 && p->status_code < 200) {
        /* 100 Continue: wait for the final response */
        c->resp->headers_len = 0;
        c->resp->headers[0] = '\0';
        return 0;
    }
    c->resp->complete = true;
    http_parser_pause(p, 1);
    return 0;
}

void tc_run_for(uv_loop_t *loop, unsigned ms)
{
    uint64_t end = al_now_mono_ms() + ms;
    while (al_now_mono_ms() < end) {
        uv_run(loop, UV_RUN_NOWAIT);
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
}

int tc_connect(struct tc_conn *c, uv_loop_t *loop, const char *path, int port)
{
    memset(c, 0, sizeof(*c));
    c->loop = loop;
    c->fd = -1;
    int fd;
    int r;
    if (path) {
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
        r = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
    } else {
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        r = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
    }
    if (fd < 0)
        return -errno;
    if (r < 0 && errno != EINPROGRESS && errno != EAGAIN) {
        int e = errno;
        close(fd);
        return -e;
    }
    /* let the server accept */
    for (int i = 0; i < 50; i++) {
        uv_run(loop, UV_RUN_NOWAIT);
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        if (poll(&pfd, 1, 1) > 0)
            break;
    }
    c->fd = fd;
    http_parser_settings_init(&c->settings);
    c->settings.on_status = on_status_cb;
    c->settings.on_header_field = on_field;
    c->settings.on_header_value = on_value;
    c->settings.on_headers_complete = on_headers_done;
    c->settings.on_body = on_body_cb;
    c->settings.on_message_complete = on_done;
    return 0;
}

void tc_close(struct tc_conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    uv_run(c->loop, UV_RUN_NOWAIT);
}

int tc_send(struct tc_conn *c, const void *data, size_t len)
{
    const char *p = data;
    uint64_t end = al_now_mono_ms() + 10000;
    while (len) {
        ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return -errno;
        if (al_now_mono_ms() > end)
            return -ETIMEDOUT;
        uv_run(c->loop, UV_RUN_NOWAIT);
        struct pollfd pfd = {.fd = c->fd, .events = POLLOUT};
        poll(&pfd, 1, 1);
    }
    uv_run(c->loop, UV_RUN_NOWAIT);
    return 0;
}

void tc_resp_clear(struct tc_resp *r)
{
    al_buf_free(&r->body);
    memset(r, 0, sizeof(*r));
}

void tc_begin(struct tc_conn *c, struct tc_resp *r)
{
    tc_resp_clear(r);
    c->resp = r;
    c->field[0] = '\0';
    c->in_value = false;
    http_parser_init(&c->hp, HTTP_RESPONSE);
    c->hp.data = c;
}

static void feed(struct tc_conn *c, const char *buf, size_t n)
{
    size_t used = http_parser_execute(&c->hp, &c->settings, buf, n);
    if (HTTP_PARSER_ERRNO(&c->hp) == HPE_PAUSED && used < n) {
        size_t rest = n - used;
        if (c->leftover_len + rest <= sizeof(c->leftover)) {
            memcpy(c->leftover + c->leftover_len, buf + used, rest);
            c->leftover_len += rest;
        }
    }
}

bool tc_wait(struct tc_conn *c, const char *needle, unsigned timeout_ms)
{
    struct tc_resp *r = c->resp;
    uint64_t end = al_now_mono_ms() + timeout_ms;
    char buf[16384];
    if (c->leftover_len) {
        size_t n = c->leftover_len;
        memcpy(buf, c->leftover, n);
        c->leftover_len = 0;
        feed(c, buf, n);
    }
    for (;;) {
        if (r->complete)
            return true;
        if (needle && r->body.data && strstr(r->body.data, needle))
            return true;
        if (r->closed || al_now_mono_ms() > end)
            return false;
        uv_run(c->loop, UV_RUN_NOWAIT);
        ssize_t n = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n > 0) {
            feed(c, buf, (size_t)n);
            continue;
        }
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            /* EOF also ends a body without a length */
            http_parser_execute(&c->hp, &c->settings, NULL, 0);
            r->closed = true;
            continue;
        }
        struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
        poll(&pfd, 1, 1);
    }
}

int tc_request(uv_loop_t *loop, const char *path, int port, const char *method, const char *target,
               const char *headers, const char *body, struct tc_resp *r)
{
    struct tc_conn c;
    tc_resp_clear(r);
    if (tc_connect(&c, loop, path, port) < 0)
        return 0;
    char head[4096];
    size_t blen = body ? strlen(body) : 0;
    int n = snprintf(head, sizeof(head),
                     "%s %s HTTP/1.1\r\nHost: test\r\n%sContent-Length: %zu\r\n\r\n", method,
                     target, headers ? headers : "", blen);
    c.head_only = strcmp(method, "HEAD") == 0;
    tc_begin(&c, r);
    if (tc_send(&c, head, (size_t)n) < 0 || (blen && tc_send(&c, body, blen) < 0)) {
        /* the server may have answered and closed already */
    }
    tc_wait(&c, NULL, 10000);
    tc_close(&c);
    return r->status;
}

const char *tc_header(const struct tc_resp *r, const char *name, char *buf, size_t size)
{
    size_t nl = strlen(name);
    const char *p = r->headers;
    while (p && *p) {
        const char *eol = strchr(p, '\n');
        if (!eol)
            break;
        if (strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (*v == ' ')
                v++;
            snprintf(buf, size, "%.*s", (int)(eol - v), v);
            return buf;
        }
        p = eol + 1;
    }
    return NULL;
}
