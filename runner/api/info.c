#include "runner/api/info.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runner/base/fsspace.h"
#include "runner/base/log.h"
#include "runner/base/util.h"
#include "images/catalog.h"
#include "runner/api/api.h"
#include "runner/api/batches.h"
#include "runner/api/json.h"
#include "runner/api/metrics.h"
#include "runner/api/status_page.h"

#define MAX_BACKENDS  64
#define STATUS_RECENT 20
#define STATUS_ACTIVE 200

static int gen_backends(yajl_gen g, struct engine *e)
{
    struct engine_backend_status bs[MAX_BACKENDS];
    size_t n = engine_backends(e, bs, MAX_BACKENDS);
    if (n > MAX_BACKENDS)
        n = MAX_BACKENDS;
    int r = json_open_array(g);
    for (size_t i = 0; i < n; i++) {
        const struct backend_capacity *c = &bs[i].cap;
        r |= json_open_map(g);
        r |= json_kv_str(g, "name", bs[i].name);
        r |= json_kv_str(g, "type", bs[i].type);
        r |= json_kv_bool(g, "healthy", c->healthy);
        r |= json_kv_str(g, "reason", c->healthy || !c->reason[0] ? NULL : c->reason);
        r |= json_kv_str(g, "accel", c->accel[0] ? c->accel : NULL);
        r |= json_kv_str(g, "accel_reason", c->accel_reason[0] ? c->accel_reason : NULL);
        r |= json_kv_int(g, "max_vms", c->max_vms);
        r |= json_kv_int(g, "used_vms", c->used_vms);
        r |= json_kv_int(g, "vcpus", c->vcpus);
        r |= json_kv_int(g, "used_vcpus", c->used_vcpus);
        r |= json_kv_uint(g, "memory", c->memory);
        r |= json_kv_uint(g, "used_memory", c->used_memory);
        r |= json_kv_uint(g, "jobs_started", bs[i].jobs_started);
        r |= json_kv_uint(g, "warm_ready", bs[i].warm_ready);
        r |= json_kv_uint(g, "warm_booting", bs[i].warm_booting);
        r |= json_kv_str(g, "last_fallback", bs[i].last_fallback[0] ? bs[i].last_fallback : NULL);
        r |= json_close_map(g);
    }
    return r | json_close_array(g);
}

static void reply_gen(struct api_req *r, int status, yajl_gen g, int rc)
{
    if (rc || !g)
        api_reply_error(r, 500, "internal", "generating the response failed");
    else
        json_reply(r, status, g);
}

void api_healthz(struct api_ctx *ctx, struct api_req *r, const struct route_match *m)
{
    (void)m;
    unsigned queued = 0, running = 0;
    engine_counts(ctx->engine, &queued, &running);
    struct engine_backend_status bs[MAX_BACKENDS];
    size_t n = engine_backends(ctx->engine, bs, MAX_BACKENDS);
    unsigned healthy = 0;
    for (size_t i = 0; i < n && i < MAX_BACKENDS; i++)
        healthy += bs[i].cap.healthy;
    /* a full state dir: logs, artifacts and the database cannot grow */
    struct al_fs_space space = {0};
    bool space_known = al_fs_space(ctx->cfg->agent.state_dir, &space) == 0;
    _cleanup_json_gen_ yajl_gen g = json_gen_new();
    int rc = g ? 0 : -ENOMEM;
    if (g) {
        rc |= json_open_map(g);
        rc |= json_kv_str(g, "status",
                          ctx->stopping                             ? "stopping"
                          : ctx->n_source_failures > 0 || space.low ? "degraded"
                                                                    : "ok");
        rc |= json_kv_str(g, "version", AL_VERSION);
        rc |= json_kv_int(g, "uptime_s", (al_now_wall_ms() - ctx->started_ms) / 1000);
        rc |= json_kv_int(g, "queued", queued);
        rc |= json_kv_int(g, "running", running);
        rc |= json_kv_int(g, "backends", (int64_t)n);
        rc |= json_kv_int(g, "backends_healthy", healthy);
        if (space_known) {
            rc |= json_key(g, "state_dir");
            rc |= json_open_map(g);
            rc |= json_kv_uint(g, "free_bytes", space.free_bytes);
            rc |= json_kv_uint(g, "total_bytes", space.total_bytes);
            rc |= json_kv_bool(g, "low", space.low);
            rc |= json_close_map(g);
        }
        rc |= json_key(g, "sources_failed");
        rc |= json_open_array(g);
        for (size_t i = 0; i < ctx->n_source_failures; i++) {
            rc |= json_open_map(g);
            rc |= json_kv_str(g, "name", ctx->source_failures[i].name);
            rc |= json_kv_str(g, "reason", ctx->source_failures[i].reason);
            rc |= json_close_map(g);
        }
        rc |= json_close_array(g);
        rc |= json_close_map(g);
    }
    reply_gen(r, ctx->stopping ? 503 : 200, g, rc);
}

