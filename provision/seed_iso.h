/* A NoCloud "cidata" seed: an ISO9660 image (Rock Ridge + Joliet, volume id
 * "cidata") written in-process with libarchive, holding meta-data, user-data
 * and optionally network-config. Takes milliseconds. */
#ifndef AL_SEED_ISO_H
#define AL_SEED_ISO_H

#include <sys/types.h>

#include "runner/base/error.h"

/* Writes the seed to path (created with mode, replaced atomically).
 * network_config may be NULL. */
int seed_iso_write(const char *path, mode_t mode, const char *meta_data, const char *user_data,
                   const char *network_config, struct al_error **err);

#endif
