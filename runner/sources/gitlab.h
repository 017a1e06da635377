/* The GitLab source: agentlabd is a GitLab runner, one throwaway VM per job.
 *
 * It speaks the runner API itself (the runner token never enters a VM):
 *
 *   POST /api/v4/jobs/request      pull a job while the pool has room and
 *                                  fewer than `concurrent` jobs of this
 *                                  source run; X-GitLab-Last-Update is echoed
 *                                  back as last_update (long polling);
 *                                  errors back off exponentially
 *   (host)                         `clone = host`: fetch the commit with the
 *                                  job token (gitlab_checkout.h) and hand
 *                                  it to the VM as its work dir
 *   engine_submit                  the job spec from gitlab_job.h
 *   PATCH /api/v4/jobs/:id/trace   the (redacted) output, Content-Range
 *                                  from the server's offset, at the interval
 *                                  it asks for; 416 resends from its Range
 *   PUT   /api/v4/jobs/:id         keep-alive (state=running) while silent;
 *                                  Job-Status canceling|canceled in any
 *                                  answer cancels the job
 *   (host)                         `cache:` restored from the store before
 *                                  the checkout is packed, saved after the
 *                                  job from what the guest hands back
 *                                  (gitlab_cache.h)
 *   POST  /api/v4/jobs/:id/artifacts  each artifacts[] entry in its format:
 *                                  the `archive` as a zip, reports (junit,
 *                                  ...) as gzip or raw
 *   PUT   /api/v4/jobs/:id         final state, failure_reason, exit_code
 *                                  and the trace's crc32 and size; 202 is
 *                                  retried
 *
 * The terminal state is made durable (engine_sync) before it is reported.
 * Job tokens live in memory only (registered with the redactor); a job
 * left queued by a crashed daemon has lost its token and is cancelled at
 * start. Loop thread only.
 */
#ifndef AL_GITLAB_H
#define AL_GITLAB_H

#include <uv.h>

#include "runner/engine/config.h"
#include "runner/engine/engine.h"
#include "runner/loop/curl_uv.h"

struct gitlab;

/* Starts polling for src (type gitlab). Reads the runner token from
 * src->token_file. */
int gitlab_start(uv_loop_t *loop, struct engine *e, struct al_curl *curl, const struct config *cfg,
                 const struct config_source *src, struct gitlab **ret, struct al_error **err);

/* Stops pulling; jobs still running are cancelled and reported to GitLab as
 * runner_system_failure (one try each); done runs when all is closed. */
void gitlab_stop(struct gitlab *g, void (*done)(void *data), void *data);

struct gitlab_cache_stats;
/* The cache store's counters (all 0 without a cache), for /metrics. */
void gitlab_cache_stats(struct gitlab *g, struct gitlab_cache_stats *ret);

/* Reads a runner token file: one line, surrounding whitespace ignored. */
int gitlab_read_token(const char *path, char **ret_token, struct al_error **err);

#endif
