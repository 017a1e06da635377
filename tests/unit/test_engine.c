/* The engine against a simulated hypervisor: admission, fallback across a
 * pool's backends, persisted transitions, retries, cancellation, shutdown
 * and crash reconcile. The fake backend behaves like a VM that boots in a few
 * milliseconds; each job says through its environment how it should end:
 *   FAKE=ok (default) | fail:<code> | error | hang | timeout
 * (tests/support/fake_backend.c).
 */
#include "test_util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#include "runner/engine/attempt.h"
#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/engine/engine.h"
#include "runner/base/hardlimits.h"
#include "images/catalog.h"
#include "fake_backend.h"
#include "runner/loop/work.h"

/* ------------------------------------------------------------ harness */

struct ctx {
    uv_loop_t loop;
    char *dir;
    struct config *cfg;
    struct store *store;
    struct engine *engine;
    struct engine_watch *watch;
    int finished;
    bool reconciled;
    bool stopped;
    char out[4096];
    size_t out_len;
    struct engine_reconcile_report report;
    char last_backend[64];
};

static void on_output(const char *job, enum vm_stream s, const char *buf, size_t len, void *data)
{
    (void)job;
    (void)s;
    struct ctx *c = data;
    if (c->out_len + len < sizeof(c->out)) {
        memcpy(c->out + c->out_len, buf, len);
        c->out_len += len;
    }
}

static void on_finished(const char *job, enum job_state st, const struct attempt_result *r,
                        void *data)
{
    (void)job;
    (void)st;
    (void)r;
    struct ctx *c = data;
    c->finished++;
}

static void on_event(const struct store_event *ev, void *data)
{
    struct ctx *c = data;
    if (ev->to == JOB_STATE_PROVISIONING && ev->detail) {
        const char *b = strstr(ev->detail, "backend ");
        if (b)
            snprintf(c->last_backend, sizeof(c->last_backend), "%s", b + 8);
    }
}

static void on_reconciled(const struct engine_reconcile_report *r, void *data)
{
    struct ctx *c = data;
    c->report = *r;
    c->reconciled = true;
}

static const char conf_fmt[] = "[agent]\n"
                               "state_dir = %s\n"
                               "run_dir = %s/run\n"
                               "log_level = error\n"
                               "max_attempts = 2\n"
                               "[backend \"a\"]\n"
                               "max_vms = 1\n"
                               "[backend \"b\"]\n"
                               "max_vms = 8\n"
                               "[pool \"default\"]\n"
                               "backends = a, b\n"
                               "[pool \"only-a\"]\n"
                               "backends = a\n";

static void engine_up(struct ctx *c)
{
    static const struct engine_observer obs = {
            .event = on_event, .output = on_output, .finished = on_finished};
    struct al_error *err = NULL;
    struct engine_params ep = {.loop = &c->loop,
                               .cfg = c->cfg,
                               .store = c->store,
                               .owner_id = "daemon:00000000000000000000000000000001"};
    assert_int_equal(engine_new(&ep, &c->engine, &err), 0);
    c->watch = engine_observe(c->engine, &obs, c);
    c->reconciled = false;
    engine_start(c->engine, on_reconciled, c);
    assert_true(test_run_until(&c->loop, &c->reconciled, 5000));
}

static void on_stopped(void *data)
{
    struct ctx *c = data;
    c->stopped = true;
}

static void engine_down(struct ctx *c)
{
    c->stopped = false;
    engine_stop(c->engine, on_stopped, c);
    assert_true(test_run_until(&c->loop, &c->stopped, 5000));
    c->engine = NULL;
}

/* Two libvirt-typed hosts of 2 and 4 VMs and a proxmox-typed backend of
 * one, all played by the fake. */
static const char spread_conf_fmt[] = "[agent]\n"
                                      "state_dir = %s\n"
                                      "run_dir = %s/run\n"
                                      "log_level = error\n"
                                      "image = debian-12\n"
                                      "[backend \"l2\"]\n"
                                      "max_vms = 2\n"
                                      "[backend \"l4\"]\n"
                                      "max_vms = 4\n"
                                      "[backend \"pve\"]\n"
                                      "type = proxmox\n"
                                      "url = https://127.0.0.1:8006\n"
                                      "token_file = /nonexistent\n"
                                      "template = 9000\n"
                                      "max_vms = 1\n"
                                      "[pool \"default\"]\n"
                                      "backends = pve, l2, l4\n";

