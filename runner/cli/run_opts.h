/* The options of `agentlab run`, shared by its two modes: in-process
 * (cmd_run.c) and through a running agentlabd (run_remote.c). */
#ifndef AL_CLI_RUN_OPTS_H
#define AL_CLI_RUN_OPTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "provision/backend.h"

#define MAX_ITEMS 256

struct run_opts {
    const char *image;
    const char *backend;
    int cpus;
    uint64_t memory;
    int64_t timeout_s;
    struct env_pair env[MAX_ITEMS];
    size_t n_env;
    struct env_pair secrets[MAX_ITEMS];
    size_t n_secrets;
    const char *artifacts[MAX_ITEMS + 1];
    size_t n_artifacts;
    const char *artifacts_dir;
    const char *workdir;
    int inject;
    bool json;
    bool quiet;
    bool local;       /* --local: in-process even when agentlabd runs */
    const char *pool; /* --pool */
    const char *socket;
    char **argv;
};

#endif
