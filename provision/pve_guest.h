/* The job inside a Proxmox guest, driven through the QEMU guest agent.
 *
 * Proxmox templates have no agentlab channel, only qemu-guest-agent, so the
 * job travels as files and one process:
 *
 *   PREFIX.job.NNN      the job: env exports, the secrets hook, then exec of
 *                       the script or argv (agent/file-write, in chunks)
 *   PREFIX.secrets.NNN  secret env as export lines (tmpfs; read by the runner
 *                       into fd 3 and unlinked before the job starts)
 *   PREFIX.wd.NNN       the work dir tar, when the job has one
 *
 * PREFIX is PVE_GUEST_PREFIX on /run (tmpfs). The runner script is sent as
 * agent/exec input-data to `/bin/sh -s -- PREFIX ROOT TIMEOUT [ARTIFACT...]`.
 * It joins the chunks, unpacks the work dir into ROOT/work, runs the job in
 * its own session as user agentlab when that user exists (else as root)
 * with stdout and stderr appended to ROOT/out and ROOT/err, kills the
 * session after TIMEOUT seconds (ROOT/timedout marks it), tars the artifacts
 * to ROOT/art/a.tar, and prints its verdict on its own stdout, which
 * agent/exec-status returns once it exited:
 *
 *   agentlab-missing PATH        an artifact path that does not exist
 *   agentlab-diag TEXT           why something did not work
 *   agentlab-status ok=1 exit=N timedout=0|1 out=B err=B art=B artrc=N
 *
 * The host follows ROOT/out and ROOT/err with agent/file-read while the job
 * runs (exec-status returns output only at the end), and reads a.tar in
 * chunks afterwards.
 */
#ifndef AL_PVE_GUEST_H
#define AL_PVE_GUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "provision/backend.h"
#include "runner/base/buf.h"

#define PVE_GUEST_PREFIX "/run/agentlab-job"
#define PVE_GUEST_ROOT   "/var/lib/agentlab"
/* agent/file-write takes at most 61440 characters of content; base64 of
 * 46080 bytes is exactly that */
#define PVE_GUEST_CHUNK      46080u
#define PVE_GUEST_MAX_CHUNKS 1000u

/* The runner script (static text). */
const char *pve_guest_runner(void);

/* Appends s as one single-quoted shell word. */
int pve_guest_sh_quote(struct al_buf *out, const char *s);

/* The job file: exports of env and AGENTLAB_JOB_ID, the secrets hook, and
 * the exec of req->script (sh -e -c) or req->argv. */
int pve_guest_job_file(const struct vm_request *req, struct al_buf *out, struct al_error **err);

/* The secrets file (export lines); empty when there are none. The caller
 * wipes it. */
int pve_guest_secrets_file(const struct vm_request *req, struct al_buf *out, struct al_error **err);

/* The agent/exec command after "/bin/sh -s --": NULL-terminated, strings
 * owned by the array (free with strv_free). */
char **pve_guest_command(const struct vm_request *req);

struct pve_guest_status {
    bool have_status; /* the status line was there */
    bool ok;          /* the runner got the job started */
    int exit_code;
    bool timed_out;
    uint64_t out_bytes, err_bytes, art_bytes;
    int art_rc;
    char diag[256];    /* first diag line */
    char missing[256]; /* missing artifact paths, space separated, cut */
};

/* Parses the runner's stdout (the exec-status out-data). Unknown lines are
 * ignored. Returns 0, or -EINVAL when the status line is malformed. */
int pve_guest_status_parse(const char *text, size_t len, struct pve_guest_status *ret);

#endif
