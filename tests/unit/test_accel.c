#include "test_util.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runner/base/util.h"
#include "runner/engine/config.h"
#include "provision/accel.h"

struct fixture {
    char *dir;     /* holds the stand-in qemu-system-x86_64 */
    char *cache;   /* the probe's cache dir */
    char *counter; /* the stand-in appends its arguments here, a line per run */
    char *kernel;  /* a file standing in for the kernel it is given */
    char *device;  /* a file standing in for /dev/kvm */
    char *old_path;
};

/* What a Linux kernel prints on a working KVM when the probe boots it: its
 * banner first, the panic for lack of a root file system last; -no-reboot
 * makes QEMU exit 0 then. */
#define BOOT_OK                                                                                 \
    "echo 'Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org) #1 SMP'\n"             \
    "echo '[    0.812345] VFS: Cannot open root device \"\" or unknown-block(0,0): error -6'\n" \
    "echo '[    0.812400] Kernel panic - not syncing: VFS: Unable to mount root fs'\n"          \
    "exit 0"

static void write_fake(struct fixture *f, const char *body)
{
    char *path = al_path_join(f->dir, "qemu-system-x86_64");
    char *script = NULL;
    assert_true(asprintf(&script, "#!/bin/sh\necho \"$*\" >> '%s'\n%s\n", f->counter, body) > 0);
    assert_int_equal(al_write_file_atomic(path, script, strlen(script), 0755, NULL), 0);
    free(script);
    free(path);
}

static char *runs_text(struct fixture *f)
{
    char *text = NULL;
    if (al_read_file(f->counter, 65536, &text, NULL, NULL) < 0)
        return strdup("");
    return text;
}

static int runs(struct fixture *f)
{
    char *text = runs_text(f);
    int n = 0;
    for (const char *p = text; *p; p++)
        n += *p == '\n';
    free(text);
    return n;
}

static struct accel_probe_opts opts(struct fixture *f, int mode)
{
    return (struct accel_probe_opts){.mode = mode,
                                     .cache_dir = f->cache,
                                     .kvm_device = f->device,
                                     .kernel = f->kernel,
                                     .timeout_ms = 2000};
}

static int probe(struct fixture *f, int mode, struct accel_result *r, struct al_error **err)
{
    struct accel_probe_opts o = opts(f, mode);
    return accel_probe(&o, r, err);
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    f->dir = test_tmpdir("accel");
    f->cache = al_path_join(f->dir, "cache");
    f->counter = al_path_join(f->dir, "runs");
    f->kernel = al_path_join(f->dir, "vmlinuz");
    f->device = al_path_join(f->dir, "kvm");
    assert_int_equal(al_write_file_atomic(f->kernel, "MZ kernel", 9, 0644, NULL), 0);
    assert_int_equal(al_write_file_atomic(f->device, "", 0, 0600, NULL), 0);
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
    free(f->kernel);
    free(f->device);
    test_tmpdir_remove(f->dir);
    free(f);
    return 0;
}

/* A working KVM: the kernel boots to its end under both machine types, with
 * the host CPU model, and the verdict is kept for the process and the boot. */
static void test_kernel_boots_means_kvm(void **state)
{
    struct fixture *f = *state;
    write_fake(f, BOOT_OK);
    struct accel_result r;
    assert_int_equal(probe(f, ACCEL_AUTO, &r, NULL), 0);
    assert_int_equal(r.kind, ACCEL_KIND_KVM);
    assert_string_equal(r.reason, "");
    assert_false(r.from_cache);
    assert_string_equal(accel_domain_type(&r), "kvm");

    char *args = runs_text(f);
    assert_int_equal(runs(f), 2);
    assert_non_null(strstr(args, "-accel kvm -machine pc -cpu host"));
    assert_non_null(strstr(args, "-accel kvm -machine q35 -cpu host"));
    assert_non_null(strstr(args, "-no-reboot"));
    char *kernel_arg = NULL;
    assert_true(asprintf(&kernel_arg, "-kernel %s -append console=ttyS0", f->kernel) > 0);
    assert_non_null(strstr(args, kernel_arg));
    free(kernel_arg);
    free(args);

    /* once per process, and once per boot through the cache file */
    assert_int_equal(probe(f, ACCEL_KVM, &r, NULL), 0);
    assert_true(r.from_cache);
    accel_probe_reset();
    assert_int_equal(probe(f, ACCEL_AUTO, &r, NULL), 0);
    assert_true(r.from_cache);
    assert_int_equal(r.kind, ACCEL_KIND_KVM);
    assert_int_equal(runs(f), 2);

    /* another kernel (or QEMU) is probed anew */
    accel_probe_reset();
    sleep(1); /* a new mtime even on coarse file systems */
    assert_int_equal(al_write_file_atomic(f->kernel, "MZ kernel 2", 11, 0644, NULL), 0);
    assert_int_equal(probe(f, ACCEL_AUTO, &r, NULL), 0);
    assert_false(r.from_cache);
    assert_int_equal(runs(f), 4);
}

