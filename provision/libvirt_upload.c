#include "provision/libvirt_upload.h"

#include <fcntl.h>
#include <inttypes.h>
#include <libvirt/virterror.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "provision/domain_xml.h"
#include "runner/base/buf.h"
#include "runner/base/sha256.h"
#include "runner/base/util.h"
#include "runner/base/xml.h"

/* what one read/stream send carries */
#define UPLOAD_CHUNK (256 * 1024)
/* a marker is one short line; anything longer is not one of ours */
#define MARKER_MAX 128

DEFINE_CLEANUP_FUNC(virStoragePool, virStoragePoolFree)
DEFINE_CLEANUP_FUNC(virStorageVol, virStorageVolFree)
DEFINE_CLEANUP_FUNC(virStream, virStreamFree)

static const char *libvirt_msg(void)
{
    const char *m = virGetLastErrorMessage();
    return m && *m ? m : "unknown libvirt error";
}

int libvirt_pool_ensure(virConnectPtr conn, const char *name, const char *dir, bool local_mkdir,
                        struct al_error **err)
{
    _cleanup_(virStoragePoolFreep) virStoragePoolPtr pool = virStoragePoolLookupByName(conn, name);
    if (pool) {
        if (virStoragePoolIsActive(pool) == 0 && virStoragePoolCreate(pool, 0) < 0)
            return al_error_set(err, EIO, "starting storage pool %s: %s", name, libvirt_msg());
        return 0;
    }
    if (local_mkdir) {
        int r = al_mkdir_p(dir, 0711, err);
        if (r < 0)
            return r;
    }
    _cleanup_free_ char *xml = NULL;
    int r = pool_xml_build(name, dir, &xml, err);
    if (r < 0)
        return r;
    pool = virStoragePoolCreateXML(conn, xml, local_mkdir ? 0 : VIR_STORAGE_POOL_CREATE_WITH_BUILD);
    if (!pool) {
        /* another process may have created it meanwhile */
        pool = virStoragePoolLookupByName(conn, name);
        if (!pool)
            return al_error_set(err, EIO, "creating storage pool %s: %s", name, libvirt_msg());
    }
    return 0;
}

static const char *const role_names[] = {
        [IMAGE_VOL_DISK] = "disk",
        [IMAGE_VOL_KERNEL] = "kernel",
        [IMAGE_VOL_INITRD] = "initrd",
};

