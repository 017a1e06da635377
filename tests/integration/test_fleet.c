/* A fleet of two libvirt hosts driven by one engine (issue #20): "local"
 * (qemu:///system) and "h2", a second libvirtd in its own mount namespace
 * that cannot see this test's state, run and image dirs
 * (tests/scripts/remote-libvirtd.sh), reached as
 * qemu+tcp://127.0.0.1:PORT/system. Both have max_vms = 1.
 *
 * 1. Four jobs submitted at once all succeed, each in a fresh VM, on both
 *    hosts (two on each unless one is much slower); output streams live
 *    from the remote one; the artifacts
 *    come back; nothing is left on either host. The image's disk, kernel
 *    and initrd were uploaded to h2 once, for its first job only.
 *    Meanwhile "h3" (the same remote libvirtd, its own pool, max_vms = 2)
 *    runs two jobs at once: the image is uploaded once, not twice.
 * 2. The disk rebuilt (new content) while a job on h3 runs on the old
 *    one: h3's next job uploads the new disk (the kernel, touched with the
 *    same content, is hashed again, not uploaded); the old disk stays
 *    while the running job uses it and is swept once that job (cancelled)
 *    ended. The next job on h2 uploads the new disk too, and h2's old disk
 *    (no domain uses it) is swept at once.
 * 3. That job (local is busy) killed mid-job with the remote libvirtd: it
 *    ends as an infrastructure error, is retried on local and succeeds; h2
 *    reports itself unhealthy.
 *    Restarted, it is reconnected and the VM and volumes it kept of that
 *    attempt are removed.
 *
 * The micro image of the ctest fixture; about two minutes under TCG. */
#include "test_util.h"

#include <fcntl.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "provision/domain_xml.h"
#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/engine/attempt.h"
#include "runner/engine/engine.h"
#include "runner/loop/virt_uv.h"

#define OWNER     "daemon:00000000000000000000000000f1ee70"
#define MAX_JOBS  12
#define ART_BYTES 50000

/* one loop for the process: libvirt's event implementation cannot move */
static uv_loop_t loop;
static char *tmp;        /* the test's dir: hidden from the remote host */
static char *remote_dir; /* the harness's state */
static char *script;
static char *log_path;
static char uri[128];
static virConnectPtr lconn, rconn; /* our own connections, to look */

struct job {
    char id[STORE_JOB_ID_SIZE];
    bool finished;
    enum job_state state;
    int exit_code;
    int attempts;
    char host[MAX_JOBS][8]; /* per attempt (1-based): "local", "h2" */
    char out[4096];
    size_t out_len;
    uint64_t first_us, mid_us, finished_us;
    uint64_t ms_provision;
    size_t art_files;
    uint64_t art_size;
    char art_sha[65];
};

struct fleet {
    struct engine *engine;
    struct job jobs[MAX_JOBS];
    size_t n;
    bool stopped;
};

static void quiet(void *d, virErrorPtr e)
{
    (void)d;
    (void)e;
}

/* The remote-libvirtd harness with args (test_run_first_line()). */
static int harness(const char *args, char *out, size_t out_size)
{
    return test_run_first_line(script, args, out, out_size);
}

static void remote_start(bool fresh)
{
    _cleanup_free_ char *args = NULL;
    assert_true(asprintf(&args, "start '%s'%s --hide '%s' --owner %d", remote_dir,
                         fresh ? " --fresh" : "", tmp, (int)getpid()) > 0);
    char got[128];
    if (harness(args, got, sizeof(got)) != 0 || strncmp(got, "qemu+tcp://127.0.0.1:", 21) != 0)
        fail_msg("the namespaced libvirtd did not start (%s); see %s/libvirtd.log", got,
                 remote_dir);
    if (fresh)
        snprintf(uri, sizeof(uri), "%s", got);
    else if (!streq(got, uri))
        fail_msg("the restarted libvirtd answers on %s, not %s", got, uri);
    if (rconn)
        virConnectClose(rconn);
    rconn = virConnectOpen(uri);
    assert_non_null(rconn);
}

