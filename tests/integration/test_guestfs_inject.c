/* The guestfs injection mode against real qcow2 disks and the real
 * libguestfs appliance (TCG here): several disks in one launch, the root
 * found by label or by inspection, the files checked with a fresh handle,
 * and clear errors for a missing disk and a disk without a filesystem. */
#include "test_util.h"

#include <guestfs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "runner/base/error.h"
#include "runner/base/util.h"
#include "provision/guestfs_inject.h"

#define DISK_SIZE  (64 * 1024 * 1024)
#define N_LABELLED 3

static char *tmpdir;
static char *labelled[N_LABELLED]; /* ext4 "agentlab-root" directly on the device */
static char *partitioned;          /* MBR, ext4 without the label holding a fake OS */
static char *blank;                /* qcow2 without any filesystem */
static bool force_tcg = true;
static uint64_t ms_three, ms_one;

static char *disk_path(const char *name)
{
    char *p = al_path_join(tmpdir, name);
    assert_non_null(p);
    return p;
}

static void check(guestfs_h *g, int r, const char *what)
{
    if (r < 0)
        fail_msg("test setup: %s: %s", what, guestfs_last_error(g));
}

/* A root filesystem inspection recognises as Linux: /etc/fstab naming it by
 * UUID, os-release, /bin and /usr/bin. */
static void make_fake_os(guestfs_h *g, const char *part)
{
    check(g, guestfs_mkfs(g, "ext4", part), "mkfs os");
    char *uuid = guestfs_vfs_uuid(g, part);
    assert_non_null(uuid);
    check(g, guestfs_mount(g, part, "/"), "mount os");
    const char *dirs[] = {"/etc", "/bin", "/sbin", "/usr/bin", "/var/lib"};
    for (size_t i = 0; i < ARRAY_SIZE(dirs); i++)
        check(g, guestfs_mkdir_p(g, dirs[i]), "mkdir");
    char fstab[256];
    int n = snprintf(fstab, sizeof(fstab), "UUID=%s / ext4 defaults 0 1\n", uuid);
    assert_true(n > 0 && (size_t)n < sizeof(fstab));
    check(g, guestfs_write(g, "/etc/fstab", fstab, (size_t)n), "fstab");
    const char osr[] = "ID=debian\nVERSION_ID=\"12\"\nNAME=\"Debian GNU/Linux\"\n";
    check(g, guestfs_write(g, "/etc/os-release", osr, sizeof(osr) - 1), "os-release");
    check(g, guestfs_write(g, "/etc/hostname", "fake\n", 5), "hostname");
    check(g, guestfs_umount_all(g), "umount");
    free(uuid);
}

static int setup(void **state)
{
    (void)state;
    if (getenv("AL_TEST_GUESTFS_KVM"))
        force_tcg = false;
    tmpdir = test_tmpdir("guestfs");
    assert_non_null(tmpdir);
    for (size_t i = 0; i < N_LABELLED; i++) {
        char name[32];
        snprintf(name, sizeof(name), "labelled%zu.qcow2", i);
        labelled[i] = disk_path(name);
    }
    partitioned = disk_path("partitioned.qcow2");
    blank = disk_path("blank.qcow2");

    uint64_t t0 = al_now_mono_ms();
    guestfs_h *g = guestfs_create();
    assert_non_null(g);
    check(g, guestfs_set_backend(g, "direct"), "backend");
    if (force_tcg) {
        char *settings[] = {(char *)"force_tcg", NULL};
        check(g, guestfs_set_backend_settings(g, settings), "force_tcg");
    }
    char *all[] = {labelled[0], labelled[1], labelled[2], partitioned, blank};
    for (size_t i = 0; i < ARRAY_SIZE(all); i++) {
        check(g, guestfs_disk_create(g, all[i], "qcow2", DISK_SIZE, -1), "disk_create");
        if (all[i] != blank)
            check(g, guestfs_add_drive_opts(g, all[i], GUESTFS_ADD_DRIVE_OPTS_FORMAT, "qcow2", -1),
                  "add_drive");
    }
    check(g, guestfs_launch(g), "launch");
    char **devs = guestfs_list_devices(g);
    assert_non_null(devs);
    for (size_t i = 0; i < N_LABELLED; i++) {
        check(g, guestfs_mkfs(g, "ext4", devs[i]), "mkfs");
        check(g, guestfs_set_label(g, devs[i], "agentlab-root"), "set_label");
    }
    check(g, guestfs_part_disk(g, devs[N_LABELLED], "mbr"), "part_disk");
    char part[64];
    snprintf(part, sizeof(part), "%s1", devs[N_LABELLED]);
    make_fake_os(g, part);
    for (char **d = devs; *d; d++)
        free(*d);
    free(devs);
    check(g, guestfs_shutdown(g), "shutdown");
    guestfs_close(g);
    printf("setup: 4 disks created and formatted with one appliance in %llu ms\n",
           (unsigned long long)(al_now_mono_ms() - t0));
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char *report = al_path_join(test_outdir(), "timings.txt");
    FILE *f = report ? fopen(report, "we") : NULL;
    if (f) {
        fprintf(f, "guestfs_inject_seed 1 disk: %llu ms\n3 disks: %llu ms\n",
                (unsigned long long)ms_one, (unsigned long long)ms_three);
        fclose(f);
    }
    free(report);
    for (size_t i = 0; i < N_LABELLED; i++)
        free(labelled[i]);
    free(partitioned);
    free(blank);
    test_tmpdir_remove(tmpdir);
    return 0;
}

