#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_server.h"
#include "runner/loop/curl_uv.h"
#include "runner/loop/http_client.h"

#define N_REQUESTS 200

struct ctx {
    uv_loop_t loop;
    struct al_curl *curl;
    struct test_http_server *srv;
    int port;
    unsigned done, ok, failed;
    int last_result;
    bool all_done;
    bool closed;
    char last_body[256];
};

static int setup(void **state)
{
    struct ctx *c = calloc(1, sizeof(*c));
    assert_int_equal(uv_loop_init(&c->loop), 0);
    assert_int_equal(al_curl_global_init(), 0);
    struct al_error *err = NULL;
    assert_int_equal(al_curl_new(&c->loop, &c->curl, &err), 0);
    *state = c;
    return 0;
}

static void on_closed(void *data)
{
    struct ctx *c = data;
    c->closed = true;
}

static int teardown(void **state)
{
    struct ctx *c = *state;
    al_curl_close(c->curl, on_closed, c);
    uv_run(&c->loop, UV_RUN_DEFAULT);
    assert_true(c->closed);
    test_loop_close(&c->loop);
    test_http_server_stop(c->srv);
    al_curl_global_cleanup();
    free(c);
    return 0;
}

static void on_response(int result, const struct al_http_response *resp, const struct al_error *err,
                        void *data)
{
    struct ctx *c = data;
    c->done++;
    c->last_result = result;
    if (result == 0 && resp->status == 200 && strncmp(resp->body.data, "path=/r/", 8) == 0 &&
        al_http_header(resp, "x-test") && strcmp(al_http_header(resp, "X-Test"), "yes") == 0)
        c->ok++;
    else
        c->failed++;
    if (resp->body.data)
        snprintf(c->last_body, sizeof(c->last_body), "%s", resp->body.data);
    (void)err;
    if (c->done == N_REQUESTS)
        c->all_done = true;
}

static void test_200_concurrent(void **state)
{
    struct ctx *c = *state;
    /* each response waits 300 ms, so finishing quickly needs real concurrency */
    assert_int_equal(test_http_server_start(300, &c->srv, &c->port), 0);
    char urls[N_REQUESTS][64];
    uint64_t start = uv_hrtime();
    for (int i = 0; i < N_REQUESTS; i++) {
        snprintf(urls[i], sizeof(urls[i]), "http://127.0.0.1:%d/r/%d", c->port, i);
        struct al_http_request req = {.url = urls[i]};
        struct al_error *err = NULL;
        assert_int_equal(al_http_start(c->curl, &req, on_response, c, NULL, &err), 0);
    }
    assert_int_equal(al_curl_active(c->curl), N_REQUESTS);
    assert_true(test_run_until(&c->loop, &c->all_done, 60000));
    double secs = (double)(uv_hrtime() - start) / 1e9;
    assert_int_equal(c->ok, N_REQUESTS);
    assert_int_equal(c->failed, 0);
    assert_int_equal(al_curl_active(c->curl), 0);
    assert_int_equal(test_http_server_requests(c->srv), N_REQUESTS);
    unsigned peak = test_http_server_max_concurrent(c->srv);
    fprintf(stderr, "200 requests in %.2fs, peak %u concurrent connections\n", secs, peak);
    /* serialised they would take 60 s; valgrind is slow, so be generous */
    assert_true(peak >= 50);
    assert_true(secs < 30.0);
}

static void test_refused_and_cancel(void **state)
{
    struct ctx *c = *state;
    /* nothing listens on port 9 (discard) on loopback here */
    struct al_http_request req = {.url = "http://127.0.0.1:9/", .connect_timeout_ms = 2000};
    struct al_error *err = NULL;
    c->done = 0;
    c->failed = 0;
    assert_int_equal(al_http_start(c->curl, &req, on_response, c, NULL, &err), 0);
    bool one = false;
    while (c->done == 0 && !one)
        uv_run(&c->loop, UV_RUN_ONCE);
    assert_int_equal(c->failed, 1);
    assert_true(c->last_result == -ECONNREFUSED || c->last_result == -ETIMEDOUT);

    /* cancel: the callback runs at once with -ECANCELED */
    assert_int_equal(test_http_server_start(5000, &c->srv, &c->port), 0);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/r/slow", c->port);
    struct al_http_request slow = {.url = url};
    struct al_http_call *call = NULL;
    assert_int_equal(al_http_start(c->curl, &slow, on_response, c, &call, &err), 0);
    uv_run(&c->loop, UV_RUN_NOWAIT);
    al_http_cancel(call);
    assert_int_equal(c->done, 2);
    assert_int_equal(c->last_result, -ECANCELED);
    assert_int_equal(al_curl_active(c->curl), 0);
}

static void test_response_limit(void **state)
{
    struct ctx *c = *state;
    assert_int_equal(test_http_server_start(0, &c->srv, &c->port), 0);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/r/a-rather-long-path", c->port);
    struct al_http_request req = {.url = url, .max_response = 8};
    struct al_error *err = NULL;
    c->done = 0;
    assert_int_equal(al_http_start(c->curl, &req, on_response, c, NULL, &err), 0);
    while (c->done == 0)
        uv_run(&c->loop, UV_RUN_ONCE);
    assert_int_equal(c->last_result, -EFBIG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_200_concurrent, setup, teardown),
            cmocka_unit_test_setup_teardown(test_refused_and_cancel, setup, teardown),
            cmocka_unit_test_setup_teardown(test_response_limit, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
