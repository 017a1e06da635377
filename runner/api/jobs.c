#include "runner/api/jobs.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/base/hardlimits.h"
#include "runner/api/artifact_dir.h"
#include "runner/api/json.h"
#include "runner/api/streams.h"
#include "runner/api/sync_reply.h"

#define MAX_ARTIFACT_ENTRIES 10000
#define MAX_PENDING_UPLOADS  16
#define MAX_LABEL_QUERY      128

/* ------------------------------------------------------------ submit */

_Static_assert(STORE_JOB_ID_SIZE <= API_SYNC_REPLY_ID_SIZE, "a job id fits a sync reply");

static void reply_submitted(struct api_ctx *ctx, struct api_req *r, const char *id, int result)
{
    if (result < 0)
        log_warn(id, "API: syncing the store before answering failed; the job is committed");
    struct store_job *job = NULL;
    struct al_error *err = NULL;
    _cleanup_json_gen_ yajl_gen g = json_gen_new();
    if (!g || store_job_get(ctx->store, id, &job, &err) < 0 || json_job(g, job, false) < 0) {
        /* accepted all the same: say so with what we know */
        char body[128];
        int n = snprintf(body, sizeof(body), "{\"id\":\"%s\",\"state\":\"QUEUED\"}\n", id);
        api_reply(r, 201, "application/json", NULL, body, (size_t)n);
    } else {
        char loc[96];
        snprintf(loc, sizeof(loc), "Location: /v1/jobs/%s\r\n", id);
        const unsigned char *buf;
        size_t len;
        yajl_gen_get_buf(g, &buf, &len);
        _cleanup_buf_ struct al_buf b = AL_BUF_INIT;
        if (al_buf_append(&b, buf, len) == 0 && al_buf_puts(&b, "\n") == 0)
            api_reply(r, 201, "application/json", loc, b.data, b.len);
        else
            api_reply_error(r, 500, "internal", "out of memory");
    }
    store_job_free(job);
    al_error_free(err);
}

static bool upload_id_is_valid(const char *s)
{
    if (strlen(s) != API_UPLOAD_ID_LEN || s[0] != 'u')
        return false;
    for (const char *p = s + 1; *p; p++) {
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return false;
    }
    return true;
}

