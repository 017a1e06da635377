/* The files GitLab stores as a job's artifacts: the `archive` and reports.
 *
 * GitLab accepts artifact_type=archive only with artifact_format=zip;
 * reports (junit, ...) come as gzip (a member per file) or raw. The files
 * the engine already extracted from the guest (checked, without links or
 * devices: provision/artifacts.h) are packed again, keeping only the paths
 * the entry's patterns ask for (the guest hands back whole directories for
 * glob patterns; see gitlab_artifact_roots()). The cache store packs its
 * archives the same way (gitlab_cache.h).
 */
#ifndef AL_GITLAB_ARTIFACTS_H
#define AL_GITLAB_ARTIFACTS_H

#include <stdint.h>

#include "runner/base/error.h"
#include "runner/sources/gitlab_job.h"

struct gitlab_zip_result {
    uint64_t files; /* 0: nothing matched, no zip was written */
    uint64_t bytes; /* size of the zip */
};

/* Writes zip_path from the regular files under dir that a wants (symlinks
 * and special files are skipped, never followed). Fails with -EFBIG when
 * the zip would exceed max_bytes (0 = unlimited). Blocking: call it from a
 * worker thread. */
int gitlab_artifacts_zip(const char *dir, const struct gitlab_artifact *a, const char *zip_path,
                         uint64_t max_bytes, struct gitlab_zip_result *ret, struct al_error **err);

/* Writes path from the files under dir that a wants, in a's format:
 * "zip" as gitlab_artifacts_zip(); "gzip" one gzip member a file, one after
 * the other (GitLab reads report artifacts such as junit so); "raw" the
 * one file as it is (-EINVAL when more than one matches). Blocking. */
int gitlab_artifacts_pack(const char *dir, const struct gitlab_artifact *a, const char *path,
                          uint64_t max_bytes, struct gitlab_zip_result *ret, struct al_error **err);

/* The file name GitLab gets for an artifact, as gitlab-runner names it: the
 * last component of its (expanded) `name`, "artifacts" when it has none and
 * "default" when nothing is left of it (a name that expanded to nothing,
 * "dir/", "."), plus ".zip" for zip and ".gz" for gzip; '\', '"' and
 * control characters replaced by '_'. NULL when out of memory. */
char *gitlab_artifact_file_name(const struct gitlab_artifact *a);

#endif
