/* `agentlab pool status` and `agentlab vm ls`: what the running daemon's
 * backends hold, through the control API. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runner/base/macro.h"
#include "runner/cli/api_client.h"
#include "runner/cli/cli.h"
#include "runner/cli/cli_opts.h"
#include "runner/cli/table.h"

/* GETs path; prints it raw with --json, else hands the tree to show. */
static int fetch(const struct cli_opts *o, const char *path, const char *what,
                 void (*show)(yajl_val v))
{
    _cleanup_cli_api_ struct cli_api *a = NULL;
    int code = cli_api_connect(o->socket, &a);
    if (code)
        return code;
    if (o->json) {
        struct cli_resp r = {0};
        if ((code = cli_api_call(a, "GET", path, NULL, NULL, 0, 200, what, &r)))
            return code;
        cli_resp_print_raw(&r);
        return 0;
    }
    _cleanup_yajl_ yajl_val v = NULL;
    if ((code = cli_api_call_json(a, "GET", path, 200, what, &v)))
        return code;
    show(v);
    return 0;
}

static void pool_usage(FILE *out)
{
    fprintf(out, "Usage: agentlab pool status [--json] [--socket PATH]\n"
                 "\n"
                 "Shows each backend of the running agentlabd (health, VMs, vCPUs and memory\n"
                 "in use of its capacity, attempts started, why a job last fell back past\n"
                 "it) and each pool with its backends and labels.\n");
}

