/* Per-job cloud-init NoCloud data: meta-data and user-data.
 *
 * user-data is a #cloud-config document that writes the job (the TLV list of
 * proto.h, base64-encoded) to AL_PROTO_JOB_FILE on tmpfs with mode 0600 and
 * starts the in-guest helper from runcmd. Secrets are never part of it: they
 * reach the guest over the channel (SECRETS frame) and stay in tmpfs.
 */
#ifndef AL_CLOUDINIT_H
#define AL_CLOUDINIT_H

#include <stddef.h>

#include "runner/base/error.h"

#define AL_GUEST_HELPER_PATH "/usr/local/bin/agentlab-guest"

struct cloudinit_job {
    const char *instance_id; /* the job id; a new id makes cloud-init run again */
    const char *hostname;    /* e.g. "al-<short id>" */
    const void *job_blob;    /* TLV job (proto.h); may be NULL for a warm VM */
    size_t job_blob_len;
    const char *helper_path;                /* NULL = AL_GUEST_HELPER_PATH */
    const char *const *ssh_authorized_keys; /* NULL-terminated, may be NULL */
};

/* Renders both documents. The caller frees *ret_meta_data and *ret_user_data. */
int cloudinit_render(const struct cloudinit_job *job, char **ret_meta_data, char **ret_user_data,
                     struct al_error **err);

#endif
