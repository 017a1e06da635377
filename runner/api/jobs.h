/* Job endpoints of the control API: submit, list, show, cancel, artifacts,
 * and work-dir uploads for submissions.
 *
 * Submissions are parsed only by job_spec_parse() and accepted only through
 * engine_submit(); the answer (201) comes after engine_sync(), so an
 * acknowledged job survives power loss. Jobs submitted here carry source
 * "api" (or "cli" when the spec says so); other source types belong to
 * their sources and are refused.
 *
 * Artifacts are read from the job's artifacts/ directory one path segment
 * at a time with O_NOFOLLOW, so a symlink (which the unpacker never writes
 * anyway) cannot lead a download outside it.
 */
#ifndef AL_API_JOBS_H
#define AL_API_JOBS_H

#include "runner/api/context.h"

/* Upload ids: "u" + 32 lower-case hex digits. */
#define API_UPLOAD_ID_LEN 33

void api_job_submit(struct api_ctx *ctx, struct api_req *r, const struct route_match *m);
void api_job_list(struct api_ctx *ctx, struct api_req *r, const struct route_match *m);
void api_job_show(struct api_ctx *ctx, struct api_req *r, const struct route_match *m);
void api_job_cancel(struct api_ctx *ctx, struct api_req *r, const struct route_match *m);
void api_job_artifacts(struct api_ctx *ctx, struct api_req *r, const struct route_match *m);
void api_job_artifact(struct api_ctx *ctx, struct api_req *r, const struct route_match *m);

/* PUT /v1/uploads: the body (a tar of a work dir) goes straight to a file
 * under the uploads dir as it arrives. Called at the headers stage to set
 * the sink up; returns 0 or an HTTP status. */
int api_upload_begin(struct api_ctx *ctx, struct api_req *r, char *msg, size_t msg_size);
/* ... and when the body is complete. */
void api_upload_finish(struct api_ctx *ctx, struct api_req *r, const struct route_match *m);

/* Removes uploads older than max_age_s (and stray temporary files). */
void api_uploads_sweep(struct api_ctx *ctx, int64_t max_age_s);

#endif
