/* The store's prepared statements and its SQLite helpers: errors,
 * bindings, columns and write transactions. */
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "runner/base/util.h"
#include "runner/engine/store_priv.h"

static const char *const stmt_sql[ST_COUNT] = {
        [ST_BEGIN] = "BEGIN IMMEDIATE",
        [ST_COMMIT] = "COMMIT",
        [ST_ROLLBACK] = "ROLLBACK",
        [ST_JOB_INSERT] = "INSERT INTO jobs (id, name, spec, state, source_type, source_ref, pool, "
                          "labels, created_ms, updated_ms, max_attempts) "
                          "VALUES (?1, ?2, ?3, 'QUEUED', ?4, ?5, ?6, ?7, ?8, ?8, ?9)",
        [ST_LABEL_INSERT] = "INSERT OR IGNORE INTO job_labels (label, job_id) VALUES (?1, ?2)",
        [ST_EVENT_INSERT] =
                "INSERT INTO events (seq, job_id, from_state, to_state, at_ms, detail) "
                "VALUES (max(coalesce((SELECT max(seq) FROM events), 0), "
                "coalesce((SELECT value FROM meta WHERE key = 'event_seq_floor'), 0)) + 1, "
                "?1, ?2, ?3, ?4, ?5)",
        [ST_SEQ_FLOOR] = "INSERT OR REPLACE INTO meta (key, value) SELECT 'event_seq_floor', "
                         "max(coalesce((SELECT max(seq) FROM events), 0), "
                         "coalesce((SELECT value FROM meta WHERE key = 'event_seq_floor'), 0))",
        [ST_JOB_STATE] = "SELECT state, attempts, max_attempts FROM jobs WHERE id = ?1",
        [ST_JOB_SET_STATE] = "UPDATE jobs SET state = ?2, updated_ms = ?3 WHERE id = ?1",
        [ST_JOB_SET_TERMINAL] = "UPDATE jobs SET state = ?2, updated_ms = ?3, exit_code = ?4, "
                                "reason = ?5 WHERE id = ?1",
        [ST_JOB_START_ATTEMPT] = "UPDATE jobs SET state = ?2, updated_ms = ?3, "
                                 "attempts = attempts + 1 WHERE id = ?1",
        [ST_JOB_REQUEUE] = "UPDATE jobs SET state = 'QUEUED', updated_ms = ?2, exit_code = NULL, "
                           "reason = NULL WHERE id = ?1",
        [ST_JOB_GRANT_ATTEMPT] = "UPDATE jobs SET max_attempts = max_attempts + 1 WHERE id = ?1",
        [ST_ATTEMPT_INSERT] = "INSERT INTO attempts (job_id, n, started_ms) VALUES (?1, ?2, ?3)",
        [ST_ATTEMPT_END] = "UPDATE attempts SET ended_ms = ?3, result = ?4 "
                           "WHERE job_id = ?1 AND n = ?2 AND ended_ms IS NULL",
        [ST_ATTEMPT_SET_VM] = "UPDATE attempts SET backend = ?3, vm_name = ?4 "
                              "WHERE job_id = ?1 AND n = ?2",
        [ST_JOB_GET] = "SELECT " JOB_COLUMNS " FROM jobs WHERE id = ?1",
        [ST_EVENTS_ALL] = "SELECT " EVENT_COLUMNS " FROM events WHERE seq > ?1 "
                          "ORDER BY seq LIMIT ?2",
        [ST_EVENTS_JOB] = "SELECT " EVENT_COLUMNS " FROM events WHERE job_id = ?3 AND seq > ?1 "
                          "ORDER BY seq LIMIT ?2",
        [ST_ATTEMPTS_LIST] = "SELECT n, backend, vm_name, started_ms, ended_ms, result "
                             "FROM attempts WHERE job_id = ?1 ORDER BY n",
        [ST_VM_INSERT] = "INSERT INTO vms (backend, vm_name, job_id, attempt, created_ms) "
                         "VALUES (?1, ?2, ?3, ?4, ?5)",
        [ST_VM_DELETE] = "DELETE FROM vms WHERE backend = ?1 AND vm_name = ?2",
        [ST_VM_LIST_ALL] = "SELECT backend, vm_name, job_id, attempt, created_ms FROM vms "
                           "ORDER BY backend, vm_name",
        [ST_VM_LIST_BACKEND] = "SELECT backend, vm_name, job_id, attempt, created_ms FROM vms "
                               "WHERE backend = ?1 ORDER BY vm_name",
        [ST_ARTIFACT_INSERT] = "INSERT INTO artifacts (job_id, path, size, sha256) "
                               "VALUES (?1, ?2, ?3, ?4)",
        [ST_ARTIFACT_LIST] = "SELECT path, size, sha256 FROM artifacts WHERE job_id = ?1 "
                             "ORDER BY path",
        [ST_ARTIFACT_UPSERT] = "INSERT INTO artifacts (job_id, path, size, sha256) "
                               "VALUES (?1, ?2, ?3, ?4) ON CONFLICT (job_id, path) DO UPDATE "
                               "SET size = excluded.size, sha256 = excluded.sha256",
        [ST_JOB_SUM_BYTES] = "UPDATE jobs SET bytes = log_bytes + (SELECT COALESCE(SUM(size), 0) "
                             "FROM artifacts WHERE job_id = ?1) WHERE id = ?1",
        [ST_JOB_ADD_BYTES] = "UPDATE jobs SET bytes = bytes + ?2 WHERE id = ?1",
        [ST_JOB_ADD_LIMITS] = "UPDATE jobs SET limits = limits | ?2 WHERE id = ?1",
        [ST_JOB_SET_LOG_BYTES] = "UPDATE jobs SET bytes = bytes - log_bytes + ?2, log_bytes = ?2 "
                                 "WHERE id = ?1",
        [ST_PRUNE_BY_AGE] = "SELECT id, bytes FROM jobs WHERE updated_ms < ?1 "
                            "AND state IN " TERMINAL_SQL " "
                            "AND NOT EXISTS (SELECT 1 FROM vms WHERE vms.job_id = jobs.id) "
                            "ORDER BY updated_ms, id LIMIT ?2",
        [ST_PRUNE_OLDEST] = "SELECT id, bytes FROM jobs WHERE state IN " TERMINAL_SQL " "
                            "AND NOT EXISTS (SELECT 1 FROM vms WHERE vms.job_id = jobs.id) "
                            "ORDER BY id LIMIT ?1",
        [ST_TOTAL_BYTES] = "SELECT COALESCE(SUM(bytes), 0) FROM jobs",
        [ST_JOB_DELETE] = "DELETE FROM jobs WHERE id = ?1",
};

