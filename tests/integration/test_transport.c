/* The libvirt backend's remote transport on real libvirt + QEMU (the micro
 * image), forced with transport = remote on the local qemu:///system: the
 * guest channel and the console are libvirt streams and the seed is a
 * volume of the storage pool, as for a host that shares no filesystem with
 * agentlabd. A job's output arrives live and in order, its exit code and
 * artifact come back, the console log fills (the boot watchdog sees the
 * kernel), and teardown leaves no domain and no volume. The same job runs
 * with transport = local for comparison, and each job's queued -> first
 * output latency is printed (AL_TRANSPORT_RUNS jobs of each, default 1,
 * medians). Needs AGENTLAB_TEST_STATE (with images/micro). */
#include "test_util.h"

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "provision/domain_xml.h"
#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/engine/attempt.h"
#include "runner/engine/engine.h"
#include "runner/loop/virt_uv.h"

#define MAX_RUNS   9
#define ART_BYTES  100000
#define LINE_GAP_S 2

/* one loop for the process: libvirt's event implementation cannot move */
static uv_loop_t loop;

struct ctx {
    struct engine *engine;
    const char *dir;
    bool remote;
    virConnectPtr probe; /* our own connection, to look at the domain */
    char job[STORE_JOB_ID_SIZE];
    char vm[160];
    uint64_t submitted_us;
    uint64_t first_output_us;
    uint64_t line1_us, line3_us, finished_us;
    bool finished;
    enum job_state state;
    int exit_code;
    uint64_t ms_provision, ms_start;
    char art_sha[65];
    uint64_t art_size;
    size_t art_files;
    char out[8192];
    size_t out_len;
    bool looked; /* the domain and the console were checked while running */
    bool stopped;
};

static void quiet(void *d, virErrorPtr e)
{
    (void)d;
    (void)e;
}

/* A kernel on the console, as the boot watchdog reads it: its banner or a
 * printk time stamp at the start of a line. */
static bool shows_kernel(const char *text)
{
    if (strstr(text, "Linux version "))
        return true;
    for (const char *p = strchr(text, '['); p; p = strchr(p + 1, '[')) {
        if (p != text && p[-1] != '\n')
            continue;
        const char *q = p + 1;
        while (*q == ' ')
            q++;
        const char *d = q;
        while (*q >= '0' && *q <= '9')
            q++;
        if (q > d && *q == '.')
            return true;
    }
    return false;
}

/* While the job runs: the domain is built for the transport asked for, and
 * the console log on this host shows the kernel. */
static void look_at_vm(struct ctx *c)
{
    c->looked = true;
    virDomainPtr dom = virDomainLookupByName(c->probe, c->vm);
    if (!dom)
        fail_msg("domain %s not found while its job runs", c->vm);
    char *xml = virDomainGetXMLDesc(dom, 0);
    assert_non_null(xml);
    if (c->remote) {
        /* nothing of this host's run dir: libvirt's socket, no virtlogd
         * file, the seed from the pool */
        if (strstr(xml, c->dir) && !strstr(xml, "/state/pools/"))
            fail_msg("a remote domain names a path of the run dir:\n%s", xml);
        assert_null(strstr(xml, "job.sock"));
        assert_null(strstr(xml, "<log file"));
        assert_non_null(strstr(xml, AL_SEED_VOL_SUFFIX "'"));
    } else {
        assert_non_null(strstr(xml, "job.sock"));
        assert_non_null(strstr(xml, "console.log"));
    }
    free(xml);
    virDomainFree(dom);

    char *log = NULL;
    assert_true(asprintf(&log, "%s/run/vms/%s/console.log", c->dir, c->vm) > 0);
    char *text = NULL;
    size_t len = 0;
    struct al_error *err = NULL;
    if (al_read_file(log, 8u << 20, &text, &len, &err) < 0)
        fail_msg("console log: %s", al_error_message(err));
    fprintf(stderr, "%s console log: %zu bytes while the job runs\n",
            c->remote ? "remote" : "local", len);
    if (!shows_kernel(text))
        fail_msg("no kernel on the console log %s:\n%s", log, text);
    free(text);
    free(log);
}

static void on_output(const char *job, enum vm_stream s, const char *buf, size_t len, void *data)
{
    (void)s;
    struct ctx *c = data;
    if (!streq(job, c->job))
        return;
    uint64_t now = al_now_mono_us();
    if (!c->first_output_us)
        c->first_output_us = now;
    if (c->out_len + len < sizeof(c->out)) {
        memcpy(c->out + c->out_len, buf, len);
        c->out_len += len;
        c->out[c->out_len] = '\0';
    }
    if (!c->line1_us && strstr(c->out, "line1\n"))
        c->line1_us = now;
    if (!c->line3_us && strstr(c->out, "line3\n"))
        c->line3_us = now;
    if (!c->looked)
        look_at_vm(c);
}

