/* Batches in the store: a named group of jobs submitted together
 * (batch.h), with the parameters each job was made from.
 *
 * A batch's jobs are ordinary rows of the jobs table; batch_jobs links them
 * (batch, 1-based index, job, parameters). Pruning a job drops its link, so
 * an old batch shows fewer jobs than it had, never dangling ones. Counts
 * by state are computed from the jobs table on every read (one indexed
 * join; about a millisecond for 10,000 jobs), so they never drift.
 *
 * Batch ids are "b" + 20 lower-case hex digits like job ids (store.h): time
 * of creation in ms, then a random counter.
 *
 * A whole batch is stored in one transaction: store_batch_begin(), the
 * batch row, every job (store_job_insert() joins the open transaction)
 * and its link, then store_batch_commit(); store_batch_rollback() drops
 * all of it.
 */
#ifndef AL_STORE_BATCH_H
#define AL_STORE_BATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runner/base/error.h"
#include "runner/engine/state.h"

#define STORE_BATCH_ID_LEN   21
#define STORE_BATCH_ID_SIZE  (STORE_BATCH_ID_LEN + 1)
#define STORE_BATCH_NAME_MAX 64

/* The schema step that adds the batch tables (store.c's migration list). */
#define STORE_BATCH_SCHEMA_SQL                                           \
    "CREATE TABLE batches ("                                             \
    "  id TEXT PRIMARY KEY NOT NULL,"                                    \
    "  name TEXT NOT NULL,"                                              \
    "  created_ms INTEGER NOT NULL,"                                     \
    "  max_parallel INTEGER NOT NULL DEFAULT 0,"                         \
    "  total INTEGER NOT NULL,"                                          \
    "  canceled_ms INTEGER,"                                             \
    "  tagged INTEGER NOT NULL DEFAULT 0"                                \
    ") WITHOUT ROWID;"                                                   \
    "CREATE INDEX batches_name ON batches(name, id);"                    \
    "CREATE TABLE batch_jobs ("                                          \
    "  batch_id TEXT NOT NULL REFERENCES batches(id) ON DELETE CASCADE," \
    "  idx INTEGER NOT NULL,"                                            \
    "  job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,"      \
    "  params TEXT,"                                                     \
    "  PRIMARY KEY (batch_id, idx)"                                      \
    ") WITHOUT ROWID;"                                                   \
    "CREATE INDEX batch_jobs_job ON batch_jobs(job_id);"

struct store;
typedef struct sqlite3 sqlite3;

/* The owning thread's connection, for the store's own modules. */
sqlite3 *store_sqlite(struct store *s);

/* True for "b" + 20 lower-case hex digits. */
bool store_batch_id_is_valid(const char *s, size_t len);

/* The transaction a whole batch is stored in. begin opens it and inserts
 * the batch row (ret_id gets its id); add_job links job_id as job number
 * idx (1-based), params (may be NULL) being a JSON object of the values it
 * was made from; commit ends it; rollback (also after a failed commit)
 * drops all of it and frees tx. commit frees tx on success only. */
struct store_batch_tx;
int store_batch_begin(struct store *s, const char *name, unsigned max_parallel, size_t total,
                      struct store_batch_tx **ret_tx, char ret_id[STORE_BATCH_ID_SIZE],
                      struct al_error **err);
int store_batch_add_job(struct store_batch_tx *tx, size_t idx, const char *job_id,
                        const char *params, struct al_error **err);
int store_batch_commit(struct store_batch_tx *tx, struct al_error **err);
void store_batch_rollback(struct store_batch_tx *tx);

struct store_batch {
    char id[STORE_BATCH_ID_SIZE];
    char *name;
    int64_t created_ms;
    int64_t canceled_ms; /* 0 unless cancelled */
    unsigned max_parallel;
    unsigned total;                     /* jobs submitted */
    unsigned by_state[JOB_STATE_COUNT]; /* jobs still stored, by state */
    int64_t last_update_ms;             /* newest updated_ms of its jobs */
};

void store_batch_clear(struct store_batch *b);

/* Reads one batch with its counts. -ENOENT when there is none. */
int store_batch_get(struct store *s, const char *id, struct store_batch *ret,
                    struct al_error **err);

/* The newest batches first, at most limit (0 = 50, max 1000). */
int store_batch_list(struct store *s, unsigned limit, struct store_batch **ret, size_t *ret_n,
                     struct al_error **err);
void store_batches_free(struct store_batch *b, size_t n);

/* One job of a batch, for results. */
struct store_batch_job {
    unsigned idx;
    char job_id[22];
    char *name;
    char *params; /* JSON object, or NULL */
    enum job_state state;
    bool has_exit_code;
    int exit_code;
    char *reason;
    int attempts;
    int64_t created_ms;
    int64_t updated_ms;
    int64_t started_ms; /* last attempt; 0 when none */
    int64_t ended_ms;   /* last attempt; 0 while running or when none */
};

/* Jobs with idx > after_idx in index order, at most limit (0 = 50, max
 * 1000). */
int store_batch_jobs(struct store *s, const char *batch_id, unsigned after_idx, unsigned limit,
                     struct store_batch_job **ret, size_t *ret_n, struct al_error **err);
void store_batch_jobs_free(struct store_batch_job *j, size_t n);

/* Calls fn for each job of the batch that is not terminal (cancel), or,
 * with batch_id NULL, for each such job of every batch with a cap
 * (max_parallel > 0), for the scheduler after a restart. */
int store_batch_live_jobs(struct store *s, const char *batch_id,
                          void (*fn)(const char *batch_id, unsigned max_parallel,
                                     const char *job_id, enum job_state state, void *data),
                          void *data, struct al_error **err);

/* A job a source (HTTP queue, spool) accepted with a batch name: links it
 * as the next job of the newest tagged batch of that name, created on the
 * first such job. Such a batch grows as jobs arrive (total counts them),
 * so it is "finished" whenever every job so far has ended; producers name
 * one batch per run ("nightly-2026-12-06"). name must pass
 * batch_name_is_valid(). ret_id (may be NULL) gets the batch's id. Its own
 * transaction, or the caller's when one is open. */
int store_batch_tag(struct store *s, const char *name, const char *job_id, const char *params,
                    char ret_id[STORE_BATCH_ID_SIZE], struct al_error **err);

/* Records that the batch was cancelled (first time only). */
int store_batch_set_canceled(struct store *s, const char *id, int64_t at_ms, struct al_error **err);

#endif