static int setup_conf(void **state, bool spread)
{
    struct ctx *c = calloc(1, sizeof(*c));
    uv_loop_init(&c->loop);
    c->dir = test_tmpdir("engine");
    unsetenv("AGENTLAB_STATE_DIR");
    unsetenv("AGENTLAB_RUN_DIR");
    char conf[2048];
    if (spread)
        snprintf(conf, sizeof(conf), spread_conf_fmt, c->dir, c->dir);
    else
        snprintf(conf, sizeof(conf), conf_fmt, c->dir, c->dir);
    struct al_error *err = NULL;
    assert_int_equal(config_load_string(conf, strlen(conf), "test.conf", &c->cfg, &err), 0);
    fake_backend_write_image(c->dir, "debian-12");
    char *db = al_path_join(c->dir, "agentlab.db");
    assert_int_equal(store_open(db, NULL, &c->store, &err), 0);
    free(db);
    fake_backend_register();
    n_planted = 0;
    destroyed_owned = 0;
    al_log_set_level(AL_LOG_ERROR);
    *state = c;
    return 0;
}

static int setup(void **state)
{
    return setup_conf(state, false);
}

static int setup_spread(void **state)
{
    int r = setup_conf(state, true);
    fake_backend_register_type(BACKEND_PROXMOX);
    return r;
}

static int teardown(void **state)
{
    struct ctx *c = *state;
    if (c->engine)
        engine_down(c);
    test_loop_close(&c->loop);
    struct al_error *err = NULL;
    assert_int_equal(store_integrity_check(c->store, &err), 0);
    store_close(c->store);
    config_free(c->cfg);
    test_tmpdir_remove(c->dir);
    free(c);
    return 0;
}

static int teardown_spread(void **state)
{
    backend_register(BACKEND_PROXMOX, &proxmox_backend_ops);
    return teardown(state);
}

static char *submit(struct ctx *c, const char *json, char id[STORE_JOB_ID_SIZE])
{
    struct job_spec *spec = NULL;
    struct al_error *err = NULL;
    assert_int_equal(job_spec_parse(json, strlen(json), 0, &spec, &err), 0);
    if (engine_submit(c->engine, spec, NULL, id, &err) < 0) {
        char *msg = strdup(al_error_message(err));
        al_error_free(err);
        return msg;
    }
    return NULL;
}

static enum job_state state_of(struct ctx *c, const char *id, int *ret_attempts, int *ret_code)
{
    struct store_job *j = NULL;
    struct al_error *err = NULL;
    assert_int_equal(store_job_get(c->store, id, &j, &err), 0);
    enum job_state s = j->state;
    if (ret_attempts)
        *ret_attempts = j->attempts;
    if (ret_code)
        *ret_code = j->has_exit_code ? j->exit_code : -1;
    store_job_free(j);
    return s;
}

/* Runs the loop until the job reaches state (or 5 s pass). */
static void wait_state(struct ctx *c, const char *id, enum job_state want)
{
    uint64_t end = al_now_mono_ms() + 5000;
    while (state_of(c, id, NULL, NULL) != want && al_now_mono_ms() < end)
        uv_run(&c->loop, UV_RUN_ONCE);
    assert_int_equal(state_of(c, id, NULL, NULL), want);
}

static bool all_finished_flag;

static void wait_finished(struct ctx *c, int n)
{
    uint64_t end = al_now_mono_ms() + 10000;
    while (c->finished < n && al_now_mono_ms() < end)
        uv_run(&c->loop, UV_RUN_ONCE);
    assert_int_equal(c->finished, n);
    (void)all_finished_flag;
}

/* Store failures on demand: linked with -Wl,--wrap for these two. */
static bool store_fails;
int __real_store_vm_remove(struct store *s, const char *backend, const char *vm_name,
                           struct al_error **err);
int __wrap_store_vm_remove(struct store *s, const char *backend, const char *vm_name,
                           struct al_error **err);
int __real_store_job_set_log_bytes(struct store *s, const char *id, uint64_t bytes,
                                   struct al_error **err);
int __wrap_store_job_set_log_bytes(struct store *s, const char *id, uint64_t bytes,
                                   struct al_error **err);

int __wrap_store_vm_remove(struct store *s, const char *backend, const char *vm_name,
                           struct al_error **err)
{
    if (store_fails)
        return al_error_set(err, EIO, "injected store failure");
    return __real_store_vm_remove(s, backend, vm_name, err);
}

int __wrap_store_job_set_log_bytes(struct store *s, const char *id, uint64_t bytes,
                                   struct al_error **err)
{
    if (store_fails)
        return al_error_set(err, EIO, "injected store failure");
    return __real_store_job_set_log_bytes(s, id, bytes, err);
}

/* ------------------------------------------------------------ tests */

/* The one admission rule: a pool's queue, not every pool's, decides
 * whether a forge source may take a job for it; a source's cap is its own. */
