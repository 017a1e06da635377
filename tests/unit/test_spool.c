/* The spool source (runner/sources/spool.c) with the real engine and store
 * on the simulated hypervisor: a good file runs and is moved to accepted/
 * with the job's id, a bad one goes to rejected/ with its reason, partial
 * writes and temporary files are left alone, the concurrent cap holds files
 * back until jobs end, and a restart takes up what was dropped meanwhile
 * without submitting anything twice. */
#include "test_util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/engine/config.h"
#include "runner/engine/engine.h"
#include "runner/engine/store.h"
#include "runner/engine/store_batch.h"
#include "runner/sources/spool.h"
#include "fake_backend.h"

struct fixture {
    uv_loop_t loop;
    char *dir;
    char *spool;
    struct config *cfg;
    struct store *store;
    struct engine *engine;
    struct spool *sp;
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

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    uv_loop_init(&f->loop);
    f->dir = test_tmpdir("spool");
    f->spool = al_path_join(f->dir, "spool");
    unsetenv("AGENTLAB_STATE_DIR");
    unsetenv("AGENTLAB_RUN_DIR");
    char conf[2048];
    snprintf(conf, sizeof(conf),
             "[agent]\nstate_dir = %s\nrun_dir = %s/run\nlog_level = error\nmax_attempts = 1\n"
             "[backend \"local\"]\nmax_vms = 3\n"
             "[source \"sp\"]\ntype = spool\ndir = %s\nconcurrent = 1\npoll_interval = 1s\n",
             f->dir, f->dir, f->spool);
    struct al_error *err = NULL;
    if (config_load_string(conf, strlen(conf), "test.conf", &f->cfg, &err) < 0)
        fail_msg("config: %s", al_error_message(err));
    assert_int_equal(al_mkdir_p(f->spool, 0700, NULL), 0);
    fake_backend_write_image(f->dir, "debian-12");
    char *db = al_path_join(f->dir, "agentlab.db");
    assert_int_equal(store_open(db, NULL, &f->store, &err), 0);
    free(db);
    fake_backend_register();
    al_log_set_level(AL_LOG_ERROR);
    struct engine_params ep = {.loop = &f->loop,
                               .cfg = f->cfg,
                               .store = f->store,
                               .owner_id = "daemon:00000000000000000000000000000004"};
    assert_int_equal(engine_new(&ep, &f->engine, &err), 0);
    engine_start(f->engine, on_reconciled, f);
    assert_true(test_run_until(&f->loop, &f->reconciled, 5000));
    *state = f;
    return 0;
}

static void start_spool(struct fixture *f)
{
    struct al_error *err = NULL;
    if (spool_start(&f->loop, f->engine, &f->cfg->sources[0], &f->sp, &err) < 0)
        fail_msg("spool_start: %s", al_error_message(err));
}

static void stop_spool(struct fixture *f)
{
    if (!f->sp)
        return;
    f->stopped = false;
    spool_stop(f->sp, on_stopped, f);
    assert_true(test_run_until(&f->loop, &f->stopped, 5000));
    f->sp = NULL;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    stop_spool(f);
    f->stopped = false;
    engine_stop(f->engine, on_stopped, f);
    assert_true(test_run_until(&f->loop, &f->stopped, 5000));
    test_loop_close(&f->loop);
    store_close(f->store);
    config_free(f->cfg);
    test_tmpdir_remove(f->dir);
    free(f->spool);
    free(f);
    return 0;
}

static char *spool_path(struct fixture *f, const char *name)
{
    char *p = al_path_join(f->spool, name);
    assert_non_null(p);
    return p;
}

static void write_raw(const char *path, const char *text)
{
    FILE *fp = fopen(path, "we");
    assert_non_null(fp);
    fputs(text, fp);
    assert_int_equal(fclose(fp), 0);
}

/* Drops a file the way the header asks: written under a dot name, renamed in. */
static void drop(struct fixture *f, const char *name, const char *text)
{
    char tmp_name[256];
    snprintf(tmp_name, sizeof(tmp_name), ".%s.tmp", name);
    char *tmp = spool_path(f, tmp_name), *path = spool_path(f, name);
    write_raw(tmp, text);
    assert_int_equal(rename(tmp, path), 0);
    free(tmp);
    free(path);
}

static bool exists(struct fixture *f, const char *name)
{
    char *p = spool_path(f, name);
    bool r = access(p, F_OK) == 0;
    free(p);
    return r;
}

/* Runs the loop until spool/<name> exists or timeout_ms passes. */
static bool run_until_file(struct fixture *f, const char *name, unsigned timeout_ms)
{
    uint64_t end = al_now_mono_ms() + timeout_ms;
    while (!exists(f, name) && al_now_mono_ms() < end) {
        bool never = false;
        test_run_until(&f->loop, &never, 20);
    }
    return exists(f, name);
}

