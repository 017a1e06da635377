#include "runner/sources/source_route.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int source_check_job(struct engine *e, const struct config_source *src, struct job_spec *spec,
                     const struct config_pool **ret_pool, struct al_error **err)
{
    const struct config_pool *pool = NULL;
    int r = engine_route(e, spec, src->pools, &pool, NULL, 0, err);
    if (r < 0)
        return r;
    /* named for the check only: the submit routes again and says why */
    char *named = spec->pool;
    spec->pool = strdup(pool->name);
    if (!spec->pool) {
        spec->pool = named;
        return al_error_set(err, ENOMEM, "out of memory");
    }
    r = engine_check(e, spec, err);
    free(spec->pool);
    spec->pool = named;
    if (r < 0)
        return r;
    if (ret_pool)
        *ret_pool = pool;
    return 0;
}