static void test_admission_per_pool(void **state)
{
    struct ctx *c = *state;
    engine_up(c);
    char id[STORE_JOB_ID_SIZE];
    /* only-a (backend a, one VM): one job runs, nine wait */
    for (int i = 0; i < 10; i++)
        assert_null(submit(
                c, "{\"command\":[\"x\"],\"pool\":\"only-a\",\"env\":{\"FAKE\":\"hang\"}}", id));
    uint64_t end = al_now_mono_ms() + 5000;
    unsigned queued = 0, running = 0;
    while (al_now_mono_ms() < end) {
        uv_run(&c->loop, UV_RUN_NOWAIT);
        engine_counts(c->engine, &queued, &running);
        if (running == 1 && queued == 9)
            break;
    }
    assert_int_equal(running, 1);
    assert_int_equal(queued, 9);
    long room = engine_pool_room(c->engine, "default");
    assert_true(room > 0 && room < 9); /* fewer free slots than jobs queued elsewhere */
    assert_int_equal(engine_pool_room(c->engine, "only-a"), 0); /* room is per pool too */

    char why[200] = "";
    struct engine_admit a = {.pool = "default", .start_now = true};
    assert_int_equal(engine_admit(c->engine, &a, why, sizeof(why)), ENGINE_ADMIT_YES);
    a.held = (unsigned)room;
    assert_int_equal(engine_admit(c->engine, &a, why, sizeof(why)), ENGINE_ADMIT_POOL_FULL);
    assert_non_null(strstr(why, "pool default"));
    a = (struct engine_admit){.pool = "only-a", .start_now = true};
    assert_int_equal(engine_admit(c->engine, &a, why, sizeof(why)), ENGINE_ADMIT_POOL_FULL);
    assert_non_null(strstr(why, "9 are queued"));
    /* a source that queues (spool, HTTP queue, API) needs no free slot */
    a.start_now = false;
    assert_int_equal(engine_admit(c->engine, &a, NULL, 0), ENGINE_ADMIT_YES);
    a = (struct engine_admit){.pool = "default", .live = 4, .cap = 4};
    assert_int_equal(engine_admit(c->engine, &a, why, sizeof(why)), ENGINE_ADMIT_SOURCE_FULL);
    assert_non_null(strstr(why, "4 jobs of this source are live"));
    a.live = 3;
    assert_int_equal(engine_admit(c->engine, &a, NULL, 0), ENGINE_ADMIT_YES);
}

/* Observers never re-enter the engine: a submission from inside a callback
 * is refused, and deferred to the loop it goes through. */
struct reentry {
    struct engine *e;
    int result;
    bool tried;
};

static void on_event_submit(const struct store_event *ev, void *data)
{
    struct reentry *r = data;
    if (r->tried || ev->to != JOB_STATE_QUEUED)
        return;
    r->tried = true;
    struct job_spec *spec = NULL;
    const char json[] = "{\"command\":[\"x\"]}";
    assert_int_equal(job_spec_parse(json, strlen(json), 0, &spec, NULL), 0);
    char id[STORE_JOB_ID_SIZE];
    struct al_error *err = NULL;
    r->result = engine_submit(r->e, spec, NULL, id, &err);
    al_error_free(err);
}

static void test_observer_cannot_reenter(void **state)
{
    struct ctx *c = *state;
    engine_up(c);
    struct reentry r = {.e = c->engine};
    static const struct engine_observer obs = {.event = on_event_submit};
    struct engine_watch *w = engine_observe(c->engine, &obs, &r);
    char id[STORE_JOB_ID_SIZE];
    assert_null(submit(c, "{\"command\":[\"echo\",\"hi\"]}", id));
    assert_true(r.tried);
    assert_int_equal(r.result, -EDEADLK);
    engine_unobserve(c->engine, w);
    wait_finished(c, 1);
}

static void test_runs_and_persists(void **state)
{
    struct ctx *c = *state;
    engine_up(c);
    char id[STORE_JOB_ID_SIZE];
    assert_null(submit(c, "{\"command\":[\"echo\",\"hi\"]}", id));
    wait_finished(c, 1);
    int attempts, code;
    assert_int_equal(state_of(c, id, &attempts, &code), JOB_STATE_SUCCEEDED);
    assert_int_equal(attempts, 1);
    assert_int_equal(code, 0);
    assert_memory_equal(c->out, "hello\n", 6);
    /* every transition is an event, in order */
    struct store_event *evs = NULL;
    size_t n = 0;
    struct al_error *err = NULL;
    assert_int_equal(store_events_since(c->store, id, 0, 0, &evs, &n, &err), 0);
    enum job_state want[] = {JOB_STATE_QUEUED, JOB_STATE_PROVISIONING, JOB_STATE_BOOTING,
                             JOB_STATE_RUNNING, JOB_STATE_SUCCEEDED};
    assert_int_equal(n, ARRAY_SIZE(want));
    for (size_t i = 0; i < n; i++)
        assert_int_equal(evs[i].to, want[i]);
    store_events_free(evs, n);
    /* the VM record is gone with the VM */
    struct store_vm *vms = NULL;
    assert_int_equal(store_vm_list(c->store, NULL, &vms, &n, &err), 0);
    assert_int_equal(n, 0);
    store_vms_free(vms, n);
}

