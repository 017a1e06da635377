/* The manifest of a memory snapshot: it round-trips, a damaged one is
 * refused, and every condition that changed makes the snapshot stale with
 * a reason that says which. */
#include "test_util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "provision/snapshot.h"
#include "runner/base/macro.h"
#include "provision/snapshot_manifest.h"

static void fill(struct snapshot_manifest *m)
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
            .cpus = 1,
            .memory = 1024ull << 20,
            .domain = strdup("agentlab-snap-0123456789-0"),
            .uuid = strdup("0ba44ed4-9cf1-4271-af97-644c291203e5"),
            .disk_path = strdup("/var/lib/agentlab/pools/local/agentlab-snap-0123456789-0.qcow2"),
            .channel_path = strdup("/run/agentlab/vms/agentlab-snap-0123456789-0/job.sock"),
            .console_log = strdup("/run/agentlab/vms/agentlab-snap-0123456789-0/console.log"),
            .seed_path = strdup(""),
            .state_bytes = 104857600,
            .base_bytes = 200704,
            .made_ms = 53172,
    };
}

static void test_round_trip(void **state)
{
    (void)state;
    struct snapshot_manifest m, back = {0};
    fill(&m);
    char *json = NULL;
    assert_int_equal(snapshot_manifest_format(&m, &json), 0);
    struct al_error *err = NULL;
    assert_int_equal(snapshot_manifest_parse(json, strlen(json), &back, &err), 0);
    assert_string_equal(back.image_id, m.image_id);
    assert_string_equal(back.uuid, m.uuid);
    assert_string_equal(back.channel_path, m.channel_path);
    assert_string_equal(back.seed_path, "");
    assert_int_equal(back.qemu_version, 7002000);
    assert_int_equal(back.memory, 1024ull << 20);
    assert_int_equal(back.cpus, 1);
    assert_int_equal(back.made_ms, 53172);
    char why[200];
    assert_int_equal(snapshot_manifest_check(&back, &m, why, sizeof(why)), 0);
    free(json);
    snapshot_manifest_clear(&back);
    snapshot_manifest_clear(&m);
}

static void test_refused(void **state)
{
    (void)state;
    struct snapshot_manifest m, out = {0};
    fill(&m);
    char *json = NULL;
    assert_int_equal(snapshot_manifest_format(&m, &json), 0);
    struct al_error *err = NULL;
    /* cut short */
    assert_true(snapshot_manifest_parse(json, strlen(json) / 2, &out, &err) < 0);
    err = al_error_free(err);
    /* a missing field */
    char *p = strstr(json, "\"uuid\"");
    assert_non_null(p);
    memcpy(p, "\"uuix\"", 6);
    assert_int_equal(snapshot_manifest_parse(json, strlen(json), &out, &err), -EINVAL);
    assert_non_null(strstr(al_error_message(err), "uuid"));
    err = al_error_free(err);
    /* another schema */
    static const char other[] = "{\"schema\": 2}";
    assert_int_equal(snapshot_manifest_parse(other, strlen(other), &out, &err), -EINVAL);
    err = al_error_free(err);
    assert_null(out.image);
    free(json);
    snapshot_manifest_clear(&m);
}

static void test_stale(void **state)
{
    (void)state;
    struct snapshot_manifest have, want;
    fill(&have);
    char why[200];
    static const char *const expect[] = {
            "image changed",
            "QEMU changed: 7002000 -> 8000000",
            "accelerator changed: tcg -> kvm",
            "size 1 vCPU/1024 MiB, not 2/1024",
            "host CPU changed",
            "agentlab changed",
            "libvirt changed",
    };
    for (size_t i = 0; i < ARRAY_SIZE(expect); i++) {
        fill(&want);
        switch (i) {
        case 0:
            free(want.image_id);
            want.image_id = strdup("sha256:ab created:2027 disk:1.2:3");
            break;
        case 1:
            want.qemu_version = 8000000;
            break;
        case 2:
            free(want.accel);
            want.accel = strdup("kvm");
            break;
        case 3:
            want.cpus = 2;
            break;
        case 4:
            free(want.cpu_model);
            want.cpu_model = strdup("Skylake");
            break;
        case 5:
            free(want.helper);
            want.helper = strdup("0.2.0");
            break;
        case 6:
            want.libvirt_version = 9001000;
            break;
        }
        why[0] = '\0';
        assert_int_equal(snapshot_manifest_check(&have, &want, why, sizeof(why)), -ESTALE);
        if (!strstr(why, expect[i]))
            fail_msg("case %zu: \"%s\" does not say \"%s\"", i, why, expect[i]);
        snapshot_manifest_clear(&want);
    }
    /* the present machine type is unknown before a VM runs: not compared then */
    fill(&want);
    free(want.machine);
    want.machine = strdup("");
    assert_int_equal(snapshot_manifest_check(&have, &want, why, sizeof(why)), 0);
    snapshot_manifest_clear(&want);
    snapshot_manifest_clear(&have);
}

static void test_fallback_counters(void **state)
{
    (void)state;
    assert_string_equal(snapshot_fallback_name(SNAPSHOT_FB_RESTORE_FAILED), "restore_failed");
    assert_string_equal(snapshot_fallback_name(SNAPSHOT_FB_COUNT), "unknown");
    uint64_t before = snapshot_fallbacks(SNAPSHOT_FB_STALE);
    snapshot_count_fallback(SNAPSHOT_FB_STALE);
    snapshot_count_fallback(SNAPSHOT_FB_COUNT); /* ignored */
    assert_int_equal(snapshot_fallbacks(SNAPSHOT_FB_STALE), before + 1);
    uint64_t r = snapshot_restores();
    snapshot_count_restore();
    assert_int_equal(snapshot_restores(), r + 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_round_trip),
            cmocka_unit_test(test_refused),
            cmocka_unit_test(test_stale),
            cmocka_unit_test(test_fallback_counters),
    };
    return test_exit_status(cmocka_run_group_tests(tests, NULL, NULL));
}
