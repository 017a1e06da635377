#include "runner/sources/gitlab_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <curl/curl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runner/base/buf.h"
#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/loop/http_client.h"
#include "runner/sources/gitlab_checkout.h"
#include "runner/sources/gitlab_job.h"
#include "runner/sources/source_route.h"

/* ------------------------------------------------------------ jobs */

static void on_job_closed(uv_handle_t *h)
{
    struct gljob *j = h->data;
    struct gitlab *g = j->g;
    if (j->token) {
        al_redact_remove(j->token);
        al_wipe_free(j->token);
    }
    for (size_t i = 0; j->payload && i < j->payload->n_dependencies; i++) {
        if (j->payload->dependencies[i].token)
            al_redact_remove(j->payload->dependencies[i].token);
    }
    for (size_t i = 0; j->payload && i < j->payload->n_mask_prefixes; i++)
        al_redact_remove_prefix(j->payload->mask_prefixes[i]);
    if (j->dep_fd >= 0)
        close(j->dep_fd);
    free(j->deps_dir);
    strv_free(j->dep_zips);
    if (j->cache_dir)
        gl_remove_async(g, j->cache_dir); /* the job ended before its checkout */
    free(j->cache_dir);
    strv_free(j->cache_zips);
    gitlab_job_free(j->payload);
    job_spec_free(j->spec);
    free(j->checkout_dir);
    al_buf_free(&j->trace);
    al_buf_free(&j->footer);
    free(j->zip_path);
    free(j);
    gl_maybe_stopped(g);
}

void gl_job_free(struct gljob *j)
{
    al_list_del(&j->link);
    uv_timer_stop(&j->timer);
    uv_close((uv_handle_t *)&j->timer, on_job_closed);
}

/* ---- start ---- */

static void submit(struct gljob *j, const char *tar)
{
    struct gitlab *g = j->g;
    struct engine_submit opts = {.workdir_tar = tar, .pools = g->src->pools};
    struct al_error *err = NULL;
    char id[STORE_JOB_ID_SIZE];
    int r = engine_submit(g->e, TAKE_PTR(j->spec), &opts, id, &err);
    if (j->checkout_dir)
        gl_remove_async(g, j->checkout_dir);
    if (r < 0) {
        gl_fail_early(j, "agentlab refused the job: %s", al_error_message(err));
        al_error_free(err);
        return;
    }
    memcpy(j->engine_id, id, sizeof(id));
    j->submitted = true;
    j->phase = PHASE_ENGINE;
    log_info(id, "gitlab %s: GitLab job %" PRId64 " (%s) runs as %s", g->src->name, j->id,
             j->payload->job_name ? j->payload->job_name : "unnamed", id);
}

static void on_checkout_done(int result, const char *tar, const char *message, void *data)
{
    struct gljob *j = data;
    j->checkout = NULL;
    if (j->n_dep_zips)
        gl_remove_async(j->g, j->deps_dir);
    if (j->cache_dir) {
        gl_remove_async(j->g, j->cache_dir);
        free(j->cache_dir);
        j->cache_dir = NULL;
    }
    if (result < 0) {
        if (j->checkout_dir)
            gl_remove_async(j->g, j->checkout_dir);
        if (result == -ECANCELED)
            gl_fail_early(j, "%s", j->shutdown ? "agentlabd stopped" : "canceled");
        else
            gl_fail_early(j, "fetching the sources failed: %s", message);
        return;
    }
    submit(j, tar);
}

/* ---- artifacts of earlier jobs ---- */

static void checkout_begin(struct gljob *j);

/* The response body goes to the zip file, within the checkout cap. */
static size_t on_dep_body(char *ptr, size_t size, size_t nmemb, void *data)
{
    struct gljob *j = data;
    size_t n = size * nmemb;
    uint64_t cap = j->g->src->max_checkout_bytes;
    if (cap && j->dep_bytes + n > cap) {
        j->dep_over = true;
        return 0;
    }
    for (size_t off = 0; off < n;) {
        ssize_t w = write(j->dep_fd, ptr + off, n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return 0;
        off += (size_t)w;
    }
    j->dep_bytes += n;
    return n;
}

static int dep_setup(CURL *easy, void *data)
{
    if (curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_dep_body) != CURLE_OK ||
        curl_easy_setopt(easy, CURLOPT_WRITEDATA, data) != CURLE_OK)
        return -1;
    return 0;
}

static void deps_next(struct gljob *j);