/* A store error after an attempt is logged once, with the job id, not
 * dropped. */
/* Asserts that the log has exactly one line with what, and that it names
 * the job. */
static void assert_one_line(const char *text, const char *what, const char *job)
{
    char want[128];
    snprintf(want, sizeof(want), "job=%s", job);
    const char *line = strstr(text, what);
    if (!line)
        fail_msg("no log line for \"%s\":\n%s", what, text);
    const char *start = line;
    while (start > text && start[-1] != '\n')
        start--;
    const char *end = strchr(line, '\n');
    if (!memmem(start, (size_t)(end - start), want, strlen(want)))
        fail_msg("the line lacks %s: %.*s", want, (int)(end - start), start);
    assert_null(strstr(end, what));
}

/* A store error after an attempt, or in the sweep of the VM records at the
 * next start, is logged once, with the job id, not dropped. */
static void test_store_errors_are_logged(void **state)
{
    struct ctx *c = *state;
    char *log_path = al_path_join(c->dir, "engine.log");
    int fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    al_log_set_fd(fd);
    engine_up(c);
    char id[STORE_JOB_ID_SIZE];
    /* a job that stays RUNNING until cancelled: the failures start while
     * it runs, whatever the speed of the machine */
    assert_null(submit(c, "{\"command\":[\"x\"],\"env\":{\"FAKE\":\"hang\"}}", id));
    wait_state(c, id, JOB_STATE_RUNNING);
    store_fails = true;
    struct al_error *err = NULL;
    assert_int_equal(engine_cancel(c->engine, id, &err), 0);
    wait_finished(c, 1);
    store_fails = false;
    /* the VM record stayed behind: the next start's sweep is for it */
    struct store_vm *vms = NULL;
    size_t n = 0;
    assert_int_equal(store_vm_list(c->store, NULL, &vms, &n, &err), 0);
    assert_int_equal(n, 1);
    store_vms_free(vms, n);
    engine_down(c);
    store_fails = true;
    engine_up(c);
    store_fails = false;
    al_log_set_fd(-1);
    close(fd);

    char *text = NULL;
    assert_int_equal(al_read_file(log_path, 1 << 20, &text, NULL, &err), 0);
    assert_one_line(text, "forgetting VM", id);
    assert_one_line(text, "storing the output size", id);
    assert_one_line(text, "forgetting swept VM", id);
    free(text);
    free(log_path);
}

static void test_fallback_to_second_backend(void **state)
{
    struct ctx *c = *state;
    engine_up(c);
    char ids[3][STORE_JOB_ID_SIZE];
    /* backend a holds one VM: the first job runs there, the others on b */
    for (int i = 0; i < 3; i++)
        assert_null(submit(c, "{\"command\":[\"true\"],\"env\":{\"FAKE\":\"hang\"}}", ids[i]));
    for (int i = 0; i < 3; i++)
        wait_state(c, ids[i], JOB_STATE_RUNNING);
    struct engine_backend_status st[4];
    assert_int_equal(engine_backends(c->engine, st, 4), 2);
    assert_int_equal(st[0].jobs_started, 1);
    assert_int_equal(st[1].jobs_started, 2);
    assert_non_null(strstr(st[0].last_fallback, "backend a is full (1/1 VMs"));
    /* a pool without the spare backend waits instead */
    char waiting[STORE_JOB_ID_SIZE];
    assert_null(submit(c, "{\"command\":[\"true\"],\"pool\":\"only-a\"}", waiting));
    uv_run(&c->loop, UV_RUN_NOWAIT);
    assert_int_equal(state_of(c, waiting, NULL, NULL), JOB_STATE_QUEUED);
    struct al_error *err = NULL;
    for (int i = 0; i < 3; i++)
        assert_int_equal(engine_cancel(c->engine, ids[i], &err), 0);
    wait_finished(c, 4); /* the three cancelled, then the waiting one ran */
    for (int i = 0; i < 3; i++)
        assert_int_equal(state_of(c, ids[i], NULL, NULL), JOB_STATE_CANCELED);
    assert_int_equal(state_of(c, waiting, NULL, NULL), JOB_STATE_SUCCEEDED);
    assert_string_equal(c->last_backend, "a");
}

/* Among the libvirt hosts that fit, the least loaded takes the job (share
 * of VM slots in use, then free vCPUs, then the pool's order); the
 * proxmox backend, though listed first, only when both hosts are full. */
