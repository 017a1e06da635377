/* agentlab run: one job in a throwaway VM, output live on the terminal.
 *
 * Runs the job in-process with the same engine the daemon uses (admission,
 * fallback across the pool's backends, retries of infrastructure errors),
 * over a private database and job dir under <run_dir>/cli-<pid> that are
 * removed at the end, like the VM. */
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "runner/engine/attempt.h"
#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/engine/config.h"
#include "runner/engine/engine.h"
#include "runner/base/hardlimits.h"
#include "runner/loop/curl_uv.h"
#include "runner/loop/virt_uv.h"
#include "runner/engine/owner.h"
#include "runner/engine/store.h"
#include "runner/cli/cli.h"
#include "runner/cli/job_remote.h"
#include "provision/workdir.h"
#include "runner/cli/run_opts.h"
#include "runner/cli/run_remote.h"

struct run_ctx {
    uv_loop_t loop;
    uv_signal_t sigint, sigterm, sighup;
    struct config *cfg;
    struct store *store;
    struct engine *engine;
    struct engine_watch *watch;
    struct al_curl *curl; /* for HTTP backends (Proxmox) */
    struct run_opts *o;
    char *owner;
    char *tmp_dir; /* <run_dir>/cli-<pid>: this run's database and job dir */
    char job_id[STORE_JOB_ID_SIZE];
    uint64_t t0;
    int interrupts;
    bool finished;
    enum job_state final;
    int exit_code;
    char reason[640];
    struct attempt_result last; /* of the last attempt */
    bool have_last;
};

static void usage(FILE *out)
{
    fprintf(out, "Usage: agentlab run [OPTIONS] -- CMD [ARG...]\n"
                 "\n"
                 "Runs CMD in a fresh throwaway VM and streams its output live. The VM, its\n"
                 "disk and its cloud-init data are destroyed afterwards, also on errors and\n"
                 "on Ctrl-C.\n"
                 "\n"
                 "  --image NAME          image to boot (default: the configured image)\n"
                 "  --cpus N              vCPUs, 1 to 64 (default: job_cpus from the config)\n"
                 "  --memory MB           memory in MiB (default: job_memory from the config)\n"
                 "  --timeout SEC         job timeout, e.g. 90, 15m (default: job_timeout)\n"
                 "  --env K=V             environment variable for CMD (repeatable)\n"
                 "  --secret-env K[=V]    secret variable: never logged or stored, masked in the\n"
                 "                        output; without =V the value comes from this\n"
                 "                        process's environment (repeatable)\n"
                 "  --artifact PATH       file or directory to bring back, relative to the work\n"
                 "                        dir (repeatable)\n"
                 "  --artifacts-dir DIR   where artifacts go (default: ./artifacts)\n"
                 "  --workdir DIR         copy DIR into the VM as the job's work directory\n"
                 "  --inject seed|guestfs how cloud-init data reaches the VM (default: the\n"
                 "                        backend's inject setting)\n"
                 "  --backend NAME        backend to use (default: the default pool's first);\n"
                 "                        runs in-process\n"
                 "  --pool NAME           pool to run in (default: the configured pool)\n"
                 "  --local               run in this process even when agentlabd runs\n"
                 "  --socket PATH         agentlabd's socket (default: api_socket)\n"
                 "  --json                print the result as JSON on stdout; the job's output\n"
                 "                        then goes to stderr\n"
                 "  -q, --quiet           no phase lines on stderr\n"
                 "  -h, --help            show this help\n"
                 "\n"
                 "When agentlabd runs (its socket answers), the job is submitted to it and\n"
                 "followed; otherwise it runs in this process with the same engine.\n"
                 "\n"
                 "Exit status: the workload's own; 124 when it timed out; 130 when cancelled;\n"
                 "125 when agentlab or the VM failed (with a one-line reason on stderr).\n");
}

