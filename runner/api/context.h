/* What the control API's endpoint modules share: the engine and store they
 * serve, the configuration, the metrics, the live streams, the server.
 * Owned by api.c; endpoint modules (jobs.c, info.c, streams.c) only read it.
 */
#ifndef AL_API_CONTEXT_H
#define AL_API_CONTEXT_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "runner/engine/config.h"
#include "runner/engine/engine.h"
#include "runner/engine/store.h"
#include "runner/api/router.h"
#include "runner/loop/http_server.h"

struct api_metrics;
struct batches;
struct api_streams;
struct api_source_status;

/* A running source that reports its own state (api_source_status()). */
struct api_source_reporter {
    char *name;
    char *kind;
    void (*fn)(void *data, struct api_source_status *ret);
    void *data;
};
struct pending_gc;

/* A configured source that did not start: /healthz says "degraded". */
struct api_source_failure {
    char *name;
    char *reason; /* redacted */
};

struct api_ctx {
    uv_loop_t *loop;
    const struct config *cfg;
    struct engine *engine;
    struct store *store;
    struct api_metrics *metrics;
    struct api_streams *streams;
    struct api_server *server;
    char *uploads_dir; /* <state_dir>/uploads */
    uint64_t max_upload;
    int64_t started_ms;
    bool stopping;
    /* the start-up reconcile, for /healthz and `agentlab gc` */
    struct engine_reconcile_report reconcile;
    struct api_source_failure *source_failures;
    size_t n_source_failures;
    struct api_source_reporter *reporters;
    size_t n_reporters;
    /* the POST /v1/gc waiting for its sweep (one sweep runs at a time) */
    struct pending_gc *gc_pending;
    /* batches' cap tracking (runner/engine/batch.h) */
    struct batches *batches;
};

/* An endpoint: answers r now or later (see server.h). */
typedef void (*api_endpoint_fn)(struct api_ctx *ctx, struct api_req *r,
                                const struct route_match *m);

/* Parses an optional unsigned integer query parameter in [0, max]. Answers
 * 400 and returns -EINVAL when it is malformed; 0 otherwise (def when
 * absent). */
int api_query_uint(struct api_req *r, const char *name, uint64_t max, uint64_t def, uint64_t *ret);

/* Reads a job from the store; answers 404 (or 500) and returns < 0 when it
 * cannot. The caller frees *ret. */
int api_get_job(struct api_ctx *ctx, struct api_req *r, const char *id, struct store_job **ret);

#endif
