/* Batches: the JSON Lines parser (line numbers and fields in errors,
 * defaults, names), the store (one transaction, counts, rows), and
 * max_parallel on the real engine with the simulated hypervisor. */
#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runner/base/buf.h"
#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/engine/batch.h"
#include "runner/engine/engine.h"
#include "runner/engine/store.h"
#include "runner/engine/store_batch.h"
#include "fake_backend.h"

static const struct batch_options plain = {.name = "nightly", .retries = -1};

static void parse_fails(const char *body, const struct batch_options *o, int code,
                        const char *expect)
{
    struct batch_items items = {0};
    struct al_error *err = NULL;
    int r = batch_parse(body, strlen(body), o ? o : &plain, &items, &err);
    if (r != -code || !strstr(al_error_message(err), expect))
        fail_msg("expected %d with \"%s\", got %d: %s", -code, expect, r, al_error_message(err));
    assert_int_equal(items.n, 0);
    al_error_free(err);
}

static void test_parse_lines(void **state)
{
    (void)state;
    char *labels[] = {"nightly", NULL};
    struct batch_options o = {.name = "eval", .retries = 2, .pool = "big", .labels = labels};
    /* 11 jobs: names are zero-padded to two digits; blank lines are skipped
     * but counted for line numbers */
    const char *body = "{\"command\": [\"true\"]}\n"
                       "\n"
                       "{\"params\": {\"task\": \"t-2\", \"seed\": 7}, \"spec\": {\"command\": "
                       "[\"run\"], \"env\": {\"TASK\": \"t-2\"}}}\r\n"
                       "{\"name\": \"custom\", \"command\": [\"x\"], \"pool\": \"small\"}\n"
                       "{\"command\": [\"true\"]}\n{\"command\": [\"true\"]}\n"
                       "{\"command\": [\"true\"]}\n{\"command\": [\"true\"]}\n"
                       "{\"command\": [\"true\"]}\n{\"command\": [\"true\"]}\n"
                       "{\"command\": [\"true\"]}\n{\"command\": [\"true\"]}";
    struct batch_items items = {0};
    struct al_error *err = NULL;
    if (batch_parse(body, strlen(body), &o, &items, &err) < 0)
        fail_msg("%s", al_error_message(err));
    assert_int_equal(items.n, 11);
    assert_string_equal(items.v[0].spec->name, "eval-01");
    assert_int_equal(items.v[0].line, 1);
    assert_null(items.v[0].params);
    assert_string_equal(items.v[0].spec->pool, "big");
    assert_int_equal(items.v[0].spec->n_labels, 1);
    assert_string_equal(items.v[0].spec->labels[0], "nightly");
    assert_int_equal(items.v[0].spec->max_attempts, 3);

    assert_int_equal(items.v[1].line, 3);
    assert_string_equal(items.v[1].spec->name, "eval-02");
    assert_string_equal(items.v[1].params, "{\"task\": \"t-2\", \"seed\": 7}");
    assert_string_equal(items.v[1].spec->command[0], "run");
    assert_string_equal(items.v[1].spec->env[0].value, "t-2");

    /* a line's own name and pool win */
    assert_string_equal(items.v[2].spec->name, "custom");
    assert_string_equal(items.v[2].spec->pool, "small");
    assert_string_equal(items.v[10].spec->name, "eval-11");
    batch_items_clear(&items);
}

