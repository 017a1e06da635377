/*
 * Free space of the file system under a path, and whether it runs low.
 */
#ifndef AL_BASE_FSSPACE_H
#define AL_BASE_FSSPACE_H

#include <stdbool.h>
#include <stdint.h>

struct al_fs_space {
    uint64_t free_bytes; /* available to unprivileged writers */
    uint64_t total_bytes;
    /* free_bytes below min(64 MiB, max(1 MiB, 5% of the size)): logs,
     * artifacts or the database may fail to grow any moment */
    bool low;
};

/* Fills *ret for the file system holding path. Returns 0 or -errno. */
int al_fs_space(const char *path, struct al_fs_space *ret);

#endif
