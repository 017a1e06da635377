#include "provision/workdir.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "provision/archive_walk.h"
#include "runner/base/macro.h"

struct pack {
    const char *dir;
    struct archive *out;
    uint64_t total, max_bytes;
};

static int pack_entry(struct archive_entry *e, const char *rel, void *userdata,
                      struct al_error **err)
{
    struct pack *p = userdata;
    mode_t type = archive_entry_filetype(e);
    if (type != AE_IFREG && type != AE_IFDIR && type != AE_IFLNK)
        return 0;
    archive_entry_set_pathname(e, rel);
    p->total += (uint64_t)archive_entry_size(e) + 512;
    if (p->max_bytes && p->total > p->max_bytes)
        return al_error_set(err, EFBIG, "work directory %s is larger than %llu bytes", p->dir,
                            (unsigned long long)p->max_bytes);
    if (archive_write_header(p->out, e) != ARCHIVE_OK)
        return al_error_set(err, EIO, "archiving %s: %s", rel, archive_error_string(p->out));
    if (type != AE_IFREG)
        return 0;
    _cleanup_close_ int fd = open(archive_entry_sourcepath(e), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return al_error_set_errno(err, errno, "reading %s/%s", p->dir, rel);
    char buf[64 * 1024];
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf))) > 0) {
        if (archive_write_data(p->out, buf, (size_t)n) < 0)
            return al_error_set(err, EIO, "archiving %s: %s", rel, archive_error_string(p->out));
    }
    return 0;
}

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
    struct archive *out = archive_write_new();
    if (!out)
        return al_error_set(err, ENOMEM, "allocating the archiver");
    archive_write_set_format_pax_restricted(out);
    if (archive_write_open_filename(out, tar_path) != ARCHIVE_OK) {
        r = al_error_set(err, EIO, "creating %s: %s", tar_path, archive_error_string(out));
    } else {
        struct pack p = {.dir = dir, .out = out, .max_bytes = max_bytes};
        r = archive_walk_dir(dir, pack_entry, &p, err);
    }
    if (archive_write_close(out) != ARCHIVE_OK && r == 0)
        r = al_error_set(err, EIO, "finishing %s: %s", tar_path, archive_error_string(out));
    archive_write_free(out);
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