static char *read_text(struct fixture *f, const char *name)
{
    char *p = spool_path(f, name), *data = NULL;
    size_t len = 0;
    assert_int_equal(al_read_file(p, 4096, &data, &len, NULL), 0);
    free(p);
    return data;
}

/* The job id an accepted file's .id note names, and the job's state once
 * it is terminal (or the state at timeout_ms). */
static enum job_state wait_job(struct fixture *f, const char *id, unsigned timeout_ms)
{
    uint64_t end = al_now_mono_ms() + timeout_ms;
    for (;;) {
        struct store_job *sj = NULL;
        assert_int_equal(store_job_get(f->store, id, &sj, NULL), 0);
        enum job_state st = sj->state;
        assert_int_equal(sj->source_type, JOB_SOURCE_SPOOL);
        store_job_free(sj);
        if (job_state_is_terminal(st) || al_now_mono_ms() >= end)
            return st;
        bool never = false;
        test_run_until(&f->loop, &never, 20);
    }
}

static size_t spool_jobs(struct fixture *f)
{
    struct store_job_filter flt = {
            .state = JOB_STATE_NONE, .source = JOB_SOURCE_SPOOL, .limit = STORE_LIST_MAX};
    struct store_job_page page = {0};
    assert_int_equal(store_job_list(f->store, &flt, &page, NULL), 0);
    size_t n = page.n;
    store_job_page_clear(&page);
    return n;
}

static void test_good_file_runs(void **state)
{
    struct fixture *f = *state;
    start_spool(f);
    drop(f, "hello.json", "{\"name\": \"hello\", \"command\": [\"true\"]}");
    assert_true(run_until_file(f, "accepted/hello.json.id", 5000));
    assert_false(exists(f, "hello.json"));
    assert_true(exists(f, "accepted/hello.json"));
    char *id = read_text(f, "accepted/hello.json.id");
    id[strcspn(id, "\n")] = '\0';
    assert_int_equal(wait_job(f, id, 10000), JOB_STATE_SUCCEEDED);
    struct store_job *sj = NULL;
    assert_int_equal(store_job_get(f->store, id, &sj, NULL), 0);
    assert_string_equal(sj->source_ref, "hello.json");
    store_job_free(sj);
    free(id);
    assert_int_equal(spool_jobs(f), 1);
}

/* "batch" in a spool file: the jobs of one nightly run join one batch,
 * made with the first; another name makes another; a bad name is refused. */
static void test_batch_tag(void **state)
{
    struct fixture *f = *state;
    start_spool(f);
    drop(f, "a.json", "{\"command\": [\"true\"], \"batch\": \"nightly-2026-12-06\"}");
    assert_true(run_until_file(f, "accepted/a.json.id", 5000));
    drop(f, "b.json", "{\"command\": [\"true\"], \"batch\": \"nightly-2026-12-06\"}");
    drop(f, "c.json", "{\"command\": [\"true\"], \"batch\": \"other\"}");
    drop(f, "d.json", "{\"command\": [\"true\"], \"batch\": \"../x\"}");
    assert_true(run_until_file(f, "accepted/b.json.id", 5000));
    assert_true(run_until_file(f, "accepted/c.json.id", 5000));
    assert_true(run_until_file(f, "rejected/d.json.error", 5000));
    char *why = read_text(f, "rejected/d.json.error");
    assert_non_null(strstr(why, "batch"));
    free(why);

    struct store_batch *b = NULL;
    size_t n = 0;
    assert_int_equal(store_batch_list(f->store, 0, &b, &n, NULL), 0);
    assert_int_equal(n, 2);
    unsigned nightly = 0, other = 0;
    for (size_t i = 0; i < n; i++) {
        if (streq(b[i].name, "nightly-2026-12-06"))
            nightly = b[i].total;
        else if (streq(b[i].name, "other"))
            other = b[i].total;
    }
    assert_int_equal(nightly, 2);
    assert_int_equal(other, 1);
    store_batches_free(b, n);
}

