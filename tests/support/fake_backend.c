#include "fake_backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runner/base/list.h"
#include "runner/base/util.h"
#include "images/catalog.h"
#include "runner/loop/work.h"

struct fake_vm {
    struct vm base;
    uv_timer_t timer;
    int step;
    const char *mode;
    int lines;   /* stream:N */
    unsigned ms; /* between stream lines */
    bool destroyed;
    bool warm;     /* booted without a job: waits connected for assign() */
    bool assigned; /* a warm VM that got its job */
    backend_done_cb done;
    void *done_data;
    struct fake_backend *fb;
    struct al_list link; /* on fake_backend.vms */
};

struct fake_backend {
    struct backend *b;
    struct al_list vms; /* newest first */
    int launched;
};

/* VMs the fake "finds" at reconcile, and what destroy_owned removed. */
struct owned_vm planted[4];
size_t n_planted;
int destroyed_owned;
unsigned fake_backend_delay_ms = 5;

static int launched;

static const char *env_of(const struct vm_request *req, const char *name)
{
    for (size_t i = 0; i < req->n_env; i++) {
        if (streq(req->env[i].name, name))
            return req->env[i].value;
    }
    return NULL;
}

static const char *mode_of(const struct vm_request *req)
{
    const char *m = env_of(req, "FAKE");
    return m ? m : "ok";
}

static void fake_step(uv_timer_t *t)
{
    struct fake_vm *v = t->data;
    const struct vm_events *ev = v->base.ev;
    struct vm_result r = {0};
    switch (v->step++) {
    case 0:
        if (streq(v->mode, "error")) {
            r.outcome = VM_INFRA_ERROR;
            snprintf(r.reason, sizeof(r.reason), "simulated infrastructure failure");
            ev->finished(&v->base, &r, v->base.ev_data);
            return;
        }
        ev->phase(&v->base, VM_PHASE_PROVISIONED, v->base.ev_data);
        ev->phase(&v->base, VM_PHASE_BOOTING, v->base.ev_data);
        break;
    case 1:
        /* an assigned warm VM's owner saw CONNECTED in assign() */
        if (!v->assigned)
            ev->phase(&v->base, VM_PHASE_CONNECTED, v->base.ev_data);
        if (v->warm && !v->assigned)
            return; /* until assign() */
        ev->phase(&v->base, VM_PHASE_RUNNING, v->base.ev_data);
        if (strncmp(v->mode, "stream:", 7) == 0) {
            uv_timer_start(&v->timer, fake_step, v->ms, 0);
            return;
        }
        ev->output(&v->base, VM_STDOUT, (const uint8_t *)"hello\n", 6, v->base.ev_data);
        if (streq(v->mode, "hang"))
            return; /* until cancelled */
        break;
    default:
        if (strncmp(v->mode, "stream:", 7) == 0 && v->step - 3 < v->lines) {
            char line[32];
            int n = snprintf(line, sizeof(line), "line %d\n", v->step - 2);
            ev->output(&v->base, VM_STDOUT, (const uint8_t *)line, (size_t)n, v->base.ev_data);
            uv_timer_start(&v->timer, fake_step, v->ms, 0);
            return;
        }
        if (strncmp(v->mode, "fail:", 5) == 0) {
            r.outcome = VM_EXITED;
            r.exit_code = (int)strtol(v->mode + 5, NULL, 10);
        } else if (streq(v->mode, "timeout")) {
            r.outcome = VM_GUEST_TIMEOUT;
            r.exit_code = 124;
        } else {
            r.outcome = VM_EXITED;
        }
        ev->finished(&v->base, &r, v->base.ev_data);
        return;
    }
    uv_timer_start(&v->timer, fake_step, fake_backend_delay_ms, 0);
}

static int fake_open(struct backend *b, struct al_error **err)
{
    (void)err;
    struct fake_backend *fb = calloc(1, sizeof(*fb));
    fb->b = b;
    al_list_init(&fb->vms);
    b->priv = fb;
    return 0;
}

static void fake_close(struct backend *b, void (*done)(void *), void *data)
{
    free(b->priv);
    if (done)
        done(data);
}

