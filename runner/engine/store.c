#include "runner/engine/store.h"

#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>

#include "runner/base/buf.h"
#include "runner/base/log.h"
#include "runner/base/util.h"

/* PRAGMA application_id of an agentlab database: "alab". */
#define STORE_APPLICATION_ID 0x616c6162

/* Checkpoints belong to store_sync() on a worker thread. Should nobody call
 * it, SQLite checkpoints on the committing thread once the WAL holds this
 * many pages (32 MiB): a backstop, not the plan. */
#define STORE_WAL_BACKSTOP_PAGES 8192
#define STORE_WAL_SIZE_LIMIT     "16777216"

/* ---- schema ------------------------------------------------------------- */

#define TERMINAL_SQL "('SUCCEEDED','FAILED','TIMED_OUT','CANCELED','ERROR')"

/* Forward migrations: migrations[v] takes a database from user_version v to
 * v + 1, inside one transaction. Never edit a released step; add one. */
static const char *const migrations[STORE_SCHEMA_VERSION] = {
        /* 0 -> 1: jobs, events, attempts, owned VMs */
        "PRAGMA application_id = 1634492770;"
        "CREATE TABLE jobs ("
        "  id TEXT PRIMARY KEY NOT NULL," /* time-sortable, see store.h */
        "  name TEXT,"
        "  spec TEXT NOT NULL,"  /* job_spec_to_json(): no secret values */
        "  state TEXT NOT NULL," /* job_state_to_string() */
        "  source_type TEXT,"
        "  source_ref TEXT,"
        "  pool TEXT,"
        "  labels TEXT NOT NULL DEFAULT ''," /* space-separated names */
        "  created_ms INTEGER NOT NULL,"
        "  updated_ms INTEGER NOT NULL,"
        "  exit_code INTEGER,"
        "  reason TEXT,"
        "  attempts INTEGER NOT NULL DEFAULT 0,"
        "  max_attempts INTEGER NOT NULL DEFAULT 1"
        ") WITHOUT ROWID;"
        /* live jobs only: tiny, and a finished job leaves it for good */
        "CREATE INDEX jobs_live ON jobs(state, id) WHERE state NOT IN " TERMINAL_SQL ";"
        "CREATE INDEX jobs_source ON jobs(source_type, id);"
        "CREATE TABLE job_labels ("
        "  label TEXT NOT NULL,"
        "  job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,"
        "  PRIMARY KEY (label, job_id)"
        ") WITHOUT ROWID;"
        "CREATE INDEX job_labels_job ON job_labels(job_id);"
        /* seq: see insert_event() for why it is never reused */
        "CREATE TABLE events ("
        "  seq INTEGER PRIMARY KEY,"
        "  job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,"
        "  from_state TEXT,"
        "  to_state TEXT NOT NULL,"
        "  at_ms INTEGER NOT NULL,"
        "  detail TEXT"
        ");"
        "CREATE INDEX events_job ON events(job_id, seq);"
        "CREATE TABLE attempts ("
        "  job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,"
        "  n INTEGER NOT NULL,"
        "  backend TEXT,"
        "  vm_name TEXT,"
        "  started_ms INTEGER NOT NULL,"
        "  ended_ms INTEGER,"
        "  result TEXT,"
        "  PRIMARY KEY (job_id, n)"
        ") WITHOUT ROWID;"
        /* no cascade: a job that still owns a VM cannot be deleted */
        "CREATE TABLE vms ("
        "  backend TEXT NOT NULL,"
        "  vm_name TEXT NOT NULL,"
        "  job_id TEXT NOT NULL REFERENCES jobs(id),"
        "  attempt INTEGER NOT NULL,"
        "  created_ms INTEGER NOT NULL,"
        "  PRIMARY KEY (backend, vm_name)"
        ") WITHOUT ROWID;"
        "CREATE INDEX vms_job ON vms(job_id);"
        "CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value) WITHOUT ROWID;",

        /* 1 -> 2: retention accounting and the artifacts index */
        "ALTER TABLE jobs ADD COLUMN log_bytes INTEGER NOT NULL DEFAULT 0;"
        "ALTER TABLE jobs ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;"
        /* partial: written once per job (when it ends), not on every transition */
        "CREATE INDEX jobs_finished ON jobs(updated_ms) WHERE state IN " TERMINAL_SQL ";"
        "CREATE TABLE artifacts ("
        "  job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,"
        "  path TEXT NOT NULL,"
        "  size INTEGER NOT NULL,"
        "  sha256 TEXT NOT NULL,"
        "  PRIMARY KEY (job_id, path)"
        ") WITHOUT ROWID;",

        /* 2 -> 3: the hard limits a job ran into (bits of enum al_limit) */
        "ALTER TABLE jobs ADD COLUMN limits INTEGER NOT NULL DEFAULT 0;",
};

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

/* ---- sqlite helpers ----------------------------------------------------- */

/* Adds context to *err (when the caller asked for it) and returns r: the
 * code must survive even when err is NULL. */
#define WRAP(r, err, ...) (al_error_wrap((err), __VA_ARGS__), (r))

static int sqlite_to_errno(int rc)
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

static bool sqlite_is_corrupt(int rc)
{
    return (rc & 0xff) == SQLITE_CORRUPT || (rc & 0xff) == SQLITE_NOTADB;
}

static int db_fail(struct store *s, int rc, struct al_error **err, const char *fmt, ...)
        _printf_(4, 5);

/* Records a database error with context and the path; returns -errno. */
static int db_fail(struct store *s, int rc, struct al_error **err, const char *fmt, ...)
{
    char ctx[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx, sizeof(ctx), fmt, ap);
    va_end(ap);
    const char *msg = s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc);
    if (sqlite_is_corrupt(rc))
        return al_error_set(err, sqlite_to_errno(rc),
                            "%s: database %s is corrupted or not an agentlab database (%s): "
                            "move it aside and restart to start empty, or restore a backup",
                            ctx, s->path, msg);
    if ((rc & 0xff) == SQLITE_READONLY)
        return al_error_set(err, EROFS,
                            "%s: database %s is read-only (%s): the state directory and the "
                            "database must be writable by agentlabd",
                            ctx, s->path, msg);
    return al_error_set(err, sqlite_to_errno(rc), "%s: %s (database %s)", ctx, msg, s->path);
}

static sqlite3_stmt *stmt_get(struct store *s, enum stmt_id id, struct al_error **err)
{
    if (!s->stmts[id]) {
        int rc = sqlite3_prepare_v3(s->db, stmt_sql[id], -1, SQLITE_PREPARE_PERSISTENT,
                                    &s->stmts[id], NULL);
        if (rc != SQLITE_OK) {
            db_fail(s, rc, err, "preparing a statement");
            return NULL;
        }
    }
    return s->stmts[id];
}

/* Cached statements are reset, not finalized, when a scope ends. */
static void stmt_resetp(sqlite3_stmt **st)
{
    if (*st) {
        sqlite3_reset(*st);
        sqlite3_clear_bindings(*st);
    }
}
#define _cleanup_stmt_ _cleanup_(stmt_resetp)

/* Binds text after masking registered secrets; NULL binds SQL NULL. */
static int bind_text(sqlite3_stmt *st, int idx, const char *text)
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
static int bind_plain(sqlite3_stmt *st, int idx, const char *text)
{
    if (!text)
        return sqlite3_bind_null(st, idx);
    return sqlite3_bind_text(st, idx, text, -1, SQLITE_STATIC);
}

