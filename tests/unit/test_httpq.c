/* The HTTP queue source (runner/sources/httpq.c) against an in-process fake
 * queue on the loop's own HTTP server, with the real engine and store on the
 * simulated hypervisor: a job is claimed, acknowledged once durable, its
 * states reported and its result completed; a bad spec is REJECTED; server
 * errors back off and reports are retried in order; 410 withdraws a job. */
#include "test_util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yajl/yajl_tree.h>

#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/engine/config.h"
#include "runner/engine/engine.h"
#include "runner/engine/store.h"
#include "runner/loop/curl_uv.h"
#include "runner/loop/http_server.h"
#include "runner/sources/httpq.h"
#include "fake_backend.h"

#define QUEUE_TOKEN "queue-token-0123456789"
#define MAX_REPORTS 64
#define MAX_POLLS   64
#define MAX_SERVED  4

struct report {
    char qid[32];
    bool result;
    char state[32];
    char job[64];
    char reason[256];
    bool has_exit_code;
    long long exit_code;
};

struct fake_queue {
    struct api_server *srv;
    int port;
    /* GET /jobs/next: forced statuses first, then the bodies, then 204 */
    int forced[8];
    size_t n_forced;
    const char *bodies[MAX_SERVED];
    const char *header_ids[MAX_SERVED]; /* X-Job-Id of each body, or NULL */
    size_t n_bodies, served;
    uint64_t poll_ms[MAX_POLLS];
    unsigned polls;
    /* reports, in the order they arrived (answered 2xx or not) */
    struct report reports[MAX_REPORTS];
    size_t n_reports;
    int report_fail_once;    /* the first report of this kind is answered with it */
    bool report_fail_result; /* ... for /result (else /status) */
    int status_answer;       /* answer to every /status report (0 = 200) */
    unsigned unauthorized;
    bool stopped;
};

static void fake_request(struct api_req *r, void *data)
{
    struct fake_queue *f = data;
    const struct http_request *h = api_req_http(r);
    const char *auth = http_request_header(h, "Authorization");
    if (!auth || !streq(auth, "Bearer " QUEUE_TOKEN)) {
        f->unauthorized++;
        return api_reply(r, 401, NULL, NULL, NULL, 0);
    }
    if (h->method == HTTP_GET && streq(h->path, "/jobs/next")) {
        if (f->polls < MAX_POLLS)
            f->poll_ms[f->polls] = al_now_mono_ms();
        f->polls++;
        if (f->n_forced) {
            int st = f->forced[0];
            memmove(f->forced, f->forced + 1, --f->n_forced * sizeof(f->forced[0]));
            return api_reply(r, st, "text/plain", NULL, "no", 2);
        }
        if (f->served < f->n_bodies) {
            size_t i = f->served++;
            char extra[128] = "";
            if (f->header_ids[i])
                snprintf(extra, sizeof(extra), "X-Job-Id: %s\r\n", f->header_ids[i]);
            return api_reply(r, 200, "application/json", extra, f->bodies[i], strlen(f->bodies[i]));
        }
        return api_reply(r, 204, NULL, NULL, NULL, 0);
    }
    char qid[32], kind[16];
    int n = 0;
    if (h->method == HTTP_POST && sscanf(h->path, "/jobs/%31[^/]/%15[a-z]%n", qid, kind, &n) == 2 &&
        !h->path[n] && (streq(kind, "status") || streq(kind, "result")) &&
        f->n_reports < MAX_REPORTS) {
        struct report *rep = &f->reports[f->n_reports++];
        *rep = (struct report){.result = streq(kind, "result")};
        snprintf(rep->qid, sizeof(rep->qid), "%s", qid);
        char *text = strndup(h->body.data ? h->body.data : "", h->body.len);
        yajl_val doc = text ? yajl_tree_parse(text, NULL, 0) : NULL;
        free(text);
        assert_non_null(doc);
        const char *ps[] = {"state", NULL}, *pj[] = {"job", NULL}, *pr[] = {"reason", NULL},
                   *pc[] = {"exit_code", NULL};
        yajl_val v;
        if ((v = yajl_tree_get(doc, ps, yajl_t_string)))
            snprintf(rep->state, sizeof(rep->state), "%s", YAJL_GET_STRING(v));
        if ((v = yajl_tree_get(doc, pj, yajl_t_string)))
            snprintf(rep->job, sizeof(rep->job), "%s", YAJL_GET_STRING(v));
        if ((v = yajl_tree_get(doc, pr, yajl_t_string)))
            snprintf(rep->reason, sizeof(rep->reason), "%s", YAJL_GET_STRING(v));
        if ((v = yajl_tree_get(doc, pc, yajl_t_number))) {
            rep->has_exit_code = true;
            rep->exit_code = YAJL_GET_INTEGER(v);
        }
        yajl_tree_free(doc);
        if (f->report_fail_once && rep->result == f->report_fail_result) {
            int st = f->report_fail_once;
            f->report_fail_once = 0;
            return api_reply(r, st, "text/plain", NULL, "later", 5);
        }
        if (!rep->result && f->status_answer)
            return api_reply(r, f->status_answer, "text/plain", NULL, "gone", 4);
        return api_reply(r, 200, "application/json", NULL, "{}", 2);
    }
    api_reply(r, 404, NULL, NULL, NULL, 0);
}

