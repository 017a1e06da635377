/* Routing: which pool a job goes to, and what the pool lets it have.
 *
 * One rule for every source. A job that names a pool (spec "pool") goes
 * there. Otherwise a pool matches when every one of its labels is among the
 * job's labels (a pool without labels matches any job: the catch-all); of
 * the matching pools the one with the most labels wins, ties going to the
 * pool first in the file, except that among catch-alls the default pool
 * ([agent] pool) wins. A source may restrict the candidates to its own
 * pools; a source with exactly one pool sends every job there.
 *
 * After routing, route_apply_pool() fills the job's unset image and size
 * from the pool and refuses a job asking more than the pool allows.
 *
 * Pure functions of the configuration: no engine, no I/O.
 */
#ifndef AL_ROUTE_H
#define AL_ROUTE_H

#include <stddef.h>

#include "runner/base/error.h"
#include "runner/engine/config.h"
#include "runner/engine/spec.h"

/* The error code of a job that no pool takes (an unknown named pool, a pool
 * the source does not serve, labels no pool matches): the API answers it
 * with 400 "no_pool". */
#define ROUTE_ENOPOOL ENXIO

#define ROUTE_WHY_SIZE 256

struct route {
    const struct config_pool *pool;
    char why[ROUTE_WHY_SIZE]; /* "labels big matched pool big", "named by the job", ... */
};

/* Routes spec among the pools of c (among: NULL-terminated pool names, or
 * NULL for every pool). On success fills *ret. -ROUTE_ENOPOOL with a
 * message naming the job's labels and the candidate pools with theirs when
 * nothing takes the job; -ENOMEM. */
int route_job(const struct config *c, const struct job_spec *spec, char *const *among,
              struct route *ret, struct al_error **err);

/* Fills spec's unset image, resources.cpus, resources.memory_mb and
 * resources.disk_gb from pool, and checks what the job asks against the
 * pool's max_cpus, max_memory and allowed_images. -EINVAL naming the limit
 * (nothing is changed then), -ENOMEM. */
int route_apply_pool(const struct config_pool *pool, struct job_spec *spec, struct al_error **err);

#endif