void api_job_submit(struct api_ctx *ctx, struct api_req *r, const struct route_match *m)
{
    (void)m;
    const struct http_request *hr = api_req_http(r);
    const char *ctype = http_request_header(hr, "content-type");
    if (ctype && strncasecmp(ctype, "application/json", 16) != 0) {
        api_reply_error(r, 415, "unsupported_media_type", "a job spec is sent as application/json");
        return;
    }
    if (ctx->stopping) {
        api_reply_error(r, 503, "unavailable", "agentlabd is shutting down");
        return;
    }
    _cleanup_free_ char *workdir = NULL;
    const char *upload = http_request_query(hr, "workdir");
    if (upload) {
        if (!upload_id_is_valid(upload)) {
            api_reply_error(r, 400, "bad_request",
                            "workdir: expected an upload id from PUT /v1/uploads");
            return;
        }
        char name[64];
        snprintf(name, sizeof(name), "%s.tar", upload);
        workdir = al_path_join(ctx->uploads_dir, name);
        if (!workdir) {
            api_reply_error(r, 500, "internal", "out of memory");
            return;
        }
        if (access(workdir, R_OK) < 0) {
            api_reply_error(r, 404, "not_found", "no upload %s (uploads expire after an hour)",
                            upload);
            return;
        }
    }
    struct job_spec *spec = NULL;
    _cleanup_error_ struct al_error *err = NULL;
    const char *body = hr->body.data ? hr->body.data : "";
    int rc = job_spec_parse(body, hr->body.len, 0, &spec, &err);
    if (rc < 0) {
        if (rc == -E2BIG)
            limits_hit(AL_LIMIT_API_BODY);
        if (rc == -E2BIG)
            api_reply_error(r, 413, "payload_too_large", "%s", al_error_message(err));
        else if (rc == -ENOMEM)
            api_reply_error(r, 500, "internal", "out of memory");
        else
            api_reply_error(r, 400, "invalid_job", "%s", al_error_message(err));
        return;
    }
    if (spec->source.type == JOB_SOURCE_NONE) {
        spec->source.type = JOB_SOURCE_API;
    } else if (spec->source.type != JOB_SOURCE_API && spec->source.type != JOB_SOURCE_CLI) {
        api_reply_error(r, 400, "invalid_job",
                        "source.type: only \"api\" or \"cli\" jobs may be submitted here, got "
                        "\"%s\"",
                        job_source_type_to_string(spec->source.type));
        job_spec_free(spec);
        return;
    }
    /* a runaway client script fills the queue and the database otherwise */
    unsigned live = engine_live_jobs(ctx->engine, JOB_SOURCE_API) +
                    engine_live_jobs(ctx->engine, JOB_SOURCE_CLI);
    const struct config_pool *pool = NULL;
    rc = engine_route(ctx->engine, spec, NULL, &pool, NULL, 0, &err);
    if (rc < 0) {
        api_reply_error(r, rc == -ROUTE_ENOPOOL ? 400 : 500,
                        rc == -ROUTE_ENOPOOL ? "no_pool" : "internal", "%s", al_error_message(err));
        job_spec_free(spec);
        return;
    }
    struct engine_admit a = {
            .pool = pool->name, .live = live, .cap = (unsigned)ctx->cfg->agent.api_max_jobs};
    if (engine_admit(ctx->engine, &a, NULL, 0) != ENGINE_ADMIT_YES) {
        limits_hit(AL_LIMIT_API_JOBS);
        api_reply_error(r, 429, "too_many_jobs",
                        "%u jobs from the API are queued or running, the most api_max_jobs "
                        "allows; submit again when some have ended",
                        live);
        job_spec_free(spec);
        return;
    }
    struct api_sync_reply *p = api_sync_reply_new(ctx, r, reply_submitted);
    if (!p) {
        job_spec_free(spec);
        api_reply_error(r, 500, "internal", "out of memory");
        return;
    }
    struct engine_submit opts = {.workdir_tar = workdir};
    rc = engine_submit(ctx->engine, spec, &opts, p->id, &err);
    if (rc < 0) {
        free(p);
        if (rc == -ESHUTDOWN)
            api_reply_error(r, 503, "unavailable", "%s", al_error_message(err));
        else if (rc == -ROUTE_ENOPOOL)
            api_reply_error(r, 400, "no_pool", "%s", al_error_message(err));
        else if (rc == -EINVAL)
            api_reply_error(r, 400, "invalid_job", "%s", al_error_message(err));
        else if (rc == -ENOENT)
            api_reply_error(r, 400, "invalid_job", "%s", al_error_message(err));
        else
            api_reply_error(r, 500, "internal", "%s", al_error_message(err));
        return;
    }
    api_sync_reply_start(p);
}

/* ------------------------------------------------------------ list, show */

static int job_row(yajl_gen g, size_t i, void *data)
{
    const struct store_job_page *page = data;
    return json_job(g, page->jobs[i], false);
}

static int job_page_next(yajl_gen g, void *data)
{
    const struct store_job_page *page = data;
    return json_kv_str(g, "next_cursor", page->next_cursor[0] ? page->next_cursor : NULL);
}

