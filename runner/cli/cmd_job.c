#include "runner/cli/cmd_job.h"

#include <fcntl.h>
#include <stdio.h>
#include <string.h>

#include "runner/base/util.h"
#include "runner/engine/spec.h"
#include "runner/cli/cli.h"
#include "runner/cli/cli_opts.h"
#include "runner/cli/job_remote.h"

static void usage(FILE *out)
{
    fprintf(out, "Usage: agentlab job COMMAND [ARGS...]\n"
                 "\n"
                 "  submit FILE|-       submit a job spec to agentlabd; prints the job id\n"
                 "  ls                  list jobs (filters: --state, --label, --source)\n"
                 "  show ID             one job: state, exit code, reason, attempts\n"
                 "  logs [-f] ID        the job's output; -f follows it live\n"
                 "  cancel ID           cancel a queued or running job\n"
                 "  artifacts ID        list the job's artifacts, or --out DIR to download\n"
                 "  validate FILE|-     check a job spec without submitting it\n"
                 "\n"
                 "Run 'agentlab job COMMAND --help' for a command's options.\n");
}

static void validate_usage(FILE *out)
{
    fprintf(out, "Usage: agentlab job validate [--print] FILE|-\n"
                 "\n"
                 "Checks a job spec (JSON, see README \"Job spec\") without submitting it.\n"
                 "Prints \"ok\" and exits 0, or prints the first problem, naming the field,\n"
                 "and exits 1. \"-\" reads standard input. --print also writes the spec as\n"
                 "it would be stored (no secret values).\n");
}

/* Reads at most JOB_SPEC_MAX_BYTES + 1 bytes, so that job_spec_parse()
 * reports an oversized document without us buffering all of it. */
int cli_read_spec(const char *path, char **ret_data, size_t *ret_len, struct al_error **err)
{
    if (!streq(path, "-")) {
        int r = al_read_file(path, JOB_SPEC_MAX_BYTES + 1, ret_data, ret_len, err);
        if (r == -EFBIG) {
            struct al_error *e = *err;
            *err = NULL;
            al_error_free(e);
            return al_error_set(err, E2BIG, "%s: larger than the job spec limit of %u bytes", path,
                                JOB_SPEC_MAX_BYTES);
        }
        return r;
    }
    size_t cap = JOB_SPEC_MAX_BYTES + 2;
    _cleanup_free_ char *data = malloc(cap);
    if (!data)
        return al_error_set(err, ENOMEM, "reading standard input");
    size_t len = 0;
    while (len < cap - 1) {
        ssize_t k = read(STDIN_FILENO, data + len, cap - 1 - len);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return al_error_set_errno(err, errno, "reading standard input");
        }
        if (k == 0)
            break;
        len += (size_t)k;
    }
    data[len] = '\0';
    *ret_data = TAKE_PTR(data);
    *ret_len = len;
    return 0;
}

static int job_validate(int argc, char **argv)
{
    bool print = false;
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        if (streq(argv[i], "--help") || streq(argv[i], "-h")) {
            validate_usage(stdout);
            return 0;
        } else if (streq(argv[i], "--print")) {
            print = true;
        } else if (!path && (argv[i][0] != '-' || streq(argv[i], "-"))) {
            path = argv[i];
        } else {
            fprintf(stderr, "agentlab job validate: unexpected argument \"%s\"\n", argv[i]);
            return 2;
        }
    }
    if (!path) {
        validate_usage(stderr);
        return 2;
    }
    _cleanup_error_ struct al_error *err = NULL;
    _cleanup_free_ char *data = NULL;
    size_t len = 0;
    _cleanup_job_spec_ struct job_spec *spec = NULL;
    _cleanup_free_ char *json = NULL;
    if (cli_read_spec(path, &data, &len, &err) < 0 ||
        job_spec_parse(data, len, 0, &spec, &err) < 0 ||
        (print && job_spec_to_json(spec, &json, NULL, &err) < 0)) {
        printf("%s\n", al_error_message(err));
        return 1;
    }
    if (json)
        printf("%s\n", json);
    printf("ok\n");
    return 0;
}

int cmd_job(int argc, char **argv)
{
    static const struct cli_command subs[] = {
            {"validate", NULL, job_validate},
            {"submit", NULL, job_submit},
            {"ls", NULL, job_ls},
            {"list", NULL, job_ls},
            {"show", NULL, job_show},
            {"logs", NULL, job_logs},
            {"cancel", NULL, job_cancel},
            {"artifacts", NULL, job_artifacts},
    };
    return cli_run_subcommand("job", subs, ARRAY_SIZE(subs), usage, argc, argv);
}
