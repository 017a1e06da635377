/* Artifact tarballs come from untrusted guests: only regular files and
 * directories inside the destination may be written. */
#include "test_util.h"

#include <archive.h>
#include <archive_entry.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ftw.h>
#include <inttypes.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "runner/base/sha256.h"
#include "runner/base/util.h"
#include "provision/artifacts.h"
#include "provision/workdir.h"
#include "runner/sources/gitlab_artifacts.h"
#include "runner/sources/gitlab_job.h"

static char *tmp;

static int setup(void **state)
{
    (void)state;
    tmp = test_tmpdir("artifacts");
    return tmp ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    test_tmpdir_remove(tmp);
    return 0;
}

static void add(struct archive *a, const char *path, mode_t type, mode_t perm, const char *data,
                const char *link)
{
    struct archive_entry *e = archive_entry_new();
    archive_entry_set_pathname(e, path);
    archive_entry_set_filetype(e, type);
    archive_entry_set_perm(e, perm);
    archive_entry_set_uid(e, 0);
    archive_entry_set_gid(e, 0);
    if (type == AE_IFLNK)
        archive_entry_set_symlink(e, link);
    if (type == AE_IFCHR)
        archive_entry_set_rdev(e, makedev(1, 3));
    if (link && type == AE_IFREG)
        archive_entry_set_hardlink(e, link);
    size_t len = data ? strlen(data) : 0;
    archive_entry_set_size(e, (la_int64_t)len);
    assert_int_equal(archive_write_header(a, e), ARCHIVE_OK);
    if (len)
        assert_int_equal(archive_write_data(a, data, len), (la_ssize_t)len);
    archive_entry_free(e);
}

static char *hostile_tar(void)
{
    char *path = al_path_join(tmp, "hostile.tar");
    struct archive *a = archive_write_new();
    archive_write_set_format_pax_restricted(a);
    assert_int_equal(archive_write_open_filename(a, path), ARCHIVE_OK);
    add(a, "good.txt", AE_IFREG, 0644, "hello artifact\n", NULL);
    add(a, "dir", AE_IFDIR, 0777, NULL, NULL);
    add(a, "dir/run.sh", AE_IFREG, 04755, "#!/bin/sh\n", NULL);
    add(a, "../escape.txt", AE_IFREG, 0644, "escaped\n", NULL);
    add(a, "dir/../../escape2.txt", AE_IFREG, 0644, "escaped\n", NULL);
    add(a, "/tmp/agentlab-abs-escape.txt", AE_IFREG, 0644, "abs\n", NULL);
    add(a, "link", AE_IFLNK, 0777, NULL, "/");
    add(a, "link/etc/through.txt", AE_IFREG, 0644, "through\n", NULL);
    add(a, "null", AE_IFCHR, 0666, NULL, NULL);
    add(a, "hard", AE_IFREG, 0644, NULL, "/etc/passwd");
    add(a, "last.txt", AE_IFREG, 0600, "end\n", NULL);
    archive_write_close(a);
    archive_write_free(a);
    return path;
}

static void test_hostile_archive(void **state)
{
    (void)state;
    char *tar = hostile_tar();
    char *dest = al_path_join(tmp, "out/nested");
    struct artifact_limits lim = {0};
    struct artifact_summary s;
    struct al_error *err = NULL;
    unlink("/tmp/agentlab-abs-escape.txt");
    if (artifacts_extract(tar, dest, &lim, &s, &err) < 0)
        fail_msg("extract: %s", al_error_message(err));

    struct stat st;
    char *p = al_path_join(dest, "good.txt");
    char *data = NULL;
    assert_int_equal(al_read_file(p, 100, &data, NULL, &err), 0);
    assert_string_equal(data, "hello artifact\n");
    free(data);
    free(p);
    /* setuid dropped, exec kept */
    p = al_path_join(dest, "dir/run.sh");
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0755);
    free(p);
    /* nothing outside the destination, no links, no devices */
    p = al_path_join(tmp, "out/escape.txt");
    assert_int_equal(lstat(p, &st), -1);
    free(p);
    p = al_path_join(tmp, "escape2.txt");
    assert_int_equal(lstat(p, &st), -1);
    free(p);
    assert_int_equal(lstat("/tmp/agentlab-abs-escape.txt", &st), -1);
    assert_int_equal(lstat("/etc/through.txt", &st), -1);
    /* the symlink was skipped, so the entry meant to go through it landed in
     * a real directory inside the destination */
    p = al_path_join(dest, "link");
    assert_int_equal(lstat(p, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    free(p);
    const char *absent[] = {"null", "hard"};
    for (size_t i = 0; i < ARRAY_SIZE(absent); i++) {
        p = al_path_join(dest, absent[i]);
        if (lstat(p, &st) == 0)
            fail_msg("%s was extracted", absent[i]);
        free(p);
    }
    p = al_path_join(dest, "last.txt");
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0644);
    free(p);

    assert_int_equal(s.files, 4);
    assert_int_equal(s.skipped, 6);
    assert_false(s.truncated);
    assert_non_null(strstr(s.note, "unsafe path"));
    free(dest);
    free(tar);
}

