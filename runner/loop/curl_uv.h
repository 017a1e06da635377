/* libcurl's multi interface driven by a libuv loop.
 *
 * curl tells us which sockets to watch (CURLMOPT_SOCKETFUNCTION) and when to
 * wake up (CURLMOPT_TIMERFUNCTION); we watch them with one uv_poll_t per
 * socket and one uv_timer_t, and report finished transfers through a
 * per-transfer callback on the loop thread. Only the loop thread may call
 * these functions.
 */
#ifndef AL_CURL_UV_H
#define AL_CURL_UV_H

#include <curl/curl.h>
#include <stdbool.h>
#include <uv.h>

#include "runner/base/error.h"

struct al_curl;

/* Called on the loop thread when a transfer ends (or is aborted by
 * al_curl_close(), then with CURLE_ABORTED_BY_CALLBACK). The easy handle has
 * been removed from the multi handle and belongs to the caller again. */
typedef void (*al_curl_done_cb)(CURL *easy, CURLcode result, void *data);

/* Creates the multi handle on loop. Returns 0 or a negative errno. */
int al_curl_new(uv_loop_t *loop, struct al_curl **ret, struct al_error **err);

/* Starts a transfer. The caller keeps owning easy; it must not touch it until
 * cb runs. Returns 0, or a negative errno when curl refused it (cb not called). */
int al_curl_add(struct al_curl *c, CURL *easy, al_curl_done_cb cb, void *data);

/* Aborts a running transfer; cb runs with CURLE_ABORTED_BY_CALLBACK before
 * this returns. Unknown handles are ignored. */
void al_curl_cancel(struct al_curl *c, CURL *easy);

/* Number of transfers in flight. */
unsigned al_curl_active(const struct al_curl *c);

/* Aborts every transfer (their callbacks run), then closes all handles.
 * The object is freed from the last close callback; close_cb (may be NULL)
 * runs after that. */
void al_curl_close(struct al_curl *c, void (*close_cb)(void *data), void *data);

/* Process-wide curl_global_init/cleanup, reference counted. */
int al_curl_global_init(void);
void al_curl_global_cleanup(void);

#endif
