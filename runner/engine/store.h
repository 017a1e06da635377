/* Durable job state in SQLite: jobs, their transitions (events), attempts,
 * the VMs each attempt owns, and an artifacts index.
 *
 * One database file (conventionally <state_dir>/agentlab.db, mode 0600) in
 * WAL mode. Every call is synchronous; the daemon makes them on its loop
 * thread, so each is one short transaction on cached prepared statements
 * (tens of microseconds: see scripts/bench-store.sh). A store handle is used
 * by one thread at a time; only store_sync() may run concurrently with it.
 *
 * Durability. A transition is committed before the action it announces: the
 * daemon calls store_job_transition() and only then creates, starts or
 * destroys a VM. Commits use synchronous=NORMAL: a committed transaction is
 * in the WAL before the call returns, so it survives any crash of the
 * daemon (SIGKILL, OOM kill, abort) — the crashes reconcile is built for.
 * What NORMAL does not give is durability across power loss or a kernel
 * crash before the next checkpoint; FULL would, at one fsync (~2 ms on these
 * disks) per commit, i.e. well under 200 jobs/s. Power loss also kills
 * every VM, so the phases in between need nothing more: after it, every
 * non-terminal job is reconciled to ERROR or requeued whatever phase it had
 * reached. Two kinds of commit are acknowledged to the outside world and
 * must survive power loss too: accepting a job from its source, and a
 * terminal state reported back to it. For those the daemon calls
 * store_sync() on a worker thread before it answers the source: one fsync
 * covers every commit before it (group commit), and the loop never waits for
 * the disk. store_options.sync_full switches every commit to FULL for
 * installations that want that instead of speed.
 *
 * Checkpoints (copying the WAL into the database file, with two fsyncs)
 * also happen in store_sync(), on its own connection, so the owning thread
 * never runs one: the daemon calls it about once a second while jobs change.
 * If nobody does, SQLite checkpoints on the committing thread once the WAL
 * reaches 32 MiB, which bounds the file but stalls that commit.
 *
 * Secrets never reach the file: specs are stored through job_spec_to_json()
 * (names of secret variables only), and every free-text column (job name,
 * spec, source reference, event details, reasons, backend and VM names,
 * artifact paths) passes through the log redactor, so a registered secret
 * that leaks into a command, an error message or a name is stored as "***".
 * Identifiers validated elsewhere (ids, states, labels, pools) are not.
 *
 * Job ids are "j" + 12 lower-case hex digits of the creation time in ms
 * since the epoch + 8 hex digits that start random and count up when several
 * jobs are created in the same millisecond: 21 characters, unique, and
 * sorting as text sorts by creation time. Pagination keys on them.
 */
#ifndef AL_STORE_H
#define AL_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runner/base/error.h"
#include "runner/engine/spec.h"
#include "runner/engine/state.h"

#define STORE_JOB_ID_LEN   21
#define STORE_JOB_ID_SIZE  (STORE_JOB_ID_LEN + 1)
#define STORE_LIST_DEFAULT 50
#define STORE_LIST_MAX     1000
/* Version of the schema this build creates and migrates to. */
#define STORE_SCHEMA_VERSION 4

struct store;

struct store_options {
    bool sync_full; /* synchronous=FULL: fsync every commit (slow, see above) */
};

/* Opens (creating when missing) the database at path; missing parent
 * directories are created with mode 0711 and a new file gets mode 0600.
 * Migrates an older schema forward. Refuses, with a message that says what
 * to do, a file that is not an agentlab database or is corrupted, a schema
 * newer than this build, and a database or directory that cannot be
 * written. opts may be NULL. On success the caller owns *ret_store. */
int store_open(const char *path, const struct store_options *opts, struct store **ret_store,
               struct al_error **err);

/* Closes the database (checkpointing the WAL). Accepts NULL; returns NULL. */
struct store *store_close(struct store *s);
DEFINE_CLEANUP_FUNC(struct store, store_close)
#define _cleanup_store_ _cleanup_(store_closep)

/* The schema version found in the file (PRAGMA user_version). */
int store_schema_version(struct store *s);

/* Makes every transaction committed so far durable against power loss and
 * checkpoints the WAL into the database file (without waiting for the
 * owning thread). Meant for a worker thread: safe to call concurrently with
 * any other store call, but not with store_close(). Takes milliseconds. */
int store_sync(struct store *s, struct al_error **err);

