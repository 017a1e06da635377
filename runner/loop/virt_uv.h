/* libvirt's event implementation on a libuv loop (virEventRegisterImpl).
 *
 * libvirt watches its sockets and timers through these hooks, so domain
 * lifecycle events and keepalives are dispatched on our loop. libvirt may
 * call the hooks from any thread (its RPC client updates a watch from the
 * thread that issues a call): changes are applied at once on the loop thread
 * and handed over through a uv_async_t otherwise. Free callbacks run from
 * uv_close callbacks, never synchronously inside a remove call, as libvirt
 * requires.
 *
 * The handles are unreferenced: libvirt's watches alone do not keep
 * uv_run() alive.
 */
#ifndef AL_VIRT_UV_H
#define AL_VIRT_UV_H

#include <uv.h>

#include "runner/base/error.h"

/* Registers the implementation on loop. Must run on the loop thread, once per
 * process, before the first virConnectOpen. A second call with the same loop
 * is a no-op; with another loop it fails with -EBUSY (libvirt cannot switch). */
int al_virt_event_register(uv_loop_t *loop, struct al_error **err);

/* Closes every remaining libvirt watch and timer and the wake-up handle, so
 * uv_loop_close() can succeed once the loop ran the close callbacks. Call it
 * after the last libvirt connection is closed. Later libvirt calls that need
 * the event loop fail. */
void al_virt_event_shutdown(void);

/* Counts of live watches and timers (tests). */
void al_virt_event_counts(unsigned *ret_handles, unsigned *ret_timers);

#endif
