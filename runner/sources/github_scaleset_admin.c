#include "runner/sources/github_scaleset_priv.h"

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
#include "runner/sources/orphans.h"

/* ------------------------------------------------------------ admin token */

static void admin_done(struct github_scaleset *g, const char *failure)
{
    g->admin_refreshing = false;
    al_wipe_free(g->reg_token);
    g->reg_token = NULL;
    if (failure) {
        backoff_grow(&g->admin_backoff_ms);
        g->next_admin_ms = now_ms() + al_jitter_ms(g->admin_backoff_ms);
        log_warn(NULL,
                 "github %s: getting an Actions Service token: %s; trying again in %" PRIu64 " s",
                 g->b.name, failure, g->admin_backoff_ms / 1000);
        ss_fail_list(&g->wait_admin, EAGAIN, failure);
        return;
    }
    g->admin_backoff_ms = 0;
    ss_send_list(&g->wait_admin);
}

static void on_registered(struct github_scaleset *g, int result,
                          const struct al_http_response *resp, const struct al_error *err,
                          void *data);

void ss_register_send(struct github_scaleset *g)
{
    yajl_gen gen = yajl_gen_alloc(NULL);
    char *body = NULL;
    if (gen) {
        int r = yajl_gen_map_open(gen);
        r |= yajl_gen_string(gen, (const unsigned char *)"url", 3);
        r |= yajl_gen_string(gen, (const unsigned char *)g->config_url, strlen(g->config_url));
        r |= yajl_gen_string(gen, (const unsigned char *)"runner_event", 12);
        r |= yajl_gen_string(gen, (const unsigned char *)"register", 8);
        r |= yajl_gen_map_close(gen);
        const unsigned char *buf = NULL;
        size_t len = 0;
        if (r == yajl_gen_status_ok && yajl_gen_get_buf(gen, &buf, &len) == yajl_gen_status_ok &&
            asprintf(&body, "%.*s\n", (int)len, buf) < 0)
            body = NULL;
        yajl_gen_free(gen);
    }
    struct sscall *c = calloc(1, sizeof(*c));
    char *target = strdup("/actions/runner-registration");
    if (!c || !body || !target) {
        free(c);
        free(body);
        free(target);
        admin_done(g, "out of memory");
        return;
    }
    *c = (struct sscall){.g = g,
                         .method = "POST",
                         .auth = AUTH_REMOTE,
                         .target = target,
                         .body = body,
                         .body_len = strlen(body),
                         .content_type = "application/json",
                         .timeout_ms = CALL_TIMEOUT_MS,
                         .retried = true, /* its 401s are retried below */
                         .cb = on_registered};
    al_list_init(&c->link);
    ss_call_send(c);
}

/* An answer that would not parse: fails the admin token with what (the
 * answer's name) and perr, which is freed. */
static void admin_unparsed(struct github_scaleset *g, const char *what, struct al_error *perr)
{
    char m[300];
    snprintf(m, sizeof(m), "the %s answer: %s", what, al_error_message(perr));
    al_error_free(perr);
    admin_done(g, m);
}

static void on_registered(struct github_scaleset *g, int result,
                          const struct al_http_response *resp, const struct al_error *err,
                          void *data)
{
    (void)data;
    if (call_dropped(g, result, resp)) {
        g->admin_refreshing = false;
        return;
    }
    if (result == 0 && resp->status >= 200 && resp->status < 300) {
        char *url = NULL, *token = NULL;
        int64_t exp = 0;
        struct al_error *perr = NULL;
        int r = scaleset_parse_registration(resp->body.data, resp->body.len, &url, &token, &exp,
                                            &perr);
        wipe_body(resp);
        if (r < 0) {
            admin_unparsed(g, "runner-registration", perr);
            return;
        }
        size_t n = strlen(url);
        while (n && url[n - 1] == '/')
            url[--n] = '\0';
        bool moved = g->svc && !streq(g->svc, url);
        free(g->svc);
        g->svc = url;
        if (g->admin_token) {
            al_redact_remove(g->admin_token);
            al_wipe_free(g->admin_token);
        }
        g->admin_token = token;
        al_redact_add(token);
        g->admin_exp_s = exp;
        log_info(NULL, "github %s: Actions Service token valid for %" PRId64 " s%s", g->b.name,
                 exp - al_now_wall_ms() / 1000, moved ? " (the service URL changed)" : "");
        admin_done(g, NULL);
        return;
    }
    char what[300];
    ss_describe(result, resp, err, what, sizeof(what));
    if (resp)
        wipe_body(resp);
    bool retry = result < 0 || resp->status == 401 || resp->status == 403 || resp->status == 429 ||
                 (resp->status >= 500 && resp->status != 501);
    if (retry && ++g->register_tries < REGISTER_TRIES) {
        /* the same registration token again, after 1, 2, 4, 8 s */
        g->next_register_ms = now_ms() + (1000u << (g->register_tries - 1));
        log_info(NULL, "github %s: runner-registration: %s; trying again", g->b.name, what);
        return;
    }
    char m[400];
    snprintf(m, sizeof(m), "runner-registration: %s", what);
    admin_done(g, m);
}

