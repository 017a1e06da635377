#include "provision/archive_walk.h"

#include <archive.h>
#include <string.h>

#include "runner/base/macro.h"

int archive_walk_dir(const char *dir, archive_walk_fn fn, void *userdata, struct al_error **err)
{
    struct archive *disk = archive_read_disk_new();
    if (!disk)
        return al_error_set(err, ENOMEM, "out of memory");
    int r = 0;
    archive_read_disk_set_symlink_physical(disk);
    /* user and group names for tar members; a zip ignores them */
    archive_read_disk_set_standard_lookup(disk);
    if (archive_read_disk_open(disk, dir) != ARCHIVE_OK) {
        r = al_error_set(err, EIO, "reading %s: %s", dir, archive_error_string(disk));
        goto done;
    }
    size_t dlen = strlen(dir);
    while (dlen > 1 && dir[dlen - 1] == '/')
        dlen--;
    while (r == 0) {
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
        if (strncmp(full, dir, dlen) != 0 || (full[dlen] != '/' && full[dlen] != '\0')) {
            r = al_error_set(err, EIO, "unexpected path %s while reading %s", full, dir);
        } else {
            const char *rel = full + dlen;
            while (*rel == '/')
                rel++;
            if (*rel) {
                /* fn may rename e; rel must outlive that */
                _cleanup_free_ char *copy = strdup(rel);
                r = copy ? fn(e, copy, userdata, err) : al_error_set(err, ENOMEM, "out of memory");
            }
        }
        archive_entry_free(e);
    }
done:
    archive_read_free(disk);
    return r;
}
