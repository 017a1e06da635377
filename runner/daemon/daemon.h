/* agentlabd: the long-running daemon that owns the event loop.
 *
 * daemon_run() loads nothing by itself: it takes a loaded config, sets up
 * the loop (curl multi, libvirt events, signal handlers), runs until SIGINT
 * or SIGTERM, closes every handle and checks that uv_loop_close() succeeds.
 */
#ifndef AL_DAEMON_H
#define AL_DAEMON_H

#include "runner/engine/config.h"

/* Runs the daemon until a termination signal. Returns 0 on a clean shutdown,
 * negative errno on failure (detail in err). */
int daemon_run(const struct config *cfg, struct al_error **err);

#endif
