/* Warm pools on real libvirt + QEMU (the micro image): with warm = 1 a job's
 * first output arrives in well under a second after submission, and every
 * job still gets a VM that has never run anything else (a boot of its own).
 * Prints the latency of each job and the median. Needs AGENTLAB_TEST_STATE
 * (with images/micro). */
#include "test_util.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runner/engine/attempt.h"
#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/engine/engine.h"
#include "runner/loop/virt_uv.h"

#define RUNS        10
#define BOOT_ID_LEN 36

struct ctx {
    uv_loop_t loop;
    struct engine *engine;
    char job[STORE_JOB_ID_SIZE];
    uint64_t submitted_us;
    uint64_t first_output_us;
    bool finished;
    enum job_state state;
    char out[4096];
    size_t out_len;
    bool stopped;
    char vm[160];
};

static void on_output(const char *job, enum vm_stream s, const char *buf, size_t len, void *data)
{
    (void)s;
    struct ctx *c = data;
    if (!streq(job, c->job))
        return;
    if (!c->first_output_us)
        c->first_output_us = al_now_mono_us();
    if (c->out_len + len < sizeof(c->out)) {
        memcpy(c->out + c->out_len, buf, len);
        c->out_len += len;
    }
}

static void on_finished(const char *job, enum job_state st, const struct attempt_result *r,
                        void *data)
{
    struct ctx *c = data;
    if (!streq(job, c->job))
        return;
    c->state = st;
    if (r)
        snprintf(c->vm, sizeof(c->vm), "%s", r->vm_name);
    c->finished = true;
}

static bool warm_ready(struct ctx *c)
{
    unsigned ready = 0;
    engine_warm_counts(c->engine, NULL, &ready, NULL);
    return ready >= 1;
}

/* Copies the boot id the job printed ("boot_id=" and 36 characters of a
 * UUID) into ret_id, or fails the test. */
static void boot_id_from(const char *out, char ret_id[BOOT_ID_LEN + 1])
{
    const char *p = strstr(out, "boot_id=");
    if (!p)
        fail_msg("no boot id in the job's output: %s", out);
    p += strlen("boot_id=");
    for (size_t k = 0; k < BOOT_ID_LEN; k++) {
        bool dash = k == 8 || k == 13 || k == 18 || k == 23;
        if (dash ? p[k] != '-' : !isxdigit((unsigned char)p[k]))
            fail_msg("not a boot id in the job's output: %s", out);
    }
    memcpy(ret_id, p, BOOT_ID_LEN);
    ret_id[BOOT_ID_LEN] = '\0';
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void on_stopped(void *data)
{
    struct ctx *c = data;
    c->stopped = true;
    al_virt_event_shutdown();
}

static void test_warm_pool(void **state)
{
    (void)state;
    char *dir = test_micro_tmpdir("warm");
    char conf[1024];
    snprintf(conf, sizeof(conf),
             "[agent]\nstate_dir = %s/state\nrun_dir = %s/run\nimage = micro\nlog_level = warn\n"
             "boot_timeout = 20m\n"
             "[backend \"local\"]\nmax_vms = 2\n[pool \"default\"]\nwarm = 1\n",
             dir, dir);
    struct al_error *err = NULL;
    struct config *cfg = NULL;
    assert_int_equal(config_load_string(conf, strlen(conf), "warm.conf", &cfg, &err), 0);
    char *db = NULL;
    assert_true(asprintf(&db, "%s/state/agentlab.db", dir) > 0);
    struct store *store = NULL;
    assert_int_equal(store_open(db, NULL, &store, &err), 0);

    struct ctx c = {0};
    uv_loop_init(&c.loop);
    assert_int_equal(al_virt_event_register(&c.loop, &err), 0);
    struct engine_params ep = {.loop = &c.loop,
                               .cfg = cfg,
                               .store = store,
                               .owner_id = "daemon:0000000000000000000000000000aaaa"};
    if (engine_new(&ep, &c.engine, &err) < 0)
        fail_msg("engine: %s", al_error_message(err));
    static const struct engine_observer obs = {.output = on_output, .finished = on_finished};
    engine_observe(c.engine, &obs, &c);
    engine_start(c.engine, NULL, NULL);

    uint64_t lat[RUNS];
    char vms[RUNS][160];
    char boots[RUNS][BOOT_ID_LEN + 1];
    for (int i = 0; i < RUNS; i++) {
        /* a warm VM is booted and waiting */
        uint64_t end = al_now_mono_ms() + 180000;
        while (!warm_ready(&c) && al_now_mono_ms() < end)
            uv_run(&c.loop, UV_RUN_ONCE);
        assert_true(warm_ready(&c));
        /* The job proves its VM is fresh by the kernel's boot id: a VM that
         * ran an earlier job still has that job's boot id, whatever files
         * the job left or removed. A marker file in the home directory would
         * prove less: the micro image has no disk, so nothing but the
         * running kernel carries state from one job to the next. */
        const char spec_json[] = "{\"command\":[\"sh\",\"-c\",\"echo first line; "
                                 "echo boot_id=$(cat /proc/sys/kernel/random/boot_id)\"]}";
        struct job_spec *spec = NULL;
        assert_int_equal(job_spec_parse(spec_json, sizeof(spec_json) - 1, 0, &spec, &err), 0);
        c.first_output_us = 0;
        c.finished = false;
        c.out_len = 0;
        c.submitted_us = al_now_mono_us();
        assert_int_equal(engine_submit(c.engine, spec, NULL, c.job, &err), 0);
        assert_true(test_run_until(&c.loop, &c.finished, 120000));
        c.out[c.out_len] = '\0';
        if (c.state != JOB_STATE_SUCCEEDED)
            fail_msg("job %d ended %s: %s", i, job_state_to_string(c.state), c.out);
        assert_non_null(strstr(c.out, "first line"));
        boot_id_from(c.out, boots[i]);
        lat[i] = (c.first_output_us - c.submitted_us) / 1000;
        snprintf(vms[i], sizeof(vms[i]), "%s", c.vm);
        for (int k = 0; k < i; k++) {
            assert_string_not_equal(vms[k], vms[i]); /* never the same VM twice */
            if (streq(boots[k], boots[i]))
                fail_msg("job %d ran in the boot of job %d (boot id %s): a reused VM", i, k,
                         boots[i]);
        }
        fprintf(stderr, "job %d on %s: first output %llu ms after submit\n", i, c.vm,
                (unsigned long long)lat[i]);
    }
    qsort(lat, RUNS, sizeof(lat[0]), cmp_u64);
    uint64_t median = (lat[RUNS / 2 - 1] + lat[RUNS / 2]) / 2;
    fprintf(stderr, "warm pool: median %llu ms, min %llu, max %llu (submit -> first output)\n",
            (unsigned long long)median, (unsigned long long)lat[0],
            (unsigned long long)lat[RUNS - 1]);
    assert_true(median < 1000);

    engine_stop(c.engine, on_stopped, &c);
    assert_true(test_run_until(&c.loop, &c.stopped, 60000));
    test_loop_close(&c.loop);
    store_close(store);
    config_free(cfg);
    free(db);
    test_destroy_storage_pools(dir);
    test_tmpdir_remove(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_warm_pool)};
    return test_exit_status(cmocka_run_group_tests(tests, NULL, NULL));
}
