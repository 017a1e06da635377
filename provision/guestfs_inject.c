#include "provision/guestfs_inject.h"

#include <guestfs.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>

#include "provision/appliance_watchdog.h"
#include "runner/base/buf.h"

/* Golden images carry their root filesystem directly on the disk (no
 * partition table) with this label; anything else is found by inspection. */
#define ROOT_LABEL   "agentlab-root"
#define SEED_DIR     "/var/lib/cloud/seed/nocloud"
#define DEFAULT_FMT  "qcow2"
#define MAX_ITEMS    64
#define WARNINGS_MAX 2048

/* State of one call; owned by the calling thread, so nothing is global. */
struct inject {
    guestfs_h *g;
    struct al_buf warnings; /* libguestfs warnings, kept for error messages */
    char **roots;           /* inspect_os result, computed on first need */
    bool inspected;
};

static void inject_done(struct inject *in)
{
    if (in->g) {
        /* Only reached on error paths: the success path closes explicitly. */
        guestfs_close(in->g);
        in->g = NULL;
    }
    al_buf_free(&in->warnings);
    strv_free(in->roots);
    in->roots = NULL;
}

static void on_warning(guestfs_h *g, void *opaque, uint64_t event, int event_handle, int flags,
                       const char *buf, size_t buf_len, const uint64_t *array, size_t array_len)
{
    struct inject *in = opaque;
    if (in->warnings.len > 0)
        (void)al_buf_puts(&in->warnings, "; ");
    while (buf_len > 0 && (buf[buf_len - 1] == '\n' || buf[buf_len - 1] == '\r'))
        buf_len--;
    /* The buffer has a limit: excess warnings are dropped, not fatal. */
    (void)al_buf_append(&in->warnings, buf, buf_len);
}

/* Records libguestfs's last error with context. */
static int gerr(struct inject *in, struct al_error **err, const char *what, const char *disk)
{
    const char *msg = guestfs_last_error(in->g);
    int code = guestfs_last_errno(in->g);
    if (code <= 0)
        code = EIO;
    if (disk)
        return al_error_set(err, code, "guestfs inject: %s: %s: %s", disk, what,
                            msg ? msg : "unknown libguestfs error");
    return al_error_set(
            err, code, "guestfs inject: %s: %s%s%s", what, msg ? msg : "unknown libguestfs error",
            in->warnings.len ? " (warnings: " : "", in->warnings.len ? in->warnings.data : "");
}

static bool label_matches(struct inject *in, const char *mountable)
{
    /* A device without a filesystem makes vfs_label fail: not a match. */
    _cleanup_free_ char *label = guestfs_vfs_label(in->g, mountable);
    return label && streq(label, ROOT_LABEL);
}

/* The whole disk device that holds a filesystem (a device itself, or the
 * parent of a partition); NULL for LVM, md and the like. */
static char *disk_of(struct inject *in, const char *fs, char *const *devices)
{
    for (char *const *d = devices; *d; d++)
        if (streq(*d, fs))
            return strdup(fs);
    if (strncmp(fs, "/dev/", 5) != 0)
        return NULL;
    return guestfs_part_to_dev(in->g, fs);
}

/* Finds the root filesystem of the disk at device `dev`. On success
 * *ret_root is the mountable and *ret_inspected tells whether it came from
 * inspection (then other mountpoints may need mounting too). */
static int find_root(struct inject *in, const char *dev, char *const *devices, const char *disk,
                     char **ret_root, bool *ret_inspected, struct al_error **err)
{
    if (label_matches(in, dev)) {
        *ret_root = strdup(dev);
        *ret_inspected = false;
        return *ret_root ? 0 : al_error_set(err, ENOMEM, "guestfs inject: %s", disk);
    }

    _cleanup_strv_ char **parts = guestfs_list_partitions(in->g);
    if (!parts)
        return gerr(in, err, "listing partitions", disk);
    for (char **p = parts; *p; p++) {
        _cleanup_free_ char *parent = guestfs_part_to_dev(in->g, *p);
        if (parent && streq(parent, dev) && label_matches(in, *p)) {
            *ret_root = strdup(*p);
            *ret_inspected = false;
            return *ret_root ? 0 : al_error_set(err, ENOMEM, "guestfs inject: %s", disk);
        }
    }

    if (!in->inspected) {
        /* Inspection covers every disk of the appliance at once; an empty
         * result is not an error here, only for the disk that needed it. */
        in->roots = guestfs_inspect_os(in->g);
        if (!in->roots)
            return gerr(in, err, "inspecting for an operating system", disk);
        in->inspected = true;
    }
    size_t found = 0;
    const char *root = NULL;
    for (char **r = in->roots; *r; r++) {
        _cleanup_free_ char *parent = disk_of(in, *r, devices);
        if (parent && streq(parent, dev)) {
            root = *r;
            found++;
        }
    }
    if (found == 0)
        return al_error_set(err, ENOENT,
                            "guestfs inject: %s: no filesystem labelled \"%s\" and no operating "
                            "system found by inspection (roots on LVM or md are not supported)",
                            disk, ROOT_LABEL);
    if (found > 1)
        return al_error_set(err, ENOTUNIQ,
                            "guestfs inject: %s: %zu operating systems found; label the root "
                            "filesystem \"%s\"",
                            disk, found, ROOT_LABEL);
    *ret_root = strdup(root);
    *ret_inspected = true;
    return *ret_root ? 0 : al_error_set(err, ENOMEM, "guestfs inject: %s", disk);
}

