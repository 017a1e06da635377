/* The store: the schema and its migrations, opening, syncing and checking
 * the database. The prepared statements and SQLite helpers are in
 * store_sql.c, jobs and events in store_jobs.c, attempts and VM records in
 * store_vms.c, artifacts, sizes and retention in store_retention.c;
 * store_priv.h holds what they share. */
#include "runner/engine/store.h"

#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <sqlite3.h>
#include <string.h>
#include <sys/stat.h>

#include "runner/base/buf.h"
#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/engine/store_batch.h"
#include "runner/engine/store_priv.h"

/* PRAGMA application_id of an agentlab database: "alab". */
#define STORE_APPLICATION_ID 0x616c6162

/* Checkpoints belong to store_sync() on a worker thread. Should nobody call
 * it, SQLite checkpoints on the committing thread once the WAL holds this
 * many pages (32 MiB): a backstop, not the plan. */
#define STORE_WAL_BACKSTOP_PAGES 8192
#define STORE_WAL_SIZE_LIMIT     "16777216"

/* ---- schema ------------------------------------------------------------- */

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

        /* 3 -> 4: batches (store_batch.c) */
        STORE_BATCH_SCHEMA_SQL,
};

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
        return st_db_fail(s, rc, err, "%s", sql);
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
        return st_db_fail(s, rc, err, "%s", sql);
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
        r = st_tx_begin(s, &tx, err);
        if (r < 0)
            return r;
        char bump[64];
        snprintf(bump, sizeof(bump), "PRAGMA user_version = %d", v + 1);
        r = st_exec_sql(s, migrations[v], err);
        if (r >= 0)
            r = st_exec_sql(s, bump, err);
        if (r >= 0)
            r = st_tx_commit(&tx, err);
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
        return st_db_fail(s, rc, err, "opening");
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
    r = st_exec_sql(
            s, opts->sync_full ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL", err);
    if (r < 0)
        return r;
    /* temp_store = MEMORY: with temp files, every write statement opens its
     * statement journal through the temp-file path, a few hundred KiB that
     * are allocated and freed per statement; glibc then trims and regrows
     * the heap on every commit (measured: one brk per commit, several times
     * slower commits). Our temp data is tiny: bounded, indexed queries. */
    r = st_exec_sql(s,
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
        return al_error_set(err, st_sqlite_to_errno(rc), "opening database %s for checkpoints: %s",
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

sqlite3 *store_sqlite(struct store *s)
{
    return s->db;
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
        r = al_error_set(err, st_sqlite_to_errno(rc), "checkpointing database %s: %s", s->path,
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
    if (rc != SQLITE_DONE && !st_sqlite_is_corrupt(rc))
        return st_db_fail(s, rc, err, "integrity check");
    if (st_sqlite_is_corrupt(rc))
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
    if (rc != SQLITE_DONE && rc != SQLITE_OK && !st_sqlite_is_corrupt(rc))
        return st_db_fail(s, rc, err, "foreign key check");
    if (problems.len)
        return al_error_set(err, EIO, "database %s failed its integrity check: %s", s->path,
                            problems.data);
    return 0;
}
