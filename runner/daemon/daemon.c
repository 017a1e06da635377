#include "runner/daemon/daemon.h"

#include <fcntl.h>
#include <libvirt/libvirt.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "runner/api/api.h"
#include "images/sweep.h"
#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/engine/engine.h"
#include "runner/loop/curl_uv.h"
#include "runner/loop/virt_uv.h"
#include "runner/engine/owner.h"
#include "runner/daemon/sd_notify.h"
#include "runner/sources/github.h"
#include "runner/sources/github_scaleset.h"
#include "runner/sources/gitlab.h"
#include "runner/sources/gitlab_cache.h"
#include "runner/sources/httpq.h"
#include "runner/sources/spool.h"
#include "runner/engine/store.h"

#define MAX_SOURCES 64

struct daemon {
    const struct config *cfg;
    uv_loop_t loop;
    uv_signal_t sigint;
    uv_signal_t sigterm;
    struct al_curl *curl;
    struct store *store;
    struct engine *engine;
    struct api *api;
    char *owner_id;
    /* running sources and how to stop each */
    struct {
        void *handle;
        void (*stop)(void *handle, void (*done)(void *data), void *data);
    } sources[MAX_SOURCES];
    size_t n_sources;
    int stopping_parts;
    bool stopping;
    bool failed; /* stopped because of an error, not a signal */
};

static void on_signal_closed(uv_handle_t *h)
{
    (void)h;
}

/* Last step of the shutdown: everything that is not the engine's. */
static void stop_loop_handles(struct daemon *d)
{
    if (d->curl) {
        al_curl_close(d->curl, NULL, NULL);
        d->curl = NULL;
    }
    al_virt_event_shutdown();
    uv_close((uv_handle_t *)&d->sigint, on_signal_closed);
    uv_close((uv_handle_t *)&d->sigterm, on_signal_closed);
}

static void on_engine_stopped(void *data)
{
    struct daemon *d = data;
    d->engine = NULL;
    log_info(NULL, "engine stopped");
    stop_loop_handles(d);
}

static void on_source_stopped(void *data)
{
    struct daemon *d = data;
    if (--d->stopping_parts > 0)
        return;
    /* sources first, so nothing is submitted while the engine drains */
    if (d->engine)
        engine_stop(d->engine, on_engine_stopped, d);
    else
        stop_loop_handles(d);
}

static void on_api_stopped(void *data)
{
    struct daemon *d = data;
    d->api = NULL;
    on_source_stopped(d);
}

static void daemon_stop(struct daemon *d)
{
    if (d->stopping)
        return;
    d->stopping = true;
    log_info(NULL, "shutting down");
    al_sd_notify("STOPPING=1");
    d->stopping_parts = 1;
    /* the API goes first (with the sources): no new jobs, streams cut */
    if (d->api) {
        /* no status callback into a source that is going away */
        for (size_t i = 0; i < d->cfg->n_sources; i++)
            api_source_status(d->api, d->cfg->sources[i].name, "", NULL, NULL);
        d->stopping_parts++;
        api_stop(d->api, on_api_stopped, d);
    }
    for (size_t i = 0; i < d->n_sources; i++) {
        d->stopping_parts++;
        d->sources[i].stop(d->sources[i].handle, on_source_stopped, d);
    }
    on_source_stopped(d);
}

static void on_signal(uv_signal_t *s, int signum)
{
    struct daemon *d = s->data;
    log_info(NULL, "received %s", strsignal(signum));
    daemon_stop(d);
}

static int prepare_dirs(const struct config *cfg, struct al_error **err)
{
    /* 0711: QEMU runs as another user under qemu:///system and must be able
     * to traverse to images, overlays and channel sockets. */
    int r = al_mkdir_p(cfg->agent.state_dir, 0711, err);
    if (r < 0)
        return r;
    return al_mkdir_p(cfg->agent.run_dir, 0711, err);
}

static void stop_spool(void *h, void (*done)(void *), void *data)
{
    spool_stop(h, done, data);
}

static void stop_httpq(void *h, void (*done)(void *), void *data)
{
    httpq_stop(h, done, data);
}

static void stop_gitlab(void *h, void (*done)(void *), void *data)
{
    gitlab_stop(h, done, data);
}

static void stop_github(void *h, void (*done)(void *), void *data)
{
    github_stop(h, done, data);
}

static void stop_scaleset(void *h, void (*done)(void *), void *data)
{
    github_scaleset_stop(h, done, data);
}