static char *content_for(const char *kind, const char *disk, size_t pad)
{
    char *s = NULL;
    assert_true(asprintf(&s, "%s for %s\n%*s", kind, disk, (int)pad, "") > 0);
    return s;
}

static void test_inject_three_in_one_launch(void **state)
{
    (void)state;
    struct guestfs_inject_item items[N_LABELLED];
    char *meta[N_LABELLED], *user[N_LABELLED];
    for (size_t i = 0; i < N_LABELLED; i++) {
        meta[i] = content_for("instance-id: three", labelled[i], 0);
        /* long, so the shorter rewrite below shows truncation works */
        user[i] = content_for("#cloud-config\n# three", labelled[i], 4000);
        items[i] = (struct guestfs_inject_item){labelled[i], "qcow2", meta[i], user[i]};
    }
    struct al_error *err = NULL;
    uint64_t t0 = al_now_mono_ms();
    int r = guestfs_inject_seed(items, N_LABELLED, force_tcg, &err);
    ms_three = al_now_mono_ms() - t0;
    if (r < 0)
        fail_msg("inject: %s", al_error_message(err));
    printf("guestfs_inject_seed: 3 disks in one call: %llu ms\n", (unsigned long long)ms_three);
    for (size_t i = 0; i < N_LABELLED; i++) {
        free(meta[i]);
        free(user[i]);
    }
}

/* One disk (the first again, so its user-data is replaced by a shorter one)
 * and the inspected disk, each in its own call. */
static void test_inject_one_and_inspected(void **state)
{
    (void)state;
    char *meta = content_for("instance-id: one", labelled[0], 0);
    char *user = content_for("#cloud-config\n# one", labelled[0], 0);
    struct guestfs_inject_item one = {labelled[0], NULL, meta, user};
    struct al_error *err = NULL;
    uint64_t t0 = al_now_mono_ms();
    int r = guestfs_inject_seed(&one, 1, force_tcg, &err);
    ms_one = al_now_mono_ms() - t0;
    if (r < 0)
        fail_msg("inject: %s", al_error_message(err));
    printf("guestfs_inject_seed: 1 disk in one call: %llu ms\n", (unsigned long long)ms_one);
    free(meta);
    free(user);

    meta = content_for("instance-id: inspected", partitioned, 0);
    user = content_for("#cloud-config\n# inspected", partitioned, 0);
    struct guestfs_inject_item insp = {partitioned, "qcow2", meta, user};
    r = guestfs_inject_seed(&insp, 1, force_tcg, &err);
    if (r < 0)
        fail_msg("inject into the partitioned disk: %s", al_error_message(err));
    free(meta);
    free(user);
}

static void expect_file(guestfs_h *g, const char *path, const char *want, int mode)
{
    size_t len = 0;
    char *got = guestfs_read_file(g, path, &len);
    if (!got)
        fail_msg("%s: %s", path, guestfs_last_error(g));
    assert_int_equal(len, strlen(want));
    assert_memory_equal(got, want, len);
    free(got);
    struct guestfs_statns *st = guestfs_lstatns(g, path);
    assert_non_null(st);
    if ((st->st_mode & 07777) != mode || (st->st_mode & S_IFMT) != S_IFREG)
        fail_msg("%s: mode %o, expected %o", path, (unsigned)st->st_mode, (unsigned)mode);
    assert_int_equal(st->st_uid, 0);
    assert_int_equal(st->st_gid, 0);
    guestfs_free_statns(st);
}

