#include "runner/cli/cli_opts.h"

#include <getopt.h>
#include <string.h>

#include "runner/base/util.h"
#include "runner/cli/api_client.h"
#include "runner/cli/cli.h"

enum {
    OPT_JSON = 256,
    OPT_SOCKET,
    OPT_OFFSET,
    OPT_OUT,
    OPT_WORKDIR,
    OPT_STATE,
    OPT_LABEL,
    OPT_SOURCE,
    OPT_LIMIT,
    OPT_ALL,
};

static const struct {
    struct option opt;
    unsigned needs; /* 0: every command takes it */
} all_opts[] = {
        {{"json", no_argument, NULL, OPT_JSON}, 0},
        {{"socket", required_argument, NULL, OPT_SOCKET}, 0},
        {{"follow", no_argument, NULL, 'f'}, CLI_OPTS_FOLLOW},
        {{"offset", required_argument, NULL, OPT_OFFSET}, CLI_OPTS_OFFSET},
        {{"out", required_argument, NULL, OPT_OUT}, CLI_OPTS_OUT},
        {{"workdir", required_argument, NULL, OPT_WORKDIR}, CLI_OPTS_WORKDIR},
        {{"state", required_argument, NULL, OPT_STATE}, CLI_OPTS_FILTER},
        {{"label", required_argument, NULL, OPT_LABEL}, CLI_OPTS_FILTER},
        {{"source", required_argument, NULL, OPT_SOURCE}, CLI_OPTS_FILTER},
        {{"limit", required_argument, NULL, OPT_LIMIT}, CLI_OPTS_FILTER},
        {{"all", no_argument, NULL, OPT_ALL}, CLI_OPTS_FILTER},
        {{"help", no_argument, NULL, 'h'}, 0},
};

int cli_parse_opts(int argc, char **argv, unsigned flags, void (*usage)(FILE *), struct cli_opts *o)
{
    struct option opts[ARRAY_SIZE(all_opts) + 1] = {{0}};
    size_t n = 0;
    for (size_t i = 0; i < ARRAY_SIZE(all_opts); i++) {
        if ((all_opts[i].needs & flags) == all_opts[i].needs)
            opts[n++] = all_opts[i].opt;
    }
    const char *shorts = flags & CLI_OPTS_FOLLOW ? "fh" : "h";
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, shorts, opts, NULL)) != -1) {
        switch (c) {
        case OPT_JSON:
            o->json = true;
            break;
        case OPT_SOCKET:
            o->socket = optarg;
            break;
        case 'f':
            o->follow = true;
            break;
        case OPT_OFFSET:
            if (al_parse_uint64(optarg, INT64_MAX / 2, &o->offset) < 0)
                goto bad;
            break;
        case OPT_OUT:
            o->out = optarg;
            break;
        case OPT_WORKDIR:
            o->workdir = optarg;
            break;
        case OPT_STATE:
            o->state = optarg;
            break;
        case OPT_LABEL:
            o->label = optarg;
            break;
        case OPT_SOURCE:
            o->source = optarg;
            break;
        case OPT_LIMIT:
            o->limit = optarg;
            break;
        case OPT_ALL:
            o->all = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            goto bad;
        }
    }
    if (optind + (flags & CLI_OPTS_OPERAND ? 1 : 0) != argc)
        goto bad;
    if (flags & CLI_OPTS_OPERAND)
        o->operand = argv[optind];
    return -1;
bad:
    usage(stderr);
    return CLI_EXIT_USAGE;
}

int cli_run_subcommand(const char *group, const struct cli_command *subs, size_t n_subs,
                       void (*usage)(FILE *), int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return CLI_EXIT_USAGE;
    }
    if (streq(argv[1], "--help") || streq(argv[1], "-h")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < n_subs; i++) {
        if (streq(argv[1], subs[i].name))
            return subs[i].run(argc - 1, argv + 1);
    }
    fprintf(stderr, "agentlab %s: unknown subcommand \"%s\"\n", group, argv[1]);
    usage(stderr);
    return CLI_EXIT_USAGE;
}
