/* Memory snapshots on real libvirt + QEMU (the micro image), with
 * start = snapshot and max_vms = 3:
 *  - the daemon has the pool's snapshot made from its start, with no job;
 *    a job meanwhile boots, and the backend makes one slot per VM;
 *  - two jobs restored one after the other from the same slot read
 *    different bytes from /dev/urandom, have different host names, a clock
 *    within 2 s of the host's, and a file the first wrote is absent in the
 *    second;
 *  - three jobs at once all start from snapshots (three slots);
 *  - a corrupted state file makes the job boot, and it succeeds;
 *  - after the image changed (its manifest rewritten, as a rebuild does) no
 *    snapshot is used by three jobs at once, and the new snapshot's maker
 *    waits for a free VM slot: never more than max_vms VMs at any output;
 *  - garbage collection: at the start the sweep removes a slot numbered
 *    >= max_vms, a slot a killed maker left without a manifest and a slot
 *    of another size with a broken manifest, and leaves files not ours;
 *    the stale slots of the changed image are removed as soon as the jobs
 *    find them stale (counted, with their state files' bytes).
 * Prints the submit -> first output latency of the restored jobs. Needs
 * AGENTLAB_TEST_STATE (with images/micro). */
#include "test_util.h"

#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "provision/snapshot.h"
#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/engine/attempt.h"
#include "runner/engine/engine.h"
#include "runner/loop/virt_uv.h"

#define N_AT_ONCE 3

struct run {
    char job[STORE_JOB_ID_SIZE];
    uint64_t submitted_us;
    uint64_t first_output_us;
    long long first_output_real; /* the host's clock then, seconds */
    bool finished;
    enum job_state state;
    char out[4096];
    size_t out_len;
    char vm[160];
};

struct ctx {
    uv_loop_t loop;
    struct engine *engine;
    struct run runs[N_AT_ONCE];
    size_t n_runs;
    bool stopped;
    char dir[512];
    size_t most_vms; /* VM run dirs at once, seen at each output */
};

static struct run *run_of(struct ctx *c, const char *job)
{
    for (size_t i = 0; i < c->n_runs; i++) {
        if (streq(c->runs[i].job, job))
            return &c->runs[i];
    }
    return NULL;
}

/* The VMs of the backend now, makers included: their run dirs. */
static size_t vms_now(struct ctx *c)
{
    char pattern[1024];
    snprintf(pattern, sizeof(pattern), "%s/run/vms/*", c->dir);
    glob_t g;
    size_t n = glob(pattern, GLOB_ONLYDIR, NULL, &g) == 0 ? g.gl_pathc : 0;
    globfree(&g);
    return n;
}

static void on_output(const char *job, enum vm_stream s, const char *buf, size_t len, void *data)
{
    (void)s;
    struct ctx *c = data;
    size_t n = vms_now(c);
    if (n > c->most_vms)
        c->most_vms = n;
    struct run *r = run_of(data, job);
    if (!r)
        return;
    if (!r->first_output_us) {
        r->first_output_us = al_now_mono_us();
        r->first_output_real = (long long)time(NULL);
    }
    if (r->out_len + len < sizeof(r->out) - 1) {
        memcpy(r->out + r->out_len, buf, len);
        r->out_len += len;
        r->out[r->out_len] = '\0';
    }
}

static void on_finished(const char *job, enum job_state st, const struct attempt_result *res,
                        void *data)
{
    struct run *r = run_of(data, job);
    if (!r)
        return;
    r->state = st;
    if (res)
        snprintf(r->vm, sizeof(r->vm), "%s", res->vm_name);
    r->finished = true;
}

static void on_stopped(void *data)
{
    struct ctx *c = data;
    c->stopped = true;
    al_virt_event_shutdown();
}

static bool all_finished(struct ctx *c)
{
    for (size_t i = 0; i < c->n_runs; i++) {
        if (!c->runs[i].finished)
            return false;
    }
    return true;
}

static void run_loop_until_all(struct ctx *c, unsigned timeout_ms)
{
    uint64_t end = al_now_mono_ms() + timeout_ms;
    while (!all_finished(c) && al_now_mono_ms() < end)
        uv_run(&c->loop, UV_RUN_ONCE);
    assert_true(all_finished(c));
}

