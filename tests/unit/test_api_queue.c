/* The rate-limited API call queue (runner/loop/api_queue.c) against the
 * test HTTP server on 127.0.0.1: FIFO with at most max_inflight calls at
 * once, a 429 with Retry-After holding every call back and repeating the
 * call, a 401 renewing the credential once, a refresh before the first
 * call, and a stop that cancels what is queued. */
#include "test_util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runner/base/log.h"
#include "runner/base/util.h"
#include "http_server.h"
#include "runner/loop/curl_uv.h"
#include "runner/loop/api_queue.h"

struct fake_auth {
    const char *token; /* NULL: none yet */
    char header[64];
    int refreshes;
    int invalidations;
    bool renewable;
    struct api_queue *q;
    bool refresh_async; /* answer the refresh on the next loop turn */
    uv_timer_t timer;
};

static const char *fa_header(void *data)
{
    struct fake_auth *a = data;
    if (!a->token)
        return NULL;
    snprintf(a->header, sizeof(a->header), "Authorization: Bearer %s", a->token);
    return a->header;
}

static void on_refresh_timer(uv_timer_t *t)
{
    struct fake_auth *a = t->data;
    a->token = "good";
    api_queue_auth_done(a->q, 0, NULL);
}

static int fa_refresh(void *data)
{
    struct fake_auth *a = data;
    a->refreshes++;
    uv_timer_start(&a->timer, on_refresh_timer, 10, 0);
    return 0;
}

static bool fa_invalidate(void *data)
{
    struct fake_auth *a = data;
    a->invalidations++;
    if (!a->renewable)
        return false;
    a->token = NULL;
    return true;
}

static const struct api_queue_auth_ops fa_ops = {
        .header = fa_header, .refresh = fa_refresh, .invalidate = fa_invalidate};

struct result {
    int n;
    int order[16];
    long status[16];
    int codes[16];
};

struct call_ctx {
    struct result *r;
    int idx;
};

static struct call_ctx ctxs[16];

static void on_done(int result, const struct al_http_response *resp, const struct al_error *err,
                    void *data)
{
    (void)err;
    struct call_ctx *c = data;
    struct result *r = c->r;
    r->order[r->n] = c->idx;
    r->codes[r->n] = result;
    r->status[r->n] = result == 0 ? resp->status : 0;
    r->n++;
}

struct fixture {
    uv_loop_t loop;
    struct al_curl *curl;
    struct test_http_server *srv;
    int port;
    char base[64];
    struct fake_auth auth;
    struct api_queue *q;
};

static void fixture_up(struct fixture *f, unsigned delay_ms, unsigned max_inflight,
                       const char *token)
{
    uv_loop_init(&f->loop);
    assert_int_equal(al_curl_new(&f->loop, &f->curl, NULL), 0);
    assert_int_equal(test_http_server_start(delay_ms, &f->srv, &f->port), 0);
    snprintf(f->base, sizeof(f->base), "http://127.0.0.1:%d", f->port);
    f->auth = (struct fake_auth){.token = token, .renewable = true};
    uv_timer_init(&f->loop, &f->auth.timer);
    f->auth.timer.data = &f->auth;
    static const char *const headers[] = {"Accept: application/json", NULL};
    struct api_queue_params p = {.loop = &f->loop,
                                 .curl = f->curl,
                                 .base = f->base,
                                 .name = "test",
                                 .headers = headers,
                                 .max_inflight = max_inflight,
                                 .timeout_ms = 10000,
                                 .final_timeout_ms = 2000,
                                 .max_response = 4096,
                                 .auth_ops = &fa_ops,
                                 .auth = &f->auth};
    assert_int_equal(api_queue_new(&p, &f->q, NULL), 0);
    f->auth.q = f->q;
}

static void fixture_down(struct fixture *f)
{
    assert_false(api_queue_busy(f->q));
    api_queue_free(f->q, NULL, NULL);
    uv_close((uv_handle_t *)&f->auth.timer, NULL);
    al_curl_close(f->curl, NULL, NULL);
    test_loop_close(&f->loop);
    test_http_server_stop(f->srv);
}

static void run_until(struct fixture *f, struct result *r, int n)
{
    uint64_t end = al_now_mono_ms() + 10000;
    while (r->n < n && al_now_mono_ms() < end)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(r->n, n);
}

static void call(struct fixture *f, struct result *r, int idx, const char *path)
{
    ctxs[idx] = (struct call_ctx){.r = r, .idx = idx};
    api_queue_call(f->q, "GET", strdup(path), NULL, NULL, on_done, &ctxs[idx]);
}

