/* The image catalogue: <state_dir>/images/<name>/ holds a golden image
 * (disk.qcow2), the kernel and initrd for direct kernel boot, and
 * manifest.json describing them. Only complete images are listed: builds go
 * to a temporary directory that is renamed into place at the end.
 *
 * Directory layout (see images/README.md for the full contract):
 *
 *   <state_dir>/images/<name>/manifest.json   written last; its presence makes an image
 *   <state_dir>/images/<name>/disk.qcow2
 *   <state_dir>/images/<name>/vmlinuz, initrd.img
 *   <state_dir>/images/<name>/.inuse.<pid>    a live process uses the image
 *   <state_dir>/images/.<name>.lock           flock: exclusive to replace/remove, shared to use
 *   <state_dir>/images/.build-<name>-XXXXXX/  a build in progress (never listed)
 *
 * Names in the manifest are relative to the image directory, so the
 * directory can be renamed; struct image_info carries absolute paths.
 */
#ifndef AL_IMAGES_CATALOG_H
#define AL_IMAGES_CATALOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "runner/base/error.h"

#define IMAGE_MANIFEST_FILE    "manifest.json"
#define IMAGE_MANIFEST_SCHEMA  1
#define IMAGE_MANIFEST_MAX     (8u << 20)
#define IMAGE_DISK_FILE        "disk.qcow2"
#define IMAGE_KERNEL_FILE      "vmlinuz"
#define IMAGE_INITRD_FILE      "initrd.img"
#define IMAGE_INUSE_PREFIX     ".inuse."
#define IMAGE_BUILD_DIR_PREFIX ".build-"

/* The phases of a build, in order; also the keys of the manifest's "build_ms". */
enum image_phase {
    IMAGE_PHASE_BOOTSTRAP = 0,
    IMAGE_PHASE_DISK,
    IMAGE_PHASE_SEAL,
    IMAGE_PHASE_CHECKSUM,
    IMAGE_PHASE_COUNT,
};

const char *image_phase_to_string(enum image_phase p);

struct image_package {
    char *name;
    char *version;
};

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
    char *sha256;  /* of the disk */
    uint64_t size; /* bytes of the disk file */
    uint64_t virtual_size;
    int64_t created_ms;
    /* added by the builder; may be NULL/0 in hand-written manifests */
    char *kernel_version;
    char *filesystem_label;
    char *builder_version;
    char *guest_helper_sha256;
    struct image_package *packages; /* sorted by name */
    size_t n_packages;
    uint64_t build_ms[IMAGE_PHASE_COUNT];
};

struct image_info *image_info_free(struct image_info *i);
static inline void image_info_freep(struct image_info **i)
{
    *i = image_info_free(*i);
}
#define _cleanup_image_info_ _cleanup_(image_info_freep)

/* Frees an array from image_list(). Accepts NULL. */
void image_info_list_free(struct image_info **v, size_t n);

/* Looks up a complete image by name. -ENOENT (with a message listing what
 * exists) when there is none. */
int image_find(const char *state_dir, const char *name, struct image_info **ret,
               struct al_error **err);

/* Lists complete images sorted by name. The caller frees each and the array. */
int image_list(const char *state_dir, struct image_info ***ret, size_t *ret_n,
               struct al_error **err);

/* <state_dir>/images, <state_dir>/images/<name>. NULL on ENOMEM. */
char *image_root_path(const char *state_dir);
char *image_dir_path(const char *state_dir, const char *name);

/* Reads dir/manifest.json; paths in *ret are made absolute against dir. */
int image_manifest_read(const char *dir, struct image_info **ret, struct al_error **err);

/* Writes dir/manifest.json atomically (mode 0644). The file names of disk,
 * kernel and initrd are stored relative to the directory. */
int image_manifest_write(const char *dir, const struct image_info *info, struct al_error **err);

/* The manifest JSON of an image with absolute paths (for `image inspect`
 * and `image list --json`). n images as a JSON array when as_array. */
int image_info_to_json(struct image_info *const *v, size_t n, bool as_array, char **ret_json,
                       struct al_error **err);

/* Opens (creating it with mode 0644, never through a symlink) the lock file
 * path and flocks it, exclusive or shared, waiting up to timeout_ms (0 = do
 * not wait). With inherit the fd is not O_CLOEXEC: the processes the caller
 * spawns hold the lock too, until the last of them is gone. Returns the fd,
 * or -EBUSY with busy as the message when someone else holds it, or another
 * negative errno. */
int image_lock_path(const char *path, bool exclusive, bool inherit, int timeout_ms,
                    const char *busy, struct al_error **err);

/* Opens and flocks <state_dir>/images/.<name>.lock (exclusive or shared,
 * waiting up to timeout_ms; 0 = do not wait). Returns the fd, or -EBUSY with
 * a message when someone else holds it. */
int image_lock(const char *state_dir, const char *name, bool exclusive, int timeout_ms,
               struct al_error **err);

/* Marks the image as used by pid: creates <dir>/.inuse.<pid> under a shared
 * lock after checking the image is complete. The returned path is removed
 * with image_use_release(). Processes that die leave stale files, which the
 * in-use check ignores (the pid is not alive). */
int image_use_acquire(const char *state_dir, const char *name, pid_t pid, char **ret_path,
                      struct al_error **err);
int image_use_release(const char *path, struct al_error **err);

/* Lists live users recorded by .inuse.<pid> files in dir (stale ones are
 * removed). *ret_pids may be NULL when only the count is wanted. */
int image_live_users(const char *dir, pid_t **ret_pids, size_t *ret_n, struct al_error **err);

/* Removes an image: takes the exclusive lock, refuses with -EBUSY while a
 * live process holds a .inuse file or (when libvirt_uri is not NULL) a
 * libvirt domain there has a disk, kernel or backing file in the image
 * directory, then renames the directory away and deletes it. */
int image_remove(const char *state_dir, const char *name, const char *libvirt_uri,
                 struct al_error **err);

/* True when s is usable as an image or recipe name:
 * [A-Za-z0-9][A-Za-z0-9._-]{0,62}, not ending in ".lock". */
bool image_name_is_valid(const char *s);

#endif
