/* Building golden images: recipe -> mmdebstrap rootfs tarball -> qcow2
 * (libguestfs) -> sealed -> checksummed -> listed in the catalogue.
 *
 * A build works in <state>/images/.build-<name>-XXXXXX and renames the
 * finished directory into place as its last step, so an interrupted or
 * failed build never leaves a listed image behind. A build whose inputs
 * (recipe tree, guest helper and unit, apt sources, builder version) hash to
 * the recipe_hash of the existing image is skipped as up to date.
 *
 * Blocking for minutes; the daemon runs it on a worker thread and cancels
 * it with image_build_cancel_request().
 */
#ifndef AL_IMAGES_BUILDER_H
#define AL_IMAGES_BUILDER_H

#include <stdbool.h>
#include <stdint.h>

#include "images/catalog.h"
#include "images/disk.h"
#include "runner/base/error.h"

/* Bumped whenever the builder changes what it puts into an image, so
 * existing images stop being "up to date". */
#define IMAGE_BUILDER_REVISION 1

enum image_build_event {
    IMAGE_BUILD_PHASE_START = 0,
    IMAGE_BUILD_PHASE_DETAIL, /* detail: what the phase is doing now */
    IMAGE_BUILD_PHASE_DONE,   /* elapsed_ms: the phase's duration */
    IMAGE_BUILD_NOTICE,       /* detail: something the user should read once */
};

/* Called on the building thread. detail may be NULL. */
typedef void (*image_build_progress_fn)(void *data, enum image_build_event ev,
                                        enum image_phase phase, uint64_t elapsed_ms,
                                        const char *detail);

struct image_build_opts {
    const char *state_dir;
    const char *recipe;          /* recipe name; also the image name */
    const char *recipes_dir;     /* searched first; may be NULL (see recipe.h) */
    const char *guest_helper;    /* may be NULL: see image_guest_helper_find() */
    bool force;                  /* rebuild even when up to date */
    int accel_mode;              /* enum accel_mode (provision/accel.h) for the appliance */
    const char *accel_cache_dir; /* for the accelerator probe; may be NULL */
    const char *libvirt_uri;     /* checked before replacing an image; may be NULL */
    image_build_progress_fn progress;
    void *progress_data;
    struct image_cancel *cancel; /* may be NULL */
};

struct image_build_result {
    bool up_to_date;
    struct image_info *info; /* the listed image */
    char *log_path;          /* bootstrap log (kept after the build); may be NULL */
};

void image_build_result_clear(struct image_build_result *r);

/* Builds (or confirms up to date) the image for opts->recipe. Errors are
 * one line; -ECANCELED after a cancel request. */
int image_build(const struct image_build_opts *opts, struct image_build_result *ret,
                struct al_error **err);

/* Async-signal-safe: asks a running build to stop, and signals the
 * process it is waiting for. */
void image_build_cancel_request(struct image_cancel *c);

/* Finds the in-guest helper and its unit: explicit path, then
 * $AGENTLAB_GUEST_HELPER, then agentlab-guest next to the running program,
 * then <libexecdir>/agentlab/agentlab-guest. The unit is
 * agentlab-guest.service next to the helper, else in <datadir>/agentlab/,
 * else in the source tree (development builds). */
int image_guest_helper_find(const char *explicit_path, char **ret_helper, char **ret_unit,
                            struct al_error **err);

/* The recipe hash the builder would record for opts->recipe right now
 * (also used by the up-to-date check). */
int image_recipe_hash(const struct image_build_opts *opts, char **ret_hash, char **ret_recipe_dir,
                      struct al_error **err);

#endif