static int fake_vm_name(struct backend *b, const char *job, int attempt, char *buf, size_t size)
{
    int n = snprintf(buf, size, "fake-%s-%s-%d", b->name, job, attempt);
    return n < 0 || (size_t)n >= size ? -ENAMETOOLONG : 0;
}

int fake_a_health;

static void fake_capacity(struct backend *b, struct backend_capacity *ret)
{
    struct fake_backend *fb = b->priv;
    struct backend_capacity c = {
            .max_vms = b->cfg->max_vms, .vcpus = 64, .memory = 64ull << 30, .healthy = true};
    if (streq(b->name, "a") && fake_a_health) {
        c.healthy = false;
        c.broken = fake_a_health == 2;
        snprintf(c.reason, sizeof(c.reason), "%s",
                 c.broken ? "HTTP 401 authentication failure" : "connection refused");
    }
    al_list_for_each(v, &fb->vms, struct fake_vm, link) {
        c.used_vms++;
        c.used_vcpus += 1;
    }
    *ret = c;
}

/* What the VM plays: the job's FAKE, FAKE_MS (a warm VM's job comes with
 * assign()). The strings stay the request's, alive until the VM is
 * destroyed. */
static void set_workload(struct fake_vm *v, const struct vm_request *req)
{
    v->mode = mode_of(req);
    v->ms = 20;
    v->lines = 0;
    int x = 0;
    const char *ms = env_of(req, "FAKE_MS");
    if (ms && al_parse_int(ms, 1, 60000, &x) == 0)
        v->ms = (unsigned)x;
    if (strncmp(v->mode, "stream:", 7) == 0 && al_parse_int(v->mode + 7, 0, 100000, &x) == 0)
        v->lines = x;
}

static int fake_launch(struct backend *b, const struct vm_request *req, const struct vm_events *ev,
                       void *ev_data, struct vm **ret, struct al_error **err)
{
    struct fake_backend *fb = b->priv;
    if (!al_name_is_valid(req->job_id))
        return al_error_set(err, EINVAL, "invalid job id \"%s\"", req->job_id);
    /* like the libvirt backend it stands in for: the engine resolves the image */
    if (!req->image || !req->image->disk || !req->image->kernel)
        return al_error_set(err, EINVAL, "no image for job %s", req->job_id);
    struct fake_vm *v = calloc(1, sizeof(*v));
    char name[160];
    fake_vm_name(b, req->job_id, req->attempt, name, sizeof(name));
    v->base = (struct vm){.backend = b, .name = strdup(name), .ev = ev, .ev_data = ev_data};
    set_workload(v, req);
    v->warm = req->warm;
    v->fb = fb;
    uv_timer_init(b->env.loop, &v->timer);
    v->timer.data = v;
    uv_timer_start(&v->timer, fake_step, fake_backend_delay_ms, 0);
    al_list_add(&fb->vms, &v->link);
    fb->launched++;
    launched++;
    *ret = &v->base;
    return 0;
}

/* Like the libvirt backend's: only a warm VM whose helper is connected
 * takes a job; its new owner sees the phases it missed at once, then the
 * job runs. */
static int fake_assign(struct vm *vm, const struct vm_request *req, const struct vm_events *ev,
                       void *ev_data, struct al_error **err)
{
    struct fake_vm *v = container_of(vm, struct fake_vm, base);
    if (!v->warm || v->assigned || v->step < 2)
        return al_error_set(err, EBUSY, "VM %s is not a ready warm VM", vm->name);
    set_workload(v, req);
    v->assigned = true;
    v->base.ev = ev;
    v->base.ev_data = ev_data;
    ev->phase(vm, VM_PHASE_PROVISIONED, ev_data);
    ev->phase(vm, VM_PHASE_BOOTING, ev_data);
    ev->phase(vm, VM_PHASE_CONNECTED, ev_data);
    v->step = 1;
    uv_timer_start(&v->timer, fake_step, fake_backend_delay_ms, 0);
    return 0;
}

static int fake_cancel(struct vm *vm)
{
    struct fake_vm *v = container_of(vm, struct fake_vm, base);
    uv_timer_stop(&v->timer);
    struct vm_result r = {.outcome = VM_CANCELED, .exit_code = 130};
    v->base.ev->finished(&v->base, &r, v->base.ev_data);
    return 0;
}

