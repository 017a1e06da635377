/* Jobs a previous agentlabd took from a forge and left queued: what they
 * need to be run and reported (a GitLab job token, a GitHub JIT runner
 * config) lived only in that process's memory, so nobody can serve them. */
#ifndef AL_ORPHANS_H
#define AL_ORPHANS_H

#include <stdbool.h>

#include "runner/engine/engine.h"

/* Cancels every queued job of source type type that ours (may be NULL) does
 * not claim as one of this process's own. Each is logged as "NAME:
 * cancelled: WHY" with its job id; NAME names the source in messages
 * ("gitlab main"). Failures are logged, not returned: a start-up clean-up. */
void orphans_cancel(struct engine *e, enum job_source_type type, const char *name,
                    bool (*ours)(const char *job_id, void *data), void *data, const char *why);

#endif
