/* The job state machine, in one place.
 *
 *   QUEUED -> PROVISIONING -> BOOTING -> RUNNING -> SUCCEEDED | FAILED
 *
 * plus the ways out of the happy path:
 *
 *   any non-terminal state      -> CANCELED  (operator or source cancelled)
 *   any non-terminal state      -> ERROR     (infrastructure failed; QUEUED -> ERROR
 *                                             covers jobs that can no longer start,
 *                                             e.g. after a restart lost their secrets)
 *   PROVISIONING|BOOTING|RUNNING -> TIMED_OUT (the job's deadline passed; it starts
 *                                             counting when provisioning starts, so a
 *                                             job waiting in the queue cannot time out)
 *   ERROR -> QUEUED             only through job_retry_check(): a retry is a new
 *                               attempt on a fresh VM and is bounded by max_attempts.
 *
 * SUCCEEDED, FAILED, TIMED_OUT, CANCELED and ERROR are terminal: nothing leaves
 * them except the explicit retry out of ERROR. Phases are never skipped (a
 * backend that cannot observe boot separately passes BOOTING immediately), and
 * a state never transitions to itself. FAILED means the workload exited
 * non-zero; ERROR means agentlab or a backend failed, and only ERROR is retried.
 */
#ifndef AL_JOB_STATE_H
#define AL_JOB_STATE_H

#include <stdbool.h>

#include "runner/base/error.h"

enum job_state {
    JOB_STATE_QUEUED = 0,
    JOB_STATE_PROVISIONING,
    JOB_STATE_BOOTING,
    JOB_STATE_RUNNING,
    JOB_STATE_SUCCEEDED,
    JOB_STATE_FAILED,
    JOB_STATE_TIMED_OUT,
    JOB_STATE_CANCELED,
    JOB_STATE_ERROR,
    JOB_STATE_COUNT,
    /* "no state": the origin of a job's creation event, or "any" in filters */
    JOB_STATE_NONE = -1,
};

/* Upper-case name ("QUEUED"), or "?" for values outside the enum. */
const char *job_state_to_string(enum job_state s);

/* Parses a state name, case-insensitively. Returns 0 or -EINVAL. */
int job_state_from_string(const char *s, enum job_state *ret_state);

/* SUCCEEDED, FAILED, TIMED_OUT, CANCELED, ERROR. */
bool job_state_is_terminal(enum job_state s);

/* PROVISIONING, BOOTING, RUNNING: the phases in which the job owns a VM. */
bool job_state_is_active(enum job_state s);

/* Checks an ordinary transition. Returns 0 when from -> to is allowed, else
 * -EINVAL with "illegal job state transition FROM -> TO" in *err. ERROR ->
 * QUEUED is refused here: it is only allowed as a retry. */
int job_transition_check(enum job_state from, enum job_state to, struct al_error **err);

/* Checks a retry (ERROR -> QUEUED for a new attempt). attempts is the number
 * of attempts made so far, max_attempts the job's limit. Returns 0, or
 * -EINVAL when the job is not in ERROR or has no attempts left. */
int job_retry_check(enum job_state from, int attempts, int max_attempts, struct al_error **err);

#endif