/* Kills the remote libvirtd as a crash would (its QEMU processes live on). */
static void remote_kill(void)
{
    _cleanup_free_ char *pidfile = al_path_join(remote_dir, "libvirtd.pid");
    _cleanup_free_ char *text = NULL;
    struct al_error *err = NULL;
    if (al_read_file(pidfile, 64, &text, NULL, &err) < 0)
        fail_msg("%s", al_error_message(err));
    text[strcspn(text, "\n")] = '\0';
    int pid = 0;
    assert_int_equal(al_parse_int(text, 2, 1 << 22, &pid), 0);
    assert_int_equal(kill(pid, SIGKILL), 0);
    /* not our child: gone, or a zombie nobody reaps, within a moment */
    for (int i = 0; i < 40 && kill(pid, 0) == 0; i++)
        usleep(50 * 1000);
}

static struct job *job_of(struct fleet *f, const char *id)
{
    for (size_t i = 0; i < f->n; i++) {
        if (streq(f->jobs[i].id, id))
            return &f->jobs[i];
    }
    return NULL;
}

/* Which host runs attempt a of j: the domain's host, looked up on each. */
static const char *host_of(const struct job *j, int a)
{
    char name[160];
    snprintf(name, sizeof(name), AL_DOMAIN_PREFIX "%s-%d", j->id, a);
    virDomainPtr d = virDomainLookupByName(rconn, name);
    if (d) {
        virDomainFree(d);
        return "h2";
    }
    d = virDomainLookupByName(lconn, name);
    if (d) {
        virDomainFree(d);
        return "local";
    }
    return "";
}

static void on_output(const char *id, enum vm_stream s, const char *buf, size_t len, void *data)
{
    (void)s;
    struct job *j = job_of(data, id);
    if (!j)
        return;
    uint64_t now = al_now_mono_us();
    int a = j->attempts + 1;
    if (a < MAX_JOBS && !j->host[a][0])
        snprintf(j->host[a], sizeof(j->host[a]), "%s", host_of(j, a));
    if (!j->first_us)
        j->first_us = now;
    if (j->out_len + len < sizeof(j->out)) {
        memcpy(j->out + j->out_len, buf, len);
        j->out_len += len;
        j->out[j->out_len] = '\0';
    }
    if (!j->mid_us && strstr(j->out, "mid\n"))
        j->mid_us = now;
}

static void on_attempt_done(const char *id, int attempt, const struct attempt_result *r, void *data)
{
    struct job *j = job_of(data, id);
    if (!j)
        return;
    j->attempts = attempt;
    fprintf(stderr, "job %s attempt %d on %s: %s (provision %llu ms)\n", id, attempt,
            attempt < MAX_JOBS ? j->host[attempt] : "?", r->reason,
            (unsigned long long)r->ms_provision);
}

static void on_finished(const char *id, enum job_state st, const struct attempt_result *r,
                        void *data)
{
    struct job *j = job_of(data, id);
    if (!j)
        return;
    j->finished_us = al_now_mono_us();
    j->state = st;
    if (r) {
        j->exit_code = r->exit_code;
        j->ms_provision = r->ms_provision;
        j->art_files = r->artifact_files.n;
        if (r->artifact_files.n) {
            snprintf(j->art_sha, sizeof(j->art_sha), "%s", r->artifact_files.v[0].sha256);
            j->art_size = r->artifact_files.v[0].size;
        }
    }
    j->finished = true;
}

static void on_stopped(void *data)
{
    ((struct fleet *)data)->stopped = true;
}

