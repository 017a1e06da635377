#include "runner/sources/github_common.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runner/base/log.h"
#include "runner/base/sha256.h"
#include "runner/base/util.h"
#include "runner/sources/github.h"

int gh_api_base(const struct config_source *src, char **ret)
{
    const char *url = *src->url ? src->url : GITHUB_DEFAULT_API;
    size_t n = strlen(url);
    while (n && url[n - 1] == '/')
        n--;
    char *s = strndup(url, n);
    if (!s)
        return -ENOMEM;
    *ret = s;
    return 0;
}

int gh_scope(const struct config_source *src, char **ret)
{
    char *s = NULL;
    int r = *src->repo  ? asprintf(&s, "/repos/%s", src->repo)
            : *src->org ? asprintf(&s, "/orgs/%s", src->org)
                        : asprintf(&s, "/enterprises/%s", src->enterprise);
    if (r < 0)
        return -ENOMEM;
    *ret = s;
    return 0;
}

int gh_runner_prefix(const struct config *cfg, const char *source_name, char **ret)
{
    char hex[AL_SHA256_HEX_SIZE];
    _cleanup_free_ char *seed = NULL;
    if (asprintf(&seed, "%s\n%s", cfg->agent.state_dir, source_name) < 0)
        return -ENOMEM;
    al_sha256_hex(seed, strlen(seed), hex);
    char *s = NULL;
    if (asprintf(&s, "agentlab-%.8s-", hex) < 0)
        return -ENOMEM;
    *ret = s;
    return 0;
}

int gh_runner_name(const char *prefix, char *buf, size_t size)
{
    _cleanup_free_ char *rnd = al_random_hex(4);
    if (!rnd)
        return -ENOMEM;
    snprintf(buf, size, "%s%s", prefix, rnd);
    return 0;
}

static int env_add(struct job_env_var **v, size_t *n, const char *name, const char *value)
{
    struct job_env_var *x = realloc(*v, (*n + 1) * sizeof(**v));
    if (!x)
        return -ENOMEM;
    *v = x;
    x[*n].name = strdup(name);
    x[*n].value = strdup(value);
    if (!x[*n].name || !x[*n].value) {
        free(x[*n].name);
        al_wipe_free(x[*n].value);
        return -ENOMEM;
    }
    (*n)++;
    return 0;
}

int gh_runner_job_spec(const struct config_source *src, const char *runner, const char *scale_set,
                       const char *url, char *jit, struct job_spec **ret, struct al_error **err)
{
    _cleanup_job_spec_ struct job_spec *spec = calloc(1, sizeof(*spec));
    if (!spec) {
        al_wipe_free(jit);
        return al_error_set(err, ENOMEM, "out of memory");
    }
    spec->inject = -1;
    int rc = env_add(&spec->secret_env, &spec->n_secret_env, "ACTIONS_RUNNER_INPUT_JITCONFIG", jit);
    al_wipe_free(jit);
    rc |= env_add(&spec->env, &spec->n_env, "AGENTLAB_GITHUB_RUNNER", runner);
    const char *dir = src->runner_dir;
    if (asprintf(&spec->script,
                 "# agentlab: GitHub Actions runner %s%s%s (one job, then this VM is gone)\n"
                 "cd '%s' 2>/dev/null || { echo 'agentlab: no actions runner in %s (build the "
                 "image from the debian-12-actions recipe)' >&2; exit 127; }\n"
                 "exec ./run.sh\n",
                 runner, scale_set ? " of scale set " : "", scale_set ? scale_set : "", dir,
                 dir) < 0)
        spec->script = NULL;
    if (asprintf(&spec->name, "github runner %s", runner) < 0)
        spec->name = NULL;
    spec->source.type = JOB_SOURCE_GITHUB;
    spec->source.id = strdup(runner);
    if (url && strlen(url) <= JOB_SPEC_MAX_URL)
        spec->source.url = strdup(url);
    if (*src->pool)
        spec->pool = strdup(src->pool);
    spec->max_attempts = 1; /* a JIT config is good for one runner */
    if (rc || !spec->script || !spec->name || !spec->source.id || (*src->pool && !spec->pool))
        return al_error_set(err, ENOMEM, "out of memory");
    *ret = TAKE_PTR(spec);
    return 0;
}

int gh_auth_new(const struct config_source *src, struct al_curl *curl, const char *api_base,
                void (*on_refreshed)(int result, const char *message, void *data), void *data,
                struct github_auth **ret, struct al_error **err)
{
    struct github_auth_params ap = {
            .curl = curl,
            .api_base = api_base,
            .token_file = src->token_file,
            .app_id = src->app_id,
            .app_key_file = src->app_key_file,
            .installation_id = src->installation_id,
            .repo = src->repo,
            .org = src->org,
            .on_refreshed = on_refreshed,
            .data = data,
    };
    return github_auth_new(&ap, ret, err);
}

void gh_stop_vm(struct engine *e, const char *source, const char *runner, const char *engine_id,
                const char *why)
{
    log_info(engine_id, "github %s: runner %s: %s; stopping its VM", source, runner, why);
    struct al_error *err = NULL;
    if (engine_cancel(e, engine_id, &err) < 0 && err && err->code != EALREADY &&
        err->code != ENOENT)
        log_warn(engine_id, "github %s: cancel: %s", source, al_error_message(err));
    al_error_free(err);
}

char *gh_json_finish(yajl_gen gen, int status)
{
    const unsigned char *buf = NULL;
    size_t len = 0;
    char *s = NULL;
    if (status == yajl_gen_status_ok && yajl_gen_get_buf(gen, &buf, &len) == yajl_gen_status_ok)
        s = strndup((const char *)buf, len);
    yajl_gen_free(gen);
    return s;
}

struct al_error *gh_call_oom(char *path, char *body)
{
    free(path);
    al_wipe_free(body);
    struct al_error *err = NULL;
    al_error_set(&err, ENOMEM, "out of memory");
    return err;
}

void gh_base_init(struct gh_base *b, uv_loop_t *loop, struct engine *e, struct al_curl *curl,
                  const struct config *cfg, const struct config_source *src)
{
    b->loop = loop;
    b->e = e;
    b->curl = curl;
    b->cfg = cfg;
    b->src = src;
    b->name = src->name;
}

void gh_base_start(struct gh_base *b, void *owner, const struct engine_observer *o,
                   uv_timer_cb tick, uint64_t tick_ms)
{
    uv_timer_init(b->loop, &b->tick_timer);
    uv_timer_init(b->loop, &b->soon_timer);
    b->tick_timer.data = b->soon_timer.data = owner;
    b->handles_open += 2;
    b->watch = engine_observe(b->e, o, owner);
    uv_timer_start(&b->tick_timer, tick, 0, tick_ms);
}

void gh_base_stop(struct gh_base *b, void (*done)(void *data), void *data)
{
    b->stopping = true;
    b->in_stop = true;
    b->done = done;
    b->done_data = data;
    uv_timer_stop(&b->tick_timer);
}

void gh_base_close(struct gh_base *b, uv_close_cb closed_cb)
{
    b->closing = true;
    if (b->watch)
        engine_unobserve(b->e, b->watch);
    b->watch = NULL;
    uv_timer_stop(&b->tick_timer);
    uv_timer_stop(&b->soon_timer);
    uv_close((uv_handle_t *)&b->tick_timer, closed_cb);
    uv_close((uv_handle_t *)&b->soon_timer, closed_cb);
}
