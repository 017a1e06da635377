/* agentlab: the command-line interface.
 *
 * Commands are a table; each has its own --help. Exit codes: 0 success,
 * 1 failure, 2 usage error, 3 agentlabd not reachable, 4 no such job or
 * artifact (for `run`: the workload's status, 124 timeout, 125 agentlab
 * error, 130 cancelled). README "CLI" has the list.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runner/base/log.h"
#include "runner/engine/config.h"
#include "runner/base/version.h"
#include "runner/cli/cli.h"
#include "runner/cli/cmd_job.h"

static void config_usage(FILE *out)
{
    fprintf(out, "Usage: agentlab config show [--config FILE]\n"
                 "       agentlab config keys\n"
                 "\n"
                 "show prints the effective configuration: the file's values over the\n"
                 "built-in defaults, with environment overrides applied. keys lists every\n"
                 "key, tab-separated: section, the backend or source types it applies to,\n"
                 "name, default, description (see agentlab.conf(5)).\n"
                 "\n"
                 "  -c, --config FILE   configuration file (default $AGENTLAB_CONFIG or\n"
                 "                      " AL_CONFIG_DEFAULT_PATH ")\n"
                 "  -h, --help          show this help\n");
}

static int cmd_config(int argc, char **argv)
{
    if (argc < 2) {
        config_usage(stderr);
        return 2;
    }
    bool show = streq(argv[1], "show"), keys = streq(argv[1], "keys");
    if (!show && !keys) {
        if (streq(argv[1], "--help") || streq(argv[1], "-h")) {
            config_usage(stdout);
            return 0;
        }
        fprintf(stderr, "agentlab config: unknown subcommand \"%s\"\n", argv[1]);
        return 2;
    }
    const char *path = NULL;
    for (int i = 2; i < argc; i++) {
        if (show && (streq(argv[i], "--config") || streq(argv[i], "-c")) && i + 1 < argc) {
            path = argv[++i];
        } else if (streq(argv[i], "--help") || streq(argv[i], "-h")) {
            config_usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "agentlab config %s: unexpected argument \"%s\"\n", argv[1], argv[i]);
            return 2;
        }
    }
    if (keys)
        return config_print_keys(stdout) < 0 ? 1 : 0;
    _cleanup_error_ struct al_error *err = NULL;
    _cleanup_config_ struct config *cfg = NULL;
    if (config_load(path, &cfg, &err) < 0) {
        fprintf(stderr, "agentlab: %s\n", al_error_message(err));
        return 1;
    }
    return config_print(cfg, stdout) < 0 ? 1 : 0;
}

static const struct cli_command commands[] = {
        {"run", "run one command in a throwaway VM", cmd_run},
        {"gc", "destroy leftover VMs and disks; recover after a crash", cmd_gc},
        {"config", "show the effective configuration", cmd_config},
        {"job", "submit, list, show, follow, cancel jobs; artifacts; validate specs", cmd_job},
        {"batch", "submit many jobs at once, watch them, collect their results", cmd_batch},
        {"pool", "backends and pools of the running daemon: capacity, health", cmd_pool},
        {"vm", "VMs the running daemon owns", cmd_vm},
        {"host", "hosts behind the daemon's backends: reachable, accelerator, images", cmd_host},
        {"image", "build, list, inspect and remove golden images", cmd_image},
        {"gitlab", "register agentlabd as a GitLab runner", cmd_gitlab},
};

static void usage(FILE *out)
{
    fprintf(out, "Usage: agentlab COMMAND [ARGS...]\n\nCommands:\n");
    for (size_t i = 0; i < ARRAY_SIZE(commands); i++)
        fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\nOptions:\n"
                 "  -V, --version  print the version and git revision\n"
                 "  -h, --help     show this help\n"
                 "\nRun 'agentlab COMMAND --help' for a command's options.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (streq(argv[1], "--help") || streq(argv[1], "-h") || streq(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (streq(argv[1], "--version") || streq(argv[1], "-V")) {
        printf("agentlab %s (git %s)\n", AL_VERSION, al_git_revision);
        return 0;
    }
    for (size_t i = 0; i < ARRAY_SIZE(commands); i++) {
        if (streq(argv[1], commands[i].name))
            return commands[i].run(argc - 1, argv + 1);
    }
    fprintf(stderr, "agentlab: unknown command \"%s\"\n", argv[1]);
    usage(stderr);
    return 2;
}