/* The failure seen on nested hosts: QEMU prints the MSR error and aborts. */
static void test_qemu_aborts_means_tcg(void **state)
{
    struct fixture *f = *state;
    write_fake(f, "echo 'qemu-system-x86_64: error: failed to set MSR 0x10a to 0x2000c04' >&2\n"
                  "kill -ABRT $$");
    struct accel_result r;
    assert_int_equal(probe(f, ACCEL_AUTO, &r, NULL), 0);
    assert_int_equal(r.kind, ACCEL_KIND_TCG);
    assert_false(r.from_cache);
    assert_non_null(strstr(r.reason, "failed to set MSR 0x10a"));
    assert_non_null(strstr(r.reason, "signal 6"));
    assert_string_equal(accel_domain_type(&r), "qemu");
    assert_int_equal(runs(f), 1); /* q35 is not tried after pc failed */

    accel_probe_reset();
    assert_int_equal(probe(f, ACCEL_AUTO, &r, NULL), 0);
    assert_true(r.from_cache);
    assert_non_null(strstr(r.reason, "MSR 0x10a"));
    assert_int_equal(runs(f), 1);

    /* accel = kvm turns the fallback into an error that says why */
    struct al_error *err = NULL;
    assert_int_equal(probe(f, ACCEL_KVM, &r, &err), -ENODEV);
    assert_non_null(strstr(al_error_message(err), "MSR 0x10a"));
    al_error_free(err);
}

/* Running, not a zombie nobody reaped (PID 1 of a container may not). */
static bool process_alive(pid_t pid)
{
    char path[64], *stat = NULL;
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    if (al_read_file(path, 4096, &stat, NULL, NULL) < 0)
        return false;
    const char *p = strrchr(stat, ')');
    bool alive = p && p[1] == ' ' && p[2] != 'Z' && p[2] != 'X';
    free(stat);
    return alive;
}

/* kvm-pvm: QEMU starts, the firmware runs, the kernel never prints a line.
 * The probe gives up at its deadline and kills QEMU with its children. */
static void test_kernel_hangs_means_tcg(void **state)
{
    struct fixture *f = *state;
    char *pidfile = al_path_join(f->dir, "sleeper");
    char *body = NULL;
    assert_true(asprintf(&body, "sleep 60 & echo $! > '%s'\nwait", pidfile) > 0);
    write_fake(f, body);
    free(body);
    struct accel_result r;
    uint64_t t0 = al_now_mono_ms();
    assert_int_equal(probe(f, ACCEL_AUTO, &r, NULL), 0);
    uint64_t took = al_now_mono_ms() - t0;
    assert_int_equal(r.kind, ACCEL_KIND_TCG);
    assert_non_null(strstr(r.reason, "printed nothing in 2 s under KVM"));
    assert_true(took >= 2000 && took < 10000);

    char *pid_text = NULL;
    assert_int_equal(al_read_file(pidfile, 64, &pid_text, NULL, NULL), 0);
    pid_t sleeper = (pid_t)strtol(pid_text, NULL, 10);
    assert_true(sleeper > 0);
    for (int i = 0; i < 100 && process_alive(sleeper); i++)
        usleep(20000);
    assert_false(process_alive(sleeper)); /* no QEMU child left behind */
    free(pid_text);
    free(pidfile);

    /* a firmware line and then silence is the same verdict, with the line */
    accel_probe_reset();
    unlink(f->counter);
    char *cache_file = al_path_join(f->cache, "accel-probe");
    unlink(cache_file);
    free(cache_file);
    write_fake(f, "echo 'Booting from ROM...'\nexec sleep 60");
    assert_int_equal(probe(f, ACCEL_AUTO, &r, NULL), 0);
    assert_int_equal(r.kind, ACCEL_KIND_TCG);
    assert_non_null(strstr(r.reason, "did not start under KVM"));
    assert_non_null(strstr(r.reason, "Booting from ROM..."));
}

/* The kernel prints and QEMU exits, but the boot did not get to its end:
 * a crash (triple fault, -no-reboot) is not a working KVM. */
static void test_kernel_prints_and_exits_early(void **state)
{
    struct fixture *f = *state;
    write_fake(f, "echo 'Linux version 6.1.0-57-amd64'\necho 'x86/fpu: Supporting XSAVE'\nexit 0");
    struct accel_result r;
    assert_int_equal(probe(f, ACCEL_AUTO, &r, NULL), 0);
    assert_int_equal(r.kind, ACCEL_KIND_TCG);
    assert_non_null(strstr(r.reason, "stopped under KVM (machine pc) before the end of its boot"));
    assert_non_null(strstr(r.reason, "x86/fpu: Supporting XSAVE"));

    /* garbage on the console and no kernel at all */
    accel_probe_reset();
    char *cache_file = al_path_join(f->cache, "accel-probe");
    unlink(cache_file);
    free(cache_file);
    write_fake(f, "printf '\\001\\002garbage\\n'\nexit 0");
    assert_int_equal(probe(f, ACCEL_AUTO, &r, NULL), 0);
    assert_int_equal(r.kind, ACCEL_KIND_TCG);
    assert_non_null(strstr(r.reason, "no Linux banner"));
    assert_non_null(strstr(r.reason, "??garbage"));
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
    assert_int_equal(probe(f, ACCEL_AUTO, &r, NULL), 0);
    assert_int_equal(r.kind, ACCEL_KIND_TCG);
    assert_string_equal(r.reason, "Could not access KVM kernel module: No such file or directory");
    assert_int_equal(runs(f), 1);
    free(file);
}

