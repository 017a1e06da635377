/* The GitLab source's state machine (runner/sources/gitlab*.c) against an
 * in-process fake GitLab on the loop's own HTTP server, with the real
 * engine and store on the simulated hypervisor (fake_backend.h): a job is
 * requested, run, traced and reported; the request loop's answers to 401,
 * 403, 409 and 5xx; a cancel that comes from GitLab; and what a restart
 * finds (orphaned jobs, old checkouts). */
#include "test_util.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yajl/yajl_tree.h>

#include "runner/base/buf.h"
#include "runner/base/crc32.h"
#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/engine/config.h"
#include "runner/engine/engine.h"
#include "runner/engine/store.h"
#include "runner/loop/curl_uv.h"
#include "runner/loop/http_server.h"
#include "runner/sources/gitlab.h"
#include "fake_backend.h"

#define RUNNER_TOKEN "glrt-test-runner-token-0123"
#define MAX_REQUESTS 64

/* ---- the fake GitLab ---------------------------------------------------- */

struct fake_job {
    int64_t id;
    char token[64];
    char *payload;
    bool handed_out;
    const char *status; /* "pending", "running", "canceling", "success", "failed", "canceled" */
    struct al_buf trace;
    bool lose_first_trace; /* the first PATCH is "lost": the answer says 0 bytes are held */
    int patches;
    int keepalives;
    unsigned accept_202; /* final updates answered 202 before the 200 */
    char *final;         /* the body of the final update */
    bool cancel_when_traced;
};

struct fake_gitlab {
    struct api_server *srv;
    int port;
    /* answers to POST /jobs/request: forced statuses first, then jobs, then 204 */
    int forced[8];
    size_t n_forced;
    int forced_forever; /* 0 = none: every request gets this status */
    uint64_t request_ms[MAX_REQUESTS];
    unsigned requests;
    char last_update_seen[64];
    struct fake_job jobs[4];
    size_t n_jobs;
    unsigned bad; /* requests the fake found malformed */
    char bad_why[256];
    bool stopped;
};

static struct fake_job *fake_job(struct fake_gitlab *f, int64_t id)
{
    for (size_t i = 0; i < f->n_jobs; i++) {
        if (f->jobs[i].id == id)
            return &f->jobs[i];
    }
    return NULL;
}

static void fake_bad(struct fake_gitlab *f, struct api_req *r, const char *why)
{
    f->bad++;
    snprintf(f->bad_why, sizeof(f->bad_why), "%s", why);
    api_reply(r, 400, "application/json", NULL, "{}", 2);
}

static yajl_val body_json(const struct http_request *h)
{
    char *text = strndup(h->body.data ? h->body.data : "", h->body.len);
    yajl_val v = text ? yajl_tree_parse(text, NULL, 0) : NULL;
    free(text);
    return v;
}

static const char *json_str(yajl_val obj, const char *key)
{
    const char *path[] = {key, NULL};
    yajl_val v = yajl_tree_get(obj, path, yajl_t_string);
    return v ? YAJL_GET_STRING(v) : NULL;
}

static void on_jobs_request(struct fake_gitlab *f, struct api_req *r, const struct http_request *h)
{
    if (f->requests < MAX_REQUESTS)
        f->request_ms[f->requests] = al_now_mono_ms();
    f->requests++;
    yajl_val doc = body_json(h);
    const char *token = doc ? json_str(doc, "token") : NULL;
    const char *lu = doc ? json_str(doc, "last_update") : NULL;
    snprintf(f->last_update_seen, sizeof(f->last_update_seen), "%s", lu ? lu : "");
    bool token_ok = token && streq(token, RUNNER_TOKEN);
    yajl_tree_free(doc);
    if (!token_ok)
        return fake_bad(f, r, "the request does not carry the runner token");
    int status = f->forced_forever;
    if (!status && f->n_forced) {
        status = f->forced[0];
        memmove(f->forced, f->forced + 1, --f->n_forced * sizeof(f->forced[0]));
    }
    if (status == 204) {
        api_reply(r, 204, NULL, NULL, NULL, 0);
        return;
    }
    if (status) {
        api_reply(r, status, "application/json", NULL, "{\"message\":\"forced\"}", 20);
        return;
    }
    for (size_t i = 0; i < f->n_jobs; i++) {
        struct fake_job *j = &f->jobs[i];
        if (j->handed_out)
            continue;
        j->handed_out = true;
        j->status = "running";
        api_reply(r, 201, "application/json", "X-GitLab-Last-Update: v2\r\n", j->payload,
                  strlen(j->payload));
        return;
    }
    api_reply(r, 204, NULL, "X-GitLab-Last-Update: v1\r\n", NULL, 0);
}

