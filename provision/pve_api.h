/* A Proxmox VE API client on the curl-on-uv loop.
 *
 * One pve_api per configured cluster: it holds the credentials (an API token
 * read from a file, or a user and password for ticket auth), the TLS policy
 * (a CA file, or the pinned SHA-256 fingerprint of the server's certificate,
 * checked in an OpenSSL verify callback), and a timer for delayed calls.
 *
 * A call is one API request: parameters are percent-encoded into the query
 * (GET, DELETE) or a form body (POST, PUT), booleans as 0/1, arrays as
 * repeated keys. Transient failures are retried with exponential backoff
 * inside the call: connection refused always; resets and timeouts when the
 * request is idempotent; 5xx lock timeouts ("can't lock file ... got
 * timeout", "VM is locked") always, since the server did nothing; 502-504
 * for idempotent requests; 400 "no such task" when the caller asks for it
 * (task status right after dispatch). Each response is parsed once here,
 * with size and depth limits, into the `data` member of the `{"data": ...}`
 * envelope; errors carry Proxmox's own reason (status line, `message`,
 * `errors`). The token never appears in messages; its secret is registered
 * with the log redactor.
 *
 * Loop thread only.
 */
#ifndef AL_PVE_API_H
#define AL_PVE_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include <yajl/yajl_tree.h>

#include "runner/base/buf.h"
#include "runner/base/error.h"

struct al_curl;
struct pve_api;
struct pve_call;

#define PVE_MAX_JSON_DEPTH    32
#define PVE_DEFAULT_MAX_REPLY (4u << 20)
#define PVE_MESSAGE_MAX       400
#define PVE_READ_TIMEOUT_MS   30000 /* no byte for this long: the request failed */

struct pve_api_config {
    const char *url;           /* https://HOST:8006, without /api2/json */
    const char *token_file;    /* USER@REALM!TOKENID=SECRET; or NULL for ticket auth */
    const char *user;          /* ticket auth: USER@REALM */
    const char *password_file; /* ticket auth */
    const char *ca_file;       /* PEM bundle; NULL = the system store (or the pin alone) */
    const char *fingerprint;   /* SHA-256 of the certificate, "AA:BB:..."; may be NULL */
    long connect_timeout_ms;   /* 0 = 10 s */
    long timeout_ms;           /* one whole request, 0 = 60 s (and PVE_READ_TIMEOUT_MS
                                * without a byte) */
};

/* Form parameters of one call, percent-encoded as they are added. Errors
 * are sticky and reported by pve_api_call(). */
struct pve_params {
    struct al_buf buf;
    int error;
};

void pve_params_add(struct pve_params *p, const char *key, const char *value);
void pve_params_add_int(struct pve_params *p, const char *key, int64_t value);
void pve_params_add_bool(struct pve_params *p, const char *key, bool value);
void pve_params_clear(struct pve_params *p);

/* Appends s percent-encoded: every byte outside A-Z a-z 0-9 - . _ ~ becomes
 * %XX (spaces too, never '+'). */
int pve_percent_encode(struct al_buf *out, const char *s, size_t len);

enum pve_call_flags {
    PVE_IDEMPOTENT = 1u << 0, /* safe to send again after a reset or timeout */
    PVE_RETRY_NO_SUCH_TASK = 1u << 1,
    PVE_NO_RETRY = 1u << 2, /* report the first failure as it is */
};

struct pve_request {
    const char *method; /* GET, POST, PUT or DELETE */
    const char *path;   /* below /api2/json, each segment already safe (pve_path_segment) */
    const struct pve_params *params; /* may be NULL */
    unsigned flags;
    size_t max_reply;  /* 0 = PVE_DEFAULT_MAX_REPLY */
    long timeout_ms;   /* 0 = the api's */
    uint64_t delay_ms; /* send after this long */
};

/* What came back. status is 0 when no HTTP response arrived. message is
 * Proxmox's reason for a failure ("" on success). data is the envelope's
 * `data` member (NULL when absent or JSON null), valid during the callback. */
struct pve_reply {
    long status;
    const char *message;
    yajl_val data;
};

/* result: 0 on a 2xx reply; otherwise negative: -EACCES (401/403), -EINVAL
 * (400), -ENOENT (404), -EIO (other statuses), -ECANCELED, or the transport's
 * errno (-ECONNREFUSED, -ECONNRESET, -ETIMEDOUT, -EPERM for TLS, -EFBIG,
 * -EPROTO for a malformed reply). err describes it with the method, path
 * and reason. reply is never NULL. */
typedef void (*pve_cb)(int result, const struct pve_reply *reply, const struct al_error *err,
                       void *data);

/* Creates a client. Reads the token (or password) file now. */
int pve_api_new(uv_loop_t *loop, struct al_curl *curl, const struct pve_api_config *cfg,
                struct pve_api **ret, struct al_error **err);

/* Cancels every call (their callbacks run with -ECANCELED), then frees the
 * client; done (may be NULL) runs when it is gone. */
void pve_api_close(struct pve_api *api, void (*done)(void *data), void *data);

/* Starts a call. ret_call (may be NULL) allows pve_call_cancel() until the
 * callback runs. On error nothing was started and cb will not run. */
int pve_api_call(struct pve_api *api, const struct pve_request *req, pve_cb cb, void *data,
                 struct pve_call **ret_call, struct al_error **err);

/* Runs cb(data) on the loop after delay_ms, as a cancellable call (its
 * pve_cb gets result 0 and an empty reply). */
int pve_api_after(struct pve_api *api, uint64_t delay_ms, pve_cb cb, void *data,
                  struct pve_call **ret_call);

/* Cancels a call: its callback runs with -ECANCELED before this returns.
 * Mutating requests already on the wire may still take effect server-side. */
void pve_call_cancel(struct pve_call *call);

/* HTTP requests sent so far, retries included. */
uint64_t pve_api_requests(const struct pve_api *api);

/* Re-reads the credentials file (after an operator fixed it). */
int pve_api_reload_credentials(struct pve_api *api, struct al_error **err);

/* Appends "/" and s percent-encoded as one path segment. */
int pve_path_segment(struct al_buf *out, const char *s);

/* Parses "AA:BB:..." (or without colons, any case) into 32 bytes. */
int pve_fingerprint_parse(const char *s, uint8_t ret[32]);

/* Parses a token file's text: trims whitespace, checks
 * USER@REALM!TOKENID=SECRET. ret_secret points into the returned string. */
int pve_token_parse(const char *text, char **ret_token, const char **ret_secret,
                    struct al_error **err);

/* Parses a reply body at the edge: limits, the envelope, Proxmox's reason.
 * On a 2xx status *ret_tree is the whole document (free it with
 * yajl_tree_free) and *ret_data its `data` member; otherwise ret_message gets
 * the reason built from reason_phrase, `message` and `errors`. Returns 0 or
 * -EPROTO (malformed 2xx body). Exposed for tests. */
int pve_reply_parse(long status, const char *reason_phrase, const char *body, size_t len,
                    yajl_val *ret_tree, yajl_val *ret_data, char *ret_message, size_t msg_size);

/* True when a reply's reason says a lock could not be taken right now. */
bool pve_message_is_lock_timeout(const char *message);

/* JSON helpers for Proxmox replies, which send numbers as strings at times
 * and booleans as 0/1. Return false when the key is missing or malformed. */
const char *pve_json_str(yajl_val obj, const char *key);
bool pve_json_int(yajl_val obj, const char *key, int64_t *ret);
bool pve_json_bool(yajl_val obj, const char *key, bool *ret);
yajl_val pve_json_get(yajl_val obj, const char *key);

#endif