static int col_text(sqlite3_stmt *st, int i, char **ret)
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

static void col_id(sqlite3_stmt *st, int i, char out[STORE_JOB_ID_SIZE])
{
    const unsigned char *t = sqlite3_column_text(st, i);
    snprintf(out, STORE_JOB_ID_SIZE, "%s", t ? (const char *)t : "");
}

static enum job_state col_state(sqlite3_stmt *st, int i)
{
    enum job_state state = JOB_STATE_NONE;
    const unsigned char *t = sqlite3_column_text(st, i);
    if (t && job_state_from_string((const char *)t, &state) < 0)
        state = JOB_STATE_NONE;
    return state;
}

static int exec_sql(struct store *s, const char *sql, struct al_error **err)
{
    char *msg = NULL;
    int rc = sqlite3_exec(s->db, sql, NULL, NULL, &msg);
    sqlite3_free(msg);
    if (rc != SQLITE_OK)
        return db_fail(s, rc, err, "running \"%.40s\"", sql);
    return 0;
}

/* A write transaction that rolls back unless committed. */
struct tx {
    struct store *s;
    bool open;
};

static void tx_endp(struct tx *tx)
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
#define _cleanup_tx_ _cleanup_(tx_endp)

static int step_done(struct store *s, enum stmt_id id, struct al_error **err)
{
    sqlite3_stmt *st = stmt_get(s, id, err);
    if (!st)
        return -EIO;
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return db_fail(s, rc, err, "%s", stmt_sql[id]);
    return 0;
}

static int tx_begin(struct store *s, struct tx *tx, struct al_error **err)
{
    /* prepare ROLLBACK first so tx_endp never has to prepare */
    if (!stmt_get(s, ST_ROLLBACK, err))
        return -EIO;
    int r = step_done(s, ST_BEGIN, err);
    if (r < 0)
        return r;
    *tx = (struct tx){.s = s, .open = true};
    return 0;
}

static int tx_commit(struct tx *tx, struct al_error **err)
{
    int r = step_done(tx->s, ST_COMMIT, err);
    if (r < 0)
        return r; /* tx_endp rolls back */
    tx->open = false;
    return 0;
}

/* Steps a bound write statement to completion. */
static int run_write(struct store *s, sqlite3_stmt *st, const char *what, struct al_error **err)
{
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        return db_fail(s, rc, err, "%s", what);
    return 0;
}

/* ---- open, migrate, close ----------------------------------------------- */

static int pragma_int(struct store *s, const char *sql, int *ret, struct al_error **err)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            *ret = sqlite3_column_int(st, 0);
            rc = SQLITE_OK;
        }
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_OK)
        return db_fail(s, rc, err, "%s", sql);
    return 0;
}

static int pragma_text(struct store *s, const char *sql, char *buf, size_t size,
                       struct al_error **err)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            const unsigned char *t = sqlite3_column_text(st, 0);
            snprintf(buf, size, "%s", t ? (const char *)t : "");
            rc = SQLITE_OK;
        }
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_OK)
        return db_fail(s, rc, err, "%s", sql);
    return 0;
}

static int migrate(struct store *s, struct al_error **err)
{
    int version = 0, app_id = 0, tables = 0;
    int r = pragma_int(s, "PRAGMA user_version", &version, err);
    if (r < 0)
        return r;
    r = pragma_int(s, "PRAGMA application_id", &app_id, err);
    if (r < 0)
        return r;
    if (app_id != 0 && app_id != STORE_APPLICATION_ID)
        return al_error_set(err, EBADMSG,
                            "database %s belongs to another application (application_id %#x)",
                            s->path, (unsigned)app_id);
    if (version == 0) {
        r = pragma_int(s, "SELECT count(*) FROM sqlite_master", &tables, err);
        if (r < 0)
            return r;
        if (tables > 0)
            return al_error_set(err, EBADMSG,
                                "database %s has tables but no agentlab schema version: it is "
                                "not an agentlab database",
                                s->path);
    }
    if (version > STORE_SCHEMA_VERSION)
        return al_error_set(err, EPROTO,
                            "database %s has schema version %d, newer than this agentlab "
                            "understands (%d): run a newer agentlab or restore a backup",
                            s->path, version, STORE_SCHEMA_VERSION);
    for (int v = version; v < STORE_SCHEMA_VERSION; v++) {
        _cleanup_tx_ struct tx tx = {0};
        r = tx_begin(s, &tx, err);
        if (r < 0)
            return r;
        char bump[64];
        snprintf(bump, sizeof(bump), "PRAGMA user_version = %d", v + 1);
        r = exec_sql(s, migrations[v], err);
        if (r >= 0)
            r = exec_sql(s, bump, err);
        if (r >= 0)
            r = tx_commit(&tx, err);
        if (r < 0)
            return WRAP(r, err, "migrating the schema from version %d to %d", v, v + 1);
    }
    s->version = STORE_SCHEMA_VERSION;
    return 0;
}

/* Creates the file with mode 0600 when missing and proves we can write it,
 * so a read-only file or filesystem is reported before SQLite silently
 * falls back to read-only access. */
static int prepare_file(const char *path, struct al_error **err)
{
    _cleanup_free_ char *dir = strdup(path);
    if (!dir)
        return al_error_set(err, ENOMEM, "opening database %s", path);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = '\0';
        int r = al_mkdir_p(dir, 0711, err);
        if (r < 0)
            return WRAP(r, err, "creating the directory of database %s", path);
    }
    _cleanup_close_ int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0600);
    if (fd < 0) {
        int e = errno;
        if (e == EACCES || e == EROFS || e == EPERM)
            return al_error_set_errno(err, e,
                                      "database %s is read-only or not writable: agentlabd "
                                      "needs a writable state directory (check ownership, mode "
                                      "and read-only mounts)",
                                      path);
        return al_error_set_errno(err, e, "opening database %s", path);
    }
    struct stat st;
    if (fstat(fd, &st) < 0)
        return al_error_set_errno(err, errno, "stat %s", path);
    if (!S_ISREG(st.st_mode))
        return al_error_set(err, EINVAL, "database %s is not a regular file", path);
    if ((st.st_mode & 077) && fchmod(fd, 0600) < 0)
        return al_error_set_errno(err, errno, "chmod 0600 %s", path);
    return 0;
}

int store_open(const char *path, const struct store_options *opts, struct store **ret_store,
               struct al_error **err)
{
    static const struct store_options defaults = {0};
    if (!opts)
        opts = &defaults;
    int r = prepare_file(path, err);
    if (r < 0)
        return r;

    _cleanup_(store_closep) struct store *s = calloc(1, sizeof(*s));
    if (!s)
        return al_error_set(err, ENOMEM, "opening database %s", path);
    s->sync_lock = (pthread_mutex_t)PTHREAD_MUTEX_INITIALIZER;
    s->path = strdup(path);
    if (!s->path || asprintf(&s->wal_path, "%s-wal", path) < 0) {
        s->wal_path = NULL;
        return al_error_set(err, ENOMEM, "opening database %s", path);
    }
    int rc = sqlite3_open_v2(path, &s->db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE,
                             NULL);
    if (rc != SQLITE_OK)
        return db_fail(s, rc, err, "opening");
    sqlite3_extended_result_codes(s->db, 1);
    if (sqlite3_db_readonly(s->db, "main") == 1)
        return al_error_set(err, EROFS,
                            "database %s could only be opened read-only: agentlabd needs to "
                            "write it",
                            path);
    /* the daemon is the only writer; readers never block it in WAL mode */
    sqlite3_busy_timeout(s->db, 1000);

