/* The control API end to end on one loop: the real engine and store on a
 * simulated hypervisor (tests/support/fake_backend.c), the API on a unix
 * socket and on 127.0.0.1 with a token, and a raw HTTP client that runs
 * the same loop while it waits. Routing, submission, listing with filters
 * and cursors, cancellation, live log streaming, event long-polls and
 * streams, artifacts, auth, keep-alive and pipelining, limits, metrics,
 * uploads, and a shutdown with streams still open. */
#include "test_util.h"

#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yajl/yajl_tree.h>

#include "runner/api/api.h"
#include "api_client.h"
#include "api_fixture.h"
#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/engine/engine.h"
#include "runner/base/hardlimits.h"

/* ------------------------------------------------------------ helpers */

static int req(struct api_fixture *c, const char *method, const char *target, const char *body,
               struct tc_resp *r)
{
    const char *hdr = body ? "Content-Type: application/json\r\n" : NULL;
    return tc_request(&c->loop, c->sock, 0, method, target, hdr, body, r);
}

static yajl_val parse_json(const struct tc_resp *r)
{
    char err[128];
    yajl_val v = yajl_tree_parse(r->body.data ? r->body.data : "", err, sizeof(err));
    if (!v)
        fail_msg("not JSON (%s): %s", err, r->body.data ? r->body.data : "");
    return v;
}

static const char *jstr(yajl_val v, const char *a, const char *b)
{
    const char *path[] = {a, b, NULL};
    yajl_val x = yajl_tree_get(v, path, yajl_t_any);
    return x && YAJL_IS_STRING(x) ? YAJL_GET_STRING(x) : NULL;
}

static long long jint(yajl_val v, const char *a, const char *b)
{
    const char *path[] = {a, b, NULL};
    yajl_val x = yajl_tree_get(v, path, yajl_t_number);
    return x ? YAJL_GET_INTEGER(x) : -999;
}

static void error_code_is(const struct tc_resp *r, const char *code)
{
    yajl_val v = parse_json(r);
    const char *got = jstr(v, "error", "code");
    if (!got || strcmp(got, code) != 0)
        fail_msg("error code %s, want %s: %s", got ? got : "(none)", code, r->body.data);
    assert_non_null(jstr(v, "error", "message"));
    yajl_tree_free(v);
}

static void submit(struct api_fixture *c, const char *spec, char id[STORE_JOB_ID_SIZE])
{
    struct tc_resp r = {0};
    int st = req(c, "POST", "/v1/jobs", spec, &r);
    if (st != 201)
        fail_msg("submit: %d %s", st, r.body.data ? r.body.data : "");
    yajl_val v = parse_json(&r);
    snprintf(id, STORE_JOB_ID_SIZE, "%s", jstr(v, "id", NULL));
    char loc[128];
    assert_non_null(tc_header(&r, "location", loc, sizeof(loc)));
    assert_non_null(strstr(loc, id));
    yajl_tree_free(v);
    tc_resp_clear(&r);
}

static enum job_state state_of(struct api_fixture *c, const char *id)
{
    struct store_job *j = NULL;
    struct al_error *err = NULL;
    assert_int_equal(store_job_get(c->store, id, &j, &err), 0);
    enum job_state s = j->state;
    store_job_free(j);
    return s;
}

static void wait_state(struct api_fixture *c, const char *id, enum job_state want)
{
    uint64_t end = al_now_mono_ms() + 5000;
    while (state_of(c, id) != want) {
        if (al_now_mono_ms() > end)
            fail_msg("job %s is %s, want %s", id, job_state_to_string(state_of(c, id)),
                     job_state_to_string(want));
        tc_run_for(&c->loop, 2);
    }
}

/* ------------------------------------------------------------ tests */

/* A source that did not start leaves the daemon serving, /healthz saying
 * "degraded" with the source and the reason (redacted). */
static void test_healthz_degraded(void **state)
{
    struct api_fixture *c = *state;
    struct tc_resp r = {0};
    assert_int_equal(req(c, "GET", "/healthz", NULL, &r), 200);
    yajl_val v = parse_json(&r);
    assert_string_equal(jstr(v, "status", NULL), "ok");
    const char *sf[] = {"sources_failed", NULL};
    yajl_val arr = yajl_tree_get(v, sf, yajl_t_array);
    assert_non_null(arr);
    assert_int_equal(arr->u.array.len, 0);
    yajl_tree_free(v);

    assert_int_equal(al_redact_add("hunter2-token-value"), 0);
    assert_int_equal(api_source_failed(c->api, "queue",
                                       "token_file /etc/q is readable by everyone; chmod o-r it "
                                       "first (hunter2-token-value)"),
                     0);
    al_redact_remove("hunter2-token-value");
    assert_int_equal(req(c, "GET", "/healthz", NULL, &r), 200);
    v = parse_json(&r);
    assert_string_equal(jstr(v, "status", NULL), "degraded");
    arr = yajl_tree_get(v, sf, yajl_t_array);
    assert_non_null(arr);
    assert_int_equal(arr->u.array.len, 1);
    assert_string_equal(jstr(arr->u.array.values[0], "name", NULL), "queue");
    assert_string_equal(jstr(arr->u.array.values[0], "reason", NULL),
                        "token_file /etc/q is readable by everyone; chmod o-r it first (***)");
    yajl_tree_free(v);
    tc_resp_clear(&r);
}

