/* A watchdog for libguestfs appliance launches under KVM.
 *
 * libguestfs waits up to 20 minutes for an appliance to come up. Under a KVM
 * that runs firmware but not Linux (see accel.h) the appliance's kernel
 * hangs and nothing says so until then. appliance_launch() runs
 * guestfs_launch() with a thread beside it that finds the appliance's QEMU
 * (a child of this process whose command line names the handle's socket
 * dir) and kills it when it has run for the bound without the launch
 * completing, so the launch fails at once and the caller can try again
 * under TCG.
 */
#ifndef AL_APPLIANCE_WATCHDOG_H
#define AL_APPLIANCE_WATCHDOG_H

#include <guestfs.h>

/* guestfs_launch(g), watched when bound_s > 0. Returns 0, -ETIMEDOUT when
 * the watchdog killed a silent appliance, or -EIO when the launch failed
 * otherwise (guestfs_last_error(g) says why). */
int appliance_launch(guestfs_h *g, int bound_s);

/* Under KVM, an appliance launch that takes longer than this has hung: one
 * launch takes a few seconds with a working KVM, the first one of a boot a
 * little more while supermin builds the appliance (which is not counted:
 * the clock starts when QEMU does). */
#define APPLIANCE_WATCHDOG_KVM_S 120

#endif
