#include "runner/sources/github_scaleset.h"

#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <yajl/yajl_gen.h>

#include "runner/base/buf.h"
#include "runner/base/list.h"
#include "runner/base/log.h"
#include "runner/base/sha256.h"
#include "runner/base/util.h"
#include "runner/loop/http_client.h"
#include "runner/sources/github.h"
#include "runner/sources/github_auth.h"
#include "runner/sources/github_common.h"
#include "runner/sources/github_payload.h"
#include "runner/sources/github_scaleset_priv.h"
#include "runner/sources/orphans.h"

/* ------------------------------------------------------------ setup */

static void setup_failed(struct github_scaleset *g, const char *what)
{
    g->setup_busy = false;
    backoff_grow(&g->setup_backoff_ms);
    g->next_setup_ms = now_ms() + al_jitter_ms(g->setup_backoff_ms);
    log_warn(NULL, "github %s: %s; trying again in %" PRIu64 " s", g->b.name, what,
             g->setup_backoff_ms / 1000);
}

static void on_group(struct github_scaleset *g, int result, const struct al_http_response *resp,
                     const struct al_error *err, void *data)
{
    (void)data;
    if (result == -ECANCELED || g->b.stopping)
        return;
    char what[400];
    int64_t id = 0;
    struct al_error *perr = NULL;
    if (result < 0 || resp->status != 200) {
        ss_describe(result, resp, err, what, sizeof(what));
    } else if (scaleset_parse_lookup(resp->body.data, resp->body.len, &id, &perr) < 0) {
        snprintf(what, sizeof(what), "%s", al_error_message(perr));
        al_error_free(perr);
    } else if (!id) {
        snprintf(what, sizeof(what), "no runner group named %s", g->b.src->runner_group);
    }
    if (!id) {
        char m[500];
        snprintf(m, sizeof(m), "runner group %s: %s", g->b.src->runner_group, what);
        setup_failed(g, m);
        return;
    }
    g->group_id = id;
    g->setup_busy = false;
    ss_setup_step(g);
}

static void on_scaleset(struct github_scaleset *g, int result, const struct al_http_response *resp,
                        const struct al_error *err, void *data)
{
    bool created = data != NULL;
    if (result == -ECANCELED || g->b.stopping)
        return;
    if (created)
        g->lookup_done = false; /* after a failed create, look again first */
    char what[400];
    int64_t id = 0;
    struct al_error *perr = NULL;
    if (result < 0 || resp->status != 200) {
        ss_describe(result, resp, err, what, sizeof(what));
    } else if ((created ? scaleset_parse_scaleset(resp->body.data, resp->body.len, &id, &perr)
                        : scaleset_parse_lookup(resp->body.data, resp->body.len, &id, &perr)) < 0) {
        snprintf(what, sizeof(what), "%s", al_error_message(perr));
        al_error_free(perr);
        id = -1;
    }
    if (result < 0 || resp->status != 200 || id < 0) {
        char m[500];
        snprintf(m, sizeof(m), "%s scale set %s: %s", created ? "creating" : "looking up",
                 g->b.src->scale_set_name, what);
        setup_failed(g, m);
        return;
    }
    g->setup_busy = false;
    if (!id) {
        g->lookup_done = true;
        ss_setup_step(g); /* not there: create it */
        return;
    }
    g->scaleset_id = id;
    g->setup_backoff_ms = 0;
    char ua[512];
    snprintf(ua, sizeof(ua),
             "User-Agent: {\"system\":\"agentlab\",\"version\":\"%s\",\"subsystem\":\"agentlabd\","
             "\"kind\":\"scaleset\",\"scale_set_id\":%" PRId64 "}",
             AL_VERSION, id);
    char *x = strdup(ua);
    if (x) {
        free(g->user_agent);
        g->user_agent = x;
    }
    log_info(NULL, "github %s: scale set %s (id %" PRId64 ") %s in runner group %s", g->b.name,
             g->b.src->scale_set_name, id, created ? "created" : "found", g->b.src->runner_group);
    g->phase = PH_SESSION;
    g->next_session_ms = now_ms();
    ss_session_create(g);
}

