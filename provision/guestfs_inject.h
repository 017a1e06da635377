/* The "guestfs" injection mode: writes NoCloud meta-data and user-data into
 * an overlay's /var/lib/cloud/seed/nocloud/ with the libguestfs C API, the
 * way golden-image tooling does it. Blocking (seconds: it launches the
 * libguestfs appliance), so the daemon calls it from a worker thread.
 *
 * One appliance can serve several overlays: pass them all in one call. */
#ifndef AL_GUESTFS_INJECT_H
#define AL_GUESTFS_INJECT_H

#include <stdbool.h>
#include <stddef.h>

#include "runner/base/error.h"

struct guestfs_inject_item {
    const char *disk;   /* overlay path */
    const char *format; /* "qcow2" */
    const char *meta_data;
    const char *user_data;
};

/* Injects every item with one appliance launch. force_tcg comes from the
 * accelerator probe (accel.h). On failure nothing is guaranteed about items
 * after the failing one; the error names the disk. -ETIMEDOUT: under KVM,
 * the appliance hung (appliance_watchdog.h); try again with force_tcg. */
int guestfs_inject_seed(const struct guestfs_inject_item *items, size_t n, bool force_tcg,
                        struct al_error **err);

#endif
