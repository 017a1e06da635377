/* The GitHub source's webhook listener: workflow_job deliveries over
 * HTTP/1.1 on a TCP address (the control API's server, runner/loop/http_server.h, with
 * its limits and timeouts).
 *
 * For each request, in this order:
 *   not POST                                  405
 *   Content-Type other than application/json  415
 *   body over webhook_max_body                413 (nothing more is read)
 *   X-Hub-Signature-256 missing or not the HMAC-SHA256 of the body under
 *   the webhook secret (compared in constant time)
 *                                             401, and one log line naming
 *                                             the delivery and the reason,
 *                                             never the payload
 *   X-GitHub-Delivery missing or malformed    400
 *   a delivery id seen before                 200 "duplicate" (GitHub
 *                                             redeliveries keep the id)
 *   X-GitHub-Event ping                       200 "pong"
 *   another event                             200 "ignored"
 *   workflow_job that does not parse          400 with the field named
 *   workflow_job                              202, after on_job ran
 *
 * The last GITHUB_HOOK_DEDUPE delivery ids are remembered (in memory: a
 * restarted daemon relies on the job-id bookkeeping of the source and its
 * catch-up poll). Loop thread only.
 */
#ifndef AL_GITHUB_HOOK_H
#define AL_GITHUB_HOOK_H

#include <stdint.h>
#include <uv.h>

#include "runner/base/error.h"
#include "runner/sources/github_payload.h"

#define GITHUB_HOOK_DEDUPE 4096

struct github_hook;

struct github_hook_params {
    uv_loop_t *loop;
    const char *name;   /* the source's name, for logs */
    const char *listen; /* "HOST:PORT" or "[IPV6]:PORT"; port 0 = any (tests) */
    const char *secret_file;
    uint64_t max_body;
    /* A verified, parsed workflow_job delivery. job is valid during the call. */
    void (*on_job)(const struct github_job *job, const char *delivery, void *data);
    void *data;
};

struct github_hook_stats {
    uint64_t deliveries; /* requests that reached the signature check */
    uint64_t bad_signature;
    uint64_t duplicates;
    uint64_t malformed;
    uint64_t accepted; /* workflow_job deliveries handed to on_job */
};

/* Reads the secret, binds and starts listening. */
int github_hook_new(const struct github_hook_params *p, struct github_hook **ret,
                    struct al_error **err);

/* The bound port. */
int github_hook_port(const struct github_hook *h);

void github_hook_stats(const struct github_hook *h, struct github_hook_stats *ret);

/* Closes the listener and its connections, wipes the secret, frees, then
 * calls done (may be NULL). */
void github_hook_stop(struct github_hook *h, void (*done)(void *data), void *data);

#endif
