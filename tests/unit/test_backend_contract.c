/* The ops-table contract: checks every backend must answer the same way,
 * run against the fake backend (tests/support/fake_backend.c), the Proxmox
 * backend on the PVE simulator (tests/fakes/pve_sim.py, a child process on
 * 127.0.0.1) and the libvirt backend on libvirt's test:///default driver.
 *
 * The libvirt test driver creates volumes and defines and "starts" domains
 * but runs no QEMU, so its VMs get to VM_PHASE_BOOTING and never connect:
 * destroying one once it is connected, running or finished needs a guest
 * that boots (the integration tests boot_watchdog and run_cli do that on
 * real VMs). */
#include "test_util.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <libvirt/libvirt.h>

#include "fake_backend.h"
#include "provision/backend.h"
#include "runner/base/util.h"
#include "runner/loop/curl_uv.h"
#include "runner/loop/virt_uv.h"

#define PVE_TOKEN "root@pam!agentlab=0a1b2c3d-4e5f-6789-abcd-ef0123456789"

/* Where a destroy comes in the life of a VM. */
enum stop_at {
    STOP_AT_ONCE = -1, /* right after launch returns */
    STOP_AT_PROVISIONED = VM_PHASE_PROVISIONED,
    STOP_AT_BOOTING = VM_PHASE_BOOTING,
    STOP_AT_CONNECTED = VM_PHASE_CONNECTED,
    STOP_AT_RUNNING = VM_PHASE_RUNNING,
    STOP_AT_FINISHED = 100, /* after finished */
};

struct ctx {
    const char *kind; /* "fake", "proxmox", "libvirt" */
    int reaches;      /* the last stop_at its VMs get to without a real guest */
    bool virt;        /* registered libvirt's event loop on ours */
    uv_loop_t loop;
    struct al_curl *curl;
    char *tmp;
    pid_t sim;
    char sim_url[64];
    char *state_dir, *run_dir, *token_file, *fingerprint;
    char *disk, *kernel, *initrd;
    struct backend_settings settings;
    struct backend *b;
    int seq; /* job ids */
};

/* ------------------------------------------------------------ helpers */

static char *joined(const char *dir, const char *name)
{
    char *p = al_path_join(dir, name);
    assert_non_null(p);
    return p;
}

static void write_text(const char *path, const char *text)
{
    struct al_error *err = NULL;
    assert_int_equal(al_write_file_atomic(path, text, strlen(text), 0600, &err), 0);
}