static void test_routing(void **state)
{
    struct api_fixture *c = *state;
    struct tc_resp r = {0};
    assert_int_equal(req(c, "GET", "/healthz", NULL, &r), 200);
    yajl_val v = parse_json(&r);
    assert_string_equal(jstr(v, "status", NULL), "ok");
    assert_int_equal(jint(v, "backends_healthy", NULL), 1);
    yajl_tree_free(v);
    char h[128];
    assert_string_equal(tc_header(&r, "content-type", h, sizeof(h)), "application/json");

    assert_int_equal(req(c, "GET", "/v1/nothing", NULL, &r), 404);
    error_code_is(&r, "not_found");
    assert_int_equal(req(c, "DELETE", "/v1/jobs", NULL, &r), 405);
    error_code_is(&r, "method_not_allowed");
    assert_non_null(tc_header(&r, "allow", h, sizeof(h)));
    assert_non_null(strstr(h, "GET"));
    assert_int_equal(req(c, "GET", "/v1/jobs/nope", NULL, &r), 400);
    error_code_is(&r, "bad_request");
    assert_int_equal(req(c, "GET", "/v1/jobs/j0000000000000000000a", NULL, &r), 404);
    error_code_is(&r, "not_found");
    assert_int_equal(req(c, "HEAD", "/healthz", NULL, &r), 405);
    assert_int_equal(r.body.len, 0);

    assert_int_equal(req(c, "GET", "/", NULL, &r), 200);
    assert_non_null(strstr(r.body.data, "<title>agentlab</title>"));
    assert_string_equal(tc_header(&r, "content-type", h, sizeof(h)), "text/html; charset=utf-8");

    const char *gets[] = {"/v1/pools", "/v1/images", "/v1/vms", "/v1/status", "/v1/jobs"};
    for (size_t i = 0; i < ARRAY_SIZE(gets); i++) {
        assert_int_equal(req(c, "GET", gets[i], NULL, &r), 200);
        yajl_tree_free(parse_json(&r));
    }
    assert_int_equal(req(c, "GET", "/v1/images", NULL, &r), 200);
    assert_non_null(strstr(r.body.data, "debian-12"));
    assert_int_equal(req(c, "POST", "/v1/gc", NULL, &r), 200);
    v = parse_json(&r);
    assert_int_equal(jint(v, "errors", NULL), 0);
    yajl_tree_free(v);
    tc_resp_clear(&r);
}

/* GET /v1/hosts on a backend with no host_info (the fake): reachable is
 * its health, capacity and use are the backend's, a libvirt-typed host's
 * images are the catalogue's. */
static void test_hosts(void **state)
{
    struct api_fixture *c = *state;
    char id[STORE_JOB_ID_SIZE];
    submit(c, "{\"command\":[\"x\"],\"env\":{\"FAKE\":\"hang\"}}", id);
    wait_state(c, id, JOB_STATE_RUNNING);
    struct tc_resp r = {0};
    assert_int_equal(req(c, "GET", "/v1/hosts", NULL, &r), 200);
    yajl_val v = parse_json(&r);
    const char *hp[] = {"hosts", NULL};
    yajl_val hosts = yajl_tree_get(v, hp, yajl_t_array);
    assert_non_null(hosts);
    assert_int_equal(hosts->u.array.len, 1);
    yajl_val h = hosts->u.array.values[0];
    assert_string_equal(jstr(h, "name", NULL), "local");
    assert_string_equal(jstr(h, "type", NULL), "libvirt");
    const char *reach[] = {"reachable", NULL};
    assert_true(YAJL_IS_TRUE(yajl_tree_get(h, reach, yajl_t_any)));
    assert_null(jstr(h, "uri", NULL)); /* the fake knows no host */
    assert_null(jstr(h, "error", NULL));
    assert_int_equal(jint(h, "max_vms", NULL), 3);
    assert_int_equal(jint(h, "used_vms", NULL), 1);
    assert_string_equal(jstr(h, "images_source", NULL), "local files");
    const char *ip[] = {"images", NULL};
    yajl_val images = yajl_tree_get(h, ip, yajl_t_array);
    assert_non_null(images);
    assert_int_equal(images->u.array.len, 1);
    assert_string_equal(jstr(images->u.array.values[0], "name", NULL), "debian-12");
    assert_non_null(jstr(images->u.array.values[0], "sha256", NULL));
    yajl_tree_free(v);
    char path[128];
    snprintf(path, sizeof(path), "/v1/jobs/%s/cancel", id);
    assert_int_equal(req(c, "POST", path, NULL, &r), 202);
    wait_state(c, id, JOB_STATE_CANCELED);
    tc_resp_clear(&r);
}

