/* bench_store: job-state persistence throughput.
 *
 * Inserts N jobs and walks each through QUEUED -> PROVISIONING -> BOOTING ->
 * RUNNING -> SUCCEEDED, one store transaction per step, the way the daemon's
 * loop thread does. Prints jobs/s, per-call latency percentiles, the cost of
 * reopening (and checking) the resulting database, and peak RSS.
 *
 *   bench_store [--jobs N] [--dir DIR] [--sync-full] [--sync-ms MS]
 *
 * --sync-full   synchronous=FULL: fsync on every commit
 * --sync-ms     a second thread calls store_sync() every MS milliseconds,
 *               as the daemon's worker does (default 1000; 0 = never, so
 *               only SQLite's backstop checkpoints run, on the loop thread)
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "runner/base/util.h"
#include "runner/engine/config.h"
#include "runner/engine/spec.h"
#include "runner/engine/store.h"

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void print_latency(const char *what, uint32_t *us, size_t n)
{
    if (!n)
        return;
    qsort(us, n, sizeof(*us), cmp_u32);
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += us[i];
    printf("  %-11s n=%-6zu mean %6.1f us  p50 %5" PRIu32 " us  p99 %6" PRIu32 " us  max %6" PRIu32
           " us\n",
           what, n, (double)sum / n, us[n / 2], us[n * 99 / 100], us[n - 1]);
}

struct syncer {
    struct store *store;
    unsigned interval_ms;
    atomic_bool stop;
    unsigned calls;
    uint64_t total_us, max_us;
};

/* The daemon's periodic store_sync() on a worker thread. */
static void *sync_thread(void *arg)
{
    struct syncer *y = arg;
    while (!atomic_load(&y->stop)) {
        struct timespec ts = {.tv_sec = y->interval_ms / 1000,
                              .tv_nsec = (long)(y->interval_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
        uint64_t a = al_now_mono_us();
        struct al_error *err = NULL;
        if (store_sync(y->store, &err) < 0) {
            fprintf(stderr, "bench_store: sync: %s\n", al_error_message(err));
            al_error_free(err);
        }
        uint64_t d = al_now_mono_us() - a;
        y->calls++;
        y->total_us += d;
        if (d > y->max_us)
            y->max_us = d;
    }
    return NULL;
}

static void die(const char *what, struct al_error *err)
{
    fprintf(stderr, "bench_store: %s: %s\n", what, al_error_message(err));
    exit(1);
}

int main(int argc, char **argv)
{
    int jobs = 10000, sync_ms = 1000;
    const char *dir = NULL;
    struct store_options opts = {0};
    for (int i = 1; i < argc; i++) {
        if (streq(argv[i], "--jobs") && i + 1 < argc) {
            if (al_parse_int(argv[++i], 1, 10000000, &jobs) < 0)
                return 2;
        } else if (streq(argv[i], "--sync-ms") && i + 1 < argc) {
            if (al_parse_int(argv[++i], 0, 60000, &sync_ms) < 0)
                return 2;
        } else if (streq(argv[i], "--dir") && i + 1 < argc) {
            dir = argv[++i];
        } else if (streq(argv[i], "--sync-full")) {
            opts.sync_full = true;
        } else {
            fprintf(stderr, "usage: bench_store [--jobs N] [--dir DIR] [--sync-full] "
                            "[--sync-ms MS]\n");
            return 2;
        }
    }
    char tmpl[] = "/var/tmp/agentlab-bench-XXXXXX";
    if (!dir && !(dir = mkdtemp(tmpl))) {
        perror("mkdtemp");
        return 1;
    }
    _cleanup_free_ char *path = al_path_join(dir, "agentlab.db");

    struct al_error *err = NULL;
    struct config *cfg = NULL;
    if (config_load_string("", 0, "bench", &cfg, &err) < 0)
        die("config", err);
    static const char doc[] =
            "{\"name\":\"bench job\",\"image\":\"debian-12\",\"command\":[\"/bin/sh\",\"-c\","
            "\"make -j2 check\"],\"env\":{\"CI\":\"true\",\"LANG\":\"C.UTF-8\"},"
            "\"secret_env\":{\"TOKEN\":\"bench-secret-token\"},\"labels\":[\"x86_64\",\"bench\"],"
            "\"artifacts\":[\"out/report.xml\"],\"source\":{\"type\":\"api\",\"id\":\"bench\"}}";
    struct job_spec *spec = NULL;
    if (job_spec_parse(doc, strlen(doc), 0, &spec, &err) < 0 ||
        job_spec_apply_defaults(spec, cfg, &err) < 0 || job_spec_register_secrets(spec, &err) < 0)
        die("spec", err);

    struct store *s = NULL;
    if (store_open(path, &opts, &s, &err) < 0)
        die("open", err);

    uint32_t *ins_us = calloc((size_t)jobs, sizeof(uint32_t));
    uint32_t *tr_us = calloc((size_t)jobs * 4, sizeof(uint32_t));
    if (!ins_us || !tr_us)
        return 1;
    static const enum job_state walk[] = {JOB_STATE_PROVISIONING, JOB_STATE_BOOTING,
                                          JOB_STATE_RUNNING, JOB_STATE_SUCCEEDED};
    size_t n_tr = 0;
    struct syncer y = {.store = s, .interval_ms = (unsigned)sync_ms};
    pthread_t tid;
    if (sync_ms && pthread_create(&tid, NULL, sync_thread, &y) != 0)
        return 1;
    struct rusage cpu0, cpu1;
    getrusage(RUSAGE_THREAD, &cpu0);
    uint64_t t0 = al_now_mono_us();
    for (int i = 0; i < jobs; i++) {
        char id[STORE_JOB_ID_SIZE];
        uint64_t a = al_now_mono_us();
        if (store_job_insert(s, spec, id, NULL, &err) < 0)
            die("insert", err);
        ins_us[i] = (uint32_t)(al_now_mono_us() - a);
        for (size_t k = 0; k < 4; k++) {
            struct store_transition t = {.to = walk[k], .detail = "bench"};
            if (walk[k] == JOB_STATE_SUCCEEDED)
                t = (struct store_transition){
                        .to = walk[k], .detail = "exit 0", .has_exit_code = true};
            a = al_now_mono_us();
            if (store_job_transition(s, id, &t, NULL, &err) < 0)
                die("transition", err);
            tr_us[n_tr++] = (uint32_t)(al_now_mono_us() - a);
        }
    }
    double secs = (double)(al_now_mono_us() - t0) / 1e6;
    getrusage(RUSAGE_THREAD, &cpu1);
    double cpu = (double)(cpu1.ru_utime.tv_sec - cpu0.ru_utime.tv_sec) +
                 (double)(cpu1.ru_stime.tv_sec - cpu0.ru_stime.tv_sec) +
                 (double)(cpu1.ru_utime.tv_usec - cpu0.ru_utime.tv_usec) / 1e6 +
                 (double)(cpu1.ru_stime.tv_usec - cpu0.ru_stime.tv_usec) / 1e6;
    if (sync_ms) {
        atomic_store(&y.stop, true);
        pthread_join(tid, NULL);
    }

    printf("bench_store: %d jobs, 5 commits each (insert + 4 transitions), synchronous=%s\n", jobs,
           opts.sync_full ? "FULL" : "NORMAL");
    if (sync_ms)
        printf("  store_sync  every %d ms on a second thread: %u calls, mean %.1f ms, max %.1f "
               "ms\n",
               sync_ms, y.calls, y.calls ? y.total_us / 1000.0 / y.calls : 0.0, y.max_us / 1000.0);
    else
        printf("  store_sync  never called: SQLite's backstop checkpoints run on this thread\n");
    printf("  throughput  %.0f jobs/s (%.0f commits/s), %.2f s\n", jobs / secs, jobs * 5 / secs,
           secs);
    printf("  cpu         %.2f s on this thread (user+sys): %.0f jobs per CPU-second; the rest "
           "of the wall time it waited for a CPU or the disk\n",
           cpu, jobs / cpu);
    print_latency("insert", ins_us, (size_t)jobs);
    print_latency("transition", tr_us, n_tr);

    /* a page of the newest 50, as `job ls` would ask for */
    struct store_job_filter f = {.state = JOB_STATE_NONE, .limit = 50};
    struct store_job_page page = {0};
    uint64_t a = al_now_mono_us();
    if (store_job_list(s, &f, &page, &err) < 0)
        die("list", err);
    printf("  list 50     %" PRIu64 " us\n", al_now_mono_us() - a);
    store_job_page_clear(&page);

    s = store_close(s);
    a = al_now_mono_us();
    if (store_open(path, &opts, &s, &err) < 0)
        die("reopen", err);
    printf("  reopen      %.1f ms (includes quick_check of %d jobs of history)\n",
           (al_now_mono_us() - a) / 1000.0, jobs);
    a = al_now_mono_us();
    if (store_integrity_check(s, &err) < 0)
        die("integrity", err);
    printf("  integrity   %.1f ms\n", (al_now_mono_us() - a) / 1000.0);
    s = store_close(s);

    struct stat st;
    if (stat(path, &st) == 0)
        printf("  database    %.1f MiB (%s)\n", st.st_size / 1048576.0, path);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("  peak RSS    %.1f MiB\n", ru.ru_maxrss / 1024.0);

    job_spec_unregister_secrets(spec);
    job_spec_free(spec);
    config_free(cfg);
    free(ins_us);
    free(tr_us);
    return 0;
}