    char mode[16];
    r = pragma_text(s, "PRAGMA journal_mode = WAL", mode, sizeof(mode), err);
    if (r < 0)
        return r;
    if (!streq(mode, "wal"))
        return al_error_set(err, ENOTSUP,
                            "database %s: the filesystem does not support WAL mode (got %s)", path,
                            mode);
    r = exec_sql(s, opts->sync_full ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL",
                 err);
    if (r < 0)
        return r;
    /* temp_store = MEMORY: with temp files, every write statement opens its
     * statement journal through the temp-file path, a few hundred KiB that
     * are allocated and freed per statement; glibc then trims and regrows
     * the heap on every commit (measured: one brk per commit, several times
     * slower commits). Our temp data is tiny: bounded, indexed queries. */
    r = exec_sql(s,
                 "PRAGMA foreign_keys = ON; PRAGMA temp_store = MEMORY; "
                 "PRAGMA journal_size_limit = " STORE_WAL_SIZE_LIMIT,
                 err);
    if (r < 0)
        return r;
    sqlite3_wal_autocheckpoint(s->db, STORE_WAL_BACKSTOP_PAGES);

    /* A damaged page should stop the daemon here, not surface as a failed
     * transition later: quick_check reads every page (milliseconds for tens
     * of thousands of jobs) without the index cross-checks. */
    char check[256];
    r = pragma_text(s, "PRAGMA quick_check(1)", check, sizeof(check), err);
    if (r < 0)
        return r;
    if (!streq(check, "ok"))
        return al_error_set(err, EBADMSG,
                            "database %s is corrupted (%s): move it aside and restart to start "
                            "empty, or restore a backup",
                            path, check);

    r = migrate(s, err);
    if (r < 0)
        return r;

    rc = sqlite3_open_v2(path, &s->sync_db,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(s->sync_db,
                          opts->sync_full ? "PRAGMA synchronous = FULL"
                                          : "PRAGMA synchronous = NORMAL",
                          NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return al_error_set(err, sqlite_to_errno(rc), "opening database %s for checkpoints: %s",
                            path, s->sync_db ? sqlite3_errmsg(s->sync_db) : sqlite3_errstr(rc));
    *ret_store = TAKE_PTR(s);
    return 0;
}

struct store *store_close(struct store *s)
{
    if (!s)
        return NULL;
    for (size_t i = 0; i < ST_COUNT; i++)
        sqlite3_finalize(s->stmts[i]);
    for (size_t i = 0; i < LIST_VARIANTS; i++)
        sqlite3_finalize(s->list_stmts[i]);
    /* the sync connection first: the last one to close checkpoints and
     * removes the WAL */
    if (s->sync_db)
        sqlite3_close(s->sync_db);
    if (s->db)
        sqlite3_close(s->db);
    free(s->path);
    free(s->wal_path);
    pthread_mutex_destroy(&s->sync_lock);
    free(s);
    return NULL;
}

int store_schema_version(struct store *s)
{
    return s->version;
}

int store_sync(struct store *s, struct al_error **err)
{
    pthread_mutex_lock(&s->sync_lock);
    /* PASSIVE never waits for the owning thread: it copies what it can into
     * the database file, fsyncing the WAL before and the database after. */
    int log = 0, done = 0;
    int rc = sqlite3_wal_checkpoint_v2(s->sync_db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, &done);
    int r = 0;
    if (rc != SQLITE_OK && (rc & 0xff) != SQLITE_BUSY)
        r = al_error_set(err, sqlite_to_errno(rc), "checkpointing database %s: %s", s->path,
                         sqlite3_errmsg(s->sync_db));
    pthread_mutex_unlock(&s->sync_lock);
    if (r < 0)
        return r;

    /* Frames the checkpoint could not copy (a reader still needed them, or
     * the owning thread committed meanwhile) are made durable here. The
     * database file is deliberately not opened: closing any fd of it would
     * drop SQLite's POSIX locks on it. The WAL carries no such locks. */
    _cleanup_close_ int fd = open(s->wal_path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        if (errno == ENOENT)
            return 0; /* no WAL: everything is in the synced database file */
        return al_error_set_errno(err, errno, "opening %s", s->wal_path);
    }
    if (fdatasync(fd) < 0)
        return al_error_set_errno(err, errno, "fdatasync %s", s->wal_path);
    return 0;
}

int store_integrity_check(struct store *s, struct al_error **err)
{
    _cleanup_buf_ struct al_buf problems = AL_BUF_INIT;
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(s->db, "PRAGMA integrity_check(5)", -1, &st, NULL);
    while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *t = (const char *)sqlite3_column_text(st, 0);
        if (t && !streq(t, "ok"))
            al_buf_printf(&problems, "%s%s", problems.len ? "; " : "", t);
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE && !sqlite_is_corrupt(rc))
        return db_fail(s, rc, err, "integrity check");
    if (sqlite_is_corrupt(rc))
        al_buf_printf(&problems, "%s%s", problems.len ? "; " : "", sqlite3_errstr(rc));

    st = NULL;
    rc = sqlite3_prepare_v2(s->db, "PRAGMA foreign_key_check", -1, &st, NULL);
    int fk = 0;
    while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (fk++ < 5)
            al_buf_printf(&problems, "%sforeign key violation in %s", problems.len ? "; " : "",
                          (const char *)sqlite3_column_text(st, 0));
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE && rc != SQLITE_OK && !sqlite_is_corrupt(rc))
        return db_fail(s, rc, err, "foreign key check");
    if (problems.len)
        return al_error_set(err, EIO, "database %s failed its integrity check: %s", s->path,
                            problems.data);
    return 0;
}

/* ---- ids ---------------------------------------------------------------- */

static int make_job_id(struct store *s, char out[STORE_JOB_ID_SIZE])
{
    int64_t ms = al_now_wall_ms();
    uint32_t seq;
    if (ms <= s->last_id_ms && s->last_id_seq < UINT32_MAX) {
        /* same millisecond (or the clock stepped back): count up */
        ms = s->last_id_ms;
        seq = s->last_id_seq + 1;
    } else {
        if (ms <= s->last_id_ms)
            ms = s->last_id_ms + 1;
        if (al_random_bytes(&seq, sizeof(seq)) < 0)
            return -EIO;
        seq &= 0x7fffffff; /* leaves room to count up within one ms */
    }
    s->last_id_ms = ms;
    s->last_id_seq = seq;
    snprintf(out, STORE_JOB_ID_SIZE, "j%012" PRIx64 "%08" PRIx32,
             (uint64_t)ms & UINT64_C(0xffffffffffff), seq);
    return 0;
}

/* ---- jobs and events ---------------------------------------------------- */

void store_event_clear(struct store_event *ev)
{
    if (ev) {
        free(ev->detail);
        ev->detail = NULL;
    }
}