/* The sources' own gauges (api_source_status()). */
/* Each pool's flavour (as labels of an info metric), queue and warm VMs. */
static int render_pool_metrics(struct api_ctx *ctx, struct al_buf *o)
{
    const struct config *cfg = ctx->cfg;
    int r = 0;
    r |= al_buf_puts(o, "# HELP agentlab_pool_info A pool's flavour: image, vCPUs and memory of "
                        "its jobs and warm VMs.\n# TYPE agentlab_pool_info gauge\n");
    for (size_t i = 0; i < cfg->n_pools; i++) {
        const struct config_pool *p = &cfg->pools[i];
        r |= al_buf_printf(o,
                           "agentlab_pool_info{pool=\"%s\",image=\"%s\",cpus=\"%d\","
                           "memory_mb=\"%" PRIu64 "\"} 1\n",
                           p->name, p->image, p->cpus, p->memory >> 20);
    }
    static const struct {
        const char *name, *help;
    } gauges[] = {
            {"agentlab_pool_queued", "Jobs of the pool waiting for capacity."},
            {"agentlab_pool_running", "Jobs of the pool with a VM."},
            {"agentlab_pool_warm_target", "Warm VMs the pool wants now."},
            {"agentlab_pool_warm_ready_vms", "Warm VMs of the pool booted and waiting."},
            {"agentlab_pool_warm_booting_vms", "Warm VMs of the pool still booting."},
    };
    for (size_t k = 0; k < ARRAY_SIZE(gauges); k++) {
        r |= al_buf_printf(o, "# HELP %s %s\n# TYPE %s gauge\n", gauges[k].name, gauges[k].help,
                           gauges[k].name);
        for (size_t i = 0; i < cfg->n_pools; i++) {
            const struct config_pool *p = &cfg->pools[i];
            unsigned queued = 0, running = 0, ready = 0, booting = 0;
            engine_pool_counts(ctx->engine, p->name, &queued, &running);
            engine_warm_counts(ctx->engine, p->name, &ready, &booting);
            long v = k == 0   ? (long)queued
                     : k == 1 ? (long)running
                     : k == 2 ? (long)engine_warm_target(p, al_now_wall_ms())
                     : k == 3 ? (long)ready
                              : (long)booting;
            r |= al_buf_printf(o, "%s{pool=\"%s\"} %ld\n", gauges[k].name, p->name, v);
        }
    }
    return r ? -ENOMEM : 0;
}

static int render_source_metrics(struct api_ctx *ctx, struct al_buf *o)
{
    if (!ctx->n_reporters)
        return 0;
    int r = 0;
    int64_t now = al_now_wall_ms();
    r |= al_buf_puts(o, "# HELP agentlab_source_gauge What a source reports about itself "
                        "(a scale set's statistics, say).\n# TYPE agentlab_source_gauge gauge\n");
    for (size_t i = 0; i < ctx->n_reporters; i++) {
        struct api_source_status st = {0};
        ctx->reporters[i].fn(ctx->reporters[i].data, &st);
        for (size_t k = 0; k < st.n_gauges && k < API_SOURCE_GAUGES; k++)
            r |= al_buf_printf(o,
                               "agentlab_source_gauge{source=\"%s\",kind=\"%s\",name=\"%s\"} "
                               "%" PRId64 "\n",
                               ctx->reporters[i].name, ctx->reporters[i].kind, st.gauges[k].name,
                               st.gauges[k].value);
    }
    r |= al_buf_puts(o, "# HELP agentlab_source_last_message_age_seconds Seconds since the "
                        "source last heard from its forge (-1: never).\n# TYPE "
                        "agentlab_source_last_message_age_seconds gauge\n");
    for (size_t i = 0; i < ctx->n_reporters; i++) {
        struct api_source_status st = {0};
        ctx->reporters[i].fn(ctx->reporters[i].data, &st);
        r |= al_buf_printf(o,
                           "agentlab_source_last_message_age_seconds{source=\"%s\"} %" PRId64 "\n",
                           ctx->reporters[i].name,
                           st.last_message_wall_ms ? (now - st.last_message_wall_ms) / 1000 : -1);
    }
    return r ? -ENOMEM : 0;
}

