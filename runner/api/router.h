/* The control API's routing table: (method, decoded path) -> endpoint and
 * its validated path parameters (job id, artifact path).
 *
 * Pure code (fuzzed with the request parser). A path that matches no route
 * is ROUTE_NOT_FOUND; a known path with another method is
 * ROUTE_METHOD_NOT_ALLOWED (with the allowed methods); a malformed job id or
 * artifact path is ROUTE_BAD_PARAM with a message.
 */
#ifndef AL_API_ROUTER_H
#define AL_API_ROUTER_H

#include <http_parser.h>
#include <stdbool.h>
#include <stddef.h>

#include "runner/engine/store.h"

enum route_id {
    ROUTE_NOT_FOUND = 0,
    ROUTE_METHOD_NOT_ALLOWED,
    ROUTE_BAD_PARAM,
    ROUTE_STATUS_PAGE,   /* GET / */
    ROUTE_HEALTHZ,       /* GET /healthz */
    ROUTE_METRICS,       /* GET /metrics */
    ROUTE_JOB_SUBMIT,    /* POST /v1/jobs */
    ROUTE_JOB_LIST,      /* GET /v1/jobs */
    ROUTE_JOB_SHOW,      /* GET /v1/jobs/{id} */
    ROUTE_JOB_CANCEL,    /* POST /v1/jobs/{id}/cancel */
    ROUTE_JOB_EVENTS,    /* GET /v1/jobs/{id}/events */
    ROUTE_JOB_LOGS,      /* GET /v1/jobs/{id}/logs */
    ROUTE_JOB_ARTIFACTS, /* GET /v1/jobs/{id}/artifacts */
    ROUTE_JOB_ARTIFACT,  /* GET /v1/jobs/{id}/artifacts/{path} */
    ROUTE_EVENTS,        /* GET /v1/events */
    ROUTE_IMAGES,        /* GET /v1/images */
    ROUTE_POOLS,         /* GET /v1/pools */
    ROUTE_HOSTS,         /* GET /v1/hosts */
    ROUTE_VMS,           /* GET /v1/vms */
    ROUTE_STATUS,        /* GET /v1/status */
    ROUTE_GC,            /* POST /v1/gc */
    ROUTE_UPLOAD,        /* PUT /v1/uploads */
    ROUTE_BATCH_SUBMIT,  /* POST /v1/batches */
    ROUTE_BATCH_LIST,    /* GET /v1/batches */
    ROUTE_BATCH_SHOW,    /* GET /v1/batches/{bid} */
    ROUTE_BATCH_CANCEL,  /* POST /v1/batches/{bid}/cancel */
    ROUTE_BATCH_JOBS,    /* GET /v1/batches/{bid}/jobs */
    ROUTE_COUNT,
};

/* Longest artifact path accepted in a URL. */
#define ROUTE_MAX_ARTIFACT_PATH 1024
/* Most path segments of an artifact path. */
#define ROUTE_MAX_ARTIFACT_DEPTH 32

struct route_match {
    enum route_id id;
    char job_id[STORE_JOB_ID_SIZE];             /* routes under /v1/jobs/{id} */
    char batch_id[STORE_JOB_ID_SIZE];           /* routes under /v1/batches/{bid} */
    char artifact[ROUTE_MAX_ARTIFACT_PATH + 1]; /* ROUTE_JOB_ARTIFACT: relative, checked */
    char allow[64];                             /* ROUTE_METHOD_NOT_ALLOWED: "GET, POST" */
    char message[160];                          /* ROUTE_BAD_PARAM */
};

/* Matches a request. path is the decoded path (it starts with "/"). Never
 * fails: the result says what to answer. */
void route_match(enum http_method method, const char *path, struct route_match *ret);

/* True when a route may be used on the TCP listener without a token: the
 * status page shell (it holds no data) and /healthz. */
bool route_is_public(enum route_id id);

/* "job_submit" and the like, for logs and metrics labels. */
const char *route_name(enum route_id id);

/* True for a job id as the store makes them: "j" + 20 lower-case hex digits. */
bool route_job_id_is_valid(const char *s, size_t len);

/* Checks a relative artifact path: segments of 1..255 bytes, none "." or
 * "..", no empty segments, no leading "/", no control characters, at most
 * ROUTE_MAX_ARTIFACT_DEPTH segments and ROUTE_MAX_ARTIFACT_PATH bytes. */
bool route_artifact_path_is_valid(const char *s, size_t len);

#endif