static void fake_freed(uv_handle_t *h)
{
    struct fake_vm *v = h->data;
    v->done(0, NULL, v->done_data);
    free(v->base.name);
    free(v);
}

static void fake_destroy(struct vm *vm, backend_done_cb done, void *data)
{
    struct fake_vm *v = container_of(vm, struct fake_vm, base);
    al_list_del(&v->link);
    v->done = done;
    v->done_data = data;
    uv_close((uv_handle_t *)&v->timer, fake_freed);
}

static int fake_list_owned(struct backend *b, backend_list_cb cb, void *data)
{
    (void)b;
    struct owned_vm *v = calloc(n_planted + 1, sizeof(*v));
    for (size_t i = 0; i < n_planted; i++) {
        v[i].name = strdup(planted[i].name);
        v[i].owner = strdup(planted[i].owner);
        v[i].job_id = planted[i].job_id ? strdup(planted[i].job_id) : NULL;
    }
    cb(0, v, n_planted, NULL, data);
    return 0;
}

static void fake_destroy_owned_done(void *data, int result, struct al_error *err)
{
    (void)err;
    void **pair = data;
    backend_done_cb done = (backend_done_cb)(uintptr_t)pair[0];
    done(result, NULL, pair[1]);
    free(pair);
}

static int noop_work(void *data, struct al_error **err)
{
    (void)data;
    (void)err;
    return 0;
}

static int fake_destroy_owned(struct backend *b, const char *name, backend_done_cb done, void *data)
{
    struct fake_backend *fb = b->priv;
    if (strncmp(name, "fake-", 5) != 0 || !al_name_is_valid(name))
        return -EINVAL;
    al_list_for_each(v, &fb->vms, struct fake_vm, link) {
        if (streq(v->base.name, name))
            return -EBUSY; /* live: destroy it through its owner */
    }
    destroyed_owned++;
    void **pair = calloc(2, sizeof(void *));
    pair[0] = (void *)(uintptr_t)done;
    pair[1] = data;
    return al_work_queue(b->env.loop, noop_work, fake_destroy_owned_done, pair, NULL);
}

const struct backend_ops fake_backend_ops = {
        .type = "fake",
        .caps = BACKEND_NEEDS_IMAGE,
        .open = fake_open,
        .close = fake_close,
        .vm_name = fake_vm_name,
        .capacity = fake_capacity,
        .launch = fake_launch,
        .assign = fake_assign,
        .cancel = fake_cancel,
        .destroy = fake_destroy,
        .list_owned = fake_list_owned,
        .destroy_owned = fake_destroy_owned,
};

void fake_backend_register(void)
{
    backend_register(BACKEND_LIBVIRT, &fake_backend_ops);
    launched = 0;
    fake_a_health = 0;
}

void fake_backend_register_type(int type)
{
    backend_register(type, &fake_backend_ops);
}

int fake_backend_launched(void)
{
    return launched;
}

void fake_backend_write_image(const char *state_dir, const char *name)
{
    struct al_error *err = NULL;
    char *dir = NULL;
    if (asprintf(&dir, "%s/images/%s", state_dir, name) < 0 || al_mkdir_p(dir, 0755, &err) < 0)
        abort();
    struct image_info info = {.name = (char *)name,
                              .dir = dir,
                              .format = "qcow2",
                              .cmdline = "console=ttyS0",
                              .recipe = "fake",
                              .recipe_hash = "0",
                              .sha256 = "0"};
    info.disk = al_path_join(dir, IMAGE_DISK_FILE);
    info.kernel = al_path_join(dir, IMAGE_KERNEL_FILE);
    info.initrd = al_path_join(dir, IMAGE_INITRD_FILE);
    const char *files[] = {info.disk, info.kernel, info.initrd};
    for (size_t i = 0; i < 3; i++) {
        if (al_write_file_atomic(files[i], "x", 1, 0644, &err) < 0)
            abort();
    }
    if (image_manifest_write(dir, &info, &err) < 0)
        abort();
    free(info.disk);
    free(info.kernel);
    free(info.initrd);
    free(dir);
}
