#include "runner/sources/spool.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/base/hardlimits.h"

#define MAX_BATCH 64

struct pending {
    char name[256];
    char id[STORE_JOB_ID_SIZE];
};

struct spool {
    uv_loop_t *loop;
    struct engine *e;
    const struct config_source *src;
    char *dir;
    char *accepted;
    char *rejected;
    uv_fs_event_t watch;
    bool watching;
    uv_timer_t timer;
    struct engine_watch *watch_jobs;
    bool capped;   /* at the cap of live jobs: files wait in the dir */
    bool scanning; /* a batch awaits its sync */
    bool rescan;
    struct pending batch[MAX_BATCH];
    size_t n_batch;
    int closes;
    void (*done)(void *data);
    void *done_data;
    bool stopping;
};

static void scan(struct spool *s);
static void close_handles(struct spool *s);

static void move_to(struct spool *s, const char *name, const char *dest_dir, const char *note_ext,
                    const char *note)
{
    _cleanup_free_ char *from = al_path_join(s->dir, name);
    _cleanup_free_ char *to = al_path_join(dest_dir, name);
    if (!from || !to)
        return;
    if (rename(from, to) < 0) {
        log_error(NULL, "spool %s: moving %s to %s: %s", s->src->name, name, dest_dir,
                  strerror(errno));
        unlink(from); /* never submit it twice */
        return;
    }
    if (!note)
        return;
    _cleanup_free_ char *path = NULL;
    if (asprintf(&path, "%s%s", to, note_ext) < 0)
        return;
    struct al_error *err = NULL;
    size_t len = strlen(note);
    char *line = malloc(len + 2);
    if (line) {
        memcpy(line, note, len);
        line[len] = '\n';
        line[len + 1] = '\0';
        if (al_write_file_atomic(path, line, len + 1, 0644, &err) < 0)
            al_error_free(err);
        free(line);
    }
}

static void on_synced(int result, void *data)
{
    struct spool *s = data;
    for (size_t i = 0; i < s->n_batch; i++) {
        /* Even when the sync failed the job is committed (it survives a
         * daemon crash); only power loss could take it. Moving on beats
         * submitting it twice. */
        if (result < 0)
            log_warn(s->batch[i].id, "spool: could not make the job durable before accepting");
        move_to(s, s->batch[i].name, s->accepted, ".id", s->batch[i].id);
    }
    s->n_batch = 0;
    s->scanning = false;
    if (s->stopping) {
        close_handles(s);
        return;
    }
    if (s->rescan) {
        s->rescan = false;
        scan(s);
    }
}

static bool is_candidate(const char *name)
{
    size_t n = strlen(name);
    return name[0] != '.' && n > 5 && n < 200 && streq(name + n - 5, ".json");
}

static void submit_one(struct spool *s, const char *name)
{
    _cleanup_free_ char *path = al_path_join(s->dir, name);
    if (!path)
        return;
    struct stat st;
    if (lstat(path, &st) < 0 || !S_ISREG(st.st_mode)) {
        move_to(s, name, s->rejected, ".error", "not a regular file");
        return;
    }
    _cleanup_free_ char *data = NULL;
    size_t len = 0;
    struct al_error *err = NULL;
    struct job_spec *spec = NULL;
    int r = al_read_file(path, JOB_SPEC_MAX_BYTES + 1, &data, &len, &err);
    if (r == 0)
        r = job_spec_parse(data, len, 0, &spec, &err);
    if (r == 0) {
        /* the spool is the source, whatever the file claims */
        free(spec->source.id);
        spec->source.type = JOB_SOURCE_SPOOL;
        spec->source.id = strdup(name);
        /* routed among the spool's pools; a refusal lands in rejected/ */
        struct engine_submit opts = {.pools = s->src->pools};
        char id[STORE_JOB_ID_SIZE];
        r = engine_submit(s->e, spec, &opts, id, &err);
        if (r == 0) {
            struct pending *p = &s->batch[s->n_batch++];
            snprintf(p->name, sizeof(p->name), "%s", name);
            memcpy(p->id, id, sizeof(id));
            log_info(id, "spool %s: accepted %s", s->src->name, name);
            return;
        }
    }
    log_warn(NULL, "spool %s: rejected %s: %s", s->src->name, name, al_error_message(err));
    move_to(s, name, s->rejected, ".error", al_error_message(err));
    al_error_free(err);
}

