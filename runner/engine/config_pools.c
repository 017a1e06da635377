/* The parts of the configuration that make pools flavours: a pool's image
 * and size resolved from [agent], the images it allows, the pools a source
 * routes among, and a proxmox backend's templates per image. */
#include <ctype.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "runner/base/util.h"
#include "runner/engine/config.h"
#include "runner/engine/config_priv.h"

/* A pattern of an allowed image: name characters and fnmatch's *, ?, [, ],
 * !; at most a name's length. */
bool config_glob_is_valid(const char *s)
{
    size_t n = 0;
    for (const char *p = s; *p; p++, n++) {
        if (!isalnum((unsigned char)*p) && !strchr("._-*?[]!", *p))
            return false;
    }
    return n > 0 && n <= AL_NAME_MAX;
}

bool image_map_entry_parse(const char *entry, char *ret_image, size_t image_size, int64_t *ret_vmid)
{
    const char *colon = strrchr(entry, ':');
    if (!colon || colon == entry || (size_t)(colon - entry) > AL_NAME_MAX)
        return false;
    char image[AL_NAME_MAX + 1];
    memcpy(image, entry, (size_t)(colon - entry));
    image[colon - entry] = '\0';
    int vmid;
    /* Proxmox VMIDs are 100 to 999999999 */
    if (!config_name_is_valid(image) || al_parse_int(colon + 1, 100, 999999999, &vmid) < 0)
        return false;
    if (ret_image) {
        if (snprintf(ret_image, image_size, "%s", image) >= (int)image_size)
            return false;
    }
    if (ret_vmid)
        *ret_vmid = vmid;
    return true;
}

static char **strv_of_one(const char *s)
{
    char **v = calloc(2, sizeof(char *));
    if (v && !(v[0] = strdup(s))) {
        free(v);
        return NULL;
    }
    return v;
}

static bool strv_has(char *const *v, const char *s)
{
    for (; v && *v; v++) {
        if (streq(*v, s))
            return true;
    }
    return false;
}

/* Memory snapshots are the libvirt backend's: a pool that can only reach
 * Proxmox would never get one. */
static int check_start(const struct config *c, const struct config_pool *p, const char *file,
                       struct al_error **err)
{
    bool any_libvirt = false;
    for (size_t k = 0; k < c->n_backends; k++) {
        bool in_pool = !p->backends || !p->backends[0];
        for (char **s = p->backends; s && *s && !in_pool; s++)
            in_pool = streq(*s, c->backends[k].name);
        any_libvirt |= in_pool && c->backends[k].type == BACKEND_LIBVIRT;
    }
    if (p->start == VM_START_SNAPSHOT && !any_libvirt)
        return al_error_set(err, EINVAL,
                            "%s: pool \"%s\": start = snapshot needs a libvirt backend (use auto "
                            "or boot)",
                            file, p->name);
    return 0;
}

/* Fills a pool's unset flavour from [agent] and checks it is one a job may
 * have: limits at least the size, the image among the allowed ones, a way
 * to start its VMs. */
