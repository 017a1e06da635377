/* agentlab run: one job in a throwaway VM, output live on the terminal.
 *
 * Runs the job in-process: its own loop, the configured default pool's first
 * backend, one attempt, everything destroyed at the end. */
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

#include "../attempt.h"
#include "../base/log.h"
#include "../base/util.h"
#include "../config.h"
#include "../loop/virt_uv.h"
#include "../owner.h"
#include "cli.h"
#include "images/catalog.h"
#include "provision/workdir.h"

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
    char **argv;
};

struct run_ctx {
    uv_loop_t loop;
    uv_signal_t sigint, sigterm, sighup;
    struct config *cfg;
    struct backend *backend;
    struct attempt *attempt;
    struct run_opts *o;
    char *job_id;
    uint64_t t0;
    int interrupts;
    bool done;
    struct attempt_result result;
    bool backend_closed;
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
                 "  --cpus N              vCPUs (default: job_cpus from the config)\n"
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
                 "  --backend NAME        backend to use (default: the default pool's first)\n"
                 "  --json                print the result as JSON on stdout; the job's output\n"
                 "                        then goes to stderr\n"
                 "  -q, --quiet           no phase lines on stderr\n"
                 "  -h, --help            show this help\n"
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
            if (al_parse_int(optarg, 1, 256, &o->cpus) < 0) {
                fprintf(stderr, "agentlab run: --cpus expects an integer from 1 to 256\n");
                return 2;
            }
            break;
        case OPT_MEMORY: {
            int mb;
            if (al_parse_int(optarg, 128, 1024 * 1024, &mb) < 0) {
                fprintf(stderr, "agentlab run: --memory expects MiB, at least 128\n");
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
        case 'q':
            o->quiet = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
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

static void say(struct run_ctx *c, const char *fmt, ...) _printf_(2, 3);

static void say(struct run_ctx *c, const char *fmt, ...)
{
    if (c->o->quiet)
        return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    double t = (double)(al_now_mono_ms() - c->t0) / 1000.0;
    fprintf(stderr, "agentlab: [%6.2fs] %s\n", t, line);
}

static void on_phase(struct attempt *a, enum vm_phase phase, void *data)
{
    (void)a;
    struct run_ctx *c = data;
    switch (phase) {
    case VM_PHASE_PROVISIONED:
        say(c, "disk and cloud-init data ready");
        break;
    case VM_PHASE_BOOTING:
        say(c, "booting VM %s", attempt_vm_name(c->attempt));
        break;
    case VM_PHASE_CONNECTED:
        say(c, "guest helper connected");
        break;
    case VM_PHASE_RUNNING:
        say(c, "running");
        break;
    }
}

static void on_output(struct attempt *a, enum vm_stream s, const char *buf, size_t len, void *data)
{
    (void)a;
    struct run_ctx *c = data;
    write_all(c->o->json || s == VM_STDERR ? STDERR_FILENO : STDOUT_FILENO, buf, len);
}

static void on_diag(struct attempt *a, const char *msg, void *data)
{
    (void)a;
    say(data, "guest: %s", msg);
}

static void on_backend_closed(void *data)
{
    struct run_ctx *c = data;
    c->backend_closed = true;
}

static void close_everything(struct run_ctx *c)
{
    uv_close((uv_handle_t *)&c->sigint, NULL);
    uv_close((uv_handle_t *)&c->sigterm, NULL);
    uv_close((uv_handle_t *)&c->sighup, NULL);
    if (c->backend)
        backend_free(c->backend, on_backend_closed, c);
    c->backend = NULL;
    al_virt_event_shutdown();
}

static void on_done(struct attempt *a, const struct attempt_result *r, void *data)
{
    (void)a;
    struct run_ctx *c = data;
    c->result = *r;
    c->done = true;
    c->attempt = NULL;
    close_everything(c);
}

static void on_signal(uv_signal_t *s, int signum)
{
    struct run_ctx *c = s->data;
    c->interrupts++;
    if (c->interrupts == 1)
        fprintf(stderr, "agentlab: %s: cancelling the job and cleaning up\n", strsignal(signum));
    else
        fprintf(stderr, "agentlab: still cleaning up; the VM is being destroyed\n");
    if (c->attempt)
        attempt_cancel(c->attempt);
}

static char *new_job_id(void)
{
    _cleanup_free_ char *rnd = al_random_hex(4);
    char *id = NULL;
    if (!rnd || asprintf(&id, "j%012" PRIx64 "%s", (uint64_t)al_now_wall_ms(), rnd) < 0)
        return NULL;
    return id;
}

static void print_json(const struct run_ctx *c)
{
    const struct attempt_result *r = &c->result;
    /* every string printed here is ours (ids, fixed words) or escaped below */
    printf("{\"job\":\"%s\",\"vm\":\"%s\",\"outcome\":\"%s\",\"exit_code\":%d,", c->job_id,
           r->vm_name, attempt_outcome_to_string(r->outcome), r->exit_code);
    printf("\"reason\":\"");
    for (const char *p = r->reason; *p; p++) {
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if ((unsigned char)*p < 0x20)
            printf("\\u%04x", (unsigned char)*p);
        else
            putchar(*p);
    }
    printf("\",\"log_bytes\":%" PRIu64 ",\"log_truncated\":%s,", r->log_bytes,
           r->log_truncated ? "true" : "false");
    printf("\"artifacts\":{\"files\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"skipped\":%" PRIu64 "},",
           r->artifacts.files, r->artifacts.bytes, r->artifacts.skipped);
    printf("\"ms\":{\"provision\":%" PRIu64 ",\"start\":%" PRIu64 ",\"boot\":%" PRIu64
           ",\"run\":%" PRIu64 ",\"cleanup\":%" PRIu64 ",\"total\":%" PRIu64 "},",
           r->ms_provision, r->ms_start, r->ms_boot, r->ms_run, r->ms_cleanup, r->ms_total);
    printf("\"cleanup_ok\":%s}\n", r->cleanup_failed ? "false" : "true");
}

static int run_job(struct run_ctx *c, struct run_opts *o)
{
    _cleanup_error_ struct al_error *err = NULL;
    const struct config *cfg = c->cfg;

    const struct config_backend *bcfg = NULL;
    if (o->backend) {
        bcfg = config_find_backend(cfg, o->backend);
        if (!bcfg) {
            fprintf(stderr, "agentlab: no backend named \"%s\" in the configuration\n", o->backend);
            return 125;
        }
    } else {
        const struct config_pool *pool = config_find_pool(cfg, cfg->agent.pool);
        bcfg = pool && pool->backends && pool->backends[0]
                       ? config_find_backend(cfg, pool->backends[0])
                       : &cfg->backends[0];
    }

    const char *image = o->image ? o->image : cfg->agent.image;
    struct image_info *img = NULL;
    if (image_find(cfg->agent.state_dir, image, &img, &err) < 0) {
        fprintf(stderr, "agentlab: %s\n", al_error_message(err));
        return 125;
    }
    image_info_free(img);

    c->job_id = new_job_id();
    _cleanup_free_ char *owner = NULL;
    if (!c->job_id || owner_id_for_process(&owner, &err) < 0) {
        fprintf(stderr, "agentlab: %s\n", err ? al_error_message(err) : "out of memory");
        return 125;
    }
    _cleanup_free_ char *jobs_dir = al_path_join(cfg->agent.run_dir, "jobs");
    _cleanup_free_ char *job_dir = jobs_dir ? al_path_join(jobs_dir, c->job_id) : NULL;
    if (!job_dir || al_mkdir_p(job_dir, 0700, &err) < 0) {
        fprintf(stderr, "agentlab: %s\n", err ? al_error_message(err) : "out of memory");
        return 125;
    }

    int rc = 125;
    _cleanup_free_ char *workdir_tar = NULL;
    if (o->workdir) {
        workdir_tar = al_path_join(job_dir, "workdir.tar");
        uint64_t bytes = 0;
        if (!workdir_tar || workdir_pack(o->workdir, workdir_tar, 0, &bytes, &err) < 0) {
            fprintf(stderr, "agentlab: %s\n", err ? al_error_message(err) : "out of memory");
            goto out_dir;
        }
    }

    for (size_t i = 0; i < o->n_secrets; i++)
        al_redact_add(o->secrets[i].value);

    o->artifacts[o->n_artifacts] = NULL;
    struct vm_request req = {
            .job_id = c->job_id,
            .attempt = 1,
            .image = image,
            .cpus = o->cpus ? o->cpus : cfg->agent.job_cpus,
            .memory = o->memory ? o->memory : cfg->agent.job_memory,
            .inject = o->inject,
            .argv = (const char *const *)o->argv,
            .env = o->env,
            .n_env = o->n_env,
            .secret_env = o->secrets,
            .n_secret_env = o->n_secrets,
            .timeout_s = o->timeout_s ? o->timeout_s : cfg->agent.job_timeout_s,
            .artifacts = o->n_artifacts ? o->artifacts : NULL,
            .max_artifact_bytes = cfg->agent.max_artifact_bytes,
            .workdir_tar = workdir_tar,
    };

    if (uv_loop_init(&c->loop) < 0) {
        fprintf(stderr, "agentlab: cannot create the event loop\n");
        goto out_dir;
    }
    uv_signal_init(&c->loop, &c->sigint);
    uv_signal_init(&c->loop, &c->sigterm);
    uv_signal_init(&c->loop, &c->sighup);
    c->sigint.data = c->sigterm.data = c->sighup.data = c;
    uv_signal_start(&c->sigint, on_signal, SIGINT);
    uv_signal_start(&c->sigterm, on_signal, SIGTERM);
    uv_signal_start(&c->sighup, on_signal, SIGHUP);

    struct backend_env env = {.loop = &c->loop, .cfg = cfg, .owner_id = owner};
    if (al_virt_event_register(&c->loop, &err) < 0 ||
        backend_new(&env, bcfg, &c->backend, &err) < 0)
        goto fail_loop;

    struct backend_capacity cap;
    c->backend->ops->capacity(c->backend, &cap);
    if (req.cpus > cap.vcpus || req.memory > cap.memory) {
        al_error_set(&err, ENOSPC,
                     "the job needs %d vCPUs and %" PRIu64 " MiB; backend %s has %d vCPUs and "
                     "%" PRIu64 " MiB",
                     req.cpus, req.memory >> 20, bcfg->name, cap.vcpus, cap.memory >> 20);
        goto fail_loop;
    }

    struct attempt_params ap = {
            .backend = c->backend,
            .req = &req,
            .job_dir = job_dir,
            .artifacts_dir = o->artifacts_dir ? o->artifacts_dir : "artifacts",
            .boot_timeout_s = cfg->agent.boot_timeout_s,
            .run_grace_s = 30,
            .max_log_bytes = cfg->agent.max_log_bytes,
            .artifact_limits = {.max_bytes = cfg->agent.max_artifact_bytes,
                                .max_files = (uint64_t)cfg->agent.max_artifact_files},
    };
    static const struct attempt_callbacks cbs = {
            .phase = on_phase,
            .output = on_output,
            .diag = on_diag,
            .done = on_done,
    };
    say(c, "job %s: provisioning (image %s, %d vCPU, %" PRIu64 " MiB, backend %s)", c->job_id,
        image, req.cpus, req.memory >> 20, bcfg->name);
    if (attempt_start(&c->loop, &ap, &cbs, c, &c->attempt, &err) < 0)
        goto fail_loop;

    uv_run(&c->loop, UV_RUN_DEFAULT);

    const struct attempt_result *r = &c->result;
    if (r->outcome == ATTEMPT_ERROR)
        fprintf(stderr, "agentlab: error: %s\n", r->reason);
    say(c,
        "%s (exit %d) in %.1fs: provision %.2fs, start %.2fs, boot %.1fs, run %.1fs, "
        "cleanup %.2fs",
        attempt_outcome_to_string(r->outcome), r->exit_code, (double)r->ms_total / 1000.0,
        (double)r->ms_provision / 1000.0, (double)r->ms_start / 1000.0, (double)r->ms_boot / 1000.0,
        (double)r->ms_run / 1000.0, (double)r->ms_cleanup / 1000.0);
    if (r->have_artifacts)
        say(c, "artifacts: %" PRIu64 " files, %" PRIu64 " bytes in %s%s%s", r->artifacts.files,
            r->artifacts.bytes, ap.artifacts_dir, r->artifacts.note[0] ? "; " : "",
            r->artifacts.note);
    else if (o->n_artifacts && r->artifacts.note[0])
        say(c, "artifacts: %s", r->artifacts.note);
    if (r->log_truncated)
        say(c, "output was truncated at max_log_size");
    if (r->cleanup_failed)
        fprintf(stderr, "agentlab: warning: cleanup incomplete: %s\n", r->cleanup_error);
    if (o->json)
        print_json(c);
    rc = r->exit_code;
    goto out_loop;

fail_loop:
    fprintf(stderr, "agentlab: %s\n", al_error_message(err));
    close_everything(c);
    uv_run(&c->loop, UV_RUN_DEFAULT);
out_loop:
    if (uv_loop_close(&c->loop) != 0)
        fprintf(stderr, "agentlab: warning: event loop did not close cleanly\n");
out_dir:
    for (size_t i = 0; i < o->n_secrets; i++)
        al_redact_remove(o->secrets[i].value);
    struct al_error *rmerr = NULL;
    al_rm_rf(job_dir, &rmerr);
    al_error_free(rmerr);
    return rc;
}

int cmd_run(int argc, char **argv)
{
    struct run_opts o = {.inject = -1};
    int r = parse_args(argc, argv, &o);
    if (r >= 0)
        return r == 2 ? 2 : 0;

    struct run_ctx c = {.o = &o, .t0 = al_now_mono_ms()};
    _cleanup_error_ struct al_error *err = NULL;
    if (config_load(NULL, &c.cfg, &err) < 0) {
        fprintf(stderr, "agentlab: %s\n", al_error_message(err));
        return 125;
    }
    al_log_set_level((enum al_log_level)c.cfg->agent.log_level);
    int rc = run_job(&c, &o);
    for (size_t i = 0; i < o.n_env; i++)
        free((char *)o.env[i].name);
    for (size_t i = 0; i < o.n_secrets; i++)
        free((char *)o.secrets[i].name);
    free(c.job_id);
    config_free(c.cfg);
    return rc;
}
