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
 * queued again after IMAGES_WAIT_MS, then finds the image present.
 *
 * Old builds are swept (image_vol_sweep_unused(), whose header has the
 * rule) after every upload, still under img_lock on the same worker: the
 * current checksums are the cache's (image, role) entries, so an image no
 * job used since the daemon started is not touched. What a VM of ours was
 * handed stays held (lb->holds) until its teardown, since its domain, which
 * would show the host using it, is created later (seed, injection). A
 * volume kept because something used it sets lb->sweep_pending, which the
 * next VM's teardown turns into a sweep on its worker
 * (lv_images_sweep_pending()). */
#include "provision/libvirt_priv.h"
#include "provision/libvirt_upload.h"
#include "runner/base/sha256.h"

struct lv_file_sum {
    char *path;
    char *image; /* the image and role it was ensured as */
    enum image_vol_role role;
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

static struct lv_file_sum *sum_find(struct lv_backend *lb, const char *path, const char *image,
                                    enum image_vol_role role)
{
    for (size_t i = 0; i < lb->n_sums; i++) {
        if (streq(lb->sums[i].path, path) && streq(lb->sums[i].image, image) &&
            lb->sums[i].role == role)
            return &lb->sums[i];
    }
    return NULL;
}

/* The sha256 of the file at path (image's role), hashed only when the
 * cache has none for its current version. img_lock held. */
static int file_sum(struct lv_backend *lb, const char *image, enum image_vol_role role,
                    const char *path, char hex[AL_SHA256_HEX_SIZE], struct al_error **err)
{
    struct stat before, after;
    if (stat(path, &before) < 0)
        return al_error_set_errno(err, errno, "%s", path);
    struct lv_file_sum *s = sum_find(lb, path, image, role);
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
        _cleanup_free_ char *icopy = strdup(image);
        struct lv_file_sum *v =
                copy && icopy ? realloc(lb->sums, (lb->n_sums + 1) * sizeof(*v)) : NULL;
        if (!v)
            return 0; /* not cached: hashed again next time */
        lb->sums = v;
        s = &v[lb->n_sums++];
        *s = (struct lv_file_sum){.path = TAKE_PTR(copy), .image = TAKE_PTR(icopy), .role = role};
    }
    s->dev = after.st_dev;
    s->ino = after.st_ino;
    s->size = after.st_size;
    s->mtime = after.st_mtim;
    s->ctime = after.st_ctim;
    memcpy(s->sha256, hex, AL_SHA256_HEX_SIZE);
    return 0;
}

static void sum_forget(struct lv_backend *lb, const char *path, const char *image,
                       enum image_vol_role role)
{
    struct lv_file_sum *s = sum_find(lb, path, image, role);
    if (s)
        s->size = -1; /* matches no file */
}

/* A volume path a VM of the backend boots from, from its ensure until its
 * teardown: its domain may not exist yet (seed upload, injection), so the
 * host does not show it used. */
struct lv_image_hold {
    const struct lv_vm *vm; /* identity only, never read */
    char *path;
};

/* lb->holds of every backend: short sections, never across libvirt calls,
 * so the teardown's worker does not wait for an upload */
static pthread_mutex_t holds_lock = PTHREAD_MUTEX_INITIALIZER;

static void hold_add(struct lv_backend *lb, const struct lv_vm *v, const char *path)
{
    char *copy = strdup(path);
    pthread_mutex_lock(&holds_lock);
    struct lv_image_hold *h = copy ? realloc(lb->holds, (lb->n_holds + 1) * sizeof(*h)) : NULL;
    if (h) {
        lb->holds = h;
        h[lb->n_holds++] = (struct lv_image_hold){.vm = v, .path = TAKE_PTR(copy)};
    }
    pthread_mutex_unlock(&holds_lock);
    /* without memory the hold is lost: the domain, once created, holds it */
    free(copy);
}

void lv_images_release(struct lv_backend *lb, const struct lv_vm *v)
{
    pthread_mutex_lock(&holds_lock);
    size_t n = 0;
    for (size_t i = 0; i < lb->n_holds; i++) {
        if (lb->holds[i].vm == v)
            free(lb->holds[i].path);
        else
            lb->holds[n++] = lb->holds[i];
    }
    lb->n_holds = n;
    pthread_mutex_unlock(&holds_lock);
}

/* A copy of the held paths, NULL-terminated, or NULL without memory. */
static char **holds_copy(struct lv_backend *lb)
{
    pthread_mutex_lock(&holds_lock);
    char **v = calloc(lb->n_holds + 1, sizeof(*v));
    for (size_t i = 0; v && i < lb->n_holds; i++) {
        if (!(v[i] = strdup(lb->holds[i].path))) {
            strv_free(v);
            v = NULL;
        }
    }
    pthread_mutex_unlock(&holds_lock);
    return v;
}