static void test_parse_refuses_whole_batch(void **state)
{
    (void)state;
    parse_fails("{\"command\": [\"a\"]}\n{\"command\": [\"b\"]}\n"
                "{\"command\": [\"c\"], \"resources\": {\"cpus\": \"two\"}}\n",
                NULL, EINVAL, "line 3: resources.cpus: expected an integer");
    parse_fails("{\"command\": [\"a\"]}\n{\"spec\": {\"command\": 5}}\n", NULL, EINVAL,
                "line 2: spec.command");
    parse_fails("{\"spec\": {\"command\": [\"a\"]}, \"parms\": {}}\n", NULL, EINVAL,
                "line 1: parms: unknown field");
    parse_fails("{\"spec\": {\"command\": [\"a\"]}, \"params\": [1]}\n", NULL, EINVAL,
                "line 1: params: expected an object");
    parse_fails("{\"spec\": {\"command\": [\"a\"]}, \"params\": {\"a\": {\"b\": 1}}}\n", NULL,
                EINVAL, "line 1: params.a: expected a string");
    parse_fails("{\"command\": [\"a\"], \"colour\": 1}\n", NULL, EINVAL,
                "line 1: colour: unknown field");
    parse_fails("{\"command\": [\"a\"]\n", NULL, EINVAL, "line 1: ");
    parse_fails("{\"command\": [\"a\"]}\n{\"command\": [\"b\"], \"batch\": \"x\"}\n", NULL, EINVAL,
                "line 2: batch: not allowed in a batch's lines");
    parse_fails("{\"name\": \"same\", \"command\": [\"a\"]}\n{\"command\": [\"b\"]}\n"
                "{\"name\": \"same\", \"command\": [\"c\"]}\n",
                NULL, EINVAL, "line 3: name: \"same\" is already the name of line 1");
    /* a line's name that collides with a default one */
    parse_fails("{\"command\": [\"a\"]}\n{\"name\": \"nightly-1\", \"command\": [\"b\"]}\n", NULL,
                EINVAL, "is already the name of line");
    parse_fails("\n  \n", NULL, EINVAL, "the batch has no jobs");
    struct batch_options bad = {.name = "../x", .retries = -1};
    parse_fails("{\"command\": [\"a\"]}\n", &bad, EINVAL, "name: expected");
    char *labels[] = {"no spaces", NULL};
    struct batch_options badl = {.name = "x", .retries = -1, .labels = labels};
    parse_fails("{\"command\": [\"a\"]}\n", &badl, EINVAL, "labels:");
}

/* ------------------------------------------------------------ on the engine */

struct fixture {
    uv_loop_t loop;
    char *dir;
    struct config *cfg;
    struct store *store;
    struct engine *engine;
    struct batches *batches;
    struct engine_watch *watch;
    bool reconciled, stopped;
    /* what the observer saw */
    char batch_jobs[16][STORE_JOB_ID_SIZE];
    size_t n_batch_jobs;
    char ci_job[STORE_JOB_ID_SIZE];
    int running, max_running;
    int starts;       /* batch jobs started */
    int starts_at_ci; /* batch jobs started when the CI job started; -1 = not yet */
    int finished;
};

static bool is_batch_job(struct fixture *f, const char *id)
{
    for (size_t i = 0; i < f->n_batch_jobs; i++) {
        if (streq(f->batch_jobs[i], id))
            return true;
    }
    return false;
}

static void on_event(const struct store_event *ev, void *data)
{
    struct fixture *f = data;
    if (ev->from == JOB_STATE_QUEUED && ev->to == JOB_STATE_PROVISIONING) {
        if (streq(ev->job_id, f->ci_job)) {
            f->starts_at_ci = f->starts;
        } else if (is_batch_job(f, ev->job_id)) {
            f->starts++;
            if (++f->running > f->max_running)
                f->max_running = f->running;
        }
    }
    if (job_state_is_terminal(ev->to) && ev->from != JOB_STATE_QUEUED &&
        is_batch_job(f, ev->job_id))
        f->running--;
}

static void on_finished(const char *id, enum job_state st, const struct attempt_result *r,
                        void *data)
{
    (void)id;
    (void)st;
    (void)r;
    struct fixture *f = data;
    f->finished++;
}

static void on_reconciled(const struct engine_reconcile_report *r, void *data)
{
    (void)r;
    struct fixture *f = data;
    f->reconciled = true;
}