/* Runs cmd through sh; returns its exit status. */
static int sh(const char *cmd)
{
    int st = system(cmd);
    return st >= 0 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void common_setup(struct ctx *c, const char *kind)
{
    c->kind = kind;
    assert_int_equal(uv_loop_init(&c->loop), 0);
    c->tmp = test_tmpdir(kind);
    c->state_dir = joined(c->tmp, "state");
    c->run_dir = joined(c->tmp, "run");
    struct al_error *err = NULL;
    assert_int_equal(al_mkdir_p(c->state_dir, 0711, &err), 0);
    assert_int_equal(al_mkdir_p(c->run_dir, 0711, &err), 0);
    c->disk = joined(c->tmp, "disk.qcow2");
    c->kernel = joined(c->tmp, "vmlinuz");
    c->initrd = joined(c->tmp, "initrd.img");
    write_text(c->disk, "x");
    write_text(c->kernel, "x");
    write_text(c->initrd, "x");
    c->settings = (struct backend_settings){
            .name = (char *)kind,
            .max_vms = 4,
            .vcpus = 8,
            .memory = 8ull << 30,
            .libvirt = {.uri = "", .emulator = "", .network = "", .storage_pool = ""},
            .proxmox = {.url = "",
                        .token_file = "",
                        .user = "",
                        .password_file = "",
                        .ca_file = "",
                        .fingerprint = "",
                        .node = "",
                        .pool = "",
                        .template_vm = "",
                        .storage = "",
                        .bridge = "",
                        .ciuser = "",
                        .sshkeys_file = ""},
    };
}

static int open_backend(struct ctx *c)
{
    struct backend_env env = {
            .loop = &c->loop,
            .curl = c->curl,
            .owner_id = "contract-test",
            .state_dir = c->state_dir,
            .run_dir = c->run_dir,
            .heartbeat_timeout_s = 30,
            .max_log_bytes = 1u << 20,
            .channel_max_frame_bytes = 1u << 20,
    };
    struct al_error *err = NULL;
    int r = backend_new(&env, &c->settings, &c->b, &err);
    if (r < 0)
        fprintf(stderr, "%s: opening the backend: %s\n", c->kind, al_error_message(err));
    al_error_free(err);
    return r;
}

static void on_closed(void *data)
{
    *(bool *)data = true;
}

static void on_curl_closed(void *data)
{
    *(bool *)data = true;
}

static void common_teardown(struct ctx *c)
{
    bool closed = false;
    backend_free(c->b, on_closed, &closed);
    assert_true(test_run_until(&c->loop, &closed, 10000));
    if (c->curl) {
        bool cc = false;
        al_curl_close(c->curl, on_curl_closed, &cc);
        assert_true(test_run_until(&c->loop, &cc, 10000));
    }
    if (c->sim > 0) {
        kill(c->sim, SIGTERM);
        waitpid(c->sim, NULL, 0);
    }
    if (c->virt) {
        uv_run(&c->loop, UV_RUN_NOWAIT); /* libvirt's deferred frees */
        al_virt_event_shutdown();
    }
    test_loop_close(&c->loop);
    free(c->state_dir);
    free(c->run_dir);
    free(c->token_file);
    free(c->fingerprint);
    free(c->disk);
    free(c->kernel);
    free(c->initrd);
    test_tmpdir_remove(c->tmp);
    free(c);
}

/* ------------------------------------------------------------ backends */

static int setup_fake(void **state)
{
    struct ctx *c = calloc(1, sizeof(*c));
    common_setup(c, "fake");
    c->reaches = STOP_AT_FINISHED;
    fake_backend_register();
    fake_backend_delay_ms = 5;
    c->settings.type = BACKEND_LIBVIRT; /* where the fake registers itself */
    assert_int_equal(open_backend(c), 0);
    *state = c;
    return 0;
}

static int teardown_fake(void **state)
{
    common_teardown(*state);
    backend_register(BACKEND_LIBVIRT, &libvirt_backend_ops);
    return 0;
}

/* Starts the simulator with a fresh self-signed certificate; its port comes
 * through a file once it listens. */
static void sim_start(struct ctx *c)
{
    const char *src = getenv("AL_SOURCE_DIR");
    assert_non_null(src);
    _cleanup_free_ char *cert = joined(c->tmp, "cert.pem");
    _cleanup_free_ char *key = joined(c->tmp, "key.pem");
    _cleanup_free_ char *cfg = joined(c->tmp, "sim.json");
    _cleanup_free_ char *port_file = joined(c->tmp, "port");
    _cleanup_free_ char *sim_dir = joined(c->tmp, "sim");
    _cleanup_free_ char *log = joined(c->tmp, "sim.log");
    _cleanup_free_ char *schema = NULL, *sim = NULL, *cmd = NULL, *fpcmd = NULL;
    assert_true(asprintf(&schema, "%s/tests/contracts/pve-api-schema.json", src) > 0);
    assert_true(asprintf(&sim, "%s/tests/fakes/pve_sim.py", src) > 0);
    assert_true(asprintf(&cmd,
                         "openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=pve-sim -days 2 "
                         "-keyout '%s' -out '%s' -addext subjectAltName=IP:127.0.0.1 "
                         "2>/dev/null",
                         key, cert) > 0);
    if (sh(cmd) != 0)
        test_skip("openssl cannot make the simulator's certificate");
    c->fingerprint = joined(c->tmp, "fp");
    assert_true(asprintf(&fpcmd,
                         "openssl x509 -in '%s' -noout -fingerprint -sha256 | cut -d= -f2 "
                         "| tr -d '\\n' >'%s'",
                         cert, c->fingerprint) > 0);
    assert_int_equal(sh(fpcmd), 0);
    char *fp = NULL;
    size_t fplen = 0;
    struct al_error *err = NULL;
    assert_int_equal(al_read_file(c->fingerprint, 4096, &fp, &fplen, &err), 0);
    free(c->fingerprint);
    c->fingerprint = fp;
    write_text(cfg, "{\"token\": \"" PVE_TOKEN "\", \"auth_delay_s\": 0.3,"
                    " \"task_time\": {\"qmclone\": 0.1, \"qmstart\": 0.1, \"qmstop\": 0.05,"
                    " \"qmdestroy\": 0.05}, \"agent_delay_s\": 0.2}");
    c->token_file = joined(c->tmp, "token");
    write_text(c->token_file, PVE_TOKEN "\n");

    const char *py = access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
    c->sim = fork();
    assert_true(c->sim >= 0);
    if (c->sim == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (fd >= 0)
            dup2(fd, 2);
        execlp(py, py, sim, "--schema", schema, "--cert", cert, "--key", key, "--state-dir",
               sim_dir, "--port-file", port_file, "--config", cfg, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 400; i++) {
        char *port = NULL;
        size_t n = 0;
        struct al_error *perr = NULL;
        if (al_read_file(port_file, 64, &port, &n, &perr) == 0 && n > 0) {
            snprintf(c->sim_url, sizeof(c->sim_url), "https://127.0.0.1:%.*s",
                     (int)strcspn(port, "\n"), port);
            free(port);
            return;
        }
        free(port);
        al_error_free(perr);
        if (waitpid(c->sim, NULL, WNOHANG) == c->sim) {
            c->sim = 0;
            fail_msg("the PVE simulator died; see %s", log);
        }
        usleep(50 * 1000);
    }
    fail_msg("the PVE simulator did not start; see %s", log);
}

/* True when the simulator holds no VM but its template, runs no task or
 * process, and saw no request that broke the API schema or wire rules. */
static bool sim_clean(struct ctx *c)
{
    _cleanup_free_ char *cmd = NULL;
    assert_true(asprintf(&cmd,
                         "curl -skf '%s/_sim/state' | python3 -c '"
                         "import json, sys\n"
                         "s = json.load(sys.stdin)\n"
                         "vms = [v for v in s[\"vms\"] if not v[\"initial\"]]\n"
                         "ok = not vms and not s[\"tasks_running\"] and s[\"procs_running\"] == 0"
                         " and not s[\"violations\"]\n"
                         "sys.exit(0 if ok else 1)'",
                         c->sim_url) > 0);
    for (int i = 0; i < 50; i++) { /* tasks wind down after the last reply */
        if (sh(cmd) == 0)
            return true;
        usleep(100 * 1000);
    }
    return false;
}

static int setup_proxmox(void **state)
{
    struct ctx *c = calloc(1, sizeof(*c));
    common_setup(c, "proxmox");
    c->reaches = STOP_AT_FINISHED;
    struct al_error *err = NULL;
    assert_int_equal(al_curl_new(&c->loop, &c->curl, &err), 0);
    sim_start(c);
    c->settings.type = BACKEND_PROXMOX;
    c->settings.proxmox.url = c->sim_url;
    c->settings.proxmox.token_file = c->token_file;
    c->settings.proxmox.fingerprint = c->fingerprint;
    c->settings.proxmox.template_vm = "9000";
    assert_int_equal(open_backend(c), 0);
    *state = c;
    return 0;
}

static int teardown_proxmox(void **state)
{
    struct ctx *c = *state;
    assert_true(sim_clean(c));
    common_teardown(c);
    return 0;
}

static int setup_libvirt(void **state)
{
    struct ctx *c = calloc(1, sizeof(*c));
    common_setup(c, "libvirt");
    struct al_error *err = NULL;
    assert_int_equal(al_virt_event_register(&c->loop, &err), 0);
    c->virt = true;
    c->reaches = STOP_AT_BOOTING;
    c->settings.type = BACKEND_LIBVIRT;
    c->settings.libvirt.uri = "test:///default";
    c->settings.libvirt.accel = ACCEL_TCG; /* no probe: nothing boots here */
    c->settings.libvirt.inject = INJECT_SEED;
    c->settings.libvirt.boot_watchdog_s = 30;
    c->settings.libvirt.boot_watchdog_tcg_s = 90;
    assert_int_equal(open_backend(c), 0);
    *state = c;
    return 0;
}

static int teardown_libvirt(void **state)
{
    common_teardown(*state);
    return 0;
}

/* ------------------------------------------------------------ calls */

struct list_result {
    bool called;
    int result;
    size_t n;
};

static void on_list(int result, struct owned_vm *vms, size_t n, const struct al_error *err,
                    void *data)
{
    (void)err;
    struct list_result *l = data;
    l->called = true;
    l->result = result;
    l->n = n;
    for (size_t i = 0; i < n; i++)
        fprintf(stderr, "owned: %s (job %s)\n", vms[i].name, vms[i].job_id ? vms[i].job_id : "-");
    owned_vm_array_free(vms, n);
}

/* How many VMs list_owned finds. */
static size_t owned_count(struct ctx *c)
{
    struct list_result l = {0};
    assert_int_equal(c->b->ops->list_owned(c->b, on_list, &l), 0);
    assert_true(test_run_until(&c->loop, &l.called, 20000));
    assert_int_equal(l.result, 0);
    return l.n;
}

struct done_result {
    bool called;
    int calls;
    int result;
};

static void on_done(int result, const struct al_error *err, void *data)
{
    struct done_result *d = data;
    if (result < 0)
        fprintf(stderr, "done: %d %s\n", result, al_error_message(err));
    d->called = true;
    d->calls++;
    d->result = result;
}

struct watch {
    int phase; /* highest phase seen, -1 = none */
    bool finished;
    int finished_calls;
    bool reached;
    int want;
    struct vm_result result;
};

static void ev_phase(struct vm *vm, enum vm_phase p, void *data)
{
    (void)vm;
    struct watch *w = data;
    if ((int)p > w->phase)
        w->phase = (int)p;
    if (w->want != STOP_AT_FINISHED && (int)p >= w->want)
        w->reached = true;
}

static void ev_finished(struct vm *vm, const struct vm_result *r, void *data)
{
    (void)vm;
    struct watch *w = data;
    w->finished = true;
    w->finished_calls++;
    w->result = *r;
    w->reached = true; /* no later phase can come */
}

static void ev_output(struct vm *vm, enum vm_stream stream, const uint8_t *buf, size_t len,
                      void *data)
{
    (void)vm, (void)stream, (void)buf, (void)len, (void)data;
}

static void ev_artifact(struct vm *vm, const uint8_t *buf, size_t len, void *data)
{
    (void)vm, (void)buf, (void)len, (void)data;
}

static void ev_diag(struct vm *vm, const char *message, void *data)
{
    (void)vm, (void)message, (void)data;
}

static const struct vm_events events = {.phase = ev_phase,
                                        .output = ev_output,
                                        .artifact = ev_artifact,
                                        .diag = ev_diag,
                                        .finished = ev_finished};

static void make_request(struct ctx *c, const char *job_id, struct vm_image *img,
                         struct vm_request *req)
{
    static const char *const argv[] = {"sh", "-c", "echo contract", NULL};
    *img = (struct vm_image){.name = "contract",
                             .disk = c->disk,
                             .kernel = c->kernel,
                             .initrd = c->initrd,
                             .cmdline = "console=ttyS0",
                             .virtual_size = 1u << 30};
    *req = (struct vm_request){.job_id = job_id,
                               .attempt = 1,
                               .image_name = "contract",
                               .image = img,
                               .cpus = 1,
                               .memory = 256u << 20,
                               .inject = -1,
                               .argv = argv,
                               .timeout_s = 60};
}

/* ------------------------------------------------------------ the contract */

/* An open backend reports room and nothing in use. */
static void test_capacity(void **state)
{
    struct ctx *c = *state;
    struct backend_capacity cap;
    memset(&cap, 0xa5, sizeof(cap));
    c->b->ops->capacity(c->b, &cap);
    assert_true(cap.healthy);
    assert_false(cap.broken);
    assert_true(cap.max_vms > 0);
    assert_true(cap.vcpus > 0);
    assert_true(cap.memory > 0);
    assert_int_equal(cap.used_vms, 0);
    assert_int_equal(cap.used_vcpus, 0);
    assert_int_equal(cap.used_memory, 0);
}

/* vm_name is a valid name, stable, different per attempt, names the job,
 * and refuses a buffer too small for it. */
static void test_vm_name(void **state)
{
    struct ctx *c = *state;
    char a[160], a2[160], b[160], tiny[4];
    assert_int_equal(c->b->ops->vm_name(c->b, "job1", 1, a, sizeof(a)), 0);
    assert_int_equal(c->b->ops->vm_name(c->b, "job1", 1, a2, sizeof(a2)), 0);
    assert_int_equal(c->b->ops->vm_name(c->b, "job1", 2, b, sizeof(b)), 0);
    assert_true(al_name_is_valid(a));
    assert_string_equal(a, a2);
    assert_string_not_equal(a, b);
    assert_non_null(strstr(a, "job1"));
    assert_true(c->b->ops->vm_name(c->b, "job1", 1, tiny, sizeof(tiny)) < 0);
}

/* A fresh backend owns nothing. */
static void test_list_owned_empty(void **state)
{
    struct ctx *c = *state;
    assert_int_equal(owned_count(c), 0);
}

/* Destroying an owned VM that does not exist is done at once, with 0. */
static void test_destroy_owned_unknown(void **state)
{
    struct ctx *c = *state;
    char name[160];
    assert_int_equal(c->b->ops->vm_name(c->b, "never-launched", 3, name, sizeof(name)), 0);
    struct done_result d = {0};
    assert_int_equal(c->b->ops->destroy_owned(c->b, name, on_done, &d), 0);
    assert_true(test_run_until(&c->loop, &d.called, 20000));
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.result, 0);
    assert_int_equal(owned_count(c), 0);
}

/* A name that is not one of the backend's VM names is refused with EINVAL
 * before anything happens. */
static void test_destroy_owned_refuses_foreign_names(void **state)
{
    struct ctx *c = *state;
    static const char *const bad[] = {"", "../etc", "a/b", "not-ours", "-x", "name with space"};
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        struct done_result d = {0};
        assert_int_equal(c->b->ops->destroy_owned(c->b, bad[i], on_done, &d), -EINVAL);
        uv_run(&c->loop, UV_RUN_NOWAIT);
        assert_false(d.called);
    }
}

