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

#include "runner/base/sha256.h"
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

void artifact_index_clear(struct artifact_index *x)
{
    for (size_t i = 0; i < x->n; i++)
        free(x->v[i].path);
    free(x->v);
    *x = (struct artifact_index){0};
}

static int index_add(struct artifact_index *x, size_t *cap, const char *path, size_t plen,
                     uint64_t size, const char *sha256)
{
    if (x->n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 64;
        struct artifact_file *v = reallocarray(x->v, ncap, sizeof(*v));
        if (!v)
            return -ENOMEM;
        x->v = v;
        *cap = ncap;
    }
    /* one spelling per file: "./a//b/./c" is "a/b/c" */
    char *p = malloc(plen + 1);
    if (!p)
        return -ENOMEM;
    size_t o = 0;
    for (size_t i = 0; i < plen;) {
        size_t e = i;
        while (e < plen && path[e] != '/')
            e++;
        bool skip = e == i || (e - i == 1 && path[i] == '.');
        if (!skip) {
            if (o)
                p[o++] = '/';
            memcpy(p + o, path + i, e - i);
            o += e - i;
        }
        i = e + 1;
    }
    p[o] = '\0';
    struct artifact_file *f = &x->v[x->n++];
    *f = (struct artifact_file){.path = p, .size = size};
    memcpy(f->sha256, sha256, sizeof(f->sha256));
    return 0;
}

static int by_path_then_order(const void *a, const void *b, void *arg)
{
    const struct artifact_file *v = arg;
    size_t i = *(const size_t *)a, j = *(const size_t *)b;
    int c = strcmp(v[i].path, v[j].path);
    return c ? c : (i < j ? -1 : i > j);
}

/* Sorted by path; of a path written twice only the last write stays. */
static int index_finish(struct artifact_index *x)
{
    if (x->n < 2)
        return 0;
    _cleanup_free_ size_t *ord = calloc(x->n, sizeof(*ord));
    _cleanup_free_ struct artifact_file *out = calloc(x->n, sizeof(*out));
    if (!ord || !out)
        return -ENOMEM;
    for (size_t i = 0; i < x->n; i++)
        ord[i] = i;
    qsort_r(ord, x->n, sizeof(*ord), by_path_then_order, x->v);
    size_t n = 0;
    for (size_t k = 0; k < x->n; k++) {
        struct artifact_file *f = &x->v[ord[k]];
        if (k + 1 < x->n && streq(f->path, x->v[ord[k + 1]].path)) {
            free(f->path); /* overwritten later in the archive */
            continue;
        }
        out[n++] = *f;
    }
    free(x->v);
    x->v = TAKE_PTR(out);
    x->n = n;
    return 0;
}

static int extract(const char *tar_path, bool zip, const char *dest_dir,
                   const struct artifact_limits *lim, struct artifact_summary *ret,
                   struct artifact_index *index, struct al_error **err)
{
    struct artifact_summary s = {0};
    size_t index_cap = 0;
    if (index)
        *index = (struct artifact_index){0};
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
        struct al_sha256 h;
        al_sha256_init(&h);
        while ((n = archive_read_data(in, buf, sizeof(buf))) > 0) {
            if (write(fd, buf, (size_t)n) != n) {
                r = al_error_set_errno(err, errno, "writing %s/%s", dest_dir, path);
                close(fd);
                goto out;
            }
            if (index)
                al_sha256_update(&h, buf, (size_t)n);
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
        if (index) {
            char hex[AL_SHA256_HEX_SIZE];
            al_sha256_final_hex(&h, hex);
            if (index_add(index, &index_cap, path, plen, written, hex) < 0) {
                r = al_error_set(err, ENOMEM, "out of memory");
                goto out;
            }
        }
    }
    r = index ? index_finish(index) : 0;
    if (r < 0)
        r = al_error_set(err, -r, "out of memory");
out:
    archive_read_free(in);
    if (r == 0)
        *ret = s;
    else if (index)
        artifact_index_clear(index);
    return r;
}

int artifacts_extract(const char *tar_path, const char *dest_dir, const struct artifact_limits *lim,
                      struct artifact_summary *ret, struct al_error **err)
{
    return extract(tar_path, false, dest_dir, lim, ret, NULL, err);
}

int artifacts_extract_indexed(const char *tar_path, const char *dest_dir,
                              const struct artifact_limits *lim, struct artifact_summary *ret,
                              struct artifact_index *ret_index, struct al_error **err)
{
    return extract(tar_path, false, dest_dir, lim, ret, ret_index, err);
}

int artifacts_extract_zip(const char *zip_path, const char *dest_dir,
                          const struct artifact_limits *lim, struct artifact_summary *ret,
                          struct al_error **err)
{
    return extract(zip_path, true, dest_dir, lim, ret, NULL, err);
}
