/* Blocking work on libuv's thread pool with completion on the loop.
 *
 * work() runs on a pool thread and must not touch the loop, curl-multi or
 * libvirt-event state; it returns 0 or a negative errno and may fill *err.
 * done() runs on the loop thread with that result (or -ECANCELED when the
 * work was cancelled before it started) and takes ownership of err.
 */
#ifndef AL_WORK_H
#define AL_WORK_H

#include <uv.h>

#include "runner/base/error.h"

typedef int (*al_work_fn)(void *data, struct al_error **err);
typedef void (*al_work_done_fn)(void *data, int result, struct al_error *err);

struct al_work;

/* Queues work. Returns 0 or a negative errno (done will not run then). */
int al_work_queue(uv_loop_t *loop, al_work_fn work, al_work_done_fn done, void *data,
                  struct al_work **ret_work);

/* Tries to cancel work that has not started; done still runs (with
 * -ECANCELED). Returns 0 if cancelled, -EBUSY if already running/finished. */
int al_work_cancel(struct al_work *w);

#endif
