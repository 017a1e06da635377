/* Helpers config.c shares with config_pools.c; not for other modules. */
#ifndef AL_CONFIG_PRIV_H
#define AL_CONFIG_PRIV_H

#include <stdbool.h>

#include "runner/base/error.h"
#include "runner/engine/config.h"

/* True for a pattern of allowed_images: name characters and fnmatch's
 * *, ?, [, ], !, at most AL_NAME_MAX bytes. */
bool config_glob_is_valid(const char *s);

/* Fills a pool's unset flavour from [agent] (image, cpus, memory, limits,
 * allowed_images) and checks it: -EINVAL naming file and pool. */
int config_pool_resolve(const struct config *c, struct config_pool *p, const char *file,
                        struct al_error **err);

/* Makes source's pool and pools agree (pool = the first of pools) and checks
 * that each names a pool: -EINVAL naming file and source. */
int config_source_pools_resolve(const struct config *c, struct config_source *s, const char *file,
                                struct al_error **err);

/* Checks each backend section as a whole (a proxmox backend's required
 * keys and templates, a libvirt backend's transport against its inject
 * mode): -EINVAL naming file and backend. */
int config_backends_check(const struct config *c, const char *file, struct al_error **err);

#endif
