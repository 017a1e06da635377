/* Checks of [backend "NAME"] sections that span keys: what a proxmox
 * backend needs, its templates per image, and what a libvirt backend's
 * transport allows. */
#include <stdlib.h>
#include <string.h>

#include "runner/base/util.h"
#include "runner/engine/config.h"
#include "runner/engine/config_priv.h"

static int check_proxmox(const struct backend_settings *b, const char *file, struct al_error **err)
{
    if (!*b->proxmox.url || !*b->proxmox.template_vm ||
        (!*b->proxmox.token_file && !(*b->proxmox.user && *b->proxmox.password_file)))
        return al_error_set(err, EINVAL,
                            "%s: backend \"%s\" of type proxmox needs url, template and "
                            "token_file (or user and password_file)",
                            file, b->name);
    return 0;
}

static int check_templates(const struct backend_settings *b, const char *file,
                           struct al_error **err)
{
    for (char **t = b->proxmox.templates; t && *t; t++) {
        char image[AL_NAME_MAX + 1];
        image_map_entry_parse(*t, image, sizeof(image), NULL);
        for (char **u = b->proxmox.templates; u < t; u++) {
            char other[AL_NAME_MAX + 1];
            image_map_entry_parse(*u, other, sizeof(other), NULL);
            if (streq(image, other))
                return al_error_set(err, EINVAL,
                                    "%s: backend \"%s\" names two templates for image \"%s\"", file,
                                    b->name, image);
        }
    }
    return 0;
}

/* libguestfs opens the overlay as a file of this host: a remote transport
 * has none. transport = auto is remote for a network URI. */
static int check_libvirt(const struct backend_settings *b, const char *file, struct al_error **err)
{
    if (b->libvirt.inject != INJECT_GUESTFS)
        return 0;
    if (b->libvirt.transport == LV_TRANSPORT_REMOTE)
        return al_error_set(err, EINVAL,
                            "%s: backend \"%s\": inject = guestfs needs the overlay on this "
                            "host; with transport = remote use inject = seed",
                            file, b->name);
    if (b->libvirt.transport == LV_TRANSPORT_AUTO && libvirt_uri_is_remote(b->libvirt.uri))
        return al_error_set(err, EINVAL,
                            "%s: backend \"%s\": inject = guestfs needs the overlay on this "
                            "host, and %s is remote (transport = auto); use inject = seed, or "
                            "transport = local if the host shares this one's files",
                            file, b->name, b->libvirt.uri);
    return 0;
}

int config_backends_check(const struct config *c, const char *file, struct al_error **err)
{
    for (size_t i = 0; i < c->n_backends; i++) {
        const struct backend_settings *b = &c->backends[i];
        int r = b->type == BACKEND_PROXMOX ? check_proxmox(b, file, err) : 0;
        if (r == 0)
            r = check_templates(b, file, err);
        if (r == 0 && b->type == BACKEND_LIBVIRT)
            r = check_libvirt(b, file, err);
        if (r < 0)
            return r;
    }
    return 0;
}
