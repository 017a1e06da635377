/* The NoCloud seed ISO: what cloud-init needs to find and read it (volume
 * id / blkid label "cidata", Rock Ridge names), atomic replacement, mode,
 * errors, and how long a write takes. */
#include "test_util.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runner/base/buf.h"
#include "runner/base/error.h"
#include "runner/base/util.h"
#include "provision/seed_iso.h"

extern char **environ;

#define ISO_SECTOR 2048

static char *tmpdir;

static int setup(void **state)
{
    (void)state;
    tmpdir = test_tmpdir("seed");
    return tmpdir ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    test_tmpdir_remove(tmpdir);
    tmpdir = NULL;
    return 0;
}

static const char meta[] = "instance-id: \"job-1\"\nlocal-hostname: \"al-job1\"\n";
static const char user[] = "#cloud-config\nhostname: \"al-job1\"\nruncmd:\n  - [\"/bin/true\"]\n";
static const char netcfg[] = "version: 2\nethernets: {}\n";

struct iso_file {
    char *name;
    char *data;
    size_t len;
};

/* Reads the image back with libarchive's ISO9660 reader. */
static size_t read_iso(const char *path, struct iso_file *files, size_t max)
{
    struct archive *a = archive_read_new();
    assert_non_null(a);
    assert_int_equal(archive_read_support_format_iso9660(a), ARCHIVE_OK);
    assert_int_equal(archive_read_open_filename(a, path, 10240), ARCHIVE_OK);
    struct archive_entry *e;
    size_t n = 0;
    int r;
    while ((r = archive_read_next_header(a, &e)) == ARCHIVE_OK) {
        if (archive_entry_filetype(e) != AE_IFREG)
            continue;
        assert_true(n < max);
        files[n].name = strdup(archive_entry_pathname(e));
        la_int64_t size = archive_entry_size(e);
        files[n].data = calloc(1, (size_t)size + 1);
        files[n].len = (size_t)size;
        assert_int_equal(archive_read_data(a, files[n].data, (size_t)size), size);
        n++;
    }
    assert_int_equal(r, ARCHIVE_EOF);
    archive_read_free(a);
    return n;
}

static void free_files(struct iso_file *files, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(files[i].name);
        free(files[i].data);
    }
}

static const struct iso_file *find(const struct iso_file *files, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (streq(files[i].name, name))
            return &files[i];
    return NULL;
}

static void read_at(const char *path, off_t off, void *buf, size_t len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, buf, len, off), (ssize_t)len);
    close(fd);
}

static size_t count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    size_t n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (!streq(de->d_name, ".") && !streq(de->d_name, ".."))
            n++;
    closedir(d);
    return n;
}

static void test_contents_read_back(void **state)
{
    (void)state;
    char *path = al_path_join(tmpdir, "seed.iso");
    struct al_error *err = NULL;
    assert_int_equal(seed_iso_write(path, 0640, meta, user, netcfg, &err), 0);
    assert_null(err);

    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0640);
    assert_int_equal(st.st_size % ISO_SECTOR, 0);
    assert_int_equal(count_entries(tmpdir), 1); /* no temp file left behind */

    struct iso_file files[8];
    size_t n = read_iso(path, files, ARRAY_SIZE(files));
    assert_int_equal(n, 3);
    const struct iso_file *f = find(files, n, "meta-data");
    assert_non_null(f);
    assert_int_equal(f->len, strlen(meta));
    assert_memory_equal(f->data, meta, f->len);
    f = find(files, n, "user-data");
    assert_non_null(f);
    assert_int_equal(f->len, strlen(user));
    assert_memory_equal(f->data, user, f->len);
    f = find(files, n, "network-config");
    assert_non_null(f);
    assert_string_equal(f->data, netcfg);
    free_files(files, n);

    /* without network-config there are just the two */
    assert_int_equal(seed_iso_write(path, 0644, meta, user, NULL, &err), 0);
    n = read_iso(path, files, ARRAY_SIZE(files));
    assert_int_equal(n, 2);
    assert_null(find(files, n, "network-config"));
    free_files(files, n);
    free(path);
}

