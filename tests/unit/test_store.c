#include "test_util.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/engine/config.h"
#include "runner/engine/spec.h"
#include "runner/engine/state.h"
#include "runner/engine/store.h"

struct fixture {
    char *dir;
    char *path; /* <dir>/state/sub/agentlab.db: parents do not exist yet */
    struct config *cfg;
    struct store *store;
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    f->dir = test_tmpdir("store");
    f->path = al_path_join(f->dir, "state/sub/agentlab.db");
    unsetenv("AGENTLAB_CONFIG");
    if (config_load_string("", 0, "test.conf", &f->cfg, NULL) < 0)
        return -1;
    struct al_error *err = NULL;
    if (store_open(f->path, NULL, &f->store, &err) < 0) {
        fprintf(stderr, "store_open: %s\n", al_error_message(err));
        return -1;
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    store_close(f->store);
    config_free(f->cfg);
    test_tmpdir_remove(f->dir);
    free(f->path);
    free(f);
    al_redact_clear();
    return 0;
}

static struct job_spec *make_spec(struct fixture *f, const char *doc)
{
    struct job_spec *spec = NULL;
    struct al_error *err = NULL;
    if (job_spec_parse(doc, strlen(doc), 0, &spec, &err) < 0)
        fail_msg("spec: %s", al_error_message(err));
    assert_int_equal(job_spec_apply_defaults(spec, f->cfg, NULL), 0);
    /* the engine routes a job before it stores it (route.h) */
    if (!spec->pool)
        assert_non_null(spec->pool = strdup(f->cfg->agent.pool));
    return spec;
}

static void insert(struct fixture *f, const char *doc, char id[STORE_JOB_ID_SIZE])
{
    struct job_spec *spec = make_spec(f, doc);
    struct al_error *err = NULL;
    if (store_job_insert(f->store, spec, id, NULL, &err) < 0)
        fail_msg("insert: %s", al_error_message(err));
    job_spec_free(spec);
}

static int move(struct fixture *f, const char *id, enum job_state to, const char *detail)
{
    struct store_transition t = {.to = to, .detail = detail};
    if (to == JOB_STATE_SUCCEEDED || to == JOB_STATE_FAILED) {
        t.has_exit_code = true;
        t.exit_code = to == JOB_STATE_FAILED ? 3 : 0;
    }
    return store_job_transition(f->store, id, &t, NULL, NULL);
}

static void move_ok(struct fixture *f, const char *id, enum job_state to)
{
    struct al_error *err = NULL;
    struct store_transition t = {.to = to, .detail = job_state_to_string(to)};
    if (store_job_transition(f->store, id, &t, NULL, &err) < 0)
        fail_msg("transition to %s: %s", job_state_to_string(to), al_error_message(err));
}

static void walk_to(struct fixture *f, const char *id, enum job_state final)
{
    move_ok(f, id, JOB_STATE_PROVISIONING);
    move_ok(f, id, JOB_STATE_BOOTING);
    move_ok(f, id, JOB_STATE_RUNNING);
    if (final != JOB_STATE_RUNNING)
        move_ok(f, id, final);
}

static struct store_job *get(struct fixture *f, const char *id)
{
    struct store_job *job = NULL;
    struct al_error *err = NULL;
    if (store_job_get(f->store, id, &job, &err) < 0)
        fail_msg("get %s: %s", id, al_error_message(err));
    return job;
}

static size_t count_events(struct fixture *f, const char *id)
{
    struct store_event *ev = NULL;
    size_t n = 0;
    assert_int_equal(store_events_since(f->store, id, 0, STORE_LIST_MAX, &ev, &n, NULL), 0);
    store_events_free(ev, n);
    return n;
}

static void reopen(struct fixture *f)
{
    f->store = store_close(f->store);
    struct al_error *err = NULL;
    if (store_open(f->path, NULL, &f->store, &err) < 0)
        fail_msg("reopen: %s", al_error_message(err));
}

/* ---- open, files, schema ---- */

static void test_open_creates_private_file(void **state)
{
    struct fixture *f = *state;
    struct stat st;
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    char *dir = strdup(f->path);
    *strrchr(dir, '/') = '\0';
    assert_int_equal(stat(dir, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0711);
    free(dir);
    assert_int_equal(store_schema_version(f->store), STORE_SCHEMA_VERSION);
    assert_int_equal(store_integrity_check(f->store, NULL), 0);
    assert_int_equal(store_sync(f->store, NULL), 0);
    /* a world-readable existing file is tightened on open */
    reopen(f);
    assert_int_equal(chmod(f->path, 0644), 0);
    reopen(f);
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
}

static void test_insert_and_get(void **state)
{
    struct fixture *f = *state;
    struct job_spec *spec =
            make_spec(f, "{\"name\":\"build\",\"command\":[\"make\"],\"labels\":[\"x86\",\"big\"],"
                         "\"source\":{\"type\":\"api\",\"id\":\"req-7\"},\"max_attempts\":4}");
    char id[STORE_JOB_ID_SIZE];
    struct store_event ev = {0};
    assert_int_equal(store_job_insert(f->store, spec, id, &ev, NULL), 0);
    assert_int_equal(strlen(id), STORE_JOB_ID_LEN);
    assert_int_equal(id[0], 'j');
    assert_int_equal(strspn(id + 1, "0123456789abcdef"), STORE_JOB_ID_LEN - 1);
    assert_true(ev.seq > 0);
    assert_string_equal(ev.job_id, id);
    assert_int_equal(ev.from, JOB_STATE_NONE);
    assert_int_equal(ev.to, JOB_STATE_QUEUED);
    assert_string_equal(ev.detail, "submitted via api");
    store_event_clear(&ev);

    struct store_job *job = get(f, id);
    assert_string_equal(job->id, id);
    assert_string_equal(job->name, "build");
    assert_int_equal(job->state, JOB_STATE_QUEUED);
    assert_int_equal(job->source_type, JOB_SOURCE_API);
    assert_string_equal(job->source_ref, "req-7");
    assert_string_equal(job->pool, "default");
    assert_string_equal(job->labels[0], "x86");
    assert_string_equal(job->labels[1], "big");
    assert_null(job->labels[2]);
    assert_int_equal(job->attempts, 0);
    assert_int_equal(job->max_attempts, 4);
    assert_false(job->has_exit_code);
    assert_null(job->reason);
    assert_true(job->created_ms > 0);
    assert_int_equal(job->created_ms, job->updated_ms);
    /* the stored spec reads back and matches what was submitted */
    struct job_spec *back = NULL;
    assert_int_equal(job_spec_parse(job->spec_json, strlen(job->spec_json), JOB_SPEC_PARSE_STORED,
                                    &back, NULL),
                     0);
    assert_string_equal(back->command[0], "make");
    assert_int_equal(back->max_attempts, 4);
    assert_string_equal(back->image, spec->image);
    job_spec_free(back);
    store_job_free(job);
    job_spec_free(spec);

    struct al_error *err = NULL;
    assert_int_equal(store_job_get(f->store, "j000000000000deadbeef", &job, &err), -ENOENT);
    assert_non_null(strstr(al_error_message(err), "not found"));
    al_error_free(err);
}

static void test_ids_sortable_and_unique(void **state)
{
    struct fixture *f = *state;
    char prev[STORE_JOB_ID_SIZE] = "";
    for (int i = 0; i < 300; i++) {
        char id[STORE_JOB_ID_SIZE];
        insert(f, "{\"command\":[\"true\"]}", id);
        assert_true(strcmp(id, prev) > 0);
        memcpy(prev, id, sizeof(id));
    }
}

/* ---- transitions ---- */

static void test_transitions_and_events(void **state)
{
    struct fixture *f = *state;
    char id[STORE_JOB_ID_SIZE];
    insert(f, "{\"command\":[\"true\"]}", id);
    const enum job_state path[] = {JOB_STATE_PROVISIONING, JOB_STATE_BOOTING, JOB_STATE_RUNNING,
                                   JOB_STATE_SUCCEEDED};
    int64_t last_seq = 0;
    for (size_t i = 0; i < ARRAY_SIZE(path); i++) {
        struct store_transition t = {.to = path[i], .detail = "step"};
        if (path[i] == JOB_STATE_SUCCEEDED)
            t = (struct store_transition){
                    .to = path[i], .detail = "exit 0", .has_exit_code = true, .exit_code = 0};
        struct store_event ev = {0};
        assert_int_equal(store_job_transition(f->store, id, &t, &ev, NULL), 0);
        assert_true(ev.seq > last_seq);
        last_seq = ev.seq;
        assert_int_equal(ev.to, path[i]);
        assert_int_equal(ev.from, i ? path[i - 1] : JOB_STATE_QUEUED);
        assert_true(ev.at_ms > 0);
        store_event_clear(&ev);
    }
    struct store_job *job = get(f, id);
    assert_int_equal(job->state, JOB_STATE_SUCCEEDED);
    assert_true(job->has_exit_code);
    assert_int_equal(job->exit_code, 0);
    assert_string_equal(job->reason, "exit 0");
    assert_int_equal(job->attempts, 1);
    assert_true(job->updated_ms >= job->created_ms);
    store_job_free(job);

    struct store_event *ev = NULL;
    size_t n = 0;
    assert_int_equal(store_events_since(f->store, id, 0, 0, &ev, &n, NULL), 0);
    assert_int_equal(n, 5);
    assert_int_equal(ev[0].from, JOB_STATE_NONE);
    assert_int_equal(ev[0].to, JOB_STATE_QUEUED);
    for (size_t i = 1; i < n; i++) {
        assert_true(ev[i].seq > ev[i - 1].seq);
        assert_int_equal(ev[i].from, ev[i - 1].to);
        assert_int_equal(ev[i].to, path[i - 1]);
    }
    int64_t third = ev[2].seq;
    store_events_free(ev, n);
    /* since a seq: only what came after */
    assert_int_equal(store_events_since(f->store, id, third, 0, &ev, &n, NULL), 0);
    assert_int_equal(n, 2);
    assert_int_equal(ev[0].to, JOB_STATE_RUNNING);
    store_events_free(ev, n);

    struct store_attempt *a = NULL;
    assert_int_equal(store_attempts_list(f->store, id, &a, &n, NULL), 0);
    assert_int_equal(n, 1);
    assert_int_equal(a[0].n, 1);
    assert_true(a[0].ended_ms >= a[0].started_ms);
    assert_string_equal(a[0].result, "SUCCEEDED");
    store_attempts_free(a, n);
}

static void test_illegal_transition_not_persisted(void **state)
{
    struct fixture *f = *state;
    char id[STORE_JOB_ID_SIZE];
    insert(f, "{\"command\":[\"true\"]}", id);
    struct store_job *before = get(f, id);
    size_t events_before = count_events(f, id);

    struct al_error *err = NULL;
    struct store_transition t = {.to = JOB_STATE_RUNNING, .detail = "skip ahead"};
    struct store_event ev = {.seq = -7};
    assert_int_equal(store_job_transition(f->store, id, &t, &ev, &err), -EINVAL);
    assert_non_null(strstr(al_error_message(err), id));
    assert_non_null(
            strstr(al_error_message(err), "illegal job state transition QUEUED -> RUNNING"));
    al_error_free(err);
    assert_int_equal(ev.seq, -7); /* untouched on failure */

    struct store_job *after = get(f, id);
    assert_int_equal(after->state, JOB_STATE_QUEUED);
    assert_int_equal(after->updated_ms, before->updated_ms);
    assert_int_equal(count_events(f, id), events_before);
    store_job_free(before);
    store_job_free(after);

    /* terminal is final, also after a reopen */
    walk_to(f, id, JOB_STATE_FAILED);
    reopen(f);
    assert_int_equal(move(f, id, JOB_STATE_RUNNING, NULL), -EINVAL);
    assert_int_equal(move(f, id, JOB_STATE_CANCELED, NULL), -EINVAL);
    after = get(f, id);
    assert_int_equal(after->state, JOB_STATE_FAILED);
    store_job_free(after);

    err = NULL;
    assert_int_equal(store_job_transition(f->store, "j000000000000deadbeef", &t, NULL, &err),
                     -ENOENT);
    al_error_free(err);
    /* the store is still usable after the refused transactions */
    insert(f, "{\"command\":[\"true\"]}", id);
    walk_to(f, id, JOB_STATE_SUCCEEDED);
}

static void test_cancel_from_queue_has_no_attempt(void **state)
{
    struct fixture *f = *state;
    char id[STORE_JOB_ID_SIZE];
    insert(f, "{\"command\":[\"true\"]}", id);
    move_ok(f, id, JOB_STATE_CANCELED);
    struct store_job *job = get(f, id);
    assert_int_equal(job->state, JOB_STATE_CANCELED);
    assert_int_equal(job->attempts, 0);
    assert_string_equal(job->reason, "CANCELED");
    store_job_free(job);
    struct store_attempt *a = NULL;
    size_t n = 5;
    assert_int_equal(store_attempts_list(f->store, id, &a, &n, NULL), 0);
    assert_int_equal(n, 0);
    store_attempts_free(a, n);
}

static void test_retry(void **state)
{
    struct fixture *f = *state;
    char id[STORE_JOB_ID_SIZE];
    insert(f, "{\"command\":[\"true\"],\"max_attempts\":2}", id);
    move_ok(f, id, JOB_STATE_PROVISIONING);
    move_ok(f, id, JOB_STATE_ERROR);
    /* a retry is not an ordinary transition */
    assert_int_equal(move(f, id, JOB_STATE_QUEUED, NULL), -EINVAL);

    struct store_event ev = {0};
    assert_int_equal(store_job_retry(f->store, id, "retry: backend lost", false, &ev, NULL), 0);
    assert_int_equal(ev.from, JOB_STATE_ERROR);
    assert_int_equal(ev.to, JOB_STATE_QUEUED);
    store_event_clear(&ev);
    struct store_job *job = get(f, id);
    assert_int_equal(job->state, JOB_STATE_QUEUED);
    assert_int_equal(job->attempts, 1);
    assert_null(job->reason);
    store_job_free(job);

    move_ok(f, id, JOB_STATE_PROVISIONING);
    move_ok(f, id, JOB_STATE_BOOTING);
    move_ok(f, id, JOB_STATE_ERROR);
    struct al_error *err = NULL;
    assert_int_equal(store_job_retry(f->store, id, "again", false, NULL, &err), -EINVAL);
    assert_non_null(strstr(al_error_message(err), "all 2 attempts used"));
    al_error_free(err);
    job = get(f, id);
    assert_int_equal(job->state, JOB_STATE_ERROR);
    assert_int_equal(job->attempts, 2);
    store_job_free(job);

    /* the boot watchdog's retry does not count: one more attempt, durably */
    assert_int_equal(store_job_retry(f->store, id, "silent guest", true, NULL, NULL), 0);
    job = get(f, id);
    assert_int_equal(job->state, JOB_STATE_QUEUED);
    assert_int_equal(job->max_attempts, 3);
    store_job_free(job);
    move_ok(f, id, JOB_STATE_PROVISIONING);
    move_ok(f, id, JOB_STATE_BOOTING);
    move_ok(f, id, JOB_STATE_ERROR);

    struct store_attempt *a = NULL;
    size_t n = 0;
    assert_int_equal(store_attempts_list(f->store, id, &a, &n, NULL), 0);
    assert_int_equal(n, 3);
    assert_int_equal(a[1].n, 2);
    assert_int_equal(a[2].n, 3);
    assert_string_equal(a[0].result, "ERROR");
    assert_string_equal(a[1].result, "ERROR");
    assert_string_equal(a[2].result, "ERROR");
    store_attempts_free(a, n);

    /* workload failures are never retried */
    insert(f, "{\"command\":[\"true\"],\"max_attempts\":5}", id);
    walk_to(f, id, JOB_STATE_FAILED);
    err = NULL;
    assert_int_equal(store_job_retry(f->store, id, NULL, false, NULL, &err), -EINVAL);
    assert_non_null(strstr(al_error_message(err), "only ERROR is retried"));
    al_error_free(err);
}

/* ---- listing ---- */

static void collect_pages(struct fixture *f, struct store_job_filter filter, unsigned limit,
                          char ids[][STORE_JOB_ID_SIZE], size_t *ret_n, size_t *ret_pages)
{
    size_t n = 0, pages = 0;
    char cursor[STORE_JOB_ID_SIZE] = "";
    filter.limit = limit;
    for (;;) {
        filter.cursor = cursor[0] ? cursor : NULL;
        struct store_job_page page = {0};
        struct al_error *err = NULL;
        if (store_job_list(f->store, &filter, &page, &err) < 0)
            fail_msg("list: %s", al_error_message(err));
        pages++;
        assert_true(page.n <= limit);
        for (size_t i = 0; i < page.n; i++)
            memcpy(ids[n++], page.jobs[i]->id, STORE_JOB_ID_SIZE);
        memcpy(cursor, page.next_cursor, sizeof(cursor));
        store_job_page_clear(&page);
        if (!cursor[0])
            break;
    }
    *ret_n = n;
    *ret_pages = pages;
}

static void test_list_filters_and_pages(void **state)
{
    struct fixture *f = *state;
    char ids[25][STORE_JOB_ID_SIZE];
    for (int i = 0; i < 25; i++) {
        char doc[256];
        snprintf(doc, sizeof(doc),
                 "{\"command\":[\"true\"],\"labels\":[\"all\"%s],\"source\":{\"type\":\"%s\"}}",
                 i % 3 == 0 ? ",\"third\"" : "", i % 2 ? "gitlab" : "spool");
        insert(f, doc, ids[i]);
        if (i % 5 == 0)
            walk_to(f, ids[i], JOB_STATE_RUNNING);
    }
    char got[40][STORE_JOB_ID_SIZE];
    size_t n, pages;

    /* newest first, 3 pages of 10, 10, 5 */
    struct store_job_filter all = {.state = JOB_STATE_NONE};
    collect_pages(f, all, 10, got, &n, &pages);
    assert_int_equal(n, 25);
    assert_int_equal(pages, 3);
    for (size_t i = 0; i < n; i++)
        assert_string_equal(got[i], ids[24 - i]);

    /* oldest first, page size 7 */
    all.oldest_first = true;
    collect_pages(f, all, 7, got, &n, &pages);
    assert_int_equal(n, 25);
    assert_int_equal(pages, 4);
    for (size_t i = 0; i < n; i++)
        assert_string_equal(got[i], ids[i]);

    /* an exact multiple of the page size ends without an empty extra page */
    collect_pages(f, all, 5, got, &n, &pages);
    assert_int_equal(n, 25);
    assert_int_equal(pages, 5);

    struct store_job_filter running = {.state = JOB_STATE_RUNNING};
    collect_pages(f, running, 2, got, &n, &pages);
    assert_int_equal(n, 5);
    assert_string_equal(got[0], ids[20]);
    assert_string_equal(got[4], ids[0]);

    struct store_job_filter third = {.state = JOB_STATE_NONE, .label = "third"};
    collect_pages(f, third, 4, got, &n, &pages);
    assert_int_equal(n, 9); /* 0, 3, ..., 24 */
    assert_string_equal(got[0], ids[24]);

    struct store_job_filter gitlab = {.state = JOB_STATE_NONE, .source = JOB_SOURCE_GITLAB};
    collect_pages(f, gitlab, 50, got, &n, &pages);
    assert_int_equal(n, 12);
    assert_int_equal(pages, 1);

    /* all filters at once: queued, labelled third, from spool: 6, 12, 18, 24 */
    struct store_job_filter combo = {
            .state = JOB_STATE_QUEUED, .label = "third", .source = JOB_SOURCE_SPOOL};
    collect_pages(f, combo, 3, got, &n, &pages);
    assert_int_equal(n, 4);
    assert_string_equal(got[0], ids[24]);
    assert_string_equal(got[3], ids[6]);

    struct store_job_filter none = {.state = JOB_STATE_NONE, .label = "nope"};
    collect_pages(f, none, 10, got, &n, &pages);
    assert_int_equal(n, 0);

    /* a NULL filter lists the newest STORE_LIST_DEFAULT */
    struct store_job_page page = {0};
    assert_int_equal(store_job_list(f->store, NULL, &page, NULL), 0);
    assert_int_equal(page.n, 25);
    assert_string_equal(page.next_cursor, "");
    store_job_page_clear(&page);

    /* jobs added while paging do not shift later pages */
    struct store_job_filter first = {.state = JOB_STATE_NONE, .limit = 10};
    assert_int_equal(store_job_list(f->store, &first, &page, NULL), 0);
    char cursor[STORE_JOB_ID_SIZE];
    memcpy(cursor, page.next_cursor, sizeof(cursor));
    store_job_page_clear(&page);
    char extra[STORE_JOB_ID_SIZE];
    insert(f, "{\"command\":[\"true\"]}", extra);
    first.cursor = cursor;
    assert_int_equal(store_job_list(f->store, &first, &page, NULL), 0);
    assert_string_equal(page.jobs[0]->id, ids[14]);
    store_job_page_clear(&page);
}

static void test_events_stream_all_jobs(void **state)
{
    struct fixture *f = *state;
    char a[STORE_JOB_ID_SIZE], b[STORE_JOB_ID_SIZE];
    insert(f, "{\"command\":[\"true\"]}", a);
    insert(f, "{\"command\":[\"true\"]}", b);
    move_ok(f, a, JOB_STATE_PROVISIONING);
    move_ok(f, b, JOB_STATE_CANCELED);
    move_ok(f, a, JOB_STATE_ERROR);

    /* read the whole stream two events at a time */
    int64_t after = 0;
    size_t total = 0;
    const char *order[] = {a, b, a, b, a};
    for (;;) {
        struct store_event *ev = NULL;
        size_t n = 0;
        assert_int_equal(store_events_since(f->store, NULL, after, 2, &ev, &n, NULL), 0);
        for (size_t i = 0; i < n; i++) {
            assert_true(ev[i].seq > after);
            assert_string_equal(ev[i].job_id, order[total++]);
            after = ev[i].seq;
        }
        store_events_free(ev, n);
        if (n == 0)
            break;
    }
    assert_int_equal(total, 5);
}

/* ---- VMs, artifacts, retention ---- */

static void test_vms(void **state)
{
    struct fixture *f = *state;
    char id[STORE_JOB_ID_SIZE];
    insert(f, "{\"command\":[\"true\"]}", id);
    struct al_error *err = NULL;
    /* a queued job owns nothing yet */
    assert_int_equal(store_vm_add(f->store, "local", "agentlab-x", id, &err), -EINVAL);
    al_error_free(err);
    move_ok(f, id, JOB_STATE_PROVISIONING);
    assert_int_equal(store_vm_add(f->store, "local", "agentlab-x", id, NULL), 0);
    err = NULL;
    assert_int_equal(store_vm_add(f->store, "local", "agentlab-x", id, &err), -EEXIST);
    al_error_free(err);
    assert_int_equal(store_vm_add(f->store, "remote", "agentlab-y", id, NULL), 0);

    struct store_vm *vms = NULL;
    size_t n = 0;
    assert_int_equal(store_vm_list(f->store, NULL, &vms, &n, NULL), 0);
    assert_int_equal(n, 2);
    assert_string_equal(vms[0].backend, "local");
    assert_string_equal(vms[0].vm_name, "agentlab-x");
    assert_string_equal(vms[0].job_id, id);
    assert_int_equal(vms[0].attempt, 1);
    store_vms_free(vms, n);
    assert_int_equal(store_vm_list(f->store, "remote", &vms, &n, NULL), 0);
    assert_int_equal(n, 1);
    assert_string_equal(vms[0].vm_name, "agentlab-y");
    store_vms_free(vms, n);

    struct store_attempt *a = NULL;
    assert_int_equal(store_attempts_list(f->store, id, &a, &n, NULL), 0);
    assert_string_equal(a[0].backend, "remote"); /* the latest VM of the attempt */
    store_attempts_free(a, n);

    /* the VM records survive a restart: that is what reconcile reads */
    move_ok(f, id, JOB_STATE_ERROR);
    reopen(f);
    assert_int_equal(store_vm_list(f->store, NULL, &vms, &n, NULL), 0);
    assert_int_equal(n, 2);
    store_vms_free(vms, n);

    /* a terminal job that still owns a VM is not pruned */
    struct store_prune_policy p = {.now_ms = al_now_wall_ms() + 3600000, .max_age_ms = 1};
    struct store_prune_result res = {0};
    assert_int_equal(store_prune(f->store, &p, &res, NULL), 0);
    assert_int_equal(res.n, 0);
    store_prune_result_clear(&res);

    assert_int_equal(store_vm_remove(f->store, "local", "agentlab-x", NULL), 0);
    assert_int_equal(store_vm_remove(f->store, "remote", "agentlab-y", NULL), 0);
    err = NULL;
    assert_int_equal(store_vm_remove(f->store, "local", "agentlab-x", &err), -ENOENT);
    al_error_free(err);
    assert_int_equal(store_prune(f->store, &p, &res, NULL), 0);
    assert_int_equal(res.n, 1);
    store_prune_result_clear(&res);
}

static void test_artifacts_and_sizes(void **state)
{
    struct fixture *f = *state;
    char id[STORE_JOB_ID_SIZE];
    insert(f, "{\"command\":[\"true\"]}", id);
    const char *h1 = "0000000000000000000000000000000000000000000000000000000000000001";
    const char *h2 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    assert_int_equal(store_artifact_add(f->store, id, "out/a.txt", 1000, h1, NULL), 0);
    assert_int_equal(store_artifact_add(f->store, id, "b.bin", 24, h2, NULL), 0);
    struct al_error *err = NULL;
    assert_int_equal(store_artifact_add(f->store, id, "b.bin", 24, h2, &err), -EEXIST);
    al_error_free(err);
    err = NULL;
    assert_int_equal(store_artifact_add(f->store, id, "c", 1, "ABC", &err), -EINVAL);
    al_error_free(err);
    err = NULL;
    assert_int_equal(store_artifact_add(f->store, "j000000000000deadbeef", "c", 1, h1, &err),
                     -ENOENT);
    al_error_free(err);
    assert_int_equal(store_job_set_log_bytes(f->store, id, 500, NULL), 0);
    assert_int_equal(store_job_set_log_bytes(f->store, id, 700, NULL), 0);

    struct store_job *job = get(f, id);
    assert_int_equal(job->log_bytes, 700);
    assert_int_equal(job->bytes, 1724);
    store_job_free(job);

    struct store_artifact *a = NULL;
    size_t n = 0;
    assert_int_equal(store_artifact_list(f->store, id, &a, &n, NULL), 0);
    assert_int_equal(n, 2);
    assert_string_equal(a[0].path, "b.bin");
    assert_int_equal(a[0].size, 24);
    assert_string_equal(a[0].sha256, h2);
    assert_string_equal(a[1].path, "out/a.txt");
    store_artifacts_free(a, n);

    /* an attempt's files in one go: a path written again (a retry) takes
     * the new size and digest, and the job's bytes are its log plus every
     * indexed file, counted once */
    const struct store_artifact again[] = {
            {.path = "b.bin",
             .size = 30,
             .sha256 = "1111111111111111111111111111111111111111111111111111111111111111"},
            {.path = "new/c",
             .size = 6,
             .sha256 = "2222222222222222222222222222222222222222222222222222222222222222"},
    };
    assert_int_equal(store_artifacts_index(f->store, id, again, 2, NULL), 0);
    job = get(f, id);
    assert_int_equal(job->bytes, 700 + 1000 + 30 + 6);
    store_job_free(job);
    assert_int_equal(store_artifact_list(f->store, id, &a, &n, NULL), 0);
    assert_int_equal(n, 3);
    assert_string_equal(a[0].path, "b.bin");
    assert_int_equal(a[0].size, 30);
    assert_string_equal(a[0].sha256, again[0].sha256);
    store_artifacts_free(a, n);
    /* all or nothing: a bad digest indexes none of the files */
    const struct store_artifact bad[] = {
            {.path = "z1",
             .size = 1,
             .sha256 = "3333333333333333333333333333333333333333333333333333333333333333"},
            {.path = "z2", .size = 1, .sha256 = "not hex"},
    };
    err = NULL;
    assert_int_equal(store_artifacts_index(f->store, id, bad, 2, &err), -EINVAL);
    al_error_free(err);
    err = NULL;
    assert_int_equal(store_artifacts_index(f->store, "j000000000000deadbeef", again, 1, &err),
                     -ENOENT);
    al_error_free(err);
    assert_int_equal(store_artifact_list(f->store, id, &a, &n, NULL), 0);
    assert_int_equal(n, 3);
    store_artifacts_free(a, n);
}

static void test_prune(void **state)
{
    struct fixture *f = *state;
    char ids[10][STORE_JOB_ID_SIZE];
    for (int i = 0; i < 10; i++) {
        insert(f, "{\"command\":[\"true\"]}", ids[i]);
        assert_int_equal(store_job_set_log_bytes(f->store, ids[i], 100, NULL), 0);
        if (i < 8)
            walk_to(f, ids[i], i % 2 ? JOB_STATE_FAILED : JOB_STATE_SUCCEEDED);
    }
    int64_t now = al_now_wall_ms();

    /* nothing is old yet */
    struct store_prune_policy p = {.now_ms = now, .max_age_ms = 3600000};
    struct store_prune_result res = {0};
    assert_int_equal(store_prune(f->store, &p, &res, NULL), 0);
    assert_int_equal(res.n, 0);
    assert_false(res.more);
    store_prune_result_clear(&res);

    /* by size: 1000 bytes in total, keep at most 650: the 4 oldest finished go */
    p = (struct store_prune_policy){.now_ms = now, .max_bytes = 650};
    assert_int_equal(store_prune(f->store, &p, &res, NULL), 0);
    assert_int_equal(res.n, 4);
    assert_int_equal(res.bytes, 400);
    for (size_t i = 0; i < res.n; i++)
        assert_string_equal(res.jobs[i].id, ids[i]);
    store_prune_result_clear(&res);
    struct store_job *job = NULL;
    assert_int_equal(store_job_get(f->store, ids[0], &job, NULL), -ENOENT);
    /* events and attempts went with the job */
    assert_int_equal(count_events(f, ids[0]), 0);
    struct store_attempt *a = NULL;
    size_t n = 9;
    assert_int_equal(store_attempts_list(f->store, ids[0], &a, &n, NULL), 0);
    assert_int_equal(n, 0);
    store_attempts_free(a, n);

    /* by age, in batches of 3: the remaining 4 finished jobs, never the queued ones */
    p = (struct store_prune_policy){.now_ms = now + 7200000, .max_age_ms = 3600000, .max_jobs = 3};
    assert_int_equal(store_prune(f->store, &p, &res, NULL), 0);
    assert_int_equal(res.n, 3);
    assert_true(res.more);
    store_prune_result_clear(&res);
    assert_int_equal(store_prune(f->store, &p, &res, NULL), 0);
    assert_int_equal(res.n, 1);
    assert_string_equal(res.jobs[0].id, ids[7]);
    assert_false(res.more);
    store_prune_result_clear(&res);
    for (int i = 8; i < 10; i++) {
        job = get(f, ids[i]);
        assert_int_equal(job->state, JOB_STATE_QUEUED);
        store_job_free(job);
    }
    assert_int_equal(store_integrity_check(f->store, NULL), 0);
}

/* ---- durability and bad files ---- */

static void test_reopen_persists(void **state)
{
    struct fixture *f = *state;
    char id[STORE_JOB_ID_SIZE];
    insert(f, "{\"command\":[\"true\"],\"labels\":[\"keep\"]}", id);
    walk_to(f, id, JOB_STATE_RUNNING);
    reopen(f);
    struct store_job *job = get(f, id);
    assert_int_equal(job->state, JOB_STATE_RUNNING);
    assert_string_equal(job->labels[0], "keep");
    assert_int_equal(job->attempts, 1);
    store_job_free(job);
    assert_int_equal(count_events(f, id), 4);
    move_ok(f, id, JOB_STATE_SUCCEEDED);
    char later[STORE_JOB_ID_SIZE];
    insert(f, "{\"command\":[\"true\"]}", later);
    assert_true(strcmp(later, id) > 0);
}

/* The schema of version 1 as it was released: a frozen fixture. */
static const char v1_schema[] =
        "PRAGMA application_id = 1634492770;"
        "CREATE TABLE jobs (id TEXT PRIMARY KEY NOT NULL, name TEXT, spec TEXT NOT NULL,"
        " state TEXT NOT NULL, source_type TEXT, source_ref TEXT, pool TEXT,"
        " labels TEXT NOT NULL DEFAULT '', created_ms INTEGER NOT NULL,"
        " updated_ms INTEGER NOT NULL, exit_code INTEGER, reason TEXT,"
        " attempts INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER NOT NULL DEFAULT 1)"
        " WITHOUT ROWID;"
        "CREATE INDEX jobs_live ON jobs(state, id) WHERE state NOT IN"
        " ('SUCCEEDED','FAILED','TIMED_OUT','CANCELED','ERROR');"
        "CREATE INDEX jobs_source ON jobs(source_type, id);"
        "CREATE TABLE job_labels (label TEXT NOT NULL, job_id TEXT NOT NULL REFERENCES jobs(id)"
        " ON DELETE CASCADE, PRIMARY KEY (label, job_id)) WITHOUT ROWID;"
        "CREATE INDEX job_labels_job ON job_labels(job_id);"
        "CREATE TABLE events (seq INTEGER PRIMARY KEY, job_id TEXT NOT NULL"
        " REFERENCES jobs(id) ON DELETE CASCADE, from_state TEXT, to_state TEXT NOT NULL,"
        " at_ms INTEGER NOT NULL, detail TEXT);"
        "CREATE INDEX events_job ON events(job_id, seq);"
        "CREATE TABLE attempts (job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,"
        " n INTEGER NOT NULL, backend TEXT, vm_name TEXT, started_ms INTEGER NOT NULL,"
        " ended_ms INTEGER, result TEXT, PRIMARY KEY (job_id, n)) WITHOUT ROWID;"
        "CREATE TABLE vms (backend TEXT NOT NULL, vm_name TEXT NOT NULL, job_id TEXT NOT NULL"
        " REFERENCES jobs(id), attempt INTEGER NOT NULL, created_ms INTEGER NOT NULL,"
        " PRIMARY KEY (backend, vm_name)) WITHOUT ROWID;"
        "CREATE INDEX vms_job ON vms(job_id);"
        "CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value) WITHOUT ROWID;"
        "INSERT INTO jobs (id, spec, state, labels, created_ms, updated_ms, max_attempts)"
        " VALUES ('j0000000000010000000a', '{\"command\":[\"true\"]}', 'RUNNING', 'old', 1, 2, 3);"
        "INSERT INTO job_labels VALUES ('old', 'j0000000000010000000a');"
        "INSERT INTO events (job_id, from_state, to_state, at_ms) VALUES"
        " ('j0000000000010000000a', NULL, 'QUEUED', 1);"
        "PRAGMA user_version = 1;";

static void write_raw_db(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK)
        fail_msg("fixture SQL: %s", msg);
    sqlite3_close(db);
}

static char *open_err(const char *path, int want)
{
    struct store *s = NULL;
    struct al_error *err = NULL;
    int r = store_open(path, NULL, &s, &err);
    if (r != want)
        fail_msg("store_open(%s) = %d, want %d: %s", path, r, want, al_error_message(err));
    assert_null(s);
    char *msg = strdup(al_error_message(err));
    al_error_free(err);
    return msg;
}

static void test_migration_from_v1(void **state)
{
    struct fixture *f = *state;
    char *path = al_path_join(f->dir, "v1.db");
    write_raw_db(path, v1_schema);

    struct store *s = NULL;
    struct al_error *err = NULL;
    if (store_open(path, NULL, &s, &err) < 0)
        fail_msg("open v1: %s", al_error_message(err));
    assert_int_equal(store_schema_version(s), STORE_SCHEMA_VERSION);
    struct store_job *job = NULL;
    assert_int_equal(store_job_get(s, "j0000000000010000000a", &job, NULL), 0);
    assert_int_equal(job->state, JOB_STATE_RUNNING);
    assert_int_equal(job->bytes, 0);
    assert_string_equal(job->labels[0], "old");
    assert_int_equal(job->limits, 0);
    store_job_free(job);
    /* limits a job ran into accumulate */
    assert_int_equal(store_job_add_limits(s, "j0000000000010000000a", 1u << 0, NULL), 0);
    assert_int_equal(store_job_add_limits(s, "j0000000000010000000a", 1u << 4, NULL), 0);
    assert_int_equal(store_job_get(s, "j0000000000010000000a", &job, NULL), 0);
    assert_int_equal(job->limits, (1u << 0) | (1u << 4));
    store_job_free(job);
    /* the new parts work on the migrated data */
    const char *h = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    assert_int_equal(store_artifact_add(s, "j0000000000010000000a", "x", 5, h, NULL), 0);
    struct store_transition t = {.to = JOB_STATE_SUCCEEDED, .has_exit_code = true};
    assert_int_equal(store_job_transition(s, "j0000000000010000000a", &t, NULL, NULL), 0);
    assert_int_equal(store_integrity_check(s, NULL), 0);
    store_close(s);

    /* a second open has nothing to migrate */
    assert_int_equal(store_open(path, NULL, &s, NULL), 0);
    assert_int_equal(store_schema_version(s), STORE_SCHEMA_VERSION);
    store_close(s);
    free(path);
}

static void test_refuses_foreign_and_newer(void **state)
{
    struct fixture *f = *state;
    char *path = al_path_join(f->dir, "newer.db");
    write_raw_db(path, "PRAGMA application_id = 1634492770; CREATE TABLE t(x);"
                       "PRAGMA user_version = 99;");
    char *msg = open_err(path, -EPROTO);
    assert_non_null(strstr(msg, "schema version 99, newer than this agentlab"));
    free(msg);
    free(path);

    path = al_path_join(f->dir, "foreign.db");
    write_raw_db(path, "CREATE TABLE t(x);");
    msg = open_err(path, -EBADMSG);
    assert_non_null(strstr(msg, "not an agentlab database"));
    free(msg);
    free(path);

    path = al_path_join(f->dir, "other-app.db");
    write_raw_db(path, "PRAGMA application_id = 42;");
    msg = open_err(path, -EBADMSG);
    assert_non_null(strstr(msg, "another application"));
    free(msg);
    free(path);
}

static void test_corrupted_file(void **state)
{
    struct fixture *f = *state;
    /* not a database at all */
    char *path = al_path_join(f->dir, "garbage.db");
    char junk[16384];
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = (char)(i * 7 + 3);
    assert_int_equal(al_write_file_atomic(path, junk, sizeof(junk), 0600, NULL), 0);
    char *msg = open_err(path, -EBADMSG);
    assert_non_null(strstr(msg, "corrupted or not an agentlab database"));
    assert_non_null(strstr(msg, path));
    assert_non_null(strstr(msg, "move it aside"));
    free(msg);
    /* and the file was left alone */
    char *data = NULL;
    size_t len = 0;
    assert_int_equal(al_read_file(path, 1 << 20, &data, &len, NULL), 0);
    assert_int_equal(len, sizeof(junk));
    assert_memory_equal(data, junk, len);
    free(data);
    free(path);

    /* a real database with damaged pages */
    for (int i = 0; i < 300; i++) {
        char id[STORE_JOB_ID_SIZE];
        insert(f, "{\"command\":[\"some\",\"longer\",\"argument\",\"list\"],\"labels\":[\"l\"]}",
               id);
    }
    f->store = store_close(f->store); /* checkpoints everything into the main file */
    int fd = open(f->path, O_WRONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    assert_true(st.st_size > 8 * 4096);
    memset(junk, 0x5a, sizeof(junk));
    assert_int_equal(pwrite(fd, junk, 3 * 4096, 3 * 4096), 3 * 4096);
    close(fd);
    msg = open_err(f->path, -EBADMSG);
    assert_non_null(strstr(msg, "corrupted"));
    free(msg);
}

/* Runs store_open as an unprivileged user (root ignores file modes). */
static void expect_unwritable(const char *path)
{
    int pipefd[2];
    assert_int_equal(pipe2(pipefd, O_CLOEXEC), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(pipefd[0]);
        if (geteuid() == 0 && (setgid(65534) < 0 || setuid(65534) < 0))
            _exit(10);
        struct store *s = NULL;
        struct al_error *err = NULL;
        int r = store_open(path, NULL, &s, &err);
        const char *m = al_error_message(err);
        ssize_t w = write(pipefd[1], m, strlen(m));
        (void)w;
        al_error_free(err);
        store_close(s);
        _exit(r < 0 ? 0 : 11);
    }
    close(pipefd[1]);
    char msg[1024] = "";
    ssize_t k = read(pipefd[0], msg, sizeof(msg) - 1);
    close(pipefd[0]);
    msg[k > 0 ? k : 0] = '\0';
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    if (WEXITSTATUS(status) != 0)
        fail_msg("child exit %d: %s", WEXITSTATUS(status), msg);
    if (!strstr(msg, "read-only or not writable") || !strstr(msg, path))
        fail_msg("unclear message: %s", msg);
}

static void test_read_only(void **state)
{
    struct fixture *f = *state;
    char id[STORE_JOB_ID_SIZE];
    insert(f, "{\"command\":[\"true\"]}", id);
    f->store = store_close(f->store);
    /* an existing database the daemon cannot write */
    assert_int_equal(chmod(f->path, 0444), 0);
    expect_unwritable(f->path);
    /* a new database in a directory the daemon cannot write */
    char *dir = al_path_join(f->dir, "ro");
    assert_int_equal(mkdir(dir, 0555), 0);
    char *path = al_path_join(dir, "agentlab.db");
    expect_unwritable(path);
    free(path);
    free(dir);
    /* the database itself is untouched */
    assert_int_equal(chmod(f->path, 0600), 0);
    reopen(f);
    struct store_job *job = get(f, id);
    assert_int_equal(job->state, JOB_STATE_QUEUED);
    store_job_free(job);
}

static size_t count_in_file(const char *path, const char *needle)
{
    char *data = NULL;
    size_t len = 0;
    struct al_error *err = NULL;
    if (al_read_file(path, 64u << 20, &data, &len, &err) < 0) {
        al_error_free(err);
        return 0;
    }
    size_t hits = 0, nl = strlen(needle);
    for (char *p = data; (p = memmem(p, len - (size_t)(p - data), needle, nl)); p++)
        hits++;
    free(data);
    return hits;
}

static void test_secrets_never_stored(void **state)
{
    struct fixture *f = *state;
    const char *secret = "sekrit-VALUE-8f3a9c";
    /* the secret also leaks into other fields: a careless name, command and
     * an error detail; the redactor masks those before they are written */
    struct job_spec *spec = make_spec(
            f, "{\"name\":\"uses sekrit-VALUE-8f3a9c\",\"command\":[\"echo\","
               "\"sekrit-VALUE-8f3a9c\"],\"secret_env\":{\"DEPLOY_TOKEN\":\"sekrit-VALUE-8f3a9c\"},"
               "\"env\":{\"PLAIN\":\"visible-value\"}}");
    assert_int_equal(job_spec_register_secrets(spec, NULL), 0);
    char id[STORE_JOB_ID_SIZE];
    assert_int_equal(store_job_insert(f->store, spec, id, NULL, NULL), 0);
    move_ok(f, id, JOB_STATE_PROVISIONING);
    struct store_transition t = {.to = JOB_STATE_ERROR,
                                 .detail = "backend said: bad token sekrit-VALUE-8f3a9c"};
    struct store_event ev = {0};
    assert_int_equal(store_job_transition(f->store, id, &t, &ev, NULL), 0);
    assert_null(strstr(ev.detail, secret));
    store_event_clear(&ev);

    struct store_job *job = get(f, id);
    assert_null(strstr(job->spec_json, secret));
    assert_non_null(strstr(job->spec_json, "DEPLOY_TOKEN"));
    assert_non_null(strstr(job->spec_json, "visible-value"));
    assert_string_equal(job->name, "uses ***");
    assert_string_equal(job->reason, "backend said: bad token ***");
    store_job_free(job);

    /* the raw bytes on disk, WAL included, while the store is open */
    char *wal = NULL;
    assert_true(asprintf(&wal, "%s-wal", f->path) > 0);
    assert_int_equal(store_sync(f->store, NULL), 0);
    assert_true(count_in_file(wal, "visible-value") > 0); /* the check can see data */
    assert_int_equal(count_in_file(f->path, secret), 0);
    assert_int_equal(count_in_file(wal, secret), 0);
    /* and after the checkpoint on close */
    f->store = store_close(f->store);
    assert_true(count_in_file(f->path, "visible-value") > 0);
    assert_int_equal(count_in_file(f->path, secret), 0);
    assert_int_equal(count_in_file(wal, secret), 0);
    free(wal);
    job_spec_unregister_secrets(spec);
    job_spec_free(spec);
    reopen(f);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
            T(test_open_creates_private_file),
            T(test_insert_and_get),
            T(test_ids_sortable_and_unique),
            T(test_transitions_and_events),
            T(test_illegal_transition_not_persisted),
            T(test_cancel_from_queue_has_no_attempt),
            T(test_retry),
            T(test_list_filters_and_pages),
            T(test_events_stream_all_jobs),
            T(test_vms),
            T(test_artifacts_and_sizes),
            T(test_prune),
            T(test_reopen_persists),
            T(test_migration_from_v1),
            T(test_refuses_foreign_and_newer),
            T(test_corrupted_file),
            T(test_read_only),
            T(test_secrets_never_stored),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