static void show_pools(yajl_val v)
{
    static const char *const bh[] = {"BACKEND", "TYPE", "HEALTH",       "VMS",          "VCPUS",
                                     "MEMORY",  "WARM", "JOBS STARTED", "LAST FALLBACK"};
    struct table *t = table_new(9, bh);
    yajl_val arr = cli_json_array(v, JPATH("backends"));
    for (size_t i = 0; t && arr && i < arr->u.array.len; i++) {
        yajl_val b = arr->u.array.values[i];
        char vms[32], cpus[32], mem[80], used[32], cap[32], started[24], health[200];
        snprintf(vms, sizeof(vms), "%lld/%lld", (long long)cli_json_int(b, JPATH("used_vms"), 0),
                 (long long)cli_json_int(b, JPATH("max_vms"), 0));
        snprintf(cpus, sizeof(cpus), "%lld/%lld",
                 (long long)cli_json_int(b, JPATH("used_vcpus"), 0),
                 (long long)cli_json_int(b, JPATH("vcpus"), 0));
        table_size((uint64_t)cli_json_int(b, JPATH("used_memory"), 0), used, sizeof(used));
        table_size((uint64_t)cli_json_int(b, JPATH("memory"), 0), cap, sizeof(cap));
        snprintf(mem, sizeof(mem), "%s/%s", used, cap);
        snprintf(started, sizeof(started), "%lld",
                 (long long)cli_json_int(b, JPATH("jobs_started"), 0));
        char warm[48];
        snprintf(warm, sizeof(warm), "%lld ready, %lld booting",
                 (long long)cli_json_int(b, JPATH("warm_ready"), 0),
                 (long long)cli_json_int(b, JPATH("warm_booting"), 0));
        const char *reason = cli_json_str(b, JPATH("reason"));
        if (cli_json_bool(b, JPATH("healthy")))
            snprintf(health, sizeof(health), "healthy");
        else
            snprintf(health, sizeof(health), "unhealthy: %s", reason ? reason : "?");
        const char *fb = cli_json_str(b, JPATH("last_fallback"));
        const char *cells[] = {cli_json_str(b, JPATH("name")),
                               cli_json_str(b, JPATH("type")),
                               health,
                               vms,
                               cpus,
                               mem,
                               warm,
                               started,
                               fb ? fb : "-"};
        table_add(t, cells);
    }
    if (t)
        table_print(t, stdout);
    table_free(t);
    /* the accelerator: one line per backend that cannot use KVM, and why */
    for (size_t i = 0; arr && i < arr->u.array.len; i++) {
        yajl_val b = arr->u.array.values[i];
        const char *accel = cli_json_str(b, JPATH("accel"));
        const char *why = cli_json_str(b, JPATH("accel_reason"));
        if (accel && streq(accel, "tcg"))
            printf("backend %s: VMs run under TCG (no KVM): %s\n", cli_json_str(b, JPATH("name")),
                   why ? why : "?");
    }

    static const char *const ph[] = {"POOL",    "DEFAULT", "BACKENDS", "LABELS",
                                     "FLAVOUR", "MAX",     "QUEUED",   "WARM"};
    t = table_new(8, ph);
    arr = cli_json_array(v, JPATH("pools"));
    for (size_t i = 0; t && arr && i < arr->u.array.len; i++) {
        yajl_val p = arr->u.array.values[i];
        char backends[256] = "", labels[256] = "";
        const char *keys[] = {"backends", "labels"};
        char *outs[] = {backends, labels};
        for (size_t k = 0; k < 2; k++) {
            yajl_val l = cli_json_array(p, (const char *const[]){keys[k], NULL});
            size_t used = 0;
            for (size_t j = 0; l && j < l->u.array.len; j++) {
                if (!YAJL_IS_STRING(l->u.array.values[j]))
                    continue;
                int n = snprintf(outs[k] + used, 256 - used, "%s%s", used ? "," : "",
                                 YAJL_GET_STRING(l->u.array.values[j]));
                if (n < 0 || (size_t)n >= 256 - used)
                    break;
                used += (size_t)n;
            }
        }
        /* the flavour: image, vCPUs, memory; and what a job may ask beyond it */
        char flavour[160], max[64], queued[48], warm[48], mc[24] = "any", mm[24] = "any";
        const char *image = cli_json_str(p, JPATH("image"));
        snprintf(flavour, sizeof(flavour), "%s %lld vCPU %lld MiB", image ? image : "?",
                 (long long)cli_json_int(p, JPATH("cpus"), 0),
                 (long long)cli_json_int(p, JPATH("memory_mb"), 0));
        long long max_cpus = cli_json_int(p, JPATH("max_cpus"), 0);
        long long max_mem = cli_json_int(p, JPATH("max_memory_mb"), 0);
        if (max_cpus)
            snprintf(mc, sizeof(mc), "%lld", max_cpus);
        if (max_mem)
            snprintf(mm, sizeof(mm), "%lld", max_mem);
        snprintf(max, sizeof(max), "%s vCPU %s MiB", mc, mm);
        snprintf(queued, sizeof(queued), "%lld (%lld running)",
                 (long long)cli_json_int(p, JPATH("queued"), 0),
                 (long long)cli_json_int(p, JPATH("running"), 0));
        snprintf(warm, sizeof(warm), "%lld/%lld",
                 (long long)cli_json_int(p, JPATH("warm_ready"), 0),
                 (long long)cli_json_int(p, JPATH("warm"), 0));
        const char *cells[] = {cli_json_str(p, JPATH("name")),
                               cli_json_bool(p, JPATH("default")) ? "yes" : "",
                               backends[0] ? backends : "-",
                               labels[0] ? labels : "-",
                               flavour,
                               max,
                               queued,
                               warm};
        table_add(t, cells);
    }
    if (t) {
        printf("\n");
        table_print(t, stdout);
    }
    table_free(t);
    /* sources that report their own state (a runner scale set) */
    static const char *const sh[] = {"SOURCE", "KIND", "STATE", "LAST MESSAGE", "NUMBERS"};
    arr = cli_json_array(v, JPATH("sources"));
    t = arr && arr->u.array.len ? table_new(5, sh) : NULL;
    for (size_t i = 0; t && i < arr->u.array.len; i++) {
        yajl_val x = arr->u.array.values[i];
        char age[32] = "never", nums[512] = "";
        long long a = (long long)cli_json_int(x, JPATH("last_message_age_s"), -1);
        if (a >= 0)
            snprintf(age, sizeof(age), "%llds ago", a);
        yajl_val gauges = NULL;
        for (size_t k = 0; YAJL_IS_OBJECT(x) && k < x->u.object.len; k++) {
            if (streq(x->u.object.keys[k], "gauges") && YAJL_IS_OBJECT(x->u.object.values[k]))
                gauges = x->u.object.values[k];
        }
        size_t used = 0;
        for (size_t k = 0; gauges && k < gauges->u.object.len; k++) {
            yajl_val n = gauges->u.object.values[k];
            if (!YAJL_IS_INTEGER(n))
                continue;
            int w = snprintf(nums + used, sizeof(nums) - used, "%s%s=%lld", used ? " " : "",
                             gauges->u.object.keys[k], (long long)YAJL_GET_INTEGER(n));
            if (w < 0 || (size_t)w >= sizeof(nums) - used)
                break;
            used += (size_t)w;
        }
        const char *cells[] = {cli_json_str(x, JPATH("name")), cli_json_str(x, JPATH("kind")),
                               cli_json_str(x, JPATH("state")), age, nums[0] ? nums : "-"};
        table_add(t, cells);
    }
    if (t) {
        printf("\n");
        table_print(t, stdout);
    }
    table_free(t);
    printf("\nqueued %lld, running %lld\n", (long long)cli_json_int(v, JPATH("queued"), 0),
           (long long)cli_json_int(v, JPATH("running"), 0));
}

