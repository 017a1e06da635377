#include "artifacts.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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

int artifacts_extract(const char *tar_path, const char *dest_dir, const struct artifact_limits *lim,
                      struct artifact_summary *ret, struct al_error **err)
{
    struct artifact_summary s = {0};
    int r = al_mkdir_p(dest_dir, 0755, err);
    if (r < 0)
        return r;

    struct archive *in = archive_read_new();
    struct archive *out = archive_write_disk_new();
    if (!in || !out) {
        archive_read_free(in);
        archive_write_free(out);
        return al_error_set(err, ENOMEM, "allocating the archive reader");
    }
    archive_read_support_format_tar(in);
    archive_read_support_format_gnutar(in);
    archive_read_support_filter_none(in);
    /* No ARCHIVE_EXTRACT_OWNER/PERM beyond our masked mode: files belong to
     * us; the SECURE flags are a second line behind our own checks. */
    archive_write_disk_set_options(out, ARCHIVE_EXTRACT_TIME | ARCHIVE_EXTRACT_PERM |
                                                ARCHIVE_EXTRACT_SECURE_SYMLINKS |
                                                ARCHIVE_EXTRACT_SECURE_NODOTDOT |
                                                ARCHIVE_EXTRACT_SECURE_NOABSOLUTEPATHS |
                                                ARCHIVE_EXTRACT_NO_HFS_COMPRESSION);

    if (archive_read_open_filename(in, tar_path, 64 * 1024) != ARCHIVE_OK) {
        r = al_error_set(err, EIO, "reading %s: %s", tar_path, archive_error_string(in));
        goto out;
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
        if (type == AE_IFREG) {
            int64_t size = archive_entry_size(e);
            if ((lim->max_files && s.files + 1 > lim->max_files) ||
                (lim->max_bytes && (uint64_t)size > lim->max_bytes - s.bytes)) {
                s.truncated = true;
                note(&s, "artifact limit reached at \"%.100s\"", path);
                break;
            }
        }
        _cleanup_free_ char *full = al_path_join(dest_dir, path);
        if (!full) {
            r = al_error_set(err, ENOMEM, "artifact path");
            goto out;
        }
        archive_entry_set_pathname(e, full);
        archive_entry_set_perm(e, type == AE_IFDIR ? 0755
                                  : (archive_entry_perm(e) & 0111) ? 0755
                                                                    : 0644);
        archive_entry_set_uid(e, 0);
        archive_entry_set_gid(e, 0);
        if (archive_write_header(out, e) != ARCHIVE_OK) {
            s.skipped++;
            note(&s, "skipped \"%.100s\": %s", path, archive_error_string(out));
            continue;
        }
        if (type == AE_IFREG) {
            uint64_t written = 0;
            ssize_t n;
            while ((n = archive_read_data(in, buf, sizeof(buf))) > 0) {
                if (archive_write_data(out, buf, (size_t)n) < 0) {
                    r = al_error_set(err, EIO, "writing %s: %s", full, archive_error_string(out));
                    goto out;
                }
                written += (uint64_t)n;
            }
            if (n < 0) {
                note(&s, "the artifact archive is damaged at \"%.100s\"", path);
                s.truncated = true;
                archive_write_finish_entry(out);
                break;
            }
            s.files++;
            s.bytes += written;
        }
        archive_write_finish_entry(out);
    }
    r = 0;
out:
    archive_read_free(in);
    archive_write_free(out);
    if (r == 0)
        *ret = s;
    return r;
}
