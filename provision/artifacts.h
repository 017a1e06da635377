/* Unpacking a job's artifact tarball on the host.
 *
 * The tarball comes from the guest, which runs untrusted code, so every
 * entry is checked before anything touches the disk: only regular files and
 * directories are written; absolute paths, ".." components, symlinks,
 * hard links and device files are skipped (and reported); permission bits
 * are reduced to 0755/0644 (never setuid, setgid or sticky); nothing is
 * written through a symlink or an existing hard link (a file already at a
 * name is replaced, never opened); byte and entry counts are capped. */
#ifndef AL_ARTIFACTS_H
#define AL_ARTIFACTS_H

#include <stdbool.h>
#include <stdint.h>

#include "runner/base/error.h"

struct artifact_limits {
    uint64_t max_bytes; /* 0 = unlimited */
    uint64_t max_files; /* files and directories created; 0 = unlimited */
};

struct artifact_summary {
    uint64_t files; /* regular files written */
    uint64_t dirs;  /* directories created or entered */
    uint64_t bytes;
    uint64_t skipped;
    bool truncated;  /* a limit or a damaged archive stopped the extraction */
    bool over_bytes; /* ... namely max_bytes */
    bool over_files; /* ... namely max_files */
    char note[256];  /* first reason something was skipped or cut */
};

/* Extracts tar_path into dest_dir (created with mode 0755 when missing).
 * Returns 0 even when entries were skipped (see *ret); a negative errno when
 * the archive is unreadable or the destination unusable. Blocking. */
int artifacts_extract(const char *tar_path, const char *dest_dir, const struct artifact_limits *lim,
                      struct artifact_summary *ret, struct al_error **err);

/* One regular file an extraction wrote: its path below dest_dir (no
 * leading "./", no trailing "/"), size and SHA-256 (lower-case hex). A path
 * the archive holds twice is listed once, with what was written last. */
struct artifact_file {
    char *path;
    uint64_t size;
    char sha256[65];
};

struct artifact_index {
    struct artifact_file *v;
    size_t n;
};

void artifact_index_clear(struct artifact_index *x);

/* artifacts_extract(), also listing every file written in *ret_index
 * (cleared first; the caller clears it again when done). */
int artifacts_extract_indexed(const char *tar_path, const char *dest_dir,
                              const struct artifact_limits *lim, struct artifact_summary *ret,
                              struct artifact_index *ret_index, struct al_error **err);

/* The same rules for a zip archive (a GitLab job's artifacts, which come
 * from the forge). */
int artifacts_extract_zip(const char *zip_path, const char *dest_dir,
                          const struct artifact_limits *lim, struct artifact_summary *ret,
                          struct al_error **err);

#endif