static const struct api_server_handler fake_handler = {.request = fake_request};

/* ---- fixture ------------------------------------------------------------ */

struct fixture {
    uv_loop_t loop;
    char *dir;
    struct config *cfg;
    struct store *store;
    struct engine *engine;
    struct al_curl *curl;
    struct fake_queue fake;
    struct httpq *q;
    bool reconciled;
    bool stopped;
};

static void on_reconciled(const struct engine_reconcile_report *r, void *data)
{
    (void)r;
    ((struct fixture *)data)->reconciled = true;
}

static void on_stopped(void *data)
{
    ((struct fixture *)data)->stopped = true;
}

static void on_fake_stopped(void *data)
{
    ((struct fake_queue *)data)->stopped = true;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    uv_loop_init(&f->loop);
    f->dir = test_tmpdir("httpq");
    unsetenv("AGENTLAB_STATE_DIR");
    unsetenv("AGENTLAB_RUN_DIR");
    struct al_error *err = NULL;
    struct api_server_params sp = {.loop = &f->loop,
                                   .tcp_host = "127.0.0.1",
                                   .handler = &fake_handler,
                                   .handler_data = &f->fake};
    assert_int_equal(api_server_new(&sp, &f->fake.srv, &err), 0);
    assert_int_equal(api_server_start(f->fake.srv, &err), 0);
    f->fake.port = api_server_tcp_port(f->fake.srv);
    char token_file[512];
    snprintf(token_file, sizeof(token_file), "%s/queue.token", f->dir);
    FILE *tf = fopen(token_file, "we");
    assert_non_null(tf);
    fprintf(tf, "%s\n", QUEUE_TOKEN);
    fclose(tf);
    chmod(token_file, 0600);
    char conf[2048];
    snprintf(conf, sizeof(conf),
             "[agent]\nstate_dir = %s\nrun_dir = %s/run\nlog_level = error\nmax_attempts = 1\n"
             "[backend \"local\"]\nmax_vms = 3\n"
             "[source \"q\"]\ntype = http\nurl = http://127.0.0.1:%d/\ntoken_file = %s\n"
             "concurrent = 2\npoll_interval = 1s\n",
             f->dir, f->dir, f->fake.port, token_file);
    if (config_load_string(conf, strlen(conf), "test.conf", &f->cfg, &err) < 0)
        fail_msg("config: %s", al_error_message(err));
    fake_backend_write_image(f->dir, "debian-12");
    char *db = al_path_join(f->dir, "agentlab.db");
    assert_int_equal(store_open(db, NULL, &f->store, &err), 0);
    free(db);
    fake_backend_register();
    al_log_set_level(AL_LOG_ERROR);
    struct engine_params ep = {.loop = &f->loop,
                               .cfg = f->cfg,
                               .store = f->store,
                               .owner_id = "daemon:00000000000000000000000000000005"};
    assert_int_equal(engine_new(&ep, &f->engine, &err), 0);
    engine_start(f->engine, on_reconciled, f);
    assert_true(test_run_until(&f->loop, &f->reconciled, 5000));
    assert_int_equal(al_curl_new(&f->loop, &f->curl, &err), 0);
    *state = f;
    return 0;
}

