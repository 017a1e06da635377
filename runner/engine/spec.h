/* The job spec: what a job asks for, parsed from JSON at one edge.
 *
 * job_spec_parse() is the only place where job-spec bytes from outside (API,
 * spool files, HTTP queues, the CLI) are read. It drives yajl's callback
 * parser against a fixed schema, so every limit is enforced while parsing:
 * the document size before the first byte is lexed, and nesting, string
 * lengths, array lengths and entry counts at the value that exceeds them. A
 * container where the schema wants a scalar is rejected at its opening
 * bracket, so a 10,000-deep document costs as much as a 2-deep one. Memory is
 * bounded by JOB_SPEC_MAX_BYTES plus the accepted fields.
 *
 * Errors name the field path and what was expected, e.g.
 *   resources.cpus: expected an integer from 1 to 64, got "two"
 * Values under secret_env are never echoed in messages.
 *
 * The format is documented in README.md ("Job spec").
 */
#ifndef AL_JOB_SPEC_H
#define AL_JOB_SPEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runner/base/error.h"
#include "runner/engine/config.h"

/* Limits of a job spec document. */
#define JOB_SPEC_MAX_BYTES     (1u << 20)  /* whole document */
#define JOB_SPEC_MAX_DEPTH     8           /* valid documents nest 2 levels */
#define JOB_SPEC_MAX_NAME      128         /* name */
#define JOB_SPEC_MAX_STRING    (64u << 10) /* one argv element or env value */
#define JOB_SPEC_MAX_SCRIPT    (256u << 10)
#define JOB_SPEC_MAX_ARGS      1024
#define JOB_SPEC_MAX_ENV       256 /* env and secret_env together */
#define JOB_SPEC_MAX_ENV_NAME  128
#define JOB_SPEC_MAX_ARTIFACTS 100
#define JOB_SPEC_MAX_PATH      4096
#define JOB_SPEC_MAX_LABELS    32
#define JOB_SPEC_MAX_SOURCE_ID 256
#define JOB_SPEC_MAX_URL       2048

/* Ranges of the numeric fields. */
#define JOB_SPEC_MAX_CPUS         64
#define JOB_SPEC_MIN_MEMORY_MB    128
#define JOB_SPEC_MAX_MEMORY_MB    (512 * 1024)
#define JOB_SPEC_MAX_DISK_GB      4096
#define JOB_SPEC_MAX_TIMEOUT_S    (7 * 86400)
#define JOB_SPEC_MAX_MAX_ATTEMPTS 10

enum job_source_type {
    JOB_SOURCE_NONE = 0, /* not given */
    JOB_SOURCE_SPOOL,
    JOB_SOURCE_API,
    JOB_SOURCE_HTTP,
    JOB_SOURCE_GITLAB,
    JOB_SOURCE_GITHUB,
    JOB_SOURCE_CLI,
};

struct job_env_var {
    char *name;
    /* NULL only in the secret_env of a spec read back from the database:
     * secret values are never serialised (see job_spec_to_json). */
    char *value;
};

struct job_resources {
    int cpus;      /* 0 = unset: job_spec_apply_defaults() fills it */
    int memory_mb; /* 0 = unset: job_spec_apply_defaults() fills it */
    int disk_gb;   /* 0 = keep the golden image's virtual size */
};

struct job_source {
    enum job_source_type type;
    char *id;  /* the source's own reference (forge job id, file name), or NULL */
    char *url; /* a link back to the source, or NULL */
};

/* A parsed, validated job spec. Every pointer is owned by the spec. */
struct job_spec {
    char *name;     /* NULL = none */
    char *image;    /* NULL = the agent's default image */
    char **command; /* NULL-terminated argv with n_command >= 1, or NULL when script is set */
    size_t n_command;
    char *script; /* run by /bin/sh in the guest; NULL when command is set */
    struct job_env_var *env;
    size_t n_env;
    struct job_env_var *secret_env;
    size_t n_secret_env;
    struct job_resources resources;
    int64_t timeout_s; /* 0 = unset */
    char **artifacts;  /* NULL-terminated, or NULL */
    size_t n_artifacts;
    char **labels; /* NULL-terminated, or NULL */
    size_t n_labels;
    char *pool;        /* NULL = routed by labels (runner/engine/route.h) */
    char *pool_reason; /* why the job went to pool, set by the engine; stored
                        * specs only (JOB_SPEC_PARSE_STORED) */
    /* NULL = none. A job from a source (spool, HTTP queue, API) joins the
     * newest batch of this name, made with its first job (store_batch_tag) */
    char *batch;
    struct job_source source;
    int max_attempts; /* 0 = unset */
    int inject;       /* enum inject_mode, or -1 = the backend's setting */
};

enum job_spec_parse_flags {
    /* The document was written by job_spec_to_json(): also accept
     * "secret_env_names", which yields secret_env entries without values. */
    JOB_SPEC_PARSE_STORED = 1 << 0,
};

/* Parses and validates a job spec. data need not be NUL-terminated. flags is
 * a mask of enum job_spec_parse_flags. On success *ret_spec is a new spec the
 * caller frees with job_spec_free(). Errors: -E2BIG (document too large),
 * -EINVAL (anything else wrong; the message names the field), -ENOMEM. */
int job_spec_parse(const char *data, size_t len, unsigned flags, struct job_spec **ret_spec,
                   struct al_error **err);

/* Fills unset fields from the agent defaults in cfg (image,
 * timeout_s, max_attempts, resources.cpus, resources.memory_mb). Returns 0,
 * -ENOMEM, or -EINVAL when a configured default is outside a job's limits. */
int job_spec_apply_defaults(struct job_spec *spec, const struct config *cfg, struct al_error **err);

/* Serialises the spec as compact JSON for the database and the API. Secret
 * values are never written: secret_env becomes "secret_env_names" (a list of
 * names), which job_spec_parse() accepts back with JOB_SPEC_PARSE_STORED.
 * Any registered secret (base/log.h) that appears inside another value, say
 * a command argument, is masked as "***" too. Unset fields are omitted.
 * On success *ret_json is a new NUL-terminated
 * string owned by the caller and *ret_len (may be NULL) its length. */
int job_spec_to_json(const struct job_spec *spec, char **ret_json, size_t *ret_len,
                     struct al_error **err);

/* Registers every secret_env value with the log redactor (base/log.h), so
 * they show as "***" in logs and are masked before anything reaches the
 * database. All or nothing: on failure nothing stays registered. Entries
 * without a value are skipped. */
int job_spec_register_secrets(const struct job_spec *spec, struct al_error **err);

/* Drops the registrations made by job_spec_register_secrets(). */
void job_spec_unregister_secrets(const struct job_spec *spec);

/* Frees a spec, wiping secret values first. Accepts NULL; returns NULL. */
struct job_spec *job_spec_free(struct job_spec *spec);
DEFINE_CLEANUP_FUNC(struct job_spec, job_spec_free)
#define _cleanup_job_spec_ _cleanup_(job_spec_freep)

/* "spool", "api", "http", "gitlab", "github", "cli"; "" for JOB_SOURCE_NONE. */
const char *job_source_type_to_string(enum job_source_type t);
int job_source_type_from_string(const char *s, enum job_source_type *ret_type);

/* True for [A-Za-z_][A-Za-z0-9_]* of at most JOB_SPEC_MAX_ENV_NAME bytes. */
bool job_env_name_is_valid(const char *s);

#endif