/* Inserts an event inside the caller's transaction. Its seq is one more
 * than the highest seq ever used: the newest event, or the floor that
 * store_prune() records before deleting events. AUTOINCREMENT would give the
 * same guarantee but writes sqlite_sequence on every event. */
static int insert_event(struct store *s, const char *job_id, enum job_state from, enum job_state to,
                        int64_t at_ms, const char *detail, struct store_event *ret_event,
                        struct al_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = stmt_get(s, ST_EVENT_INSERT, err);
    if (!st)
        return -EIO;
    int rc = bind_plain(st, 1, job_id);
    if (rc == SQLITE_OK)
        rc = bind_plain(st, 2, from == JOB_STATE_NONE ? NULL : job_state_to_string(from));
    if (rc == SQLITE_OK)
        rc = bind_plain(st, 3, job_state_to_string(to));
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(st, 4, at_ms);
    if (rc == SQLITE_OK)
        rc = bind_text(st, 5, detail);
    if (rc != SQLITE_OK)
        return db_fail(s, rc, err, "recording an event of job %s", job_id);
    int r = run_write(s, st, "recording an event", err);
    if (r < 0)
        return r;
    if (ret_event) {
        struct store_event ev = {
                .seq = sqlite3_last_insert_rowid(s->db), .from = from, .to = to, .at_ms = at_ms};
        snprintf(ev.job_id, sizeof(ev.job_id), "%s", job_id);
        if (detail) {
            ev.detail = al_redact(detail, strlen(detail), NULL);
            if (!ev.detail)
                return al_error_set(err, ENOMEM, "recording an event");
        }
        *ret_event = ev;
    }
    return 0;
}

/* "a b c" from the spec's labels (names cannot contain spaces). */
static char *labels_join(const struct job_spec *spec)
{
    struct al_buf b = AL_BUF_INIT;
    if (al_buf_puts(&b, "") < 0)
        return NULL;
    for (size_t i = 0; i < spec->n_labels; i++) {
        if (al_buf_printf(&b, "%s%s", i ? " " : "", spec->labels[i]) < 0) {
            al_buf_free(&b);
            return NULL;
        }
    }
    return al_buf_steal(&b);
}

int store_job_insert(struct store *s, const struct job_spec *spec, char ret_id[STORE_JOB_ID_SIZE],
                     struct store_event *ret_event, struct al_error **err)
{
    for (size_t i = 0; i < spec->n_labels; i++) {
        if (!config_name_is_valid(spec->labels[i]))
            return al_error_set(err, EINVAL, "storing job: invalid label");
    }
    _cleanup_free_ char *json = NULL;
    int r = job_spec_to_json(spec, &json, NULL, err);
    if (r < 0)
        return WRAP(r, err, "storing job");
    _cleanup_free_ char *labels = labels_join(spec);
    if (!labels)
        return al_error_set(err, ENOMEM, "storing job");

    _cleanup_tx_ struct tx tx = {0};
    r = tx_begin(s, &tx, err);
    if (r < 0)
        return WRAP(r, err, "storing job");
    int64_t now = al_now_wall_ms();
    char id[STORE_JOB_ID_SIZE];
    const char *source = spec->source.type != JOB_SOURCE_NONE
                                 ? job_source_type_to_string(spec->source.type)
                                 : NULL;
    for (int tries = 0;; tries++) {
        if (make_job_id(s, id) < 0)
            return al_error_set(err, EIO, "storing job: no random bytes for the id");
        _cleanup_stmt_ sqlite3_stmt *st = stmt_get(s, ST_JOB_INSERT, err);
        if (!st)
            return -EIO;
        int rc = bind_plain(st, 1, id);
        if (rc == SQLITE_OK)
            rc = bind_text(st, 2, spec->name);
        if (rc == SQLITE_OK)
            rc = bind_text(st, 3, json);
        if (rc == SQLITE_OK)
            rc = bind_plain(st, 4, source);
        if (rc == SQLITE_OK)
            rc = bind_text(st, 5, spec->source.id);
        if (rc == SQLITE_OK)
            rc = bind_plain(st, 6, spec->pool);
        if (rc == SQLITE_OK)
            rc = bind_plain(st, 7, labels);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_int64(st, 8, now);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_int(st, 9, spec->max_attempts > 0 ? spec->max_attempts : 1);
        if (rc != SQLITE_OK)
            return db_fail(s, rc, err, "storing job");
        rc = sqlite3_step(st);
        if (rc == SQLITE_DONE)
            break;
        /* an id collision is all but impossible; take a fresh one */
        if (rc != SQLITE_CONSTRAINT_PRIMARYKEY || tries >= 3)
            return db_fail(s, rc, err, "storing job");
    }
    for (size_t i = 0; i < spec->n_labels; i++) {
        _cleanup_stmt_ sqlite3_stmt *st = stmt_get(s, ST_LABEL_INSERT, err);
        if (!st)
            return -EIO;
        int rc = bind_plain(st, 1, spec->labels[i]);
        if (rc == SQLITE_OK)
            rc = bind_plain(st, 2, id);
        if (rc != SQLITE_OK)
            return db_fail(s, rc, err, "storing job labels");
        r = run_write(s, st, "storing job labels", err);
        if (r < 0)
            return r;
    }
    char detail[64];
    snprintf(detail, sizeof(detail), "submitted%s%s", source ? " via " : "", source ? source : "");
    struct store_event ev = {0};
    r = insert_event(s, id, JOB_STATE_NONE, JOB_STATE_QUEUED, now, detail, ret_event ? &ev : NULL,
                     err);
    if (r < 0)
        return r;
    r = tx_commit(&tx, err);
    if (r < 0) {
        store_event_clear(&ev);
        return WRAP(r, err, "storing job");
    }
    memcpy(ret_id, id, STORE_JOB_ID_SIZE);
    if (ret_event)
        *ret_event = ev;
    return 0;
}

struct job_row_state {
    enum job_state state;
    int attempts;
    int max_attempts;
};

static int read_job_state(struct store *s, const char *id, struct job_row_state *ret,
                          struct al_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = stmt_get(s, ST_JOB_STATE, err);
    if (!st)
        return -EIO;
    int rc = bind_plain(st, 1, id);
    if (rc != SQLITE_OK)
        return db_fail(s, rc, err, "reading job %s", id);
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return al_error_set(err, ENOENT, "job %s not found", id);
    if (rc != SQLITE_ROW)
        return db_fail(s, rc, err, "reading job %s", id);
    enum job_state state = col_state(st, 0);
    if (state == JOB_STATE_NONE)
        return al_error_set(err, EBADMSG, "job %s has an unknown state in the database", id);
    *ret = (struct job_row_state){.state = state,
                                  .attempts = sqlite3_column_int(st, 1),
                                  .max_attempts = sqlite3_column_int(st, 2)};
    return 0;
}