static int gen_sources(yajl_gen g, struct api_ctx *ctx)
{
    int rc = json_open_array(g);
    int64_t now = al_now_wall_ms();
    for (size_t i = 0; i < ctx->n_reporters; i++) {
        struct api_source_status st = {0};
        ctx->reporters[i].fn(ctx->reporters[i].data, &st);
        rc |= json_open_map(g);
        rc |= json_kv_str(g, "name", ctx->reporters[i].name);
        rc |= json_kv_str(g, "kind", ctx->reporters[i].kind);
        rc |= json_kv_str(g, "state", st.state);
        rc |= json_kv_int(g, "last_message_age_s",
                          st.last_message_wall_ms ? (now - st.last_message_wall_ms) / 1000 : -1);
        rc |= json_key(g, "gauges");
        rc |= json_open_map(g);
        for (size_t k = 0; k < st.n_gauges && k < API_SOURCE_GAUGES; k++)
            rc |= json_kv_int(g, st.gauges[k].name, st.gauges[k].value);
        rc |= json_close_map(g);
        rc |= json_close_map(g);
    }
    rc |= json_close_array(g);
    return rc;
}

void api_metrics(struct api_ctx *ctx, struct api_req *r, const struct route_match *m)
{
    (void)m;
    _cleanup_buf_ struct al_buf out = AL_BUF_INIT;
    if (api_metrics_render(ctx->metrics, ctx->engine, ctx->server, ctx->cfg->agent.state_dir,
                           &out) < 0 ||
        render_pool_metrics(ctx, &out) < 0 || render_source_metrics(ctx, &out) < 0 ||
        api_batches_metrics(ctx, &out) < 0) {
        api_reply_error(r, 500, "internal", "rendering metrics failed");
        return;
    }
    api_reply(r, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, out.data, out.len);
}

void api_pools(struct api_ctx *ctx, struct api_req *r, const struct route_match *m)
{
    (void)m;
    const struct config *cfg = ctx->cfg;
    unsigned queued = 0, running = 0;
    engine_counts(ctx->engine, &queued, &running);
    _cleanup_json_gen_ yajl_gen g = json_gen_new();
    int rc = g ? 0 : -ENOMEM;
    if (g) {
        rc |= json_open_map(g);
        rc |= json_key(g, "backends");
        rc |= gen_backends(g, ctx->engine);
        rc |= json_key(g, "pools");
        rc |= json_open_array(g);
        for (size_t i = 0; i < cfg->n_pools; i++) {
            const struct config_pool *p = &cfg->pools[i];
            rc |= json_open_map(g);
            rc |= json_kv_str(g, "name", p->name);
            rc |= json_kv_bool(g, "default", streq(p->name, cfg->agent.pool));
            rc |= json_key(g, "backends");
            rc |= json_open_array(g);
            if (p->backends && p->backends[0]) {
                for (char **b = p->backends; *b; b++)
                    rc |= json_str(g, *b);
            } else {
                for (size_t k = 0; k < cfg->n_backends; k++)
                    rc |= json_str(g, cfg->backends[k].name);
            }
            rc |= json_close_array(g);
            rc |= json_key(g, "labels");
            rc |= json_open_array(g);
            for (char **l = p->labels; l && *l; l++)
                rc |= json_str(g, *l);
            rc |= json_close_array(g);
            rc |= json_kv_str(g, "image", p->image);
            rc |= json_kv_int(g, "cpus", p->cpus);
            rc |= json_kv_uint(g, "memory_mb", p->memory >> 20);
            rc |= json_kv_uint(g, "disk_gb", p->disk >> 30);
            if (p->max_cpus)
                rc |= json_kv_int(g, "max_cpus", p->max_cpus);
            else
                rc |= json_kv_null(g, "max_cpus");
            if (p->max_memory)
                rc |= json_kv_uint(g, "max_memory_mb", p->max_memory >> 20);
            else
                rc |= json_kv_null(g, "max_memory_mb");
            rc |= json_key(g, "allowed_images");
            rc |= json_open_array(g);
            for (char **a = p->allowed_images; a && *a; a++)
                rc |= json_str(g, *a);
            rc |= json_close_array(g);
            unsigned pq = 0, pr = 0;
            engine_pool_counts(ctx->engine, p->name, &pq, &pr);
            rc |= json_kv_uint(g, "queued", pq);
            rc |= json_kv_uint(g, "running", pr);
            unsigned ready = 0, booting = 0;
            engine_warm_counts(ctx->engine, p->name, &ready, &booting);
            rc |= json_kv_int(g, "warm", engine_warm_target(p, al_now_wall_ms()));
            rc |= json_kv_uint(g, "warm_ready", ready);
            rc |= json_kv_uint(g, "warm_booting", booting);
            rc |= json_close_map(g);
        }
        rc |= json_close_array(g);
        rc |= json_key(g, "sources");
        rc |= gen_sources(g, ctx);
        rc |= json_kv_int(g, "queued", queued);
        rc |= json_kv_int(g, "running", running);
        rc |= json_close_map(g);
    }
    reply_gen(r, 200, g, rc);
}

