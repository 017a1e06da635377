/* A job's caches: restored from the store (gitlab_cache.h) before the
 * checkout is packed, saved from what the guest handed back after the job.
 * The store's file work runs on worker threads; the trace is written here,
 * on the loop. */
#include "runner/sources/gitlab_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runner/base/buf.h"
#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/loop/work.h"
#include "runner/sources/gitlab_cache.h"

/* GitLab Runner refuses such a CACHE_FALLBACK_KEY: it would let a job of an
 * unprotected ref read the cache of protected ones. */
#define PROTECTED_SUFFIX "-protected"

static bool suffixed(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && streq(s + n - m, suffix);
}

/* ---- restore ---- */

struct restore_req {
    struct gljob *j;
    struct gitlab_cache_store *store;
    int64_t project;
    char *dir;         /* where the restored archives go */
    struct al_buf log; /* lines for the trace */
    char **zips;       /* NULL-terminated, in the order of the entries */
    size_t n_zips;
    void (*next)(struct gljob *j);
};

static int restore_work(void *data, struct al_error **err)
{
    struct restore_req *q = data;
    const struct gitlab_job *p = q->j->payload;
    const char *fallback = gitlab_job_variable(p, "CACHE_FALLBACK_KEY");
    int r = al_rm_rf(q->dir, err);
    if (r < 0 || (r = al_mkdir_p(q->dir, 0700, err)) < 0)
        return r;
    for (size_t i = 0; i < p->n_caches; i++) {
        const struct gitlab_cache_spec *c = &p->caches[i];
        if (c->policy == GITLAB_CACHE_PUSH)
            continue;
        const char *keys[1 + 5 + 1];
        size_t n = 0;
        keys[n++] = c->key;
        for (size_t k = 0; k < c->n_fallback_keys && n < 6; k++)
            keys[n++] = c->fallback_keys[k];
        if (fallback && *fallback) {
            if (suffixed(fallback, PROTECTED_SUFFIX))
                al_buf_printf(&q->log,
                              "WARNING: CACHE_FALLBACK_KEY \"%s\" is not allowed to end in "
                              "\"%s\"\n",
                              fallback, PROTECTED_SUFFIX);
            else
                keys[n++] = fallback;
        }
        char name[32];
        snprintf(name, sizeof(name), "cache-%zu.zip", i);
        _cleanup_free_ char *dest = al_path_join(q->dir, name);
        if (!dest)
            return al_error_set(err, ENOMEM, "out of memory");
        size_t found = 0;
        struct al_error *e = NULL;
        al_buf_printf(&q->log, "Checking cache for %s...\n", c->key);
        r = gitlab_cache_store_get(q->store, q->project, keys, n, dest, &found, &e);
        if (r == -ENOENT) {
            al_buf_puts(&q->log, "No cache found for this key or its fallback keys\n");
        } else if (r < 0) {
            al_buf_printf(&q->log, "WARNING: restoring the cache failed: %s\n",
                          al_error_message(e));
            al_error_free(e);
        } else {
            if (found)
                al_buf_printf(&q->log, "Using the cache of fallback key %s\n", keys[found]);
            al_buf_puts(&q->log, "Successfully restored cache\n");
            q->zips[q->n_zips++] = TAKE_PTR(dest);
        }
    }
    return 0;
}

static void restore_done(void *data, int result, struct al_error *err)
{
    struct restore_req *q = data;
    struct gljob *j = q->j;
    j->working = false;
    if (q->log.len)
        gl_trace_append(j, q->log.data, q->log.len);
    if (result < 0) {
        /* a cache is an optimisation: the job runs without it */
        char line[512];
        int n = snprintf(line, sizeof(line), "WARNING: restoring the cache failed: %s\n",
                         al_error_message(err));
        gl_trace_append(j, line, n > 0 && (size_t)n < sizeof(line) ? (size_t)n : 0);
    } else {
        j->cache_zips = TAKE_PTR(q->zips);
        j->n_cache_zips = q->n_zips;
    }
    al_error_free(err);
    if (!j->cache_zips || !j->n_cache_zips)
        gl_remove_async(j->g, q->dir);
    else
        j->cache_dir = TAKE_PTR(q->dir);
    strv_free(q->zips);
    free(q->dir);
    al_buf_free(&q->log);
    void (*next)(struct gljob *) = q->next;
    free(q);
    if (j->cancel_requested) {
        gl_fail_early(j, "%s", j->shutdown ? "agentlabd stopped" : "canceled");
        return;
    }
    gl_trace_tick_arm(j, (uint64_t)j->interval_s * 1000u);
    next(j);
}