static void reply_job_status(struct api_req *r, int status, struct fake_job *j, const char *extra)
{
    char h[256];
    snprintf(h, sizeof(h), "Job-Status: %s\r\nX-GitLab-Trace-Update-Interval: 1\r\n%s", j->status,
             extra ? extra : "");
    api_reply(r, status, "application/json", h, "{}", 2);
}

static bool job_live(const struct fake_job *j)
{
    return streq(j->status, "running") || streq(j->status, "canceling");
}

static void on_trace(struct fake_gitlab *f, struct api_req *r, const struct http_request *h,
                     struct fake_job *j)
{
    const char *tok = http_request_header(h, "JOB-TOKEN");
    if (!tok || !streq(tok, j->token))
        return fake_bad(f, r, "trace without the job token");
    if (!job_live(j))
        return reply_job_status(r, 403, j, NULL);
    const char *cr = http_request_header(h, "Content-Range");
    unsigned long long start, end;
    int n = 0;
    if (!cr || sscanf(cr, "%llu-%llu%n", &start, &end, &n) != 2 || cr[n] ||
        end + 1 - start != h->body.len)
        return fake_bad(f, r, "Content-Range does not match the body");
    j->patches++;
    char range[64];
    if (start != j->trace.len) {
        snprintf(range, sizeof(range), "Range: 0-%zu\r\n", j->trace.len);
        return reply_job_status(r, 416, j, range);
    }
    if (j->lose_first_trace && j->patches == 1) {
        snprintf(range, sizeof(range), "Range: 0-%zu\r\n", j->trace.len);
        return reply_job_status(r, 202, j, range);
    }
    al_buf_append(&j->trace, h->body.data, h->body.len);
    if (j->cancel_when_traced && streq(j->status, "running"))
        j->status = "canceling";
    snprintf(range, sizeof(range), "Range: 0-%zu\r\n", j->trace.len);
    reply_job_status(r, 202, j, range);
}

static void on_update(struct fake_gitlab *f, struct api_req *r, const struct http_request *h,
                      struct fake_job *j)
{
    yajl_val doc = body_json(h);
    const char *token = doc ? json_str(doc, "token") : NULL;
    const char *state = doc ? json_str(doc, "state") : NULL;
    if (!token || !streq(token, j->token) || !state) {
        yajl_tree_free(doc);
        return fake_bad(f, r, "an update without the job token or a state");
    }
    bool running = streq(state, "running"), success = streq(state, "success");
    yajl_tree_free(doc);
    if (!job_live(j))
        return reply_job_status(r, 403, j, NULL);
    if (running) {
        j->keepalives++;
        return reply_job_status(r, 200, j, NULL);
    }
    if (j->accept_202) {
        j->accept_202--;
        return reply_job_status(r, 202, j, NULL);
    }
    free(j->final);
    j->final = strndup(h->body.data, h->body.len);
    j->status = streq(j->status, "canceling") ? "canceled" : success ? "success" : "failed";
    reply_job_status(r, 200, j, NULL);
}

static void fake_request(struct api_req *r, void *data)
{
    struct fake_gitlab *f = data;
    const struct http_request *h = api_req_http(r);
    int64_t id = 0;
    int n = 0;
    if (h->method == HTTP_POST && streq(h->path, "/api/v4/jobs/request"))
        return on_jobs_request(f, r, h);
    if (sscanf(h->path, "/api/v4/jobs/%" SCNd64 "%n", &id, &n) == 1) {
        struct fake_job *j = fake_job(f, id);
        if (!j)
            return api_reply(r, 404, "application/json", NULL, "{}", 2);
        if (h->method == HTTP_PATCH && streq(h->path + n, "/trace"))
            return on_trace(f, r, h, j);
        if (h->method == HTTP_PUT && !h->path[n])
            return on_update(f, r, h, j);
    }
    fake_bad(f, r, "an unexpected request");
}

