/* Counters of memory-snapshot starts (provision/libvirt_snapshot.c), for
 * the metrics endpoint: how many VMs were restored, why the others that
 * asked for a snapshot booted instead, and what garbage collection
 * removed (provision/libvirt_snapshot_gc.c). Process-wide, loop thread
 * only. */
#ifndef AL_SNAPSHOT_H
#define AL_SNAPSHOT_H

#include <stdint.h>

enum snapshot_fallback {
    SNAPSHOT_FB_NONE = 0,       /* no snapshot of the image and size yet */
    SNAPSHOT_FB_STALE,          /* only stale ones (image, QEMU, ... changed) */
    SNAPSHOT_FB_BUSY,           /* every valid slot restores another job */
    SNAPSHOT_FB_RESTORE_FAILED, /* libvirt could not restore the state */
    SNAPSHOT_FB_UNSUPPORTED,    /* inject = guestfs, a remote transport, or the domain
                                 * cannot be restored */
    SNAPSHOT_FB_COUNT,
};

/* "none", "stale", "busy", "restore_failed", "unsupported". */
const char *snapshot_fallback_name(enum snapshot_fallback r);

void snapshot_count_fallback(enum snapshot_fallback r);
uint64_t snapshot_fallbacks(enum snapshot_fallback r);

void snapshot_count_restore(void);
uint64_t snapshot_restores(void);

/* slots removed by garbage collection, and the bytes that freed */
void snapshot_count_gc(uint64_t slots, uint64_t bytes);
uint64_t snapshot_gc_slots(void);
uint64_t snapshot_gc_bytes(void);

#endif