static void scaleset_status(void *data, struct api_source_status *ret)
{
    struct github_scaleset_status s;
    github_scaleset_status(data, &s);
    snprintf(ret->state, sizeof(ret->state), "%s", s.state);
    ret->last_message_wall_ms = s.last_message_wall_ms;
    const struct api_source_gauge g[] = {
            {"jobs_available", s.stats.available},
            {"jobs_acquired", s.stats.acquired},
            {"jobs_assigned", s.stats.assigned},
            {"jobs_running", s.stats.running},
            {"runners_registered", s.stats.registered},
            {"runners_busy", s.stats.busy},
            {"runners_idle", s.stats.idle},
            {"local_runners_idle", s.runners_idle},
            {"local_runners_busy", s.runners_busy},
            {"local_jobs_waiting", s.jobs_waiting},
            {"session_conflicts", s.conflicts},
            {"messages", (int64_t)s.messages},
    };
    memcpy(ret->gauges, g, sizeof(g));
    ret->n_gauges = ARRAY_SIZE(g);
}

static void gitlab_status(void *data, struct api_source_status *ret)
{
    struct gitlab_cache_stats s;
    gitlab_cache_stats(data, &s);
    snprintf(ret->state, sizeof(ret->state), "polling");
    const struct api_source_gauge g[] = {
            {"cache_bytes", (int64_t)s.bytes}, {"cache_archives", (int64_t)s.archives},
            {"cache_hits", (int64_t)s.hits},   {"cache_misses", (int64_t)s.misses},
            {"cache_saves", (int64_t)s.saves}, {"cache_evictions", (int64_t)s.evictions},
    };
    memcpy(ret->gauges, g, sizeof(g));
    ret->n_gauges = ARRAY_SIZE(g);
}

static void on_reconciled(const struct engine_reconcile_report *r, void *data)
{
    struct daemon *d = data;
    if (d->stopping)
        return;
    /* sources start once the engine knows what it has; one that cannot
     * (a bad token file, a bad URL) is reported in /healthz while the
     * others run: stopping would take every source of the farm down */
    size_t failed = 0;
    for (size_t i = 0; i < d->cfg->n_sources && d->n_sources < MAX_SOURCES; i++) {
        const struct config_source *src = &d->cfg->sources[i];
        struct al_error *err = NULL;
        void *h = NULL;
        void (*stop)(void *, void (*)(void *), void *) = NULL;
        int sr = -ENOTSUP;
        if (src->type == SOURCE_SPOOL) {
            struct spool *sp = NULL;
            sr = spool_start(&d->loop, d->engine, src, &sp, &err);
            h = sp;
            stop = stop_spool;
        } else if (src->type == SOURCE_HTTP) {
            struct httpq *hq = NULL;
            sr = httpq_start(&d->loop, d->curl, d->engine, src, &hq, &err);
            h = hq;
            stop = stop_httpq;
        } else if (src->type == SOURCE_GITLAB) {
            struct gitlab *gl = NULL;
            sr = gitlab_start(&d->loop, d->engine, d->curl, d->cfg, src, &gl, &err);
            h = gl;
            stop = stop_gitlab;
            if (sr == 0 && d->api &&
                api_source_status(d->api, src->name, "gitlab", gitlab_status, gl) < 0)
                log_error(NULL, "source %s: out of memory", src->name);
        } else if (src->type == SOURCE_GITHUB && src->github_mode == GITHUB_MODE_SCALESET) {
            struct github_scaleset *ss = NULL;
            sr = github_scaleset_start(&d->loop, d->engine, d->curl, d->cfg, src, &ss, &err);
            h = ss;
            stop = stop_scaleset;
            if (sr == 0 && d->api &&
                api_source_status(d->api, src->name, "github_scaleset", scaleset_status, ss) < 0)
                log_error(NULL, "source %s: out of memory", src->name);
        } else if (src->type == SOURCE_GITHUB) {
            struct github *gh = NULL;
            sr = github_start(&d->loop, d->engine, d->curl, d->cfg, src, &gh, &err);
            h = gh;
            stop = stop_github;
        } else {
            al_error_set(&err, ENOTSUP, "type %s is not supported by this build",
                         source_type_to_string(src->type));
        }
        if (sr == 0) {
            d->sources[d->n_sources].handle = h;
            d->sources[d->n_sources].stop = stop;
            d->n_sources++;
        } else {
            failed++;
            log_error(NULL, "source %s did not start, agentlabd runs without it: %s", src->name,
                      al_error_message(err));
            if (d->api && api_source_failed(d->api, src->name, al_error_message(err)) < 0)
                log_error(NULL, "source %s: out of memory", src->name);
        }
        al_error_free(err);
    }
    struct al_error *err = NULL;
    if (d->api && api_start(d->api, r, &err) < 0) {
        log_error(NULL, "%s", al_error_message(err));
        al_error_free(err);
        d->failed = true;
        daemon_stop(d);
        return;
    }
    log_info(NULL, "agentlabd %s ready%s (state %s, run %s, owner %s)", AL_VERSION,
             failed ? ", degraded: a source did not start (see /healthz)" : "",
             d->cfg->agent.state_dir, d->cfg->agent.run_dir, d->owner_id);
    al_sd_notify(failed ? "READY=1\nSTATUS=degraded: a source did not start (see /healthz)"
                        : "READY=1\nSTATUS=ready");
}

