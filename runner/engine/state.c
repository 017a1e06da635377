#include "runner/engine/state.h"

#include <strings.h>

#include "runner/base/macro.h"

static const char *const state_names[JOB_STATE_COUNT] = {
        [JOB_STATE_QUEUED] = "QUEUED",       [JOB_STATE_PROVISIONING] = "PROVISIONING",
        [JOB_STATE_BOOTING] = "BOOTING",     [JOB_STATE_RUNNING] = "RUNNING",
        [JOB_STATE_SUCCEEDED] = "SUCCEEDED", [JOB_STATE_FAILED] = "FAILED",
        [JOB_STATE_TIMED_OUT] = "TIMED_OUT", [JOB_STATE_CANCELED] = "CANCELED",
        [JOB_STATE_ERROR] = "ERROR",
};

#define TO(s)       (1u << (s))
#define OUT_OF_LIFE (TO(JOB_STATE_CANCELED) | TO(JOB_STATE_ERROR))

/* allowed[from] is the set of states an ordinary transition may go to. The
 * retry edge ERROR -> QUEUED is deliberately absent (see job_retry_check). */
static const unsigned allowed[JOB_STATE_COUNT] = {
        [JOB_STATE_QUEUED] = TO(JOB_STATE_PROVISIONING) | OUT_OF_LIFE,
        [JOB_STATE_PROVISIONING] = TO(JOB_STATE_BOOTING) | TO(JOB_STATE_TIMED_OUT) | OUT_OF_LIFE,
        [JOB_STATE_BOOTING] = TO(JOB_STATE_RUNNING) | TO(JOB_STATE_TIMED_OUT) | OUT_OF_LIFE,
        [JOB_STATE_RUNNING] = TO(JOB_STATE_SUCCEEDED) | TO(JOB_STATE_FAILED) |
                              TO(JOB_STATE_TIMED_OUT) | OUT_OF_LIFE,
        /* terminal states: nothing */
};

static bool state_is_valid(enum job_state s)
{
    return (int)s >= 0 && s < JOB_STATE_COUNT;
}

const char *job_state_to_string(enum job_state s)
{
    return state_is_valid(s) ? state_names[s] : "?";
}

int job_state_from_string(const char *s, enum job_state *ret_state)
{
    if (!s)
        return -EINVAL;
    for (int i = 0; i < JOB_STATE_COUNT; i++) {
        if (strcasecmp(s, state_names[i]) == 0) {
            *ret_state = (enum job_state)i;
            return 0;
        }
    }
    return -EINVAL;
}

bool job_state_is_terminal(enum job_state s)
{
    return state_is_valid(s) && s >= JOB_STATE_SUCCEEDED;
}

bool job_state_is_active(enum job_state s)
{
    return s == JOB_STATE_PROVISIONING || s == JOB_STATE_BOOTING || s == JOB_STATE_RUNNING;
}

int job_transition_check(enum job_state from, enum job_state to, struct al_error **err)
{
    if (!state_is_valid(from) || !state_is_valid(to))
        return al_error_set(err, EINVAL, "illegal job state transition %s -> %s: unknown state",
                            job_state_to_string(from), job_state_to_string(to));
    if (allowed[from] & TO(to))
        return 0;
    if (from == JOB_STATE_ERROR && to == JOB_STATE_QUEUED)
        return al_error_set(err, EINVAL,
                            "illegal job state transition ERROR -> QUEUED: only a retry may "
                            "requeue a job");
    if (job_state_is_terminal(from))
        return al_error_set(err, EINVAL, "illegal job state transition %s -> %s: %s is final",
                            state_names[from], state_names[to], state_names[from]);
    return al_error_set(err, EINVAL, "illegal job state transition %s -> %s", state_names[from],
                        state_names[to]);
}

int job_retry_check(enum job_state from, int attempts, int max_attempts, struct al_error **err)
{
    if (from != JOB_STATE_ERROR)
        return al_error_set(err, EINVAL, "cannot retry a job in state %s: only ERROR is retried",
                            job_state_to_string(from));
    if (attempts >= max_attempts)
        return al_error_set(err, EINVAL, "cannot retry: all %d attempts used", max_attempts);
    return 0;
}
