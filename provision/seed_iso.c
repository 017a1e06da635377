#include "provision/seed_iso.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

DEFINE_CLEANUP_FUNC(struct archive, archive_write_free)
DEFINE_CLEANUP_FUNC(struct archive_entry, archive_entry_free)

/* cloud-init's NoCloud datasource finds its seed by this filesystem label. */
#define SEED_VOLUME_ID "cidata"

/* Rock Ridge keeps the lowercase names with dashes that cloud-init looks for
 * (Linux prefers Rock Ridge over Joliet and plain ISO9660 names); Joliet
 * serves guests that only read that. Both are libarchive's defaults, set
 * here so a changed default cannot break the seed. */
static const char seed_iso_options[] =
        "iso9660:volume-id=" SEED_VOLUME_ID ",iso9660:rockridge,iso9660:joliet";

static int add_file(struct archive *a, const char *name, const char *content, time_t now,
                    struct al_error **err)
{
    size_t len = strlen(content);
    _cleanup_(archive_entry_freep) struct archive_entry *e = archive_entry_new();
    if (!e)
        return al_error_set(err, ENOMEM, "seed ISO: adding %s", name);
    archive_entry_set_pathname(e, name);
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0444);
    archive_entry_set_size(e, (la_int64_t)len);
    archive_entry_set_mtime(e, now, 0);
    if (archive_write_header(a, e) != ARCHIVE_OK)
        return al_error_set(err, EIO, "seed ISO: adding %s: %s", name, archive_error_string(a));
    la_ssize_t w = archive_write_data(a, content, len);
    if (w < 0 || (size_t)w != len)
        return al_error_set(err, EIO, "seed ISO: writing %s: %s", name,
                            archive_error_string(a) ? archive_error_string(a) : "short write");
    return 0;
}

/* Writes the image to an open file. */
static int write_iso(int fd, const char *path, const char *meta_data, const char *user_data,
                     const char *network_config, struct al_error **err)
{
    _cleanup_(archive_write_freep) struct archive *a = archive_write_new();
    if (!a)
        return al_error_set(err, ENOMEM, "seed ISO %s", path);
    if (archive_write_set_format_iso9660(a) != ARCHIVE_OK ||
        archive_write_set_options(a, seed_iso_options) != ARCHIVE_OK)
        return al_error_set(err, EIO, "seed ISO %s: setting up the ISO9660 writer: %s", path,
                            archive_error_string(a));
    /* libarchive's default blocking pads the output; the ISO writer already
     * writes whole 2 KiB sectors. */
    if (archive_write_set_bytes_in_last_block(a, 1) != ARCHIVE_OK ||
        archive_write_open_fd(a, fd) != ARCHIVE_OK)
        return al_error_set(err, EIO, "seed ISO %s: %s", path, archive_error_string(a));

    time_t now = time(NULL);
    int r = add_file(a, "meta-data", meta_data, now, err);
    if (r == 0)
        r = add_file(a, "user-data", user_data, now, err);
    if (r == 0 && network_config)
        r = add_file(a, "network-config", network_config, now, err);
    if (r < 0)
        return al_error_wrap(err, "seed ISO %s", path);
    /* The ISO9660 writer lays out the whole image on close. */
    if (archive_write_close(a) != ARCHIVE_OK)
        return al_error_set(err, EIO, "seed ISO %s: finishing the image: %s", path,
                            archive_error_string(a));
    return 0;
}

int seed_iso_write(const char *path, mode_t mode, const char *meta_data, const char *user_data,
                   const char *network_config, struct al_error **err)
{
    if (!path || !*path || !meta_data || !user_data)
        return al_error_set(err, EINVAL, "seed ISO: path, meta-data and user-data are required");

    _cleanup_free_ char *tmp = NULL;
    if (asprintf(&tmp, "%s.tmp-XXXXXX", path) < 0)
        return al_error_set(err, ENOMEM, "seed ISO %s", path);
    _cleanup_close_ int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0)
        return al_error_set_errno(err, errno, "seed ISO: creating a temporary file next to %s",
                                  path);
    int r = fchmod(fd, mode) < 0 ? al_error_set_errno(err, errno, "seed ISO: chmod %s", tmp) : 0;
    if (r == 0)
        r = write_iso(fd, path, meta_data, user_data, network_config, err);
    /* No fsync: the seed lives as long as its job, and a host crash ends
     * that job anyway (the daemon's reconcile destroys what is left). The
     * rename is what matters: nobody ever sees a half-written image. */
    if (r == 0 && close(TAKE_FD(fd)) < 0)
        r = al_error_set_errno(err, errno, "seed ISO: closing %s", tmp);
    if (r == 0 && rename(tmp, path) < 0)
        r = al_error_set_errno(err, errno, "seed ISO: renaming %s to %s", tmp, path);
    if (r < 0)
        unlink(tmp);
    return r;
}