static void on_stopped(void *data)
{
    struct fixture *f = data;
    f->stopped = true;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    uv_loop_init(&f->loop);
    f->dir = test_tmpdir("batch");
    f->starts_at_ci = -1;
    char conf[1024];
    snprintf(conf, sizeof(conf),
             "[agent]\nstate_dir = %s\nrun_dir = %s/run\nimage = micro\nlog_level = error\n"
             "max_attempts = 1\n[backend \"local\"]\nmax_vms = 3\n",
             f->dir, f->dir);
    struct al_error *err = NULL;
    assert_int_equal(config_load_string(conf, strlen(conf), "test.conf", &f->cfg, &err), 0);
    fake_backend_write_image(f->dir, "micro");
    char *db = al_path_join(f->dir, "agentlab.db");
    assert_int_equal(store_open(db, NULL, &f->store, &err), 0);
    free(db);
    fake_backend_register();
    fake_backend_delay_ms = 2;
    al_log_set_level(AL_LOG_ERROR);
    struct engine_params ep = {.loop = &f->loop,
                               .cfg = f->cfg,
                               .store = f->store,
                               .owner_id = "daemon:00000000000000000000000000000004"};
    assert_int_equal(engine_new(&ep, &f->engine, &err), 0);
    if (batches_new(f->engine, f->store, &f->batches, &err) < 0)
        fail_msg("%s", al_error_message(err));
    static const struct engine_observer o = {.event = on_event, .finished = on_finished};
    f->watch = engine_observe(f->engine, &o, f);
    engine_start(f->engine, on_reconciled, f);
    assert_true(test_run_until(&f->loop, &f->reconciled, 5000));
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    engine_unobserve(f->engine, f->watch);
    batches_free(f->batches);
    engine_stop(f->engine, on_stopped, f);
    assert_true(test_run_until(&f->loop, &f->stopped, 5000));
    test_loop_close(&f->loop);
    store_close(f->store);
    config_free(f->cfg);
    test_tmpdir_remove(f->dir);
    free(f);
    return 0;
}

static int submit(struct fixture *f, const struct batch_options *o, const char *body,
                  char id[STORE_BATCH_ID_SIZE], struct al_error **err)
{
    struct batch_items items = {0};
    int r = batch_parse(body, strlen(body), o, &items, err);
    if (r < 0)
        return r;
    return batches_submit(f->batches, o, &items, id, err);
}

static bool all_done(struct fixture *f, int n)
{
    return f->finished >= n;
}

static void run_until_finished(struct fixture *f, int n)
{
    uint64_t deadline = al_now_mono_ms() + 20000;
    while (!all_done(f, n) && al_now_mono_ms() < deadline)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_true(all_done(f, n));
}

static void record_batch_jobs(struct fixture *f, const char *batch_id)
{
    struct store_batch_job *rows = NULL;
    size_t n = 0;
    assert_int_equal(store_batch_jobs(f->store, batch_id, 0, 100, &rows, &n, NULL), 0);
    for (size_t i = 0; i < n && f->n_batch_jobs < 16; i++)
        snprintf(f->batch_jobs[f->n_batch_jobs++], STORE_JOB_ID_SIZE, "%s", rows[i].job_id);
    store_batch_jobs_free(rows, n);
}

static void test_max_parallel_and_ci_job(void **state)
{
    struct fixture *f = *state;
    /* 6 jobs of 10 lines each 10 ms apart: about 100 ms each, 3 VMs */
    _cleanup_buf_ struct al_buf body = AL_BUF_INIT;
    for (int i = 0; i < 6; i++)
        al_buf_printf(&body,
                      "{\"params\": {\"i\": %d}, \"spec\": {\"command\": [\"x\"], \"env\": "
                      "{\"FAKE\": \"stream:10\", \"FAKE_MS\": \"10\"}}}\n",
                      i);
    struct batch_options o = {.name = "capped", .max_parallel = 2, .retries = -1};
    char bid[STORE_BATCH_ID_SIZE];
    struct al_error *err = NULL;
    if (submit(f, &o, body.data, bid, &err) < 0)
        fail_msg("%s", al_error_message(err));
    record_batch_jobs(f, bid);
    assert_int_equal(f->n_batch_jobs, 6);

    /* a CI job submitted behind all six */
    const char *ci = "{\"name\": \"ci\", \"command\": [\"x\"], \"env\": {\"FAKE\": \"ok\"}}";
    struct job_spec *spec = NULL;
    assert_int_equal(job_spec_parse(ci, strlen(ci), 0, &spec, NULL), 0);
    assert_int_equal(engine_submit(f->engine, spec, NULL, f->ci_job, &err), 0);

    run_until_finished(f, 7);
    assert_int_equal(f->starts, 6);
    assert_int_equal(f->max_running, 2);
    /* the CI job took the third VM right away, before the batch's later jobs */
    assert_true(f->starts_at_ci >= 0);
    assert_true(f->starts_at_ci <= 2);

    struct store_batch b;
    assert_int_equal(store_batch_get(f->store, bid, &b, NULL), 0);
    assert_string_equal(b.name, "capped");
    assert_int_equal(b.total, 6);
    assert_int_equal(b.max_parallel, 2);
    assert_int_equal(b.by_state[JOB_STATE_SUCCEEDED], 6);
    store_batch_clear(&b);
    assert_int_equal(batches_running(f->batches, bid), 0);

    struct store_batch_job *rows = NULL;
    size_t n = 0;
    assert_int_equal(store_batch_jobs(f->store, bid, 2, 100, &rows, &n, NULL), 0);
    assert_int_equal(n, 4);
    assert_int_equal(rows[0].idx, 3);
    assert_string_equal(rows[0].name, "capped-3");
    assert_string_equal(rows[0].params, "{\"i\": 2}");
    assert_int_equal(rows[0].state, JOB_STATE_SUCCEEDED);
    assert_true(rows[0].has_exit_code);
    assert_int_equal(rows[0].exit_code, 0);
    assert_true(rows[0].started_ms > 0 && rows[0].ended_ms >= rows[0].started_ms);
    store_batch_jobs_free(rows, n);
}

