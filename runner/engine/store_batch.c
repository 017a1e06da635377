#include "runner/engine/store_batch.h"

#include <errno.h>
#include <inttypes.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runner/base/log.h"
#include "runner/base/util.h"

#define BATCH_TERMINAL_SQL "('SUCCEEDED','FAILED','TIMED_OUT','CANCELED','ERROR')"

struct store_batch_tx {
    struct store *s;
    sqlite3_stmt *link;
    char id[STORE_BATCH_ID_SIZE];
};

static int db_error(sqlite3 *db, int rc, struct al_error **err, const char *what)
{
    int code = rc == SQLITE_NOMEM ? ENOMEM : rc == SQLITE_BUSY ? EBUSY : EIO;
    return al_error_set(err, code, "%s: %s", what, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
}

static int prepare(sqlite3 *db, const char *sql, sqlite3_stmt **ret, struct al_error **err)
{
    int rc = sqlite3_prepare_v2(db, sql, -1, ret, NULL);
    if (rc != SQLITE_OK)
        return db_error(db, rc, err, "preparing a batch query");
    return 0;
}

static void finalizep(sqlite3_stmt **st)
{
    sqlite3_finalize(*st);
}
#define _cleanup_finalize_ _cleanup_(finalizep)

static int dup_col(sqlite3_stmt *st, int i, char **ret)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    *ret = NULL;
    if (!t)
        return 0;
    *ret = strdup((const char *)t);
    return *ret ? 0 : -ENOMEM;
}

bool store_batch_id_is_valid(const char *s, size_t len)
{
    if (len != STORE_BATCH_ID_LEN || s[0] != 'b')
        return false;
    for (size_t i = 1; i < len; i++) {
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    }
    return true;
}

static void make_batch_id(char out[STORE_BATCH_ID_SIZE]);
static int exec_step(sqlite3 *db, sqlite3_stmt *st, struct al_error **err, const char *what);

#define BATCH_JOB_INSERT_SQL \
    "INSERT INTO batch_jobs (batch_id, idx, job_id, params) VALUES (?1, ?2, ?3, ?4)"

/* A submitted batch (tagged false) or one that gathers the jobs tagged with
 * its name (tagged true, counted as they come). */
static int insert_batch(sqlite3 *db, const char *id, const char *name, unsigned max_parallel,
                        size_t total, bool tagged, struct al_error **err, const char *what)
{
    _cleanup_finalize_ sqlite3_stmt *st = NULL;
    int r = prepare(db,
                    "INSERT INTO batches (id, name, created_ms, max_parallel, total, tagged) "
                    "VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    &st, err);
    if (r < 0)
        return r;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, al_now_wall_ms());
    sqlite3_bind_int64(st, 4, max_parallel);
    sqlite3_bind_int64(st, 5, (int64_t)total);
    sqlite3_bind_int(st, 6, tagged);
    return exec_step(db, st, err, what);
}

/* Binds a BATCH_JOB_INSERT_SQL row; safe_params (redacted) may be NULL. */
static void bind_batch_job(sqlite3_stmt *st, const char *batch_id, int64_t idx, const char *job_id,
                           const char *safe_params)
{
    sqlite3_bind_text(st, 1, batch_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, idx);
    sqlite3_bind_text(st, 3, job_id, -1, SQLITE_STATIC);
    if (safe_params)
        sqlite3_bind_text(st, 4, safe_params, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 4);
}

/* The limit of a listing: 50 when 0, at most 1000. */
static unsigned list_limit(unsigned limit)
{
    return limit == 0 ? 50 : limit > 1000 ? 1000 : limit;
}

/* ---- the submit transaction --------------------------------------------- */

void store_batch_rollback(struct store_batch_tx *tx)
{
    if (!tx)
        return;
    sqlite3 *db = store_sqlite(tx->s);
    sqlite3_finalize(tx->link);
    if (!sqlite3_get_autocommit(db))
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    free(tx);
}

int store_batch_begin(struct store *s, const char *name, unsigned max_parallel, size_t total,
                      struct store_batch_tx **ret_tx, char ret_id[STORE_BATCH_ID_SIZE],
                      struct al_error **err)
{
    sqlite3 *db = store_sqlite(s);
    struct store_batch_tx *tx = calloc(1, sizeof(*tx));
    if (!tx)
        return al_error_set(err, ENOMEM, "storing the batch");
    tx->s = s;
    make_batch_id(tx->id);