/* A host's images: what the backend listed on it (a remote host), else the
 * daemon's catalogue, whose files a local host's VMs read. */
static int gen_host_images(yajl_gen g, const struct backend_host_info *h,
                           struct image_info *const *cat, size_t n_cat, const char *cat_error)
{
    int r = 0;
    if (h->images_listed) {
        r |= json_kv_str(g, "images_source", "host storage pool");
        if (h->images_age_ms >= 0)
            r |= json_kv_int(g, "images_age_ms", h->images_age_ms);
        else
            r |= json_kv_null(g, "images_age_ms");
        r |= json_kv_str(g, "images_error", h->images_error[0] ? h->images_error : NULL);
        r |= json_key(g, "images");
        r |= json_open_array(g);
        for (size_t i = 0; i < h->n_images; i++) {
            const struct backend_host_image *x = &h->images[i];
            r |= json_open_map(g);
            r |= json_kv_str(g, "name", x->image);
            r |= json_kv_str(g, "role", x->role);
            r |= json_kv_str(g, "sha256", x->sha256);
            r |= json_kv_uint(g, "size", x->size);
            r |= json_kv_str(g, "volume", x->volume);
            r |= json_close_map(g);
        }
        return r | json_close_array(g);
    }
    r |= json_kv_str(g, "images_source", "local files");
    r |= json_kv_null(g, "images_age_ms");
    r |= json_kv_str(g, "images_error", cat_error);
    r |= json_key(g, "images");
    r |= json_open_array(g);
    for (size_t i = 0; i < n_cat; i++) {
        r |= json_open_map(g);
        r |= json_kv_str(g, "name", cat[i]->name);
        r |= json_kv_str(g, "role", "disk");
        r |= json_kv_str(g, "sha256", cat[i]->sha256 && *cat[i]->sha256 ? cat[i]->sha256 : NULL);
        r |= json_close_map(g);
    }
    return r | json_close_array(g);
}