void api_job_list(struct api_ctx *ctx, struct api_req *r, const struct route_match *m)
{
    (void)m;
    const struct http_request *hr = api_req_http(r);
    struct store_job_filter f = {.state = JOB_STATE_NONE, .source = JOB_SOURCE_NONE};
    const char *v;
    if ((v = http_request_query(hr, "state")) && *v && job_state_from_string(v, &f.state) < 0) {
        api_reply_error(r, 400, "bad_request", "state: unknown job state \"%.40s\"", v);
        return;
    }
    if ((v = http_request_query(hr, "source")) && *v &&
        job_source_type_from_string(v, &f.source) < 0) {
        api_reply_error(r, 400, "bad_request",
                        "source: expected spool, api, http, gitlab, github or cli");
        return;
    }
    if ((v = http_request_query(hr, "label")) && *v) {
        if (strlen(v) > MAX_LABEL_QUERY) {
            api_reply_error(r, 400, "bad_request", "label: longer than %d bytes", MAX_LABEL_QUERY);
            return;
        }
        f.label = v;
    }
    if ((v = http_request_query(hr, "cursor")) && *v) {
        if (!route_job_id_is_valid(v, strlen(v))) {
            api_reply_error(r, 400, "bad_request", "cursor: expected a next_cursor value");
            return;
        }
        f.cursor = v;
    }
    if ((v = http_request_query(hr, "order")) && *v) {
        if (streq(v, "oldest")) {
            f.oldest_first = true;
        } else if (!streq(v, "newest")) {
            api_reply_error(r, 400, "bad_request", "order: expected newest or oldest");
            return;
        }
    }
    uint64_t limit = 0;
    if (api_query_uint(r, "limit", STORE_LIST_MAX, STORE_LIST_DEFAULT, &limit) < 0)
        return;
    if (limit == 0) {
        api_reply_error(r, 400, "bad_request", "limit: expected 1 to %d", STORE_LIST_MAX);
        return;
    }
    f.limit = (unsigned)limit;
    struct store_job_page page = {0};
    _cleanup_error_ struct al_error *err = NULL;
    if (store_job_list(ctx->store, &f, &page, &err) < 0) {
        api_reply_error(r, 500, "internal", "listing jobs: %s", al_error_message(err));
        return;
    }
    json_reply_list(r, 200,
                    &(struct json_list){.key = "jobs",
                                        .n = page.n,
                                        .item = job_row,
                                        .tail = job_page_next,
                                        .data = &page});
    store_job_page_clear(&page);
}

void api_job_show(struct api_ctx *ctx, struct api_req *r, const struct route_match *m)
{
    _cleanup_(store_job_freep) struct store_job *job = NULL;
    if (api_get_job(ctx, r, m->job_id, &job) < 0)
        return;
    struct store_attempt *att = NULL;
    size_t n_att = 0;
    _cleanup_error_ struct al_error *err = NULL;
    if (store_attempts_list(ctx->store, m->job_id, &att, &n_att, &err) < 0) {
        api_reply_error(r, 500, "internal", "reading attempts: %s", al_error_message(err));
        return;
    }
    _cleanup_json_gen_ yajl_gen g = json_gen_new();
    int rc = g ? 0 : -ENOMEM;
    if (g) {
        rc |= json_open_map(g);
        rc |= json_key(g, "job");
        rc |= json_job(g, job, true);
        rc |= json_key(g, "attempts");
        rc |= json_open_array(g);
        for (size_t i = 0; i < n_att; i++)
            rc |= json_attempt(g, &att[i]);
        rc |= json_close_array(g);
        rc |= json_close_map(g);
    }
    store_attempts_free(att, n_att);
    json_reply_built(r, 200, g, rc);
}

void api_job_cancel(struct api_ctx *ctx, struct api_req *r, const struct route_match *m)
{
    _cleanup_error_ struct al_error *err = NULL;
    {
        /* decided already (its VM may still be going away): nothing to cancel */
        _cleanup_(store_job_freep) struct store_job *before = NULL;
        if (api_get_job(ctx, r, m->job_id, &before) < 0)
            return;
        if (job_state_is_terminal(before->state)) {
            api_reply_error(r, 409, "already_finished", "job %s has already ended (%s)", m->job_id,
                            job_state_to_string(before->state));
            return;
        }
    }
    int rc = engine_cancel(ctx->engine, m->job_id, &err);
    if (rc == -ENOENT) {
        api_reply_error(r, 404, "not_found", "no job %s", m->job_id);
        return;
    }
    if (rc == -EALREADY) {
        api_reply_error(r, 409, "already_finished", "%s", al_error_message(err));
        return;
    }
    if (rc < 0) {
        api_reply_error(r, 409, "conflict", "%s", al_error_message(err));
        return;
    }
    log_info(m->job_id, "cancel requested through the API");
    _cleanup_(store_job_freep) struct store_job *job = NULL;
    struct al_error *gerr = NULL;
    _cleanup_json_gen_ yajl_gen g = json_gen_new();
    if (!g || store_job_get(ctx->store, m->job_id, &job, &gerr) < 0) {
        al_error_free(gerr);
        api_reply_error(r, 500, "internal", "reading the job after cancelling it");
        return;
    }
    int j = json_open_map(g);
    j |= json_kv_str(g, "id", job->id);
    j |= json_kv_bool(g, "cancel_requested", true);
    j |= json_kv_str(g, "state", job_state_to_string(job->state));
    j |= json_close_map(g);
    json_reply_built(r, 202, g, j);
}

