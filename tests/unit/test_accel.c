#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/util.h"
#include "config.h"
#include "provision/accel.h"

struct fixture {
    char *dir;     /* holds the fake qemu-system-x86_64 */
    char *cache;   /* the probe's cache dir */
    char *counter; /* the fake appends a line here per run */
    char *old_path;
};

static void write_fake(struct fixture *f, const char *body)
{
    char *path = al_path_join(f->dir, "qemu-system-x86_64");
    char *script = NULL;
    assert_true(asprintf(&script, "#!/bin/sh\necho run >> '%s'\n%s\n", f->counter, body) > 0);
    assert_int_equal(al_write_file_atomic(path, script, strlen(script), 0755, NULL), 0);
    free(script);
    free(path);
}

static int runs(struct fixture *f)
{
    char *text = NULL;
    size_t len = 0;
    if (al_read_file(f->counter, 4096, &text, &len, NULL) < 0)
        return 0;
    int n = 0;
    for (size_t i = 0; i < len; i++)
        n += text[i] == '\n';
    free(text);
    return n;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    f->dir = test_tmpdir("accel");
    f->cache = al_path_join(f->dir, "cache");
    f->counter = al_path_join(f->dir, "runs");
    const char *path = getenv("PATH");
    f->old_path = strdup(path ? path : "/usr/bin:/bin");
    char *np = NULL;
    assert_true(asprintf(&np, "%s:%s", f->dir, f->old_path) > 0);
    setenv("PATH", np, 1);
    free(np);
    accel_probe_reset();
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    setenv("PATH", f->old_path, 1);
    accel_probe_reset();
    free(f->old_path);
    free(f->cache);
    free(f->counter);
    test_tmpdir_remove(f->dir);
    free(f);
    return 0;
}

/* The failure seen on nested hosts: QEMU prints the MSR error and aborts. */
static void test_msr_abort_means_tcg(void **state)
{
    struct fixture *f = *state;
    write_fake(f, "echo 'qemu-system-x86_64: error: failed to set MSR 0x10a to 0x2000c04' >&2\n"
                  "kill -ABRT $$");
    struct accel_result r;
    assert_int_equal(accel_probe(ACCEL_AUTO, f->cache, &r, NULL), 0);
    assert_int_equal(r.kind, ACCEL_KIND_TCG);
    assert_false(r.from_cache);
    assert_non_null(strstr(r.reason, "failed to set MSR 0x10a"));
    assert_non_null(strstr(r.reason, "signal 6"));
    assert_string_equal(accel_domain_type(&r), "qemu");

    /* once per process */
    assert_int_equal(accel_probe(ACCEL_AUTO, f->cache, &r, NULL), 0);
    assert_true(r.from_cache);
    assert_int_equal(runs(f), 1);
    /* and once per boot through the cache file */
    accel_probe_reset();
    assert_int_equal(accel_probe(ACCEL_AUTO, f->cache, &r, NULL), 0);
    assert_true(r.from_cache);
    assert_int_equal(r.kind, ACCEL_KIND_TCG);
    assert_non_null(strstr(r.reason, "MSR 0x10a"));
    assert_int_equal(runs(f), 1);

    /* accel = kvm turns the fallback into an error */
    struct al_error *err = NULL;
    assert_int_equal(accel_probe(ACCEL_KVM, f->cache, &r, &err), -ENODEV);
    assert_non_null(strstr(al_error_message(err), "MSR 0x10a"));
    al_error_free(err);
}

static void test_stale_cache_reprobes(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(al_mkdir_p(f->cache, 0755, NULL), 0);
    char *file = al_path_join(f->cache, "accel-probe");
    const char *stale = "boot_id=00000000-0000-0000-0000-000000000000\nkind=kvm\nreason=\n";
    assert_int_equal(al_write_file_atomic(file, stale, strlen(stale), 0644, NULL), 0);
    write_fake(f, "echo 'Could not access KVM kernel module: No such file or directory' >&2\n"
                  "exit 1");
    struct accel_result r;
    assert_int_equal(accel_probe(ACCEL_AUTO, f->cache, &r, NULL), 0);
    assert_int_equal(r.kind, ACCEL_KIND_TCG);
    assert_string_equal(r.reason, "Could not access KVM kernel module: No such file or directory");
    assert_int_equal(runs(f), 1);
    free(file);
}

/* Exit status 33 is what the probe firmware produces through isa-debug-exit. */
static void test_guest_ran_means_kvm(void **state)
{
    struct fixture *f = *state;
    write_fake(f, "case \"$*\" in *'-accel kvm'*isa-debug-exit*) exit 33;; esac\nexit 1");
    struct accel_result r;
    assert_int_equal(accel_probe(ACCEL_KVM, NULL, &r, NULL), 0);
    assert_int_equal(r.kind, ACCEL_KIND_KVM);
    assert_string_equal(r.reason, "");
    assert_string_equal(accel_domain_type(&r), "kvm");
}

static void test_tcg_mode_never_probes(void **state)
{
    struct fixture *f = *state;
    write_fake(f, "exit 33");
    struct accel_result r;
    assert_int_equal(accel_probe(ACCEL_TCG, f->cache, &r, NULL), 0);
    assert_int_equal(r.kind, ACCEL_KIND_TCG);
    assert_int_equal(runs(f), 0);
}

static void test_missing_qemu(void **state)
{
    struct fixture *f = *state;
    setenv("PATH", f->dir, 1); /* no qemu at all */
    struct accel_result r;
    assert_int_equal(accel_probe(ACCEL_AUTO, NULL, &r, NULL), 0);
    assert_int_equal(r.kind, ACCEL_KIND_TCG);
    assert_non_null(strstr(r.reason, "qemu-system-x86_64"));
}

/* The real QEMU on this host: whatever the answer, it comes with a reason. */
static void test_real_qemu(void **state)
{
    struct fixture *f = *state;
    setenv("PATH", f->old_path, 1);
    struct accel_result r;
    assert_int_equal(accel_probe(ACCEL_AUTO, NULL, &r, NULL), 0);
    if (r.kind == ACCEL_KIND_TCG)
        assert_true(r.reason[0] != '\0');
    printf("# accel probe on this host: %s%s%s\n", accel_domain_type(&r), r.reason[0] ? ": " : "",
           r.reason);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_msr_abort_means_tcg, setup, teardown),
            cmocka_unit_test_setup_teardown(test_stale_cache_reprobes, setup, teardown),
            cmocka_unit_test_setup_teardown(test_guest_ran_means_kvm, setup, teardown),
            cmocka_unit_test_setup_teardown(test_tcg_mode_never_probes, setup, teardown),
            cmocka_unit_test_setup_teardown(test_missing_qemu, setup, teardown),
            cmocka_unit_test_setup_teardown(test_real_qemu, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