static const struct api_server_handler fake_handler = {.request = fake_request};

static void fake_add_job(struct fake_gitlab *f, int64_t id, const char *fake_mode)
{
    assert_true(f->n_jobs < ARRAY_SIZE(f->jobs));
    struct fake_job *j = &f->jobs[f->n_jobs++];
    *j = (struct fake_job){.id = id, .status = "pending", .trace = AL_BUF_INIT};
    snprintf(j->token, sizeof(j->token), "glcbt-job-token-%04" PRId64 "-abcdef", id);
    assert_true(
            asprintf(&j->payload,
                     "{\"id\": %" PRId64 ", \"token\": \"%s\","
                     " \"job_info\": {\"name\": \"job-%" PRId64 "\", \"project_name\": \"demo\"},"
                     " \"git_info\": {\"repo_url\": \"http://127.0.0.1:%d/demo.git\","
                     "  \"ref\": \"main\", \"sha\": \"%040d\", \"depth\": 1},"
                     " \"runner_info\": {\"timeout\": 600},"
                     " \"variables\": [{\"key\": \"FAKE\", \"value\": \"%s\", \"masked\": false},"
                     "  {\"key\": \"FAKE_MS\", \"value\": \"30\"}],"
                     " \"steps\": [{\"name\": \"script\", \"script\": [\"true\"],"
                     "  \"timeout\": 600, \"when\": \"on_success\"}],"
                     " \"features\": {\"failure_reasons\": [\"script_failure\","
                     "  \"job_execution_timeout\", \"runner_system_failure\", \"job_canceled\"]}}",
                     id, j->token, id, f->port, 1, fake_mode) > 0);
}

/* ---- fixture ------------------------------------------------------------ */

struct fixture {
    uv_loop_t loop;
    char *dir;
    struct config *cfg;
    struct store *store;
    struct engine *engine;
    struct al_curl *curl;
    struct fake_gitlab fake;
    struct gitlab *gl;
    bool reconciled;
    bool stopped;
    bool start_when_reconciled; /* as agentlabd does */
    char orphan[STORE_JOB_ID_SIZE];
};

static void start_source(struct fixture *f);

static void on_reconciled(const struct engine_reconcile_report *r, void *data)
{
    (void)r;
    struct fixture *f = data;
    f->reconciled = true;
    if (f->start_when_reconciled)
        start_source(f);
}

static void on_stopped(void *data)
{
    ((struct fixture *)data)->stopped = true;
}

static void on_fake_stopped(void *data)
{
    ((struct fake_gitlab *)data)->stopped = true;
}

/* A queued GitLab job in the store, as a previous agentlabd left it. */
static void plant_orphan(struct fixture *f)
{
    struct job_spec *spec = NULL;
    static const char doc[] = "{\"command\": [\"true\"]}";
    assert_int_equal(job_spec_parse(doc, strlen(doc), 0, &spec, NULL), 0);
    assert_int_equal(job_spec_apply_defaults(spec, f->cfg, NULL), 0);
    spec->source.type = JOB_SOURCE_GITLAB;
    spec->source.id = strdup("99");
    assert_int_equal(store_job_insert(f->store, spec, f->orphan, NULL, NULL), 0);
    job_spec_free(spec);
}