static int parse_pair(const char *arg, bool from_env, struct env_pair *ret)
{
    const char *eq = strchr(arg, '=');
    _cleanup_free_ char *name = eq ? strndup(arg, (size_t)(eq - arg)) : strdup(arg);
    if (!name || !*name)
        return -EINVAL;
    for (const char *p = name; *p; p++) {
        bool ok = (*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || *p == '_' ||
                  (p != name && *p >= '0' && *p <= '9');
        if (!ok)
            return -EINVAL;
    }
    const char *value = eq ? eq + 1 : (from_env ? getenv(name) : NULL);
    if (!value)
        return -ENOENT;
    ret->name = TAKE_PTR(name);
    ret->value = value;
    return 0;
}

static int parse_args(int argc, char **argv, struct run_opts *o)
{
    enum {
        OPT_IMAGE = 256,
        OPT_CPUS,
        OPT_MEMORY,
        OPT_TIMEOUT,
        OPT_ENV,
        OPT_SECRET,
        OPT_ARTIFACT,
        OPT_ARTDIR,
        OPT_WORKDIR,
        OPT_INJECT,
        OPT_BACKEND,
        OPT_JSON,
        OPT_POOL,
        OPT_LOCAL,
        OPT_SOCKET,
    };
    static const struct option opts[] = {
            {"image", required_argument, NULL, OPT_IMAGE},
            {"cpus", required_argument, NULL, OPT_CPUS},
            {"memory", required_argument, NULL, OPT_MEMORY},
            {"timeout", required_argument, NULL, OPT_TIMEOUT},
            {"env", required_argument, NULL, OPT_ENV},
            {"secret-env", required_argument, NULL, OPT_SECRET},
            {"artifact", required_argument, NULL, OPT_ARTIFACT},
            {"artifacts-dir", required_argument, NULL, OPT_ARTDIR},
            {"workdir", required_argument, NULL, OPT_WORKDIR},
            {"inject", required_argument, NULL, OPT_INJECT},
            {"backend", required_argument, NULL, OPT_BACKEND},
            {"pool", required_argument, NULL, OPT_POOL},
            {"local", no_argument, NULL, OPT_LOCAL},
            {"socket", required_argument, NULL, OPT_SOCKET},
            {"json", no_argument, NULL, OPT_JSON},
            {"quiet", no_argument, NULL, 'q'},
            {"help", no_argument, NULL, 'h'},
            {NULL, 0, NULL, 0},
    };
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "+qh", opts, NULL)) != -1) {
        int r = 0;
        switch (c) {
        case OPT_IMAGE:
            o->image = optarg;
            break;
        case OPT_CPUS:
            if (al_parse_int(optarg, 1, JOB_SPEC_MAX_CPUS, &o->cpus) < 0) {
                fprintf(stderr, "agentlab run: --cpus expects an integer from 1 to %d\n",
                        JOB_SPEC_MAX_CPUS);
                return 2;
            }
            break;
        case OPT_MEMORY: {
            int mb;
            if (al_parse_int(optarg, JOB_SPEC_MIN_MEMORY_MB, JOB_SPEC_MAX_MEMORY_MB, &mb) < 0) {
                fprintf(stderr, "agentlab run: --memory expects MiB from %d to %d\n",
                        JOB_SPEC_MIN_MEMORY_MB, JOB_SPEC_MAX_MEMORY_MB);
                return 2;
            }
            o->memory = (uint64_t)mb << 20;
            break;
        }
        case OPT_TIMEOUT:
            if (al_parse_duration(optarg, &o->timeout_s) < 0 || o->timeout_s <= 0 ||
                o->timeout_s > 7 * 86400) {
                fprintf(stderr, "agentlab run: --timeout expects a positive duration such as "
                                "90, 90s, 15m or 2h (at most 7d)\n");
                return 2;
            }
            break;
        case OPT_ENV:
            if (o->n_env >= MAX_ITEMS || (r = parse_pair(optarg, false, &o->env[o->n_env])) < 0) {
                fprintf(stderr, "agentlab run: --env expects NAME=VALUE with a valid name\n");
                return 2;
            }
            o->n_env++;
            break;
        case OPT_SECRET:
            if (o->n_secrets >= MAX_ITEMS ||
                (r = parse_pair(optarg, true, &o->secrets[o->n_secrets])) < 0) {
                fprintf(stderr, "agentlab run: --secret-env %s\n",
                        r == -ENOENT ? "names a variable that is not set in this environment"
                                     : "expects NAME or NAME=VALUE with a valid name");
                return 2;
            }
            if (strlen(o->secrets[o->n_secrets].value) < AL_REDACT_MIN_LEN) {
                fprintf(stderr,
                        "agentlab run: secret %s is shorter than %d characters; it could not be "
                        "masked in the output\n",
                        o->secrets[o->n_secrets].name, AL_REDACT_MIN_LEN);
                free((char *)o->secrets[o->n_secrets].name);
                return 2;
            }
            o->n_secrets++;
            break;
        case OPT_ARTIFACT:
            if (o->n_artifacts >= MAX_ITEMS || !*optarg) {
                fprintf(stderr, "agentlab run: too many --artifact options\n");
                return 2;
            }
            o->artifacts[o->n_artifacts++] = optarg;
            break;
        case OPT_ARTDIR:
            o->artifacts_dir = optarg;
            break;
        case OPT_WORKDIR:
            o->workdir = optarg;
            break;
        case OPT_INJECT:
            if (inject_mode_from_string(optarg, &o->inject) < 0) {
                fprintf(stderr, "agentlab run: --inject expects seed or guestfs\n");
                return 2;
            }
            break;
        case OPT_BACKEND:
            o->backend = optarg;
            break;
        case OPT_JSON:
            o->json = true;
            break;
        case OPT_POOL:
            o->pool = optarg;
            break;
        case OPT_LOCAL:
            o->local = true;
            break;
        case OPT_SOCKET:
            o->socket = optarg;
            break;
        case 'q':
            o->quiet = true;
            break;
        case 'h':
        default:
            return al_usage_exit(usage, c == 'h');
        }
    }
    if (optind >= argc) {
        fprintf(stderr, "agentlab run: no command given; usage: agentlab run [OPTIONS] -- CMD "
                        "[ARG...]\n");
        return 2;
    }
    o->argv = argv + optind;
    return -1; /* go on */
}