static int cmp_mountpoint_len(const void *a, const void *b)
{
    size_t la = strlen(*(char *const *)a), lb = strlen(*(char *const *)b);
    return la < lb ? -1 : la > lb;
}

/* Mounts an inspected OS: "/" first, then the rest from its fstab in order of
 * path length so parents come before children (/var before /var/lib). */
static int mount_inspected(struct inject *in, const char *root, const char *disk,
                           struct al_error **err)
{
    _cleanup_strv_ char **mp = guestfs_inspect_get_mountpoints(in->g, root);
    if (!mp)
        return gerr(in, err, "reading the mountpoints", disk);
    /* The list alternates mountpoint, device. */
    size_t n = 0;
    while (mp[n] && mp[n + 1])
        n += 2;
    _cleanup_free_ char **pairs = calloc(n / 2 + 1, sizeof(char *));
    if (!pairs)
        return al_error_set(err, ENOMEM, "guestfs inject: %s", disk);
    for (size_t i = 0; i < n; i += 2)
        pairs[i / 2] = mp[i];
    qsort(pairs, n / 2, sizeof(char *), cmp_mountpoint_len);
    for (size_t i = 0; i < n / 2; i++) {
        const char *dev = NULL;
        for (size_t j = 0; j < n; j += 2)
            if (mp[j] == pairs[i])
                dev = mp[j + 1];
        if (guestfs_mount(in->g, dev, pairs[i]) < 0)
            return gerr(in, err, "mounting the guest filesystems", disk);
    }
    return 0;
}

static int write_seed_file(struct inject *in, const char *name, const char *content, int mode,
                           const char *disk, struct al_error **err)
{
    char path[sizeof(SEED_DIR "/meta-data") + 16];
    int n = snprintf(path, sizeof(path), SEED_DIR "/%s", name);
    if (n < 0 || (size_t)n >= sizeof(path))
        return al_error_set(err, ENAMETOOLONG, "guestfs inject: %s: seed file name %s", disk, name);
    /* Mode and owner before the content, so the content never sits in a
     * file with looser permissions. */
    if (guestfs_write(in->g, path, "", 0) < 0 || guestfs_chown(in->g, 0, 0, path) < 0 ||
        guestfs_chmod(in->g, mode, path) < 0 ||
        guestfs_write(in->g, path, content, strlen(content)) < 0)
        return gerr(in, err, path, disk);
    return 0;
}

static int inject_one(struct inject *in, const struct guestfs_inject_item *item, const char *dev,
                      char *const *devices, struct al_error **err)
{
    _cleanup_free_ char *root = NULL;
    bool inspected = false;
    int r = find_root(in, dev, devices, item->disk, &root, &inspected, err);
    if (r < 0)
        return r;
    if (inspected)
        r = mount_inspected(in, root, item->disk, err);
    else if (guestfs_mount(in->g, root, "/") < 0)
        r = gerr(in, err, "mounting the root filesystem", item->disk);
    if (r < 0) {
        (void)guestfs_umount_all(in->g);
        return r;
    }

    if (guestfs_mkdir_p(in->g, SEED_DIR) < 0)
        r = gerr(in, err, "creating " SEED_DIR, item->disk);
    /* meta-data holds nothing private; user-data carries the job. */
    if (r == 0)
        r = write_seed_file(in, "meta-data", item->meta_data, 0644, item->disk, err);
    if (r == 0)
        r = write_seed_file(in, "user-data", item->user_data, 0600, item->disk, err);
    if (guestfs_umount_all(in->g) < 0 && r == 0)
        r = gerr(in, err, "unmounting", item->disk);
    return r;
}

