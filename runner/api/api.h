/* The control API of agentlabd: HTTP/1.1 + JSON on a unix socket
 * (api_socket, mode 0660, group api_socket_group) and, when api_listen is
 * set, on a TCP address that requires "Authorization: Bearer <token>" with
 * the token from api_token_file (compared in constant time). Endpoints,
 * error format and limits are documented in README.md ("Control API").
 *
 * Lifecycle: api_new() binds the listeners and starts observing the engine
 * (create it before engine_start() so the metrics see the reconcile);
 * api_start() accepts connections (after the reconcile); api_stop() closes
 * everything before the engine stops. Loop thread only.
 */
#ifndef AL_API_H
#define AL_API_H

#include <uv.h>

#include "runner/engine/config.h"
#include "runner/engine/engine.h"
#include "runner/loop/http_server.h"

struct api;

struct api_params {
    uv_loop_t *loop;
    const struct config *cfg;
    struct engine *engine;
    /* Tests: listen here instead of cfg's api_socket / api_listen. The
     * token is then given directly. NULL = from the configuration. */
    const char *unix_path;
    const char *tcp_host;
    int tcp_port;
    const char *token;
    /* Tests: limits instead of the configured ones (0 fields = default). */
    const struct api_server_limits *limits;
};

/* Binds the listeners, reads the token, starts observing the engine.
 * Errors say which setting is wrong (a world-readable token file, a
 * missing group, an address that is not an IP literal, a live daemon on
 * the socket). */
int api_new(const struct api_params *p, struct api **ret, struct al_error **err);

/* Starts accepting connections; r is the start-up reconcile's report
 * (may be NULL). */
int api_start(struct api *a, const struct engine_reconcile_report *r, struct al_error **err);

/* Records that the source name did not start, and why: /healthz then
 * answers "degraded" with them while the daemon serves its other sources
 * (a farm should not lose every source to one bad token file). Returns 0 or
 * -ENOMEM. */
int api_source_failed(struct api *a, const char *name, const char *reason);

/* What a source reports about itself for /metrics, GET /v1/pools and
 * `agentlab pool status` (filled by the daemon from the source's own
 * status call: sources do not include API headers). */
#define API_SOURCE_GAUGES 16
struct api_source_gauge {
    const char *name; /* a static string of [a-z_] */
    int64_t value;
};
struct api_source_status {
    char state[64];               /* such as "polling" or "session conflict" */
    int64_t last_message_wall_ms; /* 0: never */
    struct api_source_gauge gauges[API_SOURCE_GAUGES];
    size_t n_gauges;
};
typedef void (*api_source_status_fn)(void *data, struct api_source_status *ret);

/* Registers the status callback of the source name (kind: "github_scaleset"
 * and the like), or removes it when fn is NULL (before the source is
 * freed). Returns 0 or -ENOMEM. */
int api_source_status(struct api *a, const char *name, const char *kind, api_source_status_fn fn,
                      void *data);

/* The bound TCP port (0 when there is no TCP listener). */
int api_tcp_port(const struct api *a);

/* The server, for its counters (tests). */
struct api_server *api_get_server(struct api *a);

/* Closes listeners and connections (streams in progress are cut), stops
 * observing the engine, frees everything, then calls done. */
void api_stop(struct api *a, void (*done)(void *data), void *data);

#endif
