/*
 * Leftovers of interrupted image builds and imports.
 *
 * A build (images/builder.c) or an import (images/import.c) works in
 * <state_dir>/images/.build-NAME-XXXXXX and renames it into place at the
 * end. A process killed on the way leaves that directory behind (hundreds of
 * MB for a Debian build, with whatever mmdebstrap had mounted below it).
 * Such a directory is provably stale when nobody holds the build lock
 * (.NAME.build.lock, held for a whole build) nor the image lock (.NAME.lock,
 * held for a whole import and for the swap) of its image: then it is
 * unmounted below and removed. `agentlab gc`, agentlabd at start and every
 * build of the same image sweep them.
 */
#ifndef AL_IMAGES_SWEEP_H
#define AL_IMAGES_SWEEP_H

#include <stdbool.h>

#include "runner/base/error.h"

/* Takes <images_root>/.NAME.build.lock without waiting: the fd, -EBUSY
 * (with a message) when another build of the image runs, or another negative
 * errno. The fd is inherited by the processes the build spawns (no
 * O_CLOEXEC): the lock is held until the last of them is gone. */
int image_build_lock(const char *images_root, const char *name, struct al_error **err);

/* Detaches whatever is mounted below dir, deepest first. */
void image_umount_below(const char *dir);

/* Removes the stale .build-NAME-* directories of image name (all images when
 * name is NULL). A caller that already holds the build lock of name says so
 * with build_locked. *ret_removed (may be NULL) counts the directories
 * removed. Directories in use are left alone; returns the first error met
 * (others are logged) or 0. */
int image_sweep_builds(const char *state_dir, const char *name, bool build_locked,
                       unsigned *ret_removed, struct al_error **err);

#endif