static void test_refused_batch_stores_nothing(void **state)
{
    struct fixture *f = *state;
    struct batch_options o = {.name = "bad", .retries = -1};
    char bid[STORE_BATCH_ID_SIZE];
    struct al_error *err = NULL;
    /* parses, but line 2's pool does not exist: checked before storing */
    int r = submit(f, &o, "{\"command\": [\"a\"]}\n{\"command\": [\"b\"], \"pool\": \"nope\"}\n",
                   bid, &err);
    assert_int_equal(r, -ROUTE_ENOPOOL);
    assert_non_null(strstr(al_error_message(err), "line 2: pool: no pool named \"nope\""));
    al_error_free(err);
    struct store_batch *v = NULL;
    size_t n = 9;
    assert_int_equal(store_batch_list(f->store, 0, &v, &n, NULL), 0);
    assert_int_equal(n, 0);
    store_batches_free(v, n);
    struct store_job_page page = {0};
    assert_int_equal(store_job_list(f->store, NULL, &page, NULL), 0);
    assert_int_equal(page.n, 0);
    store_job_page_clear(&page);
    unsigned queued = 9, running = 9;
    engine_counts(f->engine, &queued, &running);
    assert_int_equal(queued + running, 0);
}

/* A failure after some jobs were queued (here: their directories cannot be
 * made) takes the whole batch back: no batch, no job, nothing queued. */
static void test_failure_midway_takes_everything_back(void **state)
{
    struct fixture *f = *state;
    char *jobs = al_path_join(f->dir, "jobs");
    char *aside = al_path_join(f->dir, "jobs.aside");
    rename(jobs, aside); /* may not exist yet */
    FILE *fp = fopen(jobs, "w");
    assert_non_null(fp);
    fclose(fp);
    struct batch_options o = {.name = "midway", .max_parallel = 1, .retries = -1};
    char bid[STORE_BATCH_ID_SIZE];
    struct al_error *err = NULL;
    int r = submit(f, &o, "{\"command\": [\"a\"]}\n{\"command\": [\"b\"]}\n", bid, &err);
    assert_true(r < 0);
    assert_non_null(strstr(al_error_message(err), "line 1: "));
    al_error_free(err);
    unlink(jobs);
    rename(aside, jobs);
    free(jobs);
    free(aside);
    /* let the engine's turn come: nothing may start */
    uint64_t deadline = al_now_mono_ms() + 100;
    while (al_now_mono_ms() < deadline)
        uv_run(&f->loop, UV_RUN_NOWAIT);
    unsigned queued = 9, running = 9;
    engine_counts(f->engine, &queued, &running);
    assert_int_equal(queued + running, 0);
    assert_int_equal(f->starts, 0);
    struct store_batch *v = NULL;
    size_t n = 9;
    assert_int_equal(store_batch_list(f->store, 0, &v, &n, NULL), 0);
    assert_int_equal(n, 0);
    store_batches_free(v, n);
    struct store_job_page page = {0};
    assert_int_equal(store_job_list(f->store, NULL, &page, NULL), 0);
    assert_int_equal(page.n, 0);
    store_job_page_clear(&page);
    /* and the store still takes the next batch */
    if (submit(f, &o, "{\"command\": [\"a\"], \"env\": {\"FAKE\": \"ok\"}}\n", bid, &err) < 0)
        fail_msg("%s", al_error_message(err));
    run_until_finished(f, 1);
}