static void scan(struct spool *s)
{
    if (s->stopping)
        return;
    if (s->scanning) {
        s->rescan = true;
        return;
    }
    DIR *d = opendir(s->dir);
    if (!d) {
        log_warn(NULL, "spool %s: cannot read %s: %s", s->src->name, s->dir, strerror(errno));
        return;
    }
    struct dirent *de = NULL;
    bool capped = false;
    while (s->n_batch < MAX_BATCH && (de = readdir(d))) {
        if (!is_candidate(de->d_name))
            continue;
        /* the cap counts every live spool job, also those a restart took
         * back; the rest wait as files until jobs end */
        struct engine_admit a = {.pool = s->src->pool,
                                 .live = engine_live_jobs(s->e, JOB_SOURCE_SPOOL),
                                 .cap = (unsigned)s->src->concurrent};
        if (engine_admit(s->e, &a, NULL, 0) != ENGINE_ADMIT_YES) {
            capped = true;
            break;
        }
        submit_one(s, de->d_name);
    }
    if (capped && !s->capped) {
        limits_hit(AL_LIMIT_SOURCE_JOBS);
        log_info(NULL, "spool %s: %d jobs queued or running (concurrent); the rest wait",
                 s->src->name, s->src->concurrent);
    }
    s->capped = capped;
    bool more = de != NULL && !capped;
    closedir(d);
    if (s->n_batch) {
        s->scanning = true;
        s->rescan = more;
        engine_sync(s->e, on_synced, s);
    }
}

static void on_event(uv_fs_event_t *h, const char *filename, int events, int status)
{
    (void)filename;
    (void)events;
    (void)status;
    scan(h->data);
}

static void on_timer(uv_timer_t *t)
{
    scan(t->data);
}

/* A job ended: when files wait for room, look again right away. */
static void on_job_finished(const char *job_id, enum job_state state,
                            const struct attempt_result *last, void *data)
{
    (void)job_id;
    (void)state;
    (void)last;
    struct spool *s = data;
    if (s->capped && !s->stopping)
        uv_timer_start(&s->timer, on_timer, 0, (uint64_t)s->src->poll_interval_s * 1000u);
}

int spool_start(uv_loop_t *loop, struct engine *e, const struct config_source *src,
                struct spool **ret, struct al_error **err)
{
    struct spool *s = calloc(1, sizeof(*s));
    if (!s)
        return al_error_set(err, ENOMEM, "spool");
    s->loop = loop;
    s->e = e;
    s->src = src;
    s->dir = strdup(src->dir);
    s->accepted = al_path_join(src->dir, "accepted");
    s->rejected = al_path_join(src->dir, "rejected");
    int r;
    if (!s->dir || !s->accepted || !s->rejected) {
        r = al_error_set(err, ENOMEM, "spool");
        goto fail;
    }
    if ((r = al_mkdir_p(s->accepted, 0750, err)) < 0 ||
        (r = al_mkdir_p(s->rejected, 0750, err)) < 0)
        goto fail;
    uv_fs_event_init(loop, &s->watch);
    s->watch.data = s;
    if (uv_fs_event_start(&s->watch, on_event, s->dir, 0) == 0)
        s->watching = true;
    uv_timer_init(loop, &s->timer);
    s->timer.data = s;
    uint64_t ms = (uint64_t)src->poll_interval_s * 1000u;
    uv_timer_start(&s->timer, on_timer, 0, ms);
    static const struct engine_observer obs = {.finished = on_job_finished};
    s->watch_jobs = engine_observe(e, &obs, s);
    log_info(NULL, "spool %s: watching %s", src->name, s->dir);
    *ret = s;
    return 0;
fail:
    free(s->dir);
    free(s->accepted);
    free(s->rejected);
    free(s);
    return r;
}

static void on_closed(uv_handle_t *h)
{
    struct spool *s = h->data;
    if (--s->closes > 0)
        return;
    void (*done)(void *) = s->done;
    void *data = s->done_data;
    free(s->dir);
    free(s->accepted);
    free(s->rejected);
    free(s);
    if (done)
        done(data);
}

static void close_handles(struct spool *s)
{
    s->closes = 2;
    uv_close((uv_handle_t *)&s->watch, on_closed);
    uv_close((uv_handle_t *)&s->timer, on_closed);
}

void spool_stop(struct spool *s, void (*done)(void *data), void *data)
{
    s->stopping = true;
    s->done = done;
    s->done_data = data;
    if (s->watch_jobs) {
        engine_unobserve(s->e, s->watch_jobs);
        s->watch_jobs = NULL;
    }
    uv_timer_stop(&s->timer);
    if (s->watching)
        uv_fs_event_stop(&s->watch);
    /* a batch waiting for its sync must still move its files: on_synced
     * closes the handles then */
    if (!s->scanning)
        close_handles(s);
}
