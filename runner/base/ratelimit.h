/* A token bucket: at most `rate` units per second on average, with bursts
 * of up to `burst` units. The caller takes what it already consumed and
 * learns how long to pause so that the average holds; the bucket may go
 * into debt by one take, which the pause pays back. Pure arithmetic on a
 * caller-supplied monotonic clock, so it is testable without waiting.
 */
#ifndef AL_RATELIMIT_H
#define AL_RATELIMIT_H

#include <stdbool.h>
#include <stdint.h>

struct al_rate_limit {
    double rate;  /* units per second; 0 = unlimited */
    double burst; /* bucket size */
    double tokens;
    uint64_t last_us;
};

/* Starts with a full bucket. per_second 0 turns the limit off; burst 0
 * means one second's worth. */
void al_rate_limit_init(struct al_rate_limit *r, uint64_t per_second, uint64_t burst,
                        uint64_t now_us);

/* Takes n units consumed at now_us. Returns 0 when the caller may go on, or
 * the milliseconds to pause before the bucket is out of debt. */
uint64_t al_rate_limit_take(struct al_rate_limit *r, uint64_t n, uint64_t now_us);

/* True when the limit is on. */
bool al_rate_limit_enabled(const struct al_rate_limit *r);

#endif