void api_hosts(struct api_ctx *ctx, struct api_req *r, const struct route_match *m)
{
    (void)m;
    struct engine_host *hosts = calloc(MAX_BACKENDS, sizeof(*hosts));
    if (!hosts) {
        api_reply_error(r, 500, "internal", "out of memory");
        return;
    }
    size_t n = engine_hosts(ctx->engine, hosts, MAX_BACKENDS);
    if (n > MAX_BACKENDS)
        n = MAX_BACKENDS;
    /* the catalogue, for the local hosts (read once, only when one needs it) */
    struct image_info **cat = NULL;
    size_t n_cat = 0;
    bool cat_read = false;
    _cleanup_error_ struct al_error *cat_err = NULL;
    _cleanup_json_gen_ yajl_gen g = json_gen_new();
    int rc = g ? 0 : -ENOMEM;
    if (g) {
        rc |= json_open_map(g);
        rc |= json_key(g, "hosts");
        rc |= json_open_array(g);
        for (size_t i = 0; i < n; i++) {
            const struct engine_backend_status *st = &hosts[i].st;
            const struct backend_capacity *c = &st->cap;
            const struct backend_host_info *h = &hosts[i].info;
            rc |= json_open_map(g);
            rc |= json_kv_str(g, "name", st->name);
            rc |= json_kv_str(g, "type", st->type);
            rc |= json_kv_str(g, "uri", h->uri[0] ? h->uri : NULL);
            rc |= json_kv_str(g, "transport", h->transport[0] ? h->transport : NULL);
            rc |= json_kv_bool(g, "reachable", h->reachable);
            rc |= json_kv_str(g, "error", h->error[0] ? h->error : NULL);
            rc |= json_kv_bool(g, "healthy", c->healthy);
            rc |= json_kv_str(g, "reason", c->healthy || !c->reason[0] ? NULL : c->reason);
            rc |= json_kv_str(g, "accel", c->accel[0] ? c->accel : NULL);
            rc |= json_kv_str(g, "accel_reason", c->accel_reason[0] ? c->accel_reason : NULL);
            rc |= json_kv_int(g, "max_vms", c->max_vms);
            rc |= json_kv_int(g, "used_vms", c->used_vms);
            rc |= json_kv_int(g, "vcpus", c->vcpus);
            rc |= json_kv_int(g, "used_vcpus", c->used_vcpus);
            rc |= json_kv_uint(g, "memory", c->memory);
            rc |= json_kv_uint(g, "used_memory", c->used_memory);
            rc |= json_kv_uint(g, "warm_ready", st->warm_ready);
            rc |= json_kv_uint(g, "warm_booting", st->warm_booting);
            if (streq(st->type, "libvirt") || h->images_listed) {
                if (!h->images_listed && !cat_read) {
                    cat_read = true;
                    if (image_list(ctx->cfg->agent.state_dir, &cat, &n_cat, &cat_err) < 0)
                        n_cat = 0;
                }
                rc |= gen_host_images(g, h, cat, n_cat, cat_err ? al_error_message(cat_err) : NULL);
            } else {
                /* Proxmox: templates, not image files */
                rc |= json_kv_null(g, "images_source");
                rc |= json_kv_null(g, "images_age_ms");
                rc |= json_kv_null(g, "images_error");
                rc |= json_key(g, "images");
                rc |= json_open_array(g);
                rc |= json_close_array(g);
            }
            rc |= json_close_map(g);
        }
        rc |= json_close_array(g);
        rc |= json_close_map(g);
    }
    image_info_list_free(cat, n_cat);
    engine_hosts_clear(hosts, n);
    free(hosts);
    reply_gen(r, 200, g, rc);
}

void api_images(struct api_ctx *ctx, struct api_req *r, const struct route_match *m)
{
    (void)m;
    struct image_info **v = NULL;
    size_t n = 0;
    _cleanup_error_ struct al_error *err = NULL;
    _cleanup_free_ char *json = NULL;
    if (image_list(ctx->cfg->agent.state_dir, &v, &n, &err) < 0 ||
        image_info_to_json(v, n, true, &json, &err) < 0) {
        image_info_list_free(v, n);
        api_reply_error(r, 500, "internal", "listing images: %s", al_error_message(err));
        return;
    }
    image_info_list_free(v, n);
    _cleanup_json_gen_ yajl_gen g = json_gen_new();
    int rc = g ? 0 : -ENOMEM;
    if (g) {
        rc |= json_open_map(g);
        rc |= json_key(g, "images");
        rc |= json_raw_value(g, json);
        rc |= json_close_map(g);
    }
    reply_gen(r, 200, g, rc);
}

