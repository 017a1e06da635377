/* Jobs and their events in the store: ids, inserts, transitions, retries,
 * reads and listings. */
#include <inttypes.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

#include "runner/base/buf.h"
#include "runner/base/util.h"
#include "runner/engine/store_priv.h"

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
    _cleanup_stmt_ sqlite3_stmt *st = st_stmt_get(s, ST_EVENT_INSERT, err);
    if (!st)
        return -EIO;
    const struct st_arg args[] = {
            ST_PLAIN(job_id),
            ST_PLAIN(from == JOB_STATE_NONE ? NULL : job_state_to_string(from)),
            ST_PLAIN(job_state_to_string(to)),
            ST_INT(at_ms),
            ST_TEXT(detail),
    };
    int rc = st_bind(st, args, ARRAY_SIZE(args));
    if (rc != SQLITE_OK)
        return st_db_fail(s, rc, err, "recording an event of job %s", job_id);
    int r = st_run_write(s, st, "recording an event", err);
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
/* Ends a write of a job's state: records its event from -> to, commits tx
 * and hands the event out (ret_event may be NULL; the caller clears it). */
static int commit_with_event(struct tx *tx, const char *job_id, enum job_state from,
                             enum job_state to, int64_t at_ms, const char *detail,
                             struct store_event *ret_event, struct al_error **err)
{
    struct store_event ev = {0};
    int r = insert_event(tx->s, job_id, from, to, at_ms, detail, ret_event ? &ev : NULL, err);
    if (r < 0)
        return r;
    r = st_tx_commit(tx, err);
    if (r < 0) {
        store_event_clear(&ev);
        return r;
    }
    if (ret_event)
        *ret_event = ev;
    return 0;
}

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
    r = st_tx_begin(s, &tx, err);
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
        _cleanup_stmt_ sqlite3_stmt *st = st_stmt_get(s, ST_JOB_INSERT, err);
        if (!st)
            return -EIO;
        const struct st_arg args[] = {
                ST_PLAIN(id),
                ST_TEXT(spec->name),
                ST_TEXT(json),
                ST_PLAIN(source),
                ST_TEXT(spec->source.id),
                ST_PLAIN(spec->pool),
                ST_PLAIN(labels),
                ST_INT(now),
                ST_INT(spec->max_attempts > 0 ? spec->max_attempts : 1),
        };
        int rc = st_bind(st, args, ARRAY_SIZE(args));
        if (rc != SQLITE_OK)
            return st_db_fail(s, rc, err, "storing job");
        rc = sqlite3_step(st);
        if (rc == SQLITE_DONE)
            break;
        /* an id collision is all but impossible; take a fresh one */
        if (rc != SQLITE_CONSTRAINT_PRIMARYKEY || tries >= 3)
            return st_db_fail(s, rc, err, "storing job");
    }
    for (size_t i = 0; i < spec->n_labels; i++) {
        _cleanup_stmt_ sqlite3_stmt *st = st_stmt_get(s, ST_LABEL_INSERT, err);
        if (!st)
            return -EIO;
        int rc = st_bind(st, (const struct st_arg[]){ST_PLAIN(spec->labels[i]), ST_PLAIN(id)}, 2);
        if (rc != SQLITE_OK)
            return st_db_fail(s, rc, err, "storing job labels");
        r = st_run_write(s, st, "storing job labels", err);
        if (r < 0)
            return r;
    }
    char detail[64];
    snprintf(detail, sizeof(detail), "submitted%s%s", source ? " via " : "", source ? source : "");
    r = commit_with_event(&tx, id, JOB_STATE_NONE, JOB_STATE_QUEUED, now, detail, ret_event, err);
    if (r < 0)
        return WRAP(r, err, "storing job");
    memcpy(ret_id, id, STORE_JOB_ID_SIZE);
    return 0;
}

/* Binds id to the statement which, one that selects a job by id (?1), and
 * steps to that job's row; -ENOENT when there is no such job. On success
 * *ret_st is the statement on the row, for the caller to reset. */
static int step_to_job(struct store *s, enum stmt_id which, const char *id, sqlite3_stmt **ret_st,
                       struct al_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = st_stmt_get(s, which, err);
    if (!st)
        return -EIO;
    int rc = st_bind_plain(st, 1, id);
    if (rc != SQLITE_OK)
        return st_db_fail(s, rc, err, "reading job %s", id);
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return al_error_set(err, ENOENT, "job %s not found", id);
    if (rc != SQLITE_ROW)
        return st_db_fail(s, rc, err, "reading job %s", id);
    *ret_st = TAKE_PTR(st);
    return 0;
}