    int rc = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        free(tx);
        return db_error(db, rc, err, "storing the batch");
    }
    int r = insert_batch(db, tx->id, name, max_parallel, total, false, err, "storing the batch");
    if (r == 0)
        r = prepare(db, BATCH_JOB_INSERT_SQL, &tx->link, err);
    if (r < 0) {
        store_batch_rollback(tx);
        return r;
    }
    memcpy(ret_id, tx->id, STORE_BATCH_ID_SIZE);
    *ret_tx = tx;
    return 0;
}

int store_batch_add_job(struct store_batch_tx *tx, size_t idx, const char *job_id,
                        const char *params, struct al_error **err)
{
    sqlite3 *db = store_sqlite(tx->s);
    _cleanup_free_ char *safe = params ? al_redact(params, strlen(params), NULL) : NULL;
    if (params && !safe)
        return al_error_set(err, ENOMEM, "storing the batch");
    sqlite3_stmt *st = tx->link;
    bind_batch_job(st, tx->id, (int64_t)idx, job_id, safe);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (rc != SQLITE_DONE)
        return db_error(db, rc, err, "storing a job of the batch");
    return 0;
}

int store_batch_commit(struct store_batch_tx *tx, struct al_error **err)
{
    sqlite3 *db = store_sqlite(tx->s);
    sqlite3_finalize(tx->link);
    tx->link = NULL;
    int rc = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return db_error(db, rc, err, "committing the batch");
    free(tx);
    return 0;
}

/* ---- reading ------------------------------------------------------------ */

void store_batch_clear(struct store_batch *b)
{
    if (b) {
        free(b->name);
        b->name = NULL;
    }
}

void store_batches_free(struct store_batch *b, size_t n)
{
    for (size_t i = 0; b && i < n; i++)
        store_batch_clear(&b[i]);
    free(b);
}

#define BATCH_COLUMNS "id, name, created_ms, coalesce(canceled_ms, 0), max_parallel, total"

static int read_batch_row(sqlite3_stmt *st, struct store_batch *b)
{
    memset(b, 0, sizeof(*b));
    const unsigned char *id = sqlite3_column_text(st, 0);
    snprintf(b->id, sizeof(b->id), "%s", id ? (const char *)id : "");
    if (dup_col(st, 1, &b->name) < 0)
        return -ENOMEM;
    b->created_ms = sqlite3_column_int64(st, 2);
    b->canceled_ms = sqlite3_column_int64(st, 3);
    b->max_parallel = (unsigned)sqlite3_column_int64(st, 4);
    b->total = (unsigned)sqlite3_column_int64(st, 5);
    return 0;
}

static int read_counts(sqlite3 *db, struct store_batch *b, struct al_error **err)
{
    _cleanup_finalize_ sqlite3_stmt *st = NULL;
    int r = prepare(db,
                    "SELECT j.state, count(*), max(j.updated_ms) FROM batch_jobs b "
                    "JOIN jobs j ON j.id = b.job_id WHERE b.batch_id = ?1 GROUP BY j.state",
                    &st, err);
    if (r < 0)
        return r;
    sqlite3_bind_text(st, 1, b->id, -1, SQLITE_STATIC);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        enum job_state state;
        const unsigned char *t = sqlite3_column_text(st, 0);
        if (t && job_state_from_string((const char *)t, &state) == 0)
            b->by_state[state] = (unsigned)sqlite3_column_int64(st, 1);
        int64_t upd = sqlite3_column_int64(st, 2);
        if (upd > b->last_update_ms)
            b->last_update_ms = upd;
    }
    if (rc != SQLITE_DONE)
        return db_error(db, rc, err, "counting the batch's jobs");
    return 0;
}

int store_batch_get(struct store *s, const char *id, struct store_batch *ret, struct al_error **err)
{
    sqlite3 *db = store_sqlite(s);
    _cleanup_finalize_ sqlite3_stmt *st = NULL;
    int r = prepare(db, "SELECT " BATCH_COLUMNS " FROM batches WHERE id = ?1", &st, err);
    if (r < 0)
        return r;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return al_error_set(err, ENOENT, "batch %s not found", id);
    if (rc != SQLITE_ROW)
        return db_error(db, rc, err, "reading the batch");
    struct store_batch b;
    if (read_batch_row(st, &b) < 0)
        return al_error_set(err, ENOMEM, "reading the batch");
    r = read_counts(db, &b, err);
    if (r < 0) {
        store_batch_clear(&b);
        return r;
    }
    *ret = b;
    return 0;
}