static int fixture_new(void **state, bool restart)
{
    struct fixture *f = calloc(1, sizeof(*f));
    uv_loop_init(&f->loop);
    f->dir = test_tmpdir("gitlab-source");
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
    snprintf(token_file, sizeof(token_file), "%s/runner.token", f->dir);
    FILE *tf = fopen(token_file, "we");
    assert_non_null(tf);
    fprintf(tf, "%s\n", RUNNER_TOKEN);
    fclose(tf);
    chmod(token_file, 0600);
    char conf[2048];
    snprintf(conf, sizeof(conf),
             "[agent]\nstate_dir = %s\nrun_dir = %s/run\nlog_level = error\nmax_attempts = 1\n"
             "[backend \"local\"]\nmax_vms = 3\n"
             "[pool \"default\"]\nallowed_images = debian-12\n"
             "[source \"gl\"]\ntype = gitlab\nurl = http://127.0.0.1:%d/\ntoken_file = %s\n"
             "concurrent = 2\npoll_interval = 1s\nclone = none\n",
             f->dir, f->dir, f->fake.port, token_file);
    if (config_load_string(conf, strlen(conf), "test.conf", &f->cfg, &err) < 0)
        fail_msg("config: %s", al_error_message(err));
    fake_backend_write_image(f->dir, "debian-12");
    char *db = al_path_join(f->dir, "agentlab.db");
    assert_int_equal(store_open(db, NULL, &f->store, &err), 0);
    free(db);
    fake_backend_register();
    al_log_set_level(AL_LOG_ERROR);
    if (restart) {
        /* a checkout the previous agentlabd left */
        char *old = NULL;
        assert_true(asprintf(&old, "%s/gitlab/gl/job-1/src", f->dir) > 0);
        assert_int_equal(al_mkdir_p(old, 0700, NULL), 0);
        free(old);
        plant_orphan(f);
        f->start_when_reconciled = true;
        f->fake.forced_forever = 204;
    }
    assert_int_equal(al_curl_new(&f->loop, &f->curl, &err), 0);
    struct engine_params ep = {.loop = &f->loop,
                               .cfg = f->cfg,
                               .store = f->store,
                               .owner_id = "daemon:00000000000000000000000000000003"};
    assert_int_equal(engine_new(&ep, &f->engine, &err), 0);
    engine_start(f->engine, on_reconciled, f);
    assert_true(test_run_until(&f->loop, &f->reconciled, 5000));
    *state = f;
    return 0;
}

static int setup(void **state)
{
    return fixture_new(state, false);
}

static int setup_restart(void **state)
{
    return fixture_new(state, true);
}

static void start_source(struct fixture *f)
{
    struct al_error *err = NULL;
    if (gitlab_start(&f->loop, f->engine, f->curl, f->cfg, &f->cfg->sources[0], &f->gl, &err) < 0)
        fail_msg("gitlab_start: %s", al_error_message(err));
}

static void stop_source(struct fixture *f)
{
    if (!f->gl)
        return;
    f->stopped = false;
    gitlab_stop(f->gl, on_stopped, f);
    assert_true(test_run_until(&f->loop, &f->stopped, 15000));
    f->gl = NULL;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    stop_source(f);
    al_curl_close(f->curl, NULL, NULL);
    f->stopped = false;
    engine_stop(f->engine, on_stopped, f);
    assert_true(test_run_until(&f->loop, &f->stopped, 5000));
    api_server_stop(f->fake.srv, on_fake_stopped, &f->fake);
    assert_true(test_run_until(&f->loop, &f->fake.stopped, 5000));
    test_loop_close(&f->loop);
    store_close(f->store);
    config_free(f->cfg);
    for (size_t i = 0; i < f->fake.n_jobs; i++) {
        free(f->fake.jobs[i].payload);
        free(f->fake.jobs[i].final);
        al_buf_free(&f->fake.jobs[i].trace);
    }
    test_tmpdir_remove(f->dir);
    free(f);
    al_redact_clear();
    return 0;
}

/* Runs the loop until the fake job reached a final state or timeout_ms. */
static bool run_until_final(struct fixture *f, struct fake_job *j, unsigned timeout_ms)
{
    uint64_t end = al_now_mono_ms() + timeout_ms;
    while (!j->final && al_now_mono_ms() < end)
        uv_run(&f->loop, UV_RUN_ONCE);
    return j->final != NULL;
}

static void run_for(struct fixture *f, unsigned ms)
{
    bool never = false;
    test_run_until(&f->loop, &never, ms);
}

static yajl_val parse_final(const struct fake_job *j)
{
    yajl_val v = yajl_tree_parse(j->final, NULL, 0);
    assert_non_null(v);
    return v;
}

static int64_t json_int(yajl_val obj, const char *a, const char *b)
{
    const char *path[] = {a, b, NULL};
    yajl_val v = yajl_tree_get(obj, path, yajl_t_number);
    assert_non_null(v);
    return YAJL_GET_INTEGER(v);
}