/* ------------------------------------------------------------ artifacts */

static int json_artifact(void *data, const char *path, const struct stat *st)
{
    yajl_gen g = data;
    int rc = json_open_map(g);
    rc |= json_kv_str(g, "path", path);
    rc |= json_kv_uint(g, "size", (uint64_t)st->st_size);
    rc |= json_kv_time(g, "modified",
                       (int64_t)st->st_mtim.tv_sec * 1000 + st->st_mtim.tv_nsec / 1000000);
    rc |= json_close_map(g);
    return rc;
}

void api_job_artifacts(struct api_ctx *ctx, struct api_req *r, const struct route_match *m)
{
    _cleanup_(store_job_freep) struct store_job *job = NULL;
    if (api_get_job(ctx, r, m->job_id, &job) < 0)
        return;
    _cleanup_json_gen_ yajl_gen g = json_gen_new();
    if (!g) {
        api_reply_error(r, 500, "internal", "out of memory");
        return;
    }
    bool truncated = false;
    int rc = json_open_map(g);
    rc |= json_key(g, "artifacts");
    rc |= json_open_array(g);
    int dfd = api_artifact_dir_open(ctx, m->job_id);
    if (dfd >= 0 && !rc)
        rc = api_artifact_dir_walk(dfd, MAX_ARTIFACT_ENTRIES, json_artifact, g, &truncated);
    else if (dfd >= 0)
        close(dfd);
    rc |= json_close_array(g);
    rc |= json_kv_bool(g, "truncated", truncated);
    rc |= json_close_map(g);
    json_reply_built(r, 200, g, rc);
}

/* Opens rel (checked by the router) under dfd, one segment at a time,
 * never following a symlink. Returns an fd of a regular file or -errno. */
static int open_beneath(int dfd, const char *rel)
{
    _cleanup_free_ char *copy = strdup(rel);
    if (!copy)
        return -ENOMEM;
    _cleanup_close_ int cur = dup(dfd);
    if (cur < 0)
        return -errno;
    char *save = NULL;
    char *seg = strtok_r(copy, "/", &save);
    while (seg) {
        char *next = strtok_r(NULL, "/", &save);
        int flags = O_RDONLY | O_NOFOLLOW | O_CLOEXEC | (next ? O_DIRECTORY : O_NONBLOCK);
        int fd = openat(cur, seg, flags);
        if (fd < 0)
            return -errno;
        close(cur);
        cur = fd;
        seg = next;
    }
    struct stat st;
    if (fstat(cur, &st) < 0)
        return -errno;
    if (!S_ISREG(st.st_mode))
        return -EISDIR;
    /* reads must block normally (a regular file ignores O_NONBLOCK anyway) */
    int fl = fcntl(cur, F_GETFL);
    if (fl >= 0)
        fcntl(cur, F_SETFL, fl & ~O_NONBLOCK);
    return TAKE_FD(cur);
}

void api_job_artifact(struct api_ctx *ctx, struct api_req *r, const struct route_match *m)
{
    _cleanup_(store_job_freep) struct store_job *job = NULL;
    if (api_get_job(ctx, r, m->job_id, &job) < 0)
        return;
    _cleanup_close_ int dfd = api_artifact_dir_open(ctx, m->job_id);
    int fd = dfd >= 0 ? open_beneath(dfd, m->artifact) : -ENOENT;
    if (fd < 0) {
        api_reply_error(r, 404, "not_found", "job %s has no artifact \"%s\"", m->job_id,
                        m->artifact);
        return;
    }
    api_send_file(ctx, r, fd, "application/octet-stream");
}