static struct job *submit(struct fleet *f, const char *pool, const char *sh)
{
    assert_true(f->n < MAX_JOBS);
    struct job *j = &f->jobs[f->n++];
    *j = (struct job){0};
    _cleanup_free_ char *json = NULL;
    assert_true(asprintf(&json,
                         "{\"pool\":\"%s\",\"command\":[\"sh\",\"-c\",\"%s\"],"
                         "\"artifacts\":[\"art.bin\"]}",
                         pool, sh) > 0);
    struct job_spec *spec = NULL;
    struct al_error *err = NULL;
    if (job_spec_parse(json, strlen(json), 0, &spec, &err) < 0)
        fail_msg("spec: %s", al_error_message(err));
    if (engine_submit(f->engine, spec, NULL, j->id, &err) < 0)
        fail_msg("submit: %s", al_error_message(err));
    return j;
}

/* A job of the fleet: says whether its VM is fresh (nothing of an earlier
 * job in /tmp, its boot id), prints a line seconds after the first, makes
 * an artifact. */
static const char job_sh[] =
        "test -e /tmp/used && echo reused; touch /tmp/used; echo boot=$(cat "
        "/proc/sys/kernel/random/boot_id); sleep 3; echo mid; head -c 50000 /dev/urandom > "
        "art.bin; echo sha=$(sha256sum art.bin); echo end";

static bool all_finished(struct fleet *f, size_t from)
{
    for (size_t i = from; i < f->n; i++) {
        if (!f->jobs[i].finished)
            return false;
    }
    return true;
}

struct waiter {
    uv_timer_t t;
    struct fleet *f;
    size_t from;
    bool done;
    bool (*pred)(struct waiter *w);
    const char *job_id; /* for pred_output */
    const char *expect; /* for pred_h3_disks */
};

static void on_wait_tick(uv_timer_t *t)
{
    struct waiter *w = t->data;
    if (!w->done && w->pred(w))
        w->done = true;
}

