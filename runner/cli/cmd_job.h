/* `agentlab job ...`: job-spec commands of the CLI. */
#ifndef AL_CLI_CMD_JOB_H
#define AL_CLI_CMD_JOB_H

/* argv[0] is "job". Returns the process exit code. */
int cmd_job(int argc, char **argv);

#endif
