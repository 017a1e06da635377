/* The CLI's side of the control API: synchronous libcurl requests to
 * agentlabd's unix socket (or, with AGENTLAB_URL and AGENTLAB_TOKEN_FILE,
 * to its TCP listener with the bearer token).
 *
 * Where the daemon is: --socket PATH, else $AGENTLAB_SOCKET, else $AGENTLAB_URL
 * (http://HOST:PORT, token from $AGENTLAB_TOKEN_FILE), else api_socket from
 * the configuration.
 *
 * Responses come from outside this process: JSON bodies are parsed with
 * yajl_tree with a size bound and read through the typed getters below.
 */
#ifndef AL_CLI_API_CLIENT_H
#define AL_CLI_API_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <yajl/yajl_tree.h>

#include "runner/base/buf.h"
#include "runner/base/error.h"

/* Exit codes of the commands that talk to the daemon (README "CLI"). */
#define CLI_EXIT_OK          0
#define CLI_EXIT_FAILED      1 /* the daemon refused or the operation failed */
#define CLI_EXIT_USAGE       2
#define CLI_EXIT_UNREACHABLE 3 /* no agentlabd answers */
#define CLI_EXIT_NOT_FOUND   4 /* no such job or artifact */

#define CLI_MAX_RESPONSE (64u << 20)

struct cli_api;

/* Finds the daemon (see above). socket may be NULL. Does not connect yet. */
int cli_api_open(const char *socket, struct cli_api **ret, struct al_error **err);
struct cli_api *cli_api_close(struct cli_api *a);
DEFINE_CLEANUP_FUNC(struct cli_api, cli_api_close)
#define _cleanup_cli_api_ _cleanup_(cli_api_closep)

/* "unix socket /run/agentlab/agentlabd.sock" or the URL, for messages. */
const char *cli_api_where(const struct cli_api *a);

/* True when something accepts connections where the daemon should be. */
bool cli_api_daemon_running(struct cli_api *a);

struct cli_resp {
    long status;
    struct al_buf body;
    char job_state[32]; /* X-Agentlab-Job-State, when sent */
};

void cli_resp_clear(struct cli_resp *r);

/* One request. body may be NULL. Returns 0 when any HTTP response arrived
 * (check ->status), -ECONNREFUSED/-ENOENT when no daemon answers, other
 * negative errno on transport errors. */
int cli_api_request(struct cli_api *a, const char *method, const char *path,
                    const char *content_type, const void *body, size_t len, struct cli_resp *ret,
                    struct al_error **err);

/* Uploads a file as the request body (PUT /v1/uploads). */
int cli_api_upload(struct cli_api *a, const char *path, const char *file, struct cli_resp *ret,
                   struct al_error **err);

/* Streams a response body to sink as it arrives (logs, downloads). sink
 * returns 0 to go on. interrupted (may be NULL) is polled about every
 * 100 ms; when it returns true, on_interrupt runs once (cancel the job)
 * and the stream goes on. Returns like cli_api_request(); error bodies are
 * collected in ret->body instead of going to sink. */
int cli_api_stream(struct cli_api *a, const char *path,
                   int (*sink)(const char *buf, size_t len, void *data), void *data,
                   bool (*interrupted)(void *data), void (*on_interrupt)(void *data),
                   struct cli_resp *ret, struct al_error **err);

/* Maps a failed call or an error response to a message on stderr and an
 * exit code (CLI_EXIT_*). what names the operation ("listing jobs"). */
int cli_api_fail(const struct cli_api *a, int result, const struct cli_resp *r,
                 const struct al_error *err, const char *what);

/* Parses the response body as JSON; NULL (and a message on stderr) when it
 * is not. */
yajl_val cli_resp_json(const struct cli_resp *r);

/* cli_api_open() for a command: the error goes to stderr. Returns 0 or
 * CLI_EXIT_FAILED. */
int cli_api_connect(const char *socket, struct cli_api **ret);

/* One request (body may be NULL) whose answer must have status want.
 * Returns 0 with the answer in *ret (the caller clears it), or the exit
 * code of cli_api_fail(), what naming the operation, with *ret cleared. */
int cli_api_call(struct cli_api *a, const char *method, const char *path, const char *content_type,
                 const void *body, size_t len, long want, const char *what, struct cli_resp *ret);

/* cli_api_call() without a body whose answer is parsed: 0 with the tree in
 * *ret_v (the caller frees it), or an exit code. */
int cli_api_call_json(struct cli_api *a, const char *method, const char *path, long want,
                      const char *what, yajl_val *ret_v);

/* Writes the answer's body to stdout as it came (--json) and clears it. */
void cli_resp_print_raw(struct cli_resp *r);

/* Typed getters on a parsed tree; path is NULL-terminated. */
const char *cli_json_str(yajl_val v, const char *const *path);
int64_t cli_json_int(yajl_val v, const char *const *path, int64_t def);
bool cli_json_bool(yajl_val v, const char *const *path);
yajl_val cli_json_array(yajl_val v, const char *const *path);

#define JPATH(...) ((const char *const[]){__VA_ARGS__, NULL})

static inline void yajl_valp_free(yajl_val *v)
{
    if (*v)
        yajl_tree_free(*v);
}
#define _cleanup_yajl_ _cleanup_(yajl_valp_free)

#endif
