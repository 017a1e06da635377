/* `agentlab run` through a running agentlabd: the options become a job spec
 * (source "cli"), submitted over the control API; the output is followed
 * live, Ctrl-C cancels the job, artifacts are downloaded, and the exit
 * code is the same as in-process. */
#ifndef AL_CLI_RUN_REMOTE_H
#define AL_CLI_RUN_REMOTE_H

#include "runner/cli/api_client.h"
#include "runner/cli/run_opts.h"

/* Returns the process exit code. */
int run_remote(const struct run_opts *o, struct cli_api *a);

#endif
