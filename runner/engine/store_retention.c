/* Artifacts, the bytes each job holds, and retention. */
#include <inttypes.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

#include "runner/base/util.h"
#include "runner/engine/store_priv.h"

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

/* Runs the size update which on job_id with args bound: -ENOENT when
 * there is no such job. */
static int update_job_bytes(struct store *s, enum stmt_id which, const char *job_id,
                            const struct st_arg *args, size_t n, struct al_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = st_stmt_get(s, which, err);
    if (!st)
        return -EIO;
    int rc = st_bind(st, args, n);
    if (rc != SQLITE_OK)
        return st_db_fail(s, rc, err, "updating the size of job %s", job_id);
    int r = st_run_write(s, st, "updating a job's size", err);
    if (r < 0)
        return r;
    if (sqlite3_changes(s->db) == 0)
        return al_error_set(err, ENOENT, "job %s not found", job_id);
    return 0;
}

static int add_job_bytes(struct store *s, enum stmt_id which, const char *job_id, uint64_t bytes,
                         struct al_error **err)
{
    if (bytes > INT64_MAX)
        return al_error_set(err, ERANGE, "size of job %s out of range", job_id);
    const struct st_arg args[] = {ST_PLAIN(job_id), ST_INT((int64_t)bytes)};
    return update_job_bytes(s, which, job_id, args, ARRAY_SIZE(args), err);
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
    int r = st_tx_begin(s, &tx, err);
    if (r < 0)
        return r;
    r = add_job_bytes(s, ST_JOB_ADD_BYTES, job_id, size, err);
    if (r < 0)
        return r;
    {
        _cleanup_stmt_ sqlite3_stmt *st = st_stmt_get(s, ST_ARTIFACT_INSERT, err);
        if (!st)
            return -EIO;
        int rc = st_bind_plain(st, 1, job_id);
        if (rc == SQLITE_OK)
            rc = st_bind_text(st, 2, path);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_int64(st, 3, (int64_t)size);
        if (rc == SQLITE_OK)
            rc = st_bind_plain(st, 4, sha256_hex);
        if (rc != SQLITE_OK)
            return st_db_fail(s, rc, err, "indexing artifact %s", path);
        rc = sqlite3_step(st);
        if ((rc & 0xff) == SQLITE_CONSTRAINT)
            return al_error_set(err, EEXIST, "artifact %s of job %s is already indexed", path,
                                job_id);
        if (rc != SQLITE_DONE)
            return st_db_fail(s, rc, err, "indexing artifact %s", path);
    }
    return st_tx_commit(&tx, err);
}

static int sum_job_bytes(struct store *s, const char *job_id, struct al_error **err)
{
    return update_job_bytes(s, ST_JOB_SUM_BYTES, job_id, &ST_PLAIN(job_id), 1, err);
}

int store_artifacts_index(struct store *s, const char *job_id, const struct store_artifact *v,
                          size_t n, struct al_error **err)
{
    for (size_t i = 0; i < n; i++) {
        if (!sha256_hex_is_valid(v[i].sha256))
            return al_error_set(err, EINVAL, "artifact %s: sha256 must be 64 lower-case hex digits",
                                v[i].path);
        if (v[i].size > INT64_MAX)
            return al_error_set(err, ERANGE, "artifact %s: size out of range", v[i].path);
    }
    _cleanup_tx_ struct tx tx = {0};
    int r = st_tx_begin(s, &tx, err);
    if (r < 0)
        return r;
    /* first: a job that is not there is ENOENT, not a constraint */
    if ((r = sum_job_bytes(s, job_id, err)) < 0)
        return r;
    for (size_t i = 0; i < n; i++) {
        _cleanup_stmt_ sqlite3_stmt *st = st_stmt_get(s, ST_ARTIFACT_UPSERT, err);
        if (!st)
            return -EIO;
        int rc = st_bind_plain(st, 1, job_id);
        if (rc == SQLITE_OK)
            rc = st_bind_text(st, 2, v[i].path);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_int64(st, 3, (int64_t)v[i].size);
        if (rc == SQLITE_OK)
            rc = st_bind_plain(st, 4, v[i].sha256);
        if (rc != SQLITE_OK)
            return st_db_fail(s, rc, err, "indexing artifact %s", v[i].path);
        if ((r = st_run_write(s, st, "indexing an artifact", err)) < 0)
            return r;
    }
    if ((r = sum_job_bytes(s, job_id, err)) < 0)
        return r;
    return st_tx_commit(&tx, err);
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
    return st_col_text(st, 0, &a->path);
}