static void expect_seed(guestfs_h *g, const char *mountable, const char *disk, const char *tag)
{
    if (guestfs_mount_ro(g, mountable, "/") < 0)
        fail_msg("mount %s: %s", mountable, guestfs_last_error(g));
    struct guestfs_statns *st = guestfs_lstatns(g, "/var/lib/cloud/seed/nocloud");
    assert_non_null(st);
    assert_true(S_ISDIR(st->st_mode));
    assert_int_equal(st->st_mode & 07777, 0755);
    guestfs_free_statns(st);
    char kind[64];
    snprintf(kind, sizeof(kind), "instance-id: %s", tag);
    char *meta = content_for(kind, disk, 0);
    snprintf(kind, sizeof(kind), "#cloud-config\n# %s", tag);
    char *user = content_for(kind, disk, streq(tag, "three") ? 4000 : 0);
    expect_file(g, "/var/lib/cloud/seed/nocloud/meta-data", meta, 0644);
    expect_file(g, "/var/lib/cloud/seed/nocloud/user-data", user, 0600);
    free(meta);
    free(user);
    assert_int_equal(guestfs_umount_all(g), 0);
}

/* A fresh, read-only handle sees what the inject calls wrote. */
static void test_verify_with_fresh_handle(void **state)
{
    (void)state;
    guestfs_h *g = guestfs_create();
    assert_non_null(g);
    check(g, guestfs_set_backend(g, "direct"), "backend");
    if (force_tcg) {
        char *settings[] = {(char *)"force_tcg", NULL};
        check(g, guestfs_set_backend_settings(g, settings), "force_tcg");
    }
    char *disks[] = {labelled[0], labelled[1], labelled[2], partitioned};
    for (size_t i = 0; i < ARRAY_SIZE(disks); i++)
        check(g,
              guestfs_add_drive_opts(g, disks[i], GUESTFS_ADD_DRIVE_OPTS_FORMAT, "qcow2",
                                     GUESTFS_ADD_DRIVE_OPTS_READONLY, 1, -1),
              "add_drive");
    check(g, guestfs_launch(g), "launch");
    char **devs = guestfs_list_devices(g);
    assert_non_null(devs);
    expect_seed(g, devs[0], labelled[0], "one"); /* rewritten by the 1-disk call */
    expect_seed(g, devs[1], labelled[1], "three");
    expect_seed(g, devs[2], labelled[2], "three");
    char part[64];
    snprintf(part, sizeof(part), "%s1", devs[3]);
    expect_seed(g, part, partitioned, "inspected");
    for (char **d = devs; *d; d++)
        free(*d);
    free(devs);
    check(g, guestfs_shutdown(g), "shutdown");
    guestfs_close(g);
    printf("guestfs_inject_seed: 1 disk %llu ms, 3 disks %llu ms (%.2fx for 3x the disks)\n",
           (unsigned long long)ms_one, (unsigned long long)ms_three,
           ms_one ? (double)ms_three / (double)ms_one : 0.0);
}

static void test_missing_disk_named(void **state)
{
    (void)state;
    char *missing = disk_path("does-not-exist.qcow2");
    struct guestfs_inject_item items[] = {
            {labelled[1], "qcow2", "m", "u"},
            {missing, "qcow2", "m", "u"},
    };
    struct al_error *err = NULL;
    uint64_t t0 = al_now_mono_ms();
    assert_int_equal(guestfs_inject_seed(items, 2, force_tcg, &err), -ENOENT);
    /* checked before the appliance starts */
    assert_true(al_now_mono_ms() - t0 < 1000);
    if (!strstr(al_error_message(err), missing) || !strstr(al_error_message(err), "No such file"))
        fail_msg("unclear error: %s", al_error_message(err));
    printf("missing disk: %s\n", al_error_message(err));
    al_error_free(err);
    free(missing);
}

static void test_disk_without_filesystem(void **state)
{
    (void)state;
    struct guestfs_inject_item item = {blank, "qcow2", "m", "u"};
    struct al_error *err = NULL;
    int r = guestfs_inject_seed(&item, 1, force_tcg, &err);
    assert_true(r < 0);
    if (!strstr(al_error_message(err), blank) || !strstr(al_error_message(err), "agentlab-root"))
        fail_msg("unclear error: %s", al_error_message(err));
    printf("disk without a filesystem: %s\n", al_error_message(err));
    al_error_free(err);
}

static void test_nothing_to_do(void **state)
{
    (void)state;
    assert_int_equal(guestfs_inject_seed(NULL, 0, force_tcg, NULL), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_nothing_to_do),
            cmocka_unit_test(test_missing_disk_named),
            cmocka_unit_test(test_inject_three_in_one_launch),
            cmocka_unit_test(test_inject_one_and_inspected),
            cmocka_unit_test(test_verify_with_fresh_handle),
            cmocka_unit_test(test_disk_without_filesystem),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