/* Runs the loop until pred holds (checked every 100 ms) or timeout_ms. */
static void run_until_pred(struct waiter *w, unsigned timeout_ms, const char *what)
{
    uv_timer_init(&loop, &w->t);
    w->t.data = w;
    w->done = false;
    uv_timer_start(&w->t, on_wait_tick, 100, 100);
    bool ok = test_run_until(&loop, &w->done, timeout_ms);
    uv_close((uv_handle_t *)&w->t, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
    if (!ok)
        fail_msg("timed out waiting for %s", what);
}

static bool pred_finished(struct waiter *w)
{
    return all_finished(w->f, w->from);
}

static bool pred_started(struct waiter *w)
{
    const struct job *j = job_of(w->f, w->job_id);
    return j && j->out_len > 0;
}

/* Checks a finished job of job_sh: succeeded, fresh VM, artifact whole. */
static void check_job(const struct job *j, char boot_ids[][40], size_t *n_boot)
{
    if (j->state != JOB_STATE_SUCCEEDED)
        fail_msg("job %s ended %s (exit %d): %s", j->id, job_state_to_string(j->state),
                 j->exit_code, j->out);
    if (strstr(j->out, "reused"))
        fail_msg("job %s ran in a VM an earlier job used: %s", j->id, j->out);
    const char *b = strstr(j->out, "boot=");
    assert_non_null(b);
    char id[40];
    snprintf(id, sizeof(id), "%.36s", b + 5);
    for (size_t i = 0; i < *n_boot; i++) {
        if (streq(boot_ids[i], id))
            fail_msg("job %s booted the same kernel instance (%s) as another job", j->id, id);
    }
    snprintf(boot_ids[(*n_boot)++], 40, "%s", id);
    const char *sha = strstr(j->out, "sha=");
    assert_non_null(sha);
    assert_int_equal(j->art_files, 1);
    assert_int_equal(j->art_size, ART_BYTES);
    if (strncmp(sha + 4, j->art_sha, 64) != 0)
        fail_msg("job %s: artifact sha256 %s, the guest's %.64s", j->id, j->art_sha, sha + 4);
}

/* Lines of the log holding needle. */
static int log_count(const char *needle)
{
    _cleanup_free_ char *text = NULL;
    struct al_error *err = NULL;
    if (al_read_file(log_path, 16u << 20, &text, NULL, &err) < 0)
        fail_msg("%s", al_error_message(err));
    int n = 0;
    for (const char *p = strstr(text, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

static void print_log_lines(const char *needle)
{
    _cleanup_free_ char *text = NULL;
    struct al_error *err = NULL;
    if (al_read_file(log_path, 16u << 20, &text, NULL, &err) < 0)
        fail_msg("%s", al_error_message(err));
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        if (strstr(line, needle))
            fprintf(stderr, "  %s\n", line);
    }
}

/* Domains and non-image volumes of ours on a host: "" when none, else the
 * first one's name in what. */
static bool host_has_leftovers(virConnectPtr c, char *what, size_t size)
{
    virDomainPtr *doms = NULL;
    int n = virConnectListAllDomains(c, &doms, 0);
    assert_true(n >= 0);
    bool found = false;
    for (int i = 0; i < n; i++) {
        const char *name = virDomainGetName(doms[i]);
        /* the local libvirtd is shared: only this test's owner counts */
        char *meta = virDomainGetMetadata(doms[i], VIR_DOMAIN_METADATA_ELEMENT, AL_XML_NS, 0);
        if (!found && meta && strstr(meta, OWNER)) {
            snprintf(what, size, "domain %s", name);
            found = true;
        }
        free(meta);
        virDomainFree(doms[i]);
    }
    free(doms);
    virStoragePoolPtr *pools = NULL;
    int np = virConnectListAllStoragePools(c, &pools, VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE);
    assert_true(np >= 0);
    for (int i = 0; i < np; i++) {
        const char *pn = virStoragePoolGetName(pools[i]);
        /* this test's pools: h2's (only ours there) and local's below tmp */
        char *xml = virStoragePoolGetXMLDesc(pools[i], 0);
        bool ours = c == rconn || (xml && strstr(xml, tmp));
        free(xml);
        if (ours && strncmp(pn, "agentlab-", 9) == 0) {
            virStoragePoolRefresh(pools[i], 0);
            virStorageVolPtr *vols = NULL;
            int nv = virStoragePoolListAllVolumes(pools[i], &vols, 0);
            for (int k = 0; k < nv; k++) {
                const char *vn = virStorageVolGetName(vols[k]);
                if (!found && strncmp(vn, "agentlab-img-", 13) != 0) {
                    snprintf(what, size, "volume %s of pool %s", vn, pn);
                    found = true;
                }
                virStorageVolFree(vols[k]);
            }
            free(vols);
        }
        virStoragePoolFree(pools[i]);
    }
    free(pools);
    return found;
}

static bool pred_remote_clean(struct waiter *w)
{
    (void)w;
    char what[256];
    return !host_has_leftovers(rconn, what, sizeof(what));
}

static void assert_clean(virConnectPtr c, const char *host)
{
    char what[256];
    if (host_has_leftovers(c, what, sizeof(what)))
        fail_msg("%s: %s outlived its job", host, what);
}

/* The volume names holding needle of the remote host's pools whose names
 * start with pool_prefix ("agentlab-h2-": h2's), comma-separated. */
static void remote_volumes(const char *pool_prefix, const char *needle, char *buf, size_t size)
{
    buf[0] = '\0';
    virStoragePoolPtr *pools = NULL;
    int np = virConnectListAllStoragePools(rconn, &pools, 0);
    for (int i = 0; i < np; i++) {
        if (strncmp(virStoragePoolGetName(pools[i]), pool_prefix, strlen(pool_prefix)) != 0) {
            virStoragePoolFree(pools[i]);
            continue;
        }
        virStoragePoolRefresh(pools[i], 0);
        virStorageVolPtr *vols = NULL;
        int nv = virStoragePoolListAllVolumes(pools[i], &vols, 0);
        for (int k = 0; k < nv; k++) {
            const char *vn = virStorageVolGetName(vols[k]);
            if (strstr(vn, needle)) {
                size_t l = strlen(buf);
                snprintf(buf + l, size - l, "%s%s", l ? "," : "", vn);
            }
            virStorageVolFree(vols[k]);
        }
        free(vols);
        virStoragePoolFree(pools[i]);
    }
    free(pools);
}

/* Whether every name of the comma-separated list names is in list. */
static bool all_in(const char *names, const char *list)
{
    _cleanup_free_ char *copy = strdup(names);
    assert_non_null(copy);
    char *save = NULL;
    for (char *n = strtok_r(copy, ",", &save); n; n = strtok_r(NULL, ",", &save)) {
        if (!strstr(list, n))
            return false;
    }
    return true;
}

/* h3's pool holds only the disk volumes named in w->expect
 * (comma-separated). */
static bool pred_h3_disks(struct waiter *w)
{
    char now[512];
    remote_volumes("agentlab-h3-", "-disk-", now, sizeof(now));
    /* in any order: a refresh may list them otherwise */
    return strlen(now) == strlen(w->expect) && all_in(now, w->expect);
}

static void test_fleet(void **state)
{
    (void)state;
    struct fleet f = {0};
    char conf[2048];
    snprintf(conf, sizeof(conf),
             "[agent]\nstate_dir = %s/state\nrun_dir = %s/run\nimage = micro\npool = fleet\n"
             "boot_timeout = 10m\nmax_attempts = 2\n"
             "[backend \"local\"]\nmax_vms = 1\n"
             /* the remote hosts ask their libvirt for KVM (accel = auto);
              * on a machine whose /dev/kvm is there but cannot run Linux it
              * would offer KVM and cost a retry: this test is not about that */
             "[backend \"h2\"]\nuri = %s\nmax_vms = 1\naccel = tcg\n"
             "[pool \"fleet\"]\nbackends = local, h2\n"
             "[pool \"remote\"]\nlabels = remote-only\nbackends = h2\n"
             "[backend \"h3\"]\nuri = %s\nmax_vms = 2\naccel = tcg\n"
             "[pool \"pair\"]\nlabels = pair-only\nbackends = h3\n",
             tmp, tmp, uri, uri);
    struct al_error *err = NULL;
    struct config *cfg = NULL;
    if (config_load_string(conf, strlen(conf), "fleet.conf", &cfg, &err) < 0)
        fail_msg("config: %s", al_error_message(err));
    _cleanup_free_ char *db = NULL;
    assert_true(asprintf(&db, "%s/state/agentlab.db", tmp) > 0);
    struct store *store = NULL;
    assert_int_equal(store_open(db, NULL, &store, &err), 0);
    struct engine_params ep = {.loop = &loop, .cfg = cfg, .store = store, .owner_id = OWNER};
    if (engine_new(&ep, &f.engine, &err) < 0)
        fail_msg("engine: %s", al_error_message(err));
    static const struct engine_observer obs = {
            .output = on_output, .attempt_done = on_attempt_done, .finished = on_finished};
    engine_observe(f.engine, &obs, &f);
    engine_start(f.engine, NULL, NULL);

    /* 1. four at once */
    uint64_t t0 = al_now_mono_ms();
    for (int i = 0; i < 4; i++)
        submit(&f, "fleet", job_sh);
    /* meanwhile two at once on h3 (the same host, its own pool, max_vms =
     * 2): the second job's provisioning finds the first one's upload
     * running and waits for it */
    for (int i = 0; i < 2; i++)
        submit(&f, "pair", job_sh);
    struct waiter w = {.f = &f, .from = 0, .pred = pred_finished};
    run_until_pred(&w, 300000, "the four jobs and the pair");
    fprintf(stderr, "four jobs on two hosts: %.1f s\n", (double)(al_now_mono_ms() - t0) / 1000.0);
    char boot_ids[MAX_JOBS][40];
    size_t n_boot = 0;
    int on_local = 0, on_h2 = 0;
    for (size_t i = 0; i < 4; i++) {
        struct job *j = &f.jobs[i];
        check_job(j, boot_ids, &n_boot);
        assert_int_equal(j->attempts, 1);
        if (streq(j->host[1], "h2")) {
            on_h2++;
            /* live: "mid" came seconds before the end */
            if (!j->mid_us || (j->mid_us - j->first_us) / 1000 < 2500 || j->finished_us < j->mid_us)
                fail_msg("output of %s on h2 not live: first -> mid %llu ms", j->id,
                         (unsigned long long)((j->mid_us - j->first_us) / 1000));
            fprintf(stderr, "h2 job %s: provision %llu ms\n", j->id,
                    (unsigned long long)j->ms_provision);
        } else if (streq(j->host[1], "local")) {
            on_local++;
        } else {
            fail_msg("job %s ran on no host we know", j->id);
        }
    }
    /* both at once (max_vms = 1 each); then the next free host: two each
     * unless one host is much slower (under valgrind h2's first job hashes
     * the image for half a minute, and local takes three) */
    fprintf(stderr, "fleet jobs: %d on local, %d on h2\n", on_local, on_h2);
    assert_true(on_local >= 1);
    assert_true(on_h2 >= 1);
    assert_int_equal(on_local + on_h2, 4);
    for (size_t i = 4; i < 6; i++)
        check_job(&f.jobs[i], boot_ids, &n_boot);
    assert_clean(rconn, "h2");
    assert_clean(lconn, "local");
    /* uploaded once: for h2's first job, not its second; never for local */
    fprintf(stderr, "uploads:\n");
    print_log_lines("uploaded image");
    assert_int_equal(log_count("backend h2: uploaded image micro's disk"), 1);
    assert_int_equal(log_count("backend h2: uploaded image micro's kernel"), 1);
    assert_int_equal(log_count("backend h2: uploaded image micro's initrd"), 1);
    assert_int_equal(log_count("backend local: uploaded"), 0);
    /* one upload each, though two jobs needed them at once */
    assert_int_equal(log_count("backend h3: uploaded image micro's disk"), 1);
    assert_int_equal(log_count("backend h3: uploaded image micro's kernel"), 1);
    assert_int_equal(log_count("backend h3: uploaded image micro's initrd"), 1);
    fprintf(stderr, "h3: %d job(s) waited for the other's upload\n",
            log_count("backend h3: waiting for another job's upload"));
    char before[512], h3_before[512];
    remote_volumes("agentlab-h2-", "-disk-", before, sizeof(before));
    remote_volumes("agentlab-h3-", "-disk-", h3_before, sizeof(h3_before));

    /* 2. the disk rebuilt (new content), the kernel touched (same content),
     * while a job on h3 runs on the old disk */
    struct job *old_user = submit(&f, "pair", "echo started; sleep 600");
    w = (struct waiter){.f = &f, .pred = pred_started, .job_id = old_user->id};
    run_until_pred(&w, 180000, "the job on the old image on h3");
    _cleanup_free_ char *cmd = NULL;
    assert_true(asprintf(&cmd,
                         "qemu-io -f qcow2 -c 'write -P 0x5a 0 64k' '%s/state/images/micro/"
                         "disk.qcow2' >/dev/null && touch '%s/state/images/micro/vmlinuz'",
                         tmp, tmp) > 0);
    assert_int_equal(system(cmd), 0);
    /* h3's next job uploads the new disk; the old one stays while the
     * running job's overlay is backed by it, and goes once it ended */
    size_t h3_from = f.n;
    struct job *h3_new = submit(&f, "pair", job_sh);
    w = (struct waiter){.f = &f, .pred = pred_started, .job_id = h3_new->id};
    run_until_pred(&w, 180000, "h3's job on the rebuilt image");
    assert_int_equal(log_count("backend h3: uploaded image micro's disk"), 2);
    assert_int_equal(log_count("backend h3: uploaded image micro's kernel"), 1);
    assert_int_equal(log_count("backend h3: 1 old image volumes still in use"), 1);
    assert_int_equal(log_count("backend h3: removed"), 0);
    char h3_both[512];
    remote_volumes("agentlab-h3-", "-disk-", h3_both, sizeof(h3_both));
    fprintf(stderr, "disk volumes on h3: before the rebuild %s, while a job uses it %s\n",
            h3_before, h3_both);
    assert_true(all_in(h3_before, h3_both));
    assert_true(strlen(h3_both) > strlen(h3_before)); /* the new beside the old */
    assert_int_equal(engine_cancel(f.engine, old_user->id, &err), 0);
    w = (struct waiter){.f = &f, .from = h3_from - 1, .pred = pred_finished};
    run_until_pred(&w, 180000, "the two jobs on h3");
    check_job(h3_new, boot_ids, &n_boot);
    /* the cancelled job's teardown swept: only the new disk is left */
    char h3_new_disk[512] = "";
    for (char *save = NULL, *n = strtok_r(h3_both, ",", &save); n; n = strtok_r(NULL, ",", &save)) {
        if (!strstr(h3_before, n)) {
            size_t l = strlen(h3_new_disk);
            snprintf(h3_new_disk + l, sizeof(h3_new_disk) - l, "%s%s", l ? "," : "", n);
        }
    }
    uint64_t t_end = al_now_mono_ms();
    w = (struct waiter){.f = &f, .pred = pred_h3_disks, .expect = h3_new_disk};
    run_until_pred(&w, 60000, "the sweep of h3's old disk");
    fprintf(stderr, "h3: old disk swept %llu ms after its last user ended; left %s\n",
            (unsigned long long)(al_now_mono_ms() - t_end), h3_new_disk);
    print_log_lines("old image volumes");
    assert_int_equal(log_count("backend h3: removed 2 old image volumes"), 1);

    /* 3. a job holds local, the next goes to h2, which dies mid-job */
    size_t from = f.n;
    struct job *hold = submit(&f, "fleet", "echo hold; head -c 50000 /dev/zero > art.bin");
    struct job *victim = submit(&f, "fleet", job_sh);
    w = (struct waiter){.f = &f, .pred = pred_started, .job_id = victim->id};
    run_until_pred(&w, 180000, "the job on h2");
    assert_string_equal(victim->host[1], "h2");
    fprintf(stderr, "uploads after the rebuild:\n");
    print_log_lines("uploaded image");
    assert_int_equal(log_count("backend h2: uploaded image micro's disk"), 2);
    assert_int_equal(log_count("backend h2: uploaded image micro's kernel"), 1);
    char after[512];
    remote_volumes("agentlab-h2-", "-disk-", after, sizeof(after));
    fprintf(stderr, "disk volumes on h2: before the rebuild %s, after %s\n", before, after);
    /* the new one replaced the old (no domain on h2 used it) */
    assert_int_equal(strlen(after), strlen(before));
    assert_string_not_equal(after, before);
    assert_int_equal(log_count("backend h2: removed 2 old image volumes"), 1);
    remote_kill();
    uint64_t t_kill = al_now_mono_ms();
    w = (struct waiter){.f = &f, .from = from, .pred = pred_finished};
    run_until_pred(&w, 180000, "the retried job");
    assert_string_equal(hold->host[1], "local");
    assert_int_equal(hold->state, JOB_STATE_SUCCEEDED);
    fprintf(stderr, "killed h2's libvirtd -> retried job done on %s in %.1f s\n", victim->host[2],
            (double)(al_now_mono_ms() - t_kill) / 1000.0);
    assert_int_equal(victim->attempts, 2);
    assert_string_equal(victim->host[2], "local");
    /* its second VM is fresh: the output is the second attempt's only */
    const char *second = NULL;
    for (const char *p = strstr(victim->out, "boot="); p; p = strstr(p + 1, "boot="))
        second = p;
    assert_non_null(second);
    assert_true(second != strstr(victim->out, "boot=")); /* two attempts printed */
    struct job retried = *victim;
    memmove(retried.out, second, strlen(second) + 1);
    check_job(&retried, boot_ids, &n_boot);
    struct engine_backend_status st[4];
    size_t nb = engine_backends(f.engine, st, ARRAY_SIZE(st));
    bool seen = false;
    for (size_t i = 0; i < nb; i++) {
        if (streq(st[i].name, "h2")) {
            seen = true;
            assert_false(st[i].cap.healthy);
            fprintf(stderr, "h2 while its libvirtd is down: %s\n", st[i].cap.reason);
            assert_non_null(strstr(st[i].cap.reason, "connection"));
        }
    }
    assert_true(seen);

    /* the host comes back with the VM of the lost attempt: swept */
    remote_start(false);
    char kept[256] = "";
    bool had = host_has_leftovers(rconn, kept, sizeof(kept));
    fprintf(stderr, "h2 restarted; it kept %s\n", had ? kept : "nothing");
    assert_true(had);
    uint64_t t_back = al_now_mono_ms();
    w = (struct waiter){.f = &f, .pred = pred_remote_clean};
    run_until_pred(&w, 60000, "the sweep of h2 after it came back");
    fprintf(stderr, "h2 swept %.1f s after its libvirtd came back\n",
            (double)(al_now_mono_ms() - t_back) / 1000.0);
    assert_clean(lconn, "local");

    engine_stop(f.engine, on_stopped, &f);
    assert_true(test_run_until(&loop, &f.stopped, 120000));
    store_close(store);
    config_free(cfg);
}

static int setup(void **state)
{
    (void)state;
    virSetErrorFunc(NULL, quiet);
    tmp = test_micro_tmpdir("fleet");
    const char *src = getenv("AL_SOURCE_DIR");
    if (!src) {
        fprintf(stderr, "AL_SOURCE_DIR is not set: run through ctest\n");
        return -1;
    }
    script = al_path_join(src, "tests/scripts/remote-libvirtd.sh");
    remote_dir = al_path_join(test_outdir(), "remote-libvirtd-fleet");
    log_path = al_path_join(test_outdir(), "fleet.log");
    /* a harness that cannot start is a failure with its reason, never a skip */
    remote_start(true);
    lconn = virConnectOpen("qemu:///system");
    assert_non_null(lconn);
    int fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    al_log_set_fd(fd);
    al_log_set_level(AL_LOG_INFO);
    struct al_error *err = NULL;
    uv_loop_init(&loop);
    assert_int_equal(al_virt_event_register(&loop, &err), 0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    al_log_set_fd(-1);
    al_virt_event_shutdown();
    test_loop_close(&loop);
    if (rconn)
        virConnectClose(rconn);
    if (lconn)
        virConnectClose(lconn);
    if (remote_dir) {
        _cleanup_free_ char *args = NULL;
        assert_true(asprintf(&args, "stop '%s'", remote_dir) > 0);
        if (harness(args, NULL, 0) != 0)
            fprintf(stderr, "stopping the namespaced libvirtd failed\n");
        /* the host's volumes and domains' state; the logs stay */
        _cleanup_free_ char *cmd = NULL;
        assert_true(asprintf(&cmd, "rm -rf '%s/lib' '%s/run'", remote_dir, remote_dir) > 0);
        if (system(cmd) != 0)
            fprintf(stderr, "removing %s/lib failed\n", remote_dir);
    }
    test_destroy_storage_pools(tmp);
    test_tmpdir_remove(tmp);
    free(remote_dir);
    free(script);
    free(log_path);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_fleet)};
    return test_exit_status(cmocka_run_group_tests(tests, setup, teardown));
}