int st_sqlite_to_errno(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return EBUSY;
    case SQLITE_NOMEM:
        return ENOMEM;
    case SQLITE_READONLY:
        return EROFS;
    case SQLITE_FULL:
        return ENOSPC;
    case SQLITE_CONSTRAINT:
        return EEXIST;
    case SQLITE_CANTOPEN:
    case SQLITE_PERM:
    case SQLITE_AUTH:
        return EACCES;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
        return EBADMSG;
    default:
        return EIO;
    }
}

bool st_sqlite_is_corrupt(int rc)
{
    return (rc & 0xff) == SQLITE_CORRUPT || (rc & 0xff) == SQLITE_NOTADB;
}

/* Records a database error with context and the path; returns -errno. */
int st_db_fail(struct store *s, int rc, struct al_error **err, const char *fmt, ...)
{
    char ctx[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx, sizeof(ctx), fmt, ap);
    va_end(ap);
    const char *msg = s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc);
    if (st_sqlite_is_corrupt(rc))
        return al_error_set(err, st_sqlite_to_errno(rc),
                            "%s: database %s is corrupted or not an agentlab database (%s): "
                            "move it aside and restart to start empty, or restore a backup",
                            ctx, s->path, msg);
    if ((rc & 0xff) == SQLITE_READONLY)
        return al_error_set(err, EROFS,
                            "%s: database %s is read-only (%s): the state directory and the "
                            "database must be writable by agentlabd",
                            ctx, s->path, msg);
    return al_error_set(err, st_sqlite_to_errno(rc), "%s: %s (database %s)", ctx, msg, s->path);
}

sqlite3_stmt *st_stmt_get(struct store *s, enum stmt_id id, struct al_error **err)
{
    if (!s->stmts[id]) {
        int rc = sqlite3_prepare_v3(s->db, stmt_sql[id], -1, SQLITE_PREPARE_PERSISTENT,
                                    &s->stmts[id], NULL);
        if (rc != SQLITE_OK) {
            st_db_fail(s, rc, err, "preparing a statement");
            return NULL;
        }
    }
    return s->stmts[id];
}

/* Cached statements are reset, not finalized, when a scope ends. */
void st_stmt_resetp(sqlite3_stmt **st)
{
    if (*st) {
        sqlite3_reset(*st);
        sqlite3_clear_bindings(*st);
    }
}

