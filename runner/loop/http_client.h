/* Asynchronous HTTP requests on the curl-on-uv multi handle.
 *
 * One call = one request with bounded response size, timeouts and captured
 * response headers. The completion callback runs once on the loop thread.
 * Responses are bytes from outside: callers parse them at their edge.
 */
#ifndef AL_HTTP_CLIENT_H
#define AL_HTTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>

#include "runner/base/buf.h"
#include "runner/loop/curl_uv.h"

#define AL_HTTP_DEFAULT_MAX_RESPONSE (8u << 20)
#define AL_HTTP_MAX_HEADERS          128
#define AL_HTTP_MAX_HEADER_BYTES     (64u << 10)

struct al_http_header {
    char *name; /* as received */
    char *value;
};

struct al_http_response {
    long status;  /* 0 when no response arrived */
    char *reason; /* reason phrase of the final status line ("" if none) */
    struct al_buf body;
    struct al_http_header headers[AL_HTTP_MAX_HEADERS];
    size_t n_headers;
    size_t header_bytes;
    bool truncated; /* body exceeded max_response; the call fails with -EFBIG */
};

struct al_http_request {
    const char *method; /* default GET */
    const char *url;
    const char *const *headers; /* NULL-terminated "Name: value" lines, may be NULL */
    const void *body;           /* copied by al_http_start() */
    size_t body_len;
    size_t max_response;     /* 0 = AL_HTTP_DEFAULT_MAX_RESPONSE */
    long timeout_ms;         /* whole request; 0 = 60 s */
    long connect_timeout_ms; /* 0 = 10 s */
    const char *unix_socket; /* connect to this unix socket instead of TCP */
    /* Extra easy-handle setup (TLS pinning and the like); may be NULL. Return
     * non-zero to refuse the request. */
    int (*setup)(CURL *easy, void *setup_data);
    void *setup_data;
};

struct al_http_call;

/* result: 0 when an HTTP response arrived (any status); negative errno on
 * transport failure (-ETIMEDOUT, -ECONNREFUSED, -ECONNRESET, -EFBIG,
 * -ECANCELED, -EPROTO, -EIO) with detail in err. resp is valid only during
 * the callback; err is owned by the call. */
typedef void (*al_http_cb)(int result, const struct al_http_response *resp,
                           const struct al_error *err, void *data);

/* Starts a request. ret_call (may be NULL) lets the caller cancel it until
 * the callback runs. */
int al_http_start(struct al_curl *c, const struct al_http_request *req, al_http_cb cb, void *data,
                  struct al_http_call **ret_call, struct al_error **err);

/* Cancels a call: its callback runs with -ECANCELED before this returns. */
void al_http_cancel(struct al_http_call *call);

/* Case-insensitive header lookup; NULL when absent. */
const char *al_http_header(const struct al_http_response *resp, const char *name);

/* Maps a CURLcode to a negative errno. */
int al_http_curlcode_to_errno(CURLcode rc);

#endif