static void test_tcg_mode_never_probes(void **state)
{
    struct fixture *f = *state;
    write_fake(f, BOOT_OK);
    struct accel_result r;
    assert_int_equal(probe(f, ACCEL_TCG, &r, NULL), 0);
    assert_int_equal(r.kind, ACCEL_KIND_TCG);
    assert_int_equal(runs(f), 0);
}

/* Nothing to try: no device, no kernel, no QEMU. QEMU is not run, and the
 * answer is kept like any other (said once per boot). */
static void test_nothing_to_probe_with(void **state)
{
    struct fixture *f = *state;
    write_fake(f, BOOT_OK);
    struct accel_result r;
    struct accel_probe_opts o = opts(f, ACCEL_AUTO);
    o.kvm_device = "/nonexistent/kvm";
    assert_int_equal(accel_probe(&o, &r, NULL), 0);
    assert_int_equal(r.kind, ACCEL_KIND_TCG);
    assert_string_equal(r.reason, "/nonexistent/kvm does not exist (no KVM on this host)");
    accel_probe_reset();
    assert_int_equal(accel_probe(&o, &r, NULL), 0);
    assert_true(r.from_cache);

    accel_probe_reset();
    o = opts(f, ACCEL_AUTO);
    o.kernel = "/nonexistent/vmlinuz";
    assert_int_equal(accel_probe(&o, &r, NULL), 0);
    assert_int_equal(r.kind, ACCEL_KIND_TCG);
    assert_non_null(strstr(r.reason, "no Linux kernel to prove KVM with"));

    accel_probe_reset();
    setenv("PATH", f->cache, 1); /* no qemu at all */
    assert_int_equal(probe(f, ACCEL_AUTO, &r, NULL), 0);
    assert_int_equal(r.kind, ACCEL_KIND_TCG);
    assert_non_null(strstr(r.reason, "qemu-system-x86_64"));
    assert_int_equal(runs(f), 0);
}

/* The watchdog's verdict: KVM turned down for this process and this boot. */
static void test_mark_unusable(void **state)
{
    struct fixture *f = *state;
    write_fake(f, BOOT_OK);
    struct accel_result r;
    assert_int_equal(probe(f, ACCEL_AUTO, &r, NULL), 0);
    assert_int_equal(r.kind, ACCEL_KIND_KVM);
    assert_true(accel_mark_kvm_unusable(f->cache, "a guest showed no sign of life"));
    assert_false(accel_mark_kvm_unusable(f->cache, "again"));
    assert_int_equal(probe(f, ACCEL_AUTO, &r, NULL), 0);
    assert_int_equal(r.kind, ACCEL_KIND_TCG);
    assert_string_equal(r.reason, "a guest showed no sign of life");
    accel_probe_reset();
    assert_int_equal(probe(f, ACCEL_AUTO, &r, NULL), 0);
    assert_true(r.from_cache);
    assert_int_equal(r.kind, ACCEL_KIND_TCG);
    assert_string_equal(r.reason, "a guest showed no sign of life");
    assert_int_equal(runs(f), 2);
}

/* The real QEMU and kernel of this host: whatever the answer, it comes with
 * a reason when it is TCG. */
static void test_real_host(void **state)
{
    struct fixture *f = *state;
    setenv("PATH", f->old_path, 1);
    struct accel_result r;
    struct accel_probe_opts o = {.mode = ACCEL_AUTO};
    assert_int_equal(accel_probe(&o, &r, NULL), 0);
    if (r.kind == ACCEL_KIND_TCG)
        assert_true(r.reason[0] != '\0');
    printf("# accel probe on this host: %s%s%s\n", accel_domain_type(&r), r.reason[0] ? ": " : "",
           r.reason);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_kernel_boots_means_kvm, setup, teardown),
            cmocka_unit_test_setup_teardown(test_qemu_aborts_means_tcg, setup, teardown),
            cmocka_unit_test_setup_teardown(test_kernel_hangs_means_tcg, setup, teardown),
            cmocka_unit_test_setup_teardown(test_kernel_prints_and_exits_early, setup, teardown),
            cmocka_unit_test_setup_teardown(test_stale_cache_reprobes, setup, teardown),
            cmocka_unit_test_setup_teardown(test_tcg_mode_never_probes, setup, teardown),
            cmocka_unit_test_setup_teardown(test_nothing_to_probe_with, setup, teardown),
            cmocka_unit_test_setup_teardown(test_mark_unusable, setup, teardown),
            cmocka_unit_test_setup_teardown(test_real_host, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