static char *scaleset_body(const struct github_scaleset *g)
{
    yajl_gen gen = yajl_gen_alloc(NULL);
    if (!gen)
        return NULL;
    const char *name = g->b.src->scale_set_name;
    int x = yajl_gen_map_open(gen);
    x |= yajl_gen_string(gen, (const unsigned char *)"name", 4);
    x |= yajl_gen_string(gen, (const unsigned char *)name, strlen(name));
    x |= yajl_gen_string(gen, (const unsigned char *)"runnerGroupId", 13);
    x |= yajl_gen_integer(gen, g->group_id);
    x |= yajl_gen_string(gen, (const unsigned char *)"labels", 6);
    x |= yajl_gen_array_open(gen);
    /* the name first, then the extra labels without duplicates */
    for (int i = -1; g->b.src->labels && (i < 0 || g->b.src->labels[i]); i++) {
        const char *l = i < 0 ? name : g->b.src->labels[i];
        bool dup = i >= 0 && strcasecmp(l, name) == 0;
        for (int k = 0; k < i && !dup; k++)
            dup = strcasecmp(l, g->b.src->labels[k]) == 0;
        if (dup)
            continue;
        x |= yajl_gen_map_open(gen);
        x |= yajl_gen_string(gen, (const unsigned char *)"type", 4);
        x |= yajl_gen_string(gen, (const unsigned char *)"System", 6);
        x |= yajl_gen_string(gen, (const unsigned char *)"name", 4);
        x |= yajl_gen_string(gen, (const unsigned char *)l, strlen(l));
        x |= yajl_gen_map_close(gen);
    }
    if (!g->b.src->labels) {
        x |= yajl_gen_map_open(gen);
        x |= yajl_gen_string(gen, (const unsigned char *)"type", 4);
        x |= yajl_gen_string(gen, (const unsigned char *)"System", 6);
        x |= yajl_gen_string(gen, (const unsigned char *)"name", 4);
        x |= yajl_gen_string(gen, (const unsigned char *)name, strlen(name));
        x |= yajl_gen_map_close(gen);
    }
    x |= yajl_gen_array_close(gen);
    x |= yajl_gen_string(gen, (const unsigned char *)"RunnerSetting", 13);
    x |= yajl_gen_map_open(gen);
    x |= yajl_gen_string(gen, (const unsigned char *)"disableUpdate", 13);
    x |= yajl_gen_bool(gen, 1);
    x |= yajl_gen_map_close(gen);
    x |= yajl_gen_string(gen, (const unsigned char *)"createdOn", 9);
    x |= yajl_gen_string(gen, (const unsigned char *)"0001-01-01T00:00:00Z", 20);
    x |= yajl_gen_map_close(gen);
    return gh_json_finish(gen, x);
}

/* group id, then the scale set by name, then created when absent */
void ss_setup_step(struct github_scaleset *g)
{
    if (g->setup_busy || g->b.stopping)
        return;
    g->setup_busy = true;
    if (!g->group_id) {
        if (strcasecmp(g->b.src->runner_group, "default") == 0) {
            g->group_id = 1;
        } else {
            _cleanup_free_ char *q = ss_query_escape(g->b.src->runner_group);
            ss_call(g, "GET", AUTH_ADMIN,
                    q ? ss_svc_path("runtime/runnergroups/?groupName=%s", q) : NULL, NULL, on_group,
                    NULL);
            return;
        }
    }
    if (!g->lookup_done) {
        /* first a lookup (an earlier run registered it), then a create */
        _cleanup_free_ char *q = ss_query_escape(g->b.src->scale_set_name);
        ss_call(g, "GET", AUTH_ADMIN,
                q ? ss_svc_path("runtime/runnerscalesets?name=%s&runnerGroupId=%" PRId64, q,
                                g->group_id)
                  : NULL,
                NULL, on_scaleset, NULL);
        return;
    }
    char *body = scaleset_body(g);
    ss_call(g, "POST", AUTH_ADMIN, body ? ss_svc_path("runtime/runnerscalesets") : NULL, body,
            on_scaleset, g);
}

