#include "runner/api/router.h"

#include <stdio.h>
#include <string.h>

#include "runner/base/macro.h"
#include "runner/engine/store_batch.h"

/* A path pattern: literal segments, "{id}" for a job id, "{path}" for the
 * rest of the path as an artifact path. */
struct route {
    enum http_method method;
    const char *pattern;
    enum route_id id;
};

static const struct route routes[] = {
        {HTTP_GET, "/", ROUTE_STATUS_PAGE},
        {HTTP_GET, "/healthz", ROUTE_HEALTHZ},
        {HTTP_GET, "/metrics", ROUTE_METRICS},
        {HTTP_POST, "/v1/jobs", ROUTE_JOB_SUBMIT},
        {HTTP_GET, "/v1/jobs", ROUTE_JOB_LIST},
        {HTTP_GET, "/v1/jobs/{id}", ROUTE_JOB_SHOW},
        {HTTP_POST, "/v1/jobs/{id}/cancel", ROUTE_JOB_CANCEL},
        {HTTP_GET, "/v1/jobs/{id}/events", ROUTE_JOB_EVENTS},
        {HTTP_GET, "/v1/jobs/{id}/logs", ROUTE_JOB_LOGS},
        {HTTP_GET, "/v1/jobs/{id}/artifacts", ROUTE_JOB_ARTIFACTS},
        {HTTP_GET, "/v1/jobs/{id}/artifacts/{path}", ROUTE_JOB_ARTIFACT},
        {HTTP_GET, "/v1/events", ROUTE_EVENTS},
        {HTTP_GET, "/v1/images", ROUTE_IMAGES},
        {HTTP_GET, "/v1/pools", ROUTE_POOLS},
        {HTTP_GET, "/v1/hosts", ROUTE_HOSTS},
        {HTTP_GET, "/v1/vms", ROUTE_VMS},
        {HTTP_GET, "/v1/status", ROUTE_STATUS},
        {HTTP_POST, "/v1/gc", ROUTE_GC},
        {HTTP_PUT, "/v1/uploads", ROUTE_UPLOAD},
        {HTTP_POST, "/v1/batches", ROUTE_BATCH_SUBMIT},
        {HTTP_GET, "/v1/batches", ROUTE_BATCH_LIST},
        {HTTP_GET, "/v1/batches/{bid}", ROUTE_BATCH_SHOW},
        {HTTP_POST, "/v1/batches/{bid}/cancel", ROUTE_BATCH_CANCEL},
        {HTTP_GET, "/v1/batches/{bid}/jobs", ROUTE_BATCH_JOBS},
};

static const char *const names[ROUTE_COUNT] = {
        [ROUTE_NOT_FOUND] = "not_found",
        [ROUTE_METHOD_NOT_ALLOWED] = "method_not_allowed",
        [ROUTE_BAD_PARAM] = "bad_param",
        [ROUTE_STATUS_PAGE] = "status_page",
        [ROUTE_HEALTHZ] = "healthz",
        [ROUTE_METRICS] = "metrics",
        [ROUTE_JOB_SUBMIT] = "job_submit",
        [ROUTE_JOB_LIST] = "job_list",
        [ROUTE_JOB_SHOW] = "job_show",
        [ROUTE_JOB_CANCEL] = "job_cancel",
        [ROUTE_JOB_EVENTS] = "job_events",
        [ROUTE_JOB_LOGS] = "job_logs",
        [ROUTE_JOB_ARTIFACTS] = "job_artifacts",
        [ROUTE_JOB_ARTIFACT] = "job_artifact",
        [ROUTE_EVENTS] = "events",
        [ROUTE_IMAGES] = "images",
        [ROUTE_POOLS] = "pools",
        [ROUTE_HOSTS] = "hosts",
        [ROUTE_VMS] = "vms",
        [ROUTE_STATUS] = "status",
        [ROUTE_GC] = "gc",
        [ROUTE_UPLOAD] = "upload",
        [ROUTE_BATCH_SUBMIT] = "batch_submit",
        [ROUTE_BATCH_LIST] = "batch_list",
        [ROUTE_BATCH_SHOW] = "batch_show",
        [ROUTE_BATCH_CANCEL] = "batch_cancel",
        [ROUTE_BATCH_JOBS] = "batch_jobs",
};

const char *route_name(enum route_id id)
{
    if ((unsigned)id >= ROUTE_COUNT || !names[id])
        return "unknown";
    return names[id];
}

bool route_is_public(enum route_id id)
{
    return id == ROUTE_STATUS_PAGE || id == ROUTE_HEALTHZ;
}

