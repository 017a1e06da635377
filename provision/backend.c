#include "provision/backend.h"

#include <stdlib.h>
#include <string.h>

#include "runner/base/util.h"

const char *const backend_type_names[] = {"libvirt", "proxmox", NULL};
const char *const vm_start_names[] = {"boot", "snapshot", "auto", NULL};

const char *const inject_mode_names[] = {"seed", "guestfs", NULL};
const char *const libvirt_transport_names[] = {"auto", "local", "remote", NULL};

static const char *name_of(const char *const *names, size_t n, int v)
{
    return v >= 0 && (size_t)v < n && names[v] ? names[v] : "?";
}

const char *backend_type_to_string(int type)
{
    return name_of(backend_type_names, ARRAY_SIZE(backend_type_names), type);
}

const char *inject_mode_to_string(int mode)
{
    return name_of(inject_mode_names, ARRAY_SIZE(inject_mode_names), mode);
}

int inject_mode_from_string(const char *s, int *ret)
{
    for (int i = 0; inject_mode_names[i]; i++) {
        if (streq(s, inject_mode_names[i])) {
            *ret = i;
            return 0;
        }
    }
    return -EINVAL;
}

bool libvirt_uri_is_remote(const char *uri)
{
    const char *sep = uri ? strstr(uri, "://") : NULL;
    if (!sep)
        return false;
    const char *plus = memchr(uri, '+', (size_t)(sep - uri));
    if (plus) {
        size_t n = (size_t)(sep - plus - 1);
        return !(n == 4 && strncmp(plus + 1, "unix", 4) == 0);
    }
    const char *host = sep + 3;
    return *host && *host != '/' && *host != '?';
}

void libvirt_uri_redact(const char *uri, char *buf, size_t size)
{
    if (!size)
        return;
    buf[0] = '\0';
    if (!uri)
        return;
    size_t end = strcspn(uri, "?");
    const char *sep = strstr(uri, "://");
    const char *auth = sep && (size_t)(sep - uri) < end ? sep + 3 : NULL;
    size_t auth_len = auth ? strcspn(auth, "/?") : 0;
    const char *at = auth ? memchr(auth, '@', auth_len) : NULL;
    const char *colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
    if (colon) /* user:password@host: keep the user */
        snprintf(buf, size, "%.*s%.*s", (int)(colon - uri), uri, (int)(uri + end - at), at);
    else
        snprintf(buf, size, "%.*s", (int)end, uri);
}

void backend_host_info_clear(struct backend_host_info *h)
{
    if (!h)
        return;
    for (size_t i = 0; i < h->n_images; i++) {
        free(h->images[i].image);
        free(h->images[i].role);
        free(h->images[i].volume);
    }
    free(h->images);
    h->images = NULL;
    h->n_images = 0;
}

static const struct backend_ops *all_ops[] = {
        [BACKEND_LIBVIRT] = &libvirt_backend_ops,
        [BACKEND_PROXMOX] = &proxmox_backend_ops,
};

const struct backend_ops *backend_ops_of(int type)
{
    return type >= 0 && (size_t)type < ARRAY_SIZE(all_ops) ? all_ops[type] : NULL;
}

struct vm_image *vm_image_dup(const struct vm_image *img)
{
    const char *const src[] = {img->name, img->disk, img->kernel, img->initrd, img->cmdline};
    size_t need = sizeof(struct vm_image);
    for (size_t i = 0; i < ARRAY_SIZE(src); i++)
        need += src[i] ? strlen(src[i]) + 1 : 0;
    struct vm_image *c = calloc(1, need);
    if (!c)
        return NULL;
    const char **dst[] = {&c->name, &c->disk, &c->kernel, &c->initrd, &c->cmdline};
    char *p = (char *)(c + 1);
    for (size_t i = 0; i < ARRAY_SIZE(src); i++) {
        if (!src[i])
            continue;
        size_t n = strlen(src[i]) + 1;
        memcpy(p, src[i], n);
        *dst[i] = p;
        p += n;
    }
    c->virtual_size = img->virtual_size;
    return c;
}

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

int backend_new(const struct backend_env *env, const struct backend_settings *cfg,
                struct backend **ret, struct al_error **err)
{
    if (!backend_ops_of(cfg->type))
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