static void test_cancel(void **state)
{
    struct fixture *f = *state;
    struct batch_options o = {.name = "hung", .max_parallel = 1, .retries = -1};
    char bid[STORE_BATCH_ID_SIZE];
    struct al_error *err = NULL;
    const char *body = "{\"command\": [\"a\"], \"env\": {\"FAKE\": \"hang\"}}\n"
                       "{\"command\": [\"a\"], \"env\": {\"FAKE\": \"hang\"}}\n"
                       "{\"command\": [\"a\"], \"env\": {\"FAKE\": \"hang\"}}\n";
    if (submit(f, &o, body, bid, &err) < 0)
        fail_msg("%s", al_error_message(err));
    /* let the first one start */
    uint64_t deadline = al_now_mono_ms() + 5000;
    while (batches_running(f->batches, bid) < 1 && al_now_mono_ms() < deadline)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(batches_running(f->batches, bid), 1);
    unsigned n = 0;
    assert_int_equal(batches_cancel(f->batches, bid, &n, &err), 0);
    assert_int_equal(n, 3);
    run_until_finished(f, 3);
    struct store_batch b;
    assert_int_equal(store_batch_get(f->store, bid, &b, NULL), 0);
    assert_int_equal(b.by_state[JOB_STATE_CANCELED], 3);
    assert_true(b.canceled_ms > 0);
    store_batch_clear(&b);
    assert_int_equal(batches_cancel(f->batches, "b0000000000000000000000", NULL, NULL), -ENOENT);
}

/* The cap holds across a restart: the new daemon rebuilds it from the store. */
static void test_cap_after_restart(void **state)
{
    struct fixture *f = *state;
    struct batch_options o = {.name = "restarted", .max_parallel = 1, .retries = -1};
    char bid[STORE_BATCH_ID_SIZE];
    struct al_error *err = NULL;
    const char *body = "{\"command\": [\"a\"], \"env\": {\"FAKE\": \"hang\"}}\n"
                       "{\"command\": [\"a\"], \"env\": {\"FAKE\": \"hang\"}}\n"
                       "{\"command\": [\"a\"], \"env\": {\"FAKE\": \"hang\"}}\n";
    if (submit(f, &o, body, bid, &err) < 0)
        fail_msg("%s", al_error_message(err));
    uint64_t deadline = al_now_mono_ms() + 5000;
    while (batches_running(f->batches, bid) < 1 && al_now_mono_ms() < deadline)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(batches_running(f->batches, bid), 1);

    /* stop: the running job ends (ERROR, no attempts left), two stay QUEUED */
    engine_unobserve(f->engine, f->watch);
    f->batches = batches_free(f->batches);
    f->stopped = false;
    engine_stop(f->engine, on_stopped, f);
    assert_true(test_run_until(&f->loop, &f->stopped, 5000));

    struct engine_params ep = {.loop = &f->loop,
                               .cfg = f->cfg,
                               .store = f->store,
                               .owner_id = "daemon:00000000000000000000000000000004"};
    assert_int_equal(engine_new(&ep, &f->engine, &err), 0);
    if (batches_new(f->engine, f->store, &f->batches, &err) < 0)
        fail_msg("%s", al_error_message(err));
    static const struct engine_observer obs = {.event = on_event, .finished = on_finished};
    f->watch = engine_observe(f->engine, &obs, f);
    f->reconciled = false;
    engine_start(f->engine, on_reconciled, f);
    assert_true(test_run_until(&f->loop, &f->reconciled, 5000));
    /* give the scheduler a few turns: one starts, the other waits */
    deadline = al_now_mono_ms() + 300;
    while (al_now_mono_ms() < deadline)
        uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_int_equal(batches_running(f->batches, bid), 1);
    unsigned queued = 0, running = 0;
    engine_counts(f->engine, &queued, &running);
    assert_int_equal(queued, 1);
    assert_int_equal(running, 1);
    unsigned n = 0;
    assert_int_equal(batches_cancel(f->batches, bid, &n, &err), 0);
    assert_int_equal(n, 2);
}