void gl_cache_restore(struct gljob *j, void (*next)(struct gljob *j))
{
    struct gitlab *g = j->g;
    const struct gitlab_job *p = j->payload;
    bool any = false;
    for (size_t i = 0; i < p->n_caches; i++)
        any |= p->caches[i].policy != GITLAB_CACHE_PUSH;
    if (!any || !g->cache) {
        static const char none[] = "WARNING: this runner has no cache store (cache_max_size = 0, "
                                   "or cache_dir was unusable at start: see agentlabd's log)\n";
        if (any)
            gl_trace_append(j, none, strlen(none));
        next(j);
        return;
    }
    struct restore_req *q = calloc(1, sizeof(*q));
    char name[40];
    snprintf(name, sizeof(name), "%" PRId64 ".cache", j->id);
    if (!q || !(q->dir = al_path_join(g->checkout_root, name)) ||
        !(q->zips = calloc(p->n_caches + 1, sizeof(char *)))) {
        if (q)
            free(q->dir);
        free(q);
        gl_fail_early(j, "out of memory");
        return;
    }
    q->j = j;
    q->store = g->cache;
    q->project = p->project_id;
    q->next = next;
    if (al_work_queue(g->loop, restore_work, restore_done, q, NULL) < 0) {
        free(q->zips);
        free(q->dir);
        free(q);
        gl_fail_early(j, "out of memory");
        return;
    }
    /* no trace or keep-alive call meanwhile: the dependencies' downloads
     * that follow take j->call */
    uv_timer_stop(&j->timer);
    j->timer_armed = false;
    j->working = true;
}

void gl_cache_skip_restore(struct gljob *j)
{
    static const char msg[] = "WARNING: caches are restored only with clone = host: this job "
                              "starts without them\n";
    for (size_t i = 0; i < j->payload->n_caches; i++) {
        if (j->payload->caches[i].policy != GITLAB_CACHE_PUSH) {
            gl_trace_append(j, msg, strlen(msg));
            return;
        }
    }
}

/* ---- save ---- */

struct save_req {
    struct gljob *j;
    struct gitlab_cache_store *store;
    char *dir; /* what the guest handed back */
    bool succeeded;
    struct al_buf log;
};

static int save_work(void *data, struct al_error **err)
{
    (void)err;
    struct save_req *q = data;
    const struct gitlab_job *p = q->j->payload;
    for (size_t i = 0; i < p->n_caches; i++) {
        const struct gitlab_cache_spec *c = &p->caches[i];
        if (!gitlab_cache_saves(c, q->succeeded))
            continue;
        al_buf_printf(&q->log, "Saving cache %s for %s job\n", c->key,
                      q->succeeded ? "successful" : "failed");
        uint64_t bytes = 0;
        struct al_error *e = NULL;
        int r = gitlab_cache_store_put(q->store, p->project_id, c->key, q->dir, c, &bytes, &e);
        if (r < 0)
            al_buf_printf(&q->log, "WARNING: saving the cache failed: %s\n", al_error_message(e));
        else if (bytes == 0)
            al_buf_puts(&q->log, "WARNING: no files match the cache paths: nothing saved\n");
        else
            al_buf_printf(&q->log, "Created cache (%" PRIu64 " bytes)\n", bytes);
        al_error_free(e);
    }
    return 0;
}

static void save_done(void *data, int result, struct al_error *err)
{
    struct save_req *q = data;
    struct gljob *j = q->j;
    (void)result;
    al_error_free(err);
    j->working = false;
    if (q->log.len)
        gl_trace_append(j, q->log.data, q->log.len);
    al_buf_free(&q->log);
    free(q->dir);
    free(q);
    gl_finish_continue(j);
}

bool gl_cache_save(struct gljob *j)
{
    struct gitlab *g = j->g;
    const struct gitlab_job *p = j->payload;
    if (!p || !g->cache || !j->submitted || j->gone || j->shutdown)
        return false;
    bool any = false;
    for (size_t i = 0; i < p->n_caches; i++)
        any |= gitlab_cache_saves(&p->caches[i], j->succeeded);
    if (!any)
        return false;
    _cleanup_free_ char *job_dir = engine_job_dir(g->e, j->engine_id);
    struct save_req *q = calloc(1, sizeof(*q));
    if (!q || !job_dir || !(q->dir = al_path_join(job_dir, "artifacts"))) {
        free(q);
        return false;
    }
    q->j = j;
    q->store = g->cache;
    q->succeeded = j->succeeded;
    if (al_work_queue(g->loop, save_work, save_done, q, NULL) < 0) {
        free(q->dir);
        free(q);
        return false;
    }
    j->working = true;
    return true;
}