/* launch refuses a job id that is not a valid name with EINVAL, creating
 * nothing and leaving *ret_vm alone. */
static void test_launch_refuses_invalid_job_ids(void **state)
{
    struct ctx *c = *state;
    char long_id[80];
    memset(long_id, 'a', sizeof(long_id) - 1);
    long_id[sizeof(long_id) - 1] = '\0';
    const char *const bad[] = {"", "../x", "-x", "a b", "x/y", long_id};
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        struct vm_image img;
        struct vm_request req;
        make_request(c, bad[i], &img, &req);
        struct watch w = {.phase = -1, .want = STOP_AT_FINISHED};
        struct vm *vm = (struct vm *)&w; /* must stay as it is */
        struct al_error *err = NULL;
        assert_int_equal(c->b->ops->launch(c->b, &req, &events, &w, &vm, &err), -EINVAL);
        assert_ptr_equal(vm, (struct vm *)&w);
        assert_non_null(err);
        al_error_free(err);
    }
    uv_run(&c->loop, UV_RUN_NOWAIT);
    assert_int_equal(owned_count(c), 0);
    struct backend_capacity cap;
    c->b->ops->capacity(c->b, &cap);
    assert_int_equal(cap.used_vms, 0);
}

/* Launches a VM, destroys it at `at`, and checks that nothing is left: done
 * runs once with 0, finished at most once, no owned VM, no capacity used. */