static void test_spread_least_loaded(void **state)
{
    struct ctx *c = *state;
    engine_up(c);
    /* 0/2 = 0/4: pool order; 0/4 < 1/2; 1/4 < 1/2; 1/2 = 2/4, then l2's 63
     * free vCPUs beat l4's 62; l2 full; l2 full; both full: pve */
    static const char *const want[] = {"l2", "l4", "l4", "l2", "l4", "l4", "pve"};
    char ids[8][STORE_JOB_ID_SIZE];
    for (size_t i = 0; i < ARRAY_SIZE(want); i++) {
        assert_null(submit(c, "{\"command\":[\"x\"],\"env\":{\"FAKE\":\"hang\"}}", ids[i]));
        wait_state(c, ids[i], JOB_STATE_RUNNING);
        if (!streq(c->last_backend, want[i]))
            fail_msg("job %zu went to %s, not %s", i + 1, c->last_backend, want[i]);
    }
    struct engine_backend_status st[4];
    assert_int_equal(engine_backends(c->engine, st, 4), 3);
    assert_string_equal(st[0].name, "l2");
    assert_int_equal(st[0].jobs_started, 2);
    assert_int_equal(st[1].jobs_started, 4);
    assert_int_equal(st[2].jobs_started, 1);
    /* the hosts say why the last job passed them by; pve was never skipped */
    assert_non_null(strstr(st[0].last_fallback, "backend l2 is full (2/2 VMs"));
    assert_non_null(strstr(st[1].last_fallback, "backend l4 is full (4/4 VMs"));
    assert_string_equal(st[2].last_fallback, "");
    /* everything full: the next one waits, and takes the first slot freed */
    assert_null(submit(c, "{\"command\":[\"true\"]}", ids[7]));
    uv_run(&c->loop, UV_RUN_NOWAIT);
    assert_int_equal(state_of(c, ids[7], NULL, NULL), JOB_STATE_QUEUED);
    struct al_error *err = NULL;
    assert_int_equal(engine_cancel(c->engine, ids[1], &err), 0);
    wait_finished(c, 2);
    assert_int_equal(state_of(c, ids[7], NULL, NULL), JOB_STATE_SUCCEEDED);
    assert_string_equal(c->last_backend, "l4");
    for (size_t i = 0; i < ARRAY_SIZE(want); i++) {
        if (i != 1)
            assert_int_equal(engine_cancel(c->engine, ids[i], &err), 0);
    }
    wait_finished(c, 8);
}

static void run_for(struct ctx *c, unsigned ms);

/* Warm pools on three libvirt-typed hosts and a proxmox-typed backend
 * listed first, all played by the fake; %d: max_vms of a, h2, h3, then the
 * default pool's warm count. Pool "pinned" (warm %d) lives on h2 alone and
 * is filled first: its warm VM is load on h2 like any other. */
static const char warm_conf_fmt[] = "[agent]\n"
                                    "state_dir = %s\n"
                                    "run_dir = %s/run\n"
                                    "log_level = error\n"
                                    "image = debian-12\n"
                                    "[backend \"pve\"]\n"
                                    "type = proxmox\n"
                                    "url = https://127.0.0.1:8006\n"
                                    "token_file = /nonexistent\n"
                                    "template = 9000\n"
                                    "max_vms = 2\n"
                                    "[backend \"a\"]\n"
                                    "max_vms = %d\n"
                                    "[backend \"h2\"]\n"
                                    "max_vms = %d\n"
                                    "[backend \"h3\"]\n"
                                    "max_vms = %d\n"
                                    "[pool \"pinned\"]\n"
                                    "labels = pinned\n"
                                    "backends = h2\n"
                                    "warm = %d\n"
                                    "[pool \"default\"]\n"
                                    "backends = pve, a, h2, h3\n"
                                    "warm = %d\n";

static void use_warm_conf(struct ctx *c, int max_a, int max_h2, int max_h3, int pinned_warm,
                          int warm)
{
    char conf[2048];
    snprintf(conf, sizeof(conf), warm_conf_fmt, c->dir, c->dir, max_a, max_h2, max_h3, pinned_warm,
             warm);
    config_free(c->cfg);
    c->cfg = NULL;
    struct al_error *err = NULL;
    assert_int_equal(config_load_string(conf, strlen(conf), "test.conf", &c->cfg, &err), 0);
}

/* Runs the loop until n warm VMs are ready and none boots (or 5 s pass). */
static void wait_warm_ready(struct ctx *c, unsigned n)
{
    uint64_t end = al_now_mono_ms() + 5000;
    unsigned ready = 0, booting = 0;
    while (al_now_mono_ms() < end) {
        uv_run(&c->loop, UV_RUN_ONCE);
        engine_warm_counts(c->engine, NULL, &ready, &booting);
        if (ready == n && booting == 0)
            break;
    }
    assert_int_equal(ready, n);
    assert_int_equal(booting, 0);
}

