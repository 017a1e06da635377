#include "provision/workdir.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int workdir_pack(const char *dir, const char *tar_path, uint64_t max_bytes, uint64_t *ret_bytes,
                 struct al_error **err)
{
    struct stat st;
    if (stat(dir, &st) < 0)
        return al_error_set_errno(err, errno, "work directory %s", dir);
    if (!S_ISDIR(st.st_mode))
        return al_error_set(err, ENOTDIR, "work directory %s is not a directory", dir);
    if (access(dir, R_OK | X_OK) < 0)
        return al_error_set_errno(err, errno, "work directory %s", dir);

    int r = 0;
    struct archive *disk = archive_read_disk_new();
    struct archive *out = archive_write_new();
    if (!disk || !out) {
        r = al_error_set(err, ENOMEM, "allocating the archiver");
        goto done;
    }
    archive_read_disk_set_symlink_physical(disk);
    archive_read_disk_set_standard_lookup(disk);
    archive_write_set_format_pax_restricted(out);
    if (archive_write_open_filename(out, tar_path) != ARCHIVE_OK) {
        r = al_error_set(err, EIO, "creating %s: %s", tar_path, archive_error_string(out));
        goto done;
    }
    if (archive_read_disk_open(disk, dir) != ARCHIVE_OK) {
        r = al_error_set(err, EIO, "reading %s: %s", dir, archive_error_string(disk));
        goto done;
    }
    /* archive paths are relative to dir: they carry no host prefix */
    size_t dlen = strlen(dir);
    while (dlen > 1 && dir[dlen - 1] == '/')
        dlen--;
    uint64_t total = 0;
    char buf[64 * 1024];
    for (;;) {
        struct archive_entry *e = archive_entry_new();
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
        mode_t type = archive_entry_filetype(e);
        if (strncmp(full, dir, dlen) != 0 || (full[dlen] != '/' && full[dlen] != '\0')) {
            r = al_error_set(err, EIO, "unexpected path %s while reading %s", full, dir);
            archive_entry_free(e);
            break;
        }
        const char *rel = full + dlen;
        while (*rel == '/')
            rel++;
        if (!*rel || (type != AE_IFREG && type != AE_IFDIR && type != AE_IFLNK)) {
            archive_entry_free(e);
            continue;
        }
        _cleanup_free_ char *path = strdup(rel);
        if (!path) {
            r = al_error_set(err, ENOMEM, "archiving %s", dir);
            archive_entry_free(e);
            break;
        }
        archive_entry_set_pathname(e, path);
        total += (uint64_t)archive_entry_size(e) + 512;
        if (max_bytes && total > max_bytes) {
            r = al_error_set(err, EFBIG, "work directory %s is larger than %llu bytes", dir,
                             (unsigned long long)max_bytes);
            archive_entry_free(e);
            break;
        }
        if (archive_write_header(out, e) != ARCHIVE_OK) {
            r = al_error_set(err, EIO, "archiving %s: %s", path, archive_error_string(out));
            archive_entry_free(e);
            break;
        }
        if (type == AE_IFREG) {
            int fd = open(archive_entry_sourcepath(e), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
            if (fd < 0) {
                r = al_error_set_errno(err, errno, "reading %s/%s", dir, path);
                archive_entry_free(e);
                break;
            }
            ssize_t n;
            while ((n = read(fd, buf, sizeof(buf))) > 0) {
                if (archive_write_data(out, buf, (size_t)n) < 0) {
                    r = al_error_set(err, EIO, "archiving %s: %s", path, archive_error_string(out));
                    break;
                }
            }
            close(fd);
        }
        archive_entry_free(e);
        if (r < 0)
            break;
    }
done:
    if (disk)
        archive_read_free(disk);
    if (out) {
        if (archive_write_close(out) != ARCHIVE_OK && r == 0)
            r = al_error_set(err, EIO, "finishing %s: %s", tar_path, archive_error_string(out));
        archive_write_free(out);
    }
    if (r < 0) {
        unlink(tar_path);
        return r;
    }
    if (ret_bytes) {
        struct stat ts;
        *ret_bytes = stat(tar_path, &ts) == 0 ? (uint64_t)ts.st_size : 0;
    }
    return 0;
}