static void destroy_at(struct ctx *c, int at)
{
    char id[32];
    snprintf(id, sizeof(id), "contract%d", ++c->seq);
    struct vm_image img;
    struct vm_request req;
    make_request(c, id, &img, &req);
    struct watch w = {.phase = -1, .want = at};
    struct vm *vm = NULL;
    struct al_error *err = NULL;
    int r = c->b->ops->launch(c->b, &req, &events, &w, &vm, &err);
    if (r < 0)
        fail_msg("%s: launch: %s", c->kind, al_error_message(err));
    assert_non_null(vm);
    assert_non_null(vm->name);
    char want_name[160];
    assert_int_equal(c->b->ops->vm_name(c->b, id, 1, want_name, sizeof(want_name)), 0);
    assert_string_equal(vm->name, want_name);
    if (at != STOP_AT_ONCE) {
        if (!test_run_until(&c->loop, at == STOP_AT_FINISHED ? &w.finished : &w.reached, 30000))
            fail_msg("%s: the VM did not get to %d (phase %d)", c->kind, at, w.phase);
        if (at == STOP_AT_FINISHED) {
            assert_int_equal(w.result.outcome, VM_EXITED);
            assert_int_equal(w.result.exit_code, 0);
        }
    }
    struct done_result d = {0};
    c->b->ops->destroy(vm, on_done, &d);
    assert_true(test_run_until(&c->loop, &d.called, 30000));
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.result, 0);
    assert_true(w.finished_calls <= 1);
    assert_int_equal(owned_count(c), 0);
    struct backend_capacity cap;
    c->b->ops->capacity(c->b, &cap);
    assert_int_equal(cap.used_vms, 0);
}

