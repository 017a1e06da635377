/* `agentlab job ...`: job-spec commands of the CLI. */
#ifndef AL_CLI_CMD_JOB_H
#define AL_CLI_CMD_JOB_H

#include <stddef.h>

#include "runner/base/error.h"

/* argv[0] is "job". Returns the process exit code. */
int cmd_job(int argc, char **argv);

/* Reads a job spec from path ("-" = standard input), at most
 * JOB_SPEC_MAX_BYTES + 1 bytes so that an oversized one is reported as such.
 * The caller frees *ret_data. */
int cli_read_spec(const char *path, char **ret_data, size_t *ret_len, struct al_error **err);

#endif