static void write_all(int fd, const char *buf, size_t len)
{
    while (len) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        buf += n;
        len -= (size_t)n;
    }
}

static void on_event(const struct store_event *ev, void *data)
{
    struct run_ctx *c = data;
    if (!streq(ev->job_id, c->job_id))
        return;
    switch (ev->to) {
    case JOB_STATE_PROVISIONING:
        run_say(c->o, c->t0, "provisioning (%s)", ev->detail ? ev->detail : "");
        break;
    case JOB_STATE_BOOTING:
        run_say(c->o, c->t0, "booting VM %s", ev->detail ? ev->detail : "");
        break;
    case JOB_STATE_RUNNING:
        run_say(c->o, c->t0, "running");
        break;
    case JOB_STATE_QUEUED:
        if (ev->from == JOB_STATE_ERROR)
            run_say(c->o, c->t0, "retrying on a fresh VM");
        break;
    default:
        if (job_state_is_terminal(ev->to)) {
            c->final = ev->to;
            snprintf(c->reason, sizeof(c->reason), "%s", ev->detail ? ev->detail : "");
        }
        break;
    }
}

static void on_output(const char *job_id, enum vm_stream s, const char *buf, size_t len, void *data)
{
    struct run_ctx *c = data;
    if (streq(job_id, c->job_id))
        write_all(c->o->json || s == VM_STDERR ? STDERR_FILENO : STDOUT_FILENO, buf, len);
}

static void on_engine_stopped(void *data)
{
    struct run_ctx *c = data;
    c->engine = NULL;
    if (c->curl)
        al_curl_close(c->curl, NULL, NULL);
    c->curl = NULL;
    uv_close((uv_handle_t *)&c->sigint, NULL);
    uv_close((uv_handle_t *)&c->sigterm, NULL);
    uv_close((uv_handle_t *)&c->sighup, NULL);
    al_virt_event_shutdown();
}

static void on_finished(const char *job_id, enum job_state state, const struct attempt_result *r,
                        void *data)
{
    struct run_ctx *c = data;
    if (!streq(job_id, c->job_id))
        return;
    c->final = state;
    if (r) {
        c->last = *r;
        c->have_last = true;
    }
    c->finished = true;
    engine_unobserve(c->engine, c->watch);
    c->watch = NULL;
    engine_stop(c->engine, on_engine_stopped, c);
}

static void on_signal(uv_signal_t *s, int signum)
{
    struct run_ctx *c = s->data;
    c->interrupts++;
    if (c->interrupts == 1)
        fprintf(stderr, "agentlab: %s: cancelling the job and cleaning up\n", strsignal(signum));
    else
        fprintf(stderr, "agentlab: still cleaning up; the VM is being destroyed\n");
    struct al_error *err = NULL;
    if (c->engine && c->job_id[0] && !c->finished && engine_cancel(c->engine, c->job_id, &err) < 0)
        al_error_free(err);
}

