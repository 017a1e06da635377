/* Snapshot garbage collection on disk: only our layout's names are listed,
 * the verdicts follow the rule (stale, numbered >= max_vms, no manifest),
 * and a removal takes the slot's files, counts the bytes it freed, and
 * leaves the other slots and unknown files alone. */
#include "test_util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "provision/snapshot_gc.h"
#include "provision/snapshot_manifest.h"
#include "runner/base/macro.h"

static void fill(struct snapshot_manifest *m, int cpus, uint64_t mib)
{
    *m = (struct snapshot_manifest){
            .image = strdup("micro"),
            .image_id = strdup("sha256:ab created:2026 disk:1.2:3"),
            .qemu_version = 7002000,
            .libvirt_version = 9000000,
            .machine = strdup("pc-i440fx-7.2"),
            .accel = strdup("tcg"),
            .cpu_model = strdup("EPYC"),
            .helper = strdup("0.1.0"),
            .cpus = cpus,
            .memory = mib << 20,
            .domain = strdup("agentlab-snap-0123456789-0"),
            .uuid = strdup("0ba44ed4-9cf1-4271-af97-644c291203e5"),
            .disk_path = strdup("/nonexistent/d.qcow2"),
            .channel_path = strdup("/nonexistent/job.sock"),
            .console_log = strdup("/nonexistent/console.log"),
            .seed_path = strdup(""),
    };
}

static void mkdirs(const char *root, const char *rel)
{
    char cmd[2048];
    snprintf(cmd, sizeof(cmd), "mkdir -p '%s/%s'", root, rel);
    assert_int_equal(system(cmd), 0);
}

static void put(const char *root, const char *rel, size_t bytes)
{
    char p[1024];
    snprintf(p, sizeof(p), "%s/%s", root, rel);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    for (size_t i = 0; i < bytes; i++)
        fputc('x', f);
    fclose(f);
}

static void put_manifest(const char *root, const char *rel, const struct snapshot_manifest *m)
{
    char *json = NULL;
    assert_int_equal(snapshot_manifest_format(m, &json), 0);
    char p[1024];
    snprintf(p, sizeof(p), "%s/%s", root, rel);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs(json, f);
    fclose(f);
    free(json);
}

static bool exists(const char *root, const char *rel)
{
    char p[1024];
    struct stat st;
    snprintf(p, sizeof(p), "%s/%s", root, rel);
    return lstat(p, &st) == 0;
}

static uint64_t blocks(const char *root, const char *rel)
{
    char p[1024];
    struct stat st;
    snprintf(p, sizeof(p), "%s/%s", root, rel);
    assert_int_equal(lstat(p, &st), 0);
    return (uint64_t)st.st_blocks * 512u;
}

static void test_names(void **state)
{
    (void)state;
    int cpus = 0, k = 0;
    uint64_t mem = 0;
    assert_true(snapshot_gc_parse_size("2c-1024m", &cpus, &mem));
    assert_int_equal(cpus, 2);
    assert_int_equal(mem, 1024ull << 20);
    const char *bad_sizes[] = {"02c-1024m", "2c-01024m", "2c-1024", "2c-1024mx", "c-1024m",
                               "0c-1024m",  "2c-0m",     "-2c-1m",  "2c1024m",   "99999c-1m"};
    for (size_t i = 0; i < ARRAY_SIZE(bad_sizes); i++)
        assert_false(snapshot_gc_parse_size(bad_sizes[i], &cpus, &mem));
    assert_true(snapshot_gc_parse_slot("slot-0", &k));
    assert_int_equal(k, 0);
    assert_true(snapshot_gc_parse_slot("slot-63", &k));
    assert_int_equal(k, 63);
    const char *bad_slots[] = {"slot-",  "slot-01", "slot--1", "slot-10000", "slot-1x",
                               "Slot-1", "slot-+1", "slot1",   "state",      "slot-1 "};
    for (size_t i = 0; i < ARRAY_SIZE(bad_slots); i++)
        assert_false(snapshot_gc_parse_slot(bad_slots[i], &k));
}