/* Volume id of a descriptor: 32 bytes at offset 40, space padded; in a Joliet
 * descriptor UCS-2 big endian (ASCII only here). */
static void volume_id(const uint8_t *vd, bool ucs2, char *out, size_t size)
{
    size_t n = 0;
    for (size_t i = 0; i < 32 && n + 1 < size; i += ucs2 ? 2 : 1) {
        uint8_t c = ucs2 ? vd[40 + i + 1] : vd[40 + i];
        if (ucs2)
            assert_int_equal(vd[40 + i], 0);
        out[n++] = (char)c;
    }
    while (n > 0 && out[n - 1] == ' ')
        n--;
    out[n] = '\0';
}

/* The primary volume descriptor (sector 16) holds the volume id in ISO9660
 * d-characters, so libarchive writes "CIDATA"; the Joliet descriptor keeps
 * "cidata", which is what blkid (and so udev and cloud-init) reports.
 * cloud-init 22.4 accepts the label in either case. */
static void test_volume_descriptors(void **state)
{
    (void)state;
    char *path = al_path_join(tmpdir, "vd.iso");
    assert_int_equal(seed_iso_write(path, 0644, meta, user, NULL, NULL), 0);

    uint8_t pvd[ISO_SECTOR];
    read_at(path, 16 * ISO_SECTOR, pvd, sizeof(pvd));
    assert_int_equal(pvd[0], 1);
    assert_memory_equal(pvd + 1, "CD001", 5);
    char volid[33];
    volume_id(pvd, false, volid, sizeof(volid));
    assert_string_equal(volid, "CIDATA");

    bool joliet = false;
    for (int sector = 17; sector < 32; sector++) {
        uint8_t vd[ISO_SECTOR];
        read_at(path, (off_t)sector * ISO_SECTOR, vd, sizeof(vd));
        assert_memory_equal(vd + 1, "CD001", 5);
        if (vd[0] == 255)
            break;
        /* UCS-2 level escape sequences "%/@", "%/C", "%/E" mark Joliet */
        if (vd[0] == 2 && vd[88] == '%' && vd[89] == '/') {
            joliet = true;
            volume_id(vd, true, volid, sizeof(volid));
            assert_string_equal(volid, "cidata");
        }
    }
    assert_true(joliet);
    free(path);
}

