/* Image recipes: small declarative directories, so that adding an image
 * (ubuntu-24.04, debian-12-docker, ...) needs no C.
 *
 *   <recipe>/recipe.conf   INI, see images/README.md for every key
 *   <recipe>/hooks/        optional mmdebstrap hook scripts (setup*, extract*,
 *                          essential*, customize*; run with the rootfs as $1)
 *   <recipe>/rootfs/       optional files copied into the rootfs after the
 *                          essential packages, before the rest are installed
 *
 * Recipes are looked up by name in a search path (first match wins):
 * --recipes DIR, $AGENTLAB_RECIPES (colon-separated), /etc/agentlab/recipes,
 * the installed data dir, and the source tree when running from a build dir.
 */
#ifndef AL_IMAGES_RECIPE_H
#define AL_IMAGES_RECIPE_H

#include <stdbool.h>
#include <stdint.h>

#include "runner/base/error.h"
#include "runner/base/sha256.h"

#define RECIPE_FILE      "recipe.conf"
#define RECIPE_MAX_BYTES (256u * 1024u)

struct recipe {
    char *name; /* directory name */
    char *dir;  /* absolute path of the recipe directory */
    char *description;
    /* [bootstrap] */
    char *suite;         /* e.g. "bookworm" */
    char *variant;       /* mmdebstrap --variant, default "minbase" */
    char **components;   /* default {"main"} */
    char **packages;     /* --include */
    char **mirrors;      /* apt source lines or URIs; empty = the host's own sources */
    char **dpkg_exclude; /* path-exclude globs */
    char **dpkg_include; /* path-include globs */
    char **environment;  /* KEY=VALUE for the bootstrap */
    /* [disk] */
    uint64_t size; /* virtual size, bytes */
    char *filesystem;
    char *label;
    /* [boot] */
    char *cmdline;
    /* [seal] */
    char **mask;    /* systemd units masked in the image */
    char *user;     /* the unprivileged job user */
    bool user_sudo; /* passwordless sudo for it */
    char *hostname;
    /* discovered */
    char *hooks_dir;  /* NULL when absent */
    char *rootfs_dir; /* NULL when absent */
};

struct recipe *recipe_free(struct recipe *r);
static inline void recipe_freep(struct recipe **r)
{
    *r = recipe_free(*r);
}
#define _cleanup_recipe_ _cleanup_(recipe_freep)

/* The default search path (NULL-terminated; caller frees with strv_free).
 * extra (may be NULL) goes first. */
char **recipe_search_path(const char *extra);

/* Finds a recipe directory by name. -ENOENT with the available names in the
 * message when there is none. */
int recipe_find(char *const *search_path, const char *name, char **ret_dir, struct al_error **err);

/* Names of all recipes on the search path (sorted, unique). */
int recipe_list(char *const *search_path, char ***ret_names, struct al_error **err);

/* Parses <dir>/recipe.conf. Unknown sections or keys and bad values fail
 * with "recipe.conf:LINE: ..." messages. */
int recipe_load(const char *dir, struct recipe **ret, struct al_error **err);

/* Feeds the whole recipe directory into ctx: every file's relative path,
 * type, permission bits and content (symlinks: their target), in sorted
 * order, so any change to the recipe changes the hash. */
int recipe_hash_tree(const char *dir, struct al_sha256 *ctx, struct al_error **err);

#endif