static void test_judge(void **state)
{
    (void)state;
    struct snapshot_manifest want, have;
    fill(&want, 1, 1024);
    fill(&have, 1, 1024);
    char why[200];
    assert_int_equal(snapshot_gc_judge(0, 3, &have, &want, why, sizeof(why)), SNAPSHOT_GC_KEEP);
    assert_int_equal(snapshot_gc_judge(3, 3, &have, &want, why, sizeof(why)),
                     SNAPSHOT_GC_BEYOND_MAX);
    assert_int_equal(snapshot_gc_judge(1, 3, NULL, &want, why, sizeof(why)),
                     SNAPSHOT_GC_NO_MANIFEST);
    have.qemu_version++;
    assert_int_equal(snapshot_gc_judge(1, 3, &have, &want, why, sizeof(why)), SNAPSHOT_GC_STALE);
    assert_non_null(strstr(why, "QEMU changed"));
    assert_string_equal(snapshot_gc_verdict_name(SNAPSHOT_GC_BEYOND_MAX), "beyond_max_vms");
    snapshot_manifest_clear(&have);
    snapshot_manifest_clear(&want);
}

/* A snapshots/ dir as a daemon leaves it after an image rebuild, a lower
 * max_vms and a killed maker, plus files that are not ours. */
static void test_sweep_files(void **state)
{
    (void)state;
    char *tmp = test_tmpdir("snapgc");
    char root[512];
    snprintf(root, sizeof(root), "%s/snapshots", tmp);
    struct snapshot_manifest valid, stale, other_size;
    fill(&valid, 1, 1024);
    fill(&stale, 1, 1024);
    free(stale.image_id);
    stale.image_id = strdup("sha256:old");
    fill(&other_size, 1, 1024); /* valid for 1c-1024m, but in 2c-2048m */

    mkdirs(root, "1c-1024m/slot-0");
    put_manifest(root, "1c-1024m/slot-0/manifest.json", &valid);
    put(root, "1c-1024m/slot-0/state", 300000);
    put(root, "1c-1024m/slot-0/base.qcow2", 20000);
    mkdirs(root, "1c-1024m/slot-1"); /* a copy of an older image: shares slot-0's base */
    put_manifest(root, "1c-1024m/slot-1/manifest.json", &stale);
    put(root, "1c-1024m/slot-1/state", 200000);
    char a[1024], b[1024];
    snprintf(a, sizeof(a), "%s/1c-1024m/slot-0/base.qcow2", root);
    snprintf(b, sizeof(b), "%s/1c-1024m/slot-1/base.qcow2", root);
    assert_int_equal(link(a, b), 0);
    mkdirs(root, "1c-1024m/slot-2"); /* a maker killed mid-save */
    put(root, "1c-1024m/slot-2/state.tmp", 100000);
    mkdirs(root, "1c-1024m/slot-5"); /* max_vms was 6 */
    put_manifest(root, "1c-1024m/slot-5/manifest.json", &valid);
    put(root, "1c-1024m/slot-5/state", 50000);
    mkdirs(root, "2c-2048m/slot-0");
    put_manifest(root, "2c-2048m/slot-0/manifest.json", &other_size);
    put(root, "2c-2048m/slot-0/state", 70000);
    /* not ours */
    put(root, "README", 10);
    put(root, "1c-1024m/notes", 10);
    mkdirs(root, "1c-1024m/slot-01");
    mkdirs(root, "big/slot-0");
    mkdirs(tmp, "elsewhere");
    put(tmp, "elsewhere/keep", 10);
    char target[600], lnk[1024];
    snprintf(target, sizeof(target), "%s/elsewhere", tmp);
    snprintf(lnk, sizeof(lnk), "%s/1c-1024m/slot-3", root);
    assert_int_equal(symlink(target, lnk), 0);

    uint64_t expect_bytes =
            blocks(root, "1c-1024m/slot-1/state") + blocks(root, "1c-1024m/slot-1/manifest.json") +
            blocks(root, "1c-1024m/slot-2/state.tmp") + blocks(root, "1c-1024m/slot-5/state") +
            blocks(root, "1c-1024m/slot-5/manifest.json") + blocks(root, "2c-2048m/slot-0/state") +
            blocks(root, "2c-2048m/slot-0/manifest.json");

    struct snapshot_gc_entry *e = NULL;
    size_t n = 0;
    struct al_error *err = NULL;
    assert_int_equal(snapshot_gc_list(root, &e, &n, &err), 0);
    assert_int_equal(n, 5);
    unsigned verdicts[SNAPSHOT_GC_VERDICT_COUNT] = {0};
    uint64_t bytes = 0;
    for (size_t i = 0; i < n; i++) {
        struct snapshot_manifest want, have = {0};
        fill(&want, e[i].cpus, e[i].memory >> 20);
        char p[1100], *text = NULL;
        snprintf(p, sizeof(p), "%s/manifest.json", e[i].dir);
        FILE *f = fopen(p, "r");
        bool loaded = false;
        if (f) {
            text = calloc(1, SNAPSHOT_MANIFEST_MAX + 1);
            size_t len = fread(text, 1, SNAPSHOT_MANIFEST_MAX, f);
            fclose(f);
            loaded = snapshot_manifest_parse(text, len, &have, &err) == 0;
            free(text);
        }
        char why[200];
        enum snapshot_gc_verdict v =
                snapshot_gc_judge(e[i].k, 3, loaded ? &have : NULL, &want, why, sizeof(why));
        verdicts[v]++;
        if (v == SNAPSHOT_GC_KEEP)
            assert_string_equal(e[i].dir + strlen(root), "/1c-1024m/slot-0");
        else
            assert_int_equal(snapshot_gc_remove_slot(e[i].dir, &bytes, &err), 0);
        snapshot_manifest_clear(&have);
        snapshot_manifest_clear(&want);
    }
    snapshot_gc_entries_free(e, n);
    assert_int_equal(verdicts[SNAPSHOT_GC_KEEP], 1);
    assert_int_equal(verdicts[SNAPSHOT_GC_STALE], 2);
    assert_int_equal(verdicts[SNAPSHOT_GC_BEYOND_MAX], 1);
    assert_int_equal(verdicts[SNAPSHOT_GC_NO_MANIFEST], 1);
    /* the base slot-1 shared is slot-0's still: not counted */
    assert_int_equal(bytes, expect_bytes);

    assert_false(exists(root, "1c-1024m/slot-1"));
    assert_false(exists(root, "1c-1024m/slot-2"));
    assert_false(exists(root, "1c-1024m/slot-5"));
    assert_false(exists(root, "2c-2048m/slot-0"));
    assert_true(exists(root, "1c-1024m/slot-0/manifest.json"));
    assert_true(exists(root, "1c-1024m/slot-0/state"));
    struct stat st;
    assert_int_equal(stat(a, &st), 0);
    assert_int_equal(st.st_nlink, 1);
    assert_true(exists(root, "README"));
    assert_true(exists(root, "1c-1024m/notes"));
    assert_true(exists(root, "1c-1024m/slot-01"));
    assert_true(exists(root, "big/slot-0"));
    assert_true(exists(root, "1c-1024m/slot-3"));
    assert_true(exists(tmp, "elsewhere/keep"));

    /* gone already: no error, nothing counted */
    snprintf(a, sizeof(a), "%s/1c-1024m/slot-1", root);
    assert_int_equal(snapshot_gc_remove_slot(a, &bytes, &err), 0);
    assert_int_equal(bytes, expect_bytes);
    /* a missing snapshots/ dir lists nothing */
    snprintf(a, sizeof(a), "%s/none", tmp);
    e = NULL;
    assert_int_equal(snapshot_gc_list(a, &e, &n, &err), 0);
    assert_int_equal(n, 0);
    snapshot_gc_entries_free(e, n);

    snapshot_manifest_clear(&valid);
    snapshot_manifest_clear(&stale);
    snapshot_manifest_clear(&other_size);
    test_tmpdir_remove(tmp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_names),
            cmocka_unit_test(test_judge),
            cmocka_unit_test(test_sweep_files),
    };
    return test_exit_status(cmocka_run_group_tests(tests, NULL, NULL));
}
