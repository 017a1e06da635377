/* The remote transport's golden images: the disk, kernel and initrd of a
 * job's image as volumes of the backend's storage pool on the host
 * (libvirt_upload.c), so that the domain needs nothing from this host's
 * filesystem.
 *
 * A volume is named by its content's sha256, so "is it there" needs the
 * checksum of the local file. Hashing a GiB disk takes seconds; the sums are
 * cached per file version (device, inode, size, mtime, ctime) and a file
 * is hashed again only when one of those changed. A rebuilt image has a new
 * checksum, hence a new volume, uploaded once; a file touched without a
 * change of content is hashed again and finds its volume present.
 *
 * The cache and the uploads are under lb->img_lock (libvirt_upload.h:
 * uploads into one pool must not overlap). A job's provisioning that finds
 * it taken (an upload for another job) gives its thread back and is
 * queued again after IMAGES_WAIT_MS, then finds the image present. */
#include "provision/libvirt_priv.h"
#include "provision/libvirt_upload.h"
#include "runner/base/sha256.h"

struct lv_file_sum {
    char *path;
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
    struct timespec ctime;
    char sha256[AL_SHA256_HEX_SIZE];
};

static bool same_version(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
           a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

static bool sum_matches(const struct lv_file_sum *s, const struct stat *st)
{
    struct stat cached = {
            .st_dev = s->dev,
            .st_ino = s->ino,
            .st_size = s->size,
            .st_mtim = s->mtime,
            .st_ctim = s->ctime,
    };
    return same_version(&cached, st);
}

static struct lv_file_sum *sum_find(struct lv_backend *lb, const char *path)
{
    for (size_t i = 0; i < lb->n_sums; i++) {
        if (streq(lb->sums[i].path, path))
            return &lb->sums[i];
    }
    return NULL;
}

/* The sha256 of the file at path, hashed only when the cache has none for
 * its current version. img_lock held. */
static int file_sum(struct lv_backend *lb, const char *path, char hex[AL_SHA256_HEX_SIZE],
                    struct al_error **err)
{
    struct stat before, after;
    if (stat(path, &before) < 0)
        return al_error_set_errno(err, errno, "%s", path);
    struct lv_file_sum *s = sum_find(lb, path);
    if (s && sum_matches(s, &before)) {
        memcpy(hex, s->sha256, AL_SHA256_HEX_SIZE);
        return 0;
    }
    int r = al_sha256_file(path, hex, NULL, err);
    if (r < 0)
        return r;
    /* changed while it was hashed: not cached (the upload checks the digest
     * of what it sends, so a wrong sum fails there) */
    if (stat(path, &after) < 0 || !same_version(&before, &after))
        return 0;
    if (!s) {
        _cleanup_free_ char *copy = strdup(path);
        struct lv_file_sum *v = copy ? realloc(lb->sums, (lb->n_sums + 1) * sizeof(*v)) : NULL;
        if (!v)
            return 0; /* not cached: hashed again next time */
        lb->sums = v;
        s = &v[lb->n_sums++];
        *s = (struct lv_file_sum){.path = TAKE_PTR(copy)};
    }
    s->dev = after.st_dev;
    s->ino = after.st_ino;
    s->size = after.st_size;
    s->mtime = after.st_mtim;
    s->ctime = after.st_ctim;
    memcpy(s->sha256, hex, AL_SHA256_HEX_SIZE);
    return 0;
}

static void sum_forget(struct lv_backend *lb, const char *path)
{
    struct lv_file_sum *s = sum_find(lb, path);
    if (s)
        s->size = -1; /* matches no file */
}

static const char *const role_names[] = {
        [IMAGE_VOL_DISK] = "disk",
        [IMAGE_VOL_KERNEL] = "kernel",
        [IMAGE_VOL_INITRD] = "initrd",
};

/* One file of v's image as a volume; *ret_path gets its path on the host.
 * img_lock held. */
static int ensure_one(struct lv_vm *v, enum image_vol_role role, const char *path, char **ret_path,
                      struct al_error **err)
{
    struct lv_backend *lb = v->lb;
    for (int attempt = 0;; attempt++) {
        char sha[AL_SHA256_HEX_SIZE];
        int r = file_sum(lb, path, sha, err);
        if (r < 0)
            return al_error_wrap(err, "the checksum of image %s's %s", v->image->name,
                                 role_names[role]);
        struct image_vol_request req = {
                .pool = lb->pool_name,
                .pool_dir = lb->pool_dir,
                .pool_local = false, /* the remote transport: the host builds it */
                .image = v->image->name,
                .role = role,
                .path = path,
                .sha256 = sha,
        };
        struct image_vol iv = {0};
        struct al_error *e = NULL;
        r = image_vol_ensure(lb->conn, &req, &iv, &e);
        if (r == -EBADMSG && attempt == 0) {
            /* the file changed after it was hashed (an image rebuilt in
             * place): hash it again, once */
            sum_forget(lb, path);
            al_error_free(e);
            continue;
        }
        if (r < 0) {
            al_error_move(err, &e);
            return al_error_wrap(err, "uploading image %s's %s to %s", v->image->name,
                                 role_names[role], lb->b->name);
        }
        if (iv.uploaded)
            log_info(v->req.job_id,
                     "backend %s: uploaded image %s's %s (%" PRIu64 " bytes, sha256 %.16s) "
                     "as %s in %" PRIu64 " ms",
                     lb->b->name, v->image->name, role_names[role], iv.sent, sha, iv.name,
                     iv.upload_ms);
        *ret_path = TAKE_PTR(iv.path);
        image_vol_clear(&iv);
        return 0;
    }
}

int lv_images_ensure(struct lv_vm *v, struct al_error **err)
{
    const struct vm_image *img = v->image;
    const struct {
        enum image_vol_role role;
        const char *path;
        char **ret;
    } parts[] = {
            {IMAGE_VOL_DISK, img->disk, &v->host_disk},
            {IMAGE_VOL_KERNEL, img->kernel, &v->host_kernel},
            {IMAGE_VOL_INITRD, img->initrd, &v->host_initrd},
    };
    int r = 0;
    /* another job's upload into the pool: not a thread of the pool spent
     * waiting for it (the loop tries again shortly) */
    if (pthread_mutex_trylock(&v->lb->img_lock) != 0) {
        v->images_busy = true;
        return 0;
    }
    for (size_t i = 0; i < ARRAY_SIZE(parts) && r == 0; i++) {
        if (parts[i].path && !*parts[i].ret)
            r = ensure_one(v, parts[i].role, parts[i].path, parts[i].ret, err);
    }
    pthread_mutex_unlock(&v->lb->img_lock);
    return r;
}

void lv_images_free(struct lv_backend *lb)
{
    for (size_t i = 0; i < lb->n_sums; i++)
        free(lb->sums[i].path);
    free(lb->sums);
    lb->sums = NULL;
    lb->n_sums = 0;
}