/* Asserts how many warm VMs of pool sit on each of pve, a, h2, h3. */
static void assert_warm_on(struct ctx *c, const char *pool, int pve, int a, int h2, int h3)
{
    static const char *const names[] = {"pve", "a", "h2", "h3"};
    const int want[] = {pve, a, h2, h3};
    int have[ARRAY_SIZE(names)] = {0};
    struct engine_warm_info info[16];
    size_t n = engine_warm_list(c->engine, info, ARRAY_SIZE(info));
    assert_true(n <= ARRAY_SIZE(info));
    for (size_t i = 0; i < n; i++) {
        if (!streq(info[i].pool, pool))
            continue;
        size_t k = 0;
        while (k < ARRAY_SIZE(names) && !streq(info[i].backend, names[k]))
            k++;
        assert_true(k < ARRAY_SIZE(names));
        have[k]++;
    }
    for (size_t k = 0; k < ARRAY_SIZE(names); k++) {
        if (have[k] != want[k])
            fail_msg("pool %s: %d warm VMs on %s, not %d (pve/a/h2/h3: %d/%d/%d/%d)", pool, have[k],
                     names[k], want[k], have[0], have[1], have[2], have[3]);
    }
}

/* Warm VMs are placed by the spread rule of jobs: three on three hosts of
 * room 4 go one per host, not all on the first one with room; the Proxmox
 * backend listed first gets none while the hosts have room. A job takes
 * one, and its replacement goes to a host with the least load, counting
 * the job's VM. */
static void test_warm_spread_across_hosts(void **state)
{
    struct ctx *c = *state;
    use_warm_conf(c, 4, 4, 4, 0, 3);
    engine_up(c);
    wait_warm_ready(c, 3);
    assert_warm_on(c, "default", 0, 1, 1, 1);

    char id[STORE_JOB_ID_SIZE];
    assert_null(submit(c, "{\"command\":[\"x\"],\"env\":{\"FAKE\":\"hang\"}}", id));
    wait_state(c, id, JOB_STATE_RUNNING);
    if (!strstr(c->last_backend, ", warm VM "))
        fail_msg("the job booted cold on %s", c->last_backend);
    wait_warm_ready(c, 3);
    /* the job's host holds its VM; the replacement went to one of the
     * two others: one host has two VMs, the others one, pve none */
    char job_host[8] = "";
    snprintf(job_host, sizeof(job_host), "%.*s", (int)strcspn(c->last_backend, ","),
             c->last_backend);
    int warm_a = streq(job_host, "a") ? 0 : 1, warm_h2 = streq(job_host, "h2") ? 0 : 1,
        warm_h3 = streq(job_host, "h3") ? 0 : 1;
    assert_int_equal(warm_a + warm_h2 + warm_h3, 2);
    /* least loaded (all 1/4, equal vCPUs): the earliest host of the pool */
    if (warm_a == 1)
        warm_a++;
    else
        warm_h2++;
    assert_warm_on(c, "default", 0, warm_a, warm_h2, warm_h3);

    struct al_error *err = NULL;
    assert_int_equal(engine_cancel(c->engine, id, &err), 0);
    wait_finished(c, 1);
    assert_int_equal(state_of(c, id, NULL, NULL), JOB_STATE_CANCELED);
}

/* A host that is unhealthy or full gets no warm VM; the Proxmox tier takes
 * one only when no libvirt host has room; a backend that cannot assign a
 * job to a warm VM (real Proxmox) gets none at all. */
static void test_warm_skips_full_unhealthy_and_fallback(void **state)
{
    struct ctx *c = *state;
    /* a unhealthy; h2 (1 VM) full with pinned's warm VM; h3 takes two */
    fake_a_health = 1;
    use_warm_conf(c, 4, 1, 2, 1, 3);
    engine_up(c);
    wait_warm_ready(c, 4);
    assert_warm_on(c, "pinned", 0, 0, 1, 0);
    assert_warm_on(c, "default", 1, 0, 0, 2);
    engine_down(c);

    /* the same over a proxmox backend without assign: the third waits */
    static struct backend_ops no_warm_ops;
    no_warm_ops = fake_backend_ops;
    no_warm_ops.assign = NULL;
    backend_register(BACKEND_PROXMOX, &no_warm_ops);
    engine_up(c);
    wait_warm_ready(c, 3);
    run_for(c, 200);
    unsigned ready = 0, booting = 0;
    engine_warm_counts(c->engine, "default", &ready, &booting);
    assert_int_equal(ready + booting, 2);
    assert_warm_on(c, "default", 0, 0, 0, 2);

    /* a back: it takes the missing one */
    fake_a_health = 0;
    wait_warm_ready(c, 4);
    assert_warm_on(c, "default", 0, 1, 0, 2);
}