/* The engine's record of the job GitLab knows as id. */
static struct store_job *store_job_of(struct fixture *f, int64_t id)
{
    struct store_job_filter flt = {
            .state = JOB_STATE_NONE, .source = JOB_SOURCE_GITLAB, .limit = STORE_LIST_MAX};
    struct store_job_page page = {0};
    assert_int_equal(store_job_list(f->store, &flt, &page, NULL), 0);
    char ref[32];
    snprintf(ref, sizeof(ref), "%" PRId64, id);
    struct store_job *found = NULL;
    for (size_t i = 0; i < page.n && !found; i++) {
        if (page.jobs[i]->source_ref && streq(page.jobs[i]->source_ref, ref))
            assert_int_equal(store_job_get(f->store, page.jobs[i]->id, &found, NULL), 0);
    }
    store_job_page_clear(&page);
    return found;
}

/* ---- tests -------------------------------------------------------------- */

/* request -> job -> trace updates -> final state, with a lost trace chunk
 * resent and a 202 to the final update repeated. */
static void test_job_succeeds(void **state)
{
    struct fixture *f = *state;
    fake_add_job(&f->fake, 101, "stream:20");
    struct fake_job *j = &f->fake.jobs[0];
    j->lose_first_trace = true;
    j->accept_202 = 1;
    start_source(f);
    assert_true(run_until_final(f, j, 20000));
    assert_int_equal(f->fake.bad, 0);
    if (!streq(j->status, "success"))
        fail_msg("the job %s: %.*s\n%s", j->status, (int)j->trace.len, j->trace.data, j->final);
    assert_string_equal(j->status, "success");
    /* the whole log arrived once, in order, the lost chunk included */
    al_buf_append(&j->trace, "", 1);
    j->trace.len--;
    for (int k = 1; k <= 20; k++) {
        char line[32];
        snprintf(line, sizeof(line), "line %d\n", k);
        const char *at = strstr(j->trace.data, line);
        assert_non_null(at);
        assert_null(strstr(at + 1, line));
    }
    assert_true(j->patches >= 2);
    assert_int_equal(j->accept_202, 0); /* the 202 to the final update was repeated */
    yajl_val fin = parse_final(j);
    assert_string_equal(json_str(fin, "state"), "success");
    assert_int_equal(json_int(fin, "exit_code", NULL), 0);
    char crc[32];
    snprintf(crc, sizeof(crc), "crc32:%08" PRIx32, al_crc32(0, j->trace.data, j->trace.len));
    const char *cpath[] = {"output", "checksum", NULL};
    assert_string_equal(YAJL_GET_STRING(yajl_tree_get(fin, cpath, yajl_t_string)), crc);
    assert_int_equal(json_int(fin, "output", "bytesize"), (int64_t)j->trace.len);
    yajl_tree_free(fin);
    /* a job was asked for again at once after the 201, without last_update */
    assert_true(f->fake.requests >= 2);
    struct store_job *sj = store_job_of(f, 101);
    assert_non_null(sj);
    assert_int_equal(sj->state, JOB_STATE_SUCCEEDED);
    store_job_free(sj);
}

/* A job with caches, without a host checkout: the trace says they are
 * not restored, and saving finds nothing the guest handed back; the job
 * still succeeds. The store lives under state_dir by default. */