static void insert_job(struct fixture *f, char id[STORE_JOB_ID_SIZE])
{
    const char *doc = "{\"command\": [\"x\"], \"source\": {\"type\": \"http\", \"id\": \"q-1\"}}";
    struct job_spec *spec = NULL;
    assert_int_equal(job_spec_parse(doc, strlen(doc), 0, &spec, NULL), 0);
    assert_int_equal(job_spec_apply_defaults(spec, f->cfg, NULL), 0);
    assert_int_equal(store_job_insert(f->store, spec, id, NULL, NULL), 0);
    job_spec_free(spec);
}

static void test_tagged_jobs_from_a_queue(void **state)
{
    struct fixture *f = *state;
    char j1[STORE_JOB_ID_SIZE], j2[STORE_JOB_ID_SIZE], j3[STORE_JOB_ID_SIZE];
    char b1[STORE_BATCH_ID_SIZE], b2[STORE_BATCH_ID_SIZE], b3[STORE_BATCH_ID_SIZE];
    insert_job(f, j1);
    insert_job(f, j2);
    insert_job(f, j3);
    struct al_error *err = NULL;
    assert_int_equal(store_batch_tag(f->store, "queue-run", j1, "{\"task\": \"a\"}", b1, &err), 0);
    assert_int_equal(store_batch_tag(f->store, "queue-run", j2, NULL, b2, &err), 0);
    assert_int_equal(store_batch_tag(f->store, "other-run", j3, NULL, b3, &err), 0);
    /* the same name joins the same batch; another name makes another */
    assert_string_equal(b1, b2);
    assert_string_not_equal(b1, b3);
    struct store_batch b;
    assert_int_equal(store_batch_get(f->store, b1, &b, NULL), 0);
    assert_int_equal(b.total, 2);
    assert_int_equal(b.by_state[JOB_STATE_QUEUED], 2);
    store_batch_clear(&b);
    struct store_batch_job *rows = NULL;
    size_t n = 0;
    assert_int_equal(store_batch_jobs(f->store, b1, 0, 0, &rows, &n, NULL), 0);
    assert_int_equal(n, 2);
    assert_int_equal(rows[0].idx, 1);
    assert_string_equal(rows[0].job_id, j1);
    assert_string_equal(rows[0].params, "{\"task\": \"a\"}");
    assert_int_equal(rows[1].idx, 2);
    assert_string_equal(rows[1].job_id, j2);
    store_batch_jobs_free(rows, n);
    /* a submitted batch of the same name is not joined */
    char sub[STORE_BATCH_ID_SIZE];
    struct batch_options o = {.name = "queue-run", .retries = -1};
    assert_int_equal(
            submit(f, &o, "{\"command\": [\"a\"], \"env\": {\"FAKE\": \"ok\"}}\n", sub, &err), 0);
    char j4[STORE_JOB_ID_SIZE], b4[STORE_BATCH_ID_SIZE];
    insert_job(f, j4);
    assert_int_equal(store_batch_tag(f->store, "queue-run", j4, NULL, b4, &err), 0);
    assert_string_equal(b4, b1);
    run_until_finished(f, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_parse_lines),
            cmocka_unit_test(test_parse_refuses_whole_batch),
            cmocka_unit_test_setup_teardown(test_max_parallel_and_ci_job, setup, teardown),
            cmocka_unit_test_setup_teardown(test_refused_batch_stores_nothing, setup, teardown),
            cmocka_unit_test_setup_teardown(test_failure_midway_takes_everything_back, setup,
                                            teardown),
            cmocka_unit_test_setup_teardown(test_cancel, setup, teardown),
            cmocka_unit_test_setup_teardown(test_tagged_jobs_from_a_queue, setup, teardown),
            cmocka_unit_test_setup_teardown(test_cap_after_restart, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