/* ------------------------------------------------------------ lifecycle */

static int check_config(const struct config_source *src, struct al_error **err)
{
    int scopes = !!*src->repo + !!*src->org + !!*src->enterprise;
    if (scopes != 1)
        return al_error_set(err, EINVAL,
                            "mode = scaleset: set exactly one of repo, org and "
                            "enterprise");
    if (*src->repo && !github_repo_is_valid(src->repo))
        return al_error_set(err, EINVAL, "repo \"%s\": expected OWNER/NAME", src->repo);
    if (*src->org && !github_login_is_valid(src->org))
        return al_error_set(err, EINVAL, "org \"%s\": expected an organisation login", src->org);
    if (*src->enterprise && !github_login_is_valid(src->enterprise))
        return al_error_set(err, EINVAL, "enterprise \"%s\": expected an enterprise slug",
                            src->enterprise);
    if (*src->enterprise && *src->app_id)
        return al_error_set(err, EINVAL,
                            "enterprise scope needs token_file (a GitHub App cannot "
                            "be installed on an enterprise)");
    const char *n = src->scale_set_name;
    if (!*n || strlen(n) > 100 || strpbrk(n, " \t\r\n'\"\\&#+%?/"))
        return al_error_set(err, EINVAL,
                            "scale_set_name \"%s\": expected a name of 1 to 100 characters "
                            "without spaces, quotes or &#+%%?/",
                            n);
    if (!*src->runner_group || strlen(src->runner_group) > 256)
        return al_error_set(err, EINVAL, "runner_group: expected a name");
    if (src->min_runners > src->max_runners)
        return al_error_set(err, EINVAL, "min_runners (%d) is above max_runners (%d)",
                            src->min_runners, src->max_runners);
    if (*src->webhook_listen)
        return al_error_set(err, EINVAL, "mode = scaleset takes no webhook_listen");
    for (const char *u = *src->url ? src->url : NULL; u; u = NULL) {
        if (strncmp(u, "https://", 8) != 0 && strncmp(u, "http://", 7) != 0)
            return al_error_set(err, EINVAL, "url \"%s\": expected https://HOST[/api/v3]", u);
    }
    const char *gu = src->github_url;
    if (*gu && strncmp(gu, "https://", 8) != 0 && strncmp(gu, "http://", 7) != 0)
        return al_error_set(err, EINVAL, "github_url \"%s\": expected https://HOST", gu);
    const char *d = src->runner_dir;
    if (d[0] != '/' || strpbrk(d, "'\\\n\r\t") || strlen(d) > 512)
        return al_error_set(err, EINVAL,
                            "runner_dir \"%s\": expected an absolute path without quotes", d);
    return 0;
}

/* The web URL runner-registration wants: https://github.com for the
 * public API, https://HOST for https://HOST/api/v3 (GHES), else github_url. */
static int web_url(const struct github_scaleset *g, char **ret, struct al_error **err)
{
    const struct config_source *src = g->b.src;
    _cleanup_free_ char *base = NULL;
    if (*src->github_url) {
        base = strdup(src->github_url);
    } else if (strcasecmp(g->api, GITHUB_DEFAULT_API) == 0) {
        base = strdup("https://github.com");
    } else {
        size_t n = strlen(g->api);
        if (n > 7 && strcasecmp(g->api + n - 7, "/api/v3") == 0)
            base = strndup(g->api, n - 7);
        else
            return al_error_set(err, EINVAL,
                                "github_url: needed when url (%s) is neither GitHub's API nor "
                                "https://HOST/api/v3",
                                g->api);
    }
    if (!base)
        return -ENOMEM;
    size_t n = strlen(base);
    while (n && base[n - 1] == '/')
        base[--n] = '\0';
    int r;
    if (*src->repo)
        r = asprintf(ret, "%s/%s", base, src->repo);
    else if (*src->org)
        r = asprintf(ret, "%s/%s", base, src->org);
    else
        r = asprintf(ret, "%s/enterprises/%s", base, src->enterprise);
    if (r < 0) {
        *ret = NULL;
        return -ENOMEM;
    }
    return 0;
}

