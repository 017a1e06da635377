/* The control API's request parser and router, without sockets: every
 * limit fails with its status at the byte that crosses it, requests split
 * at any byte parse the same, pipelined requests come out one at a time,
 * and the router refuses bad ids and artifact paths. */
#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runner/loop/http_request.h"
#include "runner/api/json.h"
#include "runner/api/router.h"

struct parsed {
    enum http_req_status st;
    int status;
    size_t consumed;
};

static struct parsed parse_all(struct http_req_parser *p, const char *s, size_t len)
{
    struct parsed out = {0};
    out.st = http_req_parser_feed(p, s, len, &out.consumed);
    out.status = p->error_status;
    return out;
}

static void test_simple_get(void **state)
{
    (void)state;
    struct http_req_parser p;
    http_req_parser_init(&p, NULL, NULL, NULL);
    const char *req = "GET /v1/jobs?state=running&label=gpu%2Bfast&limit=5 HTTP/1.1\r\n"
                      "Host: x\r\nAuthorization: Bearer abc\r\n\r\n";
    struct parsed r = parse_all(&p, req, strlen(req));
    assert_int_equal(r.st, HTTP_REQ_DONE);
    assert_int_equal(r.consumed, strlen(req));
    assert_int_equal(p.req.method, HTTP_GET);
    assert_string_equal(p.req.path, "/v1/jobs");
    assert_string_equal(http_request_query(&p.req, "state"), "running");
    assert_string_equal(http_request_query(&p.req, "label"), "gpu+fast");
    assert_string_equal(http_request_query(&p.req, "limit"), "5");
    assert_null(http_request_query(&p.req, "cursor"));
    assert_string_equal(http_request_header(&p.req, "AUTHORIZATION"), "Bearer abc");
    assert_true(p.req.keep_alive);
    http_req_parser_free(&p);
}