static void on_dep_done(int result, const struct al_http_response *resp, const struct al_error *err,
                        void *data)
{
    struct gljob *j = data;
    j->call = NULL;
    if (j->dep_fd >= 0) {
        close(j->dep_fd);
        j->dep_fd = -1;
    }
    const struct gitlab_dependency *d = &j->payload->dependencies[j->dep_next];
    const char *name = d->name ? d->name : "job";
    char what[320];
    snprintf(what, sizeof(what), "downloading the artifacts of %s (%" PRId64 ")", name, d->id);
    if (result == 0)
        j->last_contact_ms = al_now_mono_ms();
    if (result < 0 || j->dep_over || resp->status != 200) {
        gl_remove_async(j->g, j->deps_dir);
        if (result == -ECANCELED || j->cancel_requested)
            gl_fail_early(j, "%s", j->shutdown ? "agentlabd stopped" : "canceled");
        else if (result < 0)
            gl_fail_early(j, "%s failed: %s", what, al_error_message(err));
        else if (j->dep_over)
            gl_fail_early(j, "%s failed: larger than max_checkout_bytes (%" PRIu64 ")", what,
                          j->g->src->max_checkout_bytes);
        else
            gl_fail_early(j, "%s failed: HTTP %ld%s", what, resp->status,
                          resp->status == 403   ? " (forbidden)"
                          : resp->status == 404 ? " (not found: expired or never uploaded?)"
                                                : "");
        return;
    }
    char line[400];
    int n = snprintf(line, sizeof(line), "Downloading artifacts for %s (%" PRId64 ")... ok\n", name,
                     d->id);
    gl_trace_append(j, line, n > 0 && (size_t)n < sizeof(line) ? (size_t)n : 0);
    j->n_dep_zips++;
    j->dep_next++;
    deps_next(j);
}

