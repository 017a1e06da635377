#include "runner/cli/run_remote.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runner/api/json.h"
#include "runner/base/util.h"
#include "runner/engine/config.h"
#include "runner/cli/job_remote.h"

void run_say(const struct run_opts *o, uint64_t t0, const char *fmt, ...)
{
    if (o->quiet)
        return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    fprintf(stderr, "agentlab: [%6.2fs] %s\n", (double)(al_now_mono_ms() - t0) / 1000.0, line);
}

static int gen_env(yajl_gen g, const char *key, const struct env_pair *p, size_t n)
{
    if (!n)
        return 0;
    int r = json_key(g, key) | json_open_map(g);
    for (size_t i = 0; i < n; i++)
        r |= json_kv_str(g, p[i].name, p[i].value);
    return r | json_close_map(g);
}

/* The options as a job spec document (with the secret values: they travel
 * to the daemon once, over its socket, and are never stored). */
static int spec_json(const struct run_opts *o, char **ret, size_t *ret_len)
{
    _cleanup_json_gen_ yajl_gen g = json_gen_new();
    if (!g)
        return -ENOMEM;
    int r = json_open_map(g);
    r |= json_key(g, "command") | json_open_array(g);
    for (char **a = o->argv; *a; a++)
        r |= json_str(g, *a);
    r |= json_close_array(g);
    if (o->image)
        r |= json_kv_str(g, "image", o->image);
    if (o->pool)
        r |= json_kv_str(g, "pool", o->pool);
    if (o->cpus || o->memory) {
        r |= json_key(g, "resources") | json_open_map(g);
        if (o->cpus)
            r |= json_kv_int(g, "cpus", o->cpus);
        if (o->memory)
            r |= json_kv_int(g, "memory_mb", (int64_t)(o->memory >> 20));
        r |= json_close_map(g);
    }
    if (o->timeout_s)
        r |= json_kv_int(g, "timeout_s", o->timeout_s);
    r |= gen_env(g, "env", o->env, o->n_env);
    r |= gen_env(g, "secret_env", o->secrets, o->n_secrets);
    if (o->n_artifacts) {
        r |= json_key(g, "artifacts") | json_open_array(g);
        for (size_t i = 0; i < o->n_artifacts; i++)
            r |= json_str(g, o->artifacts[i]);
        r |= json_close_array(g);
    }
    if (o->inject >= 0)
        r |= json_kv_str(g, "inject", inject_mode_to_string(o->inject));
    r |= json_key(g, "source") | json_open_map(g) | json_kv_str(g, "type", "cli") |
         json_close_map(g);
    r |= json_close_map(g);
    const unsigned char *buf;
    size_t len;
    if (r || yajl_gen_get_buf(g, &buf, &len) != yajl_gen_status_ok)
        return -EINVAL;
    char *out = malloc(len + 1);
    if (!out)
        return -ENOMEM;
    memcpy(out, buf, len);
    out[len] = '\0';
    *ret = out;
    *ret_len = len;
    return 0;
}

static void print_json(const char *id, const struct cli_job_result *res, int code)
{
    _cleanup_json_gen_ yajl_gen g = json_gen_new();
    if (!g)
        return;
    int r = json_open_map(g);
    r |= json_kv_str(g, "job", id);
    r |= json_kv_str(g, "state", job_state_to_string(res->state));
    r |= json_kv_int(g, "exit_code", code);
    r |= json_kv_str(g, "reason", res->reason);
    r |= json_kv_str(g, "mode", "daemon");
    r |= json_close_map(g);
    const unsigned char *buf;
    size_t len;
    if (!r && yajl_gen_get_buf(g, &buf, &len) == yajl_gen_status_ok)
        printf("%.*s\n", (int)len, (const char *)buf);
}

int run_remote(const struct run_opts *o, struct cli_api *a)
{
    uint64_t t0 = al_now_mono_ms();
    _cleanup_free_ char *spec = NULL;
    size_t len = 0;
    if (spec_json(o, &spec, &len) < 0) {
        fprintf(stderr, "agentlab: building the job spec failed\n");
        return 125;
    }
    struct cli_resp r = {0};
    char id[STORE_JOB_ID_SIZE];
    int sent = cli_submit_job(a, o->workdir, spec, len, &r, id);
    explicit_bzero(spec, len);
    cli_resp_clear(&r);
    if (sent)
        return 125;
    run_say(o, t0, "job %s: queued (image %s) on agentlabd", id, o->image ? o->image : "default");

    cli_install_interrupt();
    if (cli_follow_logs(a, id, o->json ? STDERR_FILENO : STDOUT_FILENO, true))
        return 125;
    struct cli_job_result res;
    if (cli_job_result(a, id, &res))
        return 125;
    if (!job_state_is_terminal(res.state)) {
        fprintf(stderr, "agentlab: lost agentlabd while job %s was %s\n", id,
                job_state_to_string(res.state));
        return 125;
    }
    int code = cli_run_exit_code(res.state, res.has_exit_code, res.exit_code);
    if (res.state == JOB_STATE_ERROR)
        fprintf(stderr, "agentlab: error: %s\n", res.reason);
    run_say(o, t0, "%s (exit %d)%s%s", job_state_to_string(res.state), code,
            res.reason[0] && res.state != JOB_STATE_ERROR ? ": " : "",
            res.state != JOB_STATE_ERROR ? res.reason : "");
    if (o->n_artifacts) {
        const char *dir = o->artifacts_dir ? o->artifacts_dir : "artifacts";
        unsigned n = 0;
        if (cli_download_artifacts(a, id, dir, &n) == 0)
            run_say(o, t0, "artifacts: %u files in %s", n, dir);
    }
    if (o->json)
        print_json(id, &res, code);
    return code;
}
