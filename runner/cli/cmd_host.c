/* `agentlab host ls`: the hosts behind the running daemon's backends (where
 * each connects, whether it is reachable, its accelerator, capacity, the
 * golden images it holds, warm VMs), through the control API. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runner/base/macro.h"
#include "runner/cli/api_client.h"
#include "runner/cli/cli.h"
#include "runner/cli/cli_opts.h"
#include "runner/cli/table.h"

static void host_usage(FILE *out)
{
    fprintf(out, "Usage: agentlab host ls [--json] [--socket PATH]\n"
                 "\n"
                 "Lists the host behind each backend of the running agentlabd: its URI\n"
                 "(without credentials), transport (local or remote), whether it is\n"
                 "reachable and the last connection error, the accelerator VMs start under\n"
                 "(kvm, or tcg and why), VMs, vCPUs and memory in use of its capacity, warm\n"
                 "VMs, and the golden images it holds with their sha256: for a remote host\n"
                 "the complete image volumes of its storage pool (read in the background at\n"
                 "most every 30 s), for a local host the daemon's image files.\n");
}

/* "name(role) sha256-prefix" for each image, comma-separated. */
static void images_cell(yajl_val h, char *buf, size_t size)
{
    yajl_val arr = cli_json_array(h, JPATH("images"));
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; arr && i < arr->u.array.len; i++) {
        yajl_val x = arr->u.array.values[i];
        const char *name = cli_json_str(x, JPATH("name"));
        const char *role = cli_json_str(x, JPATH("role"));
        const char *sha = cli_json_str(x, JPATH("sha256"));
        bool disk = !role || streq(role, "disk");
        int n = snprintf(buf + used, size - used, "%s%s%s%s%s %.12s", used ? ", " : "",
                         name ? name : "?", disk ? "" : "(", disk ? "" : role, disk ? "" : ")",
                         sha ? sha : "(no checksum)");
        if (n < 0 || (size_t)n >= size - used)
            break;
        used += (size_t)n;
    }
    if (!used)
        snprintf(buf, size, "-");
}

static void show_hosts(yajl_val v)
{
    static const char *const hh[] = {"BACKEND", "TYPE",  "TRANSPORT", "REACHABLE", "ACCEL",
                                     "VMS",     "VCPUS", "MEMORY",    "WARM",      "IMAGES"};
    struct table *t = table_new(10, hh);
    yajl_val arr = cli_json_array(v, JPATH("hosts"));
    for (size_t i = 0; t && arr && i < arr->u.array.len; i++) {
        yajl_val h = arr->u.array.values[i];
        char vms[32], cpus[32], mem[80], used[32], cap[32], warm[48], images[512];
        snprintf(vms, sizeof(vms), "%lld/%lld", (long long)cli_json_int(h, JPATH("used_vms"), 0),
                 (long long)cli_json_int(h, JPATH("max_vms"), 0));
        snprintf(cpus, sizeof(cpus), "%lld/%lld",
                 (long long)cli_json_int(h, JPATH("used_vcpus"), 0),
                 (long long)cli_json_int(h, JPATH("vcpus"), 0));
        table_size((uint64_t)cli_json_int(h, JPATH("used_memory"), 0), used, sizeof(used));
        table_size((uint64_t)cli_json_int(h, JPATH("memory"), 0), cap, sizeof(cap));
        snprintf(mem, sizeof(mem), "%s/%s", used, cap);
        snprintf(warm, sizeof(warm), "%lld ready, %lld booting",
                 (long long)cli_json_int(h, JPATH("warm_ready"), 0),
                 (long long)cli_json_int(h, JPATH("warm_booting"), 0));
        images_cell(h, images, sizeof(images));
        const char *transport = cli_json_str(h, JPATH("transport"));
        const char *accel = cli_json_str(h, JPATH("accel"));
        const char *cells[] = {cli_json_str(h, JPATH("name")),
                               cli_json_str(h, JPATH("type")),
                               transport ? transport : "-",
                               cli_json_bool(h, JPATH("reachable")) ? "yes" : "no",
                               accel ? accel : "-",
                               vms,
                               cpus,
                               mem,
                               warm,
                               images};
        table_add(t, cells);
    }
    if (t)
        table_print(t, stdout);
    table_free(t);
    /* what a table cell has no room for: URIs, errors, why not KVM */
    for (size_t i = 0; arr && i < arr->u.array.len; i++) {
        yajl_val h = arr->u.array.values[i];
        const char *name = cli_json_str(h, JPATH("name"));
        const char *uri = cli_json_str(h, JPATH("uri"));
        const char *error = cli_json_str(h, JPATH("error"));
        const char *accel = cli_json_str(h, JPATH("accel"));
        const char *why = cli_json_str(h, JPATH("accel_reason"));
        const char *ierr = cli_json_str(h, JPATH("images_error"));
        if (uri)
            printf("host %s: %s\n", name, uri);
        if (!cli_json_bool(h, JPATH("reachable")))
            printf("host %s: unreachable: %s\n", name, error ? error : "?");
        if (accel && streq(accel, "tcg"))
            printf("host %s: VMs run under TCG (no KVM): %s\n", name, why ? why : "?");
        if (ierr)
            printf("host %s: listing its images failed: %s\n", name, ierr);
    }
}

int cmd_host(int argc, char **argv)
{
    if (argc < 2 || (!streq(argv[1], "ls") && !streq(argv[1], "--help") && !streq(argv[1], "-h"))) {
        if (argc >= 2)
            fprintf(stderr, "agentlab host: unknown subcommand \"%s\"\n", argv[1]);
        host_usage(stderr);
        return CLI_EXIT_USAGE;
    }
    if (!streq(argv[1], "ls")) {
        host_usage(stdout);
        return 0;
    }
    struct cli_opts o = {0};
    int code = cli_parse_opts(argc - 1, argv + 1, 0, host_usage, &o);
    if (code >= 0)
        return code;
    _cleanup_cli_api_ struct cli_api *a = NULL;
    if ((code = cli_api_connect(o.socket, &a)))
        return code;
    if (o.json) {
        struct cli_resp r = {0};
        if ((code = cli_api_call(a, "GET", "/v1/hosts", NULL, NULL, 0, 200, "listing hosts", &r)))
            return code;
        cli_resp_print_raw(&r);
        return 0;
    }
    _cleanup_yajl_ yajl_val v = NULL;
    if ((code = cli_api_call_json(a, "GET", "/v1/hosts", 200, "listing hosts", &v)))
        return code;
    show_hosts(v);
    return 0;
}