/* UPDATE jobs for a transition (not a retry). Caller holds the transaction. */
static int update_job_state(struct store *s, const char *id, const struct store_transition *t,
                            int64_t now, struct al_error **err)
{
    enum stmt_id which = ST_JOB_SET_STATE;
    if (t->to == JOB_STATE_PROVISIONING)
        which = ST_JOB_START_ATTEMPT;
    else if (job_state_is_terminal(t->to))
        which = ST_JOB_SET_TERMINAL;
    _cleanup_stmt_ sqlite3_stmt *st = stmt_get(s, which, err);
    if (!st)
        return -EIO;
    int rc = bind_plain(st, 1, id);
    if (rc == SQLITE_OK)
        rc = bind_plain(st, 2, job_state_to_string(t->to));
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(st, 3, now);
    if (rc == SQLITE_OK && which == ST_JOB_SET_TERMINAL) {
        rc = t->has_exit_code ? sqlite3_bind_int(st, 4, t->exit_code) : sqlite3_bind_null(st, 4);
        if (rc == SQLITE_OK)
            rc = bind_text(st, 5, t->detail);
    }
    if (rc != SQLITE_OK)
        return db_fail(s, rc, err, "updating job %s", id);
    return run_write(s, st, "updating job state", err);
}

static int attempt_write(struct store *s, enum stmt_id which, const char *id, int n, int64_t now,
                         const char *result, struct al_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = stmt_get(s, which, err);
    if (!st)
        return -EIO;
    int rc = bind_plain(st, 1, id);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int(st, 2, n);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(st, 3, now);
    if (rc == SQLITE_OK && result)
        rc = bind_plain(st, 4, result);
    if (rc != SQLITE_OK)
        return db_fail(s, rc, err, "recording attempt %d of job %s", n, id);
    return run_write(s, st, "recording an attempt", err);
}

int store_job_transition(struct store *s, const char *id, const struct store_transition *t,
                         struct store_event *ret_event, struct al_error **err)
{
    _cleanup_tx_ struct tx tx = {0};
    int r = tx_begin(s, &tx, err);
    if (r < 0)
        return r;
    struct job_row_state cur;
    r = read_job_state(s, id, &cur, err);
    if (r < 0)
        return r;
    r = job_transition_check(cur.state, t->to, err);
    if (r < 0)
        return WRAP(r, err, "job %s", id);

    int64_t now = al_now_wall_ms();
    r = update_job_state(s, id, t, now, err);
    if (r < 0)
        return r;
    if (t->to == JOB_STATE_PROVISIONING)
        r = attempt_write(s, ST_ATTEMPT_INSERT, id, cur.attempts + 1, now, NULL, err);
    else if (job_state_is_terminal(t->to) && job_state_is_active(cur.state))
        r = attempt_write(s, ST_ATTEMPT_END, id, cur.attempts, now, job_state_to_string(t->to),
                          err);
    if (r < 0)
        return r;
    struct store_event ev = {0};
    r = insert_event(s, id, cur.state, t->to, now, t->detail, ret_event ? &ev : NULL, err);
    if (r < 0)
        return r;
    r = tx_commit(&tx, err);
    if (r < 0) {
        store_event_clear(&ev);
        return r;
    }
    if (ret_event)
        *ret_event = ev;
    return 0;
}

int store_job_retry(struct store *s, const char *id, const char *detail, bool free_attempt,
                    struct store_event *ret_event, struct al_error **err)
{
    _cleanup_tx_ struct tx tx = {0};
    int r = tx_begin(s, &tx, err);
    if (r < 0)
        return r;
    struct job_row_state cur;
    r = read_job_state(s, id, &cur, err);
    if (r < 0)
        return r;
    if (free_attempt) {
        _cleanup_stmt_ sqlite3_stmt *st = stmt_get(s, ST_JOB_GRANT_ATTEMPT, err);
        if (!st)
            return -EIO;
        int rc = bind_plain(st, 1, id);
        if (rc != SQLITE_OK)
            return db_fail(s, rc, err, "granting job %s an attempt", id);
        r = run_write(s, st, "granting an attempt", err);
        if (r < 0)
            return r;
        cur.max_attempts++;
    }
    r = job_retry_check(cur.state, cur.attempts, cur.max_attempts, err);
    if (r < 0)
        return WRAP(r, err, "job %s", id);
    int64_t now = al_now_wall_ms();
    {
        _cleanup_stmt_ sqlite3_stmt *st = stmt_get(s, ST_JOB_REQUEUE, err);
        if (!st)
            return -EIO;
        int rc = bind_plain(st, 1, id);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_int64(st, 2, now);
        if (rc != SQLITE_OK)
            return db_fail(s, rc, err, "requeueing job %s", id);
        r = run_write(s, st, "requeueing job", err);
        if (r < 0)
            return r;
    }
    struct store_event ev = {0};
    r = insert_event(s, id, cur.state, JOB_STATE_QUEUED, now, detail, ret_event ? &ev : NULL, err);
    if (r < 0)
        return r;
    r = tx_commit(&tx, err);
    if (r < 0) {
        store_event_clear(&ev);
        return r;
    }
    if (ret_event)
        *ret_event = ev;
    return 0;
}

struct store_job *store_job_free(struct store_job *job)
{
    if (!job)
        return NULL;
    free(job->name);
    free(job->spec_json);
    free(job->source_ref);
    free(job->pool);
    strv_free(job->labels);
    free(job->reason);
    free(job);
    return NULL;
}

static char **labels_split(const char *text)
{
    size_t n = 0;
    for (const char *p = text; *p; p++)
        n += *p == ' ';
    char **v = calloc(n + 2, sizeof(char *));
    if (!v)
        return NULL;
    size_t i = 0;
    for (const char *p = text; *p;) {
        size_t len = strcspn(p, " ");
        if (len) {
            v[i] = strndup(p, len);
            if (!v[i++]) {
                strv_free(v);
                return NULL;
            }
        }
        p += len;
        p += *p == ' ';
    }
    return v;
}

/* Reads a row selected with JOB_COLUMNS. */
static int read_job_row(sqlite3_stmt *st, struct store_job **ret)
{
    _cleanup_(store_job_freep) struct store_job *job = calloc(1, sizeof(*job));
    if (!job)
        return -ENOMEM;
    col_id(st, 0, job->id);
    _cleanup_free_ char *source = NULL;
    _cleanup_free_ char *labels = NULL;
    if (col_text(st, 1, &job->name) < 0 || col_text(st, 2, &job->spec_json) < 0 ||
        col_text(st, 4, &source) < 0 || col_text(st, 5, &job->source_ref) < 0 ||
        col_text(st, 6, &job->pool) < 0 || col_text(st, 7, &labels) < 0 ||
        col_text(st, 11, &job->reason) < 0)
        return -ENOMEM;
    job->state = col_state(st, 3);
    if (!source || job_source_type_from_string(source, &job->source_type) < 0)
        job->source_type = JOB_SOURCE_NONE;
    job->labels = labels_split(labels ? labels : "");
    if (!job->labels)
        return -ENOMEM;
    job->created_ms = sqlite3_column_int64(st, 8);
    job->updated_ms = sqlite3_column_int64(st, 9);
    job->has_exit_code = sqlite3_column_type(st, 10) != SQLITE_NULL;
    job->exit_code = sqlite3_column_int(st, 10);
    job->attempts = sqlite3_column_int(st, 12);
    job->max_attempts = sqlite3_column_int(st, 13);
    job->log_bytes = (uint64_t)sqlite3_column_int64(st, 14);
    job->bytes = (uint64_t)sqlite3_column_int64(st, 15);
    job->limits = (unsigned)sqlite3_column_int64(st, 16);
    *ret = TAKE_PTR(job);
    return 0;
}

