/* Batch endpoints of the control API (runner/engine/batch.h):
 *
 *   POST /v1/batches?name=N[&max_parallel=N][&retries=N][&pool=P][&labels=a,b]
 *        body: JSON Lines, one job spec (or {"spec":..,"params":..}) a line;
 *        201 with the batch, or 400 naming the first bad line and field
 *   GET  /v1/batches[?limit=N]          newest first, with counts
 *   GET  /v1/batches/{bid}              one batch with its counts
 *   POST /v1/batches/{bid}/cancel       cancels every job not ended yet
 *   GET  /v1/batches/{bid}/jobs[?after=I][&limit=N][&tail=L]
 *        one row per job in index order: parameters, state, exit code,
 *        duration, the last L lines of output (default 5), artifact paths;
 *        next_after for the next page
 *
 * A batch's counts: passed (SUCCEEDED), failed (FAILED, TIMED_OUT), errors
 * (ERROR, CANCELED), running (past QUEUED, not ended), queued; finished
 * once every job has ended. The answer to a submission comes after
 * engine_sync(), like a job's.
 */
#ifndef AL_API_BATCHES_H
#define AL_API_BATCHES_H

#include "runner/base/buf.h"
#include "runner/api/context.h"

void api_batch_submit(struct api_ctx *ctx, struct api_req *r, const struct route_match *m);
void api_batch_list(struct api_ctx *ctx, struct api_req *r, const struct route_match *m);
void api_batch_show(struct api_ctx *ctx, struct api_req *r, const struct route_match *m);
void api_batch_cancel(struct api_ctx *ctx, struct api_req *r, const struct route_match *m);
void api_batch_jobs(struct api_ctx *ctx, struct api_req *r, const struct route_match *m);

/* Appends the metrics of the batches that have not finished, or finished
 * within the last hour (the newest 50 batches at most), to a /metrics page:
 *
 *   agentlab_batch_jobs{batch,name,state}             jobs by state (gauge)
 *   agentlab_batch_jobs_submitted{batch,name}         jobs in the batch
 *   agentlab_batch_throughput_jobs_per_second{batch,name}
 *                                                     ended jobs / time since
 *                                                     submission (to the last
 *                                                     change once finished)
 */
int api_batches_metrics(struct api_ctx *ctx, struct al_buf *out);

#endif