static void free_all(struct github_scaleset *g)
{
    github_auth_free(g->auth);
    al_list_for_each_safe(r, next, &g->runners, struct ssrunner, link) {
        al_list_del(&r->link);
        free(r);
    }
    al_list_for_each_safe(j, next, &g->jobs, struct ssjob, link) {
        al_list_del(&j->link);
        free(j->name);
        free(j);
    }
    if (g->session.mq_token)
        al_redact_remove(g->session.mq_token);
    scaleset_session_clear(&g->session);
    scaleset_message_clear(&g->pending);
    if (g->admin_token) {
        al_redact_remove(g->admin_token);
        al_wipe_free(g->admin_token);
    }
    al_wipe_free(g->reg_token);
    free(g->svc);
    free(g->api);
    free(g->scope);
    free(g->config_url);
    free(g->prefix);
    free(g->state_path);
    free(g->owner);
    free(g->user_agent);
    free(g);
}

static int setup(struct github_scaleset *g, struct al_error **err)
{
    const struct config_source *src = g->b.src;
    int r = gh_api_base(src, &g->api);
    if (r == 0)
        r = gh_scope(src, &g->scope);
    if (r < 0)
        return r;
    if ((r = web_url(g, &g->config_url, err)) < 0)
        return r;
    if ((r = gh_runner_prefix(g->b.cfg, src->name, &g->prefix)) < 0)
        return r;
    /* the state file and the session owner take the prefix's 8 hex digits */
    const char *hex = g->prefix + strlen("agentlab-");
    if (asprintf(&g->state_path, "%s/github-scaleset-%.8s.runners", g->b.cfg->agent.state_dir,
                 hex) < 0) {
        g->state_path = NULL;
        return -ENOMEM;
    }
    char host[256] = "";
    if (gethostname(host, sizeof(host) - 1) < 0 || !*host)
        snprintf(host, sizeof(host), "agentlab");
    if (asprintf(&g->owner, "%s-%.8s", host, hex) < 0) {
        g->owner = NULL;
        return -ENOMEM;
    }
    if (asprintf(&g->user_agent,
                 "User-Agent: {\"system\":\"agentlab\",\"version\":\"%s\",\"subsystem\":"
                 "\"agentlabd\",\"kind\":\"scaleset\",\"scale_set_id\":0}",
                 AL_VERSION) < 0) {
        g->user_agent = NULL;
        return -ENOMEM;
    }
    return 0;
}