bool route_job_id_is_valid(const char *s, size_t len)
{
    if (len != STORE_JOB_ID_LEN || s[0] != 'j')
        return false;
    for (size_t i = 1; i < len; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return false;
    }
    return true;
}

bool route_artifact_path_is_valid(const char *s, size_t len)
{
    if (len == 0 || len > ROUTE_MAX_ARTIFACT_PATH || s[0] == '/')
        return false;
    size_t seg_start = 0, depth = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && s[i] != '/') {
            unsigned char c = (unsigned char)s[i];
            if (c < 0x20 || c == 0x7f)
                return false;
            continue;
        }
        size_t seg = i - seg_start;
        if (seg == 0 || seg > 255)
            return false;
        if ((seg == 1 && s[seg_start] == '.') ||
            (seg == 2 && s[seg_start] == '.' && s[seg_start + 1] == '.'))
            return false;
        if (++depth > ROUTE_MAX_ARTIFACT_DEPTH)
            return false;
        seg_start = i + 1;
    }
    return true;
}

/* Matches path against pattern; fills ret's parameters on a match. Returns
 * 1 on a match, 0 when the shape differs, -1 when the shape matches but a
 * parameter is malformed (message in ret). */
static int match_pattern(const char *pattern, const char *path, struct route_match *ret)
{
    const char *p = pattern, *s = path;
    while (*p) {
        if (strncmp(p, "{id}", 4) == 0) {
            size_t len = strcspn(s, "/");
            if (len == 0)
                return 0;
            if (!route_job_id_is_valid(s, len)) {
                snprintf(ret->message, sizeof(ret->message),
                         "bad job id: expected \"j\" and 20 lower-case hex digits");
                return -1;
            }
            memcpy(ret->job_id, s, len);
            ret->job_id[len] = '\0';
            s += len;
            p += 4;
            continue;
        }
        if (strncmp(p, "{bid}", 5) == 0) {
            size_t len = strcspn(s, "/");
            if (len == 0)
                return 0;
            if (!store_batch_id_is_valid(s, len)) {
                snprintf(ret->message, sizeof(ret->message),
                         "bad batch id: expected \"b\" and 20 lower-case hex digits");
                return -1;
            }
            memcpy(ret->batch_id, s, len);
            ret->batch_id[len] = '\0';
            s += len;
            p += 5;
            continue;
        }
        if (strcmp(p, "{path}") == 0) {
            size_t len = strlen(s);
            if (len == 0)
                return 0;
            if (!route_artifact_path_is_valid(s, len)) {
                snprintf(ret->message, sizeof(ret->message),
                         "bad artifact path: relative, no \".\" or \"..\" segments, no "
                         "empty segments, at most %d bytes",
                         ROUTE_MAX_ARTIFACT_PATH);
                return -1;
            }
            memcpy(ret->artifact, s, len + 1);
            return 1;
        }
        if (*p != *s)
            return 0;
        p++;
        s++;
    }
    return *s == '\0' ? 1 : 0;
}

void route_match(enum http_method method, const char *path, struct route_match *ret)
{
    memset(ret, 0, sizeof(*ret));
    ret->id = ROUTE_NOT_FOUND;
    bool path_known = false, bad_param = false;
    /* a trailing slash is the same path ("/v1/jobs/" = "/v1/jobs") */
    char buf[ROUTE_MAX_ARTIFACT_PATH + 64];
    size_t len = strlen(path);
    if (len >= sizeof(buf)) {
        snprintf(ret->message, sizeof(ret->message), "path too long");
        return;
    }
    memcpy(buf, path, len + 1);
    if (len > 1 && buf[len - 1] == '/')
        buf[len - 1] = '\0';

    for (size_t i = 0; i < ARRAY_SIZE(routes); i++) {
        struct route_match m = {0};
        int r = match_pattern(routes[i].pattern, buf, &m);
        if (r == 0)
            continue;
        if (r < 0) {
            if (!bad_param && !path_known) {
                bad_param = true;
                snprintf(ret->message, sizeof(ret->message), "%s", m.message);
            }
            continue;
        }
        if (routes[i].method == method) {
            m.id = routes[i].id;
            *ret = m;
            return;
        }
        path_known = true;
        const char *name = http_method_str(routes[i].method);
        size_t used = strlen(ret->allow);
        snprintf(ret->allow + used, sizeof(ret->allow) - used, "%s%s", used ? ", " : "", name);
    }
    if (path_known)
        ret->id = ROUTE_METHOD_NOT_ALLOWED;
    else if (bad_param)
        ret->id = ROUTE_BAD_PARAM;
}