void api_vms(struct api_ctx *ctx, struct api_req *r, const struct route_match *m)
{
    (void)m;
    struct store_vm *vms = NULL;
    size_t n = 0;
    _cleanup_error_ struct al_error *err = NULL;
    if (store_vm_list(ctx->store, NULL, &vms, &n, &err) < 0) {
        api_reply_error(r, 500, "internal", "listing VMs: %s", al_error_message(err));
        return;
    }
    _cleanup_json_gen_ yajl_gen g = json_gen_new();
    int rc = g ? 0 : -ENOMEM;
    if (g) {
        rc |= json_open_map(g);
        rc |= json_key(g, "vms");
        rc |= json_open_array(g);
        for (size_t i = 0; i < n; i++) {
            struct store_job *job = NULL;
            struct al_error *jerr = NULL;
            if (store_job_get(ctx->store, vms[i].job_id, &job, &jerr) < 0)
                jerr = al_error_free(jerr);
            rc |= json_open_map(g);
            rc |= json_kv_str(g, "backend", vms[i].backend);
            rc |= json_kv_str(g, "name", vms[i].vm_name);
            rc |= json_kv_str(g, "job", vms[i].job_id);
            rc |= json_kv_int(g, "attempt", vms[i].attempt);
            rc |= json_kv_str(g, "job_state", job ? job_state_to_string(job->state) : NULL);
            rc |= json_kv_time(g, "created", vms[i].created_ms);
            rc |= json_close_map(g);
            store_job_free(job);
        }
        /* warm VMs: no job yet; they belong to a pool */
        struct engine_warm_info warm[64];
        size_t nw = engine_warm_list(ctx->engine, warm, ARRAY_SIZE(warm));
        for (size_t i = 0; i < nw && i < ARRAY_SIZE(warm); i++) {
            rc |= json_open_map(g);
            rc |= json_kv_str(g, "backend", warm[i].backend);
            rc |= json_kv_str(g, "name", warm[i].name);
            rc |= json_kv_str(g, "job", NULL);
            rc |= json_kv_str(g, "warm_pool", warm[i].pool);
            rc |= json_kv_str(g, "warm_state", warm[i].ready ? "ready" : "booting");
            rc |= json_kv_int(g, "age_s", (int64_t)(warm[i].age_ms / 1000));
            rc |= json_close_map(g);
        }
        rc |= json_close_array(g);
        rc |= json_close_map(g);
    }
    store_vms_free(vms, n);
    reply_gen(r, 200, g, rc);
}

/* The active jobs of one state, with when their current attempt started. */
static int gen_active(struct api_ctx *ctx, yajl_gen g, enum job_state state, size_t *budget)
{
    struct store_job_filter f = {.state = state,
                                 .source = JOB_SOURCE_NONE,
                                 .limit = (unsigned)*budget,
                                 .oldest_first = true};
    struct store_job_page page = {0};
    struct al_error *err = NULL;
    if (!*budget)
        return 0;
    if (store_job_list(ctx->store, &f, &page, &err) < 0) {
        al_error_free(err);
        return -EIO;
    }
    int rc = 0;
    for (size_t i = 0; i < page.n; i++) {
        struct store_attempt *att = NULL;
        size_t n_att = 0;
        if (store_attempts_list(ctx->store, page.jobs[i]->id, &att, &n_att, &err) < 0)
            err = al_error_free(err);
        rc |= json_open_map(g);
        rc |= json_key(g, "job");
        rc |= json_job(g, page.jobs[i], false);
        rc |= json_kv_str(g, "backend", n_att ? att[n_att - 1].backend : NULL);
        rc |= json_kv_str(g, "vm", n_att ? att[n_att - 1].vm_name : NULL);
        rc |= json_kv_time(g, "attempt_started", n_att ? att[n_att - 1].started_ms : 0);
        rc |= json_close_map(g);
        store_attempts_free(att, n_att);
    }
    *budget -= page.n;
    store_job_page_clear(&page);
    return rc;
}