/* Binds text after masking registered secrets; NULL binds SQL NULL. */
int st_bind_text(sqlite3_stmt *st, int idx, const char *text)
{
    if (!text)
        return sqlite3_bind_null(st, idx);
    size_t len = 0;
    char *masked = al_redact(text, strlen(text), &len);
    if (!masked)
        return SQLITE_NOMEM;
    if (len > INT32_MAX) {
        free(masked);
        return SQLITE_TOOBIG;
    }
    return sqlite3_bind_text(st, idx, masked, (int)len, free);
}

/* Binds text that cannot hold a secret (ids, state names, fixed strings). */
int st_bind_plain(sqlite3_stmt *st, int idx, const char *text)
{
    if (!text)
        return sqlite3_bind_null(st, idx);
    return sqlite3_bind_text(st, idx, text, -1, SQLITE_STATIC);
}

int st_bind(sqlite3_stmt *st, const struct st_arg *args, size_t n)
{
    int rc = SQLITE_OK;
    for (size_t k = 0; k < n && rc == SQLITE_OK; k++) {
        int idx = (int)k + 1;
        switch (args[k].kind) {
        case ST_ARG_NULL:
            rc = sqlite3_bind_null(st, idx);
            break;
        case ST_ARG_TEXT:
            rc = st_bind_text(st, idx, args[k].s);
            break;
        case ST_ARG_PLAIN:
            rc = st_bind_plain(st, idx, args[k].s);
            break;
        case ST_ARG_INT:
            rc = sqlite3_bind_int64(st, idx, args[k].i);
            break;
        }
    }
    return rc;
}

int st_col_text(sqlite3_stmt *st, int i, char **ret)
{
    if (sqlite3_column_type(st, i) == SQLITE_NULL) {
        *ret = NULL;
        return 0;
    }
    const unsigned char *t = sqlite3_column_text(st, i);
    if (!t)
        return -ENOMEM;
    char *copy = strdup((const char *)t);
    if (!copy)
        return -ENOMEM;
    *ret = copy;
    return 0;
}

void st_col_id(sqlite3_stmt *st, int i, char out[STORE_JOB_ID_SIZE])
{
    const unsigned char *t = sqlite3_column_text(st, i);
    snprintf(out, STORE_JOB_ID_SIZE, "%s", t ? (const char *)t : "");
}

enum job_state st_col_state(sqlite3_stmt *st, int i)
{
    enum job_state state = JOB_STATE_NONE;
    const unsigned char *t = sqlite3_column_text(st, i);
    if (t && job_state_from_string((const char *)t, &state) < 0)
        state = JOB_STATE_NONE;
    return state;
}

int st_exec_sql(struct store *s, const char *sql, struct al_error **err)
{
    char *msg = NULL;
    int rc = sqlite3_exec(s->db, sql, NULL, NULL, &msg);
    sqlite3_free(msg);
    if (rc != SQLITE_OK)
        return st_db_fail(s, rc, err, "running \"%.40s\"", sql);
    return 0;
}

void st_tx_endp(struct tx *tx)
{
    if (tx->open) {
        sqlite3_stmt *st = tx->s->stmts[ST_ROLLBACK];
        if (st) {
            sqlite3_step(st);
            sqlite3_reset(st);
        } else {
            sqlite3_exec(tx->s->db, "ROLLBACK", NULL, NULL, NULL);
        }
        tx->open = false;
    }
}

int st_step_done(struct store *s, enum stmt_id id, struct al_error **err)
{
    sqlite3_stmt *st = st_stmt_get(s, id, err);
    if (!st)
        return -EIO;
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return st_db_fail(s, rc, err, "%s", stmt_sql[id]);
    return 0;
}

int st_tx_begin(struct store *s, struct tx *tx, struct al_error **err)
{
    if (!sqlite3_get_autocommit(s->db)) {
        *tx = (struct tx){.s = s, .nested = true};
        return 0;
    }
    /* prepare ROLLBACK first so tx_endp never has to prepare */
    if (!st_stmt_get(s, ST_ROLLBACK, err))
        return -EIO;
    int r = st_step_done(s, ST_BEGIN, err);
    if (r < 0)
        return r;
    *tx = (struct tx){.s = s, .open = true};
    return 0;
}

int st_tx_commit(struct tx *tx, struct al_error **err)
{
    if (tx->nested)
        return 0;
    int r = st_step_done(tx->s, ST_COMMIT, err);
    if (r < 0)
        return r; /* tx_endp rolls back */
    tx->open = false;
    return 0;
}

/* Steps a bound write statement to completion. */
int st_run_write(struct store *s, sqlite3_stmt *st, const char *what, struct al_error **err)
{
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        return st_db_fail(s, rc, err, "%s", what);
    return 0;
}