static void test_bad_file_rejected(void **state)
{
    struct fixture *f = *state;
    start_spool(f);
    drop(f, "bad.json", "{\"command\": 42}");
    char *dir = spool_path(f, "dir.json");
    assert_int_equal(mkdir(dir, 0700), 0);
    free(dir);
    assert_true(run_until_file(f, "rejected/bad.json.error", 5000));
    assert_true(run_until_file(f, "rejected/dir.json.error", 5000));
    assert_true(exists(f, "rejected/bad.json"));
    assert_false(exists(f, "bad.json"));
    char *why = read_text(f, "rejected/bad.json.error");
    assert_non_null(strstr(why, "command"));
    assert_non_null(strchr(why, '\n'));
    free(why);
    why = read_text(f, "rejected/dir.json.error");
    assert_string_equal(why, "not a regular file\n");
    free(why);
    /* a job no pool takes is refused by routing, with the reason */
    drop(f, "lost.json", "{\"command\": [\"true\"], \"pool\": \"gpu\"}");
    assert_true(run_until_file(f, "rejected/lost.json.error", 5000));
    why = read_text(f, "rejected/lost.json.error");
    assert_string_equal(why, "pool: no pool named \"gpu\" (pools: default)\n");
    free(why);
    assert_int_equal(spool_jobs(f), 0);
}

/* Files still being written (dot names), other endings and temp files stay
 * where they are, untouched, through several scans. */
static void test_partial_files_ignored(void **state)
{
    struct fixture *f = *state;
    start_spool(f);
    static const char *const names[] = {".writing.json", "job.json.tmp", "notes.txt", ".json"};
    for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
        char *p = spool_path(f, names[i]);
        write_raw(p, "{\"command\": [");
        free(p);
    }
    bool never = false;
    test_run_until(&f->loop, &never, 2500);
    for (size_t i = 0; i < ARRAY_SIZE(names); i++)
        assert_true(exists(f, names[i]));
    assert_int_equal(spool_jobs(f), 0);
    /* the rename that finishes a write is picked up */
    char *from = spool_path(f, ".writing.json"), *to = spool_path(f, "writing.json");
    write_raw(from, "{\"command\": [\"true\"]}");
    assert_int_equal(rename(from, to), 0);
    free(from);
    free(to);
    assert_true(run_until_file(f, "accepted/writing.json.id", 5000));
    assert_int_equal(spool_jobs(f), 1);
}

/* concurrent = 1: the second file waits as a file until the first job ends. */
static void test_concurrent_cap(void **state)
{
    struct fixture *f = *state;
    start_spool(f);
    drop(f, "first.json", "{\"command\": [\"true\"], \"env\": {\"FAKE\": \"hang\"}}");
    assert_true(run_until_file(f, "accepted/first.json.id", 5000));
    drop(f, "second.json", "{\"command\": [\"true\"]}");
    bool never = false;
    test_run_until(&f->loop, &never, 1500);
    assert_true(exists(f, "second.json"));
    assert_int_equal(spool_jobs(f), 1);
    char *id = read_text(f, "accepted/first.json.id");
    id[strcspn(id, "\n")] = '\0';
    assert_int_equal(engine_cancel(f->engine, id, NULL), 0);
    assert_int_equal(wait_job(f, id, 5000), JOB_STATE_CANCELED);
    free(id);
    assert_true(run_until_file(f, "accepted/second.json.id", 5000));
    assert_false(exists(f, "second.json"));
}

/* A restart takes up what was dropped while the source was down and does
 * not submit accepted or rejected files again. */
static void test_restart_resumes(void **state)
{
    struct fixture *f = *state;
    start_spool(f);
    drop(f, "one.json", "{\"command\": [\"true\"]}");
    drop(f, "broken.json", "not json");
    assert_true(run_until_file(f, "accepted/one.json.id", 5000));
    assert_true(run_until_file(f, "rejected/broken.json.error", 5000));
    char *id = read_text(f, "accepted/one.json.id");
    id[strcspn(id, "\n")] = '\0';
    assert_int_equal(wait_job(f, id, 10000), JOB_STATE_SUCCEEDED);
    free(id);
    stop_spool(f);

    drop(f, "two.json", "{\"command\": [\"true\"]}");
    bool never = false;
    test_run_until(&f->loop, &never, 300);
    assert_true(exists(f, "two.json"));
    start_spool(f);
    assert_true(run_until_file(f, "accepted/two.json.id", 5000));
    test_run_until(&f->loop, &never, 1500);
    assert_int_equal(spool_jobs(f), 2);
    assert_true(exists(f, "accepted/one.json"));
    assert_true(exists(f, "rejected/broken.json"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_good_file_runs, setup, teardown),
            cmocka_unit_test_setup_teardown(test_batch_tag, setup, teardown),
            cmocka_unit_test_setup_teardown(test_bad_file_rejected, setup, teardown),
            cmocka_unit_test_setup_teardown(test_partial_files_ignored, setup, teardown),
            cmocka_unit_test_setup_teardown(test_concurrent_cap, setup, teardown),
            cmocka_unit_test_setup_teardown(test_restart_resumes, setup, teardown),
    };
    return test_exit_status(cmocka_run_group_tests(tests, NULL, NULL));
}
