#include "runner/sources/gitlab_artifacts.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runner/base/macro.h"

static int add_file(struct archive *zip, struct archive_entry *e, const char *rel, uint64_t *total,
                    uint64_t max_bytes, struct al_error **err)
{
    _cleanup_close_ int fd = open(archive_entry_sourcepath(e), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return al_error_set_errno(err, errno, "reading artifact %s", rel);
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
        return al_error_set(err, EIO, "artifact %s changed while packing", rel);
    /* a generous bound on the zip's growth: data plus headers */
    *total += (uint64_t)st.st_size + 2 * strlen(rel) + 128;
    if (max_bytes && *total > max_bytes)
        return al_error_set(err, EFBIG, "the artifacts archive would exceed %llu bytes",
                            (unsigned long long)max_bytes);
    struct archive_entry *out = archive_entry_new();
    if (!out)
        return al_error_set(err, ENOMEM, "out of memory");
    archive_entry_set_pathname(out, rel);
    archive_entry_set_filetype(out, AE_IFREG);
    archive_entry_set_perm(out, (st.st_mode & 0111) ? 0755 : 0644);
    archive_entry_set_size(out, st.st_size);
    archive_entry_set_mtime(out, st.st_mtim.tv_sec, 0);
    int r = 0;
    if (archive_write_header(zip, out) != ARCHIVE_OK)
        r = al_error_set(err, EIO, "packing artifact %s: %s", rel, archive_error_string(zip));
    char buf[64 * 1024];
    ssize_t n;
    int64_t left = st.st_size;
    while (r == 0 && left > 0 && (n = read(fd, buf, sizeof(buf))) > 0) {
        if (n > left)
            n = (ssize_t)left;
        if (archive_write_data(zip, buf, (size_t)n) != n)
            r = al_error_set(err, EIO, "packing artifact %s: %s", rel, archive_error_string(zip));
        left -= n;
    }
    if (r == 0 && left > 0)
        r = al_error_set(err, EIO, "artifact %s shrank while packing", rel);
    archive_entry_free(out);
    return r;
}

int gitlab_artifacts_zip(const char *dir, const struct gitlab_artifact *a, const char *zip_path,
                         uint64_t max_bytes, struct gitlab_zip_result *ret, struct al_error **err)
{
    struct gitlab_zip_result res = {0};
    struct stat st;
    if (lstat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
        *ret = res; /* the guest handed back nothing */
        return 0;
    }
    int r = 0;
    struct archive *disk = archive_read_disk_new();
    struct archive *zip = NULL;
    if (!disk) {
        r = al_error_set(err, ENOMEM, "out of memory");
        goto done;
    }
    archive_read_disk_set_symlink_physical(disk);
    if (archive_read_disk_open(disk, dir) != ARCHIVE_OK) {
        r = al_error_set(err, EIO, "reading %s: %s", dir, archive_error_string(disk));
        goto done;
    }
    size_t dlen = strlen(dir);
    while (dlen > 1 && dir[dlen - 1] == '/')
        dlen--;
    uint64_t total = 22; /* end of central directory */
    for (;;) {
        struct archive_entry *e = archive_entry_new();
        if (!e) {
            r = al_error_set(err, ENOMEM, "out of memory");
            break;
        }
        int ar = archive_read_next_header2(disk, e);
        if (ar == ARCHIVE_EOF) {
            archive_entry_free(e);
            break;
        }
        if (ar != ARCHIVE_OK && ar != ARCHIVE_WARN) {
            r = al_error_set(err, EIO, "reading %s: %s", dir, archive_error_string(disk));
            archive_entry_free(e);
            break;
        }
        archive_read_disk_descend(disk);
        const char *full = archive_entry_pathname(e);
        const char *rel = full + dlen;
        while (*rel == '/')
            rel++;
        if (strncmp(full, dir, dlen) != 0 || archive_entry_filetype(e) != AE_IFREG || !*rel ||
            !gitlab_artifact_wants(a, rel)) {
            archive_entry_free(e);
            continue;
        }
        if (!zip) {
            zip = archive_write_new();
            if (!zip || archive_write_set_format_zip(zip) != ARCHIVE_OK ||
                archive_write_open_filename(zip, zip_path) != ARCHIVE_OK) {
                r = al_error_set(err, EIO, "creating %s: %s", zip_path,
                                 zip ? archive_error_string(zip) : "out of memory");
                archive_entry_free(e);
                break;
            }
        }
        r = add_file(zip, e, rel, &total, max_bytes, err);
        archive_entry_free(e);
        if (r < 0)
            break;
        res.files++;
    }
done:
    if (disk)
        archive_read_free(disk);
    if (zip) {
        if (archive_write_close(zip) != ARCHIVE_OK && r == 0)
            r = al_error_set(err, EIO, "finishing %s: %s", zip_path, archive_error_string(zip));
        archive_write_free(zip);
    }
    if (r < 0) {
        unlink(zip_path);
        return r;
    }
    if (res.files && stat(zip_path, &st) == 0)
        res.bytes = (uint64_t)st.st_size;
    *ret = res;
    return 0;
}
