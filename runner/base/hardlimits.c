#include "runner/base/hardlimits.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

static const char *const names[AL_LIMIT_COUNT] = {
        [AL_LIMIT_LOG_SIZE] = "log_size",
        [AL_LIMIT_ARTIFACT_SIZE] = "artifact_size",
        [AL_LIMIT_ARTIFACT_FILES] = "artifact_files",
        [AL_LIMIT_FRAME_SIZE] = "frame_size",
        [AL_LIMIT_CHANNEL_RATE] = "channel_rate",
        [AL_LIMIT_DISK_SIZE] = "disk_size",
        [AL_LIMIT_SOURCE_JOBS] = "source_jobs",
        [AL_LIMIT_API_JOBS] = "api_jobs",
        [AL_LIMIT_API_CONNECTIONS] = "api_connections",
        [AL_LIMIT_API_HEADERS] = "api_headers",
        [AL_LIMIT_API_BODY] = "api_body",
        [AL_LIMIT_API_TIMEOUT] = "api_timeout",
        [AL_LIMIT_WEBHOOK_BODY] = "webhook_body",
};

/* Process-wide on purpose: every edge counts here without a path to the
 * metrics module (see hardlimits.h). */
static _Atomic uint64_t hits[AL_LIMIT_COUNT];

const char *al_limit_name(enum al_limit l)
{
    return (unsigned)l < AL_LIMIT_COUNT ? names[l] : "?";
}

void limits_hit(enum al_limit l)
{
    if ((unsigned)l < AL_LIMIT_COUNT)
        atomic_fetch_add_explicit(&hits[l], 1, memory_order_relaxed);
}

uint64_t limits_hits(enum al_limit l)
{
    return (unsigned)l < AL_LIMIT_COUNT ? atomic_load_explicit(&hits[l], memory_order_relaxed) : 0;
}

size_t al_limit_mask_format(unsigned mask, const char *sep, char *buf, size_t size)
{
    size_t n = 0, used = 0;
    if (!size)
        return 0;
    buf[0] = '\0';
    for (unsigned i = 0; i < AL_LIMIT_COUNT; i++) {
        if (!(mask & (1u << i)))
            continue;
        int w = snprintf(buf + used, size - used, "%s%s", n ? sep : "", names[i]);
        if (w < 0 || (size_t)w >= size - used) {
            buf[used] = '\0';
            break;
        }
        used += (size_t)w;
        n++;
    }
    return n;
}

unsigned al_limit_mask_parse(const char *s)
{
    unsigned mask = 0;
    while (s && *s) {
        s += strspn(s, " ,");
        size_t len = strcspn(s, " ,");
        for (unsigned i = 0; len && i < AL_LIMIT_COUNT; i++) {
            if (strlen(names[i]) == len && strncmp(s, names[i], len) == 0)
                mask |= 1u << i;
        }
        s += len;
    }
    return mask;
}
