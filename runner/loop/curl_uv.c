#include "runner/loop/curl_uv.h"

#include <stdlib.h>
#include <string.h>

#include "runner/base/list.h"

struct transfer {
    CURL *easy;
    al_curl_done_cb cb;
    void *data;
    struct al_list link; /* on al_curl.transfers */
};

struct sock_ctx {
    uv_poll_t poll;
    curl_socket_t fd;
    struct al_curl *owner;
    struct al_list link; /* on al_curl.socks */
    bool closing;
};

struct al_curl {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer;
    struct al_list transfers; /* newest first */
    struct al_list socks;     /* newest first; not those being closed */
    unsigned n_active;
    unsigned pending_closes;
    bool closing;
    void (*close_cb)(void *data);
    void *close_data;
};

static unsigned global_refs;

int al_curl_global_init(void)
{
    if (global_refs++ == 0 && curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        global_refs = 0;
        return -EIO;
    }
    return 0;
}

void al_curl_global_cleanup(void)
{
    if (global_refs && --global_refs == 0)
        curl_global_cleanup();
}

static void maybe_finish_close(struct al_curl *c)
{
    if (!c->closing || c->pending_closes)
        return;
    void (*cb)(void *) = c->close_cb;
    void *data = c->close_data;
    free(c);
    if (cb)
        cb(data);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct al_curl *c = h->data;
    if (h->type == UV_POLL)
        free(container_of((uv_poll_t *)h, struct sock_ctx, poll));
    c->pending_closes--;
    maybe_finish_close(c);
}

static void sock_close(struct sock_ctx *s)
{
    struct al_curl *c = s->owner;
    if (s->closing)
        return;
    s->closing = true;
    al_list_del(&s->link);
    uv_poll_stop(&s->poll);
    c->pending_closes++;
    uv_close((uv_handle_t *)&s->poll, on_handle_closed);
}

static struct transfer *transfer_take(struct al_curl *c, CURL *easy)
{
    al_list_for_each(t, &c->transfers, struct transfer, link) {
        if (t->easy == easy) {
            al_list_del(&t->link);
            return t;
        }
    }
    return NULL;
}

static void finish(struct al_curl *c, CURL *easy, CURLcode result)
{
    struct transfer *t = transfer_take(c, easy);
    curl_multi_remove_handle(c->multi, easy);
    if (!t)
        return;
    c->n_active--;
    al_curl_done_cb cb = t->cb;
    void *data = t->data;
    free(t);
    cb(easy, result, data);
}

static void check_done(struct al_curl *c)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(c->multi, &left))) {
        if (m->msg == CURLMSG_DONE)
            finish(c, m->easy_handle, m->data.result);
    }
}

static void on_poll(uv_poll_t *p, int status, int events)
{
    struct sock_ctx *s = container_of(p, struct sock_ctx, poll);
    struct al_curl *c = s->owner;
    int flags = 0;
    int running = 0;
    if (status < 0) {
        flags = CURL_CSELECT_ERR;
    } else {
        if (events & UV_READABLE)
            flags |= CURL_CSELECT_IN;
        if (events & UV_WRITABLE)
            flags |= CURL_CSELECT_OUT;
    }
    curl_multi_socket_action(c->multi, s->fd, flags, &running);
    check_done(c);
}

static void on_timer(uv_timer_t *t)
{
    struct al_curl *c = t->data;
    int running = 0;
    curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(c);
}

static int socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    (void)easy;
    struct al_curl *c = userp;
    struct sock_ctx *s = socketp;

    if (what == CURL_POLL_REMOVE) {
        if (s) {
            if (!c->closing)
                curl_multi_assign(c->multi, fd, NULL);
            sock_close(s);
        }
        return 0;
    }

    if (!s) {
        s = calloc(1, sizeof(*s));
        if (!s)
            return -1;
        s->fd = fd;
        s->owner = c;
        if (uv_poll_init_socket(c->loop, &s->poll, fd) < 0) {
            free(s);
            return -1;
        }
        s->poll.data = c;
        al_list_add(&c->socks, &s->link);
        curl_multi_assign(c->multi, fd, s);
    }

    int events = 0;
    if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
        events |= UV_READABLE;
    if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
        events |= UV_WRITABLE;
    if (uv_poll_start(&s->poll, events, on_poll) < 0)
        return -1;
    return 0;
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    struct al_curl *c = userp;
    if (timeout_ms < 0)
        uv_timer_stop(&c->timer);
    else
        /* 0 means "as soon as possible": the next loop iteration, never a
         * re-entrant call into curl from inside its own callback */
        uv_timer_start(&c->timer, on_timer, (uint64_t)timeout_ms, 0);
    return 0;
}

int al_curl_new(uv_loop_t *loop, struct al_curl **ret, struct al_error **err)
{
    struct al_curl *c = calloc(1, sizeof(*c));
    if (!c)
        return al_error_set(err, ENOMEM, "allocating the curl multi handle");
    c->loop = loop;
    al_list_init(&c->transfers);
    al_list_init(&c->socks);
    c->multi = curl_multi_init();
    if (!c->multi) {
        free(c);
        return al_error_set(err, ENOMEM, "curl_multi_init failed");
    }
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    *ret = c;
    return 0;
}

int al_curl_add(struct al_curl *c, CURL *easy, al_curl_done_cb cb, void *data)
{
    if (c->closing)
        return -ESHUTDOWN;
    struct transfer *t = calloc(1, sizeof(*t));
    if (!t)
        return -ENOMEM;
    t->easy = easy;
    t->cb = cb;
    t->data = data;
    if (curl_multi_add_handle(c->multi, easy) != CURLM_OK) {
        free(t);
        return -EINVAL;
    }
    al_list_add(&c->transfers, &t->link);
    c->n_active++;
    return 0;
}

void al_curl_cancel(struct al_curl *c, CURL *easy)
{
    al_list_for_each(t, &c->transfers, struct transfer, link) {
        if (t->easy == easy) {
            /* finish() frees t: leave the walk at once */
            finish(c, easy, CURLE_ABORTED_BY_CALLBACK);
            return;
        }
    }
}

unsigned al_curl_active(const struct al_curl *c)
{
    return c->n_active;
}

void al_curl_close(struct al_curl *c, void (*close_cb)(void *data), void *data)
{
    if (!c || c->closing)
        return;
    while (!al_list_empty(&c->transfers))
        finish(c, al_list_first_entry(&c->transfers, struct transfer, link)->easy,
               CURLE_ABORTED_BY_CALLBACK);
    c->closing = true;
    c->close_cb = close_cb;
    c->close_data = data;
    curl_multi_cleanup(c->multi);
    c->multi = NULL;
    while (!al_list_empty(&c->socks))
        sock_close(al_list_first_entry(&c->socks, struct sock_ctx, link));
    uv_timer_stop(&c->timer);
    c->pending_closes++;
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
}