/* Runs PRAGMA integrity_check and foreign_key_check. Returns 0 when both are
 * clean, else -EIO with the first problems in *err. Takes time proportional
 * to the database size: run it at startup or from a worker, not per job. */
int store_integrity_check(struct store *s, struct al_error **err);

/* ---- jobs and events ---- */

/* One transition of one job. seq is global and strictly increasing (never
 * reused), so "everything after seq N" is a complete stream for long-polls. */
struct store_event {
    int64_t seq;
    char job_id[STORE_JOB_ID_SIZE];
    enum job_state from; /* JOB_STATE_NONE for the creation event */
    enum job_state to;
    int64_t at_ms; /* wall clock, ms since the epoch */
    char *detail;  /* owned; may be NULL */
};

/* Frees what the event owns (not the event itself). */
void store_event_clear(struct store_event *ev);

/* Inserts a new job in state QUEUED from a validated spec (defaults applied)
 * and its creation event. The spec is stored without secret values.
 * ret_id receives the new id; ret_event (may be NULL) the creation event,
 * which the caller clears. */
int store_job_insert(struct store *s, const struct job_spec *spec, char ret_id[STORE_JOB_ID_SIZE],
                     struct store_event *ret_event, struct al_error **err);

struct store_transition {
    enum job_state to;
    const char *detail; /* for the event and, on a terminal state, the job's reason; may be NULL */
    bool has_exit_code; /* SUCCEEDED/FAILED: the workload's exit status */
    int exit_code;
};

/* Moves a job to t->to if the state machine allows it (job/state.h), in
 * one transaction with its event: both are committed, or neither. Entering
 * PROVISIONING starts a new attempt (attempts row, jobs.attempts + 1);
 * entering a terminal state ends the running attempt with that result.
 * Returns -ENOENT for an unknown job, -EINVAL for an illegal transition
 * (nothing is written). ret_event may be NULL. */
int store_job_transition(struct store *s, const char *id, const struct store_transition *t,
                         struct store_event *ret_event, struct al_error **err);

/* The retry edge: ERROR -> QUEUED, allowed only while attempts remain
 * (job_retry_check). free_attempt first raises the job's max_attempts by
 * one, in the same transaction: the attempt that just ended does not count.
 * Otherwise like store_job_transition(). */
int store_job_retry(struct store *s, const char *id, const char *detail, bool free_attempt,
                    struct store_event *ret_event, struct al_error **err);

struct store_job {
    char id[STORE_JOB_ID_SIZE];
    char *name; /* NULL when the spec has none */
    char *spec_json;
    enum job_state state;
    enum job_source_type source_type;
    char *source_ref; /* the source's own id, or NULL */
    char *pool;
    char **labels; /* NULL-terminated, never NULL */
    int64_t created_ms;
    int64_t updated_ms;
    bool has_exit_code;
    int exit_code;
    char *reason; /* detail of the terminal transition, or NULL */
    int attempts;
    int max_attempts;
    uint64_t log_bytes;
    uint64_t bytes;  /* log + artifacts, for retention */
    unsigned limits; /* hard limits its attempts ran into: bits of enum al_limit (hardlimits.h)
                      */
};

struct store_job *store_job_free(struct store_job *job);
DEFINE_CLEANUP_FUNC(struct store_job, store_job_free)

/* Reads one job. -ENOENT when there is none. */
int store_job_get(struct store *s, const char *id, struct store_job **ret_job,
                  struct al_error **err);

struct store_job_filter {
    enum job_state state;        /* JOB_STATE_NONE = any */
    const char *label;           /* NULL = any */
    enum job_source_type source; /* JOB_SOURCE_NONE = any */
    const char *cursor;          /* next_cursor of the previous page, NULL = first page */
    bool oldest_first;           /* default: newest first */
    unsigned limit;              /* 0 = STORE_LIST_DEFAULT, at most STORE_LIST_MAX */
};

struct store_job_page {
    struct store_job **jobs;
    size_t n;
    char next_cursor[STORE_JOB_ID_SIZE]; /* "" on the last page */
};

/* Lists jobs matching the filter, one page at a time (keyset pagination on
 * the id, so pages stay stable while jobs are added). */
int store_job_list(struct store *s, const struct store_job_filter *filter,
                   struct store_job_page *ret_page, struct al_error **err);
void store_job_page_clear(struct store_job_page *page);

