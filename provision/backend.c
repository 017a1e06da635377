#include "provision/backend.h"

#include <stdlib.h>
#include <string.h>

static const struct backend_ops *all_ops[] = {
        [BACKEND_LIBVIRT] = &libvirt_backend_ops,
        [BACKEND_PROXMOX] = &proxmox_backend_ops,
};

int backend_register(int type, const struct backend_ops *ops)
{
    if (type < 0 || (size_t)type >= ARRAY_SIZE(all_ops))
        return -EINVAL;
    all_ops[type] = ops;
    return 0;
}

void vm_phase_reached(struct vm *vm, struct vm_result *r, enum vm_phase p, uint64_t t_ms)
{
    switch (p) {
    case VM_PHASE_PROVISIONED:
        r->t_provisioned = t_ms;
        break;
    case VM_PHASE_BOOTING:
        r->t_booting = t_ms;
        break;
    case VM_PHASE_CONNECTED:
        r->t_connected = t_ms;
        break;
    case VM_PHASE_RUNNING:
        r->t_running = t_ms;
        break;
    }
    if (vm->ev->phase)
        vm->ev->phase(vm, p, vm->ev_data);
}

void owned_vm_array_free(struct owned_vm *v, size_t n)
{
    if (!v)
        return;
    for (size_t i = 0; i < n; i++) {
        free(v[i].name);
        free(v[i].job_id);
        free(v[i].owner);
    }
    free(v);
}

int backend_new(const struct backend_env *env, const struct config_backend *cfg,
                struct backend **ret, struct al_error **err)
{
    if (cfg->type < 0 || (size_t)cfg->type >= ARRAY_SIZE(all_ops) || !all_ops[cfg->type])
        return al_error_set(err, ENOTSUP, "backend \"%s\": type %s is not supported by this build",
                            cfg->name, backend_type_to_string(cfg->type));
    struct backend *b = calloc(1, sizeof(*b));
    if (!b)
        return al_error_set(err, ENOMEM, "allocating backend %s", cfg->name);
    b->ops = all_ops[cfg->type];
    b->cfg = cfg;
    b->env = *env;
    b->name = strdup(cfg->name);
    if (!b->name) {
        free(b);
        return al_error_set(err, ENOMEM, "allocating backend %s", cfg->name);
    }
    int r = b->ops->open(b, err);
    if (r < 0) {
        free(b->name);
        free(b);
        return al_error_wrap(err, "backend \"%s\"", cfg->name);
    }
    *ret = b;
    return 0;
}

struct free_ctx {
    struct backend *b;
    void (*done)(void *data);
    void *data;
};

static void on_closed(void *data)
{
    struct free_ctx *c = data;
    free(c->b->name);
    free(c->b);
    if (c->done)
        c->done(c->data);
    free(c);
}

void backend_free(struct backend *b, void (*done)(void *data), void *data)
{
    if (!b) {
        if (done)
            done(data);
        return;
    }
    struct free_ctx *c = calloc(1, sizeof(*c));
    if (!c) {
        /* cannot defer without memory: close synchronously and leak nothing */
        b->ops->close(b, NULL, NULL);
        free(b->name);
        free(b);
        if (done)
            done(data);
        return;
    }
    c->b = b;
    c->done = done;
    c->data = data;
    b->ops->close(b, on_closed, c);
}
