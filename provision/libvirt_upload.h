/* Golden images distributed to a libvirt host's storage pool by checksum,
 * over the connection (local or qemu+tcp/ssh/tls://): the disk, kernel and
 * initrd of an image become volumes a domain on that host can use.
 *
 * Volumes are named by image, role and checksum
 * (agentlab-img-<image>-<role>-<first 16 hex of sha256>[.qcow2]), so "is it
 * there" is a lookup and a rebuilt image (new checksum) gets a new volume
 * beside the old one, which image_vol_sweep_unused() (the daemon's rule) or
 * image_vol_sweep() (an explicit keep list) removes once no longer needed.
 *
 * No half volume: libvirt cannot rename a volume, so completion is a second,
 * tiny volume, the marker (<content name>.sha256), created only after the
 * content was uploaded and verified. It holds "sha256 <64 hex> size <n>\n".
 * A content volume counts as present only when its marker exists and holds
 * exactly the expected text and the content's size on the host is n; so an
 * upload cut at any point (error, cancel, a killed daemon or host) leaves at
 * most a content volume without a valid marker, which the next ensure
 * replaces and image_vol_sweep() deletes. The marker is removed before its
 * content, never after.
 *
 * Verification: the bytes streamed are hashed as they are read, and the
 * upload fails unless their digest is the expected sha256 (a local file
 * changed or cut mid-way); the host's copy must then have exactly that many
 * bytes. The content is not downloaded back to hash it (a GiB over the
 * wire): libvirt's stream carries it over TCP/TLS/ssh, and the size check
 * catches a short write.
 *
 * Every function here blocks on libvirt (round trips, the upload itself):
 * call it on the thread pool (runner/loop/work.h), never on the loop.
 * Uploads and sweeps of one pool must not overlap (the caller serialises
 * them); two daemons sharing one host's pool are not supported.
 */
#ifndef AL_LIBVIRT_UPLOAD_H
#define AL_LIBVIRT_UPLOAD_H

#include <libvirt/libvirt.h>
#include <stdbool.h>
#include <stdint.h>

#include "runner/base/error.h"
#include "runner/base/util.h"

#define IMAGE_VOL_PREFIX        "agentlab-img-"
#define IMAGE_VOL_MARKER_SUFFIX ".sha256"
/* hex digits of the sha256 in a volume's name */
#define IMAGE_VOL_SHA_PREFIX 16
/* the longest image name a volume name takes */
#define IMAGE_VOL_IMAGE_MAX AL_NAME_MAX

enum image_vol_role {
    IMAGE_VOL_DISK,   /* the golden qcow2: "<...>-disk-<sha>.qcow2" */
    IMAGE_VOL_KERNEL, /* "<...>-kernel-<sha>" */
    IMAGE_VOL_INITRD, /* "<...>-initrd-<sha>" */
};

/* Makes sure the host has a running dir storage pool name at dir: looks it
 * up and starts it when inactive, else creates it (transient). With
 * local_mkdir the directory (and its parents, mode 0711) is made here, on
 * this machine; without, the host builds it (the remote case: dir is a path
 * on the host). Returns 0 or a negative errno. */
int libvirt_pool_ensure(virConnectPtr conn, const char *name, const char *dir, bool local_mkdir,
                        struct al_error **err);

/* The content volume's name for image (al_name_is_valid(), the rule every
 * image name in the catalog passes), role and sha256 (64
 * lowercase hex). Returns 0, or -EINVAL for a bad image name or checksum.
 * The caller frees *ret_name. */
int image_vol_name(const char *image, enum image_vol_role role, const char *sha256, char **ret_name,
                   struct al_error **err);

/* The text of the completion marker for a content of size bytes with
 * sha256. The caller frees *ret_text. */
int image_vol_marker_text(const char *sha256, uint64_t size, char **ret_text,
                          struct al_error **err);

/* The XML of a raw volume name of exactly capacity bytes, nothing
 * allocated, mode 0644 (QEMU reads a golden image as another user). The
 * upload overwrites every byte: libvirt does not truncate the file an
 * upload writes into, so a volume created as qcow2 (qemu-img's own header,
 * possibly longer than the image) would keep a tail. After the upload the
 * dir pool probes the content and reports the qcow2 format and virtual
 * size; domains name the format themselves. */
int image_vol_xml(const char *name, uint64_t capacity, char **ret_xml, struct al_error **err);

/* What a name in the pool is to us. */
enum image_vol_kind {
    IMAGE_VOL_NOT_OURS,
    IMAGE_VOL_CONTENT,
    IMAGE_VOL_MARKER,
};
/* Classifies a volume name; for a marker, *ret_content_len (may be NULL)
 * gets the length of its content's name (the prefix of name). */
enum image_vol_kind image_vol_classify(const char *name, size_t *ret_content_len);

