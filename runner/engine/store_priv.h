/* What the store's files share: struct store, the statement ids, and the
 * SQLite helpers of store_sql.c. Nothing outside runner/engine/store*.c
 * includes this; the API is store.h.
 */
#ifndef AL_STORE_PRIV_H
#define AL_STORE_PRIV_H

#include <errno.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>

#include "runner/base/macro.h"
#include "runner/engine/store.h"

#define TERMINAL_SQL "('SUCCEEDED','FAILED','TIMED_OUT','CANCELED','ERROR')"

#define JOB_COLUMNS                                                                          \
    "id, name, spec, state, source_type, source_ref, pool, labels, created_ms, updated_ms, " \
    "exit_code, reason, attempts, max_attempts, log_bytes, bytes, limits"
#define EVENT_COLUMNS "seq, job_id, from_state, to_state, at_ms, detail"

enum stmt_id {
    ST_BEGIN,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_JOB_INSERT,
    ST_LABEL_INSERT,
    ST_EVENT_INSERT,
    ST_SEQ_FLOOR,
    ST_JOB_STATE,
    ST_JOB_SET_STATE,
    ST_JOB_SET_TERMINAL,
    ST_JOB_START_ATTEMPT,
    ST_JOB_REQUEUE,
    ST_JOB_GRANT_ATTEMPT,
    ST_ATTEMPT_INSERT,
    ST_ATTEMPT_END,
    ST_ATTEMPT_SET_VM,
    ST_JOB_GET,
    ST_EVENTS_ALL,
    ST_EVENTS_JOB,
    ST_ATTEMPTS_LIST,
    ST_VM_INSERT,
    ST_VM_DELETE,
    ST_VM_LIST_ALL,
    ST_VM_LIST_BACKEND,
    ST_ARTIFACT_INSERT,
    ST_ARTIFACT_UPSERT,
    ST_JOB_SUM_BYTES,
    ST_ARTIFACT_LIST,
    ST_JOB_ADD_BYTES,
    ST_JOB_SET_LOG_BYTES,
    ST_JOB_ADD_LIMITS,
    ST_PRUNE_BY_AGE,
    ST_PRUNE_OLDEST,
    ST_TOTAL_BYTES,
    ST_JOB_DELETE,
    ST_COUNT,
};

/* store_job_list() statements, one per combination of filters. */
enum {
    LIST_STATE = 1 << 0,
    LIST_LABEL = 1 << 1,
    LIST_SOURCE = 1 << 2,
    LIST_CURSOR = 1 << 3,
    LIST_ASC = 1 << 4,
    LIST_LIVE = 1 << 5, /* the state filter is a live state: lets jobs_live serve it */
    LIST_VARIANTS = 1 << 6,
};

struct store {
    sqlite3 *db; /* the owning thread's connection */
    /* store_sync()'s own connection, so checkpoints can run on another thread */
    sqlite3 *sync_db;
    pthread_mutex_t sync_lock;
    char *path;
    char *wal_path;
    int version;
    sqlite3_stmt *stmts[ST_COUNT];
    sqlite3_stmt *list_stmts[LIST_VARIANTS];
    int64_t last_id_ms;
    uint32_t last_id_seq;
};

/* Adds context to *err (when the caller asked for it) and returns r: the
 * code must survive even when err is NULL. */
#define WRAP(r, err, ...) (al_error_wrap((err), __VA_ARGS__), (r))

/* A write transaction that rolls back unless committed. Inside a
 * transaction someone else opened (store_batch.c), it is a no-op: the outer
 * one commits or rolls back everything. */
struct tx {
    struct store *s;
    bool open;
    bool nested;
};

struct job_row_state {
    enum job_state state;
    int attempts;
    int max_attempts;
};

/* ---- store_sql.c */

int st_sqlite_to_errno(int rc);
bool st_sqlite_is_corrupt(int rc);
/* Records a database error with context and the path; returns -errno. */
int st_db_fail(struct store *s, int rc, struct al_error **err, const char *fmt, ...) _printf_(4, 5);
/* The cached statement id, prepared on first use; NULL (err set) on failure. */
sqlite3_stmt *st_stmt_get(struct store *s, enum stmt_id id, struct al_error **err);
/* Cached statements are reset, not finalized, when a scope ends. */
void st_stmt_resetp(sqlite3_stmt **st);
#define _cleanup_stmt_ _cleanup_(st_stmt_resetp)
/* Binds text after masking registered secrets; NULL binds SQL NULL. */
int st_bind_text(sqlite3_stmt *st, int idx, const char *text);
int st_bind_plain(sqlite3_stmt *st, int idx, const char *text);

