#include "test_util.h"

#include <stdlib.h>
#include <string.h>

#include "runner/engine/state.h"

static void test_names_round_trip(void **state)
{
    (void)state;
    for (int i = 0; i < JOB_STATE_COUNT; i++) {
        enum job_state s = JOB_STATE_NONE;
        const char *name = job_state_to_string((enum job_state)i);
        assert_string_not_equal(name, "?");
        assert_int_equal(job_state_from_string(name, &s), 0);
        assert_int_equal(s, i);
    }
    enum job_state s = JOB_STATE_NONE;
    assert_int_equal(job_state_from_string("timed_out", &s), 0);
    assert_int_equal(s, JOB_STATE_TIMED_OUT);
    assert_int_equal(job_state_from_string("DONE", &s), -EINVAL);
    assert_int_equal(job_state_from_string("", &s), -EINVAL);
    assert_int_equal(job_state_from_string(NULL, &s), -EINVAL);
    assert_int_equal(s, JOB_STATE_TIMED_OUT); /* untouched on failure */
    assert_string_equal(job_state_to_string(JOB_STATE_NONE), "?");
    assert_string_equal(job_state_to_string(JOB_STATE_COUNT), "?");
}

static void test_terminal_and_active(void **state)
{
    (void)state;
    const enum job_state terminal[] = {JOB_STATE_SUCCEEDED, JOB_STATE_FAILED, JOB_STATE_TIMED_OUT,
                                       JOB_STATE_CANCELED, JOB_STATE_ERROR};
    const enum job_state active[] = {JOB_STATE_PROVISIONING, JOB_STATE_BOOTING, JOB_STATE_RUNNING};
    int n_terminal = 0, n_active = 0;
    for (int i = 0; i < JOB_STATE_COUNT; i++) {
        n_terminal += job_state_is_terminal((enum job_state)i);
        n_active += job_state_is_active((enum job_state)i);
    }
    assert_int_equal(n_terminal, ARRAY_SIZE(terminal));
    assert_int_equal(n_active, ARRAY_SIZE(active));
    for (size_t i = 0; i < ARRAY_SIZE(terminal); i++)
        assert_true(job_state_is_terminal(terminal[i]));
    for (size_t i = 0; i < ARRAY_SIZE(active); i++)
        assert_true(job_state_is_active(active[i]));
    assert_false(job_state_is_terminal(JOB_STATE_QUEUED));
    assert_false(job_state_is_terminal(JOB_STATE_NONE));
}

/* The documented machine, written out independently of the table in state.c. */
static const struct {
    enum job_state from, to;
} legal[] = {
        {JOB_STATE_QUEUED, JOB_STATE_PROVISIONING},    {JOB_STATE_QUEUED, JOB_STATE_CANCELED},
        {JOB_STATE_QUEUED, JOB_STATE_ERROR},           {JOB_STATE_PROVISIONING, JOB_STATE_BOOTING},
        {JOB_STATE_PROVISIONING, JOB_STATE_CANCELED},  {JOB_STATE_PROVISIONING, JOB_STATE_ERROR},
        {JOB_STATE_PROVISIONING, JOB_STATE_TIMED_OUT}, {JOB_STATE_BOOTING, JOB_STATE_RUNNING},
        {JOB_STATE_BOOTING, JOB_STATE_CANCELED},       {JOB_STATE_BOOTING, JOB_STATE_ERROR},
        {JOB_STATE_BOOTING, JOB_STATE_TIMED_OUT},      {JOB_STATE_RUNNING, JOB_STATE_SUCCEEDED},
        {JOB_STATE_RUNNING, JOB_STATE_FAILED},         {JOB_STATE_RUNNING, JOB_STATE_TIMED_OUT},
        {JOB_STATE_RUNNING, JOB_STATE_CANCELED},       {JOB_STATE_RUNNING, JOB_STATE_ERROR},
};

static bool is_legal(enum job_state from, enum job_state to)
{
    for (size_t i = 0; i < ARRAY_SIZE(legal); i++) {
        if (legal[i].from == from && legal[i].to == to)
            return true;
    }
    return false;
}

static void test_every_pair(void **state)
{
    (void)state;
    for (int f = 0; f < JOB_STATE_COUNT; f++) {
        for (int t = 0; t < JOB_STATE_COUNT; t++) {
            struct al_error *err = NULL;
            int r = job_transition_check((enum job_state)f, (enum job_state)t, &err);
            if (is_legal((enum job_state)f, (enum job_state)t)) {
                if (r != 0)
                    fail_msg("%s -> %s refused: %s", job_state_to_string((enum job_state)f),
                             job_state_to_string((enum job_state)t), al_error_message(err));
                assert_null(err);
            } else {
                if (r != -EINVAL)
                    fail_msg("%s -> %s allowed", job_state_to_string((enum job_state)f),
                             job_state_to_string((enum job_state)t));
                char want[96];
                snprintf(want, sizeof(want), "illegal job state transition %s -> %s",
                         job_state_to_string((enum job_state)f),
                         job_state_to_string((enum job_state)t));
                assert_non_null(strstr(al_error_message(err), want));
                al_error_free(err);
            }
        }
    }
}

static void test_terminal_is_final(void **state)
{
    (void)state;
    struct al_error *err = NULL;
    assert_int_equal(job_transition_check(JOB_STATE_SUCCEEDED, JOB_STATE_RUNNING, &err), -EINVAL);
    assert_non_null(strstr(al_error_message(err), "SUCCEEDED is final"));
    al_error_free(err);
    err = NULL;
    assert_int_equal(job_transition_check(JOB_STATE_QUEUED, JOB_STATE_NONE, &err), -EINVAL);
    assert_non_null(strstr(al_error_message(err), "unknown state"));
    al_error_free(err);
    /* err may be NULL */
    assert_int_equal(job_transition_check(JOB_STATE_QUEUED, JOB_STATE_RUNNING, NULL), -EINVAL);
}

static void test_retry_only_from_error(void **state)
{
    (void)state;
    struct al_error *err = NULL;
    /* the ordinary check refuses the retry edge and says why */
    assert_int_equal(job_transition_check(JOB_STATE_ERROR, JOB_STATE_QUEUED, &err), -EINVAL);
    assert_non_null(strstr(al_error_message(err), "only a retry"));
    al_error_free(err);
    err = NULL;

    assert_int_equal(job_retry_check(JOB_STATE_ERROR, 1, 2, &err), 0);
    assert_null(err);
    assert_int_equal(job_retry_check(JOB_STATE_ERROR, 2, 2, &err), -EINVAL);
    assert_non_null(strstr(al_error_message(err), "all 2 attempts used"));
    al_error_free(err);
    err = NULL;
    /* workload failures and other terminal states are never retried */
    const enum job_state others[] = {JOB_STATE_FAILED,    JOB_STATE_TIMED_OUT, JOB_STATE_CANCELED,
                                     JOB_STATE_SUCCEEDED, JOB_STATE_RUNNING,   JOB_STATE_QUEUED};
    for (size_t i = 0; i < ARRAY_SIZE(others); i++) {
        assert_int_equal(job_retry_check(others[i], 0, 10, &err), -EINVAL);
        assert_non_null(strstr(al_error_message(err), "only ERROR is retried"));
        al_error_free(err);
        err = NULL;
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_names_round_trip),
            cmocka_unit_test(test_terminal_and_active),
            cmocka_unit_test(test_every_pair),
            cmocka_unit_test(test_terminal_is_final),
            cmocka_unit_test(test_retry_only_from_error),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