/* The same request fed one byte at a time parses the same. */
static void test_byte_at_a_time(void **state)
{
    (void)state;
    const char *req = "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      "Content-Length: 25\r\n\r\n{\"command\":[\"echo\",\"hi\"]}";
    struct http_req_parser p;
    http_req_parser_init(&p, NULL, NULL, NULL);
    size_t len = strlen(req);
    enum http_req_status st = HTTP_REQ_MORE;
    for (size_t i = 0; i < len; i++) {
        size_t used = 0;
        st = http_req_parser_feed(&p, req + i, 1, &used);
        assert_int_equal(used, 1);
        if (i + 1 < len)
            assert_int_equal(st, HTTP_REQ_MORE);
    }
    assert_int_equal(st, HTTP_REQ_DONE);
    assert_string_equal(p.req.body.data, "{\"command\":[\"echo\",\"hi\"]}");
    assert_string_equal(http_request_header(&p.req, "content-type"), "application/json");
    http_req_parser_free(&p);
}

static void test_pipelined(void **state)
{
    (void)state;
    const char *reqs = "GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.0\r\n\r\n";
    struct http_req_parser p;
    http_req_parser_init(&p, NULL, NULL, NULL);
    const char *paths[] = {"/a", "/b", "/c"};
    const char *s = reqs;
    size_t len = strlen(reqs);
    for (int i = 0; i < 3; i++) {
        size_t used = 0;
        assert_int_equal(http_req_parser_feed(&p, s, len, &used), HTTP_REQ_DONE);
        assert_string_equal(p.req.path, paths[i]);
        assert_int_equal(p.req.keep_alive, i < 2);
        s += used;
        len -= used;
        http_req_parser_next(&p);
    }
    assert_int_equal(len, 0);
    http_req_parser_free(&p);
}

static void test_chunked_body(void **state)
{
    (void)state;
    const char *req = "POST /v1/jobs HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                      "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    struct http_req_parser p;
    http_req_parser_init(&p, NULL, NULL, NULL);
    assert_int_equal(parse_all(&p, req, strlen(req)).st, HTTP_REQ_DONE);
    assert_string_equal(p.req.body.data, "hello world");
    http_req_parser_free(&p);
}

static void test_limits(void **state)
{
    (void)state;
    struct http_limits lim = {.max_header_bytes = 256, .max_headers = 4, .max_body = 10};
    struct {
        const char *req;
        int status;
    } cases[] = {
            /* header bytes */
            {"GET / HTTP/1.1\r\nX-A: "
             "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
             "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
             "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
             "aaaaaaaaaaaaaaaaaaaaaa\r\n\r\n",
             431},
            /* header count */
            {"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n\r\n", 431},
            /* declared body too large: refused before reading it */
            {"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n", 413},
            /* chunked body too large */
            {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n12345678"
             "\r\n0\r\n\r\n",
             413},
            {"GET / HTTP/2.0\r\n\r\n", 505},
            {"BREW / HTTP/1.1\r\n\r\n", 501},
            {"GET http://evil/ HTTP/1.1\r\n\r\n", 400},
            {"GET /%zz HTTP/1.1\r\n\r\n", 400},
            {"GET /a%00b HTTP/1.1\r\n\r\n", 400},
            {"GET /?a=%0a HTTP/1.1\r\n\r\n", 400},
            {"GET / HTTP/1.1\r\nExpect: 200-ok\r\n\r\n", 417},
            {"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n", 400},
            {"GET / HTTP/1.1\r\nbad header\r\n\r\n", 400},
            {"\x01\x02\x03\r\n\r\n", 501},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        struct http_req_parser p;
        http_req_parser_init(&p, &lim, NULL, NULL);
        struct parsed r = parse_all(&p, cases[i].req, strlen(cases[i].req));
        if (r.st != HTTP_REQ_ERROR || r.status != cases[i].status)
            fail_msg("case %zu: status %d (st %d), want %d: %s", i, r.status, r.st, cases[i].status,
                     p.error_message);
        assert_true(p.error_message[0] != '\0');
        http_req_parser_free(&p);
    }
}

static void test_long_target(void **state)
{
    (void)state;
    struct http_limits lim = {.max_header_bytes = 64 << 10};
    size_t n = HTTP_REQ_MAX_TARGET + 100;
    char *req = malloc(n + 64);
    int k = snprintf(req, n + 64, "GET /");
    memset(req + k, 'a', n);
    snprintf(req + k + n, 64, " HTTP/1.1\r\n\r\n");
    struct http_req_parser p;
    http_req_parser_init(&p, &lim, NULL, NULL);
    struct parsed r = parse_all(&p, req, strlen(req));
    assert_int_equal(r.st, HTTP_REQ_ERROR);
    assert_int_equal(r.status, 414);
    http_req_parser_free(&p);
    free(req);
}

static void test_too_many_query_params(void **state)
{
    (void)state;
    char req[1024] = "GET /v1/jobs?";
    for (int i = 0; i < 40; i++) {
        char kv[16];
        snprintf(kv, sizeof(kv), "k%d=v&", i);
        strcat(req, kv);
    }
    strcat(req, " HTTP/1.1\r\n\r\n");
    struct http_req_parser p;
    http_req_parser_init(&p, NULL, NULL, NULL);
    assert_int_equal(parse_all(&p, req, strlen(req)).status, 400);
    http_req_parser_free(&p);
}

static int headers_cb(struct http_req_parser *p, void *data, char *msg, size_t size)
{
    int *calls = data;
    (*calls)++;
    if (strcmp(p->req.path, "/deny") == 0) {
        snprintf(msg, size, "denied");
        return 401;
    }
    http_req_parser_set_body(p, 3, NULL, NULL);
    return 0;
}

static void test_headers_callback(void **state)
{
    (void)state;
    int calls = 0;
    struct http_req_parser p;
    http_req_parser_init(&p, NULL, headers_cb, &calls);
    const char *deny = "POST /deny HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi";
    struct parsed r = parse_all(&p, deny, strlen(deny));
    assert_int_equal(r.st, HTTP_REQ_ERROR);
    assert_int_equal(r.status, 401);
    assert_string_equal(p.error_message, "denied");
    http_req_parser_free(&p);

    http_req_parser_init(&p, NULL, headers_cb, &calls);
    const char *big = "POST /ok HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd";
    r = parse_all(&p, big, strlen(big));
    assert_int_equal(r.status, 413);
    assert_int_equal(calls, 2);
    http_req_parser_free(&p);
}

static void test_percent_decode(void **state)
{
    (void)state;
    char *out = NULL;
    assert_int_equal(http_percent_decode("a%2Fb+c", 7, true, &out), 0);
    assert_string_equal(out, "a/b c");
    free(out);
    assert_int_equal(http_percent_decode("a+b", 3, false, &out), 0);
    assert_string_equal(out, "a+b");
    free(out);
    assert_int_equal(http_percent_decode("%4", 2, false, &out), -EINVAL);
    assert_int_equal(http_percent_decode("%", 1, false, &out), -EINVAL);
    assert_int_equal(http_percent_decode("%1f", 3, false, &out), -EINVAL);
    assert_int_equal(http_percent_decode("%7F", 3, false, &out), -EINVAL);
    assert_int_equal(http_percent_decode("%c3%a9", 6, false, &out), 0);
    assert_string_equal(out, "\xc3\xa9");
    free(out);
    assert_int_equal(http_percent_decode("%zz", 3, false, &out), -EINVAL);
}

/* Strings leave the API as valid UTF-8 whatever they hold: each byte that
 * is not part of a strict UTF-8 sequence becomes U+FFFD. */
static void test_json_strings(void **state)
{
    (void)state;
    static const struct {
        const char *in, *out;
    } cases[] = {
            {"caf\xc3\xa9", "\"caf\xc3\xa9\""},
            {"a\xffz", "\"a\xef\xbf\xbdz\""},
            {"\xc0\xaf", "\"\xef\xbf\xbd\xef\xbf\xbd\""},                 /* overlong */
            {"\xed\xa0\x80", "\"\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\""}, /* surrogate */
            {"\xe2\x82", "\"\xef\xbf\xbd\xef\xbf\xbd\""},                 /* truncated */
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        _cleanup_json_gen_ yajl_gen g = json_gen_new();
        assert_non_null(g);
        assert_int_equal(json_str(g, cases[i].in), 0);
        const unsigned char *buf;
        size_t len;
        assert_int_equal(yajl_gen_get_buf(g, &buf, &len), yajl_gen_status_ok);
        assert_int_equal(len, strlen(cases[i].out));
        assert_memory_equal(buf, cases[i].out, len);
    }
}

static void test_router(void **state)
{
    (void)state;
    struct route_match m;
    const char *id = "j0123456789abcdef0123";
    char path[256];

    route_match(HTTP_GET, "/", &m);
    assert_int_equal(m.id, ROUTE_STATUS_PAGE);
    route_match(HTTP_GET, "/v1/jobs", &m);
    assert_int_equal(m.id, ROUTE_JOB_LIST);
    route_match(HTTP_GET, "/v1/jobs/", &m);
    assert_int_equal(m.id, ROUTE_JOB_LIST);
    route_match(HTTP_POST, "/v1/jobs", &m);
    assert_int_equal(m.id, ROUTE_JOB_SUBMIT);
    snprintf(path, sizeof(path), "/v1/jobs/%s", id);
    route_match(HTTP_GET, path, &m);
    assert_int_equal(m.id, ROUTE_JOB_SHOW);
    assert_string_equal(m.job_id, id);
    snprintf(path, sizeof(path), "/v1/jobs/%s/cancel", id);
    route_match(HTTP_POST, path, &m);
    assert_int_equal(m.id, ROUTE_JOB_CANCEL);
    route_match(HTTP_GET, path, &m);
    assert_int_equal(m.id, ROUTE_METHOD_NOT_ALLOWED);
    assert_string_equal(m.allow, "POST");
    route_match(HTTP_DELETE, "/v1/jobs", &m);
    assert_int_equal(m.id, ROUTE_METHOD_NOT_ALLOWED);
    assert_non_null(strstr(m.allow, "GET"));
    assert_non_null(strstr(m.allow, "POST"));
    snprintf(path, sizeof(path), "/v1/jobs/%s/artifacts/out/report.txt", id);
    route_match(HTTP_GET, path, &m);
    assert_int_equal(m.id, ROUTE_JOB_ARTIFACT);
    assert_string_equal(m.artifact, "out/report.txt");

    const char *bad_artifacts[] = {"../etc/passwd", "a/../../b", "./a", "a//b",
                                   "a/./b",         "a/..",      ".."};
    for (size_t i = 0; i < ARRAY_SIZE(bad_artifacts); i++) {
        snprintf(path, sizeof(path), "/v1/jobs/%s/artifacts/%s", id, bad_artifacts[i]);
        route_match(HTTP_GET, path, &m);
        if (m.id != ROUTE_BAD_PARAM)
            fail_msg("artifact path \"%s\" was accepted (route %d)", bad_artifacts[i], m.id);
    }
    const char *bad_ids[] = {"j123",
                             "J0123456789abcdef0123",
                             "j0123456789ABCDEF0123",
                             "j0123456789abcdef01234",
                             "x0123456789abcdef0123",
                             "..",
                             "j0123456789abcdef012g"};
    for (size_t i = 0; i < ARRAY_SIZE(bad_ids); i++) {
        snprintf(path, sizeof(path), "/v1/jobs/%s", bad_ids[i]);
        route_match(HTTP_GET, path, &m);
        if (m.id != ROUTE_BAD_PARAM)
            fail_msg("job id \"%s\" was accepted (route %d)", bad_ids[i], m.id);
    }
    route_match(HTTP_GET, "/v2/jobs", &m);
    assert_int_equal(m.id, ROUTE_NOT_FOUND);
    route_match(HTTP_GET, "/healthzz", &m);
    assert_int_equal(m.id, ROUTE_NOT_FOUND);
    route_match(HTTP_GET, "/v1/jobsx", &m);
    assert_int_equal(m.id, ROUTE_NOT_FOUND);

    assert_true(route_is_public(ROUTE_HEALTHZ));
    assert_true(route_is_public(ROUTE_STATUS_PAGE));
    assert_false(route_is_public(ROUTE_STATUS));
    assert_false(route_is_public(ROUTE_METRICS));
    assert_false(route_is_public(ROUTE_JOB_LIST));
    for (int i = 0; i < ROUTE_COUNT; i++)
        assert_string_not_equal(route_name((enum route_id)i), "unknown");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_simple_get),
            cmocka_unit_test(test_byte_at_a_time),
            cmocka_unit_test(test_pipelined),
            cmocka_unit_test(test_chunked_body),
            cmocka_unit_test(test_limits),
            cmocka_unit_test(test_long_target),
            cmocka_unit_test(test_too_many_query_params),
            cmocka_unit_test(test_headers_callback),
            cmocka_unit_test(test_percent_decode),
            cmocka_unit_test(test_json_strings),
            cmocka_unit_test(test_router),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