int cmd_pool(int argc, char **argv)
{
    if (argc < 2 ||
        (!streq(argv[1], "status") && !streq(argv[1], "--help") && !streq(argv[1], "-h"))) {
        if (argc >= 2)
            fprintf(stderr, "agentlab pool: unknown subcommand \"%s\"\n", argv[1]);
        pool_usage(stderr);
        return CLI_EXIT_USAGE;
    }
    if (!streq(argv[1], "status")) {
        pool_usage(stdout);
        return 0;
    }
    struct cli_opts o = {0};
    int code = cli_parse_opts(argc - 1, argv + 1, 0, pool_usage, &o);
    if (code >= 0)
        return code;
    return fetch(&o, "/v1/pools", "reading the pools", show_pools);
}

static void vm_usage(FILE *out)
{
    fprintf(out, "Usage: agentlab vm ls [--json] [--socket PATH]\n"
                 "\n"
                 "Lists the VMs the running agentlabd owns, per backend, with the job and\n"
                 "attempt each belongs to (as recorded before each VM was created), and the\n"
                 "warm VMs waiting for a job.\n");
}

static void show_vms(yajl_val v)
{
    static const char *const h[] = {"BACKEND", "VM", "JOB", "ATTEMPT", "JOB STATE", "AGE"};
    struct table *t = table_new(6, h);
    yajl_val arr = cli_json_array(v, JPATH("vms"));
    for (size_t i = 0; t && arr && i < arr->u.array.len; i++) {
        yajl_val x = arr->u.array.values[i];
        char att[24], age[32], job[128], state[64];
        const char *pool = cli_json_str(x, JPATH("warm_pool"));
        if (pool) {
            /* a warm VM: no job yet */
            snprintf(job, sizeof(job), "(warm, pool %s)", pool);
            snprintf(att, sizeof(att), "-");
            const char *ws = cli_json_str(x, JPATH("warm_state"));
            snprintf(state, sizeof(state), "%s", ws ? ws : "?");
            snprintf(age, sizeof(age), "%llds", (long long)cli_json_int(x, JPATH("age_s"), 0));
        } else {
            const char *j = cli_json_str(x, JPATH("job"));
            const char *js = cli_json_str(x, JPATH("job_state"));
            snprintf(job, sizeof(job), "%s", j ? j : "-");
            snprintf(state, sizeof(state), "%s", js ? js : "-");
            snprintf(att, sizeof(att), "%lld", (long long)cli_json_int(x, JPATH("attempt"), 0));
            table_age(cli_json_int(x, JPATH("created_ms"), 0), age, sizeof(age));
        }
        const char *cells[] = {cli_json_str(x, JPATH("backend")),
                               cli_json_str(x, JPATH("name")),
                               job,
                               att,
                               state,
                               age};
        table_add(t, cells);
    }
    if (t)
        table_print(t, stdout);
    table_free(t);
}

int cmd_vm(int argc, char **argv)
{
    if (argc < 2 || (!streq(argv[1], "ls") && !streq(argv[1], "--help") && !streq(argv[1], "-h"))) {
        if (argc >= 2)
            fprintf(stderr, "agentlab vm: unknown subcommand \"%s\"\n", argv[1]);
        vm_usage(stderr);
        return CLI_EXIT_USAGE;
    }
    if (!streq(argv[1], "ls")) {
        vm_usage(stdout);
        return 0;
    }
    struct cli_opts o = {0};
    int code = cli_parse_opts(argc - 1, argv + 1, 0, vm_usage, &o);
    if (code >= 0)
        return code;
    return fetch(&o, "/v1/vms", "listing VMs", show_vms);
}
