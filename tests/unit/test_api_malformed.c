/* Bad input on the control API: malformed request lines, bad methods,
 * oversized and broken headers, bad bodies and JSON, unknown endpoints, bad
 * ids and paths, missing or wrong tokens on TCP, and slowloris clients.
 * Each gets a 4xx/5xx (or a close); afterwards ordinary requests still
 * work, no connection is left open, and the server never held more than
 * its limits for any request. Also runs under valgrind. */
#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api_client.h"
#include "api_fixture.h"
#include "runner/base/util.h"

#define ID        "j0123456789abcdef0123"
#define ANY_ERROR 0

struct bad {
    const char *what;
    bool tcp;
    const char *raw; /* the whole request */
    int want;        /* status; ANY_ERROR = any 4xx/5xx */
};

static const struct bad cases[] = {
        /* request lines */
        {"garbage line", false, "GARBAGE\r\n\r\n", ANY_ERROR},
        {"method only", false, "GET\r\n\r\n", ANY_ERROR},
        {"HTTP/0.9", false, "GET /\r\n\r\n", ANY_ERROR},
        {"extra token", false, "GET / HTTP/1.1 extra\r\n\r\n", ANY_ERROR},
        {"HTTP/9.9", false, "GET / HTTP/9.9\r\n\r\n", ANY_ERROR},
        {"HTTP/2.0", false, "GET / HTTP/2.0\r\n\r\n", 505},
        {"binary", false, "\x01\x02\x03\x04\r\n\r\n", ANY_ERROR},
        {"control char in target", false, "GET /\x01 HTTP/1.1\r\n\r\n", ANY_ERROR},
        {"absolute form", false, "GET http://example.com/ HTTP/1.1\r\n\r\n", 400},
        {"asterisk form", false, "GET * HTTP/1.1\r\n\r\n", 400},
        {"bad escape", false, "GET /%ZZ HTTP/1.1\r\n\r\n", 400},
        {"escaped NUL", false, "GET /v1/jobs%00 HTTP/1.1\r\n\r\n", 400},
        {"bad query escape", false, "GET /v1/jobs?state=%G0 HTTP/1.1\r\n\r\n", 400},
        {"escaped newline in query", false, "GET /v1/jobs?label=a%0d%0aX:1 HTTP/1.1\r\n\r\n", 400},
        {"lone CR", false, "GET / HTTP/1.1\rHost: x\r\n\r\n", ANY_ERROR},
        /* methods */
        {"unknown method", false, "BREW /v1/jobs HTTP/1.1\r\n\r\n", ANY_ERROR},
        {"lower-case method", false, "get /healthz HTTP/1.1\r\n\r\n", ANY_ERROR},
        {"DELETE jobs", false, "DELETE /v1/jobs HTTP/1.1\r\n\r\n", 405},
        {"PATCH job", false, "PATCH /v1/jobs/" ID " HTTP/1.1\r\n\r\n", 405},
        {"OPTIONS", false, "OPTIONS / HTTP/1.1\r\n\r\n", 405},
        {"HEAD list", false, "HEAD /v1/jobs HTTP/1.1\r\n\r\n", 405},
        {"CONNECT", false, "CONNECT example.com:443 HTTP/1.1\r\n\r\n", 400},
        {"PUT jobs", false, "PUT /v1/jobs HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405},
        {"GET cancel", false, "GET /v1/jobs/" ID "/cancel HTTP/1.1\r\n\r\n", 405},
        /* headers */
        {"no colon", false, "GET / HTTP/1.1\r\nNoColonHere\r\n\r\n", 400},
        {"space in name", false, "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", 400},
        {"NUL in value", false, "GET / HTTP/1.1\r\nX-A: a\0b\r\n\r\n", ANY_ERROR},
        {"bad content length", false, "POST /v1/jobs HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400},
        {"negative content length", false, "POST /v1/jobs HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
         400},
        {"two content lengths", false,
         "POST /v1/jobs HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400},
        {"huge content length", false,
         "POST /v1/jobs HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400},
        {"bad chunk size", false,
         "POST /v1/jobs HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 400},
        {"chunked and length", false,
         "POST /v1/jobs HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
         "2\r\n{}\r\n0\r\n\r\n",
         400},
        {"odd expect", false, "POST /v1/jobs HTTP/1.1\r\nExpect: 200-ok\r\n\r\n", 417},
        {"upgrade", false, "GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
         400},
        /* bodies and job specs */
        {"not JSON", false,
         "POST /v1/jobs HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n"
         "hello",
         400},
        {"empty object", false, "POST /v1/jobs HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", 400},
        {"array", false, "POST /v1/jobs HTTP/1.1\r\nContent-Length: 2\r\n\r\n[]", 400},
        {"command not a list", false,
         "POST /v1/jobs HTTP/1.1\r\nContent-Length: 16\r\n\r\n{\"command\":\"ls\"}", 400},
        {"trailing garbage", false,
         "POST /v1/jobs HTTP/1.1\r\nContent-Length: 20\r\n\r\n{\"command\":[\"x\"]}xyz", 400},
        {"invalid UTF-8", false,
         "POST /v1/jobs HTTP/1.1\r\nContent-Length: 18\r\n\r\n{\"command\":[\"\xff\xfe\"]}", 400},
        {"declared 2 MiB", false, "POST /v1/jobs HTTP/1.1\r\nContent-Length: 2097152\r\n\r\n", 413},
        {"text/plain spec", false,
         "POST /v1/jobs HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: 17\r\n\r\n"
         "{\"command\":[\"x\"]}",
         415},
        {"spec from a forge", false,
         "POST /v1/jobs HTTP/1.1\r\nContent-Length: 44\r\n\r\n"
         "{\"command\":[\"x\"],\"source\":{\"type\":\"gitlab\"}}",
         400},
        /* endpoints, ids, paths, parameters */
        {"v2", false, "GET /v2/jobs HTTP/1.1\r\n\r\n", 404},
        {"v1 root", false, "GET /v1/ HTTP/1.1\r\n\r\n", 404},
        {"dot-dot root", false, "GET /../../etc/passwd HTTP/1.1\r\n\r\n", 404},
        {"dot-dot id", false, "GET /v1/jobs/../../metrics HTTP/1.1\r\n\r\n", 400},
        {"short id", false, "GET /v1/jobs/xyz HTTP/1.1\r\n\r\n", 400},
        {"unknown id", false, "GET /v1/jobs/j0000000000000000000a HTTP/1.1\r\n\r\n", 404},
        {"upper-case id", false, "POST /v1/jobs/J0123456789ABCDEF0123/cancel HTTP/1.1\r\n\r\n",
         400},
        {"id with slash escape", false, "GET /v1/jobs/j012345678%2fabcdef0123 HTTP/1.1\r\n\r\n",
         400},
        {"artifact traversal", false,
         "GET /v1/jobs/" ID "/artifacts/../../../etc/passwd HTTP/1.1\r\n\r\n", 400},
        {"artifact encoded traversal", false,
         "GET /v1/jobs/" ID "/artifacts/%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\n\r\n", 400},
        {"artifact absolute", false, "GET /v1/jobs/" ID "/artifacts//etc/passwd HTTP/1.1\r\n\r\n",
         400},
        {"logs of unknown job", false, "GET /v1/jobs/" ID "/logs?follow=1 HTTP/1.1\r\n\r\n", 404},
        {"bad limit", false, "GET /v1/jobs?limit=abc HTTP/1.1\r\n\r\n", 400},
        {"huge limit", false, "GET /v1/jobs?limit=99999999999999999999 HTTP/1.1\r\n\r\n", 400},
        {"bad state", false, "GET /v1/jobs?state=%ff HTTP/1.1\r\n\r\n", 400},
        {"bad cursor", false, "GET /v1/jobs?cursor=';drop HTTP/1.1\r\n\r\n", 400},
        {"bad wait", false, "GET /v1/events?wait=-5 HTTP/1.1\r\n\r\n", 400},
        {"bad offset", false, "GET /v1/jobs/" ID "/logs?offset=1e9 HTTP/1.1\r\n\r\n", 400},
        {"bad upload id", false,
         "POST /v1/jobs?workdir=/etc/passwd HTTP/1.1\r\nContent-Length: 17\r\n\r\n"
         "{\"command\":[\"x\"]}",
         400},
        /* tokens on TCP */
        {"no token", true, "GET /v1/jobs HTTP/1.1\r\n\r\n", 401},
        {"wrong token", true, "GET /v1/jobs HTTP/1.1\r\nAuthorization: Bearer nope\r\n\r\n", 401},
        {"empty bearer", true, "GET /v1/jobs HTTP/1.1\r\nAuthorization: Bearer\r\n\r\n", 401},
        {"token prefix", true,
         "GET /v1/jobs HTTP/1.1\r\nAuthorization: Bearer test-token-0123\r\n\r\n", 401},
        {"token in query", true, "GET /v1/jobs?token=" API_FIXTURE_TOKEN " HTTP/1.1\r\n\r\n", 401},
        {"basic scheme", true,
         "GET /v1/jobs HTTP/1.1\r\nAuthorization: Basic " API_FIXTURE_TOKEN "\r\n\r\n", 401},
        {"submit without token", true,
         "POST /v1/jobs HTTP/1.1\r\nContent-Length: 17\r\n\r\n{\"command\":[\"x\"]}", 401},
        {"metrics without token", true, "GET /metrics HTTP/1.1\r\n\r\n", 401},
        {"unknown path without token", true, "GET /v2/x HTTP/1.1\r\n\r\n", 401},
};

static int send_raw(struct api_fixture *c, bool tcp, const char *raw, size_t len, struct tc_resp *r)
{
    struct tc_conn conn;
    assert_int_equal(tc_connect(&conn, &c->loop, tcp ? NULL : c->sock, tcp ? c->port : 0), 0);
    tc_begin(&conn, r);
    tc_send(&conn, raw, len); /* the server may close before all of it is read */
    tc_wait(&conn, NULL, 5000);
    tc_close(&conn);
    return r->status;
}

static long rss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "re");
    char line[256];
    long kib = -1;
    while (f && fgets(line, sizeof(line), f)) {
        if (strncmp(line, "VmRSS:", 6) == 0)
            kib = strtol(line + 6, NULL, 10);
    }
    if (f)
        fclose(f);
    return kib;
}

static void ordinary_requests_work(struct api_fixture *c)
{
    struct tc_resp r = {0};
    assert_int_equal(tc_request(&c->loop, c->sock, 0, "GET", "/healthz", NULL, NULL, &r), 200);
    assert_int_equal(tc_request(&c->loop, c->sock, 0, "GET", "/v1/jobs", NULL, NULL, &r), 200);
    assert_int_equal(tc_request(&c->loop, NULL, c->port, "GET", "/v1/jobs",
                                "Authorization: Bearer " API_FIXTURE_TOKEN "\r\n", NULL, &r),
                     200);
    assert_int_equal(tc_request(&c->loop, c->sock, 0, "POST", "/v1/jobs",
                                "Content-Type: application/json\r\n", "{\"command\":[\"true\"]}",
                                &r),
                     201);
    tc_resp_clear(&r);
}

static void test_barrage(void **state)
{
    struct api_fixture *c = *state;
    long rss0 = rss_kib();
    struct tc_resp r = {0};
    size_t n = 0;
    for (int round = 0; round < 3; round++) {
        for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
            const struct bad *b = &cases[i];
            /* NUL bytes are part of some requests: send the literal's length */
            size_t len = strlen(b->raw);
            if (strcmp(b->what, "NUL in value") == 0)
                len = sizeof("GET / HTTP/1.1\r\nX-A: a\0b\r\n\r\n") - 1;
            int st = send_raw(c, b->tcp, b->raw, len, &r);
            bool ok = b->want == ANY_ERROR ? st >= 400 && st <= 505 : st == b->want;
            if (!ok)
                fail_msg("%s: status %d, want %d: %s", b->what, st, b->want,
                         r.body.data ? r.body.data : "");
            if (st >= 400 && strncmp(b->raw, "HEAD ", 5) != 0) {
                /* every error is JSON in the one documented shape */
                if (!r.body.data)
                    fail_msg("%s: no body", b->what);
                assert_non_null(strstr(r.body.data, "{\"error\":{\"code\":\""));
                assert_non_null(strstr(r.body.data, "\"message\":\""));
            }
            n++;
        }
    }
    assert_true(n >= 150);

    /* header floods: too many bytes, too many fields */
    char *big = malloc(64 << 10);
    int k = snprintf(big, 64 << 10, "GET /healthz HTTP/1.1\r\nX-Big: ");
    memset(big + k, 'x', 40000);
    snprintf(big + k + 40000, 64, "\r\n\r\n");
    assert_int_equal(send_raw(c, false, big, strlen(big), &r), 431);
    k = snprintf(big, 64 << 10, "GET /healthz HTTP/1.1\r\n");
    for (int i = 0; i < 200; i++)
        k += snprintf(big + k, (64 << 10) - (size_t)k, "X-H%d: v\r\n", i);
    snprintf(big + k, (64 << 10) - (size_t)k, "\r\n");
    assert_int_equal(send_raw(c, false, big, strlen(big), &r), 431);
    /* a 10 KiB request target */
    k = snprintf(big, 64 << 10, "GET /");
    memset(big + k, 'a', 10000);
    snprintf(big + k + 10000, 64, " HTTP/1.1\r\n\r\n");
    assert_int_equal(send_raw(c, false, big, strlen(big), &r), 414);
    /* 10,000-deep JSON */
    k = snprintf(big, 64 << 10, "POST /v1/jobs HTTP/1.1\r\nContent-Length: 20000\r\n\r\n");
    memset(big + k, '[', 10000);
    memset(big + k + 10000, ']', 10000);
    big[k + 20000] = '\0';
    assert_int_equal(send_raw(c, false, big, (size_t)k + 20000, &r), 400);
    free(big);

    ordinary_requests_work(c);
    struct api_server_stats st;
    api_server_stats(api_get_server(c->api), &st);
    /* never more than the header limit plus one read and one small body */
    assert_true(st.buffered_peak < (16u << 10) + (64u << 10) + 20100);
    long rss1 = rss_kib();
    if (!getenv("AL_UNDER_VALGRIND") && rss0 > 0 && rss1 > 0 && rss1 - rss0 > 16 * 1024)
        fail_msg("RSS grew from %ld to %ld KiB", rss0, rss1);
    tc_resp_clear(&r);
}

static void test_slowloris(void **state)
{
    struct api_fixture *c = *state;
    struct tc_resp r[4] = {{0}};
    struct tc_conn conns[4];
    /* headers that trickle in, a body that trickles in, a connection that
     * says nothing, and a request cut short */
    const char *starts[] = {"GET /healthz HTTP/1.1\r\nX-Slow: ",
                            "POST /v1/jobs HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"co", "",
                            "GET /heal"};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(
                tc_connect(&conns[i], &c->loop, i == 1 ? NULL : c->sock, i == 1 ? c->port : 0), 0);
        tc_begin(&conns[i], &r[i]);
        if (*starts[i])
            assert_int_equal(tc_send(&conns[i], starts[i], strlen(starts[i])), 0);
    }
    /* the TCP body trickler is unauthenticated: refused at its headers */
    assert_true(tc_wait(&conns[1], NULL, 2000));
    assert_int_equal(r[1].status, 401);
    for (int t = 0; t < 30; t++) {
        tc_run_for(&c->loop, 100);
        tc_send(&conns[0], "a", 1);
    }
    assert_true(tc_wait(&conns[0], NULL, 2000));
    assert_int_equal(r[0].status, 408);
    assert_false(tc_wait(&conns[2], NULL, 3000));
    assert_true(r[2].closed);
    assert_true(tc_wait(&conns[3], NULL, 2000));
    assert_int_equal(r[3].status, 408);
    for (int i = 0; i < 4; i++) {
        tc_close(&conns[i]);
        tc_resp_clear(&r[i]);
    }
    /* a body that trickles on the unix socket runs into the body timeout */
    struct tc_conn b;
    struct tc_resp rb = {0};
    assert_int_equal(tc_connect(&b, &c->loop, c->sock, 0), 0);
    tc_begin(&b, &rb);
    const char *head = "POST /v1/jobs HTTP/1.1\r\nContent-Length: 100\r\n\r\n{";
    assert_int_equal(tc_send(&b, head, strlen(head)), 0);
    for (int t = 0; t < 25 && !rb.complete && !rb.closed; t++) {
        tc_send(&b, " ", 1);
        tc_wait(&b, NULL, 100);
    }
    assert_true(tc_wait(&b, NULL, 2000) || rb.complete);
    assert_int_equal(rb.status, 408);
    tc_close(&b);
    tc_resp_clear(&rb);

    /* a flood of connections over the limit: each refused, none kept */
    struct tc_conn many[20];
    for (int i = 0; i < 20; i++)
        assert_int_equal(tc_connect(&many[i], &c->loop, c->sock, 0), 0);
    tc_run_for(&c->loop, 100);
    struct api_server_stats st;
    api_server_stats(api_get_server(c->api), &st);
    assert_true(st.connections <= api_fixture_limits.max_connections);
    assert_true(st.connections_rejected >= 8);
    for (int i = 0; i < 20; i++)
        tc_close(&many[i]);
    tc_run_for(&c->loop, 100);
    ordinary_requests_work(c);
    tc_run_for(&c->loop, 100);
    api_server_stats(api_get_server(c->api), &st);
    assert_int_equal(st.connections, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_barrage, api_fixture_setup, api_fixture_teardown),
            cmocka_unit_test_setup_teardown(test_slowloris, api_fixture_setup,
                                            api_fixture_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
