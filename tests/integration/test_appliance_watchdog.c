/* The libguestfs appliance watchdog with the real libguestfs: the
 * hypervisor is a stand-in that answers libguestfs's capability questions
 * with the real QEMU but, asked to boot the appliance, sits there like an
 * appliance whose kernel hangs under a KVM that cannot run Linux. The
 * watchdog must kill it after its bound, so the launch fails with
 * -ETIMEDOUT in seconds instead of libguestfs's 20 minutes; with the real
 * QEMU the same call launches and returns 0. */
#include "test_util.h"

#include <errno.h>
#include <guestfs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "runner/base/util.h"
#include "provision/appliance_watchdog.h"

static char *tmpdir;

static guestfs_h *handle(const char *hv)
{
    guestfs_h *g = guestfs_create();
    assert_non_null(g);
    guestfs_set_error_handler(g, NULL, NULL);
    assert_int_equal(guestfs_set_backend(g, "direct"), 0);
    char *settings[] = {(char *)"force_tcg", NULL};
    assert_int_equal(guestfs_set_backend_settings(g, settings), 0);
    if (hv)
        assert_int_equal(guestfs_set_hv(g, hv), 0);
    assert_int_equal(guestfs_add_drive_scratch(g, 16 * 1024 * 1024, -1), 0);
    return g;
}

static void test_hung_appliance_is_killed(void **state)
{
    (void)state;
    char *hv = al_path_join(tmpdir, "qemu-hangs");
    char *pidfile = al_path_join(tmpdir, "hv.pid");
    char *script = NULL;
    char *qemu = al_find_in_path("qemu-system-x86_64");
    assert_non_null(qemu);
    /* the appliance boot is the call with -kernel; it keeps its command line
     * (which names the handle's socket dir) while it "hangs" */
    assert_true(asprintf(&script,
                         "#!/bin/bash\n"
                         "for a in \"$@\"; do\n"
                         "  if [ \"$a\" = -kernel ]; then\n"
                         "    echo $$ > '%s'\n"
                         "    exec -a \"qemu-hangs $*\" sleep 600\n"
                         "  fi\n"
                         "done\n"
                         "exec '%s' \"$@\"\n",
                         pidfile, qemu) > 0);
    assert_int_equal(al_write_file_atomic(hv, script, strlen(script), 0755, NULL), 0);

    guestfs_h *g = handle(hv);
    uint64_t t0 = al_now_mono_ms();
    int r = appliance_launch(g, 3);
    uint64_t took = al_now_mono_ms() - t0;
    printf("# hung appliance: %d after %.1f s\n", r, (double)took / 1000.0);
    assert_int_equal(r, -ETIMEDOUT);
    char *pid_text = NULL;
    assert_int_equal(al_read_file(pidfile, 64, &pid_text, NULL, NULL), 0);
    pid_t pid = (pid_t)strtol(pid_text, NULL, 10);
    assert_true(pid > 0);
    char proc[64];
    snprintf(proc, sizeof(proc), "/proc/%d/cmdline", (int)pid);
    struct stat st;
    assert_int_equal(stat(proc, &st), -1); /* killed and reaped by libguestfs */
    guestfs_close(g);
    free(pid_text);
    free(script);
    free(qemu);
    free(pidfile);
    free(hv);
}

static void test_working_appliance_launches(void **state)
{
    (void)state;
    guestfs_h *g = handle(NULL);
    int r = appliance_launch(g, APPLIANCE_WATCHDOG_KVM_S);
    if (r < 0)
        fail_msg("launch: %s", guestfs_last_error(g));
    assert_int_equal(guestfs_shutdown(g), 0);
    guestfs_close(g);
}

static int setup(void **state)
{
    (void)state;
    tmpdir = test_tmpdir("appliance-watchdog");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    test_tmpdir_remove(tmpdir);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_hung_appliance_is_killed),
            cmocka_unit_test(test_working_appliance_launches),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