static void test_submit_show(void **state)
{
    struct api_fixture *c = *state;
    char id[STORE_JOB_ID_SIZE];
    submit(c,
           "{\"name\":\"show-me\",\"command\":[\"true\"],\"labels\":[\"x\"],"
           "\"secret_env\":{\"API_FIXTURE_TOKEN\":\"super-secret-value-42\"}}",
           id);
    wait_state(c, id, JOB_STATE_SUCCEEDED);
    struct tc_resp r = {0};
    char path[128];
    snprintf(path, sizeof(path), "/v1/jobs/%s", id);
    assert_int_equal(req(c, "GET", path, NULL, &r), 200);
    assert_null(strstr(r.body.data, "super-secret-value-42"));
    yajl_val v = parse_json(&r);
    assert_string_equal(jstr(v, "job", "state"), "SUCCEEDED");
    assert_string_equal(jstr(v, "job", "name"), "show-me");
    assert_int_equal(jint(v, "job", "exit_code"), 0);
    const char *src[] = {"job", "source", "type", NULL};
    assert_string_equal(YAJL_GET_STRING(yajl_tree_get(v, src, yajl_t_string)), "api");
    /* routed by the one rule: no pool needs label x, so the default catch-all */
    assert_string_equal(jstr(v, "job", "pool"), "default");
    assert_string_equal(jstr(v, "job", "pool_reason"), "default pool");
    const char *att[] = {"attempts", NULL};
    yajl_val a = yajl_tree_get(v, att, yajl_t_array);
    assert_non_null(a);
    assert_int_equal(a->u.array.len, 1);
    const char *spec[] = {"job", "spec", "secret_env_names", NULL};
    assert_non_null(yajl_tree_get(v, spec, yajl_t_array));
    yajl_tree_free(v);
    tc_resp_clear(&r);
}

static void test_submit_errors(void **state)
{
    struct api_fixture *c = *state;
    struct tc_resp r = {0};
    assert_int_equal(req(c, "POST", "/v1/jobs", "{\"command\":", &r), 400);
    error_code_is(&r, "invalid_job");
    assert_int_equal(req(c, "POST", "/v1/jobs", "{\"command\":[\"x\"],\"bogus\":1}", &r), 400);
    assert_non_null(strstr(r.body.data, "bogus"));
    assert_int_equal(req(c, "POST", "/v1/jobs", "{\"command\":[\"x\"],\"image\":\"nope\"}", &r),
                     400);
    error_code_is(&r, "invalid_job");
    /* a pool nobody configured: no_pool, naming the pools there are */
    assert_int_equal(req(c, "POST", "/v1/jobs", "{\"command\":[\"x\"],\"pool\":\"nope\"}", &r),
                     400);
    error_code_is(&r, "no_pool");
    assert_non_null(strstr(r.body.data, "no pool named \\\"nope\\\" (pools: default)"));
    assert_int_equal(req(c, "POST", "/v1/jobs",
                         "{\"command\":[\"x\"],\"source\":{\"type\":\"github\"}}", &r),
                     400);
    assert_int_equal(tc_request(&c->loop, c->sock, 0, "POST", "/v1/jobs",
                                "Content-Type: text/plain\r\n", "{}", &r),
                     415);
    error_code_is(&r, "unsupported_media_type");
    assert_int_equal(req(c, "POST", "/v1/jobs?workdir=../../etc", "{\"command\":[\"x\"]}", &r),
                     400);
    assert_int_equal(req(c, "POST", "/v1/jobs?workdir=u0123456789abcdef0123456789abcdef",
                         "{\"command\":[\"x\"]}", &r),
                     404);
    /* one byte over the spec limit is refused from Content-Length alone */
    char hdr[128];
    snprintf(hdr, sizeof(hdr), "POST /v1/jobs HTTP/1.1\r\nContent-Length: %u\r\n\r\n",
             JOB_SPEC_MAX_BYTES + 1);
    struct tc_conn conn;
    assert_int_equal(tc_connect(&conn, &c->loop, c->sock, 0), 0);
    tc_begin(&conn, &r);
    assert_int_equal(tc_send(&conn, hdr, strlen(hdr)), 0);
    assert_true(tc_wait(&conn, NULL, 3000));
    assert_int_equal(r.status, 413);
    error_code_is(&r, "payload_too_large");
    tc_close(&conn);
    tc_resp_clear(&r);
}