static void start_queue(struct fixture *f)
{
    struct al_error *err = NULL;
    if (httpq_start(&f->loop, f->curl, f->engine, &f->cfg->sources[0], &f->q, &err) < 0)
        fail_msg("httpq_start: %s", al_error_message(err));
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    if (f->q) {
        f->stopped = false;
        httpq_stop(f->q, on_stopped, f);
        assert_true(test_run_until(&f->loop, &f->stopped, 5000));
    }
    al_curl_close(f->curl, NULL, NULL);
    f->stopped = false;
    engine_stop(f->engine, on_stopped, f);
    assert_true(test_run_until(&f->loop, &f->stopped, 5000));
    api_server_stop(f->fake.srv, on_fake_stopped, &f->fake);
    assert_true(test_run_until(&f->loop, &f->fake.stopped, 5000));
    test_loop_close(&f->loop);
    store_close(f->store);
    config_free(f->cfg);
    test_tmpdir_remove(f->dir);
    free(f);
    al_redact_clear();
    return 0;
}

static void run_for(struct fixture *f, unsigned ms)
{
    bool never = false;
    test_run_until(&f->loop, &never, ms);
}

/* The index of the first report of qid that is a result (result) or a
 * status with state (!result), or -1; run until there is one. */
static int wait_report(struct fixture *f, const char *qid, bool result, const char *state,
                       unsigned timeout_ms)
{
    uint64_t end = al_now_mono_ms() + timeout_ms;
    for (;;) {
        for (size_t i = 0; i < f->fake.n_reports; i++) {
            const struct report *r = &f->fake.reports[i];
            if (streq(r->qid, qid) && r->result == result && (!state || streq(r->state, state)))
                return (int)i;
        }
        if (al_now_mono_ms() >= end)
            return -1;
        run_for(f, 20);
    }
}

static size_t http_jobs(struct fixture *f)
{
    struct store_job_filter flt = {
            .state = JOB_STATE_NONE, .source = JOB_SOURCE_HTTP, .limit = STORE_LIST_MAX};
    struct store_job_page page = {0};
    assert_int_equal(store_job_list(f->store, &flt, &page, NULL), 0);
    size_t n = page.n;
    store_job_page_clear(&page);
    return n;
}

/* ---- tests -------------------------------------------------------------- */

/* claim -> QUEUED once durable -> the states on the way -> the result */
static void test_claim_report_complete(void **state)
{
    struct fixture *f = *state;
    f->fake.bodies[0] = "{\"command\": [\"true\"], \"source\": {\"id\": \"q-1\"},"
                        " \"env\": {\"FAKE\": \"fail:5\"}}";
    f->fake.n_bodies = 1;
    start_queue(f);
    int res = wait_report(f, "q-1", true, NULL, 10000);
    assert_true(res >= 0);
    const struct report *result = &f->fake.reports[res];
    assert_string_equal(result->state, "FAILED");
    assert_true(result->has_exit_code);
    assert_int_equal(result->exit_code, 5);
    /* QUEUED is the first report, RUNNING comes before the result, and they
     * all name the same agentlab job */
    int queued = wait_report(f, "q-1", false, "QUEUED", 0);
    int running = wait_report(f, "q-1", false, "RUNNING", 0);
    assert_int_equal(queued, 0);
    assert_true(running > queued && running < res);
    for (int i = 0; i <= res; i++)
        assert_string_equal(f->fake.reports[i].job, result->job);
    struct store_job *sj = NULL;
    assert_int_equal(store_job_get(f->store, result->job, &sj, NULL), 0);
    assert_int_equal(sj->source_type, JOB_SOURCE_HTTP);
    assert_string_equal(sj->source_ref, "q-1");
    assert_int_equal(sj->state, JOB_STATE_FAILED);
    store_job_free(sj);
    assert_int_equal(f->fake.unauthorized, 0);
}

/* A spec that does not parse is answered REJECTED with the reason, under
 * the id the X-Job-Id header gave; nothing runs. */
