/* `agentlab job submit|ls|show|logs|cancel|artifacts`: job commands that
 * talk to a running agentlabd through its control API, and the pieces
 * `agentlab run` reuses when a daemon runs. Each command takes argv with
 * argv[0] = the subcommand and returns the process exit code (CLI_EXIT_*
 * in api_client.h; `submit --follow` returns the job's like `run`). */
#ifndef AL_CLI_JOB_REMOTE_H
#define AL_CLI_JOB_REMOTE_H

#include <stdbool.h>

#include "runner/engine/state.h"
#include "runner/engine/store.h"
#include "runner/cli/api_client.h"

int job_submit(int argc, char **argv);
int job_ls(int argc, char **argv);
int job_show(int argc, char **argv);
int job_logs(int argc, char **argv);
int job_cancel(int argc, char **argv);
int job_artifacts(int argc, char **argv);

/* Packs dir and uploads it; ret_id gets the upload id. 0 or an exit code. */
int cli_upload_workdir(struct cli_api *a, const char *dir, char *ret_id, size_t size);

/* Uploads workdir (may be NULL) as the job's work directory and submits
 * the job spec[0..len). Returns 0 with the daemon's answer in *ret (the
 * caller clears it) and the job's id in ret_id, or an exit code. */
int cli_submit_job(struct cli_api *a, const char *workdir, const char *spec, size_t len,
                   struct cli_resp *ret, char ret_id[STORE_JOB_ID_SIZE]);

/* Streams the job's log to fd until the job ends. With interruptible,
 * SIGINT/SIGTERM cancel the job (once) and the stream goes on until the
 * daemon ends it. Returns 0 or an exit code. */
int cli_follow_logs(struct cli_api *a, const char *id, int fd, bool interruptible);

/* Downloads every artifact of the job under dir (created). Returns 0 or an
 * exit code; *ret_files gets how many were written. */
int cli_download_artifacts(struct cli_api *a, const char *id, const char *dir, unsigned *ret_files);

/* The job's final state, exit code and reason, from GET /v1/jobs/{id}. */
struct cli_job_result {
    enum job_state state;
    bool has_exit_code;
    int exit_code;
    char reason[640];
    int64_t created_ms, updated_ms;
};
int cli_job_result(struct cli_api *a, const char *id, struct cli_job_result *ret);

/* `agentlab run` exit codes, for a job that ended in state: the workload's
 * own (exit_code, when has_exit_code; else 125) for SUCCEEDED/FAILED, 124
 * TIMED_OUT, 130 CANCELED, 125 anything else. */
int cli_run_exit_code(enum job_state state, bool has_exit_code, int exit_code);

/* Whether SIGINT/SIGTERM arrived since cli_install_interrupt(). */
void cli_install_interrupt(void);
bool cli_interrupted(void);

#endif