static int read_job_state(struct store *s, const char *id, struct job_row_state *ret,
                          struct al_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    int r = step_to_job(s, ST_JOB_STATE, id, &st, err);
    if (r < 0)
        return r;
    enum job_state state = st_col_state(st, 0);
    if (state == JOB_STATE_NONE)
        return al_error_set(err, EBADMSG, "job %s has an unknown state in the database", id);
    *ret = (struct job_row_state){.state = state,
                                  .attempts = sqlite3_column_int(st, 1),
                                  .max_attempts = sqlite3_column_int(st, 2)};
    return 0;
}

int st_tx_begin_on_job(struct store *s, struct tx *tx, const char *id, struct job_row_state *ret,
                       struct al_error **err)
{
    int r = st_tx_begin(s, tx, err);
    if (r < 0)
        return r;
    return read_job_state(s, id, ret, err);
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
    _cleanup_stmt_ sqlite3_stmt *st = st_stmt_get(s, which, err);
    if (!st)
        return -EIO;
    /* the exit code and the detail only for a terminal state */
    const struct st_arg args[] = {
            ST_PLAIN(id),       ST_PLAIN(job_state_to_string(t->to)),
            ST_INT(now),        t->has_exit_code ? ST_INT(t->exit_code) : ST_NULL,
            ST_TEXT(t->detail),
    };
    int rc = st_bind(st, args, which == ST_JOB_SET_TERMINAL ? 5 : 3);
    if (rc != SQLITE_OK)
        return st_db_fail(s, rc, err, "updating job %s", id);
    return st_run_write(s, st, "updating job state", err);
}

static int attempt_write(struct store *s, enum stmt_id which, const char *id, int n, int64_t now,
                         const char *result, struct al_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = st_stmt_get(s, which, err);
    if (!st)
        return -EIO;
    /* ?4, the result, only where the attempt ends */
    const struct st_arg args[] = {ST_PLAIN(id), ST_INT(n), ST_INT(now), ST_PLAIN(result)};
    int rc = st_bind(st, args, result ? 4 : 3);
    if (rc != SQLITE_OK)
        return st_db_fail(s, rc, err, "recording attempt %d of job %s", n, id);
    return st_run_write(s, st, "recording an attempt", err);
}

/* Runs the write which on job id with args bound, inside the caller's
 * transaction; errors name what was being done to the job. */
static int write_on_job(struct store *s, enum stmt_id which, const char *id,
                        const struct st_arg *args, size_t n, const char *what,
                        struct al_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = st_stmt_get(s, which, err);
    if (!st)
        return -EIO;
    int rc = st_bind(st, args, n);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        return st_db_fail(s, rc, err, "%s job %s", what, id);
    return 0;
}

/* What a change of a job's state writes besides its row's state: called
 * inside the transaction with the job's current row and the time of the
 * change; cur->state must stay what it was (the event's from). */
typedef int (*job_change_fn)(struct store *s, const char *id, struct job_row_state *cur,
                             int64_t now, const void *arg, struct al_error **err);

/* A change of job id to state to: one transaction that reads its row,
 * runs change and records the event, which is handed out as
 * store_job_transition() says. */
static int job_change(struct store *s, const char *id, enum job_state to, const char *detail,
                      job_change_fn change, const void *arg, struct store_event *ret_event,
                      struct al_error **err)
{
    _cleanup_tx_ struct tx tx = {0};
    struct job_row_state cur = {0};
    int r = st_tx_begin_on_job(s, &tx, id, &cur, err);
    if (r < 0)
        return r;
    int64_t now = al_now_wall_ms();
    r = change(s, id, &cur, now, arg, err);
    if (r < 0)
        return r;
    return commit_with_event(&tx, id, cur.state, to, now, detail, ret_event, err);
}

