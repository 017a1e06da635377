/* The image catalogue: <state_dir>/images/<name>/ holds a golden image
 * (disk.qcow2), the kernel and initrd for direct kernel boot, and
 * manifest.json describing them. Only complete images are listed: builds go
 * to a temporary directory that is renamed into place at the end. */
#ifndef AL_IMAGES_CATALOG_H
#define AL_IMAGES_CATALOG_H

#include <stddef.h>
#include <stdint.h>

#include "runner/base/error.h"

struct image_info {
    char *name;
    char *dir;     /* <state_dir>/images/<name> */
    char *disk;    /* absolute path of the qcow2 golden image */
    char *format;  /* "qcow2" */
    char *kernel;  /* absolute path */
    char *initrd;  /* absolute path */
    char *cmdline; /* kernel command line for direct boot, e.g. "root=/dev/vda ro console=ttyS0" */
    char *recipe;
    char *recipe_hash;
    char *sha256; /* of the disk */
    uint64_t size; /* bytes of the disk file */
    uint64_t virtual_size;
    int64_t created_ms;
};

struct image_info *image_info_free(struct image_info *i);

/* Looks up a complete image by name. -ENOENT (with a message listing what
 * exists) when there is none. */
int image_find(const char *state_dir, const char *name, struct image_info **ret,
               struct al_error **err);

/* Lists complete images sorted by name. The caller frees each and the array. */
int image_list(const char *state_dir, struct image_info ***ret, size_t *ret_n,
               struct al_error **err);

#endif