static void test_list(void **state)
{
    struct api_fixture *c = *state;
    char ids[7][STORE_JOB_ID_SIZE];
    for (int i = 0; i < 7; i++) {
        char spec[256];
        snprintf(spec, sizeof(spec),
                 "{\"name\":\"l%d\",\"command\":[\"x\"],%s\"env\":{\"FAKE\":\"%s\"}}", i,
                 i % 2 ? "\"labels\":[\"odd\"]," : "", i < 2 ? "fail:3" : "ok");
        submit(c, spec, ids[i]);
    }
    for (int i = 0; i < 7; i++)
        wait_state(c, ids[i], i < 2 ? JOB_STATE_FAILED : JOB_STATE_SUCCEEDED);

    /* pages of 3 cover all 7, newest first, each once */
    char cursor[64] = "";
    int seen = 0;
    struct tc_resp r = {0};
    for (int page = 0; page < 4; page++) {
        char path[128];
        snprintf(path, sizeof(path), "/v1/jobs?limit=3%s%s", cursor[0] ? "&cursor=" : "", cursor);
        assert_int_equal(req(c, "GET", path, NULL, &r), 200);
        yajl_val v = parse_json(&r);
        const char *jobs[] = {"jobs", NULL};
        yajl_val arr = yajl_tree_get(v, jobs, yajl_t_array);
        for (size_t k = 0; k < arr->u.array.len; k++) {
            const char *idp[] = {"id", NULL};
            const char *id =
                    YAJL_GET_STRING(yajl_tree_get(arr->u.array.values[k], idp, yajl_t_string));
            assert_string_equal(id, ids[6 - seen]);
            seen++;
        }
        const char *next = jstr(v, "next_cursor", NULL);
        snprintf(cursor, sizeof(cursor), "%s", next ? next : "");
        yajl_tree_free(v);
        if (!cursor[0])
            break;
    }
    assert_int_equal(seen, 7);

    assert_int_equal(req(c, "GET", "/v1/jobs?state=failed", NULL, &r), 200);
    yajl_val v = parse_json(&r);
    const char *jobs[] = {"jobs", NULL};
    assert_int_equal(yajl_tree_get(v, jobs, yajl_t_array)->u.array.len, 2);
    yajl_tree_free(v);
    assert_int_equal(req(c, "GET", "/v1/jobs?label=odd&order=oldest", NULL, &r), 200);
    v = parse_json(&r);
    yajl_val arr = yajl_tree_get(v, jobs, yajl_t_array);
    assert_int_equal(arr->u.array.len, 3);
    const char *idp[] = {"id", NULL};
    assert_string_equal(YAJL_GET_STRING(yajl_tree_get(arr->u.array.values[0], idp, yajl_t_string)),
                        ids[1]);
    yajl_tree_free(v);
    assert_int_equal(req(c, "GET", "/v1/jobs?source=api", NULL, &r), 200);
    v = parse_json(&r);
    assert_int_equal(yajl_tree_get(v, jobs, yajl_t_array)->u.array.len, 7);
    yajl_tree_free(v);

    const char *bad[] = {"/v1/jobs?state=sleeping", "/v1/jobs?limit=0",    "/v1/jobs?limit=5000",
                         "/v1/jobs?limit=-1",       "/v1/jobs?source=fax", "/v1/jobs?cursor=abc",
                         "/v1/jobs?order=random"};
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        if (req(c, "GET", bad[i], NULL, &r) != 400)
            fail_msg("%s: %d", bad[i], r.status);
        error_code_is(&r, "bad_request");
    }
    tc_resp_clear(&r);
}

static void test_cancel(void **state)
{
    struct api_fixture *c = *state;
    char id[STORE_JOB_ID_SIZE];
    submit(c, "{\"command\":[\"x\"],\"env\":{\"FAKE\":\"hang\"}}", id);
    wait_state(c, id, JOB_STATE_RUNNING);
    char path[128];
    snprintf(path, sizeof(path), "/v1/jobs/%s/cancel", id);
    struct tc_resp r = {0};
    assert_int_equal(req(c, "POST", path, NULL, &r), 202);
    wait_state(c, id, JOB_STATE_CANCELED);
    assert_int_equal(req(c, "POST", path, NULL, &r), 409);
    error_code_is(&r, "already_finished");
    assert_int_equal(req(c, "POST", "/v1/jobs/j0000000000000000000b/cancel", NULL, &r), 404);
    tc_resp_clear(&r);
}

static void test_logs_follow(void **state)
{
    struct api_fixture *c = *state;
    char id[STORE_JOB_ID_SIZE];
    submit(c, "{\"command\":[\"x\"],\"env\":{\"FAKE\":\"stream:6\",\"FAKE_MS\":\"80\"}}", id);
    char path[128];
    snprintf(path, sizeof(path), "GET /v1/jobs/%s/logs?follow=1 HTTP/1.1\r\n\r\n", id);
    struct tc_conn conn;
    struct tc_resp r = {0};
    assert_int_equal(tc_connect(&conn, &c->loop, c->sock, 0), 0);
    tc_begin(&conn, &r);
    assert_int_equal(tc_send(&conn, path, strlen(path)), 0);
    /* the first lines arrive while the job still runs */
    assert_true(tc_wait(&conn, "line 2\n", 5000));
    assert_true(r.chunked);
    assert_false(r.complete);
    assert_false(job_state_is_terminal(state_of(c, id)));
    assert_true(tc_wait(&conn, NULL, 5000));
    assert_true(r.complete);
    assert_string_equal(r.body.data, "line 1\nline 2\nline 3\nline 4\nline 5\nline 6\n");
    tc_close(&conn);

    /* afterwards: the whole log, or from an offset */
    snprintf(path, sizeof(path), "/v1/jobs/%s/logs?offset=7", id);
    assert_int_equal(req(c, "GET", path, NULL, &r), 200);
    assert_string_equal(r.body.data, "line 2\nline 3\nline 4\nline 5\nline 6\n");
    char h[64];
    assert_string_equal(tc_header(&r, "x-agentlab-job-state", h, sizeof(h)), "terminal");
    snprintf(path, sizeof(path), "/v1/jobs/%s/logs?follow=1&offset=1000", id);
    assert_int_equal(req(c, "GET", path, NULL, &r), 200);
    assert_int_equal(r.body.len, 0);
    snprintf(path, sizeof(path), "/v1/jobs/%s/logs?offset=x", id);
    assert_int_equal(req(c, "GET", path, NULL, &r), 400);
    tc_resp_clear(&r);
}

static long long last_seq(struct api_fixture *c)
{
    struct tc_resp r = {0};
    assert_int_equal(req(c, "GET", "/v1/events?limit=1000", NULL, &r), 200);
    yajl_val v = parse_json(&r);
    long long s = jint(v, "next_after", NULL);
    yajl_tree_free(v);
    tc_resp_clear(&r);
    return s;
}