struct image_vol_request {
    const char *pool;     /* storage pool name on the host */
    const char *pool_dir; /* its directory on the host, used when the pool
                           * must be created */
    bool pool_local;      /* the host is this machine: libvirt_pool_ensure()'s
                           * local_mkdir */
    const char *image;    /* image name (see image_vol_name()) */
    enum image_vol_role role;
    const char *path;   /* the local file */
    const char *sha256; /* its expected checksum, 64 lowercase hex */
    /* Optional: called after each chunk sent with the bytes sent so far and
     * the total; a non-zero return cancels the upload (-ECANCELED), which
     * then leaves nothing that looks complete, like any other failure. */
    int (*progress)(void *opaque, uint64_t sent, uint64_t total);
    void *opaque;
};

struct image_vol {
    char *name;         /* the content volume */
    char *path;         /* its path on the host */
    uint64_t size;      /* its bytes */
    bool uploaded;      /* true: sent now; false: it was already present */
    uint64_t sent;      /* bytes streamed by this call (0 when present) */
    uint64_t upload_ms; /* how long the upload took, 0 when present */
};

/* Makes sure the pool holds the content of req->path as a complete volume
 * (see the top of this file) and fills *ret (the caller clears it with
 * image_vol_clear()). An absent, incomplete or stale volume of that name is
 * replaced. On failure (-EIO libvirt, -EBADMSG checksum or size mismatch,
 * -ECANCELED, errors reading the file) what this call created is deleted,
 * and in any case no complete-looking volume of that name is left. */
int image_vol_ensure(virConnectPtr conn, const struct image_vol_request *req, struct image_vol *ret,
                     struct al_error **err);

void image_vol_clear(struct image_vol *v);

/* Deletes from pool (when it exists) the image volumes of ours whose content
 * name is not in keep (NULL-terminated, may be NULL), and everything of ours
 * that is not complete: a content volume without a marker (an upload that
 * was cut) and a marker without its content. Kept complete volumes are left
 * alone; their markers are not read (ensure checks them). *ret_removed (may
 * be NULL) gets the number of volumes deleted. Returns 0 or a negative
 * errno; a missing pool is no error. */
int image_vol_sweep(virConnectPtr conn, const char *pool, const char *const *keep,
                    unsigned *ret_removed, struct al_error **err);

/* A file of an image whose current checksum the caller knows. */
struct image_vol_current {
    const char *image;
    enum image_vol_role role;
    const char *sha256; /* 64 lowercase hex */
};

struct image_vol_sweep_result {
    unsigned removed; /* volumes deleted, contents and markers */
    unsigned in_use;  /* content volumes that would have gone but the host
                       * still uses (kept: sweep again once that ends) */
};

/* Deletes from pool (when it exists) the image volumes of ours that are no
 * longer needed, by this rule, decided per content volume:
 *  - one that the host uses is kept, whatever else holds: its path on the
 *    host appears in the XML of any domain on the connection (running
 *    ones' live XML, with the <backingStore> chain; defined ones' config)
 *    or of any volume of the pool that is not an image volume (an overlay
 *    backed by it), or is one of held (NULL-terminated, may be NULL: the
 *    caller's own users, e.g. the paths a VM will boot from before its
 *    domain exists); a volume whose path libvirt does not tell is kept;
 *  - else one without its marker (an upload that was cut) is deleted;
 *  - else one whose image and role are in cur (n_cur entries) but whose
 *    name is not image_vol_name() of that entry's checksum (an old build)
 *    is deleted;
 *  - else it is kept: a name we cannot parse, or an image the caller knows
 *    nothing of (when in doubt, keep).
 * A marker goes with its content, and a marker without content goes; a
 * marker is deleted before its content. An error reading what the host
 * uses deletes nothing. The caller must hold off uploads into the pool
 * while this runs (a content of an upload in flight has no marker yet).
 * *ret (may be NULL) gets the counts. Returns 0 or a negative
 * errno; a missing pool is no error. */
int image_vol_sweep_unused(virConnectPtr conn, const char *pool,
                           const struct image_vol_current *cur, size_t n_cur,
                           const char *const *held, struct image_vol_sweep_result *ret,
                           struct al_error **err);

/* A complete image volume found on a host. */
struct image_vol_entry {
    char *volume; /* the content volume's name */
    char *image;  /* the image it holds a file of */
    enum image_vol_role role;
    char sha256[65]; /* from its marker */
    uint64_t size;   /* bytes */
};

/* The name of role ("disk", "kernel", "initrd"). */
const char *image_vol_role_name(enum image_vol_role role);

/* Lists the complete image volumes of pool (see the top of this file: the
 * marker holds the text for its content's checksum and size, the content
 * has that size), sorted by volume name, into *ret (*ret_n entries; the
 * caller frees with image_vol_entries_free()). Incomplete volumes and names
 * that are not ours are left out; nothing is changed on the host. A missing
 * pool lists nothing. Returns 0 or a negative errno. */
int image_vol_list(virConnectPtr conn, const char *pool, struct image_vol_entry **ret,
                   size_t *ret_n, struct al_error **err);

void image_vol_entries_free(struct image_vol_entry *v, size_t n);

#endif
