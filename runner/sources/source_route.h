/* Asking the engine, before a forge's job is taken any further, whether it
 * would run it: the GitHub source before it registers a runner, the GitLab
 * source before it fetches the sources. Loop thread only. */
#ifndef AL_SOURCE_ROUTE_H
#define AL_SOURCE_ROUTE_H

#include "runner/base/error.h"
#include "runner/engine/config.h"
#include "runner/engine/engine.h"
#include "runner/engine/spec.h"

/* Routes spec among src's pools (engine_route) and checks it against the
 * pool it goes to (engine_check: the pool's limits and allowed images, the
 * image, what a backend can hold). spec gets the engine's defaults, but its
 * pool is left as it was, so that engine_submit() with opts.pools =
 * src->pools routes it again, the same way, and records why. On success
 * *ret_pool (may be NULL) is the pool. Errors name the reason: -ENXIO (no
 * pool takes the job), -EINVAL, -ENOMEM. */
int source_check_job(struct engine *e, const struct config_source *src, struct job_spec *spec,
                     const struct config_pool **ret_pool, struct al_error **err);

#endif
