/* Attempts and the VM records the reconcile relies on. */
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

#include "runner/base/util.h"
#include "runner/engine/store_priv.h"

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

static int read_attempt_row(sqlite3_stmt *st, struct store_attempt *a)
{
    a->n = sqlite3_column_int(st, 0);
    a->started_ms = sqlite3_column_int64(st, 3);
    a->ended_ms = sqlite3_column_int64(st, 4);
    if (st_col_text(st, 1, &a->backend) < 0 || st_col_text(st, 2, &a->vm_name) < 0 ||
        st_col_text(st, 5, &a->result) < 0)
        return -ENOMEM;
    return 0;
}

int store_attempts_list(struct store *s, const char *job_id, struct store_attempt **ret_attempts,
                        size_t *ret_n, struct al_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = st_stmt_get(s, ST_ATTEMPTS_LIST, err);
    if (!st)
        return -EIO;
    int rc = st_bind_plain(st, 1, job_id);
    if (rc != SQLITE_OK)
        return st_db_fail(s, rc, err, "listing attempts");
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
    struct job_row_state cur;
    int r = st_tx_begin_on_job(s, &tx, job_id, &cur, err);
    if (r < 0)
        return r;
    if (!job_state_is_active(cur.state))
        return al_error_set(err, EINVAL,
                            "job %s is %s: only a provisioning, booting or running "
                            "job can own a VM",
                            job_id, job_state_to_string(cur.state));
    int64_t now = al_now_wall_ms();
    {
        _cleanup_stmt_ sqlite3_stmt *st = st_stmt_get(s, ST_VM_INSERT, err);
        if (!st)
            return -EIO;
        int rc = st_bind_text(st, 1, backend);
        if (rc == SQLITE_OK)
            rc = st_bind_text(st, 2, vm_name);
        if (rc == SQLITE_OK)
            rc = st_bind_plain(st, 3, job_id);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_int(st, 4, cur.attempts);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_int64(st, 5, now);
        if (rc != SQLITE_OK)
            return st_db_fail(s, rc, err, "recording VM %s", vm_name);
        rc = sqlite3_step(st);
        if ((rc & 0xff) == SQLITE_CONSTRAINT)
            return al_error_set(err, EEXIST, "VM %s on backend %s is already recorded", vm_name,
                                backend);
        if (rc != SQLITE_DONE)
            return st_db_fail(s, rc, err, "recording VM %s", vm_name);
    }
    {
        _cleanup_stmt_ sqlite3_stmt *st = st_stmt_get(s, ST_ATTEMPT_SET_VM, err);
        if (!st)
            return -EIO;
        int rc = st_bind_plain(st, 1, job_id);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_int(st, 2, cur.attempts);
        if (rc == SQLITE_OK)
            rc = st_bind_text(st, 3, backend);
        if (rc == SQLITE_OK)
            rc = st_bind_text(st, 4, vm_name);
        if (rc != SQLITE_OK)
            return st_db_fail(s, rc, err, "recording VM %s", vm_name);
        r = st_run_write(s, st, "recording the attempt's VM", err);
        if (r < 0)
            return r;
    }
    return st_tx_commit(&tx, err);
}

int store_vm_remove(struct store *s, const char *backend, const char *vm_name,
                    struct al_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = st_stmt_get(s, ST_VM_DELETE, err);
    if (!st)
        return -EIO;
    int rc = st_bind_text(st, 1, backend);
    if (rc == SQLITE_OK)
        rc = st_bind_text(st, 2, vm_name);
    if (rc != SQLITE_OK)
        return st_db_fail(s, rc, err, "forgetting VM %s", vm_name);
    int r = st_run_write(s, st, "forgetting a VM", err);
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
    st_col_id(st, 2, vm->job_id);
    vm->attempt = sqlite3_column_int(st, 3);
    vm->created_ms = sqlite3_column_int64(st, 4);
    if (st_col_text(st, 0, &vm->backend) < 0 || st_col_text(st, 1, &vm->vm_name) < 0)
        return -ENOMEM;
    return 0;
}

int store_vm_list(struct store *s, const char *backend, struct store_vm **ret_vms, size_t *ret_n,
                  struct al_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st =
            st_stmt_get(s, backend ? ST_VM_LIST_BACKEND : ST_VM_LIST_ALL, err);
    if (!st)
        return -EIO;
    if (backend) {
        int rc = st_bind_text(st, 1, backend);
        if (rc != SQLITE_OK)
            return st_db_fail(s, rc, err, "listing VMs");
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