static void on_reg_token(struct github_scaleset *g, int result, const struct al_http_response *resp,
                         const struct al_error *err, void *data)
{
    (void)data;
    if (result == -ECANCELED || g->b.stopping) {
        g->admin_refreshing = false;
        return;
    }
    if (result < 0 || resp->status != 201) {
        char what[300], m[400];
        ss_describe(result, resp, err, what, sizeof(what));
        snprintf(m, sizeof(m), "the registration token: %s", what);
        admin_done(g, m);
        return;
    }
    char *tok = NULL;
    int64_t exp = 0;
    struct al_error *perr = NULL;
    int r = github_parse_token(resp->body.data, resp->body.len, &tok, &exp, &perr);
    wipe_body(resp);
    if (r < 0) {
        admin_unparsed(g, "registration token", perr);
        return;
    }
    al_wipe_free(g->reg_token);
    g->reg_token = tok;
    g->register_tries = 0;
    ss_register_send(g);
}

static void reg_token_request(struct github_scaleset *g)
{
    char *target = NULL;
    if (asprintf(&target, "%s/actions/runners/registration-token", g->scope) < 0)
        target = NULL;
    ss_call(g, "POST", AUTH_REST, target, NULL, on_reg_token, NULL);
}

void ss_on_auth_refreshed(int result, const char *message, void *data)
{
    struct github_scaleset *g = data;
    if (!g->auth_waiting)
        return;
    g->auth_waiting = false;
    if (g->b.stopping) {
        g->admin_refreshing = false;
        return;
    }
    if (result < 0) {
        char m[400];
        snprintf(m, sizeof(m), "GitHub App token: %s", message ? message : "failed");
        admin_done(g, m);
        return;
    }
    reg_token_request(g);
}

/* The chain of SCALESET.md 1.3-1.6: an installation token (App), a
 * registration token, runner-registration. Calls wait in wait_admin. */
void ss_admin_refresh(struct github_scaleset *g)
{
    if (g->admin_refreshing || g->b.stopping || now_ms() < g->next_admin_ms)
        return;
    g->admin_refreshing = true;
    if (!github_auth_header(g->auth)) {
        int r = github_auth_refresh(g->auth);
        if (r == 0 || r == -EALREADY) {
            g->auth_waiting = true;
            return;
        }
        admin_done(g, "no GitHub credential");
        return;
    }
    reg_token_request(g);
}

/* ------------------------------------------------------------ the state file */

void ss_state_save(struct github_scaleset *g)
{
    struct al_buf b = {0};
    al_list_for_each(r, &g->runners, struct ssrunner, link) {
        if (r->id > 0 && !r->deleted)
            al_buf_printf(&b, "%" PRId64 " %s\n", r->id, r->name);
    }
    struct al_error *err = NULL;
    if (al_write_file_atomic(g->state_path, b.data ? b.data : "", b.len, 0600, &err) < 0) {
        log_warn(NULL, "github %s: %s", g->b.name, al_error_message(err));
        al_error_free(err);
    }
    al_buf_free(&b);
}

struct ssrunner *ss_runner_new(struct github_scaleset *g, const char *name)
{
    struct ssrunner *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->g = g;
    if (name) {
        snprintf(r->name, sizeof(r->name), "%s", name);
    } else if (gh_runner_name(g->prefix, r->name, sizeof(r->name)) < 0) {
        free(r);
        return NULL;
    }
    r->created_ms = now_ms();
    al_list_add(&g->runners, &r->link);
    return r;
}

/* Runners a previous process registered: none has a VM here now. */
void ss_state_load(struct github_scaleset *g)
{
    _cleanup_(fclosep) FILE *f = fopen(g->state_path, "re");
    if (!f)
        return;
    char line[256];
    unsigned n = 0;
    while (fgets(line, sizeof(line), f) && n < 10000) {
        char name[64];
        int64_t id = 0;
        if (sscanf(line, "%" SCNd64 " %63s", &id, name) != 2 || id <= 0 ||
            strncmp(name, g->prefix, strlen(g->prefix)) != 0)
            continue;
        struct ssrunner *r = ss_runner_new(g, name);
        if (!r)
            break;
        r->id = id;
        r->vm_gone = true;
        r->state = R_ENDING;
        n++;
        log_info(NULL,
                 "github %s: runner %s (id %" PRId64 ") of a previous agentlabd has no VM "
                 "here; removing it",
                 g->b.name, r->name, r->id);
    }
}