/* Downloads the next dependency's artifacts, then starts the checkout. */
static void deps_next(struct gljob *j)
{
    struct gitlab *g = j->g;
    const struct gitlab_job *p = j->payload;
    while (j->dep_next < p->n_dependencies && !p->dependencies[j->dep_next].artifacts_file)
        j->dep_next++;
    if (j->dep_next == p->n_dependencies) {
        checkout_begin(j);
        return;
    }
    const struct gitlab_dependency *d = &p->dependencies[j->dep_next];
    struct al_error *err = NULL;
    if (!j->dep_zips) {
        j->dep_zips = calloc(p->n_dependencies + 1, sizeof(char *));
        if (!j->dep_zips || al_rm_rf(j->deps_dir, NULL) < 0 ||
            al_mkdir_p(j->deps_dir, 0700, &err) < 0) {
            gl_fail_early(j, "preparing %s: %s", j->deps_dir,
                          err ? al_error_message(err) : "failed");
            al_error_free(err);
            return;
        }
    }
    char file[40];
    snprintf(file, sizeof(file), "%" PRId64 ".zip", d->id);
    char *zip = al_path_join(j->deps_dir, file);
    if (!zip) {
        gl_fail_early(j, "out of memory");
        return;
    }
    j->dep_zips[j->n_dep_zips] = zip;
    j->dep_fd = open(zip, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (j->dep_fd < 0) {
        gl_fail_early(j, "creating %s: %s", zip, strerror(errno));
        return;
    }
    j->dep_bytes = 0;
    j->dep_over = false;
    char path[64];
    snprintf(path, sizeof(path), "/api/v4/jobs/%" PRId64 "/artifacts", d->id);
    struct call_opts o = {.method = "GET",
                          .path = path,
                          .job_token = d->token ? d->token : j->token,
                          .timeout_ms = UPLOAD_TIMEOUT_MS,
                          .setup = dep_setup,
                          .setup_data = j};
    if (gl_api_call(g, &o, on_dep_done, j, &j->call, &err) < 0) {
        gl_fail_early(j, "downloading the artifacts of job %" PRId64 ": %s", d->id,
                      al_error_message(err));
        al_error_free(err);
    }
}

static struct gljob *job_new(struct gitlab *g, int64_t id, char *token)
{
    struct gljob *j = calloc(1, sizeof(*j));
    if (!j) {
        al_wipe_free(token);
        return NULL;
    }
    j->g = g;
    al_list_init(&j->link);
    j->id = id;
    j->dep_fd = -1;
    if (al_redact_add(token) < 0) {
        al_wipe_free(token);
        free(j);
        return NULL;
    }
    j->token = token;
    j->interval_s = TRACE_INTERVAL_S;
    j->last_contact_ms = al_now_mono_ms();
    uv_timer_init(g->loop, &j->timer);
    j->timer.data = j;
    al_list_add(&g->jobs, &j->link);
    return j;
}

void gl_start_job(struct gitlab *g, const char *body, size_t len)
{
    struct al_error *err = NULL;
    struct gitlab_job *payload = NULL;
    int r = gitlab_job_parse(body, len, &payload, &err);
    if (r < 0) {
        int64_t id = 0;
        char *token = NULL;
        if (gitlab_job_parse_ident(body, len, &id, &token) < 0) {
            log_error(NULL, "gitlab %s: unreadable job payload, cannot report it: %s", g->src->name,
                      al_error_message(err));
            al_error_free(err);
            return;
        }
        struct gljob *j = job_new(g, id, token);
        if (j)
            gl_fail_early(j, "agentlab could not read the job: %s", al_error_message(err));
        al_error_free(err);
        return;
    }
    char *token = strdup(payload->token);
    struct gljob *j = token ? job_new(g, payload->id, token) : NULL;
    if (!j) {
        log_error(NULL, "gitlab %s: job %" PRId64 ": out of memory", g->src->name, payload->id);
        gitlab_job_free(payload);
        return;
    }
    j->payload = payload;
    for (size_t i = 0; i < payload->n_dependencies; i++) {
        if (payload->dependencies[i].token && al_redact_add(payload->dependencies[i].token) < 0) {
            /* not registered: on_job_closed must not drop a registration */
            al_wipe_free(payload->dependencies[i].token);
            payload->dependencies[i].token = NULL;
        }
    }
    /* masked in the job's output, and everywhere else, while the job lives */
    for (size_t i = 0; i < payload->n_mask_prefixes;) {
        r = al_redact_add_prefix(payload->mask_prefixes[i]);
        if (r == 0) {
            i++;
            continue;
        }
        /* not registered: on_job_closed must not drop a registration */
        log_warn(NULL, "gitlab %s: job %" PRId64 ": token prefix %s is not masked: %s",
                 g->src->name, j->id, payload->mask_prefixes[i], strerror(-r));
        free(payload->mask_prefixes[i]);
        memmove(&payload->mask_prefixes[i], &payload->mask_prefixes[i + 1],
                (payload->n_mask_prefixes - i) * sizeof(char *));
        payload->n_mask_prefixes--;
    }
    j->phase = PHASE_CHECKOUT;
    log_info(NULL, "gitlab %s: job %" PRId64 " (%s, %s at %.12s)", g->src->name, j->id,
             payload->job_name ? payload->job_name : "unnamed",
             payload->project_name ? payload->project_name : "project", payload->sha);
    gl_trace_tick_arm(j, (uint64_t)j->interval_s * 1000u);

    enum gitlab_clone clone = gitlab_job_clone_mode(payload, (enum gitlab_clone)g->src->clone);
    /* no pool named: the engine routes the job among the source's pools */
    struct gitlab_spec_opts so = {.clone = clone};
    r = gitlab_job_to_spec(payload, &so, &j->spec, &err);
    if (r < 0) {
        gl_fail_early(j, "%s", al_error_message(err));
        al_error_free(err);
        return;
    }
    /* the pool's limits and allowed images, before anything is fetched */
    r = source_check_job(g->e, g->src, j->spec, NULL, &err);
    if (r < 0) {
        gl_fail_early(j, "agentlab refused the job: %s", al_error_message(err));
        al_error_free(err);
        return;
    }
    bool need_deps = false;
    for (size_t i = 0; i < payload->n_dependencies; i++)
        need_deps |= payload->dependencies[i].artifacts_file != NULL;
    if (clone != GITLAB_CLONE_HOST) {
        if (need_deps) {
            gl_fail_early(j, "the artifacts of earlier jobs (dependencies, needs) are unpacked by "
                             "agentlabd into the sources it checks out: they need clone = host");
            return;
        }
        gl_cache_skip_restore(j);
        submit(j, NULL);
        return;
    }
    char name[40];
    snprintf(name, sizeof(name), "%" PRId64 ".deps", j->id);
    j->deps_dir = al_path_join(g->checkout_root, name);
    if (!j->deps_dir) {
        gl_fail_early(j, "out of memory");
        return;
    }
    gl_cache_restore(j, deps_next);
}

static void checkout_note(const char *line, void *data)
{
    gl_trace_append(data, line, strlen(line));
}

static void checkout_begin(struct gljob *j)
{
    struct gitlab *g = j->g;
    const struct gitlab_job *payload = j->payload;
    struct al_error *err = NULL;
    char name[32];
    snprintf(name, sizeof(name), "%" PRId64, j->id);
    j->checkout_dir = al_path_join(g->checkout_root, name);
    /* caches first: the artifacts of earlier jobs win over them */
    _cleanup_free_ const char **zips = calloc(j->n_cache_zips + j->n_dep_zips + 1, sizeof(char *));
    size_t nz = 0;
    for (size_t i = 0; zips && i < j->n_cache_zips; i++)
        zips[nz++] = j->cache_zips[i];
    for (size_t i = 0; zips && i < j->n_dep_zips; i++)
        zips[nz++] = j->dep_zips[i];
    struct gitlab_checkout_params cp = {
            .dir = j->checkout_dir,
            .repo_url = payload->repo_url,
            .token = payload->token,
            .sha = payload->sha,
            .refspecs = (const char *const *)payload->refspecs,
            .depth = payload->depth,
            .max_bytes = g->src->max_checkout_bytes,
            .timeout_s = CHECKOUT_TIMEOUT_S,
            .unpack_zips = zips,
            .list_tracked = gitlab_job_wants_untracked(payload),
            .git = &payload->git,
            .note = checkout_note,
    };
    if (!j->checkout_dir || !zips ||
        gitlab_checkout_start(g->loop, &cp, on_checkout_done, j, &j->checkout, &err) < 0) {
        if (j->n_dep_zips)
            gl_remove_async(g, j->deps_dir);
        if (j->cache_dir) {
            gl_remove_async(g, j->cache_dir);
            free(j->cache_dir);
            j->cache_dir = NULL;
        }
        gl_fail_early(j, "fetching the sources failed: %s",
                      err ? al_error_message(err) : "out of memory");
        al_error_free(err);
    }
}
