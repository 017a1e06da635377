/* Prometheus metrics of the daemon, computed from what the engine tells its
 * observers (transitions, attempt results, finished jobs), from
 * engine_backends()/engine_counts() at scrape time, and from the API
 * server's own counters. Rendered in the text exposition format 0.0.4.
 *
 *   agentlab_jobs{state,source}                   live jobs (gauge)
 *   agentlab_jobs_submitted_total{source}
 *   agentlab_jobs_finished_total{state,source}    final results
 *   agentlab_job_phase_duration_seconds{phase}    histogram: provision, start,
 *                                                 boot, run, cleanup, total
 *   agentlab_job_queue_wait_seconds               histogram: QUEUED -> PROVISIONING
 *   agentlab_backend_{up,vms,vms_max,vcpus,vcpus_used,memory_bytes,
 *                     memory_used_bytes}{backend}  gauges
 *   agentlab_backend_jobs_started_total{backend}
 *   agentlab_reconcile_actions_total{action}
 *   agentlab_errors_total{kind}                   job_error, attempt_error,
 *                                                 cleanup_failed, log_truncated,
 *                                                 artifacts_skipped, reconcile,
 *                                                 api_5xx
 *   agentlab_limit_hits_total{limit}              hard limits hit (runner/base/hardlimits.h)
 *   agentlab_channel_throttled_seconds_total      guests slowed by the channel rate limit
 *   agentlab_api_*                                connections, requests by class
 *
 * Loop thread only.
 */
#ifndef AL_API_METRICS_H
#define AL_API_METRICS_H

#include "runner/engine/attempt.h"
#include "runner/base/buf.h"
#include "runner/engine/engine.h"
#include "runner/loop/http_server.h"

struct api_metrics;

/* Starts counting. The live jobs already in the store (QUEUED after a
 * reconcile) are counted in the gauges from the start. */
int api_metrics_new(struct store *store, struct api_metrics **ret, struct al_error **err);
struct api_metrics *api_metrics_free(struct api_metrics *m);

/* Engine observer events, forwarded by the API. */
void api_metrics_on_event(struct api_metrics *m, const struct store_event *ev);
void api_metrics_on_attempt_done(struct api_metrics *m, const struct attempt_result *r);
void api_metrics_on_finished(struct api_metrics *m, const char *job_id, enum job_state state);

/* Adds what a reconcile or sweep did. */
void api_metrics_add_reconcile(struct api_metrics *m, const struct engine_reconcile_report *r);

/* Renders every metric into out. server and state_dir may be NULL. */
int api_metrics_render(struct api_metrics *m, struct engine *e, const struct api_server *server,
                       const char *state_dir, struct al_buf *out);

#endif
