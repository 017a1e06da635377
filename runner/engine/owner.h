/* Who owns a VM.
 *
 * Every VM agentlab creates carries an owner id in its metadata so that
 * several agentlab instances can share one libvirtd (a daemon, a CLI running
 * a job in-process, test suites) and reconcile or gc only what is theirs:
 *
 *   daemon:<32 hex>                   a daemon; the id is stored in
 *                                     <state_dir>/owner-id, so it survives
 *                                     restarts
 *   run:<boot id>:<pid>:<start time>  an in-process `agentlab run`; it is
 *                                     dead when that process no longer runs
 */
#ifndef AL_OWNER_H
#define AL_OWNER_H

#include <stdbool.h>

#include "runner/base/error.h"

/* Reads or creates the daemon owner id of a state dir. */
int owner_id_for_state_dir(const char *state_dir, char **ret, struct al_error **err);

/* The owner id of this process for in-process runs. */
int owner_id_for_process(char **ret, struct al_error **err);

/* True when owner is a run: owner whose process is gone (same boot, pid not
 * running or running with another start time; or another boot). Daemon
 * owners and unknown formats are never reported dead. */
bool owner_is_dead_run(const char *owner);

/* Takes the exclusive lock of a state dir (<state_dir>/agentlabd.lock) that
 * one daemon (or one `agentlab gc`) holds for as long as it runs: two would
 * each destroy the other's VMs as orphans. Returns the fd to keep open, or
 * -EBUSY with a message when someone holds it. */
int owner_lock_state_dir(const char *state_dir, int *ret_fd, struct al_error **err);

#endif
