/* The HTTP queue source: any job queue that speaks this small protocol
 * feeds agentlabd (batch farms, nightly evaluation runs). Every request
 * carries "Authorization: Bearer <token from token_file>".
 *
 *   GET  {url}/jobs/next?wait=30
 *        200: the body is a job spec (README "Job spec") whose source.id is
 *             the queue's own id for the job ([A-Za-z0-9._:-], at most 128)
 *        204: nothing to do; the server may hold the request up to `wait`
 *             seconds first (long poll)
 *   POST {url}/jobs/{id}/status   {"state": "QUEUED|PROVISIONING|BOOTING|
 *                                  RUNNING", "job": "<agentlab job id>"}
 *   POST {url}/jobs/{id}/result   {"state": "SUCCEEDED|FAILED|TIMED_OUT|
 *                                  CANCELED|ERROR|REJECTED", "job": ...,
 *                                  "exit_code": N (when the workload ended),
 *                                  "reason": "...", "log_tail": "last 16 KiB of
 *                                  output, secrets masked"}
 *
 * A 410 Gone answer to a status report cancels the job. The queue is polled
 * only while fewer than `concurrent` of its jobs are live. A job is
 * acknowledged (its first status report) only after it is durably queued;
 * reports are retried with backoff until the server answers 2xx (or 4xx,
 * which means it does not want it). Errors back off from 1 s to 60 s.
 */
#ifndef AL_HTTPQ_H
#define AL_HTTPQ_H

#include "runner/engine/config.h"
#include "runner/engine/engine.h"
#include "runner/loop/curl_uv.h"

struct httpq;

int httpq_start(uv_loop_t *loop, struct al_curl *curl, struct engine *e,
                const struct config_source *src, struct httpq **ret, struct al_error **err);

/* Stops polling and reporting; done runs when everything is closed. Reports
 * still pending are dropped (the jobs' states are in the database). */
void httpq_stop(struct httpq *q, void (*done)(void *data), void *data);

#endif