static void test_rejected(void **state)
{
    struct fixture *f = *state;
    f->fake.bodies[0] = "{\"command\": 42}";
    f->fake.header_ids[0] = "q-bad";
    f->fake.bodies[1] = "{\"command\": [\"true\"], \"source\": {\"id\": \"bad id!\"}}";
    f->fake.header_ids[1] = NULL;
    f->fake.n_bodies = 2;
    start_queue(f);
    int res = wait_report(f, "q-bad", true, NULL, 5000);
    assert_true(res >= 0);
    assert_string_equal(f->fake.reports[res].state, "REJECTED");
    assert_non_null(strstr(f->fake.reports[res].reason, "command"));
    assert_string_equal(f->fake.reports[res].job, "");
    run_for(f, 500);
    /* the second has no usable id: nothing to report it to, nothing runs */
    assert_int_equal(f->fake.served, 2);
    assert_int_equal(f->fake.n_reports, 1);
    assert_int_equal(http_jobs(f), 0);
    assert_int_equal(fake_backend_launched(), 0);
}

/* Polls back off from a second, doubling, on server errors; a report the
 * server fails is retried and the reports stay in order. */
static void test_server_errors_retry(void **state)
{
    struct fixture *f = *state;
    f->fake.forced[0] = 500;
    f->fake.forced[1] = 503;
    f->fake.n_forced = 2;
    f->fake.bodies[0] = "{\"command\": [\"true\"], \"source\": {\"id\": \"q-2\"}}";
    f->fake.n_bodies = 1;
    f->fake.report_fail_once = 500;
    f->fake.report_fail_result = false;
    start_queue(f);
    int res = wait_report(f, "q-2", true, NULL, 15000);
    assert_true(res >= 0);
    assert_string_equal(f->fake.reports[res].state, "SUCCEEDED");
    assert_true(f->fake.polls >= 3);
    assert_true(f->fake.poll_ms[1] - f->fake.poll_ms[0] >= 950);
    assert_true(f->fake.poll_ms[2] - f->fake.poll_ms[1] >= 1950);
    /* QUEUED failed once and was sent again before anything else */
    assert_string_equal(f->fake.reports[0].state, "QUEUED");
    assert_string_equal(f->fake.reports[1].state, "QUEUED");
    for (int i = 2; i < res; i++)
        assert_string_not_equal(f->fake.reports[i].state, "QUEUED");
    assert_int_equal(res, (int)f->fake.n_reports - 1);
}

/* 410 Gone to a status report withdraws the job: it is cancelled and its
 * result says so. */
static void test_withdrawn(void **state)
{
    struct fixture *f = *state;
    f->fake.bodies[0] = "{\"command\": [\"true\"], \"source\": {\"id\": \"q-3\"},"
                        " \"env\": {\"FAKE\": \"hang\"}}";
    f->fake.n_bodies = 1;
    f->fake.status_answer = 410;
    start_queue(f);
    int res = wait_report(f, "q-3", true, NULL, 10000);
    assert_true(res >= 0);
    assert_string_equal(f->fake.reports[res].state, "CANCELED");
    struct store_job *sj = NULL;
    assert_int_equal(store_job_get(f->store, f->fake.reports[res].job, &sj, NULL), 0);
    assert_int_equal(sj->state, JOB_STATE_CANCELED);
    store_job_free(sj);
}

/* A 4xx to a result means the queue does not want it: not retried. */
static void test_result_refused_not_retried(void **state)
{
    struct fixture *f = *state;
    f->fake.bodies[0] = "{\"command\": [\"true\"], \"source\": {\"id\": \"q-4\"}}";
    f->fake.n_bodies = 1;
    f->fake.report_fail_once = 404;
    f->fake.report_fail_result = true;
    start_queue(f);
    assert_true(wait_report(f, "q-4", true, NULL, 10000) >= 0);
    run_for(f, 2500);
    size_t results = 0;
    for (size_t i = 0; i < f->fake.n_reports; i++)
        results += f->fake.reports[i].result;
    assert_int_equal(results, 1);
}

int main(void)
{
    al_curl_global_init();
    const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_claim_report_complete, setup, teardown),
            cmocka_unit_test_setup_teardown(test_rejected, setup, teardown),
            cmocka_unit_test_setup_teardown(test_server_errors_retry, setup, teardown),
            cmocka_unit_test_setup_teardown(test_withdrawn, setup, teardown),
            cmocka_unit_test_setup_teardown(test_result_refused_not_retried, setup, teardown),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    al_curl_global_cleanup();
    return test_exit_status(failed);
}
