#include "runner/engine/route.h"

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runner/base/buf.h"
#include "runner/base/util.h"

static bool strv_has(char *const *v, const char *s)
{
    for (; v && *v; v++) {
        if (streq(*v, s))
            return true;
    }
    return false;
}

static size_t strv_len(char *const *v)
{
    size_t n = 0;
    while (v && v[n])
        n++;
    return n;
}

/* Every label of the pool is among the job's. */
static bool pool_matches(const struct config_pool *p, char *const *job_labels)
{
    for (char **l = p->labels; l && *l; l++) {
        if (!strv_has(job_labels, *l))
            return false;
    }
    return true;
}

static void words(struct al_buf *b, char *const *v)
{
    if (!v || !*v) {
        al_buf_puts(b, "none");
        return;
    }
    for (size_t i = 0; v[i]; i++) {
        al_buf_puts(b, i ? "," : "");
        al_buf_puts(b, v[i]);
    }
}

static int no_match(const struct config *c, const struct job_spec *spec, char *const *among,
                    struct al_error **err)
{
    _cleanup_buf_ struct al_buf b = AL_BUF_INIT;
    al_buf_puts(&b, "no pool takes a job with labels ");
    words(&b, spec->labels);
    al_buf_puts(&b, " (pools and the labels they need: ");
    bool first = true;
    for (size_t i = 0; i < c->n_pools; i++) {
        const struct config_pool *p = &c->pools[i];
        if (among && !strv_has(among, p->name))
            continue;
        al_buf_puts(&b, first ? "" : "; ");
        al_buf_puts(&b, p->name);
        al_buf_puts(&b, ": ");
        words(&b, p->labels);
        first = false;
    }
    if (al_buf_puts(&b, ")") < 0)
        return al_error_set(err, ENOMEM, "routing the job: out of memory");
    return al_error_set(err, ROUTE_ENOPOOL, "%.*s", (int)b.len, b.data);
}

int route_job(const struct config *c, const struct job_spec *spec, char *const *among,
              struct route *ret, struct al_error **err)
{
    if (among && !*among)
        among = NULL;
    if (spec->pool) {
        const struct config_pool *p = config_find_pool(c, spec->pool);
        if (!p) {
            _cleanup_buf_ struct al_buf b = AL_BUF_INIT;
            for (size_t i = 0; i < c->n_pools; i++) {
                al_buf_puts(&b, i ? ", " : "");
                al_buf_puts(&b, c->pools[i].name);
            }
            return al_error_set(err, ROUTE_ENOPOOL, "pool: no pool named \"%s\" (pools: %.*s)",
                                spec->pool, (int)b.len, b.data ? b.data : "");
        }
        if (among && !strv_has(among, p->name))
            return al_error_set(err, ROUTE_ENOPOOL,
                                "pool: \"%s\" is not among the pools this source serves", p->name);
        ret->pool = p;
        snprintf(ret->why, sizeof(ret->why), "named by the job");
        return 0;
    }
    if (among && strv_len(among) == 1) {
        const struct config_pool *p = config_find_pool(c, among[0]);
        if (!p)
            return al_error_set(err, ROUTE_ENOPOOL, "pool: no pool named \"%s\"", among[0]);
        ret->pool = p;
        snprintf(ret->why, sizeof(ret->why), "the source's pool");
        return 0;
    }
    const struct config_pool *best = NULL;
    size_t best_n = 0;
    for (size_t i = 0; i < c->n_pools; i++) {
        const struct config_pool *p = &c->pools[i];
        if ((among && !strv_has(among, p->name)) || !pool_matches(p, spec->labels))
            continue;
        size_t n = strv_len(p->labels);
        bool default_catch_all = n == 0 && streq(p->name, c->agent.pool);
        if (!best || n > best_n || (n == best_n && n == 0 && default_catch_all)) {
            best = p;
            best_n = n;
        }
    }
    if (!best)
        return no_match(c, spec, among, err);
    ret->pool = best;
    if (best_n == 0) {
        snprintf(ret->why, sizeof(ret->why), "%s",
                 streq(best->name, c->agent.pool) ? "default pool"
                                                  : "no labels needed (catch-all pool)");
        return 0;
    }
    _cleanup_buf_ struct al_buf b = AL_BUF_INIT;
    words(&b, best->labels);
    snprintf(ret->why, sizeof(ret->why), "labels %.*s matched pool %s", (int)b.len,
             b.data ? b.data : "", best->name);
    return 0;
}

int route_apply_pool(const struct config_pool *pool, struct job_spec *spec, struct al_error **err)
{
    const char *image = spec->image ? spec->image : pool->image;
    if (!config_pool_allows_image(pool, image)) {
        _cleanup_buf_ struct al_buf b = AL_BUF_INIT;
        words(&b, pool->allowed_images);
        return al_error_set(err, EINVAL,
                            "image: \"%s\" is not among pool \"%s\"'s allowed_images (%.*s)", image,
                            pool->name, (int)b.len, b.data ? b.data : "");
    }
    int cpus = spec->resources.cpus ? spec->resources.cpus : pool->cpus;
    if (pool->max_cpus && cpus > pool->max_cpus)
        return al_error_set(err, EINVAL, "resources.cpus: %d exceeds pool \"%s\"'s max_cpus %d",
                            cpus, pool->name, pool->max_cpus);
    uint64_t mem_mb =
            spec->resources.memory_mb ? (uint64_t)spec->resources.memory_mb : pool->memory >> 20;
    if (pool->max_memory && mem_mb > pool->max_memory >> 20)
        return al_error_set(err, EINVAL,
                            "resources.memory_mb: %" PRIu64
                            " exceeds pool \"%s\"'s max_memory %" PRIu64 " MiB",
                            mem_mb, pool->name, pool->max_memory >> 20);
    if (mem_mb > JOB_SPEC_MAX_MEMORY_MB || cpus > JOB_SPEC_MAX_CPUS)
        return al_error_set(err, EINVAL,
                            "pool \"%s\": %d vCPUs and %" PRIu64 " MiB are beyond a job's limits",
                            pool->name, cpus, mem_mb);
    if (!spec->image && !(spec->image = strdup(pool->image)))
        return al_error_set(err, ENOMEM, "routing the job: out of memory");
    spec->resources.cpus = cpus;
    spec->resources.memory_mb = (int)mem_mb;
    if (!spec->resources.disk_gb)
        spec->resources.disk_gb = (int)(pool->disk >> 30);
    return 0;
}