static int transition_change(struct store *s, const char *id, struct job_row_state *cur,
                             int64_t now, const void *arg, struct al_error **err)
{
    const struct store_transition *t = arg;
    int r = job_transition_check(cur->state, t->to, err);
    if (r < 0)
        return WRAP(r, err, "job %s", id);
    r = update_job_state(s, id, t, now, err);
    if (r < 0)
        return r;
    if (t->to == JOB_STATE_PROVISIONING)
        return attempt_write(s, ST_ATTEMPT_INSERT, id, cur->attempts + 1, now, NULL, err);
    if (job_state_is_terminal(t->to) && job_state_is_active(cur->state))
        return attempt_write(s, ST_ATTEMPT_END, id, cur->attempts, now, job_state_to_string(t->to),
                             err);
    return 0;
}

int store_job_transition(struct store *s, const char *id, const struct store_transition *t,
                         struct store_event *ret_event, struct al_error **err)
{
    return job_change(s, id, t->to, t->detail, transition_change, t, ret_event, err);
}

static int retry_change(struct store *s, const char *id, struct job_row_state *cur, int64_t now,
                        const void *arg, struct al_error **err)
{
    const bool *free_attempt = arg;
    const struct st_arg by_id[] = {ST_PLAIN(id), ST_INT(now)};
    int r;
    if (*free_attempt) {
        r = write_on_job(s, ST_JOB_GRANT_ATTEMPT, id, by_id, 1, "granting an attempt to", err);
        if (r < 0)
            return r;
        cur->max_attempts++;
    }
    r = job_retry_check(cur->state, cur->attempts, cur->max_attempts, err);
    if (r < 0)
        return WRAP(r, err, "job %s", id);
    return write_on_job(s, ST_JOB_REQUEUE, id, by_id, 2, "requeueing", err);
}

int store_job_retry(struct store *s, const char *id, const char *detail, bool free_attempt,
                    struct store_event *ret_event, struct al_error **err)
{
    return job_change(s, id, JOB_STATE_QUEUED, detail, retry_change, &free_attempt, ret_event, err);
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
    st_col_id(st, 0, job->id);
    _cleanup_free_ char *source = NULL;
    _cleanup_free_ char *labels = NULL;
    if (st_col_text(st, 1, &job->name) < 0 || st_col_text(st, 2, &job->spec_json) < 0 ||
        st_col_text(st, 4, &source) < 0 || st_col_text(st, 5, &job->source_ref) < 0 ||
        st_col_text(st, 6, &job->pool) < 0 || st_col_text(st, 7, &labels) < 0 ||
        st_col_text(st, 11, &job->reason) < 0)
        return -ENOMEM;
    job->state = st_col_state(st, 3);
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
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    int r = step_to_job(s, ST_JOB_GET, id, &st, err);
    if (r < 0)
        return r;
    r = read_job_row(st, ret_job);
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
        st_db_fail(s, rc, err, "preparing the job list");
        return NULL;
    }
    return s->list_stmts[variant];
}

static int bind_named(sqlite3_stmt *st, const char *name, const char *value)
{
    return st_bind_plain(st, sqlite3_bind_parameter_index(st, name), value);
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
        return st_db_fail(s, rc, err, "listing jobs");

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
        return st_db_fail(s, rc, err, "listing jobs");
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
    _cleanup_stmt_ sqlite3_stmt *st = st_stmt_get(s, job_id ? ST_EVENTS_JOB : ST_EVENTS_ALL, err);
    if (!st)
        return -EIO;
    int rc = sqlite3_bind_int64(st, 1, after_seq);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int(st, 2, (int)limit);
    if (rc == SQLITE_OK && job_id)
        rc = st_bind_plain(st, 3, job_id);
    if (rc != SQLITE_OK)
        return st_db_fail(s, rc, err, "reading events");
    struct store_event *events = calloc(limit, sizeof(*events));
    if (!events)
        return al_error_set(err, ENOMEM, "reading events");
    size_t n = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct store_event *ev = &events[n++];
        ev->seq = sqlite3_column_int64(st, 0);
        st_col_id(st, 1, ev->job_id);
        ev->from = st_col_state(st, 2);
        ev->to = st_col_state(st, 3);
        ev->at_ms = sqlite3_column_int64(st, 4);
        if (st_col_text(st, 5, &ev->detail) < 0) {
            store_events_free(events, n);
            return al_error_set(err, ENOMEM, "reading events");
        }
    }
    if (rc != SQLITE_DONE) {
        store_events_free(events, n);
        return st_db_fail(s, rc, err, "reading events");
    }
    *ret_events = events;
    *ret_n = n;
    return 0;
}
