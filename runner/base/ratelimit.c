#include "runner/base/ratelimit.h"

void al_rate_limit_init(struct al_rate_limit *r, uint64_t per_second, uint64_t burst,
                        uint64_t now_us)
{
    r->rate = (double)per_second;
    r->burst = burst ? (double)burst : (double)per_second;
    r->tokens = r->burst;
    r->last_us = now_us;
}

bool al_rate_limit_enabled(const struct al_rate_limit *r)
{
    return r->rate > 0;
}

uint64_t al_rate_limit_take(struct al_rate_limit *r, uint64_t n, uint64_t now_us)
{
    if (r->rate <= 0)
        return 0;
    if (now_us > r->last_us) {
        r->tokens += r->rate * (double)(now_us - r->last_us) / 1e6;
        if (r->tokens > r->burst)
            r->tokens = r->burst;
    }
    r->last_us = now_us > r->last_us ? now_us : r->last_us;
    r->tokens -= (double)n;
    if (r->tokens >= 0)
        return 0;
    /* rounded up: pausing a little too long keeps the average below rate */
    return (uint64_t)(-r->tokens * 1000.0 / r->rate) + 1;
}