/* Sweeps the pool of the image volumes no longer needed
 * (image_vol_sweep_unused(): the current checksums are the cache's, the
 * only files this backend ever ensured); what a domain still uses stays,
 * and sweep_pending asks for another sweep once a VM of ours ended. A
 * failure is logged, never returned: it costs disk space on the host, not
 * a job. img_lock held. */
static void sweep_locked(struct lv_backend *lb, virConnectPtr conn, const char *job_id)
{
    _cleanup_free_ struct image_vol_current *cur = calloc(lb->n_sums + 1, sizeof(*cur));
    _cleanup_strv_ char **held = holds_copy(lb);
    if (!cur || !held) {
        atomic_store(&lb->sweep_pending, true);
        return;
    }
    size_t n = 0;
    for (size_t i = 0; i < lb->n_sums; i++) {
        /* forgotten (size -1): its last checksum may still be the current
         * one's, and "when in doubt, keep" holds it (no entry for the
         * image's role means nothing of it is swept) */
        cur[n++] = (struct image_vol_current){
                .image = lb->sums[i].image, .role = lb->sums[i].role, .sha256 = lb->sums[i].sha256};
    }
    struct image_vol_sweep_result res = {0};
    struct al_error *err = NULL;
    uint64_t t0 = al_now_mono_ms();
    if (image_vol_sweep_unused(conn, lb->pool_name, cur, n, (const char *const *)held, &res, &err) <
        0) {
        log_warn(job_id, "backend %s: sweeping old image volumes from pool %s: %s", lb->b->name,
                 lb->pool_name, al_error_message(err));
        al_error_free(err);
        atomic_store(&lb->sweep_pending, true);
        return;
    }
    if (res.removed)
        log_info(job_id,
                 "backend %s: removed %u old image volumes (contents and markers) in %" PRIu64
                 " ms",
                 lb->b->name, res.removed, al_now_mono_ms() - t0);
    if (res.in_use) {
        log_info(job_id, "backend %s: %u old image volumes still in use; swept once that ends",
                 lb->b->name, res.in_use);
        atomic_store(&lb->sweep_pending, true);
    }
}

void lv_images_sweep_pending(struct lv_backend *lb, virConnectPtr conn, const char *job_id)
{
    if (!atomic_load(&lb->sweep_pending))
        return;
    /* the pool is busy: the flag stays for the next VM's end (an upload
     * sweeps anyway when it ends) */
    if (pthread_mutex_trylock(&lb->img_lock) != 0)
        return;
    if (atomic_exchange(&lb->sweep_pending, false))
        sweep_locked(lb, conn, job_id);
    pthread_mutex_unlock(&lb->img_lock);
}

static const char *const role_names[] = {
        [IMAGE_VOL_DISK] = "disk",
        [IMAGE_VOL_KERNEL] = "kernel",
        [IMAGE_VOL_INITRD] = "initrd",
};

/* One file of v's image as a volume; *ret_path gets its path on the host.
 * img_lock held. */
static int ensure_one(struct lv_vm *v, enum image_vol_role role, const char *path, char **ret_path,
                      bool *swept, struct al_error **err)
{
    struct lv_backend *lb = v->lb;
    for (int attempt = 0;; attempt++) {
        char sha[AL_SHA256_HEX_SIZE];
        int r = file_sum(lb, v->image->name, role, path, sha, err);
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
            sum_forget(lb, path, v->image->name, role);
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
        if (iv.uploaded)
            *swept = false; /* a new checksum: an old one may be unused now */
        hold_add(lb, v, iv.path);
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
    bool swept = true;
    for (size_t i = 0; i < ARRAY_SIZE(parts) && r == 0; i++) {
        if (parts[i].path && !*parts[i].ret)
            r = ensure_one(v, parts[i].role, parts[i].path, parts[i].ret, &swept, err);
    }
    /* after an upload, before the lock goes: no other upload runs
     * meanwhile, and this job's volumes are current, so they stay */
    if (!swept) {
        atomic_store(&v->lb->sweep_pending, false);
        sweep_locked(v->lb, v->lb->conn, v->req.job_id);
    }
    pthread_mutex_unlock(&v->lb->img_lock);
    return r;
}

void lv_images_free(struct lv_backend *lb)
{
    for (size_t i = 0; i < lb->n_sums; i++) {
        free(lb->sums[i].path);
        free(lb->sums[i].image);
    }
    free(lb->sums);
    lb->sums = NULL;
    lb->n_sums = 0;
    pthread_mutex_lock(&holds_lock);
    for (size_t i = 0; i < lb->n_holds; i++)
        free(lb->holds[i].path);
    free(lb->holds);
    lb->holds = NULL;
    lb->n_holds = 0;
    pthread_mutex_unlock(&holds_lock);
}
