/* The options the commands that talk to agentlabd share: --json,
 * --socket PATH, --help and, per command, -f/--follow, --offset N,
 * --out DIR, --workdir DIR, the job list filters and one operand. */
#ifndef AL_CLI_OPTS_H
#define AL_CLI_OPTS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

enum cli_opts_flags {
    CLI_OPTS_FOLLOW = 1u << 0,  /* -f/--follow */
    CLI_OPTS_OUT = 1u << 1,     /* --out DIR */
    CLI_OPTS_OPERAND = 1u << 2, /* exactly one operand; without it, none */
    CLI_OPTS_OFFSET = 1u << 3,  /* --offset N */
    CLI_OPTS_WORKDIR = 1u << 4, /* --workdir DIR */
    CLI_OPTS_FILTER = 1u << 5,  /* --state, --label, --source, --limit N, --all */
};

struct cli_opts {
    const char *socket; /* NULL: the default (see api_client.h) */
    bool json;
    bool follow;
    uint64_t offset;
    const char *out;
    const char *workdir;
    const char *state;
    const char *label;
    const char *source;
    const char *limit; /* as given: the command checks its range */
    bool all;
    const char *operand;
};

/* Parses argv (argv[0] is the command) into o, which the caller zeroes;
 * options not in flags are refused. Returns -1 to go on; 0 after --help
 * (usage on stdout); CLI_EXIT_USAGE after usage on stderr. */
int cli_parse_opts(int argc, char **argv, unsigned flags, void (*usage)(FILE *),
                   struct cli_opts *o);

struct cli_command;

/* Runs `agentlab GROUP SUB ...` (argv[0] is GROUP) through the entry of
 * subs named argv[1], with argv + 1. --help/-h prints usage on stdout and
 * returns 0; no subcommand or an unknown one prints usage on stderr and
 * returns CLI_EXIT_USAGE; otherwise returns what the subcommand returns. */
int cli_run_subcommand(const char *group, const struct cli_command *subs, size_t n_subs,
                       void (*usage)(FILE *), int argc, char **argv);

#endif