/* Submits n copies of script at once and waits for them. */
static void run_jobs(struct ctx *c, const char *script, size_t n)
{
    char spec_json[2048];
    snprintf(spec_json, sizeof(spec_json), "{\"command\":[\"sh\",\"-c\",\"%s\"]}", script);
    memset(c->runs, 0, sizeof(c->runs));
    c->n_runs = n;
    for (size_t i = 0; i < n; i++) {
        struct al_error *err = NULL;
        struct job_spec *spec = NULL;
        assert_int_equal(job_spec_parse(spec_json, strlen(spec_json), 0, &spec, &err), 0);
        c->runs[i].submitted_us = al_now_mono_us();
        if (engine_submit(c->engine, spec, NULL, c->runs[i].job, &err) < 0)
            fail_msg("submit: %s", al_error_message(err));
    }
    run_loop_until_all(c, 300000);
    for (size_t i = 0; i < n; i++) {
        if (c->runs[i].state != JOB_STATE_SUCCEEDED)
            fail_msg("job %s ended %s: %s", c->runs[i].job, job_state_to_string(c->runs[i].state),
                     c->runs[i].out);
    }
}

static bool file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static void slot_path(struct ctx *c, int k, const char *file, char *buf, size_t size)
{
    snprintf(buf, size, "%s/state/images/micro/snapshots/1c-1024m/slot-%d/%s", c->dir, k, file);
}

static void plant(const char *dir, const char *rel, const char *text, size_t pad)
{
    char p[1200];
    snprintf(p, sizeof(p), "%s/state/images/micro/snapshots/%s", dir, rel);
    char *slash = strrchr(p, '/');
    *slash = '\0';
    struct al_error *err = NULL;
    assert_int_equal(al_mkdir_p(p, 0711, &err), 0);
    *slash = '/';
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs(text, f);
    for (size_t i = 0; i < pad; i++)
        fputc('x', f);
    fclose(f);
}

static bool planted(const char *dir, const char *rel)
{
    char p[1200];
    snprintf(p, sizeof(p), "%s/state/images/micro/snapshots/%s", dir, rel);
    struct stat st;
    return lstat(p, &st) == 0;
}

/* Runs the loop until garbage collection removed this many slots in all. */
static void wait_gc(struct ctx *c, uint64_t slots)
{
    uint64_t end = al_now_mono_ms() + 20000;
    while (snapshot_gc_slots() < slots && al_now_mono_ms() < end) {
        uv_run(&c->loop, UV_RUN_NOWAIT);
        usleep(20000);
    }
    assert_true(snapshot_gc_slots() >= slots);
}

static char *slurp(const char *path)
{
    char *text = NULL;
    size_t len = 0;
    struct al_error *err = NULL;
    if (al_read_file(path, 1 << 20, &text, &len, &err) < 0)
        al_error_free(err);
    return text;
}

/* Runs the loop until the three slots have manifests. */
static void wait_for_slots(struct ctx *c)
{
    uint64_t t0 = al_now_mono_ms(), end = t0 + 240000;
    for (;;) {
        int ready = 0;
        for (int k = 0; k < N_AT_ONCE; k++) {
            char p[1024];
            slot_path(c, k, "manifest.json", p, sizeof(p));
            ready += file_exists(p);
        }
        /* the slots are the backend's once the VM that was saved is gone */
        char pattern[1024];
        snprintf(pattern, sizeof(pattern), "%s/run/vms/agentlab-snap-*", c->dir);
        glob_t g;
        bool maker_left = glob(pattern, 0, NULL, &g) == 0 && g.gl_pathc > 0;
        globfree(&g);
        if (ready == N_AT_ONCE && !maker_left)
            break;
        if (al_now_mono_ms() > end)
            fail_msg("only %d of %d snapshot slots were made in 240 s", ready, N_AT_ONCE);
        uv_run(&c->loop, UV_RUN_NOWAIT);
        usleep(50000);
    }
    fprintf(stderr, "three snapshot slots made in %llu ms\n",
            (unsigned long long)(al_now_mono_ms() - t0));
}