int store_artifact_list(struct store *s, const char *job_id, struct store_artifact **ret_artifacts,
                        size_t *ret_n, struct al_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = st_stmt_get(s, ST_ARTIFACT_LIST, err);
    if (!st)
        return -EIO;
    int rc = st_bind_plain(st, 1, job_id);
    if (rc != SQLITE_OK)
        return st_db_fail(s, rc, err, "listing artifacts");
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
        _cleanup_stmt_ sqlite3_stmt *st = st_stmt_get(s, which, err);
        if (!st)
            return -EIO;
        int rc = which == ST_PRUNE_BY_AGE ? sqlite3_bind_int64(st, 1, cutoff) : SQLITE_OK;
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_int(st, which == ST_PRUNE_BY_AGE ? 2 : 1, (int)max);
        if (rc != SQLITE_OK)
            return st_db_fail(s, rc, err, "pruning");
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            if (total && *total <= max_bytes)
                break;
            struct store_pruned_job *j = &res->jobs[res->n++];
            st_col_id(st, 0, j->id);
            j->bytes = (uint64_t)sqlite3_column_int64(st, 1);
            if (total)
                *total -= j->bytes < *total ? j->bytes : *total;
        }
        if (rc != SQLITE_DONE && rc != SQLITE_ROW)
            return st_db_fail(s, rc, err, "pruning");
    }
    for (size_t i = first; i < res->n; i++) {
        _cleanup_stmt_ sqlite3_stmt *st = st_stmt_get(s, ST_JOB_DELETE, err);
        if (!st)
            return -EIO;
        int rc = st_bind_plain(st, 1, res->jobs[i].id);
        if (rc != SQLITE_OK)
            return st_db_fail(s, rc, err, "pruning job %s", res->jobs[i].id);
        int r = st_run_write(s, st, "pruning a job", err);
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
    int r = st_tx_begin(s, &tx, err);
    /* the newest events may go with their jobs: keep their seqs used */
    if (r >= 0)
        r = st_step_done(s, ST_SEQ_FLOOR, err);
    if (r >= 0 && policy->max_age_ms > 0)
        r = prune_candidates(s, ST_PRUNE_BY_AGE, policy->now_ms - policy->max_age_ms, max, &res,
                             NULL, 0, err);
    if (r >= 0 && policy->max_bytes > 0 && res.n < max) {
        _cleanup_stmt_ sqlite3_stmt *st = st_stmt_get(s, ST_TOTAL_BYTES, err);
        r = st ? 0 : -EIO;
        uint64_t total = 0;
        if (r >= 0) {
            int rc = sqlite3_step(st);
            if (rc == SQLITE_ROW)
                total = (uint64_t)sqlite3_column_int64(st, 0);
            else
                r = st_db_fail(s, rc, err, "pruning: summing sizes");
            sqlite3_reset(st);
        }
        if (r >= 0 && total > policy->max_bytes)
            r = prune_candidates(s, ST_PRUNE_OLDEST, 0, max - (unsigned)res.n, &res, &total,
                                 policy->max_bytes, err);
    }
    if (r >= 0)
        r = st_tx_commit(&tx, err);
    if (r < 0) {
        store_prune_result_clear(&res);
        return WRAP(r, err, "pruning");
    }
    res.more = res.n == max;
    *ret_result = res;
    return 0;
}
