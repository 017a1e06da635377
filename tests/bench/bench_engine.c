/* Jobs per second through the whole engine with a no-op backend:
 * validation, submission (insert + event), admission, every persisted
 * transition (PROVISIONING, BOOTING, RUNNING, SUCCEEDED), the VM records,
 * log files and teardown; jobs arrive as they would at a daemon (at most 64
 * waiting at a time), and the peak RSS is that of a daemon with N jobs in
 * its history. With HOSTS > 1 the VMs are spread over that many fake libvirt
 * hosts of one pool (64 VMs in all), which the spread rule picks among for
 * every job. Usage: bench_engine [N [HOSTS]] (default 10000, 1). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <uv.h>

#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/engine/engine.h"
#include "fake_backend.h"

struct ctx {
    unsigned finished, succeeded;
};

static void on_finished(const char *job, enum job_state st, const struct attempt_result *r,
                        void *data)
{
    (void)job;
    (void)r;
    struct ctx *c = data;
    c->finished++;
    c->succeeded += st == JOB_STATE_SUCCEEDED;
}

int main(int argc, char **argv)
{
    unsigned n = argc > 1 ? (unsigned)strtoul(argv[1], NULL, 10) : 10000;
    char tmpl[] = "/tmp/agentlab-bench-engine-XXXXXX";
    if (!mkdtemp(tmpl))
        return 1;
    unsigned hosts = argc > 2 ? (unsigned)strtoul(argv[2], NULL, 10) : 1;
    if (hosts < 1 || hosts > 32) {
        fprintf(stderr, "HOSTS: 1..32 (a pool's backends)\n");
        return 1;
    }
    char conf[8192];
    int used = snprintf(conf, sizeof(conf),
                        "[agent]\nstate_dir = %s\nrun_dir = %s/run\nimage = micro\n"
                        "log_level = error\n",
                        tmpl, tmpl);
    for (unsigned h = 0; h < hosts; h++)
        used += snprintf(conf + used, sizeof(conf) - (size_t)used,
                         "[backend \"h%u\"]\nmax_vms = %u\n", h, 64 / hosts ? 64 / hosts : 1);
    struct al_error *err = NULL;
    struct config *cfg = NULL;
    fake_backend_write_image(tmpl, "micro");
    if (config_load_string(conf, strlen(conf), "bench", &cfg, &err) < 0) {
        fprintf(stderr, "setup: %s\n", al_error_message(err));
        return 1;
    }
    al_log_set_level(AL_LOG_ERROR);
    fake_backend_register();
    fake_backend_delay_ms = 0;
    char *db = al_path_join(tmpl, "agentlab.db");
    struct store *store = NULL;
    if (store_open(db, NULL, &store, &err) < 0) {
        fprintf(stderr, "%s\n", al_error_message(err));
        return 1;
    }
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct engine *e = NULL;
    struct engine_params ep = {.loop = &loop,
                               .cfg = cfg,
                               .store = store,
                               .owner_id = "daemon:00000000000000000000000000000000"};
    if (engine_new(&ep, &e, &err) < 0) {
        fprintf(stderr, "%s\n", al_error_message(err));
        return 1;
    }
    struct ctx c = {0};
    static const struct engine_observer obs = {.finished = on_finished};
    engine_observe(e, &obs, &c);
    engine_start(e, NULL, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);

    const char spec_json[] = "{\"command\":[\"true\"]}";
    uint64_t t0 = al_now_mono_us();
    for (unsigned i = 0; i < n; i++) {
        struct job_spec *spec = NULL;
        char id[STORE_JOB_ID_SIZE];
        if (job_spec_parse(spec_json, sizeof(spec_json) - 1, 0, &spec, &err) < 0 ||
            engine_submit(e, spec, NULL, id, &err) < 0) {
            fprintf(stderr, "submit: %s\n", al_error_message(err));
            return 1;
        }
        /* jobs arrive over time, as at a daemon: at most 64 are waiting */
        while (i + 1 - c.finished > 64)
            uv_run(&loop, UV_RUN_ONCE);
    }
    while (c.finished < n)
        uv_run(&loop, UV_RUN_ONCE);
    uint64_t t1 = al_now_mono_us();
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double secs = (double)(t1 - t0) / 1e6;
    double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                 (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    printf("engine: %u jobs (%u succeeded) in %.2f s = %.0f jobs/s wall, %.0f jobs per CPU-s; "
           "peak RSS %.1f MB with %u jobs in the history\n",
           n, c.succeeded, secs, n / secs, n / cpu, (double)ru.ru_maxrss / 1024.0, n);
    struct engine_backend_status st[32];
    size_t nb = engine_backends(e, st, 32);
    unsigned lo = ~0u, hi = 0;
    for (size_t i = 0; i < nb && i < 32; i++) {
        lo = st[i].jobs_started < lo ? st[i].jobs_started : lo;
        hi = st[i].jobs_started > hi ? st[i].jobs_started : hi;
    }
    printf("engine: %u hosts, attempts per host %u..%u\n", hosts, lo, hi);
    engine_stop(e, NULL, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    store_close(store);
    config_free(cfg);
    al_rm_rf(tmpl, &err);
    free(db);
    return c.succeeded == n ? 0 : 1;
}