static void test_destroy_at_once(void **state)
{
    destroy_at(*state, STOP_AT_ONCE);
}

static void test_destroy_at_every_phase(void **state)
{
    struct ctx *c = *state;
    static const int at[] = {STOP_AT_PROVISIONED, STOP_AT_BOOTING, STOP_AT_CONNECTED,
                             STOP_AT_RUNNING, STOP_AT_FINISHED};
    for (size_t i = 0; i < ARRAY_SIZE(at) && at[i] <= c->reaches; i++)
        destroy_at(c, at[i]);
}

/* A VM that is alive is not destroy_owned's to remove. */
static void test_destroy_owned_refuses_live_vm(void **state)
{
    struct ctx *c = *state;
    struct vm_image img;
    struct vm_request req;
    make_request(c, "contract-live", &img, &req);
    struct watch w = {.phase = -1, .want = STOP_AT_FINISHED};
    struct vm *vm = NULL;
    struct al_error *err = NULL;
    if (c->b->ops->launch(c->b, &req, &events, &w, &vm, &err) < 0)
        fail_msg("%s: launch: %s", c->kind, al_error_message(err));
    struct done_result od = {0};
    assert_int_equal(c->b->ops->destroy_owned(c->b, vm->name, on_done, &od), -EBUSY);
    struct done_result d = {0};
    c->b->ops->destroy(vm, on_done, &d);
    assert_true(test_run_until(&c->loop, &d.called, 30000));
    assert_false(od.called);
    assert_int_equal(owned_count(c), 0);
}