/* The index lists what was written: one spelling per path, the last write
 * of a path the archive holds twice, nothing that was skipped. */
static void test_index(void **state)
{
    (void)state;
    char *tar = al_path_join(tmp, "index.tar");
    struct archive *a = archive_write_new();
    archive_write_set_format_pax_restricted(a);
    assert_int_equal(archive_write_open_filename(a, tar), ARCHIVE_OK);
    add(a, "./b.txt", AE_IFREG, 0644, "first\n", NULL);
    add(a, "d", AE_IFDIR, 0755, NULL, NULL);
    add(a, "d//./c.bin", AE_IFREG, 0644, "abc", NULL);
    add(a, "../x", AE_IFREG, 0644, "escaped\n", NULL);
    add(a, "e", AE_IFREG, 0644, "", NULL);
    add(a, "b.txt", AE_IFREG, 0644, "second write\n", NULL);
    archive_write_close(a);
    archive_write_free(a);

    char *dest = al_path_join(tmp, "index-out");
    struct artifact_limits lim = {0};
    struct artifact_summary s;
    struct artifact_index x = {0};
    struct al_error *err = NULL;
    if (artifacts_extract_indexed(tar, dest, &lim, &s, &x, &err) < 0)
        fail_msg("extract: %s", al_error_message(err));
    assert_int_equal(s.files, 4);
    assert_int_equal(x.n, 3);
    assert_string_equal(x.v[0].path, "b.txt");
    assert_int_equal(x.v[0].size, 13);
    char hex[AL_SHA256_HEX_SIZE];
    al_sha256_hex("second write\n", 13, hex);
    assert_string_equal(x.v[0].sha256, hex);
    assert_string_equal(x.v[1].path, "d/c.bin");
    assert_int_equal(x.v[1].size, 3);
    /* SHA-256("abc"), FIPS 180-2 */
    assert_string_equal(x.v[1].sha256,
                        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_string_equal(x.v[2].path, "e");
    assert_int_equal(x.v[2].size, 0);
    assert_string_equal(x.v[2].sha256,
                        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    /* what the index says is what is on disk */
    for (size_t i = 0; i < x.n; i++) {
        _cleanup_free_ char *p = al_path_join(dest, x.v[i].path);
        uint64_t size = 0;
        assert_int_equal(al_sha256_file(p, hex, &size, &err), 0);
        assert_string_equal(hex, x.v[i].sha256);
        assert_int_equal(size, x.v[i].size);
    }
    artifact_index_clear(&x);
    assert_null(x.v);
    assert_int_equal(x.n, 0);

    /* a failed extraction leaves an empty index */
    assert_true(artifacts_extract_indexed("/nonexistent.tar", dest, &lim, &s, &x, &err) < 0);
    err = al_error_free(err);
    assert_int_equal(x.n, 0);
    free(dest);
    free(tar);
}

static void test_limits(void **state)
{
    (void)state;
    char *tar = hostile_tar();
    char *dest = al_path_join(tmp, "limited");
    struct artifact_limits lim = {.max_files = 1};
    struct artifact_summary s;
    struct al_error *err = NULL;
    assert_int_equal(artifacts_extract(tar, dest, &lim, &s, &err), 0);
    assert_int_equal(s.files, 1);
    assert_true(s.truncated);
    assert_non_null(strstr(s.note, "limit"));
    free(dest);
    dest = al_path_join(tmp, "limited-bytes");
    lim = (struct artifact_limits){.max_bytes = 10};
    assert_int_equal(artifacts_extract(tar, dest, &lim, &s, &err), 0);
    assert_int_equal(s.files, 0);
    assert_true(s.truncated);
    free(dest);
    free(tar);
}

static unsigned n_inodes;
static int count_inode(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)path;
    (void)st;
    (void)type;
    n_inodes += ftw->level > 0;
    return 0;
}

/* Directories made on the way to a deep path count against max_files: one
 * entry must not create more than the limit. */
static void test_limits_count_every_directory(void **state)
{
    (void)state;
    char *tar = al_path_join(tmp, "deep.tar");
    struct archive *a = archive_write_new();
    archive_write_set_format_pax_restricted(a);
    assert_int_equal(archive_write_open_filename(a, tar), ARCHIVE_OK);
    add(a, "a/b/c/d/e/f/g/h/i/j/file.txt", AE_IFREG, 0644, "deep\n", NULL);
    add(a, "k/l/m/n/o/p/q/r/s/t", AE_IFDIR, 0755, NULL, NULL);
    archive_write_close(a);
    archive_write_free(a);

    static const struct {
        uint64_t max;
        uint64_t files;
    } cases[] = {{5, 0}, {11, 1}, {15, 1}, {0, 1}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char name[32];
        snprintf(name, sizeof(name), "deep-%zu", i);
        char *dest = al_path_join(tmp, name);
        struct artifact_limits lim = {.max_files = cases[i].max};
        struct artifact_summary s;
        struct al_error *err = NULL;
        assert_int_equal(artifacts_extract(tar, dest, &lim, &s, &err), 0);
        n_inodes = 0;
        assert_int_equal(nftw(dest, count_inode, 16, FTW_PHYS), 0);
        if (cases[i].max) {
            if (n_inodes > cases[i].max)
                fail_msg("max_files %" PRIu64 ": %u files and directories created", cases[i].max,
                         n_inodes);
            assert_true(s.over_files);
        } else {
            assert_int_equal(n_inodes, 21);
            assert_false(s.truncated);
        }
        assert_int_equal(s.files, cases[i].files);
        assert_int_equal(s.files + s.dirs, n_inodes);
        free(dest);
    }
    free(tar);
}

static void test_damaged_and_missing(void **state)
{
    (void)state;
    char *tar = hostile_tar();
    char *cut = al_path_join(tmp, "cut.tar");
    char *data = NULL;
    size_t len = 0;
    struct al_error *err = NULL;
    assert_int_equal(al_read_file(tar, 1 << 20, &data, &len, &err), 0);
    assert_int_equal(al_write_file_atomic(cut, data, 700, 0600, &err), 0);
    free(data);
    char *dest = al_path_join(tmp, "cut-out");
    struct artifact_limits lim = {0};
    struct artifact_summary s;
    assert_int_equal(artifacts_extract(cut, dest, &lim, &s, &err), 0);
    assert_true(s.truncated);
    assert_non_null(strstr(s.note, "damaged"));
    assert_true(artifacts_extract("/nonexistent.tar", dest, &lim, &s, &err) < 0);
    assert_non_null(strstr(al_error_message(err), "/nonexistent.tar"));
    al_error_free(err);
    free(dest);
    free(cut);
    free(tar);
}

static void test_workdir_roundtrip(void **state)
{
    (void)state;
    char *src = al_path_join(tmp, "src");
    struct al_error *err = NULL;
    char *sub = al_path_join(src, "a/b");
    assert_int_equal(al_mkdir_p(sub, 0755, &err), 0);
    char *f1 = al_path_join(src, "top.txt");
    char *f2 = al_path_join(sub, "deep.bin");
    assert_int_equal(al_write_file_atomic(f1, "top\n", 4, 0644, &err), 0);
    char bin[3000];
    for (size_t i = 0; i < sizeof(bin); i++)
        bin[i] = (char)(i * 7);
    assert_int_equal(al_write_file_atomic(f2, bin, sizeof(bin), 0755, &err), 0);
    char *lnk = al_path_join(src, "outside");
    assert_int_equal(symlink("/etc", lnk), 0);

    char *tar = al_path_join(tmp, "wd.tar");
    uint64_t bytes = 0;
    assert_int_equal(workdir_pack(src, tar, 0, &bytes, &err), 0);
    assert_true(bytes > sizeof(bin));

    /* entries are relative, the symlink is stored as a symlink (not followed) */
    struct archive *a = archive_read_new();
    archive_read_support_format_all(a);
    assert_int_equal(archive_read_open_filename(a, tar, 10240), ARCHIVE_OK);
    struct archive_entry *e;
    bool saw_link = false, saw_deep = false;
    int n = 0;
    while (archive_read_next_header(a, &e) == ARCHIVE_OK) {
        const char *p = archive_entry_pathname(e);
        assert_true(p[0] != '/');
        assert_null(strstr(p, tmp));
        if (streq(p, "outside")) {
            saw_link = archive_entry_filetype(e) == AE_IFLNK;
            assert_string_equal(archive_entry_symlink(e), "/etc");
        }
        if (streq(p, "a/b/deep.bin"))
            saw_deep = archive_entry_size(e) == (la_int64_t)sizeof(bin);
        n++;
    }
    archive_read_free(a);
    assert_true(saw_link);
    assert_true(saw_deep);
    assert_int_equal(n, 5); /* top.txt a a/b a/b/deep.bin outside */

    /* too big, not a directory, missing */
    assert_int_equal(workdir_pack(src, tar, 100, NULL, &err), -EFBIG);
    err = al_error_free(err);
    assert_int_equal(workdir_pack(f1, tar, 0, NULL, &err), -ENOTDIR);
    err = al_error_free(err);
    assert_int_equal(workdir_pack("/nonexistent-dir", tar, 0, NULL, &err), -ENOENT);
    err = al_error_free(err);
    free(tar);
    free(lnk);
    free(f1);
    free(f2);
    free(sub);
    free(src);
}

/* The GitLab artifacts zip walks the guest's files with the same walk as
 * workdir_pack(): only the regular files the artifact wants, relative. */
static void test_gitlab_zip(void **state)
{
    (void)state;
    struct al_error *err = NULL;
    char *src = al_path_join(tmp, "zipsrc");
    char *sub = al_path_join(src, "keep/sub");
    assert_int_equal(al_mkdir_p(sub, 0755, &err), 0);
    char *f1 = al_path_join(src, "keep/a.txt");
    char *f2 = al_path_join(sub, "b.txt");
    char *f3 = al_path_join(src, "skip.txt");
    char *lnk = al_path_join(src, "keep/passwd");
    assert_int_equal(al_write_file_atomic(f1, "aaa\n", 4, 0644, &err), 0);
    assert_int_equal(al_write_file_atomic(f2, "bbbbbb\n", 7, 0755, &err), 0);
    assert_int_equal(al_write_file_atomic(f3, "no\n", 3, 0644, &err), 0);
    assert_int_equal(symlink("/etc/passwd", lnk), 0);

    char *paths[] = {"keep", NULL};
    char *none[] = {NULL};
    struct gitlab_artifact a = {.paths = paths, .n_paths = 1, .exclude = none};
    char *zip = al_path_join(tmp, "out.zip");
    struct gitlab_zip_result res = {0};
    assert_int_equal(gitlab_artifacts_zip(src, &a, zip, 0, &res, &err), 0);
    assert_int_equal(res.files, 2);
    struct stat st;
    assert_int_equal(stat(zip, &st), 0);
    assert_int_equal(res.bytes, (uint64_t)st.st_size);

    struct archive *ar = archive_read_new();
    archive_read_support_format_zip(ar);
    assert_int_equal(archive_read_open_filename(ar, zip, 10240), ARCHIVE_OK);
    struct archive_entry *e;
    bool saw_a = false, saw_b = false;
    int n = 0;
    while (archive_read_next_header(ar, &e) == ARCHIVE_OK) {
        const char *p = archive_entry_pathname(e);
        if (streq(p, "keep/a.txt"))
            saw_a = archive_entry_size(e) == 4;
        if (streq(p, "keep/sub/b.txt"))
            saw_b = (archive_entry_perm(e) & 0111) != 0;
        n++;
    }
    archive_read_free(ar);
    assert_true(saw_a);
    assert_true(saw_b);
    assert_int_equal(n, 2); /* no symlink, nothing outside "keep" */

    /* too big: an error and no zip left behind */
    assert_int_equal(gitlab_artifacts_zip(src, &a, zip, 64, &res, &err), -EFBIG);
    err = al_error_free(err);
    assert_int_equal(access(zip, F_OK), -1);
    /* the guest handed back nothing */
    char *missing = al_path_join(tmp, "no-such-dir");
    assert_int_equal(gitlab_artifacts_zip(missing, &a, zip, 0, &res, &err), 0);
    assert_int_equal(res.files, 0);
    assert_int_equal(access(zip, F_OK), -1);
    free(missing);
    free(zip);
    free(lnk);
    free(f3);
    free(f2);
    free(f1);
    free(sub);
    free(src);
}

static char *slurp(const char *cmd, size_t *ret_len)
{
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char *buf = calloc(1, 65536);
    size_t n = fread(buf, 1, 65535, p);
    assert_int_equal(pclose(p), 0);
    *ret_len = n;
    return buf;
}

/* Report artifacts as gitlab-runner writes them: gzip is one member a
 * file (in walk order), raw the one file as it is; names from `name`. */
static void test_gitlab_report_formats(void **state)
{
    (void)state;
    struct al_error *err = NULL;
    char *src = al_path_join(tmp, "reportsrc");
    char *sub = al_path_join(src, "reports");
    assert_int_equal(al_mkdir_p(sub, 0755, &err), 0);
    char *f1 = al_path_join(sub, "a.xml");
    char *f2 = al_path_join(sub, "b.xml");
    char *f3 = al_path_join(src, "other.txt");
    assert_int_equal(al_write_file_atomic(f1, "<testsuite name=\"a\"/>\n", 22, 0644, &err), 0);
    assert_int_equal(al_write_file_atomic(f2, "<testsuite name=\"b\"/>\n", 22, 0644, &err), 0);
    assert_int_equal(al_write_file_atomic(f3, "no\n", 3, 0644, &err), 0);

    char *paths[] = {"reports/*.xml", NULL};
    char *none[] = {NULL};
    struct gitlab_artifact a = {.name = "junit",
                                .paths = paths,
                                .n_paths = 1,
                                .exclude = none,
                                .type = "junit",
                                .format = "gzip"};
    char *gz = al_path_join(tmp, "junit.gz");
    struct gitlab_zip_result res = {0};
    assert_int_equal(gitlab_artifacts_pack(src, &a, gz, 0, &res, &err), 0);
    assert_int_equal(res.files, 2);
    size_t len = 0;
    char *cmd = NULL;
    assert_true(asprintf(&cmd, "cat '%s'", gz) > 0);
    char *raw = slurp(cmd, &len);
    free(cmd);
    assert_int_equal(res.bytes, len);
    int members = 0;
    for (size_t i = 0; i + 2 < len; i++)
        members += (unsigned char)raw[i] == 0x1f && (unsigned char)raw[i + 1] == 0x8b &&
                   raw[i + 2] == 8 && (i == 0 || members > 0);
    assert_true(members >= 2); /* a member a file, not one stream */
    free(raw);
    assert_true(asprintf(&cmd, "gzip -dc '%s'", gz) > 0);
    char *plain = slurp(cmd, &len);
    free(cmd);
    assert_int_equal(len, 44);
    assert_true(strstr(plain, "name=\"a\"") && strstr(plain, "name=\"b\""));
    free(plain);
    char *name = gitlab_artifact_file_name(&a);
    assert_string_equal(name, "junit.gz");
    free(name);

    /* raw: the one file; two matching is an error and leaves nothing */
    a.format = "raw";
    a.name = "dot/env\"";
    char *one[] = {"reports/a.xml", NULL};
    a.paths = one;
    assert_int_equal(gitlab_artifacts_pack(src, &a, gz, 0, &res, &err), 0);
    assert_int_equal(res.files, 1);
    assert_int_equal(res.bytes, 22);
    /* the last component of the name, as gitlab-runner's filepath.Base */
    name = gitlab_artifact_file_name(&a);
    assert_string_equal(name, "env_");
    free(name);
    a.paths = paths;
    assert_int_equal(gitlab_artifacts_pack(src, &a, gz, 0, &res, &err), -EINVAL);
    err = al_error_free(err);
    assert_int_equal(access(gz, F_OK), -1);
    /* zip keeps its archive name; an unknown format is refused */
    a.format = "zip";
    a.name = NULL;
    name = gitlab_artifact_file_name(&a);
    assert_string_equal(name, "artifacts.zip");
    free(name);
    static const struct {
        const char *name, *want;
    } names[] = {{"", "artifacts.zip"},         {"build-1.2", "build-1.2.zip"},
                 {"out/dist/", "dist.zip"},     {"/", "default.zip"},
                 {".", "default.zip"},          {"a\\b", "a_b.zip"},
                 {"junit.xml", "junit.xml.zip"}};
    for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
        a.name = (char *)names[i].name;
        name = gitlab_artifact_file_name(&a);
        assert_string_equal(name, names[i].want);
        free(name);
    }
    a.name = NULL;
    a.format = "tar";
    assert_int_equal(gitlab_artifacts_pack(src, &a, gz, 0, &res, &err), -ENOTSUP);
    err = al_error_free(err);
    free(gz);
    free(f3);
    free(f2);
    free(f1);
    free(sub);
    free(src);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_hostile_archive),
            cmocka_unit_test(test_index),
            cmocka_unit_test(test_limits),
            cmocka_unit_test(test_limits_count_every_directory),
            cmocka_unit_test(test_damaged_and_missing),
            cmocka_unit_test(test_workdir_roundtrip),
            cmocka_unit_test(test_gitlab_zip),
            cmocka_unit_test(test_gitlab_report_formats),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
