/* Limit names, masks and counters; the token bucket behind the guest
 * channel's rate limit, on a made-up clock. */
#include "test_util.h"

#include <string.h>

#include "runner/base/ratelimit.h"
#include "runner/base/hardlimits.h"

static void test_names_and_masks(void **state)
{
    (void)state;
    for (unsigned i = 0; i < AL_LIMIT_COUNT; i++) {
        const char *n = al_limit_name((enum al_limit)i);
        assert_non_null(n);
        assert_string_not_equal(n, "?");
        /* every name round-trips through a mask */
        assert_int_equal(al_limit_mask_parse(n), 1u << i);
    }
    assert_string_equal(al_limit_name(AL_LIMIT_COUNT), "?");

    unsigned mask = (1u << AL_LIMIT_LOG_SIZE) | (1u << AL_LIMIT_FRAME_SIZE);
    char buf[64];
    assert_int_equal(al_limit_mask_format(mask, ", ", buf, sizeof(buf)), 2);
    assert_string_equal(buf, "log_size, frame_size");
    assert_int_equal(al_limit_mask_parse(buf), mask);
    assert_int_equal(al_limit_mask_parse("log_size,bogus frame_size"), mask);
    assert_int_equal(al_limit_mask_parse(""), 0);
    assert_int_equal(al_limit_mask_parse(NULL), 0);

    /* too small a buffer: whole names only, always terminated */
    char small[12];
    assert_int_equal(al_limit_mask_format(mask, ", ", small, sizeof(small)), 1);
    assert_string_equal(small, "log_size");
    assert_int_equal(al_limit_mask_format(0, ",", small, sizeof(small)), 0);
    assert_string_equal(small, "");
}

static void test_counters(void **state)
{
    (void)state;
    uint64_t before = limits_hits(AL_LIMIT_API_BODY);
    limits_hit(AL_LIMIT_API_BODY);
    limits_hit(AL_LIMIT_API_BODY);
    assert_int_equal(limits_hits(AL_LIMIT_API_BODY), before + 2);
    /* out of range is ignored, not a crash */
    limits_hit(AL_LIMIT_COUNT);
    assert_int_equal(limits_hits(AL_LIMIT_COUNT), 0);
}

static void test_token_bucket(void **state)
{
    (void)state;
    struct al_rate_limit r;
    al_rate_limit_init(&r, 0, 0, 0);
    assert_false(al_rate_limit_enabled(&r));
    assert_int_equal(al_rate_limit_take(&r, UINT64_MAX / 2, 0), 0);

    /* 1000/s, burst 1000: the first second's worth is free */
    al_rate_limit_init(&r, 1000, 0, 0);
    assert_true(al_rate_limit_enabled(&r));
    assert_int_equal(al_rate_limit_take(&r, 1000, 0), 0);
    /* 500 more right away: half a second of debt */
    uint64_t wait = al_rate_limit_take(&r, 500, 0);
    assert_in_range(wait, 500, 502);
    /* after paying it back, 100 ms refill 100 units */
    assert_int_equal(al_rate_limit_take(&r, 100, 600000), 0);
    assert_true(al_rate_limit_take(&r, 1, 600000) > 0);
    /* a long idle time refills no more than the burst */
    assert_int_equal(al_rate_limit_take(&r, 1000, 100000000), 0);
    assert_true(al_rate_limit_take(&r, 10, 100000000) > 0);
    /* a clock that goes backwards adds nothing */
    al_rate_limit_init(&r, 10, 10, 5000000);
    assert_int_equal(al_rate_limit_take(&r, 10, 5000000), 0);
    assert_true(al_rate_limit_take(&r, 1, 1000000) > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_names_and_masks),
            cmocka_unit_test(test_counters),
            cmocka_unit_test(test_token_bucket),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
