/* Encodes a vm_request into the TLV lists the in-guest helper reads
 * (proto.h): the job itself (cloud-init's job.tlv or a JOB frame) and the
 * secrets (a SECRETS frame, never written to any disk). */
#ifndef AL_GUEST_JOB_H
#define AL_GUEST_JOB_H

#include "provision/backend.h"
#include "provision/proto/proto.h"

/* The job: JOB_ID, ARGV or SCRIPT, ENV, TIMEOUT_S, ARTIFACT, HAS_WORKDIR,
 * POWEROFF, MAX_ARTIFACT_BYTES. The caller frees ret with al_tlv_buf_free. */
int guest_job_encode(const struct vm_request *req, struct al_tlv_buf *ret, struct al_error **err);

/* SECRET_ENV items; an empty list when there are none. */
int guest_secrets_encode(const struct vm_request *req, struct al_tlv_buf *ret,
                         struct al_error **err);

#endif