static void test_fifo_and_inflight_cap(void **state)
{
    (void)state;
    struct fixture f;
    fixture_up(&f, 200, 2, "good");
    struct result r = {0};
    uint64_t t0 = al_now_mono_ms();
    for (int i = 0; i < 6; i++)
        call(&f, &r, i, "/x");
    run_until(&f, &r, 6);
    uint64_t took = al_now_mono_ms() - t0;
    for (int i = 0; i < 6; i++) {
        assert_int_equal(r.codes[i], 0);
        assert_int_equal(r.status[i], 200);
    }
    /* started in order, two at a time: one of the first two ends first */
    assert_true(r.order[0] == 0 || r.order[0] == 1);
    /* each answer takes 200 ms: two at a time need three rounds, and they
     * did overlap (the server's count of open connections also sees one
     * the client has let go of a moment early, so it is no upper bound) */
    assert_true(took >= 3 * 200 - 50);
    assert_true(test_http_server_max_concurrent(f.srv) >= 2);
    fixture_down(&f);
}

static void test_one_at_a_time_keeps_order(void **state)
{
    (void)state;
    struct fixture f;
    fixture_up(&f, 20, 1, "good");
    struct result r = {0};
    for (int i = 0; i < 5; i++)
        call(&f, &r, i, "/x");
    run_until(&f, &r, 5);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(r.order[i], i);
        assert_int_equal(r.status[i], 200);
    }
    fixture_down(&f);
}

static void test_rate_limit_holds_and_repeats(void **state)
{
    (void)state;
    struct fixture f;
    fixture_up(&f, 0, 4, "good");
    struct result r = {0};
    uint64_t t0 = al_now_mono_ms();
    call(&f, &r, 0, "/flaky");
    run_until(&f, &r, 1);
    uint64_t took = al_now_mono_ms() - t0;
    assert_int_equal(r.status[0], 200); /* the 429 was not the answer */
    assert_true(took >= 1000);
    assert_int_equal(test_http_server_requests(f.srv), 2);
    /* a 403 without rate-limit headers is an answer */
    call(&f, &r, 1, "/status/403");
    run_until(&f, &r, 2);
    assert_int_equal(r.status[1], 403);
    fixture_down(&f);
}

static void test_auth_refresh_and_401(void **state)
{
    (void)state;
    struct fixture f;
    /* no credential yet: one refresh, then the call */
    fixture_up(&f, 0, 4, NULL);
    struct result r = {0};
    call(&f, &r, 0, "/auth");
    call(&f, &r, 1, "/auth");
    run_until(&f, &r, 2);
    assert_int_equal(f.auth.refreshes, 1);
    assert_int_equal(r.status[0], 200);
    assert_int_equal(r.status[1], 200);

    /* a stale credential: dropped, renewed, the call repeated once */
    f.auth.token = "stale";
    call(&f, &r, 2, "/auth");
    run_until(&f, &r, 3);
    assert_int_equal(f.auth.invalidations, 1);
    assert_int_equal(f.auth.refreshes, 2);
    assert_int_equal(r.status[2], 200);

    /* one that cannot be renewed: the 401 is the answer */
    f.auth.token = "stale";
    f.auth.renewable = false;
    call(&f, &r, 3, "/auth");
    run_until(&f, &r, 4);
    assert_int_equal(r.status[3], 401);
    assert_int_equal(f.auth.refreshes, 2);
    fixture_down(&f);
}

static void test_stop_cancels_queued(void **state)
{
    (void)state;
    struct fixture f;
    fixture_up(&f, 300, 1, "good");
    struct result r = {0};
    for (int i = 0; i < 3; i++)
        call(&f, &r, i, "/x");
    assert_true(api_queue_busy(f.q));
    api_queue_stop(f.q);
    run_until(&f, &r, 3);
    for (int i = 0; i < 3; i++)
        assert_int_equal(r.codes[i], -ECANCELED);
    /* the queued ones fail oldest first, then the one in flight is cancelled */
    assert_int_equal(r.order[0], 1);
    assert_int_equal(r.order[1], 2);
    assert_int_equal(r.order[2], 0);
    /* calls after a stop still go, with the final timeout */
    call(&f, &r, 3, "/x");
    run_until(&f, &r, 4);
    assert_int_equal(r.status[3], 200);
    fixture_down(&f);
}

int main(void)
{
    al_log_set_level(AL_LOG_ERROR);
    assert_int_equal(al_curl_global_init(), 0);
    const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_fifo_and_inflight_cap),
            cmocka_unit_test(test_one_at_a_time_keeps_order),
            cmocka_unit_test(test_rate_limit_holds_and_repeats),
            cmocka_unit_test(test_auth_refresh_and_401),
            cmocka_unit_test(test_stop_cancels_queued),
    };
    int r = cmocka_run_group_tests(tests, NULL, NULL);
    al_curl_global_cleanup();
    return r;
}
