/* A rate-limited queue of calls to one HTTP API, for sources that talk to a
 * forge's REST API (GitHub today).
 *
 * Calls wait in FIFO order and at most max_inflight run at once. Answers are
 * read for the X-RateLimit-Remaining/-Reset headers; a 403 or 429 that is a
 * rate limit (Retry-After, X-RateLimit-Remaining: 0, or what the
 * rate_limited hook recognises) holds every call back until the limit lifts
 * and then repeats the same call. Credentials come from auth ops: when
 * there is no header the queue asks for a refresh (with a growing back-off
 * when that fails), and a 401 drops the credential and repeats the call once.
 * After api_queue_stop() calls are "final": short timeouts and no waiting
 * out rate limits.
 *
 * Loop thread only. Every callback runs exactly once per call: with the
 * answer, a transport error, or -ECANCELED when the queue stops first.
 */
#ifndef AL_API_QUEUE_H
#define AL_API_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "runner/base/error.h"
#include "runner/loop/http_client.h"

struct al_curl;
struct api_queue;

typedef void (*api_queue_cb)(int result, const struct al_http_response *resp,
                             const struct al_error *err, void *data);

struct api_queue_auth_ops {
    /* The "Authorization: ..." header line, or NULL while there is none. */
    const char *(*header)(void *auth);
    /* Starts getting a credential; the owner reports the end with
     * api_queue_auth_done(). -EALREADY: one is under way. */
    int (*refresh)(void *auth);
    /* The API answered 401 to a call made with header(): drop it and say
     * whether another can come (then the call is repeated once). NULL: a
     * 401 is the call's answer like any other. */
    bool (*invalidate)(void *auth);
};

struct api_queue_params {
    uv_loop_t *loop;
    struct al_curl *curl;
    const char *base;           /* URL prefix of every path, no trailing slash */
    const char *name;           /* for log lines */
    const char *const *headers; /* sent with every call; NULL-terminated */
    unsigned max_inflight;      /* > 0 */
    long timeout_ms;            /* per call */
    long final_timeout_ms;      /* per call after api_queue_stop() */
    size_t max_response;        /* bytes of an answer's body */
    const struct api_queue_auth_ops *auth_ops;
    void *auth;
    /* A 403 without rate-limit headers that is one all the same (GitHub's
     * secondary limits say so in the body only). May be NULL. */
    bool (*rate_limited)(const struct al_http_response *resp);
    /* After each call's callback, and when a stop has nothing left to
     * wait for. May be NULL. */
    void (*settled)(void *data);
    void *data;
};

int api_queue_new(const struct api_queue_params *p, struct api_queue **ret, struct al_error **err);

/* Queues a call. path and body (may be NULL; JSON) are taken over; etag
 * (may be NULL) must live until cb. */
void api_queue_call(struct api_queue *q, const char *method, char *path, char *body,
                    const char *etag, api_queue_cb cb, void *data);

/* The end of an auth ops refresh: result < 0 backs off (message says why). */
void api_queue_auth_done(struct api_queue *q, int result, const char *message);

/* X-RateLimit-Remaining (-1 = unknown) and X-RateLimit-Reset (seconds
 * since the epoch, 0 = unknown) of the last answers that had them. */
void api_queue_rate(const struct api_queue *q, int64_t *ret_remaining, int64_t *ret_reset_s);

/* Queued calls fail with -ECANCELED now and calls in flight are cancelled;
 * calls queued from now on are final. */
void api_queue_stop(struct api_queue *q);

/* No credential will come (the owner frees it): the auth ops are never used
 * again, and queued and later calls fail with -ECANCELED. */
void api_queue_drop_auth(struct api_queue *q);

/* A refresh of the credential is under way. */
bool api_queue_refreshing(const struct api_queue *q);

/* Calls queued, in flight, or a refresh under way. */
bool api_queue_busy(const struct api_queue *q);

/* Frees the queue (every call must have ended: !api_queue_busy()); closed
 * runs on the loop once its timer is closed. */
void api_queue_free(struct api_queue *q, void (*closed)(void *data), void *data);

#endif
