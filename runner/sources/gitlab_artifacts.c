#include "runner/sources/gitlab_artifacts.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "provision/archive_walk.h"
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

struct zip {
    const struct gitlab_artifact *a;
    const char *zip_path;
    struct archive *zip;
    uint64_t total, max_bytes;
    uint64_t files;
};

static int zip_entry(struct archive_entry *e, const char *rel, void *userdata,
                     struct al_error **err)
{
    struct zip *z = userdata;
    if (archive_entry_filetype(e) != AE_IFREG || !gitlab_artifact_wants(z->a, rel))
        return 0;
    if (!z->zip) {
        z->zip = archive_write_new();
        if (!z->zip || archive_write_set_format_zip(z->zip) != ARCHIVE_OK ||
            archive_write_open_filename(z->zip, z->zip_path) != ARCHIVE_OK)
            return al_error_set(err, EIO, "creating %s: %s", z->zip_path,
                                z->zip ? archive_error_string(z->zip) : "out of memory");
    }
    int r = add_file(z->zip, e, rel, &z->total, z->max_bytes, err);
    if (r < 0)
        return r;
    z->files++;
    return 0;
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
    struct zip z = {.a = a,
                    .zip_path = zip_path,
                    .max_bytes = max_bytes,
                    .total = 22 /* end of central directory */};
    int r = archive_walk_dir(dir, zip_entry, &z, err);
    if (z.zip) {
        if (archive_write_close(z.zip) != ARCHIVE_OK && r == 0)
            r = al_error_set(err, EIO, "finishing %s: %s", zip_path, archive_error_string(z.zip));
        archive_write_free(z.zip);
    }
    if (r < 0) {
        unlink(zip_path);
        return r;
    }
    res.files = z.files;
    if (res.files && stat(zip_path, &st) == 0)
        res.bytes = (uint64_t)st.st_size;
    *ret = res;
    return 0;
}
