/* The GitHub source as a runner scale set listener (`mode = scaleset`): no
 * inbound webhook, no REST polling; one outbound long poll tells exactly
 * which jobs are available, assigned, started and completed. Each job runs
 * in an ephemeral JIT runner of the scale set, one throwaway VM each.
 *
 * The protocol (shared/github/SCALESET.md):
 *   REST   POST {scope}/actions/runners/registration-token   (PAT or App token)
 *          POST /actions/runner-registration  RemoteAuth <registration token>
 *               -> the Actions Service URL {svc} and an admin token (a JWT),
 *               fetched again whenever it is within 60 s of its exp
 *   {svc}  GET  runnergroups/?groupName=   (runner_group other than default)
 *          GET  runnerscalesets?name=&runnerGroupId=, else POST runnerscalesets
 *          POST runnerscalesets/{id}/sessions {ownerName}
 *               409 (another listener holds it): retried, 2 s doubling to 60 s
 *   {mq}   GET  [?lastMessageId=N]  X-ScaleSetMaxCapacity: max_runners
 *               200 a message, 202 nothing (after ~50 s), 401 -> PATCH the
 *               session (new mq token) and repeat once, 404 -> a new session
 *          DELETE {mq}/{messageId}  before the next GET
 *   {svc}  POST acquirejobs [ids]  with the mq token: JobAvailable ids up to
 *               the free capacity (max_runners, and free VM slots of the pool
 *               beyond its queue); the rest stays available for later
 *          POST generatejitconfig {name, workFolder} per acquired job (and
 *               min_runners idle ones), then engine_submit: the config goes
 *               to the guest only as the secret env ACTIONS_RUNNER_INPUT_JITCONFIG
 *          JobStarted/JobCompleted name the runner: busy, then done; a VM still
 *               up 60 s after its job completed is stopped
 *          DELETE pools/0/agents/{id}  when a runner's VM ended without a job,
 *               or an idle surplus runner is retired
 *          DELETE runnerscalesets/{id}/sessions/{sid}  at stop
 *
 * Crash safety: the ids of registered runners are kept in
 * <state_dir>/github-scaleset-<hash>.runners; at start every runner listed
 * there has no VM here (the engine's reconcile destroyed them) and is
 * deleted. Loop thread only.
 */
#ifndef AL_GITHUB_SCALESET_H
#define AL_GITHUB_SCALESET_H

#include <uv.h>

#include "runner/engine/config.h"
#include "runner/engine/engine.h"
#include "runner/loop/curl_uv.h"
#include "runner/sources/github_scaleset_msg.h"

struct github_scaleset;

/* Starts the listener; errors name the setting. */
int github_scaleset_start(uv_loop_t *loop, struct engine *e, struct al_curl *curl,
                          const struct config *cfg, const struct config_source *src,
                          struct github_scaleset **ret, struct al_error **err);

/* For /metrics and `agentlab pool status`. */
struct github_scaleset_status {
    const char *state;            /* "registering", "session conflict", "polling", ... (static) */
    int64_t last_message_wall_ms; /* 0: none yet */
    struct scaleset_stats stats;  /* the last the service sent */
    unsigned runners_idle;        /* ours: creating or idle */
    unsigned runners_busy;        /* ours: running a job */
    unsigned jobs_waiting;        /* acquired, no runner took them yet */
    unsigned conflicts;           /* 409s in a row at session creation */
    uint64_t messages;            /* messages handled since the start */
};
void github_scaleset_status(const struct github_scaleset *g, struct github_scaleset_status *ret);

/* Stops: the long poll is cancelled, the session deleted (one try, 5 s),
 * then done runs and everything is freed. The VMs are the engine's. */
void github_scaleset_stop(struct github_scaleset *g, void (*done)(void *data), void *data);

#endif
