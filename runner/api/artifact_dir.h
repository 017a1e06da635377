/* A job's artifacts as they are on disk (<job dir>/artifacts), read without
 * following symlinks: what GET /v1/jobs/ID/artifacts and a batch's results
 * list. */
#ifndef AL_API_ARTIFACT_DIR_H
#define AL_API_ARTIFACT_DIR_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/stat.h>

#include "runner/api/context.h"

/* Opens <job dir>/artifacts; an fd the caller closes, or -1 when absent. */
int api_artifact_dir_open(struct api_ctx *ctx, const char *job_id);

/* Called for each regular file: its path relative to the artifacts
 * directory and its stat. A nonzero return stops the walk and is returned. */
typedef int (*api_artifact_fn)(void *data, const char *path, const struct stat *st);

/* Walks the tree under dfd (taken over and closed), at most
 * ROUTE_MAX_ARTIFACT_DEPTH levels deep, skipping paths longer than
 * ROUTE_MAX_ARTIFACT_PATH and anything that is neither a regular file nor
 * a directory. Stops after max files; *ret_truncated (may be NULL) then
 * says whether anything was left. Returns 0 or what fn stopped with. */
int api_artifact_dir_walk(int dfd, size_t max, api_artifact_fn fn, void *data, bool *ret_truncated);

#endif