int daemon_run(const struct config *cfg, struct al_error **err)
{
    struct daemon d = {.cfg = cfg};
    _cleanup_close_ int lock_fd = -1;
    int r = prepare_dirs(cfg, err);
    if (r < 0)
        return al_error_wrap(err, "preparing directories");
    r = owner_lock_state_dir(cfg->agent.state_dir, &lock_fd, err);
    if (r < 0)
        return r;
    r = owner_id_for_state_dir(cfg->agent.state_dir, &d.owner_id, err);
    if (r < 0)
        return al_error_wrap(err, "owner id");
    {
        /* what killed image builds left (logged by the sweep); a failure
         * here is not a reason not to run jobs */
        _cleanup_error_ struct al_error *serr = NULL;
        if (image_sweep_builds(cfg->agent.state_dir, NULL, false, NULL, &serr) < 0)
            log_warn(NULL, "sweeping image build leftovers: %s", al_error_message(serr));
    }
    _cleanup_free_ char *db = al_path_join(cfg->agent.state_dir, "agentlab.db");
    if (!db)
        return al_error_set(err, ENOMEM, "database path");
    r = store_open(db, NULL, &d.store, err);
    if (r < 0) {
        free(d.owner_id);
        return r;
    }

    r = uv_loop_init(&d.loop);
    if (r < 0) {
        store_close(d.store);
        free(d.owner_id);
        return al_error_set(err, -r, "uv_loop_init: %s", uv_strerror(r));
    }
    uv_signal_init(&d.loop, &d.sigint);
    uv_signal_init(&d.loop, &d.sigterm);
    d.sigint.data = d.sigterm.data = &d;
    uv_signal_start(&d.sigint, on_signal, SIGINT);
    uv_signal_start(&d.sigterm, on_signal, SIGTERM);
    signal(SIGPIPE, SIG_IGN);

    if (al_curl_global_init() < 0) {
        r = al_error_set(err, EIO, "curl_global_init failed");
        goto out;
    }
    r = al_curl_new(&d.loop, &d.curl, err);
    if (r < 0)
        goto out;
    r = al_virt_event_register(&d.loop, err);
    if (r < 0)
        goto out;
    struct engine_params ep = {
            .loop = &d.loop,
            .cfg = cfg,
            .store = d.store,
            .curl = d.curl,
            .owner_id = d.owner_id,
    };
    r = engine_new(&ep, &d.engine, err);
    if (r < 0)
        goto out;
    /* bound now, so a bad API setting fails the start; serving starts
     * once the reconcile is over */
    struct api_params ap = {.loop = &d.loop, .cfg = cfg, .engine = d.engine};
    r = api_new(&ap, &d.api, err);
    if (r < 0)
        goto out;
    engine_start(d.engine, on_reconciled, &d);
    uv_run(&d.loop, UV_RUN_DEFAULT);
    r = d.failed ? al_error_set(err, EIO, "the control API could not start") : 0;

out:
    daemon_stop(&d);
    uv_run(&d.loop, UV_RUN_DEFAULT);
    al_curl_global_cleanup();
    int cr = uv_loop_close(&d.loop);
    if (cr != 0) {
        log_error(NULL, "event loop still had open handles at shutdown: %s", uv_strerror(cr));
        if (r == 0)
            r = al_error_set(err, EBUSY, "event loop did not close cleanly");
    }
    store_close(d.store);
    free(d.owner_id);
    return r;
}