static bool valid_sha256(const char *s)
{
    if (strlen(s) != 64)
        return false;
    for (const char *p = s; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return false;
    return true;
}

int image_vol_name(const char *image, enum image_vol_role role, const char *sha256, char **ret_name,
                   struct al_error **err)
{
    if (!image || !al_name_is_valid(image))
        return al_error_set(err, EINVAL, "image name \"%s\" cannot name a volume",
                            image ? image : "");
    if (!sha256 || !valid_sha256(sha256))
        return al_error_set(err, EINVAL, "image %s: \"%s\" is not a sha256 in lowercase hex", image,
                            sha256 ? sha256 : "");
    if ((unsigned)role >= ARRAY_SIZE(role_names))
        return al_error_set(err, EINVAL, "image %s: unknown volume role %d", image, (int)role);
    char *name = NULL;
    if (asprintf(&name, IMAGE_VOL_PREFIX "%s-%s-%.*s%s", image, role_names[role],
                 IMAGE_VOL_SHA_PREFIX, sha256, role == IMAGE_VOL_DISK ? ".qcow2" : "") < 0)
        return al_error_set(err, ENOMEM, "volume name");
    *ret_name = name;
    return 0;
}

int image_vol_marker_text(const char *sha256, uint64_t size, char **ret_text, struct al_error **err)
{
    if (!sha256 || !valid_sha256(sha256))
        return al_error_set(err, EINVAL, "\"%s\" is not a sha256 in lowercase hex",
                            sha256 ? sha256 : "");
    char *text = NULL;
    if (asprintf(&text, "sha256 %s size %" PRIu64 "\n", sha256, size) < 0)
        return al_error_set(err, ENOMEM, "marker text");
    *ret_text = text;
    return 0;
}

int image_vol_xml(const char *name, uint64_t capacity, char **ret_xml, struct al_error **err)
{
    _cleanup_(al_buf_freep) struct al_buf b = AL_BUF_INIT;
    int r;
    if ((r = al_buf_puts(&b, "<volume>\n  <name>")) < 0 ||
        (r = al_xml_escape_append(&b, name)) < 0 ||
        (r = al_buf_printf(&b,
                           "</name>\n  <capacity unit='bytes'>%" PRIu64 "</capacity>\n"
                           "  <allocation unit='bytes'>0</allocation>\n"
                           "  <target>\n    <format type='raw'/>\n"
                           "    <permissions><mode>0644</mode></permissions>\n"
                           "  </target>\n</volume>\n",
                           capacity)) < 0)
        return al_error_set(err, -r, "volume XML for %s", name);
    *ret_xml = al_buf_steal(&b);
    return *ret_xml ? 0 : al_error_set(err, ENOMEM, "volume XML");
}

static bool has_suffix(const char *s, size_t n, const char *suffix)
{
    size_t m = strlen(suffix);
    return n >= m && memcmp(s + n - m, suffix, m) == 0;
}

enum image_vol_kind image_vol_classify(const char *name, size_t *ret_content_len)
{
    size_t plen = strlen(IMAGE_VOL_PREFIX);
    if (!name || strncmp(name, IMAGE_VOL_PREFIX, plen) != 0)
        return IMAGE_VOL_NOT_OURS;
    size_t n = strlen(name);
    if (has_suffix(name, n, IMAGE_VOL_MARKER_SUFFIX)) {
        size_t c = n - strlen(IMAGE_VOL_MARKER_SUFFIX);
        if (c <= plen)
            return IMAGE_VOL_NOT_OURS;
        if (ret_content_len)
            *ret_content_len = c;
        return IMAGE_VOL_MARKER;
    }
    return n > plen ? IMAGE_VOL_CONTENT : IMAGE_VOL_NOT_OURS;
}

void image_vol_clear(struct image_vol *v)
{
    if (!v)
        return;
    free(v->name);
    free(v->path);
    *v = (struct image_vol){0};
}

/* The volume name in pool: 1 and *ret_vol, 0 when there is none, or a
 * negative errno. */
static int vol_lookup(virStoragePoolPtr pool, const char *name, virStorageVolPtr *ret_vol,
                      struct al_error **err)
{
    virStorageVolPtr vol = virStorageVolLookupByName(pool, name);
    if (vol) {
        *ret_vol = vol;
        return 1;
    }
    if (virGetLastErrorCode() == VIR_ERR_NO_STORAGE_VOL)
        return 0;
    return al_error_set(err, EIO, "looking up volume %s: %s", name, libvirt_msg());
}

/* The bytes the volume's file holds on the host. */
static int vol_physical(virStorageVolPtr vol, uint64_t *ret_size, struct al_error **err)
{
    virStorageVolInfo info;
    if (virStorageVolGetInfoFlags(vol, &info, VIR_STORAGE_VOL_GET_PHYSICAL) < 0)
        return al_error_set(err, EIO, "volume %s: %s", virStorageVolGetName(vol), libvirt_msg());
    *ret_size = info.allocation; /* with GET_PHYSICAL: the file's size */
    return 0;
}

static int vol_delete_if_present(virStoragePoolPtr pool, const char *name, struct al_error **err)
{
    _cleanup_(virStorageVolFreep) virStorageVolPtr vol = NULL;
    int r = vol_lookup(pool, name, &vol, err);
    if (r <= 0)
        return r;
    if (virStorageVolDelete(vol, 0) < 0)
        return al_error_set(err, EIO, "deleting volume %s: %s", name, libvirt_msg());
    return 0;
}

/* Reads a marker volume of at most MARKER_MAX bytes into buf (NUL-ended). */
static int marker_read(virConnectPtr conn, virStorageVolPtr vol, char buf[MARKER_MAX + 1],
                       struct al_error **err)
{
    _cleanup_(virStreamFreep) virStreamPtr st = virStreamNew(conn, 0);
    if (!st || virStorageVolDownload(vol, st, 0, MARKER_MAX, 0) < 0)
        return al_error_set(err, EIO, "reading marker %s: %s", virStorageVolGetName(vol),
                            libvirt_msg());
    size_t used = 0;
    for (;;) {
        char tmp[MARKER_MAX + 1];
        int n = virStreamRecv(st, tmp, sizeof(tmp));
        if (n < 0) {
            virStreamAbort(st);
            return al_error_set(err, EIO, "reading marker %s: %s", virStorageVolGetName(vol),
                                libvirt_msg());
        }
        if (n == 0)
            break;
        size_t take = (size_t)n > MARKER_MAX - used ? MARKER_MAX - used : (size_t)n;
        memcpy(buf + used, tmp, take);
        used += take;
    }
    if (virStreamFinish(st) < 0)
        return al_error_set(err, EIO, "reading marker %s: %s", virStorageVolGetName(vol),
                            libvirt_msg());
    buf[used] = '\0';
    return 0;
}

/* 1 when name is complete in pool (its marker holds marker_text and its
 * content has size bytes), 0 when not, or a negative errno. */
static int vol_complete(virConnectPtr conn, virStoragePoolPtr pool, const char *name,
                        const char *marker_name, const char *marker_text, uint64_t size,
                        struct al_error **err)
{
    _cleanup_(virStorageVolFreep) virStorageVolPtr marker = NULL;
    _cleanup_(virStorageVolFreep) virStorageVolPtr content = NULL;
    int r = vol_lookup(pool, marker_name, &marker, err);
    if (r <= 0)
        return r;
    r = vol_lookup(pool, name, &content, err);
    if (r <= 0)
        return r;
    uint64_t have = 0;
    r = vol_physical(marker, &have, err);
    if (r < 0)
        return r;
    if (have != strlen(marker_text))
        return 0;
    char buf[MARKER_MAX + 1];
    r = marker_read(conn, marker, buf, err);
    if (r < 0)
        return r;
    if (!streq(buf, marker_text))
        return 0;
    r = vol_physical(content, &have, err);
    if (r < 0)
        return r;
    return have == size;
}

static int vol_create(virStoragePoolPtr pool, const char *name, uint64_t capacity,
                      virStorageVolPtr *ret_vol, struct al_error **err)
{
    _cleanup_free_ char *xml = NULL;
    int r = image_vol_xml(name, capacity, &xml, err);
    if (r < 0)
        return r;
    virStorageVolPtr vol = virStorageVolCreateXML(pool, xml, 0);
    if (!vol)
        return al_error_set(err, EIO, "creating volume %s: %s", name, libvirt_msg());
    *ret_vol = vol;
    return 0;
}

/* Streams size bytes of fd into vol, hashing them; fails unless they are
 * all there and their digest is sha256. */
static int stream_file(virConnectPtr conn, virStorageVolPtr vol, int fd, uint64_t size,
                       const struct image_vol_request *req, uint64_t *ret_sent,
                       struct al_error **err)
{
    const char *name = virStorageVolGetName(vol);
    _cleanup_(virStreamFreep) virStreamPtr st = virStreamNew(conn, 0);
    if (!st || virStorageVolUpload(vol, st, 0, size, 0) < 0)
        return al_error_set(err, EIO, "uploading %s: %s", name, libvirt_msg());
    _cleanup_free_ char *buf = malloc(UPLOAD_CHUNK);
    if (!buf) {
        virStreamAbort(st);
        return al_error_set(err, ENOMEM, "upload buffer");
    }
    struct al_sha256 ctx;
    al_sha256_init(&ctx);
    uint64_t sent = 0;
    int r = 0;
    while (sent < size) {
        size_t want = size - sent < UPLOAD_CHUNK ? (size_t)(size - sent) : UPLOAD_CHUNK;
        ssize_t n = pread(fd, buf, want, (off_t)sent);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            r = al_error_set_errno(err, errno, "reading %s", req->path);
            break;
        }
        if (n == 0) {
            r = al_error_set(err, EBADMSG, "%s ended at byte %" PRIu64 " of %" PRIu64 "", req->path,
                             sent, size);
            break;
        }
        al_sha256_update(&ctx, buf, (size_t)n);
        for (ssize_t off = 0; off < n && r == 0;) {
            int w = virStreamSend(st, buf + off, (size_t)(n - off));
            if (w < 0)
                r = al_error_set(err, EIO, "uploading %s: %s", name, libvirt_msg());
            else
                off += w;
        }
        if (r < 0)
            break;
        sent += (uint64_t)n;
        if (req->progress && req->progress(req->opaque, sent, size) != 0) {
            r = al_error_set(err, ECANCELED, "uploading %s: cancelled at byte %" PRIu64, name,
                             sent);
            break;
        }
    }
    if (r < 0) {
        virStreamAbort(st);
        return r;
    }
    if (virStreamFinish(st) < 0)
        return al_error_set(err, EIO, "finishing the upload of %s: %s", name, libvirt_msg());
    char hex[AL_SHA256_HEX_SIZE];
    al_sha256_final_hex(&ctx, hex);
    if (!streq(hex, req->sha256))
        return al_error_set(err, EBADMSG, "%s: sent bytes have sha256 %s, expected %s", req->path,
                            hex, req->sha256);
    *ret_sent = sent;
    return 0;
}