int config_pool_resolve(const struct config *c, struct config_pool *p, const char *file,
                        struct al_error **err)
{
    int r = check_start(c, p, file, err);
    if (r < 0)
        return r;
    const struct config_agent *a = &c->agent;
    bool image_set = *p->image;
    if (!*p->image) {
        char *s = strdup(a->image);
        if (!s)
            return al_error_set(err, ENOMEM, "out of memory");
        free(p->image);
        p->image = s;
    }
    if (!config_name_is_valid(p->image))
        return al_error_set(err, EINVAL,
                            "%s: pool \"%s\": bad value \"%s\" for key \"image\": expected a name "
                            "of letters, digits, '.', '_', '-'",
                            file, p->name, p->image);
    if (p->conf.memory && (p->conf.memory < (128u << 20) || p->conf.memory % (1u << 20)))
        return al_error_set(err, EINVAL,
                            "%s: pool \"%s\": memory must be a whole number of MiB, at least 128M",
                            file, p->name);
    if (p->conf.max_memory % (1u << 20))
        return al_error_set(err, EINVAL,
                            "%s: pool \"%s\": max_memory must be a whole number of MiB", file,
                            p->name);
    if (p->disk % (1u << 30))
        return al_error_set(err, EINVAL,
                            "%s: pool \"%s\": disk must be a whole number of GiB such as 20G, or 0",
                            file, p->name);
    p->cpus = p->conf.cpus ? p->conf.cpus : a->job_cpus;
    p->memory = p->conf.memory ? p->conf.memory : a->job_memory;
    /* a pool that sets its size is a flavour: jobs get that size unless the
     * pool allows more; one that takes [agent]'s size bounds nothing (a
     * backend still has to hold the job), as before pools had sizes */
    p->max_cpus = p->conf.max_cpus ? p->conf.max_cpus : p->conf.cpus;
    p->max_memory = p->conf.max_memory ? p->conf.max_memory : p->conf.memory;
    if (p->max_cpus && p->max_cpus < p->cpus)
        return al_error_set(err, EINVAL, "%s: pool \"%s\": max_cpus %d is less than cpus %d", file,
                            p->name, p->max_cpus, p->cpus);
    if (p->max_memory && p->max_memory < p->memory)
        return al_error_set(err, EINVAL,
                            "%s: pool \"%s\": max_memory %" PRIu64 "M is less than memory %" PRIu64
                            "M",
                            file, p->name, p->max_memory >> 20, p->memory >> 20);
    if (!p->allowed_images || !p->allowed_images[0]) {
        /* like the size: a pool that sets its image holds its jobs to it,
         * one that takes [agent]'s lets a job name any image */
        strv_free(p->allowed_images);
        p->allowed_images = strv_of_one(image_set ? p->image : "*");
        if (!p->allowed_images)
            return al_error_set(err, ENOMEM, "out of memory");
    }
    if (!config_pool_allows_image(p, p->image))
        return al_error_set(err, EINVAL,
                            "%s: pool \"%s\": its image \"%s\" is not among its allowed_images",
                            file, p->name, p->image);
    return 0;
}

/* pools names what the source's jobs are routed among; pool is the old
 * one-pool form, kept as the first of pools so that both read back. */
int config_source_pools_resolve(const struct config *c, struct config_source *s, const char *file,
                                struct al_error **err)
{
    if (*s->pool && (!s->pools || !s->pools[0])) {
        strv_free(s->pools);
        if (!(s->pools = strv_of_one(s->pool)))
            return al_error_set(err, ENOMEM, "out of memory");
    }
    if (!s->pools || !s->pools[0]) {
        strv_free(s->pools);
        s->pools = NULL;
        return 0;
    }
    if (*s->pool && !strv_has(s->pools, s->pool))
        return al_error_set(err, EINVAL, "%s: source \"%s\": pool \"%s\" is not among its pools",
                            file, s->name, s->pool);
    if (!*s->pool) {
        char *first = strdup(s->pools[0]);
        if (!first)
            return al_error_set(err, ENOMEM, "out of memory");
        free(s->pool);
        s->pool = first;
    }
    for (char **n = s->pools; *n; n++) {
        if (!config_find_pool(c, *n))
            return al_error_set(err, EINVAL, "%s: source \"%s\" names unknown pool \"%s\"", file,
                                s->name, *n);
    }
    return 0;
}

bool config_pool_allows_image(const struct config_pool *p, const char *image)
{
    for (char **g = p->allowed_images; g && *g; g++) {
        if (fnmatch(*g, image, 0) == 0)
            return true;
    }
    return false;
}

const char *config_backend_template(const struct config *c, const struct backend_settings *b,
                                    const char *image, char *buf, size_t size)
{
    for (char **t = b->proxmox.templates; t && *t; t++) {
        char name[AL_NAME_MAX + 1];
        int64_t vmid;
        if (image_map_entry_parse(*t, name, sizeof(name), &vmid) && streq(name, image)) {
            if (snprintf(buf, size, "%" PRId64, vmid) >= (int)size)
                return NULL;
            return buf;
        }
    }
    if (streq(image, c->agent.image) && *b->proxmox.template_vm)
        return b->proxmox.template_vm;
    return NULL;
}