int store_job_get(struct store *s, const char *id, struct store_job **ret_job,
                  struct al_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = stmt_get(s, ST_JOB_GET, err);
    if (!st)
        return -EIO;
    int rc = bind_plain(st, 1, id);
    if (rc != SQLITE_OK)
        return db_fail(s, rc, err, "reading job %s", id);
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return al_error_set(err, ENOENT, "job %s not found", id);
    if (rc != SQLITE_ROW)
        return db_fail(s, rc, err, "reading job %s", id);
    int r = read_job_row(st, ret_job);
    if (r < 0)
        return al_error_set(err, -r, "reading job %s: out of memory", id);
    return 0;
}

static sqlite3_stmt *list_stmt(struct store *s, unsigned variant, struct al_error **err)
{
    if (s->list_stmts[variant])
        return s->list_stmts[variant];
    _cleanup_buf_ struct al_buf sql = AL_BUF_INIT;
    al_buf_puts(&sql, "SELECT " JOB_COLUMNS " FROM jobs WHERE 1");
    if (variant & LIST_STATE)
        al_buf_puts(&sql, " AND state = :state");
    if (variant & LIST_LIVE)
        al_buf_puts(&sql, " AND state NOT IN " TERMINAL_SQL);
    if (variant & LIST_SOURCE)
        al_buf_puts(&sql, " AND source_type = :source");
    if (variant & LIST_LABEL)
        al_buf_puts(&sql, " AND id IN (SELECT job_id FROM job_labels WHERE label = :label)");
    if (variant & LIST_CURSOR)
        al_buf_puts(&sql, variant & LIST_ASC ? " AND id > :cursor" : " AND id < :cursor");
    if (al_buf_puts(&sql, variant & LIST_ASC ? " ORDER BY id ASC LIMIT :limit"
                                             : " ORDER BY id DESC LIMIT :limit") < 0) {
        al_error_set(err, ENOMEM, "listing jobs");
        return NULL;
    }
    int rc = sqlite3_prepare_v3(s->db, sql.data, -1, SQLITE_PREPARE_PERSISTENT,
                                &s->list_stmts[variant], NULL);
    if (rc != SQLITE_OK) {
        db_fail(s, rc, err, "preparing the job list");
        return NULL;
    }
    return s->list_stmts[variant];
}

static int bind_named(sqlite3_stmt *st, const char *name, const char *value)
{
    return bind_plain(st, sqlite3_bind_parameter_index(st, name), value);
}

void store_job_page_clear(struct store_job_page *page)
{
    if (!page)
        return;
    for (size_t i = 0; i < page->n; i++)
        store_job_free(page->jobs[i]);
    free(page->jobs);
    page->jobs = NULL;
    page->n = 0;
    page->next_cursor[0] = '\0';
}

int store_job_list(struct store *s, const struct store_job_filter *filter,
                   struct store_job_page *ret_page, struct al_error **err)
{
    static const struct store_job_filter none = {.state = JOB_STATE_NONE};
    const struct store_job_filter *f = filter ? filter : &none;
    unsigned limit = f->limit ? f->limit : STORE_LIST_DEFAULT;
    if (limit > STORE_LIST_MAX)
        limit = STORE_LIST_MAX;
    unsigned variant = 0;
    if (f->state != JOB_STATE_NONE)
        variant |= LIST_STATE | (job_state_is_terminal(f->state) ? 0 : LIST_LIVE);
    if (f->label)
        variant |= LIST_LABEL;
    if (f->source != JOB_SOURCE_NONE)
        variant |= LIST_SOURCE;
    if (f->cursor && *f->cursor)
        variant |= LIST_CURSOR;
    if (f->oldest_first)
        variant |= LIST_ASC;

    _cleanup_stmt_ sqlite3_stmt *st = list_stmt(s, variant, err);
    if (!st)
        return -EIO;
    int rc = SQLITE_OK;
    if (variant & LIST_STATE)
        rc = bind_named(st, ":state", job_state_to_string(f->state));
    if (rc == SQLITE_OK && (variant & LIST_SOURCE))
        rc = bind_named(st, ":source", job_source_type_to_string(f->source));
    if (rc == SQLITE_OK && (variant & LIST_LABEL))
        rc = bind_named(st, ":label", f->label);
    if (rc == SQLITE_OK && (variant & LIST_CURSOR))
        rc = bind_named(st, ":cursor", f->cursor);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int(st, sqlite3_bind_parameter_index(st, ":limit"), (int)limit + 1);
    if (rc != SQLITE_OK)
        return db_fail(s, rc, err, "listing jobs");

    struct store_job_page page = {0};
    page.jobs = calloc(limit + 1, sizeof(*page.jobs));
    if (!page.jobs)
        return al_error_set(err, ENOMEM, "listing jobs");
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (page.n == limit) {
            /* one row past the page: there is more, continue after the last one */
            snprintf(page.next_cursor, sizeof(page.next_cursor), "%s", page.jobs[page.n - 1]->id);
            rc = SQLITE_DONE;
            break;
        }
        if (read_job_row(st, &page.jobs[page.n]) < 0) {
            store_job_page_clear(&page);
            return al_error_set(err, ENOMEM, "listing jobs");
        }
        page.n++;
    }
    if (rc != SQLITE_DONE) {
        store_job_page_clear(&page);
        return db_fail(s, rc, err, "listing jobs");
    }
    *ret_page = page;
    return 0;
}

void store_events_free(struct store_event *events, size_t n)
{
    for (size_t i = 0; events && i < n; i++)
        store_event_clear(&events[i]);
    free(events);
}

int store_events_since(struct store *s, const char *job_id, int64_t after_seq, unsigned limit,
                       struct store_event **ret_events, size_t *ret_n, struct al_error **err)
{
    if (limit == 0)
        limit = 100;
    if (limit > STORE_LIST_MAX)
        limit = STORE_LIST_MAX;
    _cleanup_stmt_ sqlite3_stmt *st = stmt_get(s, job_id ? ST_EVENTS_JOB : ST_EVENTS_ALL, err);
    if (!st)
        return -EIO;
    int rc = sqlite3_bind_int64(st, 1, after_seq);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int(st, 2, (int)limit);
    if (rc == SQLITE_OK && job_id)
        rc = bind_plain(st, 3, job_id);
    if (rc != SQLITE_OK)
        return db_fail(s, rc, err, "reading events");
    struct store_event *events = calloc(limit, sizeof(*events));
    if (!events)
        return al_error_set(err, ENOMEM, "reading events");
    size_t n = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct store_event *ev = &events[n++];
        ev->seq = sqlite3_column_int64(st, 0);
        col_id(st, 1, ev->job_id);
        ev->from = col_state(st, 2);
        ev->to = col_state(st, 3);
        ev->at_ms = sqlite3_column_int64(st, 4);
        if (col_text(st, 5, &ev->detail) < 0) {
            store_events_free(events, n);
            return al_error_set(err, ENOMEM, "reading events");
        }
    }
    if (rc != SQLITE_DONE) {
        store_events_free(events, n);
        return db_fail(s, rc, err, "reading events");
    }
    *ret_events = events;
    *ret_n = n;
    return 0;
}

/* ---- attempts and VMs --------------------------------------------------- */