static int upload_text(virConnectPtr conn, virStorageVolPtr vol, const char *text,
                       struct al_error **err)
{
    const char *name = virStorageVolGetName(vol);
    size_t len = strlen(text);
    _cleanup_(virStreamFreep) virStreamPtr st = virStreamNew(conn, 0);
    if (!st || virStorageVolUpload(vol, st, 0, len, 0) < 0)
        return al_error_set(err, EIO, "uploading %s: %s", name, libvirt_msg());
    for (size_t off = 0; off < len;) {
        int w = virStreamSend(st, text + off, len - off);
        if (w < 0) {
            virStreamAbort(st);
            return al_error_set(err, EIO, "uploading %s: %s", name, libvirt_msg());
        }
        off += (size_t)w;
    }
    if (virStreamFinish(st) < 0)
        return al_error_set(err, EIO, "finishing the upload of %s: %s", name, libvirt_msg());
    return 0;
}

/* Uploads the content as name and then its marker; on failure deletes both
 * (marker first). */
static int upload(virConnectPtr conn, virStoragePoolPtr pool, const char *name,
                  const char *marker_name, const char *marker_text, int fd, uint64_t size,
                  const struct image_vol_request *req, uint64_t *ret_sent, char **ret_path,
                  struct al_error **err)
{
    _cleanup_(virStorageVolFreep) virStorageVolPtr content = NULL;
    _cleanup_(virStorageVolFreep) virStorageVolPtr marker = NULL;
    uint64_t sent = 0, have = 0;
    int r = vol_create(pool, name, size, &content, err);
    if (r < 0)
        return r;
    r = stream_file(conn, content, fd, size, req, &sent, err);
    if (r < 0)
        goto fail;
    r = vol_physical(content, &have, err);
    if (r < 0)
        goto fail;
    if (have != size) {
        r = al_error_set(err, EBADMSG,
                         "volume %s holds %" PRIu64 " bytes after the upload, not %" PRIu64, name,
                         have, size);
        goto fail;
    }
    char *path = virStorageVolGetPath(content);
    if (!path) {
        r = al_error_set(err, EIO, "volume %s: %s", name, libvirt_msg());
        goto fail;
    }
    r = vol_create(pool, marker_name, strlen(marker_text), &marker, err);
    if (r >= 0)
        r = upload_text(conn, marker, marker_text, err);
    if (r < 0) {
        free(path);
        goto fail;
    }
    *ret_sent = sent;
    *ret_path = path;
    return 0;
fail:
    /* best effort: a leftover has no valid marker, so it never looks
     * complete, and the next ensure or sweep removes it */
    if (marker)
        virStorageVolDelete(marker, 0);
    virStorageVolDelete(content, 0);
    return r;
}