static int run_capture(char *const argv[], char **ret_out)
{
    int fds[2];
    assert_int_equal(pipe2(fds, O_CLOEXEC), 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
    pid_t pid;
    int r = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(fds[1]);
    if (r != 0) {
        close(fds[0]);
        return -1;
    }
    struct al_buf out = AL_BUF_INIT;
    char chunk[1024];
    ssize_t k;
    while ((k = read(fds[0], chunk, sizeof(chunk))) > 0)
        assert_int_equal(al_buf_append(&out, chunk, (size_t)k), 0);
    close(fds[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    *ret_out = out.data ? al_buf_steal(&out) : strdup("");
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* cloud-init's NoCloud looks for a device with TYPE iso9660 (or vfat) and
 * LABEL cidata, both as blkid reports them. */
static void test_blkid_label(void **state)
{
    (void)state;
    char *path = al_path_join(tmpdir, "blkid.iso");
    assert_int_equal(seed_iso_write(path, 0644, meta, user, NULL, NULL), 0);
    char *argv[] = {(char *)"blkid", (char *)"-p", (char *)"-o", (char *)"export", path, NULL};
    char *out = NULL;
    int st = run_capture(argv, &out);
    if (st != 0)
        fail_msg("blkid failed (%d): %s", st, out);
    assert_non_null(strstr(out, "\nLABEL=cidata\n"));
    assert_non_null(strstr(out, "\nTYPE=iso9660\n"));
    free(out);
    free(path);
}

/* Replacing a seed is atomic: a reader that opened the old image keeps
 * reading the old image, never a mix. */
static void test_atomic_replace(void **state)
{
    (void)state;
    char *path = al_path_join(tmpdir, "replace.iso");
    assert_int_equal(seed_iso_write(path, 0644, meta, user, NULL, NULL), 0);
    int old = open(path, O_RDONLY | O_CLOEXEC);
    assert_true(old >= 0);
    struct stat before, after;
    assert_int_equal(fstat(old, &before), 0);

    const char *user2 = "#cloud-config\nhostname: \"al-two\"\n";
    assert_int_equal(seed_iso_write(path, 0644, meta, user2, NULL, NULL), 0);
    assert_int_equal(stat(path, &after), 0);
    assert_int_not_equal(before.st_ino, after.st_ino);
    struct stat still;
    assert_int_equal(fstat(old, &still), 0);
    assert_int_equal(still.st_size, before.st_size);
    close(old);

    struct iso_file files[4];
    size_t n = read_iso(path, files, ARRAY_SIZE(files));
    assert_string_equal(find(files, n, "user-data")->data, user2);
    free_files(files, n);
    free(path);
}

static void test_errors(void **state)
{
    (void)state;
    struct al_error *err = NULL;
    char *path = al_path_join(tmpdir, "no/such/dir/seed.iso");
    assert_int_equal(seed_iso_write(path, 0644, meta, user, NULL, &err), -ENOENT);
    assert_non_null(strstr(al_error_message(err), "seed.iso"));
    err = al_error_free(err);

    assert_int_equal(seed_iso_write(tmpdir, 0644, NULL, user, NULL, &err), -EINVAL);
    assert_non_null(strstr(al_error_message(err), "meta-data"));
    err = al_error_free(err);

    /* the target is a directory: rename fails, and the temp file is gone */
    char *sub = al_path_join(tmpdir, "isdir");
    assert_int_equal(mkdir(sub, 0755), 0);
    char *inner = al_path_join(sub, "x");
    assert_int_equal(mkdir(inner, 0755), 0);
    size_t before = count_entries(tmpdir);
    assert_true(seed_iso_write(sub, 0644, meta, user, NULL, &err) < 0);
    assert_non_null(strstr(al_error_message(err), "renaming"));
    err = al_error_free(err);
    assert_int_equal(count_entries(tmpdir), before);
    free(inner);
    free(sub);
    free(path);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The seed is on the provisioning path of every job: it must take
 * milliseconds. A user-data of realistic size (a job with a 16 KiB blob). */
static void test_write_time(void **state)
{
    (void)state;
    char *path = al_path_join(tmpdir, "timed.iso");
    size_t blob = 16 * 1024;
    char *big = malloc(blob + 1);
    assert_non_null(big);
    for (size_t i = 0; i < blob; i++)
        big[i] = (char)('A' + i % 26);
    big[blob] = '\0';

    enum { RUNS = 50 };
    uint64_t us[RUNS];
    for (int i = 0; i < RUNS; i++) {
        uint64_t t0 = al_now_mono_us();
        assert_int_equal(seed_iso_write(path, 0644, meta, big, NULL, NULL), 0);
        us[i] = al_now_mono_us() - t0;
    }
    qsort(us, RUNS, sizeof(us[0]), cmp_u64);
    uint64_t median = (us[RUNS / 2 - 1] + us[RUNS / 2]) / 2;
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    printf("seed_iso_write: median %.3f ms, min %.3f ms, max %.3f ms over %d runs "
           "(image %lld bytes)\n",
           median / 1000.0, us[0] / 1000.0, us[RUNS - 1] / 1000.0, RUNS, (long long)st.st_size);
    /* generous: a loaded 2-core CI box, but not seconds */
    if (!getenv("AL_UNDER_VALGRIND"))
        assert_true(median < 100 * 1000);
    free(big);
    free(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_contents_read_back),
            cmocka_unit_test(test_volume_descriptors),
            cmocka_unit_test(test_blkid_label),
            cmocka_unit_test(test_atomic_replace),
            cmocka_unit_test(test_errors),
            cmocka_unit_test(test_write_time),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