/* Events with seq > after_seq, oldest first, at most limit (0 = 100, max
 * STORE_LIST_MAX); job_id NULL means every job. The caller frees the array
 * with store_events_free(). */
int store_events_since(struct store *s, const char *job_id, int64_t after_seq, unsigned limit,
                       struct store_event **ret_events, size_t *ret_n, struct al_error **err);
void store_events_free(struct store_event *events, size_t n);

/* ---- attempts and VMs ---- */

struct store_attempt {
    int n; /* 1-based */
    char *backend;
    char *vm_name;
    int64_t started_ms;
    int64_t ended_ms; /* 0 while running */
    char *result;     /* terminal state name, or NULL while running */
};

int store_attempts_list(struct store *s, const char *job_id, struct store_attempt **ret_attempts,
                        size_t *ret_n, struct al_error **err);
void store_attempts_free(struct store_attempt *a, size_t n);

/* A VM this daemon owns, recorded before the backend creates it and removed
 * after the backend destroyed it, so a restart can find what to clean up. */
struct store_vm {
    char *backend;
    char *vm_name;
    char job_id[STORE_JOB_ID_SIZE];
    int attempt;
    int64_t created_ms;
};

/* Records a VM for the job's current attempt (the job must be PROVISIONING,
 * BOOTING or RUNNING) and names it in the attempt. -EEXIST when the
 * (backend, vm_name) pair is already recorded. */
int store_vm_add(struct store *s, const char *backend, const char *vm_name, const char *job_id,
                 struct al_error **err);

/* Forgets a VM. -ENOENT when it was not recorded. */
int store_vm_remove(struct store *s, const char *backend, const char *vm_name,
                    struct al_error **err);

/* VMs recorded for backend (NULL = all). */
int store_vm_list(struct store *s, const char *backend, struct store_vm **ret_vms, size_t *ret_n,
                  struct al_error **err);
void store_vms_free(struct store_vm *vms, size_t n);

/* ---- artifacts, sizes, retention ---- */

struct store_artifact {
    char *path;
    uint64_t size;
    char sha256[65]; /* lower-case hex */
};

/* Indexes one collected artifact (path relative to the job's artifact dir);
 * its size counts toward the job's bytes. -EEXIST for a path already indexed. */
int store_artifact_add(struct store *s, const char *job_id, const char *path, uint64_t size,
                       const char *sha256_hex, struct al_error **err);
/* Indexes the files an attempt collected, in one transaction: a path
 * already indexed (an earlier attempt wrote it too) takes the new size and
 * digest, and the job's bytes become its log plus all its indexed files. */
int store_artifacts_index(struct store *s, const char *job_id, const struct store_artifact *v,
                          size_t n, struct al_error **err);
int store_artifact_list(struct store *s, const char *job_id, struct store_artifact **ret_artifacts,
                        size_t *ret_n, struct al_error **err);
void store_artifacts_free(struct store_artifact *a, size_t n);

/* Adds limits (bits of enum al_limit) to those the job ran into. */
int store_job_add_limits(struct store *s, const char *job_id, unsigned limits,
                         struct al_error **err);

/* Records the size of the job's log file (replaces the previous value). */
int store_job_set_log_bytes(struct store *s, const char *job_id, uint64_t bytes,
                            struct al_error **err);

struct store_prune_policy {
    int64_t now_ms;     /* reference time (al_now_wall_ms()) */
    int64_t max_age_ms; /* prune terminal jobs last updated longer ago; 0 = no age limit */
    uint64_t max_bytes; /* then prune oldest terminal jobs while the total is above; 0 = no limit */
    unsigned max_jobs;  /* at most this many per call (keeps each call short); 0 = 500 */
};

struct store_pruned_job {
    char id[STORE_JOB_ID_SIZE];
    uint64_t bytes;
};

struct store_prune_result {
    struct store_pruned_job *jobs; /* what was deleted: remove their files */
    size_t n;
    uint64_t bytes;
    bool more; /* max_jobs was reached: call again */
};

/* Deletes terminal jobs by age, then by total size (oldest first), with
 * their events, attempts and artifact index. Jobs that still own a VM are
 * never pruned. The caller deletes each pruned job's files. */
int store_prune(struct store *s, const struct store_prune_policy *policy,
                struct store_prune_result *ret_result, struct al_error **err);
void store_prune_result_clear(struct store_prune_result *r);

#endif