/* The copy a backend keeps of the engine's image outlives the original. */
static void test_vm_image_dup(void **state)
{
    (void)state;
    char disk[] = "/s/images/x/disk.qcow2", kernel[] = "/s/images/x/vmlinuz";
    struct vm_image img = {.name = "x", .disk = disk, .kernel = kernel, .virtual_size = 42};
    struct vm_image *c = vm_image_dup(&img);
    assert_non_null(c);
    memset(disk, 0, sizeof(disk));
    memset(kernel, 0, sizeof(kernel));
    assert_string_equal(c->name, "x");
    assert_string_equal(c->disk, "/s/images/x/disk.qcow2");
    assert_string_equal(c->kernel, "/s/images/x/vmlinuz");
    assert_null(c->initrd);
    assert_null(c->cmdline);
    assert_int_equal(c->virtual_size, 42);
    free(c);
}

/* libvirt, remote transport: a seed volume left in the backend's pool by a
 * VM that is gone is a leftover of that VM (named after it), and
 * destroy_owned deletes it. */
static void test_libvirt_seed_volume_leftover(void **state)
{
    struct ctx *c = *state;
    virConnectPtr conn = virConnectOpen("test:///default");
    assert_non_null(conn);
    virStoragePoolPtr *pools = NULL;
    int np = virConnectListAllStoragePools(conn, &pools, 0);
    virStoragePoolPtr pool = NULL;
    for (int i = 0; i < np; i++) {
        if (!pool && strncmp(virStoragePoolGetName(pools[i]), "agentlab-", 9) == 0)
            pool = pools[i];
        else
            virStoragePoolFree(pools[i]);
    }
    free(pools);
    assert_non_null(pool);
    char name[160];
    assert_int_equal(c->b->ops->vm_name(c->b, "jseedleft", 1, name, sizeof(name)), 0);
    char xml[512];
    snprintf(xml, sizeof(xml),
             "<volume><name>%s.seed.iso</name><capacity unit='bytes'>4096</capacity></volume>",
             name);
    virStorageVolPtr vol = virStorageVolCreateXML(pool, xml, 0);
    assert_non_null(vol);
    virStorageVolFree(vol);

    assert_int_equal(owned_count(c), 1);
    struct done_result d = {0};
    assert_int_equal(c->b->ops->destroy_owned(c->b, name, on_done, &d), 0);
    assert_true(test_run_until(&c->loop, &d.called, 20000));
    assert_int_equal(d.result, 0);
    assert_int_equal(owned_count(c), 0);
    char vname[200];
    snprintf(vname, sizeof(vname), "%s.seed.iso", name);
    assert_null(virStorageVolLookupByName(pool, vname));
    virStoragePoolFree(pool);
    virConnectClose(conn);
}

