/* The one walk of a local directory for the archives the host writes (the
 * work dir tar of `agentlab run --workdir` and of GitLab checkouts, the
 * GitLab artifacts zip): libarchive's disk reader, symlinks never followed,
 * every path handed on relative to the directory, so no archive carries a
 * host prefix. */
#ifndef AL_ARCHIVE_WALK_H
#define AL_ARCHIVE_WALK_H

#include <archive_entry.h>

#include "runner/base/error.h"

/* Called for each entry below the directory (not for the directory itself),
 * parents before children. e is the disk reader's entry: its pathname is the
 * host path, archive_entry_sourcepath(e) the file to open, its stat fields
 * those of the entry itself (lstat). rel is the path relative to the
 * directory, without a leading '/', valid during the call. Returns 0 to go
 * on, or a negative errno with err set to stop the walk. */
typedef int (*archive_walk_fn)(struct archive_entry *e, const char *rel, void *userdata,
                               struct al_error **err);

/* Walks dir with fn. Returns 0 when every call returned 0; the first
 * negative return of fn; or -EIO/-ENOMEM (err set) when dir cannot be read
 * or the reader hands back a path outside dir. */
int archive_walk_dir(const char *dir, archive_walk_fn fn, void *userdata, struct al_error **err);

#endif
