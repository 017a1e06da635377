#include "runner/sources/orphans.h"

#include "runner/base/log.h"
#include "runner/engine/store.h"

void orphans_cancel(struct engine *e, enum job_source_type type, const char *name,
                    bool (*ours)(const char *job_id, void *data), void *data, const char *why)
{
    struct store_job_filter f = {
            .state = JOB_STATE_QUEUED, .source = type, .limit = STORE_LIST_MAX};
    struct store_job_page page = {0};
    struct al_error *err = NULL;
    if (store_job_list(engine_store(e), &f, &page, &err) < 0) {
        log_warn(NULL, "%s: listing orphaned jobs: %s", name, al_error_message(err));
        al_error_free(err);
        return;
    }
    for (size_t i = 0; i < page.n; i++) {
        const char *id = page.jobs[i]->id;
        if (ours && ours(id, data))
            continue;
        if (engine_cancel(e, id, &err) == 0)
            log_warn(id, "%s: cancelled: %s", name, why);
        err = al_error_free(err);
    }
    store_job_page_clear(&page);
}