int store_batch_list(struct store *s, unsigned limit, struct store_batch **ret, size_t *ret_n,
                     struct al_error **err)
{
    sqlite3 *db = store_sqlite(s);
    limit = list_limit(limit);
    _cleanup_finalize_ sqlite3_stmt *st = NULL;
    int r = prepare(db, "SELECT " BATCH_COLUMNS " FROM batches ORDER BY id DESC LIMIT ?1", &st,
                    err);
    if (r < 0)
        return r;
    sqlite3_bind_int(st, 1, (int)limit);
    struct store_batch *v = calloc(limit, sizeof(*v));
    if (!v)
        return al_error_set(err, ENOMEM, "listing batches");
    size_t n = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW && n < limit) {
        if (read_batch_row(st, &v[n]) < 0) {
            store_batches_free(v, n);
            return al_error_set(err, ENOMEM, "listing batches");
        }
        n++;
        r = read_counts(db, &v[n - 1], err);
        if (r < 0) {
            store_batches_free(v, n);
            return r;
        }
    }
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        store_batches_free(v, n);
        return db_error(db, rc, err, "listing batches");
    }
    *ret = v;
    *ret_n = n;
    return 0;
}

void store_batch_jobs_free(struct store_batch_job *j, size_t n)
{
    for (size_t i = 0; j && i < n; i++) {
        free(j[i].name);
        free(j[i].params);
        free(j[i].reason);
    }
    free(j);
}

int store_batch_jobs(struct store *s, const char *batch_id, unsigned after_idx, unsigned limit,
                     struct store_batch_job **ret, size_t *ret_n, struct al_error **err)
{
    sqlite3 *db = store_sqlite(s);
    limit = list_limit(limit);
    _cleanup_finalize_ sqlite3_stmt *st = NULL;
    int r = prepare(db,
                    "SELECT b.idx, j.id, j.name, b.params, j.state, j.exit_code, j.reason, "
                    "j.attempts, j.created_ms, j.updated_ms, a.started_ms, a.ended_ms "
                    "FROM batch_jobs b JOIN jobs j ON j.id = b.job_id "
                    "LEFT JOIN attempts a ON a.job_id = j.id AND a.n = j.attempts "
                    "WHERE b.batch_id = ?1 AND b.idx > ?2 ORDER BY b.idx LIMIT ?3",
                    &st, err);
    if (r < 0)
        return r;
    sqlite3_bind_text(st, 1, batch_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, after_idx);
    sqlite3_bind_int(st, 3, (int)limit);
    struct store_batch_job *v = calloc(limit, sizeof(*v));
    if (!v)
        return al_error_set(err, ENOMEM, "listing the batch's jobs");
    size_t n = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW && n < limit) {
        struct store_batch_job *j = &v[n++];
        j->idx = (unsigned)sqlite3_column_int64(st, 0);
        const unsigned char *id = sqlite3_column_text(st, 1);
        snprintf(j->job_id, sizeof(j->job_id), "%s", id ? (const char *)id : "");
        if (dup_col(st, 2, &j->name) < 0 || dup_col(st, 3, &j->params) < 0 ||
            dup_col(st, 6, &j->reason) < 0) {
            store_batch_jobs_free(v, n);
            return al_error_set(err, ENOMEM, "listing the batch's jobs");
        }
        const unsigned char *state = sqlite3_column_text(st, 4);
        if (!state || job_state_from_string((const char *)state, &j->state) < 0)
            j->state = JOB_STATE_ERROR;
        j->has_exit_code = sqlite3_column_type(st, 5) != SQLITE_NULL;
        j->exit_code = sqlite3_column_int(st, 5);
        j->attempts = sqlite3_column_int(st, 7);
        j->created_ms = sqlite3_column_int64(st, 8);
        j->updated_ms = sqlite3_column_int64(st, 9);
        j->started_ms = sqlite3_column_int64(st, 10);
        j->ended_ms = sqlite3_column_int64(st, 11);
    }
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        store_batch_jobs_free(v, n);
        return db_error(db, rc, err, "listing the batch's jobs");
    }
    *ret = v;
    *ret_n = n;
    return 0;
}