/* libvirt: what the daemon's other backends own is not this one's to list
 * (and so to destroy): a run dir whose owner file names another backend
 * (all libvirt backends share run_dir/vms), and a golden image's volume in
 * the pool (it shares the domains' prefix). A run dir that names this
 * backend is its leftover. */
static void test_libvirt_leftovers_of_others(void **state)
{
    struct ctx *c = *state;
    virConnectPtr conn = virConnectOpen("test:///default");
    assert_non_null(conn);
    virStoragePoolPtr *pools = NULL;
    int np = virConnectListAllStoragePools(conn, &pools, 0);
    virStoragePoolPtr pool = NULL;
    for (int i = 0; i < np; i++) {
        if (!pool && strncmp(virStoragePoolGetName(pools[i]), "agentlab-", 9) == 0)
            pool = pools[i];
        else
            virStoragePoolFree(pools[i]);
    }
    free(pools);
    assert_non_null(pool);
    static const char img_xml[] =
            "<volume><name>agentlab-img-micro-disk-0123456789abcdef.qcow2</name>"
            "<capacity unit='bytes'>4096</capacity></volume>";
    virStorageVolPtr vol = virStorageVolCreateXML(pool, img_xml, 0);
    assert_non_null(vol);

    struct al_error *err = NULL;
    const char *owners[][2] = {{"jotherbe", "elsewhere"}, {"jthisbe", c->b->name}};
    char *dirs[2];
    for (size_t i = 0; i < 2; i++) {
        char name[160], line[512];
        assert_int_equal(c->b->ops->vm_name(c->b, owners[i][0], 1, name, sizeof(name)), 0);
        char *vms = joined(c->run_dir, "vms");
        dirs[i] = joined(vms, name);
        free(vms);
        assert_int_equal(al_mkdir_p(dirs[i], 0711, &err), 0);
        char *owner = joined(dirs[i], "owner");
        snprintf(line, sizeof(line), "%s %s 1 %s\n", c->b->env.owner_id, owners[i][0],
                 owners[i][1]);
        assert_int_equal(al_write_file_atomic(owner, line, strlen(line), 0644, &err), 0);
        free(owner);
    }
    /* only this backend's run dir */
    assert_int_equal(owned_count(c), 1);

    struct done_result d = {0};
    char name[160];
    assert_int_equal(c->b->ops->vm_name(c->b, "jthisbe", 1, name, sizeof(name)), 0);
    assert_int_equal(c->b->ops->destroy_owned(c->b, name, on_done, &d), 0);
    assert_true(test_run_until(&c->loop, &d.called, 20000));
    assert_int_equal(d.result, 0);
    assert_int_equal(owned_count(c), 0);
    assert_int_equal(access(dirs[1], F_OK), -1);
    assert_int_equal(access(dirs[0], F_OK), 0); /* the other backend's stays */
    assert_int_equal(al_rm_rf(dirs[0], &err), 0);
    free(dirs[0]);
    free(dirs[1]);
    virStorageVolDelete(vol, 0);
    virStorageVolFree(vol);
    virStoragePoolFree(pool);
    virConnectClose(conn);
}