static void test_job_with_cache(void **state)
{
    struct fixture *f = *state;
    fake_add_job(&f->fake, 110, "stream:2");
    struct fake_job *j = &f->fake.jobs[0];
    char *at = strstr(j->payload, " \"features\"");
    assert_non_null(at);
    char *doc = NULL;
    assert_true(asprintf(&doc,
                         "%.*s \"cache\": [{\"key\": \"deps-non_protected\", \"policy\": "
                         "\"pull-push\", \"paths\": [\"vendor/\"], \"when\": \"on_success\", "
                         "\"untracked\": true}],%s",
                         (int)(at - j->payload), j->payload, at) > 0);
    free(j->payload);
    j->payload = doc;
    start_source(f);
    assert_true(run_until_final(f, j, 20000));
    assert_int_equal(f->fake.bad, 0);
    al_buf_append(&j->trace, "", 1);
    if (!streq(j->status, "success"))
        fail_msg("the job %s: %s", j->status, j->trace.data);
    const char *want[] = {
            "WARNING: caches are restored only with clone = host",
            "Saving cache deps-non_protected for successful job\n",
            "WARNING: no files match the cache paths: nothing saved\n",
    };
    for (size_t i = 0; i < ARRAY_SIZE(want); i++) {
        if (!strstr(j->trace.data, want[i]))
            fail_msg("%s missing from the trace:\n%s", want[i], j->trace.data);
    }
    char *store = NULL;
    assert_true(asprintf(&store, "%s/gitlab-cache/gl", f->dir) > 0);
    struct stat st;
    assert_int_equal(stat(store, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    free(store);
}

static void test_job_fails(void **state)
{
    struct fixture *f = *state;
    fake_add_job(&f->fake, 102, "fail:3");
    struct fake_job *j = &f->fake.jobs[0];
    start_source(f);
    assert_true(run_until_final(f, j, 20000));
    assert_int_equal(f->fake.bad, 0);
    assert_string_equal(j->status, "failed");
    yajl_val fin = parse_final(j);
    assert_string_equal(json_str(fin, "state"), "failed");
    assert_string_equal(json_str(fin, "failure_reason"), "script_failure");
    assert_int_equal(json_int(fin, "exit_code", NULL), 3);
    yajl_tree_free(fin);
    al_buf_append(&j->trace, "", 1);
    assert_non_null(strstr(j->trace.data, "ERROR: Job failed: exit code 3"));
}

/* GitLab says the job is canceling: the engine cancels it and the final
 * update says job_canceled. */
static void test_cancel_from_gitlab(void **state)
{
    struct fixture *f = *state;
    fake_add_job(&f->fake, 103, "hang");
    struct fake_job *j = &f->fake.jobs[0];
    j->cancel_when_traced = true;
    start_source(f);
    assert_true(run_until_final(f, j, 20000));
    assert_int_equal(f->fake.bad, 0);
    assert_string_equal(j->status, "canceled");
    yajl_val fin = parse_final(j);
    assert_string_equal(json_str(fin, "state"), "failed");
    assert_string_equal(json_str(fin, "failure_reason"), "job_canceled");
    yajl_tree_free(fin);
    struct store_job *sj = store_job_of(f, 103);
    assert_non_null(sj);
    assert_int_equal(sj->state, JOB_STATE_CANCELED);
    store_job_free(sj);
}

/* A job that is not JSON GitLab's way is refused to GitLab as failed,
 * never run. */
static void test_bad_payload(void **state)
{
    struct fixture *f = *state;
    fake_add_job(&f->fake, 104, "ok");
    struct fake_job *j = &f->fake.jobs[0];
    char *broken = strstr(j->payload, "\"script\": [\"true\"]");
    assert_non_null(broken);
    memcpy(broken, "\"script\": \"true\"  ", strlen("\"script\": \"true\"  "));
    start_source(f);
    assert_true(run_until_final(f, j, 20000));
    assert_int_equal(f->fake.bad, 0);
    yajl_val fin = parse_final(j);
    assert_string_equal(json_str(fin, "state"), "failed");
    assert_string_equal(json_str(fin, "failure_reason"), "runner_system_failure");
    yajl_tree_free(fin);
    al_buf_append(&j->trace, "", 1);
    assert_non_null(strstr(j->trace.data, "steps[0].script"));
    assert_int_equal(fake_backend_launched(), 0);
}

/* image: names a VM image: one outside the pool's allowed_images, or a
 * container reference, fails the job as runner_system_failure with the
 * reason in the trace, before any VM. */
static void test_image_refused(void **state)
{
    struct fixture *f = *state;
    static const struct {
        const char *image, *reason;
    } cases[] = {
            {"debian-13", "\"debian-13\" is not among pool \"default\"'s allowed_images"},
            {"ruby:3.3", "image \"ruby:3.3\": agentlab runs jobs in VM images"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        fake_add_job(&f->fake, 105 + (int64_t)i, "ok");
        struct fake_job *j = &f->fake.jobs[i];
        char *features = strstr(j->payload, " \"features\"");
        assert_non_null(features);
        *features = '\0';
        char *with = NULL;
        assert_true(asprintf(&with, "%s \"image\": {\"name\": \"%s\"}, \"features\"%s", j->payload,
                             cases[i].image, features + strlen(" \"features\"")) > 0);
        free(j->payload);
        j->payload = with;
    }
    start_source(f);
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        struct fake_job *j = &f->fake.jobs[i];
        assert_true(run_until_final(f, j, 20000));
        yajl_val fin = parse_final(j);
        assert_string_equal(json_str(fin, "state"), "failed");
        assert_string_equal(json_str(fin, "failure_reason"), "runner_system_failure");
        yajl_tree_free(fin);
        al_buf_append(&j->trace, "", 1);
        if (!strstr(j->trace.data, cases[i].reason) ||
            !strstr(j->trace.data, "ERROR: Job failed (system failure): "))
            fail_msg("%s: trace %s", cases[i].image, j->trace.data);
    }
    assert_int_equal(f->fake.bad, 0);
    assert_int_equal(fake_backend_launched(), 0);
}

/* 5xx and 401 back off, doubling from a second; 409 waits poll_interval;
 * a 204 with a new X-GitLab-Last-Update is echoed back as last_update. */
static void test_request_errors_back_off(void **state)
{
    struct fixture *f = *state;
    f->fake.forced_forever = 500;
    start_source(f);
    run_for(f, 3600);
    /* at 0, ~1-1.25 s, then ~2-2.5 s later: three, not a storm */
    assert_in_range(f->fake.requests, 2, 3);
    assert_true(f->fake.request_ms[1] - f->fake.request_ms[0] >= 950);
    if (f->fake.requests == 3)
        assert_true(f->fake.request_ms[2] - f->fake.request_ms[1] >= 1950);
    stop_source(f);

    f->fake = (struct fake_gitlab){.srv = f->fake.srv, .port = f->fake.port};
    f->fake.forced[0] = 401;
    f->fake.forced[1] = 409;
    f->fake.n_forced = 2;
    start_source(f);
    run_for(f, 3500);
    /* 401 at 0, after ~1 s the 409, after poll_interval a 204 (v1), then at
     * once (REPOLL) a request with last_update v1 */
    assert_true(f->fake.requests >= 4);
    assert_true(f->fake.request_ms[1] - f->fake.request_ms[0] >= 950);
    assert_true(f->fake.request_ms[2] - f->fake.request_ms[1] >= 950);
    assert_true(f->fake.request_ms[3] - f->fake.request_ms[2] < 900);
    assert_string_equal(f->fake.last_update_seen, "v1");
    assert_int_equal(f->fake.bad, 0);
}

/* 403: the runner token is refused; the source waits at least a minute. */
static void test_request_forbidden(void **state)
{
    struct fixture *f = *state;
    f->fake.forced_forever = 403;
    start_source(f);
    run_for(f, 3000);
    assert_int_equal(f->fake.requests, 1);
}

/* What a restart finds: a GitLab job a previous agentlabd left queued lost
 * its job token with it and is cancelled; old checkouts are removed. */
static void test_restart(void **state)
{
    struct fixture *f = *state;
    char *old = NULL;
    assert_true(asprintf(&old, "%s/gitlab/gl/job-1/src", f->dir) > 0);
    char *root = NULL;
    assert_true(asprintf(&root, "%s/gitlab", f->dir) > 0);

    run_for(f, 1000);
    struct store_job *sj = NULL;
    assert_int_equal(store_job_get(f->store, f->orphan, &sj, NULL), 0);
    assert_int_equal(sj->state, JOB_STATE_CANCELED);
    store_job_free(sj);
    /* nothing of the old checkouts is left under the checkout root */
    assert_int_equal(access(old, F_OK), -1);
    DIR *d = opendir(root);
    assert_non_null(d);
    for (struct dirent *e; (e = readdir(d));)
        assert_true(streq(e->d_name, ".") || streq(e->d_name, ".."));
    closedir(d);
    free(root);
    free(old);
}

int main(void)
{
    al_curl_global_init();
    const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_job_succeeds, setup, teardown),
            cmocka_unit_test_setup_teardown(test_job_with_cache, setup, teardown),
            cmocka_unit_test_setup_teardown(test_job_fails, setup, teardown),
            cmocka_unit_test_setup_teardown(test_cancel_from_gitlab, setup, teardown),
            cmocka_unit_test_setup_teardown(test_bad_payload, setup, teardown),
            cmocka_unit_test_setup_teardown(test_image_refused, setup, teardown),
            cmocka_unit_test_setup_teardown(test_request_errors_back_off, setup, teardown),
            cmocka_unit_test_setup_teardown(test_request_forbidden, setup, teardown),
            cmocka_unit_test_setup_teardown(test_restart, setup_restart, teardown),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    al_curl_global_cleanup();
    return test_exit_status(failed);
}
