/* One attempt of a job on one backend: launch the VM, enforce the host-side
 * boot and run deadlines, stream and store the (redacted) output, collect
 * artifacts, honour cancellation, and always destroy the VM. The result is
 * reported once, after the VM and everything it owned are gone.
 *
 * Loop thread only. The scheduler (and the in-process `agentlab run`) drive
 * jobs through attempts; retries are new attempts on fresh VMs.
 */
#ifndef AL_ATTEMPT_H
#define AL_ATTEMPT_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "runner/base/error.h"
#include "provision/artifacts.h"
#include "provision/backend.h"

enum attempt_outcome {
    ATTEMPT_SUCCEEDED = 0,
    ATTEMPT_FAILED,    /* the workload exited non-zero */
    ATTEMPT_TIMED_OUT, /* the job's timeout fired */
    ATTEMPT_CANCELED,
    ATTEMPT_ERROR, /* infrastructure: provisioning, boot, channel, guest death */
};

const char *attempt_outcome_to_string(enum attempt_outcome o);

struct attempt_params {
    struct backend *backend;
    /* A ready warm VM of backend to run on (backend_ops.assign) instead of
     * launching a new one; the attempt owns and destroys it either way. */
    struct vm *warm_vm;
    const struct vm_request *req; /* caller-owned; valid until done runs */
    const char *job_dir;          /* exists; gets output.log and artifacts.tar */
    const char *artifacts_dir;    /* unpack artifacts here; NULL = <job_dir>/artifacts */
    int64_t boot_timeout_s;       /* launch -> workload started */
    int64_t run_grace_s;          /* host backstop after the in-guest timeout */
    uint64_t max_log_bytes;       /* 0 = unlimited */
    struct artifact_limits artifact_limits;
};

struct attempt_result {
    enum attempt_outcome outcome;
    int exit_code; /* the workload's status; 124 timeout, 130 canceled, 125 error */
    char reason[640];
    char vm_name[128];
    uint64_t log_bytes;
    bool log_truncated;
    bool have_artifacts;
    struct artifact_summary artifacts;
    struct artifact_index artifact_files; /* what was written, for the store's index */
    /* phase durations in ms: launch -> disk and seed ready, -> VM started,
     * -> workload started (boot), workload run, teardown; and the total */
    uint64_t ms_provision, ms_start, ms_boot, ms_run, ms_cleanup, ms_total;
    /* of ms_provision, microseconds spent in the backend's API (struct
     * vm_result.us_provision_api) */
    uint64_t us_provision_api;
    bool cleanup_failed;
    char cleanup_error[256];
    /* hard limits this attempt ran into (bits of enum al_limit, hardlimits.h);
     * the artifact ones are known only in done, not yet in decided */
    unsigned limits;
    uint64_t throttled_ms; /* the guest channel's rate limit held it back this long */
    /* the accelerator the VM ran under ("kvm", "tcg" or ""), and whether the
     * ERROR was the backend's boot watchdog (no sign of life from the guest):
     * the engine retries that once, under TCG, without using up an attempt */
    char accel[8];
    bool silent_boot;
};

struct attempt;

struct attempt_callbacks {
    void (*phase)(struct attempt *a, enum vm_phase phase, void *data);
    /* Live output, secrets already masked. */
    void (*output)(struct attempt *a, enum vm_stream stream, const char *buf, size_t len,
                   void *data);
    void (*diag)(struct attempt *a, const char *message, void *data);
    /* Once, when the result is known and before the VM is destroyed, so the
     * owner can persist the terminal state first. Timings of the teardown
     * and the artifact summary are not known yet. Optional. */
    void (*decided)(struct attempt *a, const struct attempt_result *r, void *data);
    /* Once, after teardown. The attempt is freed when this returns. */
    void (*done)(struct attempt *a, const struct attempt_result *r, void *data);
};

/* Starts the attempt. On error nothing was created and done will not run. */
int attempt_start(uv_loop_t *loop, const struct attempt_params *p,
                  const struct attempt_callbacks *cb, void *data, struct attempt **ret,
                  struct al_error **err);

/* Cancels at any phase; done follows with ATTEMPT_CANCELED unless the
 * workload had already finished. */
void attempt_cancel(struct attempt *a);

/* The VM's name, or "" before launch. */
const char *attempt_vm_name(const struct attempt *a);

#endif
