/* agentlabd entry point: options, configuration, then the daemon loop. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#include "runner/base/log.h"
#include "runner/engine/config.h"
#include "runner/daemon/daemon.h"
#include "runner/base/version.h"

static void usage(FILE *out)
{
    fprintf(out, "Usage: agentlabd [--config FILE] [--log-level LEVEL]\n"
                 "\n"
                 "Runs the agentlab daemon in the foreground until SIGINT or SIGTERM.\n"
                 "\n"
                 "  -c, --config FILE      configuration file (default $AGENTLAB_CONFIG or\n"
                 "                         " AL_CONFIG_DEFAULT_PATH ")\n"
                 "  -l, --log-level LEVEL  error, warn, info or debug (overrides the file)\n"
                 "  -V, --version          print the version and git revision\n"
                 "  -h, --help             show this help\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
            {"config", required_argument, NULL, 'c'},
            {"log-level", required_argument, NULL, 'l'},
            {"version", no_argument, NULL, 'V'},
            {"help", no_argument, NULL, 'h'},
            {NULL, 0, NULL, 0},
    };
    const char *config_path = NULL;
    const char *level_arg = NULL;
    int c;
    while ((c = getopt_long(argc, argv, "c:l:Vh", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            config_path = optarg;
            break;
        case 'l':
            level_arg = optarg;
            break;
        case 'V':
            printf("agentlabd %s (git %s)\n", AL_VERSION, al_git_revision);
            return 0;
        case 'h':
        default:
            return al_usage_exit(usage, c == 'h');
        }
    }
    if (optind < argc) {
        fprintf(stderr, "agentlabd: unexpected argument \"%s\"\n", argv[optind]);
        return 2;
    }

    _cleanup_error_ struct al_error *err = NULL;
    _cleanup_config_ struct config *cfg = NULL;
    if (config_load(config_path, &cfg, &err) < 0) {
        fprintf(stderr, "agentlabd: %s\n", al_error_message(err));
        return 1;
    }
    enum al_log_level level = (enum al_log_level)cfg->agent.log_level;
    if (level_arg && al_log_level_from_string(level_arg, &level) < 0) {
        fprintf(stderr, "agentlabd: bad --log-level \"%s\": expected error, warn, info or debug\n",
                level_arg);
        return 2;
    }
    al_log_set_level(level);

    if (daemon_run(cfg, &err) < 0) {
        log_error(NULL, "%s", al_error_message(err));
        return 1;
    }
    return 0;
}