static int check_items(const struct guestfs_inject_item *items, size_t n, struct al_error **err)
{
    if (n > MAX_ITEMS)
        return al_error_set(err, E2BIG, "guestfs inject: %zu disks in one call (at most %d)", n,
                            MAX_ITEMS);
    for (size_t i = 0; i < n; i++) {
        const struct guestfs_inject_item *it = &items[i];
        if (!it->disk || !*it->disk)
            return al_error_set(err, EINVAL, "guestfs inject: item %zu has no disk path", i);
        if (!it->meta_data || !it->user_data)
            return al_error_set(err, EINVAL,
                                "guestfs inject: %s: meta-data and user-data are required",
                                it->disk);
        struct stat st;
        if (stat(it->disk, &st) < 0)
            return al_error_set_errno(err, errno, "guestfs inject: disk %s", it->disk);
        if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
            return al_error_set(err, EINVAL,
                                "guestfs inject: disk %s is not a regular file or block device",
                                it->disk);
    }
    return 0;
}

int guestfs_inject_seed(const struct guestfs_inject_item *items, size_t n, bool force_tcg,
                        struct al_error **err)
{
    if (n > 0 && !items)
        return al_error_set(err, EINVAL, "guestfs inject: no items");
    int r = check_items(items, n, err);
    if (r < 0 || n == 0)
        return r;

    _cleanup_(inject_done) struct inject in = {.warnings = {.limit = WARNINGS_MAX}};
    in.g = guestfs_create();
    if (!in.g)
        return al_error_set(err, ENOMEM, "guestfs inject: cannot create a libguestfs handle");
    /* Errors go into our error object, not to stderr. */
    guestfs_set_error_handler(in.g, NULL, NULL);
    if (guestfs_set_event_callback(in.g, on_warning, GUESTFS_EVENT_WARNING, 0, &in) < 0)
        return gerr(&in, err, "registering the warning callback", NULL);
    (void)guestfs_set_identifier(in.g, "agentlab-inject");
    if (guestfs_set_backend(in.g, "direct") < 0)
        return gerr(&in, err, "selecting the direct backend", NULL);
    if (force_tcg) {
        char *settings[] = {(char *)"force_tcg", NULL};
        if (guestfs_set_backend_settings(in.g, settings) < 0)
            return gerr(&in, err, "setting force_tcg", NULL);
    }

    for (size_t i = 0; i < n; i++) {
        /* Never let libguestfs probe the format: a raw image could pose as
         * qcow2 and name a backing file on the host. */
        const char *fmt = items[i].format ? items[i].format : DEFAULT_FMT;
        if (guestfs_add_drive_opts(in.g, items[i].disk, GUESTFS_ADD_DRIVE_OPTS_FORMAT, fmt, -1) < 0)
            return gerr(&in, err, "adding the disk", items[i].disk);
    }
    /* under KVM, a launch that hangs is ended early (appliance_watchdog.h) */
    r = appliance_launch(in.g, force_tcg ? 0 : APPLIANCE_WATCHDOG_KVM_S);
    if (r == -ETIMEDOUT)
        return al_error_set(err, ETIMEDOUT,
                            "guestfs inject: the libguestfs appliance showed no sign of life in "
                            "%d s under KVM",
                            APPLIANCE_WATCHDOG_KVM_S);
    if (r < 0)
        return gerr(&in, err, "launching the appliance", NULL);

    _cleanup_strv_ char **devices = guestfs_list_devices(in.g);
    if (!devices)
        return gerr(&in, err, "listing devices", NULL);
    size_t ndev = 0;
    while (devices[ndev])
        ndev++;
    if (ndev != n)
        return al_error_set(err, EIO, "guestfs inject: %zu disks added but %zu devices found", n,
                            ndev);

    /* Devices appear in the order the disks were added. */
    for (size_t i = 0; i < n; i++) {
        r = inject_one(&in, &items[i], devices[i], devices, err);
        if (r < 0)
            return r;
    }

    /* Shutting down is when qemu flushes the writes to the overlays: its
     * failure means the seeds may not be on disk. */
    if (guestfs_shutdown(in.g) < 0)
        return gerr(&in, err, "shutting down the appliance (writes may be lost)", NULL);
    guestfs_close(TAKE_PTR(in.g));
    return 0;
}