static void print_json(const struct run_ctx *c)
{
    const struct attempt_result *r = &c->last;
    printf("{\"job\":\"%s\",\"state\":\"%s\",\"exit_code\":%d,", c->job_id,
           job_state_to_string(c->final), c->exit_code);
    printf("\"reason\":\"");
    for (const char *p = c->reason; *p; p++) {
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if ((unsigned char)*p < 0x20)
            printf("\\u%04x", (unsigned char)*p);
        else
            putchar(*p);
    }
    printf("\",\"vm\":\"%s\",\"log_bytes\":%" PRIu64 ",\"log_truncated\":%s,", r->vm_name,
           r->log_bytes, r->log_truncated ? "true" : "false");
    printf("\"artifacts\":{\"files\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"skipped\":%" PRIu64 "},",
           r->artifacts.files, r->artifacts.bytes, r->artifacts.skipped);
    printf("\"ms\":{\"provision\":%" PRIu64 ",\"start\":%" PRIu64 ",\"boot\":%" PRIu64
           ",\"run\":%" PRIu64 ",\"cleanup\":%" PRIu64 ",\"total\":%" PRIu64 "},",
           r->ms_provision, r->ms_start, r->ms_boot, r->ms_run, r->ms_cleanup, r->ms_total);
    /* of "provision", the time spent in the backend's API (libvirt's
     * volume calls): the rest is agentlab's own */
    printf("\"us\":{\"provision_api\":%" PRIu64 "},", r->us_provision_api);
    printf("\"cleanup_ok\":%s}\n", r->cleanup_failed ? "false" : "true");
}

static char **strv_dup(char *const *v, size_t *ret_n)
{
    size_t n = 0;
    while (v && v[n])
        n++;
    char **out = calloc(n + 1, sizeof(char *));
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (!(out[i] = strdup(v[i]))) {
            strv_free(out);
            return NULL;
        }
    }
    if (ret_n)
        *ret_n = n;
    return out;
}

static struct job_env_var *env_dup(const struct env_pair *p, size_t n)
{
    struct job_env_var *v = calloc(n + 1, sizeof(*v));
    if (!v)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        v[i].name = strdup(p[i].name);
        v[i].value = strdup(p[i].value);
        if (!v[i].name || !v[i].value) {
            for (size_t k = 0; k <= i; k++) {
                free(v[k].name);
                free(v[k].value);
            }
            free(v);
            return NULL;
        }
    }
    return v;
}

/* The options as a job spec: the same validation and defaults as any job. */
static struct job_spec *spec_from_opts(const struct run_opts *o)
{
    struct job_spec *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->inject = o->inject;
    s->timeout_s = o->timeout_s;
    s->resources.cpus = o->cpus;
    s->resources.memory_mb = (int)(o->memory >> 20);
    s->source.type = JOB_SOURCE_CLI;
    if ((o->pool && !(s->pool = strdup(o->pool))) || (o->image && !(s->image = strdup(o->image))) ||
        !(s->command = strv_dup(o->argv, &s->n_command)))
        return job_spec_free(s);
    if (o->n_env && !(s->env = env_dup(o->env, o->n_env)))
        return job_spec_free(s);
    s->n_env = o->n_env;
    if (o->n_secrets && !(s->secret_env = env_dup(o->secrets, o->n_secrets)))
        return job_spec_free(s);
    s->n_secret_env = o->n_secrets;
    if (o->n_artifacts && !(s->artifacts = strv_dup((char *const *)o->artifacts, &s->n_artifacts)))
        return job_spec_free(s);
    return s;
}

