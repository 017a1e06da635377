#include "fake_backend.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "base/util.h"
#include "images/catalog.h"
#include "provision/backend.h"

struct fvm {
    struct vm base;
    uv_timer_t timer;
    int step;
    char mode[64];
    int lines;   /* stream:N */
    unsigned ms; /* between lines */
    backend_done_cb done;
    void *done_data;
    struct fbackend *fb;
    struct fvm *next;
};

struct fbackend {
    struct backend *b;
    struct fvm *vms;
};

static int launched;

static const char *env_of(const struct vm_request *req, const char *name)
{
    for (size_t i = 0; i < req->n_env; i++) {
        if (strcmp(req->env[i].name, name) == 0)
            return req->env[i].value;
    }
    return NULL;
}

static void finish(struct fvm *v, enum vm_outcome o, int code, const char *reason)
{
    struct vm_result r = {.outcome = o, .exit_code = code};
    snprintf(r.reason, sizeof(r.reason), "%s", reason ? reason : "");
    v->base.ev->finished(&v->base, &r, v->base.ev_data);
}

static void step(uv_timer_t *t)
{
    struct fvm *v = t->data;
    const struct vm_events *ev = v->base.ev;
    void *d = v->base.ev_data;
    int s = v->step++;
    if (s == 0) {
        if (strcmp(v->mode, "error") == 0) {
            finish(v, VM_INFRA_ERROR, 125, "simulated infrastructure failure");
            return;
        }
        ev->phase(&v->base, VM_PHASE_PROVISIONED, d);
        ev->phase(&v->base, VM_PHASE_BOOTING, d);
        uv_timer_start(&v->timer, step, 2, 0);
        return;
    }
    if (s == 1) {
        ev->phase(&v->base, VM_PHASE_CONNECTED, d);
        ev->phase(&v->base, VM_PHASE_RUNNING, d);
        if (strncmp(v->mode, "stream:", 7) != 0) {
            ev->output(&v->base, VM_STDOUT, (const uint8_t *)"hello\n", 6, d);
            if (strcmp(v->mode, "hang") == 0)
                return; /* until cancelled */
        }
        uv_timer_start(&v->timer, step, v->ms, 0);
        return;
    }
    if (strncmp(v->mode, "stream:", 7) == 0 && s - 2 < v->lines) {
        char line[32];
        int n = snprintf(line, sizeof(line), "line %d\n", s - 1);
        ev->output(&v->base, VM_STDOUT, (const uint8_t *)line, (size_t)n, d);
        uv_timer_start(&v->timer, step, v->ms, 0);
        return;
    }
    if (strncmp(v->mode, "fail:", 5) == 0) {
        int code = 1;
        al_parse_int(v->mode + 5, 0, 255, &code);
        finish(v, VM_EXITED, code, NULL);
        return;
    }
    finish(v, VM_EXITED, 0, NULL);
}

static int f_open(struct backend *b, struct al_error **err)
{
    (void)err;
    struct fbackend *fb = calloc(1, sizeof(*fb));
    if (!fb)
        return -ENOMEM;
    fb->b = b;
    b->priv = fb;
    return 0;
}

static void f_close(struct backend *b, void (*done)(void *), void *data)
{
    free(b->priv);
    if (done)
        done(data);
}

static int f_vm_name(struct backend *b, const char *job, int attempt, char *buf, size_t size)
{
    snprintf(buf, size, "fake-%s-%s-%d", b->name, job, attempt);
    return 0;
}

static void f_capacity(struct backend *b, struct backend_capacity *ret)
{
    struct fbackend *fb = b->priv;
    struct backend_capacity c = {.max_vms = b->cfg->max_vms ? b->cfg->max_vms : 4,
                                 .vcpus = 64,
                                 .memory = 64ull << 30,
                                 .healthy = true};
    for (struct fvm *v = fb->vms; v; v = v->next) {
        c.used_vms++;
        c.used_vcpus++;
        c.used_memory += 1u << 30;
    }
    *ret = c;
}

static int f_launch(struct backend *b, const struct vm_request *req, const struct vm_events *ev,
                    void *ev_data, struct vm **ret, struct al_error **err)
{
    (void)err;
    struct fbackend *fb = b->priv;
    struct fvm *v = calloc(1, sizeof(*v));
    char name[160];
    if (!v)
        return -ENOMEM;
    f_vm_name(b, req->job_id, req->attempt, name, sizeof(name));
    v->base = (struct vm){.backend = b, .name = strdup(name), .ev = ev, .ev_data = ev_data};
    const char *mode = env_of(req, "FAKE");
    snprintf(v->mode, sizeof(v->mode), "%s", mode ? mode : "ok");
    v->ms = 20;
    const char *ms = env_of(req, "FAKE_MS");
    if (ms) {
        int x = 0;
        if (al_parse_int(ms, 1, 60000, &x) == 0)
            v->ms = (unsigned)x;
    }
    if (strncmp(v->mode, "stream:", 7) == 0)
        al_parse_int(v->mode + 7, 0, 100000, &v->lines);
    v->fb = fb;
    uv_timer_init(b->env.loop, &v->timer);
    v->timer.data = v;
    uv_timer_start(&v->timer, step, 2, 0);
    v->next = fb->vms;
    fb->vms = v;
    launched++;
    *ret = &v->base;
    return 0;
}

static int f_cancel(struct vm *vm)
{
    struct fvm *v = container_of(vm, struct fvm, base);
    uv_timer_stop(&v->timer);
    finish(v, VM_CANCELED, 130, "cancelled");
    return 0;
}

static void f_freed(uv_handle_t *h)
{
    struct fvm *v = h->data;
    v->done(0, NULL, v->done_data);
    free(v->base.name);
    free(v);
}

static void f_destroy(struct vm *vm, backend_done_cb done, void *data)
{
    struct fvm *v = container_of(vm, struct fvm, base);
    for (struct fvm **pp = &v->fb->vms; *pp; pp = &(*pp)->next) {
        if (*pp == v) {
            *pp = v->next;
            break;
        }
    }
    v->done = done;
    v->done_data = data;
    uv_close((uv_handle_t *)&v->timer, f_freed);
}

static int f_list_owned(struct backend *b, backend_list_cb cb, void *data)
{
    (void)b;
    cb(0, NULL, 0, NULL, data);
    return 0;
}

static int f_destroy_owned(struct backend *b, const char *name, backend_done_cb done, void *data)
{
    (void)b;
    (void)name;
    done(0, NULL, data);
    return 0;
}

static const struct backend_ops fake_ops = {
        .type = "fake",
        .open = f_open,
        .close = f_close,
        .vm_name = f_vm_name,
        .capacity = f_capacity,
        .launch = f_launch,
        .cancel = f_cancel,
        .destroy = f_destroy,
        .list_owned = f_list_owned,
        .destroy_owned = f_destroy_owned,
};

void fake_backend_register(void)
{
    launched = 0;
    backend_register(BACKEND_LIBVIRT, &fake_ops);
}

int fake_backend_launched(void)
{
    return launched;
}

void fake_backend_write_image(const char *state, const char *name)
{
    struct al_error *err = NULL;
    char *dir = NULL;
    if (asprintf(&dir, "%s/images/%s", state, name) < 0)
        abort();
    if (al_mkdir_p(dir, 0755, &err) < 0)
        abort();
    struct image_info info = {.name = (char *)name,
                              .dir = dir,
                              .format = "qcow2",
                              .cmdline = "console=ttyS0",
                              .recipe = (char *)name,
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
