#include "runner/sources/job_size.h"

#include <stdint.h>
#include <string.h>

#include "runner/base/util.h"
#include "runner/engine/spec.h"

/* Decimal digits without sign or leading zero, at most max; *ret_end is
 * left at the first character after them. */
static bool parse_count(const char *s, int64_t max, int64_t *ret, const char **ret_end)
{
    if (*s < '1' || *s > '9')
        return false;
    int64_t v = 0;
    const char *p = s;
    for (; *p >= '0' && *p <= '9'; p++) {
        v = v * 10 + (*p - '0');
        if (v > max)
            return false;
    }
    *ret = v;
    *ret_end = p;
    return true;
}

bool job_size_parse_cpus(const char *s, int *ret)
{
    int64_t v;
    const char *end;
    if (!parse_count(s, JOB_SPEC_MAX_CPUS, &v, &end) || *end)
        return false;
    *ret = (int)v;
    return true;
}

bool job_size_parse_memory(const char *s, int *ret_mb)
{
    int64_t v;
    const char *end;
    /* the bound only keeps the arithmetic small; the range is checked after */
    if (!parse_count(s, JOB_SPEC_MAX_MEMORY_MB, &v, &end))
        return false;
    if (streq(end, "g") || streq(end, "G"))
        v *= 1024;
    else if (!streq(end, "m") && !streq(end, "M"))
        return false;
    if (v < JOB_SPEC_MIN_MEMORY_MB || v > JOB_SPEC_MAX_MEMORY_MB)
        return false;
    *ret_mb = (int)v;
    return true;
}