void store_attempts_free(struct store_attempt *a, size_t n)
{
    for (size_t i = 0; a && i < n; i++) {
        free(a[i].backend);
        free(a[i].vm_name);
        free(a[i].result);
    }
    free(a);
}

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
            _c_r = db_fail((s), _c_rc, (err), "%s", (what));                         \
        else if (_c_r < 0)                                                           \
            al_error_set((err), ENOMEM, "%s: out of memory", (what));                \
        if (_c_r < 0) {                                                              \
            free_fn((arr), (n));                                                     \
            (arr) = NULL;                                                            \
            (n) = 0;                                                                 \
        }                                                                            \
        _c_r;                                                                        \
    })

static int read_attempt_row(sqlite3_stmt *st, struct store_attempt *a)
{
    a->n = sqlite3_column_int(st, 0);
    a->started_ms = sqlite3_column_int64(st, 3);
    a->ended_ms = sqlite3_column_int64(st, 4);
    if (col_text(st, 1, &a->backend) < 0 || col_text(st, 2, &a->vm_name) < 0 ||
        col_text(st, 5, &a->result) < 0)
        return -ENOMEM;
    return 0;
}

int store_attempts_list(struct store *s, const char *job_id, struct store_attempt **ret_attempts,
                        size_t *ret_n, struct al_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = stmt_get(s, ST_ATTEMPTS_LIST, err);
    if (!st)
        return -EIO;
    int rc = bind_plain(st, 1, job_id);
    if (rc != SQLITE_OK)
        return db_fail(s, rc, err, "listing attempts");
    struct store_attempt *a = NULL;
    size_t n = 0;
    int r = COLLECT_ROWS(s, st, a, n, store_attempts_free, read_attempt_row, "listing attempts",
                         err);
    if (r < 0)
        return r;
    *ret_attempts = a;
    *ret_n = n;
    return 0;
}

int store_vm_add(struct store *s, const char *backend, const char *vm_name, const char *job_id,
                 struct al_error **err)
{
    _cleanup_tx_ struct tx tx = {0};
    int r = tx_begin(s, &tx, err);
    if (r < 0)
        return r;
    struct job_row_state cur;
    r = read_job_state(s, job_id, &cur, err);
    if (r < 0)
        return r;
    if (!job_state_is_active(cur.state))
        return al_error_set(err, EINVAL,
                            "job %s is %s: only a provisioning, booting or running "
                            "job can own a VM",
                            job_id, job_state_to_string(cur.state));
    int64_t now = al_now_wall_ms();
    {
        _cleanup_stmt_ sqlite3_stmt *st = stmt_get(s, ST_VM_INSERT, err);
        if (!st)
            return -EIO;
        int rc = bind_text(st, 1, backend);
        if (rc == SQLITE_OK)
            rc = bind_text(st, 2, vm_name);
        if (rc == SQLITE_OK)
            rc = bind_plain(st, 3, job_id);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_int(st, 4, cur.attempts);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_int64(st, 5, now);
        if (rc != SQLITE_OK)
            return db_fail(s, rc, err, "recording VM %s", vm_name);
        rc = sqlite3_step(st);
        if ((rc & 0xff) == SQLITE_CONSTRAINT)
            return al_error_set(err, EEXIST, "VM %s on backend %s is already recorded", vm_name,
                                backend);
        if (rc != SQLITE_DONE)
            return db_fail(s, rc, err, "recording VM %s", vm_name);
    }
    {
        _cleanup_stmt_ sqlite3_stmt *st = stmt_get(s, ST_ATTEMPT_SET_VM, err);
        if (!st)
            return -EIO;
        int rc = bind_plain(st, 1, job_id);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_int(st, 2, cur.attempts);
        if (rc == SQLITE_OK)
            rc = bind_text(st, 3, backend);
        if (rc == SQLITE_OK)
            rc = bind_text(st, 4, vm_name);
        if (rc != SQLITE_OK)
            return db_fail(s, rc, err, "recording VM %s", vm_name);
        r = run_write(s, st, "recording the attempt's VM", err);
        if (r < 0)
            return r;
    }
    return tx_commit(&tx, err);
}

int store_vm_remove(struct store *s, const char *backend, const char *vm_name,
                    struct al_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = stmt_get(s, ST_VM_DELETE, err);
    if (!st)
        return -EIO;
    int rc = bind_text(st, 1, backend);
    if (rc == SQLITE_OK)
        rc = bind_text(st, 2, vm_name);
    if (rc != SQLITE_OK)
        return db_fail(s, rc, err, "forgetting VM %s", vm_name);
    int r = run_write(s, st, "forgetting a VM", err);
    if (r < 0)
        return r;
    if (sqlite3_changes(s->db) == 0)
        return al_error_set(err, ENOENT, "VM %s on backend %s is not recorded", vm_name, backend);
    return 0;
}

void store_vms_free(struct store_vm *vms, size_t n)
{
    for (size_t i = 0; vms && i < n; i++) {
        free(vms[i].backend);
        free(vms[i].vm_name);
    }
    free(vms);
}

static int read_vm_row(sqlite3_stmt *st, struct store_vm *vm)
{
    col_id(st, 2, vm->job_id);
    vm->attempt = sqlite3_column_int(st, 3);
    vm->created_ms = sqlite3_column_int64(st, 4);
    if (col_text(st, 0, &vm->backend) < 0 || col_text(st, 1, &vm->vm_name) < 0)
        return -ENOMEM;
    return 0;
}

int store_vm_list(struct store *s, const char *backend, struct store_vm **ret_vms, size_t *ret_n,
                  struct al_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st =
            stmt_get(s, backend ? ST_VM_LIST_BACKEND : ST_VM_LIST_ALL, err);
    if (!st)
        return -EIO;
    if (backend) {
        int rc = bind_text(st, 1, backend);
        if (rc != SQLITE_OK)
            return db_fail(s, rc, err, "listing VMs");
    }
    struct store_vm *vms = NULL;
    size_t n = 0;
    int r = COLLECT_ROWS(s, st, vms, n, store_vms_free, read_vm_row, "listing VMs", err);
    if (r < 0)
        return r;
    *ret_vms = vms;
    *ret_n = n;
    return 0;
}

/* ---- artifacts, sizes, retention ---------------------------------------- */

static bool sha256_hex_is_valid(const char *h)
{
    if (!h || strlen(h) != 64)
        return false;
    for (const char *p = h; *p; p++) {
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return false;
    }
    return true;
}

static int add_job_bytes(struct store *s, enum stmt_id which, const char *job_id, uint64_t bytes,
                         struct al_error **err)
{
    if (bytes > INT64_MAX)
        return al_error_set(err, ERANGE, "size of job %s out of range", job_id);
    _cleanup_stmt_ sqlite3_stmt *st = stmt_get(s, which, err);
    if (!st)
        return -EIO;
    int rc = bind_plain(st, 1, job_id);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(st, 2, (int64_t)bytes);
    if (rc != SQLITE_OK)
        return db_fail(s, rc, err, "updating the size of job %s", job_id);
    int r = run_write(s, st, "updating a job's size", err);
    if (r < 0)
        return r;
    if (sqlite3_changes(s->db) == 0)
        return al_error_set(err, ENOENT, "job %s not found", job_id);
    return 0;
}

