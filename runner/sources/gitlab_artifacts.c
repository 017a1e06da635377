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
#include "runner/base/util.h"

/* The size bytes of in as the data of the entry just written to w: a file
 * that shrank meanwhile is an error, one that grew is cut at size. */
static int copy_data(struct archive *w, int in, int64_t size, const char *rel,
                     struct al_error **err)
{
    char buf[64 * 1024];
    ssize_t n;
    int64_t left = size;
    while (left > 0 && (n = read(in, buf, sizeof(buf))) > 0) {
        if (n > left)
            n = (ssize_t)left;
        if (archive_write_data(w, buf, (size_t)n) != n)
            return al_error_set(err, EIO, "packing artifact %s: %s", rel, archive_error_string(w));
        left -= n;
    }
    if (left > 0)
        return al_error_set(err, EIO, "artifact %s shrank while packing", rel);
    return 0;
}

/* The walked file e, opened for reading: still a regular file (never
 * through a symlink). A negative errno with err set otherwise. */
static int open_regular(struct archive_entry *e, const char *rel, struct stat *st,
                        struct al_error **err)
{
    int fd = open(archive_entry_sourcepath(e), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return al_error_set_errno(err, errno, "reading artifact %s", rel);
    if (fstat(fd, st) < 0 || !S_ISREG(st->st_mode)) {
        close(fd);
        return al_error_set(err, EIO, "artifact %s changed while packing", rel);
    }
    return fd;
}

static int add_file(struct archive *zip, struct archive_entry *e, const char *rel, uint64_t *total,
                    uint64_t max_bytes, struct al_error **err)
{
    struct stat st;
    _cleanup_close_ int fd = open_regular(e, rel, &st, err);
    if (fd < 0)
        return fd;
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
    if (r == 0)
        r = copy_data(zip, fd, st.st_size, rel, err);
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
    const char *name = gitlab_artifact_member(z->a, rel);
    if (archive_entry_filetype(e) != AE_IFREG || !name)
        return 0;
    if (!z->zip) {
        z->zip = archive_write_new();
        if (!z->zip || archive_write_set_format_zip(z->zip) != ARCHIVE_OK ||
            archive_write_open_filename(z->zip, z->zip_path) != ARCHIVE_OK)
            return al_error_set(err, EIO, "creating %s: %s", z->zip_path,
                                z->zip ? archive_error_string(z->zip) : "out of memory");
    }
    int r = add_file(z->zip, e, name, &z->total, z->max_bytes, err);
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

/* ---- gzip and raw ---- */

struct stream {
    const struct gitlab_artifact *a;
    const char *path;
    int fd;
    bool gzip;
    uint64_t total, max_bytes;
    uint64_t files;
};

/* One gzip member holding the file's bytes, appended to s->fd. */
static int gzip_member(struct stream *s, int in, const char *rel, int64_t size,
                       struct al_error **err)
{
    struct archive *w = archive_write_new();
    if (!w)
        return al_error_set(err, ENOMEM, "out of memory");
    int r = 0;
    if (archive_write_set_format_raw(w) != ARCHIVE_OK ||
        archive_write_add_filter_gzip(w) != ARCHIVE_OK ||
        archive_write_set_bytes_in_last_block(w, 1) != ARCHIVE_OK ||
        archive_write_open_fd(w, s->fd) != ARCHIVE_OK)
        r = al_error_set(err, EIO, "packing artifact %s: %s", rel, archive_error_string(w));
    struct archive_entry *e = r == 0 ? archive_entry_new() : NULL;
    if (r == 0 && !e)
        r = al_error_set(err, ENOMEM, "out of memory");
    if (r == 0) {
        archive_entry_set_pathname(e, rel);
        archive_entry_set_filetype(e, AE_IFREG);
        archive_entry_set_size(e, size);
        if (archive_write_header(w, e) != ARCHIVE_OK)
            r = al_error_set(err, EIO, "packing artifact %s: %s", rel, archive_error_string(w));
    }
    if (r == 0)
        r = copy_data(w, in, size, rel, err);
    if (archive_write_close(w) != ARCHIVE_OK && r == 0)
        r = al_error_set(err, EIO, "packing artifact %s: %s", rel, archive_error_string(w));
    archive_entry_free(e);
    archive_write_free(w);
    return r;
}

static int raw_copy(struct stream *s, int in, const char *rel, struct al_error **err)
{
    char buf[64 * 1024];
    ssize_t n;
    while ((n = read(in, buf, sizeof(buf))) > 0) {
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(s->fd, buf + off, (size_t)(n - off));
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                return al_error_set_errno(err, w < 0 ? errno : EIO, "writing %s", s->path);
            off += w;
        }
    }
    return n < 0 ? al_error_set_errno(err, errno, "reading artifact %s", rel) : 0;
}

static int stream_entry(struct archive_entry *e, const char *rel, void *userdata,
                        struct al_error **err)
{
    struct stream *s = userdata;
    const char *name = gitlab_artifact_member(s->a, rel);
    if (archive_entry_filetype(e) != AE_IFREG || !name)
        return 0;
    rel = name;
    if (!s->gzip && s->files)
        return al_error_set(err, EINVAL,
                            "artifact %s: a raw artifact is one file, more than one matches", rel);
    struct stat st;
    _cleanup_close_ int fd = open_regular(e, rel, &st, err);
    if (fd < 0)
        return fd;
    /* gzip grows incompressible data by a little; 64 bytes covers a header */
    s->total += (uint64_t)st.st_size + (s->gzip ? (uint64_t)st.st_size / 1000 + 64 : 0);
    if (s->max_bytes && s->total > s->max_bytes)
        return al_error_set(err, EFBIG, "the artifact would exceed %llu bytes",
                            (unsigned long long)s->max_bytes);
    int r = s->gzip ? gzip_member(s, fd, rel, st.st_size, err) : raw_copy(s, fd, rel, err);
    if (r == 0)
        s->files++;
    return r;
}

int gitlab_artifacts_pack(const char *dir, const struct gitlab_artifact *a, const char *path,
                          uint64_t max_bytes, struct gitlab_zip_result *ret, struct al_error **err)
{
    bool gzip = a->format && streq(a->format, "gzip");
    if (!a->format || streq(a->format, "zip"))
        return gitlab_artifacts_zip(dir, a, path, max_bytes, ret, err);
    if (!gzip && !streq(a->format, "raw"))
        return al_error_set(err, ENOTSUP, "artifact format %s is not supported", a->format);
    struct gitlab_zip_result res = {0};
    struct stat st;
    if (lstat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
        *ret = res;
        return 0;
    }
    struct stream s = {.a = a, .path = path, .gzip = gzip, .max_bytes = max_bytes};
    s.fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (s.fd < 0)
        return al_error_set_errno(err, errno, "creating %s", path);
    int r = archive_walk_dir(dir, stream_entry, &s, err);
    if (r == 0 && fstat(s.fd, &st) < 0)
        r = al_error_set_errno(err, errno, "writing %s", path);
    close(s.fd);
    if (r < 0 || s.files == 0) {
        unlink(path);
        if (r < 0)
            return r;
    }
    res.files = s.files;
    res.bytes = s.files ? (uint64_t)st.st_size : 0;
    *ret = res;
    return 0;
}

char *gitlab_artifact_file_name(const struct gitlab_artifact *a)
{
    /* gitlab-runner's artifacts-uploader: the last component of the name
     * (filepath.Base), "default" when nothing is left of it */
    const char *name = a->name && *a->name ? a->name : "artifacts";
    size_t n = strlen(name);
    while (n > 0 && name[n - 1] == '/')
        n--;
    const char *slash = memrchr(name, '/', n);
    const char *base = slash ? slash + 1 : name;
    size_t base_len = n - (size_t)(base - name);
    if (base_len == 0 || (base_len == 1 && base[0] == '.')) {
        base = "default";
        base_len = strlen(base);
    }
    const char *ext = !a->format || streq(a->format, "zip") ? ".zip"
                      : streq(a->format, "gzip")            ? ".gz"
                                                            : "";
    char *out = NULL;
    if (asprintf(&out, "%.*s%s", (int)base_len, base, ext) < 0)
        return NULL;
    /* it goes into a quoted multipart header */
    for (char *p = out; *p; p++) {
        if (*p == '\\' || *p == '"' || (unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '_';
    }
    return out;
}