int image_vol_ensure(virConnectPtr conn, const struct image_vol_request *req, struct image_vol *ret,
                     struct al_error **err)
{
    _cleanup_free_ char *name = NULL;
    _cleanup_free_ char *marker_name = NULL;
    _cleanup_free_ char *marker_text = NULL;
    int r = image_vol_name(req->image, req->role, req->sha256, &name, err);
    if (r < 0)
        return r;
    if (asprintf(&marker_name, "%s" IMAGE_VOL_MARKER_SUFFIX, name) < 0) {
        marker_name = NULL;
        return al_error_set(err, ENOMEM, "marker name");
    }
    _cleanup_close_ int fd = open(req->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return al_error_set_errno(err, errno, "opening %s", req->path);
    struct stat st;
    if (fstat(fd, &st) < 0)
        return al_error_set_errno(err, errno, "stat %s", req->path);
    if (!S_ISREG(st.st_mode))
        return al_error_set(err, EINVAL, "%s is not a regular file", req->path);
    uint64_t size = (uint64_t)st.st_size;
    r = image_vol_marker_text(req->sha256, size, &marker_text, err);
    if (r < 0)
        return r;

    r = libvirt_pool_ensure(conn, req->pool, req->pool_dir, req->pool_local, err);
    if (r < 0)
        return r;
    _cleanup_(virStoragePoolFreep) virStoragePoolPtr pool =
            virStoragePoolLookupByName(conn, req->pool);
    if (!pool)
        return al_error_set(err, EIO, "storage pool %s: %s", req->pool, libvirt_msg());

    r = vol_complete(conn, pool, name, marker_name, marker_text, size, err);
    if (r < 0)
        return r;
    if (r == 1) {
        _cleanup_(virStorageVolFreep) virStorageVolPtr vol = virStorageVolLookupByName(pool, name);
        char *path = vol ? virStorageVolGetPath(vol) : NULL;
        if (!path)
            return al_error_set(err, EIO, "volume %s: %s", name, libvirt_msg());
        *ret = (struct image_vol){.name = TAKE_PTR(name), .path = path, .size = size};
        return 0;
    }

    /* absent, cut or stale: the marker goes first so that nothing of that
     * name looks complete from here on */
    r = vol_delete_if_present(pool, marker_name, err);
    if (r >= 0)
        r = vol_delete_if_present(pool, name, err);
    if (r < 0)
        return r;
    uint64_t t0 = al_now_mono_ms(), sent = 0;
    char *path = NULL;
    r = upload(conn, pool, name, marker_name, marker_text, fd, size, req, &sent, &path, err);
    if (r < 0)
        return al_error_wrap(err, "image %s", req->image);
    uint64_t ms = al_now_mono_ms() - t0;
    *ret = (struct image_vol){
            .name = TAKE_PTR(name),
            .path = path,
            .size = size,
            .uploaded = true,
            .sent = sent,
            .upload_ms = ms ? ms : 1,
    };
    return 0;
}

static bool in_keep(const char *const *keep, const char *name, size_t len)
{
    for (const char *const *k = keep; k && *k; k++)
        if (strlen(*k) == len && memcmp(*k, name, len) == 0)
            return true;
    return false;
}

/* The index of the volume whose name is the first len bytes of name, or
 * -1. */
static int find_name(char **names, int n, const char *name, size_t len)
{
    for (int i = 0; i < n; i++)
        if (names[i] && strlen(names[i]) == len && memcmp(names[i], name, len) == 0)
            return i;
    return -1;
}

static void pool_volumes_free(virStorageVolPtr *vols, char **names, int n)
{
    for (int i = 0; i < n; i++) {
        if (names)
            free(names[i]);
        virStorageVolFree(vols[i]);
    }
    free(names);
    free(vols);
}

/* The volumes of the pool and their names (n of each; names[n] is NULL)
 * for the sweeps, freed with pool_volumes_free(); a name may be set to NULL
 * by the caller (a deleted marker). Returns 1 when listed, 0 when the pool
 * does not exist (nothing to sweep), or a negative errno. */
static int pool_volumes(virConnectPtr conn, const char *pool_name, virStorageVolPtr **ret_vols,
                        char ***ret_names, int *ret_n, struct al_error **err)
{
    _cleanup_(virStoragePoolFreep) virStoragePoolPtr pool =
            virStoragePoolLookupByName(conn, pool_name);
    if (!pool) {
        if (virGetLastErrorCode() == VIR_ERR_NO_STORAGE_POOL)
            return 0;
        return al_error_set(err, EIO, "storage pool %s: %s", pool_name, libvirt_msg());
    }
    virStorageVolPtr *vols = NULL;
    int n = virStoragePoolListAllVolumes(pool, &vols, 0);
    if (n < 0)
        return al_error_set(err, EIO, "listing the volumes of %s: %s", pool_name, libvirt_msg());
    char **names = calloc((size_t)n + 1, sizeof(*names));
    int r = names ? 0 : al_error_set(err, ENOMEM, "volume names");
    for (int i = 0; i < n && r == 0; i++) {
        const char *s = virStorageVolGetName(vols[i]);
        names[i] = s ? strdup(s) : NULL;
        if (!names[i])
            r = al_error_set(err, ENOMEM, "volume names");
    }
    if (r < 0) {
        pool_volumes_free(vols, names, n);
        return r;
    }
    *ret_vols = vols;
    *ret_names = names;
    *ret_n = n;
    return 1;
}

int image_vol_sweep(virConnectPtr conn, const char *pool_name, const char *const *keep,
                    unsigned *ret_removed, struct al_error **err)
{
    virStorageVolPtr *vols = NULL;
    char **names = NULL;
    int n = 0;
    int r = pool_volumes(conn, pool_name, &vols, &names, &n, err);
    if (r <= 0) {
        if (r == 0 && ret_removed)
            *ret_removed = 0; /* no such pool */
        return r;
    }
    r = 0;
    /* pass 0 removes markers, pass 1 contents: a content is never without
     * its marker while it is still kept */
    unsigned removed = 0;
    for (int pass = 0; pass < 2 && r == 0; pass++) {
        for (int i = 0; i < n && r == 0; i++) {
            size_t clen = 0;
            enum image_vol_kind kind = image_vol_classify(names[i], &clen);
            bool drop;
            if (kind == IMAGE_VOL_MARKER && pass == 0)
                drop = !in_keep(keep, names[i], clen) || find_name(names, n, names[i], clen) < 0;
            else if (kind == IMAGE_VOL_CONTENT && pass == 1) {
                _cleanup_free_ char *m = NULL;
                if (asprintf(&m, "%s" IMAGE_VOL_MARKER_SUFFIX, names[i]) < 0) {
                    m = NULL;
                    r = al_error_set(err, ENOMEM, "marker name");
                    break;
                }
                drop = !in_keep(keep, names[i], strlen(names[i])) ||
                       find_name(names, n, m, strlen(m)) < 0;
            } else
                continue;
            if (!drop)
                continue;
            if (virStorageVolDelete(vols[i], 0) < 0) {
                r = al_error_set(err, EIO, "deleting volume %s: %s", names[i], libvirt_msg());
                break;
            }
            removed++;
            /* a deleted marker no longer marks its content */
            if (kind == IMAGE_VOL_MARKER) {
                free(names[i]);
                names[i] = NULL;
            }
        }
    }
    pool_volumes_free(vols, names, n);
    if (r < 0)
        return r;
    if (ret_removed)
        *ret_removed = removed;
    return 0;
}

const char *image_vol_role_name(enum image_vol_role role)
{
    return (unsigned)role < ARRAY_SIZE(role_names) ? role_names[role] : "?";
}

void image_vol_entries_free(struct image_vol_entry *v, size_t n)
{
    for (size_t i = 0; v && i < n; i++) {
        free(v[i].volume);
        free(v[i].image);
    }
    free(v);
}

/* Splits a content volume's name into image, role and the checksum's
 * prefix; false when it is not one image_vol_name() makes. */
static bool parse_content_name(const char *name, char **ret_image, enum image_vol_role *ret_role,
                               char sha_prefix[IMAGE_VOL_SHA_PREFIX + 1])
{
    size_t plen = strlen(IMAGE_VOL_PREFIX), n = strlen(name);
    if (n <= plen || n > 255)
        return false;
    char buf[256];
    memcpy(buf, name + plen, n - plen + 1);
    size_t len = n - plen;
    bool qcow2 = has_suffix(buf, len, ".qcow2");
    if (qcow2)
        buf[len -= 6] = '\0';
    char *dash = strrchr(buf, '-');
    if (!dash || strlen(dash + 1) != IMAGE_VOL_SHA_PREFIX)
        return false;
    for (const char *p = dash + 1; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return false;
    memcpy(sha_prefix, dash + 1, IMAGE_VOL_SHA_PREFIX + 1);
    *dash = '\0';
    char *role = strrchr(buf, '-');
    if (!role)
        return false;
    *role++ = '\0';
    size_t r;
    for (r = 0; r < ARRAY_SIZE(role_names); r++)
        if (streq(role, role_names[r]))
            break;
    if (r == ARRAY_SIZE(role_names) || qcow2 != (r == IMAGE_VOL_DISK) || !al_name_is_valid(buf))
        return false;
    if (!(*ret_image = strdup(buf)))
        return false;
    *ret_role = (enum image_vol_role)r;
    return true;
}

/* 1 and *ret filled when the marker volume names a complete content volume
 * of the pool, 0 when not, or a negative errno. */
static int entry_of_marker(virConnectPtr conn, virStoragePoolPtr pool, virStorageVolPtr marker,
                           const char *content, struct image_vol_entry *ret, struct al_error **err)
{
    _cleanup_free_ char *image = NULL;
    enum image_vol_role role;
    char prefix[IMAGE_VOL_SHA_PREFIX + 1];
    if (!parse_content_name(content, &image, &role, prefix))
        return 0;
    uint64_t have = 0;
    int r = vol_physical(marker, &have, err);
    if (r < 0)
        return r;
    if (have > MARKER_MAX)
        return 0;
    char text[MARKER_MAX + 1];
    r = marker_read(conn, marker, text, err);
    if (r < 0)
        return r;
    /* "sha256 <64 hex> size <n>\n", exactly as image_vol_marker_text() writes it */
    char sha[65];
    if (strncmp(text, "sha256 ", 7) != 0 || strlen(text) < 7 + 64 + 6)
        return 0;
    memcpy(sha, text + 7, 64);
    sha[64] = '\0';
    if (!valid_sha256(sha) || strncmp(sha, prefix, IMAGE_VOL_SHA_PREFIX) != 0 ||
        strncmp(text + 71, " size ", 6) != 0)
        return 0;
    char *end = NULL;
    errno = 0;
    unsigned long long size = strtoull(text + 77, &end, 10);
    if (errno || end == text + 77 || text[77] < '0' || text[77] > '9')
        return 0;
    _cleanup_free_ char *want = NULL;
    r = image_vol_marker_text(sha, size, &want, err);
    if (r < 0)
        return r;
    if (!streq(want, text))
        return 0;
    _cleanup_(virStorageVolFreep) virStorageVolPtr vol = NULL;
    r = vol_lookup(pool, content, &vol, err);
    if (r <= 0)
        return r;
    r = vol_physical(vol, &have, err);
    if (r < 0)
        return r;
    if (have != size)
        return 0;
    char *volume = strdup(content);
    if (!volume)
        return al_error_set(err, ENOMEM, "volume list");
    *ret = (struct image_vol_entry){
            .volume = volume, .image = TAKE_PTR(image), .role = role, .size = size};
    memcpy(ret->sha256, sha, sizeof(sha));
    return 1;
}

static int entry_cmp(const void *a, const void *b)
{
    return strcmp(((const struct image_vol_entry *)a)->volume,
                  ((const struct image_vol_entry *)b)->volume);
}

int image_vol_list(virConnectPtr conn, const char *pool_name, struct image_vol_entry **ret,
                   size_t *ret_n, struct al_error **err)
{
    _cleanup_(virStoragePoolFreep) virStoragePoolPtr pool =
            virStoragePoolLookupByName(conn, pool_name);
    if (!pool) {
        if (virGetLastErrorCode() != VIR_ERR_NO_STORAGE_POOL)
            return al_error_set(err, EIO, "storage pool %s: %s", pool_name, libvirt_msg());
        *ret = NULL;
        *ret_n = 0;
        return 0;
    }
    virStorageVolPtr *vols = NULL;
    int n = virStoragePoolListAllVolumes(pool, &vols, 0);
    if (n < 0)
        return al_error_set(err, EIO, "listing the volumes of %s: %s", pool_name, libvirt_msg());
    struct image_vol_entry *v = calloc((size_t)n + 1, sizeof(*v));
    size_t used = 0;
    int r = v ? 0 : al_error_set(err, ENOMEM, "volume list");
    for (int i = 0; i < n && r == 0; i++) {
        const char *name = virStorageVolGetName(vols[i]);
        size_t clen = 0;
        if (!name || image_vol_classify(name, &clen) != IMAGE_VOL_MARKER || clen > 255)
            continue;
        char content[256];
        memcpy(content, name, clen);
        content[clen] = '\0';
        r = entry_of_marker(conn, pool, vols[i], content, &v[used], err);
        if (r > 0) {
            used++;
            r = 0;
        }
    }
    for (int i = 0; i < n; i++)
        virStorageVolFree(vols[i]);
    free(vols);
    if (r < 0) {
        image_vol_entries_free(v, used);
        return r;
    }
    qsort(v, used, sizeof(*v), entry_cmp);
    *ret = v;
    *ret_n = used;
    return 0;
}

/* What the host uses: the XML of every domain on the connection and of
 * every volume of pool that is not an image volume of ours. */
struct host_refs {
    char **xml;
    size_t n;
};

static void host_refs_clear(struct host_refs *h)
{
    for (size_t i = 0; i < h->n; i++)
        free(h->xml[i]);
    free(h->xml);
    *h = (struct host_refs){0};
}

static int host_refs_add(struct host_refs *h, char *xml, struct al_error **err)
{
    char **v = realloc(h->xml, (h->n + 1) * sizeof(*v));
    if (!v) {
        free(xml);
        return al_error_set(err, ENOMEM, "domain XML");
    }
    h->xml = v;
    h->xml[h->n++] = xml;
    return 0;
}

/* Whether vol's path on the host appears in what the host uses or in
 * held; true when its path is unknown. Paths, not names: another pool of
 * the host may hold a volume of the same name. */
static bool host_uses(const struct host_refs *h, const char *const *held, virStorageVolPtr vol)
{
    _cleanup_free_ char *path = virStorageVolGetPath(vol);
    if (!path)
        return true;
    for (size_t i = 0; i < h->n; i++) {
        if (strstr(h->xml[i], path))
            return true;
    }
    for (const char *const *p = held; p && *p; p++) {
        if (streq(*p, path))
            return true;
    }
    return false;
}

static int host_refs_read(virConnectPtr conn, virStorageVolPtr *vols, char **names, int n_vols,
                          struct host_refs *h, struct al_error **err)
{
    virDomainPtr *doms = NULL;
    int n = virConnectListAllDomains(conn, &doms, 0);
    if (n < 0)
        return al_error_set(err, EIO, "listing the domains: %s", libvirt_msg());
    int r = 0;
    for (int i = 0; i < n; i++) {
        if (r == 0) {
            char *xml = virDomainGetXMLDesc(doms[i], 0);
            if (xml)
                r = host_refs_add(h, xml, err);
            else if (virGetLastErrorCode() != VIR_ERR_NO_DOMAIN) /* gone meanwhile */
                r = al_error_set(err, EIO, "the XML of domain %s: %s", virDomainGetName(doms[i]),
                                 libvirt_msg());
        }
        virDomainFree(doms[i]);
    }
    free(doms);
    for (int i = 0; i < n_vols && r == 0; i++) {
        if (image_vol_classify(names[i], NULL) != IMAGE_VOL_NOT_OURS)
            continue;
        char *xml = virStorageVolGetXMLDesc(vols[i], 0);
        if (xml)
            r = host_refs_add(h, xml, err);
        else if (virGetLastErrorCode() != VIR_ERR_NO_STORAGE_VOL)
            r = al_error_set(err, EIO, "the XML of volume %s: %s", names[i], libvirt_msg());
    }
    return r;
}

/* Whether content (a content volume's name, complete) is an old build of
 * a file in cur; false when unknown. */
static bool is_old_build(const char *content, const struct image_vol_current *cur, size_t n_cur)
{
    _cleanup_free_ char *image = NULL;
    enum image_vol_role role;
    char prefix[IMAGE_VOL_SHA_PREFIX + 1];
    if (!parse_content_name(content, &image, &role, prefix))
        return false;
    bool known = false;
    for (size_t i = 0; i < n_cur; i++) {
        if (cur[i].role != role || !streq(cur[i].image, image))
            continue;
        _cleanup_free_ char *want = NULL;
        if (image_vol_name(cur[i].image, cur[i].role, cur[i].sha256, &want, NULL) < 0)
            return false; /* a bad entry: keep */
        if (streq(want, content))
            return false;
        known = true;
    }
    return known;
}

int image_vol_sweep_unused(virConnectPtr conn, const char *pool_name,
                           const struct image_vol_current *cur, size_t n_cur,
                           const char *const *held, struct image_vol_sweep_result *ret,
                           struct al_error **err)
{
    virStorageVolPtr *vols = NULL;
    char **names = NULL;
    int n = 0;
    int r = pool_volumes(conn, pool_name, &vols, &names, &n, err);
    if (r <= 0) {
        if (r == 0 && ret)
            *ret = (struct image_vol_sweep_result){0}; /* no such pool */
        return r;
    }
    _cleanup_free_ bool *drop = calloc((size_t)n + 1, sizeof(*drop));
    r = drop ? 0 : al_error_set(err, ENOMEM, "volume names");
    struct host_refs refs = {0};
    if (r == 0)
        r = host_refs_read(conn, vols, names, n, &refs, err);
    struct image_vol_sweep_result res = {0};
    /* contents first: a marker's fate is its content's */
    for (int i = 0; i < n && r == 0; i++) {
        if (image_vol_classify(names[i], NULL) != IMAGE_VOL_CONTENT)
            continue;
        _cleanup_free_ char *m = NULL;
        if (asprintf(&m, "%s" IMAGE_VOL_MARKER_SUFFIX, names[i]) < 0) {
            m = NULL;
            r = al_error_set(err, ENOMEM, "marker name");
            break;
        }
        bool complete = find_name(names, n, m, strlen(m)) >= 0;
        if (!complete || is_old_build(names[i], cur, n_cur)) {
            if (host_uses(&refs, held, vols[i]))
                res.in_use++;
            else
                drop[i] = true;
        }
    }
    for (int i = 0; i < n && r == 0; i++) {
        size_t clen = 0;
        if (image_vol_classify(names[i], &clen) != IMAGE_VOL_MARKER)
            continue;
        int c = find_name(names, n, names[i], clen);
        drop[i] = c < 0 || drop[c];
    }
    /* markers before contents: a content never looks complete after its
     * marker went, whatever stops this half-way */
    for (int pass = 0; pass < 2 && r == 0; pass++) {
        for (int i = 0; i < n && r == 0; i++) {
            enum image_vol_kind kind = image_vol_classify(names[i], NULL);
            if (!drop[i] || (kind == IMAGE_VOL_MARKER) != (pass == 0))
                continue;
            if (virStorageVolDelete(vols[i], 0) < 0) {
                r = al_error_set(err, EIO, "deleting volume %s: %s", names[i], libvirt_msg());
                break;
            }
            res.removed++;
        }
    }
    host_refs_clear(&refs);
    pool_volumes_free(vols, names, n);
    if (r < 0)
        return r;
    if (ret)
        *ret = res;
    return 0;
}
