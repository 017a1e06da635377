#include "http_server.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "runner/base/macro.h"

struct test_http_server {
    uv_loop_t loop;
    uv_tcp_t listener;
    uv_async_t stop;
    uv_thread_t thread;
    unsigned delay_ms;
    atomic_uint requests;
    atomic_uint open;
    atomic_uint max_open;
    atomic_uint flaky; /* requests to /flaky so far */
    uv_sem_t ready;
};

struct conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    struct test_http_server *srv;
    char buf[8192];
    size_t len;
    bool responded;
    int closes;
    char path[512];
    uv_write_t wreq;
    char out[1024];
};

static void conn_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    if (++c->closes == 2) {
        atomic_fetch_sub(&c->srv->open, 1);
        free(c);
    }
}

static void conn_close(struct conn *c)
{
    if (!uv_is_closing((uv_handle_t *)&c->tcp)) {
        uv_close((uv_handle_t *)&c->tcp, conn_closed);
        uv_close((uv_handle_t *)&c->timer, conn_closed);
    }
}

static void on_written(uv_write_t *w, int status)
{
    (void)status;
    conn_close(w->data);
}

/* The answer a path asks for (see http_server.h). */
static int status_for(struct conn *c, char *extra, size_t size)
{
    extra[0] = '\0';
    const char *p = c->path;
    if (strncmp(p, "/status/", 8) == 0) {
        int st = (int)strtol(p + 8, NULL, 10);
        const char *ra = strstr(p, "retry_after=");
        if (ra)
            snprintf(extra, size, "Retry-After: %ld\r\n", strtol(ra + 12, NULL, 10));
        return st >= 100 && st <= 599 ? st : 500;
    }
    if (strncmp(p, "/flaky", 6) == 0) {
        if (atomic_fetch_add(&c->srv->flaky, 1) == 0) {
            snprintf(extra, size, "Retry-After: 1\r\n");
            return 429;
        }
        return 200;
    }
    if (strncmp(p, "/auth", 5) == 0)
        return strstr(c->buf, "\r\nAuthorization: Bearer good\r\n") ? 200 : 401;
    return 200;
}

static void respond(uv_timer_t *t)
{
    struct conn *c = t->data;
    char body[600], extra[128];
    int st = status_for(c, extra, sizeof(extra));
    int bl = snprintf(body, sizeof(body), "path=%s\n", c->path);
    int n = snprintf(c->out, sizeof(c->out),
                     "HTTP/1.1 %d X\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                     "X-Test: yes\r\n%sConnection: close\r\n\r\n%s",
                     st, bl, extra, body);
    uv_buf_t b = uv_buf_init(c->out, (unsigned)n);
    c->wreq.data = c;
    atomic_fetch_add(&c->srv->requests, 1);
    if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_written) < 0)
        conn_close(c);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    struct conn *c = h->data;
    buf->base = c->buf + c->len;
    buf->len = sizeof(c->buf) - c->len - 1;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    (void)buf;
    struct conn *c = s->data;
    if (n < 0) {
        conn_close(c);
        return;
    }
    c->len += (size_t)n;
    c->buf[c->len] = '\0';
    if (c->responded || !strstr(c->buf, "\r\n\r\n")) {
        if (c->len >= sizeof(c->buf) - 1)
            conn_close(c);
        return;
    }
    c->responded = true;
    char method[16];
    if (sscanf(c->buf, "%15s %511s", method, c->path) != 2)
        snprintf(c->path, sizeof(c->path), "?");
    uv_read_stop(s);
    uv_timer_start(&c->timer, respond, c->srv->delay_ms, 0);
}

static void on_connection(uv_stream_t *l, int status)
{
    struct test_http_server *srv = l->data;
    if (status < 0)
        return;
    struct conn *c = calloc(1, sizeof(*c));
    if (!c)
        return;
    c->srv = srv;
    uv_tcp_init(&srv->loop, &c->tcp);
    uv_timer_init(&srv->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    if (uv_accept(l, (uv_stream_t *)&c->tcp) < 0) {
        conn_close(c);
        return;
    }
    unsigned now = atomic_fetch_add(&srv->open, 1) + 1;
    unsigned prev = atomic_load(&srv->max_open);
    while (now > prev && !atomic_compare_exchange_weak(&srv->max_open, &prev, now))
        ;
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

static void close_any(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (uv_is_closing(h))
        return;
    if (h->type == UV_TCP && h->data &&
        h != (uv_handle_t *)&((struct test_http_server *)arg)->listener) {
        conn_close(h->data);
        return;
    }
    if (h->type == UV_TIMER)
        return; /* closed with its connection */
    uv_close(h, NULL);
}

static void on_stop(uv_async_t *a)
{
    struct test_http_server *srv = a->data;
    uv_walk(&srv->loop, close_any, srv);
}

static void thread_main(void *arg)
{
    struct test_http_server *srv = arg;
    uv_sem_post(&srv->ready);
    uv_run(&srv->loop, UV_RUN_DEFAULT);
}

int test_http_server_start(unsigned delay_ms, struct test_http_server **ret, int *ret_port)
{
    struct test_http_server *srv = calloc(1, sizeof(*srv));
    if (!srv)
        return -ENOMEM;
    srv->delay_ms = delay_ms;
    uv_loop_init(&srv->loop);
    uv_tcp_init(&srv->loop, &srv->listener);
    srv->listener.data = srv;
    struct sockaddr_in addr;
    uv_ip4_addr("127.0.0.1", 0, &addr);
    int r = uv_tcp_bind(&srv->listener, (const struct sockaddr *)&addr, 0);
    if (r == 0)
        r = uv_listen((uv_stream_t *)&srv->listener, 1024, on_connection);
    if (r < 0) {
        free(srv);
        return r;
    }
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&ss, &len);
    *ret_port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    uv_async_init(&srv->loop, &srv->stop, on_stop);
    srv->stop.data = srv;
    uv_sem_init(&srv->ready, 0);
    uv_thread_create(&srv->thread, thread_main, srv);
    uv_sem_wait(&srv->ready);
    *ret = srv;
    return 0;
}

void test_http_server_stop(struct test_http_server *s)
{
    if (!s)
        return;
    uv_async_send(&s->stop);
    uv_thread_join(&s->thread);
    uv_loop_close(&s->loop);
    uv_sem_destroy(&s->ready);
    free(s);
}

unsigned test_http_server_requests(struct test_http_server *s)
{
    return atomic_load(&s->requests);
}

unsigned test_http_server_max_concurrent(struct test_http_server *s)
{
    return atomic_load(&s->max_open);
}
