/* The spool source: a directory where dropping a job spec file submits it.
 *
 *   <dir>/NAME.json          picked up (write it elsewhere or under a dot
 *                            name first, then rename it in: partial files
 *                            would be rejected)
 *   <dir>/accepted/NAME.json the spec, once the job is durably queued, with
 *   <dir>/accepted/NAME.id   the job's id
 *   <dir>/rejected/NAME.json a spec that was refused, with
 *   <dir>/rejected/NAME.error the reason, one line
 *
 * The directory is watched (inotify through libuv) and also rescanned every
 * poll_interval, so nothing is missed when events are. At most `concurrent`
 * spool jobs are queued or running at once (counting every spool source's);
 * further files wait in the directory until one ends.
 */
#ifndef AL_SPOOL_H
#define AL_SPOOL_H

#include "runner/engine/config.h"
#include "runner/engine/engine.h"

struct spool;

int spool_start(uv_loop_t *loop, struct engine *e, const struct config_source *src,
                struct spool **ret, struct al_error **err);

/* Stops watching; done runs when every handle is closed. */
void spool_stop(struct spool *s, void (*done)(void *data), void *data);

#endif