/* Runs the loop until the VM's run dir is gone (its teardown finished, so
 * its slot is free again). */
static void wait_torn_down(struct ctx *c, const char *vm)
{
    char p[1024];
    snprintf(p, sizeof(p), "%s/run/vms/%s", c->dir, vm);
    uint64_t end = al_now_mono_ms() + 60000;
    while (file_exists(p) && al_now_mono_ms() < end) {
        uv_run(&c->loop, UV_RUN_NOWAIT);
        usleep(20000);
    }
    assert_false(file_exists(p));
}

static const char *field(const char *out, const char *key, char *buf, size_t size)
{
    const char *p = strstr(out, key);
    if (!p)
        fail_msg("no %s in the job's output: %s", key, out);
    p += strlen(key);
    size_t n = strcspn(p, "\r\n");
    snprintf(buf, size, "%.*s", (int)(n < size - 1 ? n : size - 1), p);
    return buf;
}

/* Runs the loop until pattern matches a file, at most timeout_ms. */
static bool wait_glob(struct ctx *c, const char *pattern, unsigned timeout_ms)
{
    uint64_t end = al_now_mono_ms() + timeout_ms;
    for (;;) {
        glob_t g;
        bool found = glob(pattern, 0, NULL, &g) == 0 && g.gl_pathc > 0;
        globfree(&g);
        if (found || al_now_mono_ms() > end)
            return found;
        uv_run(&c->loop, UV_RUN_NOWAIT);
        usleep(50000);
    }
}

static bool is_slot_vm(const char *vm)
{
    return strstr(vm, "agentlab-snap-") == vm;
}

static const char fresh_script[] =
        "echo first line; echo rnd=$(head -c 32 /dev/urandom | sha256sum | cut -c1-64); "
        "echo host=$(hostname); echo clock=$(date +%s); "
        "if [ -e /tmp/left-behind ]; then echo marker=present; else echo marker=absent; fi; "
        "echo x > /tmp/left-behind";

static void check_fresh(const struct run *r, char rnd[80], char host[80])
{
    char clock_s[40], marker[20];
    field(r->out, "rnd=", rnd, 80);
    field(r->out, "host=", host, 80);
    field(r->out, "clock=", clock_s, sizeof(clock_s));
    field(r->out, "marker=", marker, sizeof(marker));
    long long guest = strtoll(clock_s, NULL, 10);
    /* without FRESHEN the guest's clock would be the saved guest's */
    if (llabs(r->first_output_real - guest) > 2)
        fail_msg("guest clock %lld vs host %lld", guest, r->first_output_real);
    assert_string_equal(marker, "absent");
    assert_int_equal(strlen(rnd), 64);
}