int store_batch_live_jobs(struct store *s, const char *batch_id,
                          void (*fn)(const char *batch_id, unsigned max_parallel,
                                     const char *job_id, enum job_state state, void *data),
                          void *data, struct al_error **err)
{
    sqlite3 *db = store_sqlite(s);
    _cleanup_finalize_ sqlite3_stmt *st = NULL;
    int r = prepare(db,
                    batch_id ? "SELECT t.id, t.max_parallel, j.id, j.state FROM batches t "
                               "JOIN batch_jobs b ON b.batch_id = t.id "
                               "JOIN jobs j ON j.id = b.job_id WHERE t.id = ?1 "
                               "AND j.state NOT IN " BATCH_TERMINAL_SQL " ORDER BY b.idx"
                             : "SELECT t.id, t.max_parallel, j.id, j.state FROM jobs j "
                               "JOIN batch_jobs b ON b.job_id = j.id "
                               "JOIN batches t ON t.id = b.batch_id "
                               "WHERE j.state NOT IN " BATCH_TERMINAL_SQL " AND t.max_parallel > 0",
                    &st, err);
    if (r < 0)
        return r;
    if (batch_id)
        sqlite3_bind_text(st, 1, batch_id, -1, SQLITE_STATIC);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *bid = (const char *)sqlite3_column_text(st, 0);
        const char *jid = (const char *)sqlite3_column_text(st, 2);
        const char *state = (const char *)sqlite3_column_text(st, 3);
        enum job_state js;
        if (!bid || !jid || !state || job_state_from_string(state, &js) < 0)
            continue;
        fn(bid, (unsigned)sqlite3_column_int64(st, 1), jid, js, data);
    }
    if (rc != SQLITE_DONE)
        return db_error(db, rc, err, "listing the batch's live jobs");
    return 0;
}

static void make_batch_id(char out[STORE_BATCH_ID_SIZE])
{
    uint32_t seq = 0;
    al_random_bytes(&seq, sizeof(seq));
    snprintf(out, STORE_BATCH_ID_SIZE, "b%012" PRIx64 "%08" PRIx32,
             (uint64_t)al_now_wall_ms() & UINT64_C(0xffffffffffff), seq);
}

static int exec_step(sqlite3 *db, sqlite3_stmt *st, struct al_error **err, const char *what)
{
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        return db_error(db, rc, err, what);
    return rc == SQLITE_ROW ? 1 : 0;
}

int store_batch_tag(struct store *s, const char *name, const char *job_id, const char *params,
                    char ret_id[STORE_BATCH_ID_SIZE], struct al_error **err)
{
    sqlite3 *db = store_sqlite(s);
    bool own = sqlite3_get_autocommit(db);
    if (own) {
        int rc = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
        if (rc != SQLITE_OK)
            return db_error(db, rc, err, "tagging a job with its batch");
    }
    char id[STORE_BATCH_ID_SIZE] = "";
    int64_t total = 0;
    int r;
    {
        _cleanup_finalize_ sqlite3_stmt *st = NULL;
        r = prepare(db,
                    "SELECT id, total FROM batches WHERE name = ?1 AND tagged = 1 "
                    "ORDER BY id DESC LIMIT 1",
                    &st, err);
        if (r == 0) {
            sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
            r = exec_step(db, st, err, "finding the tagged batch");
            if (r == 1) {
                snprintf(id, sizeof(id), "%s", (const char *)sqlite3_column_text(st, 0));
                total = sqlite3_column_int64(st, 1);
                r = 0;
            }
        }
    }
    if (r == 0 && !id[0]) {
        make_batch_id(id);
        r = insert_batch(db, id, name, 0, 0, true, err, "creating the tagged batch");
    }
    if (r == 0) {
        _cleanup_free_ char *safe = params ? al_redact(params, strlen(params), NULL) : NULL;
        _cleanup_finalize_ sqlite3_stmt *st = NULL;
        r = prepare(db, BATCH_JOB_INSERT_SQL, &st, err);
        if (r == 0) {
            bind_batch_job(st, id, total + 1, job_id, safe);
            r = exec_step(db, st, err, "tagging a job with its batch");
        }
    }
    if (r == 0) {
        _cleanup_finalize_ sqlite3_stmt *st = NULL;
        r = prepare(db, "UPDATE batches SET total = total + 1 WHERE id = ?1", &st, err);
        if (r == 0) {
            sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
            r = exec_step(db, st, err, "counting the tagged batch");
        }
    }
    if (own) {
        int rc = sqlite3_exec(db, r == 0 ? "COMMIT" : "ROLLBACK", NULL, NULL, NULL);
        if (r == 0 && rc != SQLITE_OK) {
            sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
            r = db_error(db, rc, err, "tagging a job with its batch");
        }
    }
    if (r == 0 && ret_id)
        memcpy(ret_id, id, STORE_BATCH_ID_SIZE);
    return r;
}

int store_batch_set_canceled(struct store *s, const char *id, int64_t at_ms, struct al_error **err)
{
    sqlite3 *db = store_sqlite(s);
    _cleanup_finalize_ sqlite3_stmt *st = NULL;
    int r = prepare(db, "UPDATE batches SET canceled_ms = ?2 WHERE id = ?1 AND canceled_ms IS NULL",
                    &st, err);
    if (r < 0)
        return r;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, at_ms);
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        return db_error(db, rc, err, "recording the batch's cancellation");
    return 0;
}