static void test_events(void **state)
{
    struct api_fixture *c = *state;
    long long after = last_seq(c);
    /* a long-poll waits, and wakes up when a job is submitted */
    char target[128];
    snprintf(target, sizeof(target), "GET /v1/events?after=%lld&wait=10 HTTP/1.1\r\n\r\n", after);
    struct tc_conn conn;
    struct tc_resp r = {0};
    assert_int_equal(tc_connect(&conn, &c->loop, c->sock, 0), 0);
    tc_begin(&conn, &r);
    assert_int_equal(tc_send(&conn, target, strlen(target)), 0);
    assert_false(tc_wait(&conn, NULL, 200));
    char id[STORE_JOB_ID_SIZE];
    uint64_t t0 = al_now_mono_ms();
    submit(c, "{\"command\":[\"x\"]}", id);
    assert_true(tc_wait(&conn, NULL, 3000));
    assert_true(al_now_mono_ms() - t0 < 3000);
    assert_int_equal(r.status, 200);
    yajl_val v = parse_json(&r);
    const char *evp[] = {"events", NULL};
    yajl_val evs = yajl_tree_get(v, evp, yajl_t_array);
    assert_true(evs->u.array.len >= 1);
    const char *jp[] = {"job", NULL};
    assert_string_equal(YAJL_GET_STRING(yajl_tree_get(evs->u.array.values[0], jp, yajl_t_string)),
                        id);
    assert_true(jint(v, "next_after", NULL) > after);
    yajl_tree_free(v);
    tc_close(&conn);
    wait_state(c, id, JOB_STATE_SUCCEEDED);

    /* a job's event stream replays and ends when the job is finished */
    snprintf(target, sizeof(target), "/v1/jobs/%s/events?follow=1", id);
    assert_int_equal(req(c, "GET", target, NULL, &r), 200);
    assert_true(r.chunked);
    assert_non_null(strstr(r.body.data, "\"to\":\"QUEUED\""));
    assert_non_null(strstr(r.body.data, "\"to\":\"SUCCEEDED\""));

    /* a live stream of every job */
    char first[STORE_JOB_ID_SIZE];
    memcpy(first, id, sizeof(first));
    assert_int_equal(tc_connect(&conn, &c->loop, c->sock, 0), 0);
    tc_begin(&conn, &r);
    const char *all = "GET /v1/events?follow=1 HTTP/1.1\r\n\r\n";
    assert_int_equal(tc_send(&conn, all, strlen(all)), 0);
    tc_run_for(&c->loop, 50);
    submit(c, "{\"command\":[\"x\"]}", id);
    char needle[64];
    snprintf(needle, sizeof(needle), "\"job\":\"%s\",\"from\":\"RUNNING\",\"to\":\"SUCCEEDED\"",
             id);
    assert_true(tc_wait(&conn, needle, 5000));
    /* nothing from before the stream started */
    assert_null(strstr(r.body.data, first));
    tc_close(&conn);

    /* bad parameters */
    assert_int_equal(req(c, "GET", "/v1/events?wait=100000", NULL, &r), 400);
    assert_int_equal(req(c, "GET", "/v1/events?after=x", NULL, &r), 400);
    tc_resp_clear(&r);
}

static void write_file(const char *path, const char *text)
{
    struct al_error *err = NULL;
    assert_int_equal(al_write_file_atomic(path, text, strlen(text), 0644, &err), 0);
}

static void test_artifacts(void **state)
{
    struct api_fixture *c = *state;
    char id[STORE_JOB_ID_SIZE];
    submit(c, "{\"command\":[\"x\"]}", id);
    wait_state(c, id, JOB_STATE_SUCCEEDED);
    char *dir = engine_job_dir(c->engine, id);
    char path[512];
    struct al_error *err = NULL;
    snprintf(path, sizeof(path), "%s/artifacts/out", dir);
    assert_int_equal(al_mkdir_p(path, 0755, &err), 0);
    snprintf(path, sizeof(path), "%s/artifacts/out/report.txt", dir);
    write_file(path, "all good\n");
    snprintf(path, sizeof(path), "%s/artifacts/top.txt", dir);
    write_file(path, "top\n");
    snprintf(path, sizeof(path), "%s/artifacts/link", dir);
    assert_int_equal(symlink("/etc/passwd", path), 0);
    snprintf(path, sizeof(path), "%s/artifacts/dirlink", dir);
    assert_int_equal(symlink("/etc", path), 0);
    snprintf(path, sizeof(path), "%s/secret.txt", dir);
    write_file(path, "outside the artifacts dir\n");

    struct tc_resp r = {0};
    snprintf(path, sizeof(path), "/v1/jobs/%s/artifacts", id);
    assert_int_equal(req(c, "GET", path, NULL, &r), 200);
    assert_non_null(strstr(r.body.data, "\"path\":\"out/report.txt\",\"size\":9"));
    assert_non_null(strstr(r.body.data, "\"path\":\"top.txt\""));
    assert_null(strstr(r.body.data, "link"));
    snprintf(path, sizeof(path), "/v1/jobs/%s/artifacts/out/report.txt", id);
    assert_int_equal(req(c, "GET", path, NULL, &r), 200);
    assert_string_equal(r.body.data, "all good\n");
    const char *bad404[] = {"link", "dirlink/passwd", "out", "missing", "out/missing"};
    for (size_t i = 0; i < ARRAY_SIZE(bad404); i++) {
        snprintf(path, sizeof(path), "/v1/jobs/%s/artifacts/%s", id, bad404[i]);
        if (req(c, "GET", path, NULL, &r) != 404)
            fail_msg("%s: %d %s", bad404[i], r.status, r.body.data ? r.body.data : "");
    }
    const char *bad400[] = {"../secret.txt", "%2e%2e/secret.txt", "out/../../secret.txt",
                            "out/%2e%2e/%2e%2e/secret.txt", "./top.txt"};
    for (size_t i = 0; i < ARRAY_SIZE(bad400); i++) {
        snprintf(path, sizeof(path), "/v1/jobs/%s/artifacts/%s", id, bad400[i]);
        if (req(c, "GET", path, NULL, &r) != 400)
            fail_msg("%s: %d %s", bad400[i], r.status, r.body.data ? r.body.data : "");
        assert_null(strstr(r.body.data, "outside"));
    }
    free(dir);
    tc_resp_clear(&r);
}