static int run_job(struct run_ctx *c, struct run_opts *o)
{
    _cleanup_error_ struct al_error *err = NULL;
    const struct config *cfg = c->cfg;
    int rc = 125;

    if (o->backend && !config_find_backend(cfg, o->backend)) {
        fprintf(stderr, "agentlab: no backend named \"%s\" in the configuration\n", o->backend);
        return 125;
    }
    _cleanup_free_ char *cli_dir_name = NULL;
    if (owner_id_for_process(&c->owner, &err) < 0 ||
        asprintf(&cli_dir_name, "cli-%d", (int)getpid()) < 0 ||
        !(c->tmp_dir = al_path_join(cfg->agent.run_dir, cli_dir_name))) {
        fprintf(stderr, "agentlab: %s\n", err ? al_error_message(err) : "out of memory");
        return 125;
    }
    _cleanup_free_ char *db = al_path_join(c->tmp_dir, "agentlab.db");
    _cleanup_free_ char *jobs = al_path_join(c->tmp_dir, "jobs");
    _cleanup_free_ char *workdir_tar = al_path_join(c->tmp_dir, "workdir.tar");
    if (!db || !jobs || !workdir_tar || al_mkdir_p(c->tmp_dir, 0711, &err) < 0) {
        fprintf(stderr, "agentlab: %s\n", err ? al_error_message(err) : "out of memory");
        goto out_dir;
    }
    if (o->workdir && workdir_pack(o->workdir, workdir_tar, 0, NULL, &err) < 0) {
        fprintf(stderr, "agentlab: %s\n", al_error_message(err));
        goto out_dir;
    }
    if (store_open(db, NULL, &c->store, &err) < 0) {
        fprintf(stderr, "agentlab: %s\n", al_error_message(err));
        goto out_dir;
    }

    if (uv_loop_init(&c->loop) < 0) {
        fprintf(stderr, "agentlab: cannot create the event loop\n");
        goto out_store;
    }
    uv_signal_init(&c->loop, &c->sigint);
    uv_signal_init(&c->loop, &c->sigterm);
    uv_signal_init(&c->loop, &c->sighup);
    c->sigint.data = c->sigterm.data = c->sighup.data = c;
    uv_signal_start(&c->sigint, on_signal, SIGINT);
    uv_signal_start(&c->sigterm, on_signal, SIGTERM);
    uv_signal_start(&c->sighup, on_signal, SIGHUP);

    if (al_curl_global_init() < 0)
        al_error_set(&err, EIO, "curl_global_init failed");
    else
        al_curl_new(&c->loop, &c->curl, &err);
    struct engine_params ep = {
            .loop = &c->loop,
            .cfg = cfg,
            .store = c->store,
            .curl = c->curl,
            .owner_id = c->owner,
            .jobs_dir = jobs,
    };
    if (err || al_virt_event_register(&c->loop, &err) < 0 ||
        engine_new(&ep, &c->engine, &err) < 0) {
        fprintf(stderr, "agentlab: %s\n", al_error_message(err));
        if (c->engine)
            engine_stop(c->engine, on_engine_stopped, c);
        else
            on_engine_stopped(c);
        uv_run(&c->loop, UV_RUN_DEFAULT);
        goto out_loop;
    }
    static const struct engine_observer obs = {
            .event = on_event,
            .output = on_output,
            .finished = on_finished,
    };
    c->watch = engine_observe(c->engine, &obs, c);
    engine_start(c->engine, NULL, NULL);

    struct job_spec *spec = spec_from_opts(o);
    struct engine_submit sub = {
            .workdir_tar = o->workdir ? workdir_tar : NULL,
            .artifacts_dir = o->artifacts_dir ? o->artifacts_dir : "artifacts",
    };
    if (!spec) {
        al_error_set(&err, ENOMEM, "building the job");
    } else if (engine_submit(c->engine, spec, &sub, c->job_id, &err) == 0) {
        run_say(c->o, c->t0, "job %s: queued (image %s)", c->job_id,
                o->image ? o->image : cfg->agent.image);
        uv_run(&c->loop, UV_RUN_DEFAULT);
        const struct attempt_result *r = &c->last;
        c->exit_code = cli_run_exit_code(c->final, c->have_last, c->last.exit_code);
        if (c->final == JOB_STATE_ERROR)
            fprintf(stderr, "agentlab: error: %s\n", c->reason);
        else if (c->final == JOB_STATE_TIMED_OUT)
            fprintf(stderr, "agentlab: timed out: %s\n", c->reason);
        run_say(c->o, c->t0,
                "%s (exit %d) in %.1fs: provision %.2fs, start %.2fs, boot %.1fs, run %.1fs, "
                "cleanup %.2fs",
                job_state_to_string(c->final), c->exit_code, (double)r->ms_total / 1000.0,
                (double)r->ms_provision / 1000.0, (double)r->ms_start / 1000.0,
                (double)r->ms_boot / 1000.0, (double)r->ms_run / 1000.0,
                (double)r->ms_cleanup / 1000.0);
        if (r->have_artifacts)
            run_say(c->o, c->t0, "artifacts: %" PRIu64 " files, %" PRIu64 " bytes in %s%s%s",
                    r->artifacts.files, r->artifacts.bytes, sub.artifacts_dir,
                    r->artifacts.note[0] ? "; " : "", r->artifacts.note);
        else if (o->n_artifacts && r->artifacts.note[0])
            run_say(c->o, c->t0, "artifacts: %s", r->artifacts.note);
        if (r->log_truncated)
            run_say(c->o, c->t0, "output was truncated at max_log_size");
        if (r->limits) {
            char names[256];
            al_limit_mask_format(r->limits, ", ", names, sizeof(names));
            run_say(c->o, c->t0, "limits hit: %s", names);
        }
        if (r->cleanup_failed)
            fprintf(stderr, "agentlab: warning: cleanup incomplete: %s\n", r->cleanup_error);
        if (o->json)
            print_json(c);
        rc = c->exit_code;
        goto out_loop;
    }
    fprintf(stderr, "agentlab: %s\n", al_error_message(err));
    engine_unobserve(c->engine, c->watch);
    engine_stop(c->engine, on_engine_stopped, c);
    uv_run(&c->loop, UV_RUN_DEFAULT);
out_loop:
    al_curl_global_cleanup();
    if (uv_loop_close(&c->loop) != 0)
        fprintf(stderr, "agentlab: warning: event loop did not close cleanly\n");
out_store:
    store_close(c->store);
out_dir:;
    struct al_error *rmerr = NULL;
    al_rm_rf(c->tmp_dir, &rmerr);
    al_error_free(rmerr);
    return rc;
}

