#include "provision/snapshot.h"

#include <stddef.h>

static uint64_t fallbacks[SNAPSHOT_FB_COUNT];
static uint64_t restores;
static uint64_t gc_slots, gc_bytes;

const char *snapshot_fallback_name(enum snapshot_fallback r)
{
    static const char *const names[] = {"none", "stale", "busy", "restore_failed", "unsupported"};
    return (unsigned)r < SNAPSHOT_FB_COUNT ? names[r] : "unknown";
}

void snapshot_count_fallback(enum snapshot_fallback r)
{
    if ((unsigned)r < SNAPSHOT_FB_COUNT)
        fallbacks[r]++;
}

uint64_t snapshot_fallbacks(enum snapshot_fallback r)
{
    return (unsigned)r < SNAPSHOT_FB_COUNT ? fallbacks[r] : 0;
}

void snapshot_count_restore(void)
{
    restores++;
}

uint64_t snapshot_restores(void)
{
    return restores;
}

void snapshot_count_gc(uint64_t slots, uint64_t bytes)
{
    gc_slots += slots;
    gc_bytes += bytes;
}

uint64_t snapshot_gc_slots(void)
{
    return gc_slots;
}

uint64_t snapshot_gc_bytes(void)
{
    return gc_bytes;
}