static void test_tcp_auth(void **state)
{
    struct api_fixture *c = *state;
    struct tc_resp r = {0};
    char h[128];
    assert_int_equal(tc_request(&c->loop, NULL, c->port, "GET", "/v1/jobs", NULL, NULL, &r), 401);
    error_code_is(&r, "unauthorized");
    assert_non_null(tc_header(&r, "www-authenticate", h, sizeof(h)));
    assert_int_equal(tc_request(&c->loop, NULL, c->port, "GET", "/v1/jobs",
                                "Authorization: Bearer wrong-token-0123456789abc\r\n", NULL, &r),
                     401);
    assert_int_equal(tc_request(&c->loop, NULL, c->port, "GET", "/v1/jobs",
                                "Authorization: Basic " API_FIXTURE_TOKEN "\r\n", NULL, &r),
                     401);
    assert_int_equal(tc_request(&c->loop, NULL, c->port, "GET", "/v1/jobs",
                                "Authorization: Bearer " API_FIXTURE_TOKEN "x\r\n", NULL, &r),
                     401);
    assert_int_equal(tc_request(&c->loop, NULL, c->port, "GET", "/metrics", NULL, NULL, &r), 401);
    assert_int_equal(tc_request(&c->loop, NULL, c->port, "GET", "/v1/jobs",
                                "Authorization: Bearer " API_FIXTURE_TOKEN "\r\n", NULL, &r),
                     200);
    assert_int_equal(tc_request(&c->loop, NULL, c->port, "GET", "/v1/jobs",
                                "authorization: bearer  " API_FIXTURE_TOKEN " \r\n", NULL, &r),
                     200);
    /* the page shell and the health check need no token */
    assert_int_equal(tc_request(&c->loop, NULL, c->port, "GET", "/", NULL, NULL, &r), 200);
    assert_int_equal(tc_request(&c->loop, NULL, c->port, "GET", "/healthz", NULL, NULL, &r), 200);
    /* the unix socket needs none at all */
    assert_int_equal(req(c, "GET", "/metrics", NULL, &r), 200);
    tc_resp_clear(&r);
}

static void test_keepalive_pipelining(void **state)
{
    struct api_fixture *c = *state;
    struct tc_conn conn;
    struct tc_resp r = {0};
    assert_int_equal(tc_connect(&conn, &c->loop, c->sock, 0), 0);
    const char *three = "GET /healthz HTTP/1.1\r\n\r\nGET /v1/nothing HTTP/1.1\r\n\r\n"
                        "GET /v1/pools HTTP/1.1\r\n\r\n";
    assert_int_equal(tc_send(&conn, three, strlen(three)), 0);
    int want[] = {200, 404, 200};
    for (int i = 0; i < 3; i++) {
        tc_begin(&conn, &r);
        assert_true(tc_wait(&conn, NULL, 3000));
        assert_int_equal(r.status, want[i]);
        char h[32];
        assert_string_equal(tc_header(&r, "connection", h, sizeof(h)), "keep-alive");
    }
    /* HTTP/1.0 closes after the response */
    const char *old = "GET /healthz HTTP/1.0\r\n\r\n";
    assert_int_equal(tc_send(&conn, old, strlen(old)), 0);
    tc_begin(&conn, &r);
    assert_true(tc_wait(&conn, NULL, 3000));
    assert_int_equal(r.status, 200);
    tc_begin(&conn, &r);
    assert_false(tc_wait(&conn, NULL, 1000));
    assert_true(r.closed);
    tc_close(&conn);
    tc_resp_clear(&r);
}