static void run_for(struct ctx *c, unsigned ms)
{
    uint64_t end = al_now_mono_ms() + ms;
    while (al_now_mono_ms() < end)
        uv_run(&c->loop, UV_RUN_ONCE);
}

static void test_unhealthy_and_broken_backends(void **state)
{
    struct ctx *c = *state;
    engine_up(c);
    /* unhealthy for now: the job waits, and runs once the backend is back */
    fake_a_health = 1;
    char id[STORE_JOB_ID_SIZE];
    assert_null(submit(c, "{\"command\":[\"true\"],\"pool\":\"only-a\"}", id));
    run_for(c, 1500);
    assert_int_equal(state_of(c, id, NULL, NULL), JOB_STATE_QUEUED);
    fake_a_health = 0; /* nothing else happens: the engine must notice alone */
    wait_finished(c, 1);
    assert_int_equal(state_of(c, id, NULL, NULL), JOB_STATE_SUCCEEDED);
    /* broken: a pool with nothing else ends the job instead of queueing it forever */
    fake_a_health = 2;
    assert_null(submit(c, "{\"command\":[\"true\"],\"pool\":\"only-a\"}", id));
    wait_finished(c, 2);
    assert_int_equal(state_of(c, id, NULL, NULL), JOB_STATE_ERROR);
    struct store_job *j = NULL;
    struct al_error *err = NULL;
    assert_int_equal(store_job_get(c->store, id, &j, &err), 0);
    assert_non_null(strstr(j->reason, "until its configuration is fixed: backend a is unhealthy: "
                                      "HTTP 401 authentication failure"));
    store_job_free(j);
    /* a pool with another backend falls back to it */
    assert_null(submit(c, "{\"command\":[\"true\"]}", id));
    wait_finished(c, 3);
    assert_int_equal(state_of(c, id, NULL, NULL), JOB_STATE_SUCCEEDED);
    assert_string_equal(c->last_backend, "b");
}

static void test_retry_infra_errors_only(void **state)
{
    struct ctx *c = *state;
    engine_up(c);
    char err_id[STORE_JOB_ID_SIZE], fail_id[STORE_JOB_ID_SIZE], to_id[STORE_JOB_ID_SIZE];
    assert_null(submit(c, "{\"command\":[\"x\"],\"env\":{\"FAKE\":\"error\"}}", err_id));
    assert_null(submit(c, "{\"command\":[\"x\"],\"env\":{\"FAKE\":\"fail:3\"}}", fail_id));
    assert_null(submit(c, "{\"command\":[\"x\"],\"env\":{\"FAKE\":\"timeout\"}}", to_id));
    wait_finished(c, 3);
    int attempts, code;
    assert_int_equal(state_of(c, err_id, &attempts, NULL), JOB_STATE_ERROR);
    assert_int_equal(attempts, 2); /* max_attempts = 2: retried once on a fresh VM */
    assert_int_equal(state_of(c, fail_id, &attempts, &code), JOB_STATE_FAILED);
    assert_int_equal(attempts, 1); /* the workload failed: never retried */
    assert_int_equal(code, 3);
    assert_int_equal(state_of(c, to_id, &attempts, NULL), JOB_STATE_TIMED_OUT);
    assert_int_equal(attempts, 1);
}

static void test_rejects_bad_jobs(void **state)
{
    struct ctx *c = *state;
    engine_up(c);
    char id[STORE_JOB_ID_SIZE];
    char *msg = submit(c, "{\"command\":[\"x\"],\"pool\":\"nope\"}", id);
    assert_non_null(msg);
    assert_non_null(strstr(msg, "pool: no pool named \"nope\""));
    free(msg);
    /* the default pool takes [agent]'s size, so it bounds nothing itself */
    msg = submit(c, "{\"command\":[\"x\"],\"resources\":{\"cpus\":64,\"memory_mb\":500000}}", id);
    assert_non_null(msg);
    assert_non_null(strstr(msg, "fit no backend"));
    free(msg);
    msg = submit(c, "{\"command\":[\"x\"],\"image\":\"ghost\"}", id);
    assert_non_null(msg);
    assert_non_null(strstr(msg, "ghost"));
    free(msg);
    /* a disk over max_disk_size (default 64G) is refused and counted */
    uint64_t hits = limits_hits(AL_LIMIT_DISK_SIZE);
    msg = submit(c, "{\"command\":[\"x\"],\"resources\":{\"disk_gb\":65}}", id);
    assert_non_null(msg);
    assert_non_null(strstr(msg, "resources.disk_gb: 65 GiB is more than max_disk_size (64 GiB)"));
    free(msg);
    assert_int_equal(limits_hits(AL_LIMIT_DISK_SIZE), hits + 1);
    /* nothing was stored */
    struct store_job_page page = {0};
    struct store_job_filter f = {.state = JOB_STATE_NONE, .source = JOB_SOURCE_NONE};
    struct al_error *err = NULL;
    assert_int_equal(store_job_list(c->store, &f, &page, &err), 0);
    assert_int_equal(page.n, 0);
    store_job_page_clear(&page);
}