static void test_snapshots(void **state)
{
    (void)state;
    struct ctx c = {0};
    char *dir = test_micro_tmpdir("snapshot");
    snprintf(c.dir, sizeof(c.dir), "%s", dir);
    char conf[1024];
    snprintf(conf, sizeof(conf),
             "[agent]\nstate_dir = %s/state\nrun_dir = %s/run\nimage = micro\nlog_level = warn\n"
             "boot_timeout = 20m\n"
             "[backend \"local\"]\nmax_vms = 3\nvcpus = 3\n[pool \"default\"]\nstart = snapshot\n",
             dir, dir);
    struct al_error *err = NULL;
    struct config *cfg = NULL;
    assert_int_equal(config_load_string(conf, strlen(conf), "snap.conf", &cfg, &err), 0);
    char *db = NULL;
    assert_true(asprintf(&db, "%s/state/agentlab.db", dir) > 0);
    struct store *store = NULL;
    assert_int_equal(store_open(db, NULL, &store, &err), 0);
    uv_loop_init(&c.loop);
    assert_int_equal(al_virt_event_register(&c.loop, &err), 0);
    struct engine_params ep = {.loop = &c.loop,
                               .cfg = cfg,
                               .store = store,
                               .owner_id = "daemon:000000000000000000000000000051a9"};
    if (engine_new(&ep, &c.engine, &err) < 0)
        fail_msg("engine: %s", al_error_message(err));
    static const struct engine_observer obs = {.output = on_output, .finished = on_finished};
    engine_observe(c.engine, &obs, &c);
    /* what a daemon before this one left: a slot of a larger max_vms, one
     * whose maker was killed mid-save, a size of an unreadable manifest;
     * and files not ours */
    plant(dir, "1c-1024m/slot-7/manifest.json", "{}", 0);
    plant(dir, "1c-1024m/slot-7/state", "", 1 << 20);
    plant(dir, "1c-1024m/slot-1/state.tmp", "", 1 << 20);
    plant(dir, "4c-2048m/slot-0/manifest.json", "{\"schema\": 1}", 0);
    plant(dir, "4c-2048m/slot-0/state", "", 1 << 20);
    plant(dir, "keep.txt", "not ours", 0);
    plant(dir, "1c-1024m/keep.txt", "not ours", 0);
    uint64_t gc0 = snapshot_gc_slots(), gc_bytes0 = snapshot_gc_bytes();
    engine_start(c.engine, NULL, NULL);

    /* 1. the daemon has its pool's snapshot made from the start, with no
     * job; a job meanwhile boots, and the slots get made */
    char pattern[1024];
    snprintf(pattern, sizeof(pattern), "%s/run/vms/agentlab-snap-*", dir);
    assert_true(wait_glob(&c, pattern, 30000));
    wait_gc(&c, gc0 + 3);
    assert_int_equal(snapshot_gc_slots(), gc0 + 3);
    assert_true(snapshot_gc_bytes() >= gc_bytes0 + (3u << 20));
    assert_false(planted(dir, "1c-1024m/slot-7"));
    assert_false(planted(dir, "1c-1024m/slot-1/state.tmp"));
    assert_false(planted(dir, "4c-2048m"));
    assert_true(planted(dir, "keep.txt"));
    assert_true(planted(dir, "1c-1024m/keep.txt"));
    uint64_t none0 = snapshot_fallbacks(SNAPSHOT_FB_NONE);
    run_jobs(&c, "echo booted", 1);
    assert_false(is_slot_vm(c.runs[0].vm));
    /* at least: a boot that panics under TCG on a loaded host is retried */
    assert_true(snapshot_fallbacks(SNAPSHOT_FB_NONE) >= none0 + 1);
    wait_for_slots(&c);

    /* 2. two jobs restored from the same slot, one after the other */
    uint64_t restores0 = snapshot_restores();
    char rnd[2][80], host[2][80], vm0[160];
    run_jobs(&c, fresh_script, 1);
    snprintf(vm0, sizeof(vm0), "%s", c.runs[0].vm);
    assert_true(is_slot_vm(vm0));
    check_fresh(&c.runs[0], rnd[0], host[0]);
    fprintf(stderr, "restored job 1 on %s: first output %llu ms after submit\n", vm0,
            (unsigned long long)((c.runs[0].first_output_us - c.runs[0].submitted_us) / 1000));
    wait_torn_down(&c, vm0);
    run_jobs(&c, fresh_script, 1);
    assert_string_equal(c.runs[0].vm, vm0); /* the same slot */
    check_fresh(&c.runs[0], rnd[1], host[1]);
    fprintf(stderr, "restored job 2 on %s: first output %llu ms after submit\n", c.runs[0].vm,
            (unsigned long long)((c.runs[0].first_output_us - c.runs[0].submitted_us) / 1000));
    assert_string_not_equal(rnd[0], rnd[1]);
    assert_string_not_equal(host[0], host[1]);
    assert_int_equal(snapshot_restores(), restores0 + 2);
    wait_torn_down(&c, vm0);

    /* 3. three at once, each from a slot of its own */
    run_jobs(&c, "echo at-once", N_AT_ONCE);
    for (size_t i = 0; i < N_AT_ONCE; i++) {
        assert_true(is_slot_vm(c.runs[i].vm));
        for (size_t k = 0; k < i; k++)
            assert_string_not_equal(c.runs[i].vm, c.runs[k].vm);
        fprintf(stderr, "at once: job %zu on %s: first output %llu ms after submit\n", i,
                c.runs[i].vm,
                (unsigned long long)((c.runs[i].first_output_us - c.runs[i].submitted_us) / 1000));
    }
    assert_int_equal(snapshot_restores(), restores0 + 2 + N_AT_ONCE);
    for (size_t i = 0; i < N_AT_ONCE; i++)
        wait_torn_down(&c, c.runs[i].vm);

    /* 4. a corrupted state file: the job boots instead and succeeds */
    char state_path[1024];
    slot_path(&c, 0, "state", state_path, sizeof(state_path));
    FILE *f = fopen(state_path, "r+");
    assert_non_null(f);
    assert_int_equal(fwrite("garbage!garbage!", 1, 16, f), 16);
    fclose(f);
    uint64_t failed0 = snapshot_fallbacks(SNAPSHOT_FB_RESTORE_FAILED);
    run_jobs(&c, "echo after-corruption", 1);
    assert_non_null(strstr(c.runs[0].out, "after-corruption"));
    assert_int_equal(snapshot_fallbacks(SNAPSHOT_FB_RESTORE_FAILED), failed0 + 1);
    assert_int_equal(snapshot_restores(), restores0 + 2 + N_AT_ONCE);
    wait_torn_down(&c, c.runs[0].vm);

    /* 5. the image changed (a rebuild writes a new manifest): stale */
    char cmd[2048];
    snprintf(cmd, sizeof(cmd),
             "sed -i 's/\"created\": \"[^\"]*\"/\"created\": \"2099-01-01T00:00:00.000Z\"/' "
             "%s/state/images/micro/manifest.json",
             dir);
    assert_int_equal(system(cmd), 0);
    uint64_t stale0 = snapshot_fallbacks(SNAPSHOT_FB_STALE);
    /* slots 1 and 2 are idle (slot 0 may be being remade after step 4) */
    char *old_manifest[N_AT_ONCE] = {0};
    uint64_t state_bytes = 0;
    for (int k = 1; k < N_AT_ONCE; k++) {
        char p[1024];
        slot_path(&c, k, "manifest.json", p, sizeof(p));
        old_manifest[k] = slurp(p);
        assert_non_null(old_manifest[k]);
        slot_path(&c, k, "state", p, sizeof(p));
        struct stat st;
        assert_int_equal(stat(p, &st), 0);
        state_bytes += (uint64_t)st.st_blocks * 512u;
    }
    gc0 = snapshot_gc_slots();
    gc_bytes0 = snapshot_gc_bytes();
    run_jobs(&c, "echo after-rebuild", N_AT_ONCE);
    /* removed when found stale, not when remade (a maker quick enough to
     * start once the first job left would have written new manifests) */
    assert_true(snapshot_gc_slots() >= gc0 + 2);
    assert_true(snapshot_gc_bytes() >= gc_bytes0 + state_bytes);
    for (int k = 1; k < N_AT_ONCE; k++) {
        char p[1024];
        slot_path(&c, k, "manifest.json", p, sizeof(p));
        char *now = slurp(p);
        assert_true(!now || !streq(now, old_manifest[k]));
        free(now);
        free(old_manifest[k]);
    }
    for (size_t i = 0; i < N_AT_ONCE; i++)
        assert_false(is_slot_vm(c.runs[i].vm));
    assert_true(snapshot_fallbacks(SNAPSHOT_FB_STALE) >= stale0 + 1);
    assert_int_equal(snapshot_restores(), restores0 + 2 + N_AT_ONCE);

    /* 6. the maker of the new snapshot is a VM too: it waited while the
     * three jobs held max_vms, and starts once one left */
    assert_true(wait_glob(&c, pattern, 60000));
    fprintf(stderr, "at most %zu VMs at once (max_vms = %d)\n", c.most_vms, N_AT_ONCE);
    assert_true(c.most_vms <= N_AT_ONCE);

    engine_stop(c.engine, on_stopped, &c);
    assert_true(test_run_until(&c.loop, &c.stopped, 120000));
    test_loop_close(&c.loop);
    store_close(store);
    config_free(cfg);
    free(db);
    test_destroy_storage_pools(dir);
    test_tmpdir_remove(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_snapshots)};
    return test_exit_status(cmocka_run_group_tests(tests, NULL, NULL));
}
