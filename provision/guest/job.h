/* The job description the helper runs: parsed from the JOB frame or
 * /run/agentlab/job.tlv, plus the SECRETS frame.
 *
 * All strings are owned by the struct. Secret values are wiped from memory
 * when the job is freed and never written anywhere but the workload's
 * environment.
 */
#ifndef AL_GUEST_JOB_H
#define AL_GUEST_JOB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runner/base/error.h"

/* Limits on list sizes: far above anything real, low enough that a broken
 * host cannot make the helper build absurd argument vectors. */
#define GUEST_JOB_MAX_ITEMS     4096
#define GUEST_JOB_MAX_TIMEOUT_S (10ull * 365 * 24 * 3600)
#define GUEST_JOB_DEFAULT_USER  "agentlab"

struct guest_strv {
    char **v; /* NULL-terminated once n > 0; NULL when empty */
    size_t n;
};

struct guest_job {
    char *job_id;             /* may be NULL */
    struct guest_strv argv;   /* ARGV items, or empty when script is set */
    char *script;             /* SCRIPT, or NULL */
    struct guest_strv env;    /* "NAME=value" */
    struct guest_strv secret; /* "NAME=value", wiped on free */
    uint64_t timeout_s;       /* 0 = no in-guest timeout */
    struct guest_strv artifacts;
    char *user;    /* NULL = GUEST_JOB_DEFAULT_USER */
    char *workdir; /* absolute; NULL = ~USER/work */
    bool has_workdir;
    bool poweroff; /* true unless POWEROFF=0 */
    bool has_max_artifact_bytes;
    uint64_t max_artifact_bytes;
};

/* Initialises an empty job (poweroff on). */
void guest_job_init(struct guest_job *job);

/* Parses a JOB TLV list into job (which must be freshly initialised).
 * SECRET_ENV items are accepted too (a cold job file lives on tmpfs).
 * Unknown tags are skipped. Returns 0, -EPROTO (malformed TLV), -EINVAL
 * (bad value, missing ARGV/SCRIPT, both given, duplicate single tag),
 * -E2BIG (too many items) or -ENOMEM; err says which item, never a secret. */
int guest_job_parse(struct guest_job *job, const uint8_t *data, size_t len, struct al_error **err);

/* Adds the SECRET_ENV items of a SECRETS frame payload. Same errors. */
int guest_job_add_secrets(struct guest_job *job, const uint8_t *data, size_t len,
                          struct al_error **err);

/* Frees everything, wiping secret values first. Accepts NULL. */
void guest_job_free(struct guest_job *job);

#endif