static void on_finished(const char *job, enum job_state st, const struct attempt_result *r,
                        void *data)
{
    struct ctx *c = data;
    if (!streq(job, c->job))
        return;
    c->finished_us = al_now_mono_us();
    c->state = st;
    if (r) {
        c->exit_code = r->exit_code;
        c->ms_provision = r->ms_provision;
        c->ms_start = r->ms_start;
        c->art_files = r->artifact_files.n;
        if (r->artifact_files.n) {
            snprintf(c->art_sha, sizeof(c->art_sha), "%s", r->artifact_files.v[0].sha256);
            c->art_size = r->artifact_files.v[0].size;
        }
    }
    c->finished = true;
}

static void on_stopped(void *data)
{
    struct ctx *c = data;
    c->stopped = true;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* After the engine stopped: no domain of ours and no volume (overlay or
 * seed) of the job's VM in any pool. */
static void assert_nothing_left(struct ctx *c, const char *vm)
{
    virDomainPtr dom = virDomainLookupByName(c->probe, vm);
    if (dom) {
        virDomainFree(dom);
        fail_msg("domain %s outlived its job", vm);
    }
    virStoragePoolPtr *pools = NULL;
    int np = virConnectListAllStoragePools(c->probe, &pools, VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE);
    assert_true(np >= 0);
    for (int i = 0; i < np; i++) {
        virStoragePoolRefresh(pools[i], 0);
        virStorageVolPtr *vols = NULL;
        int nv = virStoragePoolListAllVolumes(pools[i], &vols, 0);
        for (int k = 0; k < nv; k++) {
            const char *name = virStorageVolGetName(vols[k]);
            if (strncmp(name, vm, strlen(vm)) == 0)
                fail_msg("volume %s of pool %s outlived its job", name,
                         virStoragePoolGetName(pools[i]));
            virStorageVolFree(vols[k]);
        }
        free(vols);
        virStoragePoolFree(pools[i]);
    }
    free(pools);
}

/* Runs n jobs one after another with the given transport; fills lat_ms. */
static void run_jobs(const char *dir, bool remote, int n, uint64_t *lat_ms)
{
    char conf[1024];
    snprintf(conf, sizeof(conf),
             "[agent]\nstate_dir = %s/state\nrun_dir = %s/run\nimage = micro\nlog_level = warn\n"
             "boot_timeout = 10m\n"
             "[backend \"local\"]\nmax_vms = 1\ntransport = %s\n",
             dir, dir, remote ? "remote" : "local");
    struct al_error *err = NULL;
    struct config *cfg = NULL;
    assert_int_equal(config_load_string(conf, strlen(conf), "transport.conf", &cfg, &err), 0);
    char *db = NULL;
    assert_true(asprintf(&db, "%s/state/agentlab.db", dir) > 0);
    struct store *store = NULL;
    assert_int_equal(store_open(db, NULL, &store, &err), 0);

    struct ctx c = {.dir = dir, .remote = remote};
    virSetErrorFunc(NULL, quiet);
    c.probe = virConnectOpen("qemu:///system");
    assert_non_null(c.probe);
    struct engine_params ep = {.loop = &loop,
                               .cfg = cfg,
                               .store = store,
                               .owner_id = "daemon:0000000000000000000000000000bbbb"};
    if (engine_new(&ep, &c.engine, &err) < 0)
        fail_msg("engine: %s", al_error_message(err));
    static const struct engine_observer obs = {.output = on_output, .finished = on_finished};
    engine_observe(c.engine, &obs, &c);
    engine_start(c.engine, NULL, NULL);

    char vms[MAX_RUNS][160];
    for (int i = 0; i < n; i++) {
        static const char spec_json[] =
                "{\"command\":[\"sh\",\"-c\",\"echo line1; sleep 2; echo line2; sleep 1; "
                "echo line3; head -c 100000 /dev/urandom > art.bin; "
                "echo sha=$(sha256sum art.bin); exit 3\"],\"artifacts\":[\"art.bin\"]}";
        struct job_spec *spec = NULL;
        assert_int_equal(job_spec_parse(spec_json, sizeof(spec_json) - 1, 0, &spec, &err), 0);
        c.first_output_us = c.line1_us = c.line3_us = c.finished_us = 0;
        c.finished = c.looked = false;
        c.out_len = 0;
        c.out[0] = '\0';
        c.art_files = 0;
        c.submitted_us = al_now_mono_us();
        assert_int_equal(engine_submit(c.engine, spec, NULL, c.job, &err), 0);
        snprintf(c.vm, sizeof(c.vm), AL_DOMAIN_PREFIX "%s-1", c.job);
        snprintf(vms[i], sizeof(vms[i]), "%s", c.vm);
        assert_true(test_run_until(&loop, &c.finished, 300000));
        if (c.state != JOB_STATE_FAILED || c.exit_code != 3)
            fail_msg("job ended %s (exit %d), want FAILED with 3: %s", job_state_to_string(c.state),
                     c.exit_code, c.out);
        /* every line, in order */
        const char *l1 = strstr(c.out, "line1\n"), *l2 = strstr(c.out, "line2\n"),
                   *l3 = strstr(c.out, "line3\n");
        if (!l1 || !l2 || !l3 || !(l1 < l2 && l2 < l3))
            fail_msg("lines missing or out of order: %s", c.out);
        assert_true(c.looked);
        /* live: the first line came seconds before the last and the end */
        uint64_t gap = (c.line3_us - c.line1_us) / 1000;
        uint64_t before_end = (c.finished_us - c.line1_us) / 1000;
        if (gap < (LINE_GAP_S + 1) * 1000 - 500 || before_end < gap)
            fail_msg("output not live: line1 -> line3 %llu ms, line1 -> end %llu ms",
                     (unsigned long long)gap, (unsigned long long)before_end);
        /* the artifact came back whole */
        const char *sha = strstr(c.out, "sha=");
        assert_non_null(sha);
        assert_int_equal(c.art_files, 1);
        assert_int_equal(c.art_size, ART_BYTES);
        if (strncmp(sha + 4, c.art_sha, 64) != 0)
            fail_msg("artifact sha256 %s, the guest's %.64s", c.art_sha, sha + 4);
        lat_ms[i] = (c.first_output_us - c.submitted_us) / 1000;
        fprintf(stderr,
                "transport %s job %d: queued -> first output %llu ms (provision %llu ms, start "
                "%llu ms), line1 -> line3 %llu ms\n",
                remote ? "remote" : "local", i, (unsigned long long)lat_ms[i],
                (unsigned long long)c.ms_provision, (unsigned long long)c.ms_start,
                (unsigned long long)gap);
    }

    engine_stop(c.engine, on_stopped, &c);
    assert_true(test_run_until(&loop, &c.stopped, 120000));
    for (int i = 0; i < n; i++)
        assert_nothing_left(&c, vms[i]);
    virConnectClose(c.probe);
    store_close(store);
    config_free(cfg);
    free(db);
}

static uint64_t median(uint64_t *v, int n)
{
    qsort(v, (size_t)n, sizeof(v[0]), cmp_u64);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void test_remote_transport(void **state)
{
    (void)state;
    int runs = 1;
    const char *e = getenv("AL_TRANSPORT_RUNS");
    if (e && (al_parse_int(e, 1, MAX_RUNS, &runs) < 0))
        fail_msg("AL_TRANSPORT_RUNS must be 1 to %d", MAX_RUNS);
    char *dir = test_micro_tmpdir("transport");
    /* a kernel that is not quiet: a quiet one may print nothing at all, and
     * the console checks need lines in both transports */
    char *cmd = NULL;
    assert_true(asprintf(&cmd,
                         "sed -i 's/\"console=ttyS0 quiet /\"console=ttyS0 /' "
                         "'%s/state/images/micro/manifest.json'",
                         dir) > 0);
    assert_int_equal(system(cmd), 0);
    free(cmd);
    struct al_error *err = NULL;
    uv_loop_init(&loop);
    assert_int_equal(al_virt_event_register(&loop, &err), 0);
    uint64_t remote[MAX_RUNS], local[MAX_RUNS];
    /* alternating, so that a busy moment of the host weighs on both */
    for (int i = 0; i < runs; i++) {
        run_jobs(dir, true, 1, &remote[i]);
        run_jobs(dir, false, 1, &local[i]);
    }
    fprintf(stderr, "queued -> first output, median of %d: local %llu ms, remote %llu ms\n", runs,
            (unsigned long long)median(local, runs), (unsigned long long)median(remote, runs));
    al_virt_event_shutdown();
    test_loop_close(&loop);
    test_destroy_storage_pools(dir);
    test_tmpdir_remove(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_remote_transport)};
    return test_exit_status(cmocka_run_group_tests(tests, NULL, NULL));
}
