#include "provision/artifacts.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runner/base/util.h"

static void note(struct artifact_summary *s, const char *fmt, ...) _printf_(2, 3);

static void note(struct artifact_summary *s, const char *fmt, ...)
{
    if (s->note[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->note, sizeof(s->note), fmt, ap);
    va_end(ap);
}

/* A relative path made of normal components only. */
static bool path_is_safe(const char *p)
{
    if (!p || !*p || p[0] == '/')
        return false;
    const char *c = p;
    while (*c) {
        const char *slash = strchr(c, '/');
        size_t n = slash ? (size_t)(slash - c) : strlen(c);
        if ((n == 2 && c[0] == '.' && c[1] == '.'))
            return false;
        for (size_t i = 0; i < n; i++) {
            if ((unsigned char)c[i] < 0x20)
                return false;
        }
        c += n;
        while (*c == '/')
            c++;
    }
    return true;
}

static int extract(const char *tar_path, bool zip, const char *dest_dir,
                   const struct artifact_limits *lim, struct artifact_summary *ret,
                   struct al_error **err)
{
    struct artifact_summary s = {0};
    int r = al_mkdir_p(dest_dir, 0755, err);
    if (r < 0)
        return r;
    _cleanup_close_ int dfd = open(dest_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return al_error_set_errno(err, errno, "opening %s", dest_dir);

    struct archive *in = archive_read_new();
    if (!in)
        return al_error_set(err, ENOMEM, "allocating the archive reader");
    if (zip) {
        archive_read_support_format_zip(in);
    } else {
        archive_read_support_format_tar(in);
        archive_read_support_format_gnutar(in);
    }
    archive_read_support_filter_none(in);
    if (archive_read_open_filename(in, tar_path, 64 * 1024) != ARCHIVE_OK) {
        r = al_error_set(err, EIO, "reading %s: %s", tar_path, archive_error_string(in));
        archive_read_free(in);
        return r;
    }

    struct archive_entry *e;
    char buf[64 * 1024];
    for (;;) {
        int ar = archive_read_next_header(in, &e);
        if (ar == ARCHIVE_EOF)
            break;
        if (ar != ARCHIVE_OK && ar != ARCHIVE_WARN) {
            note(&s, "the artifact archive is damaged: %s", archive_error_string(in));
            s.truncated = true;
            break;
        }
        const char *path = archive_entry_pathname(e);
        mode_t type = archive_entry_filetype(e);
        if (!path_is_safe(path)) {
            s.skipped++;
            note(&s, "skipped unsafe path \"%.100s\"", path ? path : "");
            continue;
        }
        if (archive_entry_hardlink(e) || (type != AE_IFREG && type != AE_IFDIR)) {
            s.skipped++;
            note(&s, "skipped \"%.100s\": only regular files and directories are extracted", path);
            continue;
        }
        size_t plen = strlen(path);
        while (plen > 1 && path[plen - 1] == '/')
            plen--;
        /* directories count too: a million empty ones cost inodes */
        if (lim->max_files && s.files + s.dirs + 1 > lim->max_files) {
            s.truncated = s.over_files = true;
            note(&s, "artifact limit of %" PRIu64 " files reached at \"%.100s\"", lim->max_files,
                 path);
            break;
        }
        /* directories created on the way count as well: one entry
         * "a/b/.../z/f" must not make more than the limit allows */
        uint64_t room = lim->max_files ? lim->max_files - (s.files + s.dirs) : UINT64_MAX;
        uint64_t budget = room - (type == AE_IFDIR ? 0 : 1);
        if (type == AE_IFDIR) {
            int fd = al_open_dirs_nofollow(dfd, path, plen, &budget);
            if (fd == -EDQUOT) {
                s.dirs += room - budget;
                s.truncated = s.over_files = true;
                note(&s, "artifact limit of %" PRIu64 " files reached at \"%.100s\"",
                     lim->max_files, path);
                break;
            }
            if (fd < 0) {
                s.skipped++;
                note(&s, "skipped \"%.100s\": %s", path, strerror(-fd));
            } else {
                /* one already there counts as entered */
                s.dirs += room - budget ? room - budget : 1;
                close(fd);
            }
            continue;
        }
        int64_t size = archive_entry_size(e);
        if (lim->max_bytes && (size < 0 || (uint64_t)size > lim->max_bytes - s.bytes)) {
            s.truncated = s.over_bytes = true;
            note(&s, "artifact limit of %" PRIu64 " bytes reached at \"%.100s\"", lim->max_bytes,
                 path);
            break;
        }
        const char *slash = memrchr(path, '/', plen);
        size_t dirlen = slash ? (size_t)(slash - path) : 0;
        const char *base = slash ? slash + 1 : path;
        int pfd = al_open_dirs_nofollow(dfd, path, dirlen, &budget);
        s.dirs += room - 1 - budget;
        if (pfd == -EDQUOT) {
            s.truncated = s.over_files = true;
            note(&s, "artifact limit of %" PRIu64 " files reached at \"%.100s\"", lim->max_files,
                 path);
            break;
        }
        if (pfd < 0) {
            s.skipped++;
            note(&s, "skipped \"%.100s\": %s", path, strerror(-pfd));
            continue;
        }
        char name[256];
        size_t blen = plen - (size_t)(base - path);
        if (blen >= sizeof(name)) {
            close(pfd);
            s.skipped++;
            note(&s, "skipped \"%.100s\": name too long", path);
            continue;
        }
        memcpy(name, base, blen);
        name[blen] = '\0';
        mode_t mode = (archive_entry_perm(e) & 0111) ? 0755 : 0644;
        /* Whatever is at the name (a file from an earlier run, a symlink, a
         * hard link to a file elsewhere) is replaced, never written through:
         * unlink, then create exclusively. A directory there stays. */
        int fd = -1, oerr = 0;
        if (unlinkat(pfd, name, 0) < 0 && errno != ENOENT) {
            oerr = errno;
        } else {
            fd = openat(pfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
            oerr = errno;
        }
        close(pfd);
        if (fd < 0) {
            s.skipped++;
            note(&s, "skipped \"%.100s\": %s", path, strerror(oerr));
            continue;
        }
        uint64_t written = 0;
        la_ssize_t n;
        bool damaged = false;
        while ((n = archive_read_data(in, buf, sizeof(buf))) > 0) {
            if (write(fd, buf, (size_t)n) != n) {
                r = al_error_set_errno(err, errno, "writing %s/%s", dest_dir, path);
                close(fd);
                goto out;
            }
            written += (uint64_t)n;
        }
        if (n < 0)
            damaged = true;
        fchmod(fd, mode);
        close(fd);
        if (damaged) {
            note(&s, "the artifact archive is damaged at \"%.100s\"", path);
            s.truncated = true;
            break;
        }
        s.files++;
        s.bytes += written;
    }
    r = 0;
out:
    archive_read_free(in);
    if (r == 0)
        *ret = s;
    return r;
}

int artifacts_extract(const char *tar_path, const char *dest_dir, const struct artifact_limits *lim,
                      struct artifact_summary *ret, struct al_error **err)
{
    return extract(tar_path, false, dest_dir, lim, ret, err);
}

int artifacts_extract_zip(const char *zip_path, const char *dest_dir,
                          const struct artifact_limits *lim, struct artifact_summary *ret,
                          struct al_error **err)
{
    return extract(zip_path, true, dest_dir, lim, ret, err);
}
