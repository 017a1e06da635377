/* The GitHub Actions source: ephemeral just-in-time runners, one throwaway
 * VM per job.
 *
 * Demand: workflow_job webhooks (github_hook.h) and/or polling (queued and
 * in-progress workflow runs -> their jobs, with ETags). A job is served
 * when its action is "queued", its repository is in scope (repo, or org)
 * and every one of its labels is among the runners' labels (self-hosted,
 * Linux, X64 and `labels`, compared without case). Each job id is served
 * at most once while a runner made for it lives; deliveries are
 * de-duplicated by X-GitHub-Delivery on top.
 *
 *   POST {scope}/actions/runners/generate-jitconfig
 *        {name: <prefix><random>, runner_group_id, labels, work_folder}
 *        for each served job, while fewer than max_runners runners live
 *        and the pool has a free VM slot beyond the jobs already queued
 *   engine_submit     a job whose script runs <runner_dir>/run.sh with the
 *                     config in the secret env ACTIONS_RUNNER_INPUT_JITCONFIG
 *                     (the runner's --jitconfig input): delivered over the
 *                     guest channel only, in memory and the workload's
 *                     environment in the guest, masked everywhere on the host
 *   workflow_job in_progress / completed naming the runner, or `busy` in
 *                     the runner list: the runner took a job / finished it;
 *                     a VM still up 2 minutes after its job completed is
 *                     stopped
 *   DELETE {scope}/actions/runners/{id}
 *                     when the VM is gone; when the runner took no job
 *                     within runner_idle_timeout (then the VM is stopped);
 *                     when the job it was made for ended elsewhere. 422 (a
 *                     busy runner) means it is running a job: kept.
 *   GET {scope}/actions/runners  every minute and at start: runners with
 *                     this source's name prefix and no live VM (left by a
 *                     crash, say) are deleted
 *
 * Every API call goes through one queue that honours rate limits: a 403 or
 * 429 with Retry-After, or with X-RateLimit-Remaining: 0, stops all calls
 * until then (X-RateLimit-Reset) and the call is repeated; polling pauses
 * while fewer than 100 calls remain. Loop thread only.
 */
#ifndef AL_GITHUB_H
#define AL_GITHUB_H

#include <uv.h>

#include "runner/engine/config.h"
#include "runner/engine/engine.h"
#include "runner/loop/curl_uv.h"

/* order of the `poll` key's values (config.c) */
enum github_poll {
    GITHUB_POLL_AUTO = 0, /* every poll_interval without webhooks, every minute with */
    GITHUB_POLL_ALWAYS,
    GITHUB_POLL_NEVER,
};

/* order of the `mode` key's values (config.c) */
enum github_mode {
    GITHUB_MODE_REST = 0, /* webhooks and/or REST polling: this file */
    GITHUB_MODE_SCALESET, /* a runner scale set: github_scaleset.h */
};

#define GITHUB_DEFAULT_API "https://api.github.com"

struct github;

/* Starts the source: credentials, the webhook listener (when configured),
 * the start-up sweep of leftover runners, polling. Errors name the setting. */
int github_start(uv_loop_t *loop, struct engine *e, struct al_curl *curl, const struct config *cfg,
                 const struct config_source *src, struct github **ret, struct al_error **err);

/* The webhook listener's port, or 0 without one (tests). */
int github_webhook_port(const struct github *g);

/* Stops: the listener closes, polling stops, idle runners are deleted from
 * GitHub (one try each, short timeouts; busy ones are left to the next
 * start's sweep), then done runs and everything is freed. The VMs are the
 * engine's to stop. */
void github_stop(struct github *g, void (*done)(void *data), void *data);

#endif
