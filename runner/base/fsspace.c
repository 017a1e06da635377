#include "runner/base/fsspace.h"

#include <errno.h>
#include <sys/statvfs.h>

#define MIB (UINT64_C(1) << 20)

int al_fs_space(const char *path, struct al_fs_space *ret)
{
    struct statvfs sv;
    if (statvfs(path, &sv) < 0)
        return -errno;
    uint64_t unit = sv.f_frsize ? sv.f_frsize : sv.f_bsize;
    ret->free_bytes = (uint64_t)sv.f_bavail * unit;
    ret->total_bytes = (uint64_t)sv.f_blocks * unit;
    uint64_t floor = ret->total_bytes / 20;
    if (floor < MIB)
        floor = MIB;
    if (floor > 64 * MIB)
        floor = 64 * MIB;
    ret->low = ret->free_bytes < floor;
    return 0;
}