/* ------------------------------------------------------------ uploads */

struct upload {
    int fd;
    char *tmp_path;
    char id[API_UPLOAD_ID_LEN + 1];
    bool kept;
};

static void upload_free(void *data)
{
    struct upload *u = data;
    if (u->fd >= 0)
        close(u->fd);
    if (!u->kept && u->tmp_path)
        unlink(u->tmp_path);
    free(u->tmp_path);
    free(u);
}

static int upload_sink(void *data, const char *buf, size_t len)
{
    struct upload *u = data;
    while (len) {
        ssize_t n = write(u->fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return errno == ENOSPC ? 507 : 500;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static size_t count_uploads(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    size_t n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        n += de->d_name[0] != '.' || strncmp(de->d_name, ".tmp-", 5) == 0;
    closedir(d);
    return n;
}

int api_upload_begin(struct api_ctx *ctx, struct api_req *r, char *msg, size_t msg_size)
{
    struct al_error *err = NULL;
    if (al_mkdir_p(ctx->uploads_dir, 0700, &err) < 0) {
        snprintf(msg, msg_size, "%s", al_error_message(err));
        al_error_free(err);
        return 500;
    }
    api_uploads_sweep(ctx, 3600);
    if (count_uploads(ctx->uploads_dir) >= MAX_PENDING_UPLOADS) {
        snprintf(msg, msg_size, "too many uploads waiting for a job (at most %d)",
                 MAX_PENDING_UPLOADS);
        return 429;
    }
    struct upload *u = calloc(1, sizeof(*u));
    _cleanup_free_ char *hex = al_random_hex(16);
    if (!u || !hex) {
        free(u);
        snprintf(msg, msg_size, "out of memory");
        return 500;
    }
    snprintf(u->id, sizeof(u->id), "u%s", hex);
    if (asprintf(&u->tmp_path, "%s/.tmp-%s", ctx->uploads_dir, u->id) < 0) {
        u->tmp_path = NULL;
        upload_free(u);
        snprintf(msg, msg_size, "out of memory");
        return 500;
    }
    u->fd = open(u->tmp_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (u->fd < 0) {
        snprintf(msg, msg_size, "creating the upload: %s", strerror(errno));
        free(u->tmp_path);
        u->tmp_path = NULL;
        upload_free(u);
        return 500;
    }
    api_req_set_data(r, u, upload_free);
    api_req_set_body(r, ctx->max_upload, upload_sink, u);
    return 0;
}

void api_upload_finish(struct api_ctx *ctx, struct api_req *r, const struct route_match *m)
{
    (void)m;
    struct upload *u = api_req_data(r);
    if (!u) {
        api_reply_error(r, 500, "internal", "upload state lost");
        return;
    }
    char name[64];
    snprintf(name, sizeof(name), "%s.tar", u->id);
    _cleanup_free_ char *final = al_path_join(ctx->uploads_dir, name);
    if (!final || close(u->fd) < 0 || rename(u->tmp_path, final) < 0) {
        u->fd = -1;
        api_reply_error(r, 500, "internal", "storing the upload failed");
        return;
    }
    u->fd = -1;
    u->kept = true;
    _cleanup_json_gen_ yajl_gen g = json_gen_new();
    int rc = g ? 0 : -ENOMEM;
    if (g) {
        rc |= json_open_map(g);
        rc |= json_kv_str(g, "upload", u->id);
        rc |= json_kv_uint(g, "bytes", api_req_http(r)->body_bytes);
        rc |= json_close_map(g);
    }
    json_reply_built(r, 201, g, rc);
}

void api_uploads_sweep(struct api_ctx *ctx, int64_t max_age_s)
{
    DIR *d = opendir(ctx->uploads_dir);
    if (!d)
        return;
    int64_t now = al_now_wall_ms() / 1000;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (streq(de->d_name, ".") || streq(de->d_name, ".."))
            continue;
        struct stat st;
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            continue;
        if (now - (int64_t)st.st_mtim.tv_sec >= max_age_s)
            unlinkat(dirfd(d), de->d_name, 0);
    }
    closedir(d);
}