void api_status(struct api_ctx *ctx, struct api_req *r, const struct route_match *m)
{
    (void)m;
    unsigned queued = 0, running = 0;
    engine_counts(ctx->engine, &queued, &running);
    _cleanup_json_gen_ yajl_gen g = json_gen_new();
    int rc = g ? 0 : -ENOMEM;
    if (!g) {
        reply_gen(r, 500, g, rc);
        return;
    }
    rc |= json_open_map(g);
    rc |= json_kv_str(g, "version", AL_VERSION);
    rc |= json_kv_time(g, "now", al_now_wall_ms());
    rc |= json_kv_int(g, "queued", queued);
    rc |= json_kv_int(g, "running", running);
    rc |= json_key(g, "backends");
    rc |= gen_backends(g, ctx->engine);
    rc |= json_key(g, "active");
    rc |= json_open_array(g);
    size_t budget = STATUS_ACTIVE;
    static const enum job_state active[] = {JOB_STATE_RUNNING, JOB_STATE_BOOTING,
                                            JOB_STATE_PROVISIONING};
    for (size_t i = 0; i < ARRAY_SIZE(active); i++)
        rc |= gen_active(ctx, g, active[i], &budget);
    rc |= json_close_array(g);
    rc |= json_key(g, "recent");
    rc |= json_open_array(g);
    struct store_job_filter f = {
            .state = JOB_STATE_NONE, .source = JOB_SOURCE_NONE, .limit = STATUS_RECENT};
    struct store_job_page page = {0};
    struct al_error *err = NULL;
    if (store_job_list(ctx->store, &f, &page, &err) == 0) {
        for (size_t i = 0; i < page.n; i++)
            rc |= json_job(g, page.jobs[i], false);
        store_job_page_clear(&page);
    } else {
        al_error_free(err);
        rc |= -EIO;
    }
    rc |= json_close_array(g);
    rc |= json_close_map(g);
    reply_gen(r, 200, g, rc);
}

void api_status_page(struct api_ctx *ctx, struct api_req *r, const struct route_match *m)
{
    (void)ctx;
    (void)m;
    size_t len = 0;
    const char *html = status_page_html(&len);
    api_reply(r, 200, "text/html; charset=utf-8",
              "Content-Security-Policy: default-src 'self'; script-src 'unsafe-inline'; "
              "style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'\r\n"
              "Referrer-Policy: no-referrer\r\n",
              html, len);
}

/* ------------------------------------------------------------ gc */

struct pending_gc {
    struct api_ctx *ctx;
    struct api_req *req;
};

static void on_gc_abort(struct api_req *r, void *data)
{
    (void)r;
    struct pending_gc *p = data;
    p->req = NULL;
}

static void on_swept(const struct engine_reconcile_report *rep, void *data)
{
    struct pending_gc *p = data;
    log_info(NULL, "gc through the API: %u VMs destroyed, %u errors", rep->vms_destroyed,
             rep->errors);
    if (p->ctx) {
        p->ctx->gc_pending = NULL;
        api_metrics_add_reconcile(p->ctx->metrics, rep);
    }
    if (p->req) {
        api_req_on_abort(p->req, NULL, NULL);
        _cleanup_json_gen_ yajl_gen g = json_gen_new();
        int rc = g ? 0 : -ENOMEM;
        if (g) {
            rc |= json_open_map(g);
            rc |= json_kv_int(g, "vms_destroyed", rep->vms_destroyed);
            rc |= json_kv_int(g, "dirs_removed", rep->dirs_removed);
            rc |= json_kv_int(g, "errors", rep->errors);
            rc |= json_close_map(g);
        }
        reply_gen(p->req, 200, g, rc);
    }
    free(p);
}

void api_gc(struct api_ctx *ctx, struct api_req *r, const struct route_match *m)
{
    (void)m;
    struct pending_gc *p = calloc(1, sizeof(*p));
    if (!p) {
        api_reply_error(r, 500, "internal", "out of memory");
        return;
    }
    p->ctx = ctx;
    p->req = r;
    api_req_on_abort(r, on_gc_abort, p);
    /* set first: a sweep with nothing to do may finish inside engine_sweep() */
    ctx->gc_pending = p;
    if (engine_sweep(ctx->engine, on_swept, p) < 0) {
        ctx->gc_pending = NULL;
        api_req_on_abort(r, NULL, NULL);
        free(p);
        api_reply_error(r, 409, "busy", "a sweep is already running; try again in a moment");
    }
}

void api_gc_forget(struct api_ctx *ctx)
{
    if (ctx->gc_pending) {
        ctx->gc_pending->ctx = NULL;
        ctx->gc_pending = NULL;
    }
}
