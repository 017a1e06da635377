/* `agentlab run` through a running agentlabd: the options become a job spec
 * (source "cli"), submitted over the control API; the output is followed
 * live, Ctrl-C cancels the job, artifacts are downloaded, and the exit
 * code is the same as in-process. */
#ifndef AL_CLI_RUN_REMOTE_H
#define AL_CLI_RUN_REMOTE_H

#include <stdint.h>

#include "runner/base/macro.h"
#include "runner/cli/api_client.h"
#include "runner/cli/run_opts.h"

/* A progress line "agentlab: [  1.23s] ..." on stderr, the seconds since
 * t0 (al_now_mono_ms()); nothing with --quiet. In-process runs use it too. */
void run_say(const struct run_opts *o, uint64_t t0, const char *fmt, ...) _printf_(3, 4);

/* Returns the process exit code. */
int run_remote(const struct run_opts *o, struct cli_api *a);

#endif
