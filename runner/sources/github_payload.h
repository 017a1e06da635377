/* Every byte agentlabd reads from GitHub, parsed at one edge: workflow_job
 * webhook deliveries and the REST answers the GitHub source uses (JIT
 * runner configs, runner lists, workflow runs and jobs, App installation
 * tokens, error messages). Plus the pure decisions made on them: the
 * webhook signature check and label matching.
 *
 * Before yajl builds a tree the bytes are pre-scanned, so the document
 * size, nesting depth and number of values are bounded before memory is
 * spent on them; the walk then checks every field used for type, range,
 * length and character set. Unknown fields are ignored (GitHub adds fields
 * all the time); a key given twice is an error. Errors name the field path,
 * e.g. `workflow_job.labels[2]: expected a string, got a number`, and never
 * echo a token or a JIT config. Pure code: no I/O, fuzzed directly
 * (tests/fuzz/fuzz_github_payload.c).
 */
#ifndef AL_GITHUB_PAYLOAD_H
#define AL_GITHUB_PAYLOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runner/base/error.h"
#include "runner/base/macro.h"

/* Limits of one document from GitHub. */
#define GITHUB_MAX_DOCUMENT (8u << 20) /* REST answers; webhooks have their own limit */
#define GITHUB_MAX_DEPTH    32         /* real payloads nest 5 levels */
#define GITHUB_MAX_VALUES   400000
#define GITHUB_MAX_LABELS   100 /* what generate-jitconfig accepts */
#define GITHUB_MAX_LABEL    256
#define GITHUB_MAX_NAME     1024 /* a job's or runner's name */
#define GITHUB_MAX_REPO     256  /* "owner/name" */
#define GITHUB_MAX_URL      2048
#define GITHUB_MAX_JIT      (256u << 10) /* an encoded JIT runner config */
#define GITHUB_MAX_TOKEN    4096
#define GITHUB_MAX_ITEMS    1000 /* entries of one list page */

enum github_action {
    GITHUB_ACTION_NONE = 0, /* a REST job (no webhook action) */
    GITHUB_ACTION_QUEUED,
    GITHUB_ACTION_IN_PROGRESS,
    GITHUB_ACTION_COMPLETED,
    GITHUB_ACTION_WAITING,
    GITHUB_ACTION_OTHER, /* an action this build does not know */
};

/* A workflow job: from a workflow_job delivery, or from the REST API. */
struct github_job {
    enum github_action action;
    int64_t id;
    int64_t run_id;
    char *status;     /* queued, in_progress, completed, waiting, ...; never NULL */
    char *conclusion; /* success, failure, cancelled, ...; NULL while running */
    char **labels;    /* NULL-terminated, never NULL */
    size_t n_labels;
    int64_t runner_id; /* 0 = none */
    char *runner_name; /* NULL = none */
    char *name;        /* the job's name, or NULL */
    char *html_url;    /* or NULL */
    /* webhooks only */
    char *repo;              /* repository.full_name, "owner/name" */
    int64_t installation_id; /* 0 = none */
};

struct github_job *github_job_free(struct github_job *j);
DEFINE_CLEANUP_FUNC(struct github_job, github_job_free)

/* A workflow_job delivery's body (X-GitHub-Event: workflow_job). Needs
 * action, workflow_job.{id, run_id, status, labels} and
 * repository.full_name. */
int github_webhook_parse(const char *data, size_t len, struct github_job **ret,
                         struct al_error **err);

/* True when header is "sha256=" and the hex HMAC-SHA256 of body under
 * secret, compared in constant time. Any malformed header is false. */
bool github_signature_valid(const void *secret, size_t secret_len, const void *body, size_t len,
                            const char *header);

/* X-GitHub-Delivery: a GUID, [0-9A-Za-z-] of 1 to 64 bytes. */
bool github_delivery_id_valid(const char *s);

/* True when every label of the job is among pool_labels (compared without
 * case, as GitHub does). A job with no labels matches nothing. */
bool github_labels_match(char *const *job_labels, size_t n_job, char *const *pool_labels,
                         size_t n_pool);

/* "owner/name" as GitHub allows it: owner [A-Za-z0-9-]{1,39}, name
 * [A-Za-z0-9._-]{1,100} and neither "." nor "..". */
bool github_repo_is_valid(const char *s);
/* An organisation or user login: [A-Za-z0-9-]{1,39}. */
bool github_login_is_valid(const char *s);

/* ---- REST answers ---- */

/* 201 of POST .../actions/runners/generate-jitconfig: runner.id, runner.name
 * and encoded_jit_config (base64, at most GITHUB_MAX_JIT). The caller wipes
 * and frees *ret_config. */
int github_parse_jitconfig(const char *data, size_t len, int64_t *ret_runner_id, char **ret_config,
                           struct al_error **err);

struct github_runner {
    int64_t id;
    char *name;
    char *status; /* online, offline */
    bool busy;
};

struct github_runner_list {
    struct github_runner *v;
    size_t n;
    int64_t total_count;
};

void github_runner_list_clear(struct github_runner_list *l);

/* 200 of GET .../actions/runners. */
int github_parse_runners(const char *data, size_t len, struct github_runner_list *ret,
                         struct al_error **err);

struct github_run {
    int64_t id;
    char *status;
    char *updated_at; /* as given, or NULL */
};

struct github_run_list {
    struct github_run *v;
    size_t n;
    int64_t total_count;
};

void github_run_list_clear(struct github_run_list *l);

/* 200 of GET /repos/{owner}/{repo}/actions/runs. */
int github_parse_runs(const char *data, size_t len, struct github_run_list *ret,
                      struct al_error **err);

struct github_job_list {
    struct github_job **v;
    size_t n;
    int64_t total_count;
};

void github_job_list_clear(struct github_job_list *l);

/* 200 of GET .../actions/runs/{run_id}/jobs. */
int github_parse_jobs(const char *data, size_t len, struct github_job_list *ret,
                      struct al_error **err);

/* 200 of GET .../actions/jobs/{job_id}. */
int github_parse_job(const char *data, size_t len, struct github_job **ret, struct al_error **err);

/* 201 of POST /app/installations/{id}/access_tokens: token and expires_at
 * (seconds since the epoch). The caller wipes and frees *ret_token. */
int github_parse_token(const char *data, size_t len, char **ret_token, int64_t *ret_expires,
                       struct al_error **err);

/* 200 of GET /repos/{owner}/{repo}/installation or /orgs/{org}/installation. */
int github_parse_installation(const char *data, size_t len, int64_t *ret_id, struct al_error **err);

/* The "message" of an error answer, printable and cut to size, for logs;
 * "" when there is none. */
void github_error_message(const char *data, size_t len, char *buf, size_t size);

/* "2016-07-11T22:14:10Z" -> seconds since the epoch; -EINVAL otherwise. */
int github_parse_time(const char *s, int64_t *ret);

#endif
