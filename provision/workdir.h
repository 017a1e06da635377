/* Packs a local directory into a tar file for `agentlab run --workdir`: the
 * guest helper unpacks it as the job's working directory. Symlinks are
 * stored as symlinks, never followed; special files are skipped. */
#ifndef AL_WORKDIR_H
#define AL_WORKDIR_H

#include <stdint.h>

#include "runner/base/error.h"

/* Writes dir's contents (paths relative to dir) to tar_path. Fails with a
 * clear error when dir is unreadable or the archive would exceed max_bytes
 * (0 = unlimited). *ret_bytes (may be NULL) gets the archive size. */
int workdir_pack(const char *dir, const char *tar_path, uint64_t max_bytes, uint64_t *ret_bytes,
                 struct al_error **err);

#endif