int store_artifact_add(struct store *s, const char *job_id, const char *path, uint64_t size,
                       const char *sha256_hex, struct al_error **err)
{
    if (!sha256_hex_is_valid(sha256_hex))
        return al_error_set(err, EINVAL, "artifact %s: sha256 must be 64 lower-case hex digits",
                            path);
    if (size > INT64_MAX)
        return al_error_set(err, ERANGE, "artifact %s: size out of range", path);
    _cleanup_tx_ struct tx tx = {0};
    int r = tx_begin(s, &tx, err);
    if (r < 0)
        return r;
    r = add_job_bytes(s, ST_JOB_ADD_BYTES, job_id, size, err);
    if (r < 0)
        return r;
    {
        _cleanup_stmt_ sqlite3_stmt *st = stmt_get(s, ST_ARTIFACT_INSERT, err);
        if (!st)
            return -EIO;
        int rc = bind_plain(st, 1, job_id);
        if (rc == SQLITE_OK)
            rc = bind_text(st, 2, path);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_int64(st, 3, (int64_t)size);
        if (rc == SQLITE_OK)
            rc = bind_plain(st, 4, sha256_hex);
        if (rc != SQLITE_OK)
            return db_fail(s, rc, err, "indexing artifact %s", path);
        rc = sqlite3_step(st);
        if ((rc & 0xff) == SQLITE_CONSTRAINT)
            return al_error_set(err, EEXIST, "artifact %s of job %s is already indexed", path,
                                job_id);
        if (rc != SQLITE_DONE)
            return db_fail(s, rc, err, "indexing artifact %s", path);
    }
    return tx_commit(&tx, err);
}

void store_artifacts_free(struct store_artifact *a, size_t n)
{
    for (size_t i = 0; a && i < n; i++)
        free(a[i].path);
    free(a);
}

static int read_artifact_row(sqlite3_stmt *st, struct store_artifact *a)
{
    a->size = (uint64_t)sqlite3_column_int64(st, 1);
    const unsigned char *h = sqlite3_column_text(st, 2);
    snprintf(a->sha256, sizeof(a->sha256), "%s", h ? (const char *)h : "");
    return col_text(st, 0, &a->path);
}

int store_artifact_list(struct store *s, const char *job_id, struct store_artifact **ret_artifacts,
                        size_t *ret_n, struct al_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = stmt_get(s, ST_ARTIFACT_LIST, err);
    if (!st)
        return -EIO;
    int rc = bind_plain(st, 1, job_id);
    if (rc != SQLITE_OK)
        return db_fail(s, rc, err, "listing artifacts");
    struct store_artifact *a = NULL;
    size_t n = 0;
    int r = COLLECT_ROWS(s, st, a, n, store_artifacts_free, read_artifact_row, "listing artifacts",
                         err);
    if (r < 0)
        return r;
    *ret_artifacts = a;
    *ret_n = n;
    return 0;
}

int store_job_set_log_bytes(struct store *s, const char *job_id, uint64_t bytes,
                            struct al_error **err)
{
    return add_job_bytes(s, ST_JOB_SET_LOG_BYTES, job_id, bytes, err);
}

int store_job_add_limits(struct store *s, const char *job_id, unsigned limits,
                         struct al_error **err)
{
    if (!limits)
        return 0;
    return add_job_bytes(s, ST_JOB_ADD_LIMITS, job_id, limits, err);
}

void store_prune_result_clear(struct store_prune_result *r)
{
    if (r) {
        free(r->jobs);
        *r = (struct store_prune_result){0};
    }
}

/* Reads (id, bytes) candidates, then deletes them: rows are never deleted
 * while a SELECT on the same table is still stepping. */
static int prune_candidates(struct store *s, enum stmt_id which, int64_t cutoff, unsigned max,
                            struct store_prune_result *res, uint64_t *total, uint64_t max_bytes,
                            struct al_error **err)
{
    size_t first = res->n;
    {
        _cleanup_stmt_ sqlite3_stmt *st = stmt_get(s, which, err);
        if (!st)
            return -EIO;
        int rc = which == ST_PRUNE_BY_AGE ? sqlite3_bind_int64(st, 1, cutoff) : SQLITE_OK;
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_int(st, which == ST_PRUNE_BY_AGE ? 2 : 1, (int)max);
        if (rc != SQLITE_OK)
            return db_fail(s, rc, err, "pruning");
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            if (total && *total <= max_bytes)
                break;
            struct store_pruned_job *j = &res->jobs[res->n++];
            col_id(st, 0, j->id);
            j->bytes = (uint64_t)sqlite3_column_int64(st, 1);
            if (total)
                *total -= j->bytes < *total ? j->bytes : *total;
        }
        if (rc != SQLITE_DONE && rc != SQLITE_ROW)
            return db_fail(s, rc, err, "pruning");
    }
    for (size_t i = first; i < res->n; i++) {
        _cleanup_stmt_ sqlite3_stmt *st = stmt_get(s, ST_JOB_DELETE, err);
        if (!st)
            return -EIO;
        int rc = bind_plain(st, 1, res->jobs[i].id);
        if (rc != SQLITE_OK)
            return db_fail(s, rc, err, "pruning job %s", res->jobs[i].id);
        int r = run_write(s, st, "pruning a job", err);
        if (r < 0)
            return r;
        res->bytes += res->jobs[i].bytes;
    }
    return 0;
}

int store_prune(struct store *s, const struct store_prune_policy *policy,
                struct store_prune_result *ret_result, struct al_error **err)
{
    unsigned max = policy->max_jobs ? policy->max_jobs : 500;
    if (max > 100000)
        max = 100000;
    struct store_prune_result res = {0};
    res.jobs = calloc(max, sizeof(*res.jobs));
    if (!res.jobs)
        return al_error_set(err, ENOMEM, "pruning");

    _cleanup_tx_ struct tx tx = {0};
    int r = tx_begin(s, &tx, err);
    /* the newest events may go with their jobs: keep their seqs used */
    if (r >= 0)
        r = step_done(s, ST_SEQ_FLOOR, err);
    if (r >= 0 && policy->max_age_ms > 0)
        r = prune_candidates(s, ST_PRUNE_BY_AGE, policy->now_ms - policy->max_age_ms, max, &res,
                             NULL, 0, err);
    if (r >= 0 && policy->max_bytes > 0 && res.n < max) {
        _cleanup_stmt_ sqlite3_stmt *st = stmt_get(s, ST_TOTAL_BYTES, err);
        r = st ? 0 : -EIO;
        uint64_t total = 0;
        if (r >= 0) {
            int rc = sqlite3_step(st);
            if (rc == SQLITE_ROW)
                total = (uint64_t)sqlite3_column_int64(st, 0);
            else
                r = db_fail(s, rc, err, "pruning: summing sizes");
            sqlite3_reset(st);
        }
        if (r >= 0 && total > policy->max_bytes)
            r = prune_candidates(s, ST_PRUNE_OLDEST, 0, max - (unsigned)res.n, &res, &total,
                                 policy->max_bytes, err);
    }
    if (r >= 0)
        r = tx_commit(&tx, err);
    if (r < 0) {
        store_prune_result_clear(&res);
        return WRAP(r, err, "pruning");
    }
    res.more = res.n == max;
    *ret_result = res;
    return 0;
}