static void test_limits(void **state)
{
    struct api_fixture *c = *state;
    struct tc_resp r = {0};
    /* slowloris: headers that never finish get a 408 and a close */
    struct tc_conn slow;
    assert_int_equal(tc_connect(&slow, &c->loop, c->sock, 0), 0);
    tc_begin(&slow, &r);
    assert_int_equal(tc_send(&slow, "GET /healthz HTTP/1.1\r\nX-Slow: ", 31), 0);
    for (int i = 0; i < 6; i++) {
        tc_run_for(&c->loop, 100);
        tc_send(&slow, "a", 1);
    }
    assert_true(tc_wait(&slow, NULL, 2000));
    assert_int_equal(r.status, 408);
    error_code_is(&r, "request_timeout");
    tc_begin(&slow, &r);
    assert_false(tc_wait(&slow, NULL, 1000));
    assert_true(r.closed);
    tc_close(&slow);

    /* the connection limit: the one over it gets a 503 */
    struct tc_conn conns[12];
    for (int i = 0; i < 12; i++)
        assert_int_equal(tc_connect(&conns[i], &c->loop, c->sock, 0), 0);
    tc_run_for(&c->loop, 50);
    struct api_server_stats st;
    api_server_stats(api_get_server(c->api), &st);
    assert_int_equal(st.connections, 12);
    assert_int_equal(req(c, "GET", "/healthz", NULL, &r), 503);
    error_code_is(&r, "too_many_connections");
    for (int i = 0; i < 12; i++)
        tc_close(&conns[i]);
    tc_run_for(&c->loop, 50);
    assert_int_equal(req(c, "GET", "/healthz", NULL, &r), 200);

    /* idle keep-alive connections are closed */
    struct tc_conn idle;
    assert_int_equal(tc_connect(&idle, &c->loop, c->sock, 0), 0);
    tc_begin(&idle, &r);
    assert_false(tc_wait(&idle, NULL, 2600));
    assert_true(r.closed);
    tc_close(&idle);
    api_server_stats(api_get_server(c->api), &st);
    assert_true(st.timeouts >= 2);
    assert_true(st.connections_rejected >= 1);
    tc_resp_clear(&r);
}

/* api_max_jobs: a submission over it gets 429; the hit is counted and shown
 * in /metrics; room again once a job ends. */
static void test_api_max_jobs(void **state)
{
    struct api_fixture *c = *state;
    c->cfg->agent.api_max_jobs = 1;
    uint64_t before = limits_hits(AL_LIMIT_API_JOBS);
    char id[STORE_JOB_ID_SIZE];
    submit(c, "{\"command\":[\"x\"],\"env\":{\"FAKE\":\"hang\"}}", id);
    wait_state(c, id, JOB_STATE_RUNNING);
    struct tc_resp r = {0};
    assert_int_equal(req(c, "POST", "/v1/jobs", "{\"command\":[\"x\"]}", &r), 429);
    error_code_is(&r, "too_many_jobs");
    assert_int_equal(limits_hits(AL_LIMIT_API_JOBS), before + 1);
    assert_int_equal(req(c, "GET", "/metrics", NULL, &r), 200);
    char line[96];
    snprintf(line, sizeof(line), "agentlab_limit_hits_total{limit=\"api_jobs\"} %" PRIu64 "\n",
             before + 1);
    assert_non_null(strstr(r.body.data, line));
    char path[128];
    snprintf(path, sizeof(path), "/v1/jobs/%s/cancel", id);
    assert_int_equal(req(c, "POST", path, NULL, &r), 202);
    wait_state(c, id, JOB_STATE_CANCELED);
    char id2[STORE_JOB_ID_SIZE];
    submit(c, "{\"command\":[\"x\"]}", id2);
    wait_state(c, id2, JOB_STATE_SUCCEEDED);
    tc_resp_clear(&r);
}

static void test_metrics(void **state)
{
    struct api_fixture *c = *state;
    char id[STORE_JOB_ID_SIZE];
    submit(c, "{\"command\":[\"x\"]}", id);
    wait_state(c, id, JOB_STATE_SUCCEEDED);
    submit(c, "{\"command\":[\"x\"],\"env\":{\"FAKE\":\"error\"}}", id);
    wait_state(c, id, JOB_STATE_ERROR);
    tc_run_for(&c->loop, 20);
    struct tc_resp r = {0};
    assert_int_equal(req(c, "GET", "/metrics", NULL, &r), 200);
    char h[128];
    assert_non_null(strstr(tc_header(&r, "content-type", h, sizeof(h)), "version=0.0.4"));
    const char *want[] = {
            "agentlab_jobs_submitted_total{source=\"api\"} 2\n",
            "agentlab_jobs_finished_total{state=\"SUCCEEDED\",source=\"api\"} 1\n",
            "agentlab_jobs_finished_total{state=\"ERROR\",source=\"api\"} 1\n",
            "agentlab_job_phase_duration_seconds_count{phase=\"run\"} 2\n",
            "agentlab_job_queue_wait_seconds_count 2\n",
            "agentlab_backend_vms_max{backend=\"local\",type=\"libvirt\"} 3\n",
            "agentlab_backend_up{backend=\"local\",type=\"libvirt\"} 1\n",
            "agentlab_errors_total{kind=\"job_error\"} 1\n",
            "agentlab_errors_total{kind=\"attempt_error\"} 1\n",
            "agentlab_jobs{state=\"QUEUED\",source=\"api\"} 0\n",
            "agentlab_reconcile_actions_total{action=\"vms_destroyed\"} 0\n",
            "# TYPE agentlab_job_phase_duration_seconds histogram\n",
    };
    for (size_t i = 0; i < ARRAY_SIZE(want); i++) {
        if (!strstr(r.body.data, want[i]))
            fail_msg("metrics lack %s", want[i]);
    }
    tc_resp_clear(&r);
}