int github_scaleset_start(uv_loop_t *loop, struct engine *e, struct al_curl *curl,
                          const struct config *cfg, const struct config_source *src,
                          struct github_scaleset **ret, struct al_error **err)
{
    if (!curl)
        return al_error_set(err, EINVAL, "no HTTP client");
    int r = check_config(src, err);
    if (r < 0)
        return r;
    struct github_scaleset *g = calloc(1, sizeof(*g));
    if (!g)
        return al_error_set(err, ENOMEM, "out of memory");
    gh_base_init(&g->b, loop, e, curl, cfg, src);
    al_list_init(&g->inflight);
    al_list_init(&g->wait_admin);
    al_list_init(&g->wait_session);
    al_list_init(&g->runners);
    al_list_init(&g->jobs);
    r = setup(g, err);
    if (r < 0) {
        free_all(g);
        return r == -ENOMEM ? al_error_set(err, ENOMEM, "out of memory") : r;
    }
    r = gh_auth_new(src, curl, g->api, ss_on_auth_refreshed, g, &g->auth, err);
    if (r < 0) {
        free_all(g);
        return r;
    }
    gh_base_start(&g->b, g, &ss_observer, ss_on_tick, TICK_MS);
    ss_cancel_orphans(g);
    ss_state_load(g);
    g->phase = PH_SETUP;
    log_info(NULL,
             "github %s: runner scale set %s for %s %s at %s with %s auth (registered as %s); "
             "max_runners %d, min_runners %d; runner names %s*",
             src->name, src->scale_set_name,
             *src->repo  ? "repository"
             : *src->org ? "organisation"
                         : "enterprise",
             *src->repo  ? src->repo
             : *src->org ? src->org
                         : src->enterprise,
             g->api, github_auth_is_app(g->auth) ? "GitHub App" : "token", g->config_url,
             src->max_runners, src->min_runners, g->prefix);
    *ret = g;
    return 0;
}

void github_scaleset_status(const struct github_scaleset *g, struct github_scaleset_status *ret)
{
    struct counts c = ss_count(g);
    unsigned busy = 0;
    al_list_for_each(r, &g->runners, const struct ssrunner, link)
        busy += r->state == R_BUSY && !r->vm_gone;
    const char *state = g->b.stopping                            ? "stopping"
                        : g->phase == PH_SETUP                   ? "registering the scale set"
                        : g->phase == PH_SESSION && g->conflicts ? "session conflict (409)"
                        : g->phase == PH_SESSION                 ? "creating the session"
                        : g->poll_backoff_ms                     ? "polling, failing"
                                                                 : "polling";
    *ret = (struct github_scaleset_status){
            .state = state,
            .last_message_wall_ms = g->last_message_wall_ms,
            .stats = g->stats,
            .runners_idle = c.spare,
            .runners_busy = busy,
            .jobs_waiting = c.waiting,
            .conflicts = g->conflicts,
            .messages = g->messages,
    };
}

static void on_handle_closed(uv_handle_t *h)
{
    struct github_scaleset *g = h->data;
    if (--g->b.handles_open > 0)
        return;
    void (*done)(void *) = g->b.done;
    void *data = g->b.done_data;
    free_all(g);
    if (done)
        done(data);
}

void ss_maybe_closed(struct github_scaleset *g)
{
    if (!g->b.stopping || g->b.in_stop || g->b.closing || !al_list_empty(&g->inflight))
        return;
    gh_base_close(&g->b, on_handle_closed);
}

void github_scaleset_stop(struct github_scaleset *g, void (*done)(void *data), void *data)
{
    gh_base_stop(&g->b, done, data);
    /* calls in flight end now (their callbacks see stopping), but for a
     * session being created: the service may have made it already, and only
     * its answer says which one to delete (within its own timeout, 30 s) */
    for (;;) {
        struct sscall *victim = NULL;
        al_list_for_each(c, &g->inflight, struct sscall, link) {
            if (!ss_call_creates_session(c)) {
                victim = c;
                break;
            }
        }
        if (!victim)
            break;
        al_http_cancel(victim->http);
    }
    ss_fail_list(&g->wait_admin, ECANCELED, "stopping");
    ss_fail_list(&g->wait_session, ECANCELED, "stopping");
    if (g->session.session_id && admin_valid_at_stop(g)) {
        /* the next listener (this farm restarted, or another) gets it at once */
        ss_call(g, "DELETE", AUTH_ADMIN,
                ss_svc_path("runtime/runnerscalesets/%" PRId64 "/sessions/%s", g->scaleset_id,
                            g->session.session_id),
                NULL, ss_on_session_deleted, "the session");
    }
    ss_state_save(g);
    g->b.in_stop = false;
    ss_maybe_closed(g);
}
