/* Proxmox tasks: UPIDs and waiting for a task to end.
 *
 * Long operations (clone, start, stop, delete) answer with a UPID
 * "UPID:node:PID:PSTART:STARTTIME:type:id:user:"; the task's status is
 * polled on the node in the UPID with a growing interval until it is
 * "stopped", and its exitstatus decides ("OK" or "WARNINGS: N" succeed).
 * Right after dispatch the status call may answer 400 "no such task"; that
 * is retried. Loop thread only.
 */
#ifndef AL_PVE_TASK_H
#define AL_PVE_TASK_H

#include "provision/pve_api.h"

struct pve_upid {
    char node[64];
    char type[32];
    char id[64];
};

/* Parses a UPID. Returns 0 or -EINVAL. */
int pve_upid_parse(const char *upid, struct pve_upid *ret);

struct pve_task;

/* result 0 when the task ended OK (exitstatus "OK" or "WARNINGS: N");
 * -EIO when it failed (err carries the exitstatus); other negative errnos
 * when polling failed. exitstatus is "" when unknown. */
typedef void (*pve_task_cb)(int result, const char *exitstatus, const struct al_error *err,
                            void *data);

/* Polls the task until it stops or max_ms passes (0 = 10 minutes). On error
 * nothing was started. */
int pve_task_wait(struct pve_api *api, const char *upid, uint64_t max_ms, pve_task_cb cb,
                  void *data, struct pve_task **ret, struct al_error **err);

/* Stops waiting (not the task): cb runs with -ECANCELED before this returns. */
void pve_task_cancel(struct pve_task *t);

#endif