static const struct CMUnitTest helpers[] = {
        cmocka_unit_test(test_vm_image_dup),
};

/* clang-format off */
#define CONTRACT_TESTS                                              \
    cmocka_unit_test(test_capacity),                                \
    cmocka_unit_test(test_vm_name),                                 \
    cmocka_unit_test(test_list_owned_empty),                        \
    cmocka_unit_test(test_destroy_owned_unknown),                   \
    cmocka_unit_test(test_destroy_owned_refuses_foreign_names),     \
    cmocka_unit_test(test_launch_refuses_invalid_job_ids),          \
    cmocka_unit_test(test_destroy_at_once),                         \
    cmocka_unit_test(test_destroy_at_every_phase),                  \
    cmocka_unit_test(test_destroy_owned_refuses_live_vm)
/* clang-format on */

static const struct CMUnitTest contract[] = {CONTRACT_TESTS};
/* libvirt's event loop can be registered once per process: one group */
static const struct CMUnitTest libvirt_contract[] = {
        CONTRACT_TESTS,
        cmocka_unit_test(test_libvirt_seed_volume_leftover),
        cmocka_unit_test(test_libvirt_leftovers_of_others),
};

int main(void)
{
    assert_int_equal(al_curl_global_init(), 0);
    int failed = cmocka_run_group_tests_name("helpers", helpers, NULL, NULL);
    failed += cmocka_run_group_tests_name("fake", contract, setup_fake, teardown_fake);
    failed += cmocka_run_group_tests_name("proxmox", contract, setup_proxmox, teardown_proxmox);
    failed += cmocka_run_group_tests_name("libvirt", libvirt_contract, setup_libvirt,
                                          teardown_libvirt);
    al_curl_global_cleanup();
    return test_exit_status(failed);
}