/* One statement parameter for st_bind(). */
struct st_arg {
    enum { ST_ARG_NULL, ST_ARG_TEXT, ST_ARG_PLAIN, ST_ARG_INT } kind;
    const char *s;
    int64_t i;
};
#define ST_NULL     ((struct st_arg){.kind = ST_ARG_NULL})
#define ST_TEXT(x)  ((struct st_arg){.kind = ST_ARG_TEXT, .s = (x)})  /* st_bind_text() */
#define ST_PLAIN(x) ((struct st_arg){.kind = ST_ARG_PLAIN, .s = (x)}) /* st_bind_plain() */
#define ST_INT(x)   ((struct st_arg){.kind = ST_ARG_INT, .i = (x)})
/* Binds args[0..n-1] to ?1..?n, stopping at the first failure: SQLITE_OK
 * or that failure's code. */
int st_bind(sqlite3_stmt *st, const struct st_arg *args, size_t n);

int st_col_text(sqlite3_stmt *st, int i, char **ret);
void st_col_id(sqlite3_stmt *st, int i, char out[STORE_JOB_ID_SIZE]);
enum job_state st_col_state(sqlite3_stmt *st, int i);
int st_exec_sql(struct store *s, const char *sql, struct al_error **err);
void st_tx_endp(struct tx *tx);
#define _cleanup_tx_ _cleanup_(st_tx_endp)
int st_step_done(struct store *s, enum stmt_id id, struct al_error **err);
int st_tx_begin(struct store *s, struct tx *tx, struct al_error **err);
int st_tx_commit(struct tx *tx, struct al_error **err);
int st_run_write(struct store *s, sqlite3_stmt *st, const char *what, struct al_error **err);

/* ---- store_jobs.c */

/* Begins a write transaction on job id and reads its state, attempts and
 * max_attempts into *ret; -ENOENT when there is no such job. */
int st_tx_begin_on_job(struct store *s, struct tx *tx, const char *id, struct job_row_state *ret,
                       struct al_error **err);

/* Collects rows of a bound statement into a growing array: row_fn reads
 * one row into the element. */
#define COLLECT_ROWS(s, st, arr, n, free_fn, row_fn, what, err)                      \
    ({                                                                               \
        int _c_r = 0, _c_rc;                                                         \
        size_t _c_cap = 0;                                                           \
        while ((_c_rc = sqlite3_step(st)) == SQLITE_ROW) {                           \
            if ((n) == _c_cap) {                                                     \
                size_t _c_ncap = _c_cap ? _c_cap * 2 : 8;                            \
                __typeof__(arr) _c_g = reallocarray((arr), _c_ncap, sizeof(*(arr))); \
                if (!_c_g) {                                                         \
                    _c_r = -ENOMEM;                                                  \
                    break;                                                           \
                }                                                                    \
                memset(_c_g + _c_cap, 0, (_c_ncap - _c_cap) * sizeof(*(arr)));       \
                (arr) = _c_g;                                                        \
                _c_cap = _c_ncap;                                                    \
            }                                                                        \
            if (row_fn((st), &(arr)[(n)++]) < 0) {                                   \
                _c_r = -ENOMEM;                                                      \
                break;                                                               \
            }                                                                        \
        }                                                                            \
        if (_c_r == 0 && _c_rc != SQLITE_DONE)                                       \
            _c_r = st_db_fail((s), _c_rc, (err), "%s", (what));                      \
        else if (_c_r < 0)                                                           \
            al_error_set((err), ENOMEM, "%s: out of memory", (what));                \
        if (_c_r < 0) {                                                              \
            free_fn((arr), (n));                                                     \
            (arr) = NULL;                                                            \
            (n) = 0;                                                                 \
        }                                                                            \
        _c_r;                                                                        \
    })

#endif
