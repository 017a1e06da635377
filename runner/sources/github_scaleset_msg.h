/* What the GitHub Actions Service says to a runner scale set listener,
 * parsed at one edge with limits (github_scaleset.h speaks the protocol).
 *
 * Keys match without case, as GitHub's own client matches them; a key given
 * twice (in any casing) is an error. A leading UTF-8 byte order mark is
 * skipped. Messages name paths and types, never values: the answers carry
 * tokens and JIT configs. Every parser returns 0, or -EINVAL / -E2BIG /
 * -ENOMEM with err set and nothing written to ret_*.
 */
#ifndef AL_GITHUB_SCALESET_MSG_H
#define AL_GITHUB_SCALESET_MSG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runner/base/error.h"

#define SCALESET_MAX_DOCUMENT (4u << 20) /* one answer */
#define SCALESET_MAX_DEPTH    16         /* real documents nest 4 levels */
#define SCALESET_MAX_VALUES   200000
#define SCALESET_MAX_JOBS     500  /* job messages in one envelope (GitHub sends <= 50) */
#define SCALESET_MAX_ACQUIRED 1000 /* ids in one acquirejobs answer */
#define SCALESET_MAX_NAME     1024 /* runner, repository and job names */
#define SCALESET_MAX_URL      2048
#define SCALESET_MAX_TOKEN    16384 /* admin and message-queue tokens (JWTs) */
#define SCALESET_MAX_JIT      (256u << 10)

/* The seven counters that come with the session and every message. */
struct scaleset_stats {
    int64_t available;  /* totalAvailableJobs */
    int64_t acquired;   /* totalAcquiredJobs */
    int64_t assigned;   /* totalAssignedJobs: waiting and running jobs of this scale set */
    int64_t running;    /* totalRunningJobs */
    int64_t registered; /* totalRegisteredRunners */
    int64_t busy;       /* totalBusyRunners */
    int64_t idle;       /* totalIdleRunners */
};

enum scaleset_job_kind {
    SCALESET_JOB_OTHER = 0, /* a type this build does not know: skipped */
    SCALESET_JOB_AVAILABLE,
    SCALESET_JOB_ASSIGNED,
    SCALESET_JOB_STARTED,
    SCALESET_JOB_COMPLETED,
};

struct scaleset_job {
    enum scaleset_job_kind kind;
    int64_t request_id; /* runnerRequestId, > 0: what acquirejobs takes */
    int64_t runner_id;  /* started, completed: 0 when absent */
    char *runner_name;  /* started, completed: NULL when absent or empty */
    char *result;       /* completed: NULL when absent */
    char *job_id;       /* NULL when absent */
    char *repo;         /* "owner/name" when both are given, else NULL */
    char *display_name; /* jobDisplayName, NULL when absent */
};

struct scaleset_message {
    int64_t id; /* messageId, > 0 */
    struct scaleset_stats stats;
    struct scaleset_job *jobs;
    size_t n_jobs;
};

/* A 200 answer to GET {messageQueueUrl}: messageType must be
 * RunnerScaleSetJobMessages, statistics present, body a JSON string holding
 * a JSON array of job messages (or empty). Job messages of unknown types
 * are kept as SCALESET_JOB_OTHER. Free with scaleset_message_clear(). */
int scaleset_parse_message(const char *data, size_t len, struct scaleset_message *ret,
                           struct al_error **err);
void scaleset_message_clear(struct scaleset_message *m);

/* GET .../acquirablejobs (200): {"count", "value": [job messages]}. Jobs
 * that are not JobAvailable are kept as SCALESET_JOB_OTHER; ret->id is 0. */
int scaleset_parse_acquirable(const char *data, size_t len, struct scaleset_message *ret,
                              struct al_error **err);

struct scaleset_session {
    char *session_id; /* a UUID, never all zeros */
    char *mq_url;     /* messageQueueUrl: http(s), absolute */
    char *mq_token;   /* messageQueueAccessToken: a secret */
    struct scaleset_stats stats;
};

/* The answer to creating or refreshing a session. Free with
 * scaleset_session_clear(), which wipes the token. */
int scaleset_parse_session(const char *data, size_t len, struct scaleset_session *ret,
                           struct al_error **err);
void scaleset_session_clear(struct scaleset_session *s);

/* The answer of POST /actions/runner-registration: the Actions Service base
 * URL, the admin token (a secret; the caller wipes and frees it) and that
 * token's exp claim (seconds since the epoch, read without verifying). */
int scaleset_parse_registration(const char *data, size_t len, char **ret_url, char **ret_token,
                                int64_t *ret_exp, struct al_error **err);

/* The exp claim of a JWT, not verified: three base64url parts, a header with
 * an alg, claims with an integer exp. */
int scaleset_jwt_exp(const char *jwt, int64_t *ret_exp, struct al_error **err);

/* {"count":N,"value":[{"id":..},...]} of a scale set or runner group lookup
 * by name: *ret_id is the one entry's id, or 0 for none. More than one is an
 * error. */
int scaleset_parse_lookup(const char *data, size_t len, int64_t *ret_id, struct al_error **err);

/* One scale set object (the answer to creating it): its id. */
int scaleset_parse_scaleset(const char *data, size_t len, int64_t *ret_id, struct al_error **err);

/* The answer of generatejitconfig: runner.id and encodedJITConfig (a
 * secret; the caller wipes and frees it). */
int scaleset_parse_jitconfig(const char *data, size_t len, int64_t *ret_runner_id,
                             char **ret_config, struct al_error **err);

/* The answer of acquirejobs: the ids in value (count must match). */
int scaleset_parse_acquired(const char *data, size_t len, int64_t **ret_ids, size_t *ret_n,
                            struct al_error **err);

/* True when an error answer's typeName contains what (such as
 * "RunnerScaleSetSessionConflictException"). Never fails. */
bool scaleset_error_is(const char *data, size_t len, const char *what);

/* The message of an error answer for logs ("" when none), printable
 * characters only, truncated to size. */
void scaleset_error_message(const char *data, size_t len, char *buf, size_t size);

#endif