static void test_stop_requeues_and_restart_reconciles(void **state)
{
    struct ctx *c = *state;
    engine_up(c);
    char running[STORE_JOB_ID_SIZE], queued[STORE_JOB_ID_SIZE];
    assert_null(submit(c,
                       "{\"command\":[\"x\"],\"env\":{\"FAKE\":\"hang\"},\"pool\":\"only-a\","
                       "\"max_attempts\":3}",
                       running));
    assert_null(submit(c, "{\"command\":[\"x\"],\"pool\":\"only-a\"}", queued));
    wait_state(c, running, JOB_STATE_RUNNING);
    assert_int_equal(state_of(c, queued, NULL, NULL), JOB_STATE_QUEUED);
    engine_down(c);
    /* shutting down ended the running attempt as ERROR and queued it again */
    int attempts;
    assert_int_equal(state_of(c, running, &attempts, NULL), JOB_STATE_QUEUED);
    assert_int_equal(attempts, 1);
    assert_int_equal(state_of(c, queued, NULL, NULL), JOB_STATE_QUEUED);

    /* a crash leaves a job RUNNING with its VM; reconcile ends and requeues it,
     * destroys our VMs and those of dead runs, and leaves others alone */
    struct store_transition t = {.to = JOB_STATE_PROVISIONING};
    struct al_error *err = NULL;
    assert_int_equal(store_job_transition(c->store, running, &t, NULL, &err), 0);
    t.to = JOB_STATE_BOOTING;
    assert_int_equal(store_job_transition(c->store, running, &t, NULL, &err), 0);
    planted[0] = (struct owned_vm){.name = "fake-a-x-2",
                                   .owner = "daemon:00000000000000000000000000000001",
                                   .job_id = running};
    planted[1] = (struct owned_vm){.name = "someone-else",
                                   .owner = "daemon:ffffffffffffffffffffffffffffffff"};
    planted[2] = (struct owned_vm){.name = "fake-dead-run-1", .owner = "run:not-this-boot:1:1"};
    n_planted = 3;
    engine_up(c);
    assert_int_equal(c->report.jobs_failed, 1);
    assert_int_equal(c->report.jobs_requeued, 1);
    assert_int_equal(c->report.jobs_resumed, 1);
    /* planted on both backends: ours and the dead run's, twice */
    assert_int_equal(destroyed_owned, 4);
    assert_int_equal(c->report.vms_destroyed, 4);
    n_planted = 0;
    /* the requeued job runs again (hang); cancel it, the other succeeds */
    wait_state(c, running, JOB_STATE_RUNNING);
    assert_int_equal(engine_cancel(c->engine, running, &err), 0);
    wait_finished(c, 2);
    assert_int_equal(state_of(c, running, &attempts, NULL), JOB_STATE_CANCELED);
    assert_int_equal(attempts, 3);
    assert_int_equal(state_of(c, queued, NULL, NULL), JOB_STATE_SUCCEEDED);
    assert_int_equal(engine_cancel(c->engine, queued, &err), -EALREADY);
    al_error_free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_runs_and_persists, setup, teardown),
            cmocka_unit_test_setup_teardown(test_admission_per_pool, setup, teardown),
            cmocka_unit_test_setup_teardown(test_observer_cannot_reenter, setup, teardown),
            cmocka_unit_test_setup_teardown(test_store_errors_are_logged, setup, teardown),
            cmocka_unit_test_setup_teardown(test_fallback_to_second_backend, setup, teardown),
            cmocka_unit_test_setup_teardown(test_spread_least_loaded, setup_spread,
                                            teardown_spread),
            cmocka_unit_test_setup_teardown(test_warm_spread_across_hosts, setup_spread,
                                            teardown_spread),
            cmocka_unit_test_setup_teardown(test_warm_skips_full_unhealthy_and_fallback,
                                            setup_spread, teardown_spread),
            cmocka_unit_test_setup_teardown(test_retry_infra_errors_only, setup, teardown),
            cmocka_unit_test_setup_teardown(test_unhealthy_and_broken_backends, setup, teardown),
            cmocka_unit_test_setup_teardown(test_rejects_bad_jobs, setup, teardown),
            cmocka_unit_test_setup_teardown(test_stop_requeues_and_restart_reconciles, setup,
                                            teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