int cmd_run(int argc, char **argv)
{
    struct run_opts o = {.inject = -1};
    int r = parse_args(argc, argv, &o);
    if (r >= 0)
        return r == 2 ? 2 : 0;

    struct run_ctx c = {.o = &o, .t0 = al_now_mono_ms(), .final = JOB_STATE_NONE};
    _cleanup_error_ struct al_error *err = NULL;
    /* a running daemon takes the job, unless told otherwise */
    if (!o.local && !o.backend) {
        struct cli_api *api = NULL;
        if (cli_api_open(o.socket, &api, &err) == 0 && cli_api_daemon_running(api)) {
            int rc = run_remote(&o, api);
            cli_api_close(api);
            for (size_t i = 0; i < o.n_env; i++)
                free((char *)o.env[i].name);
            for (size_t i = 0; i < o.n_secrets; i++)
                free((char *)o.secrets[i].name);
            return rc;
        }
        cli_api_close(api);
        err = al_error_free(err);
        if (o.socket) {
            fprintf(stderr, "agentlab: nothing answers on %s\n", o.socket);
            return 125;
        }
    }
    if (config_load(NULL, &c.cfg, &err) < 0) {
        fprintf(stderr, "agentlab: %s\n", al_error_message(err));
        return 125;
    }
    /* the phase lines say what matters; the engine's own log is for daemons */
    al_log_set_level(c.cfg->agent.log_level >= AL_LOG_DEBUG ? AL_LOG_DEBUG : AL_LOG_WARN);
    if (o.backend) {
        /* run on exactly that backend: a one-backend default pool */
        for (size_t i = 0; i < c.cfg->n_pools; i++) {
            if (!streq(c.cfg->pools[i].name, c.cfg->agent.pool))
                continue;
            strv_free(c.cfg->pools[i].backends);
            c.cfg->pools[i].backends = calloc(2, sizeof(char *));
            if (c.cfg->pools[i].backends)
                c.cfg->pools[i].backends[0] = strdup(o.backend);
        }
    }
    int rc = run_job(&c, &o);
    for (size_t i = 0; i < o.n_env; i++)
        free((char *)o.env[i].name);
    for (size_t i = 0; i < o.n_secrets; i++)
        free((char *)o.secrets[i].name);
    free(c.owner);
    free(c.tmp_dir);
    config_free(c.cfg);
    return rc;
}