static void test_upload(void **state)
{
    struct api_fixture *c = *state;
    struct tc_resp r = {0};
    char body[5000];
    memset(body, 'T', sizeof(body) - 1);
    body[sizeof(body) - 1] = '\0';
    assert_int_equal(tc_request(&c->loop, c->sock, 0, "PUT", "/v1/uploads",
                                "Content-Type: application/x-tar\r\nExpect: 100-continue\r\n", body,
                                &r),
                     201);
    yajl_val v = parse_json(&r);
    char up[64];
    snprintf(up, sizeof(up), "%s", jstr(v, "upload", NULL));
    assert_int_equal(jint(v, "bytes", NULL), 4999);
    yajl_tree_free(v);
    char target[128];
    snprintf(target, sizeof(target), "/v1/jobs?workdir=%s", up);
    assert_int_equal(req(c, "POST", target, "{\"command\":[\"x\"]}", &r), 201);
    v = parse_json(&r);
    char id[STORE_JOB_ID_SIZE];
    snprintf(id, sizeof(id), "%s", jstr(v, "id", NULL));
    yajl_tree_free(v);
    char *dir = engine_job_dir(c->engine, id);
    char path[512];
    snprintf(path, sizeof(path), "%s/workdir.tar", dir);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, 4999);
    free(dir);
    /* the upload was used up */
    assert_int_equal(req(c, "POST", target, "{\"command\":[\"x\"]}", &r), 404);
    wait_state(c, id, JOB_STATE_SUCCEEDED);
    tc_resp_clear(&r);
}

/* Stopping the API with a follower and a long-poll open ends both cleanly
 * (teardown checks that every handle is closed). */
static void test_stop_with_streams(void **state)
{
    struct api_fixture *c = *state;
    char id[STORE_JOB_ID_SIZE];
    submit(c, "{\"command\":[\"x\"],\"env\":{\"FAKE\":\"hang\"}}", id);
    wait_state(c, id, JOB_STATE_RUNNING);
    struct tc_conn a, b;
    struct tc_resp ra = {0}, rb = {0};
    char target[128];
    assert_int_equal(tc_connect(&a, &c->loop, c->sock, 0), 0);
    tc_begin(&a, &ra);
    snprintf(target, sizeof(target), "GET /v1/jobs/%s/logs?follow=1 HTTP/1.1\r\n\r\n", id);
    assert_int_equal(tc_send(&a, target, strlen(target)), 0);
    assert_true(tc_wait(&a, "hello\n", 3000));
    assert_int_equal(tc_connect(&b, &c->loop, c->sock, 0), 0);
    tc_begin(&b, &rb);
    const char *poll = "GET /v1/events?after=999999&wait=30 HTTP/1.1\r\n\r\n";
    assert_int_equal(tc_send(&b, poll, strlen(poll)), 0);
    tc_run_for(&c->loop, 50);
    c->stopped = false;
    api_stop(c->api, api_fixture_on_stopped, c);
    assert_true(test_run_until(&c->loop, &c->stopped, 3000));
    tc_wait(&a, NULL, 500);
    tc_wait(&b, NULL, 500);
    assert_true(ra.closed);
    assert_true(rb.closed);
    tc_close(&a);
    tc_close(&b);
    tc_resp_clear(&ra);
    tc_resp_clear(&rb);
    /* teardown expects an API to stop: start a fresh one */
    struct al_error *err = NULL;
    struct api_params ap = {.loop = &c->loop,
                            .cfg = c->cfg,
                            .engine = c->engine,
                            .unix_path = c->sock,
                            .limits = &api_fixture_limits};
    assert_int_equal(api_new(&ap, &c->api, &err), 0);
    assert_int_equal(api_start(c->api, NULL, &err), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_routing, api_fixture_setup, api_fixture_teardown),
            cmocka_unit_test_setup_teardown(test_healthz_degraded, api_fixture_setup,
                                            api_fixture_teardown),
            cmocka_unit_test_setup_teardown(test_submit_show, api_fixture_setup,
                                            api_fixture_teardown),
            cmocka_unit_test_setup_teardown(test_submit_errors, api_fixture_setup,
                                            api_fixture_teardown),
            cmocka_unit_test_setup_teardown(test_list, api_fixture_setup, api_fixture_teardown),
            cmocka_unit_test_setup_teardown(test_hosts, api_fixture_setup, api_fixture_teardown),
            cmocka_unit_test_setup_teardown(test_cancel, api_fixture_setup, api_fixture_teardown),
            cmocka_unit_test_setup_teardown(test_logs_follow, api_fixture_setup,
                                            api_fixture_teardown),
            cmocka_unit_test_setup_teardown(test_events, api_fixture_setup, api_fixture_teardown),
            cmocka_unit_test_setup_teardown(test_artifacts, api_fixture_setup,
                                            api_fixture_teardown),
            cmocka_unit_test_setup_teardown(test_tcp_auth, api_fixture_setup, api_fixture_teardown),
            cmocka_unit_test_setup_teardown(test_keepalive_pipelining, api_fixture_setup,
                                            api_fixture_teardown),
            cmocka_unit_test_setup_teardown(test_limits, api_fixture_setup, api_fixture_teardown),
            cmocka_unit_test_setup_teardown(test_metrics, api_fixture_setup, api_fixture_teardown),
            cmocka_unit_test_setup_teardown(test_api_max_jobs, api_fixture_setup,
                                            api_fixture_teardown),
            cmocka_unit_test_setup_teardown(test_upload, api_fixture_setup, api_fixture_teardown),
            cmocka_unit_test_setup_teardown(test_stop_with_streams, api_fixture_setup,
                                            api_fixture_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
