/* Builds (or reuses) the debian-12 golden image with the agentlab CLI, boots
 * it under libvirt on qemu:///system (TCG where KVM does not work) with
 * direct kernel boot, no NIC and a NoCloud seed, and waits for cloud-init's
 * runcmd to print a marker on the serial console.
 *
 * The image lives in $AL_TEST_STATE_DIR (default <build>/test-state), shared
 * with every other test that needs an image: only the first run pays for
 * the build. Without the agentlab-guest helper it fails (test_skip()). */
#include "test_util.h"

#include <fcntl.h>
#include <inttypes.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "runner/base/buf.h"
#include "runner/base/util.h"
#include "runner/engine/config.h"
#include "images/builder.h"
#include "images/catalog.h"
#include "provision/accel.h"

#define IMAGE          "debian-12"
#define BOOT_TIMEOUT_S 300

extern char **environ;

struct fixture {
    char *state;  /* shared image state dir */
    char *work;   /* this run's overlay, seed and console log */
    char *domain; /* name of the domain while it exists */
    virConnectPtr conn;
    struct image_info *image;
    char *tag;
};

/* Runs argv (environment plus AGENTLAB_STATE_DIR), returns the exit status
 * and stdout+stderr in *ret_out. */
static int run(struct fixture *f, char *const argv[], char **ret_out)
{
    char *log = al_path_join(f->work, "cmd.out");
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    setenv("AGENTLAB_STATE_DIR", f->state, 1);
    pid_t pid;
    assert_int_equal(posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0)
        ;
    char *out = NULL;
    assert_int_equal(al_read_file(log, 1 << 24, &out, NULL, NULL), 0);
    free(log);
    if (ret_out)
        *ret_out = out;
    else
        free(out);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void quiet_libvirt(void *data, virErrorPtr e)
{
    (void)data;
    (void)e;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    const char *s = getenv("AL_TEST_STATE_DIR");
    const char *build = getenv("AL_BUILD_DIR");
    if (s && s[0])
        f->state = strdup(s);
    else
        f->state = al_path_join(build ? build : ".", "test-state");
    assert_int_equal(al_mkdir_p(f->state, 0755, NULL), 0);
    /* QEMU runs as libvirt-qemu: the work dir must be traversable */
    char *base = al_path_join(build ? build : "/tmp", "test-output");
    assert_int_equal(al_mkdir_p(base, 0755, NULL), 0);
    f->tag = al_random_hex(4);
    char *w = NULL;
    assert_true(asprintf(&w, "%s/image-boot-%s", base, f->tag) > 0);
    assert_int_equal(al_mkdir_p(w, 0755, NULL), 0);
    chmod(w, 0755);
    f->work = w;
    free(base);
    virSetErrorFunc(NULL, quiet_libvirt);
    /* a dying libvirtd must fail the test, not kill it */
    signal(SIGPIPE, SIG_IGN);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    /* always: no domain, no overlay left behind (on a fresh connection
     * when the test's own one broke) */
    if (f->domain) {
        for (int attempt = 0; attempt < 2; attempt++) {
            if (!f->conn || virConnectIsAlive(f->conn) != 1) {
                if (f->conn)
                    virConnectClose(f->conn);
                f->conn = virConnectOpen("qemu:///system");
            }
            if (!f->conn)
                continue;
            virDomainPtr d = virDomainLookupByName(f->conn, f->domain);
            if (d) {
                virDomainDestroy(d);
                virDomainFree(d);
            }
            if (virConnectIsAlive(f->conn) == 1)
                break;
        }
    }
    if (f->conn)
        virConnectClose(f->conn);
    if (getenv("AL_TEST_KEEP"))
        fprintf(stderr, "# kept %s\n", f->work);
    else
        al_rm_rf(f->work, NULL);
    image_info_free(f->image);
    free(f->domain);
    free(f->work);
    free(f->state);
    free(f->tag);
    free(f);
    return 0;
}

static void write_text(const char *dir, const char *name, const char *text)
{
    char *p = al_path_join(dir, name);
    assert_int_equal(al_write_file_atomic(p, text, strlen(text), 0644, NULL), 0);
    free(p);
}

static const char probe_script[] =
        "#!/bin/sh\n"
        "# what the test checks from inside the guest\n"
        "u=$(id -un agentlab 2>/dev/null || echo none)\n"
        "s=$(su -s /bin/sh agentlab -c 'sudo -n true' >/dev/null 2>&1 && echo yes || echo no)\n"
        "h=$(sha256sum /usr/local/bin/agentlab-guest 2>/dev/null | cut -c1-64)\n"
        "m=$(wc -c < /etc/machine-id)\n"
        "k=$(ls /etc/ssh/ssh_host_* 2>/dev/null | wc -l)\n"
        "echo \"$1 uptime=$(cut -d' ' -f1 /proc/uptime) user=$u sudo=$s helper=$h "
        "machine_id_bytes=$m ssh_host_keys=$k kernel=$(uname -r)\" > /dev/ttyS0\n";

static void make_seed(struct fixture *f, const char *marker)
{
    char *seed = al_path_join(f->work, "seed");
    assert_int_equal(al_mkdir_p(seed, 0755, NULL), 0);
    char *meta = NULL, *user = NULL;
    assert_true(asprintf(&meta, "instance-id: test-%s\nlocal-hostname: img-test\n", f->tag) > 0);
    struct al_buf b = AL_BUF_INIT;
    al_buf_puts(&b, "#cloud-config\nwrite_files:\n  - path: /run/agentlab-test-probe\n"
                    "    permissions: '0755'\n    content: |\n");
    for (const char *p = probe_script; *p;) {
        const char *nl = strchr(p, '\n');
        al_buf_printf(&b, "      %.*s\n", (int)(nl - p), p);
        p = nl + 1;
    }
    /* /run is noexec: run it through sh */
    al_buf_printf(&b, "runcmd:\n  - [ sh, /run/agentlab-test-probe, %s ]\n", marker);
    user = al_buf_steal(&b);
    write_text(seed, "meta-data", meta);
    write_text(seed, "user-data", user);
    char *iso = al_path_join(f->work, "seed.iso");
    char *um = al_path_join(seed, "user-data"), *mm = al_path_join(seed, "meta-data");
    char *argv[] = {"genisoimage", "-quiet", "-output", iso, "-volid", "cidata",
                    "-joliet",     "-rock",  um,        mm,  NULL};
    char *out = NULL;
    int rc = run(f, argv, &out);
    if (rc != 0)
        fail_msg("genisoimage failed (%d): %s", rc, out);
    chmod(iso, 0644);
    free(out);
    free(iso);
    free(um);
    free(mm);
    free(meta);
    free(user);
    free(seed);
}

static char *console_text(const char *path)
{
    char *t = NULL;
    if (al_read_file(path, 1 << 24, &t, NULL, NULL) < 0)
        return NULL;
    return t;
}

static void test_build_and_boot(void **state)
{
    struct fixture *f = *state;
    const char *agentlab = getenv("AL_AGENTLAB");
    assert_non_null(agentlab);

    /* 1. build, or find the image up to date */
    char *helper = NULL, *unit = NULL;
    struct al_error *err = NULL;
    if (image_guest_helper_find(NULL, &helper, &unit, &err) < 0) {
        /* the test binary is not next to agentlab; ask the same way agentlab will */
        char *dir = strdup(agentlab);
        *strrchr(dir, '/') = '\0';
        char *h = al_path_join(dir, "agentlab-guest");
        al_error_free(err);
        err = NULL;
        if (image_guest_helper_find(h, &helper, &unit, &err) < 0)
            test_skip("no agentlab-guest helper: %s", al_error_message(err));
        setenv("AGENTLAB_GUEST_HELPER", helper, 1);
        free(h);
        free(dir);
    }
    uint64_t t0 = al_now_mono_ms();
    char *argv[] = {(char *)agentlab, "image", "build", IMAGE, NULL};
    char *out = NULL;
    int rc = run(f, argv, &out);
    uint64_t build_ms = al_now_mono_ms() - t0;
    fprintf(stderr, "%s", out);
    if (rc != 0)
        fail_msg("agentlab image build failed with %d", rc);
    free(out);
    /* a second build of unchanged inputs is a quick no-op */
    t0 = al_now_mono_ms();
    rc = run(f, argv, &out);
    uint64_t again_ms = al_now_mono_ms() - t0;
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "up to date"));
    assert_true(again_ms < 1000);
    free(out);
    fprintf(stderr, "# build (or reuse): %.1f s; up-to-date check: %" PRIu64 " ms\n",
            (double)build_ms / 1000.0, again_ms);

    assert_int_equal(image_find(f->state, IMAGE, &f->image, &err), 0);
    struct image_info *img = f->image;
    assert_non_null(img->guest_helper_sha256);
    assert_true(img->n_packages > 100);

    /* 2. overlay and seed */
    char *overlay = al_path_join(f->work, "overlay.qcow2");
    char *backing = NULL;
    assert_true(asprintf(&backing, "%s", img->disk) > 0);
    char *qargv[] = {"qemu-img", "create", "-q",    "-f",    "qcow2", "-F",
                     "qcow2",    "-b",     backing, overlay, NULL};
    assert_int_equal(run(f, qargv, NULL), 0);
    chmod(overlay, 0644);
    char marker[64];
    snprintf(marker, sizeof(marker), "AGENTLAB-TEST-IMG-%s", f->tag);
    make_seed(f, marker);

    /* 3. domain: TCG unless KVM really works, direct kernel boot, no NIC */
    struct accel_result accel;
    assert_int_equal(accel_probe(&(struct accel_probe_opts){.mode = ACCEL_AUTO}, &accel, NULL), 0);
    if (accel.kind != ACCEL_KIND_KVM)
        fprintf(stderr, "# KVM not usable (%s): booting under TCG\n", accel.reason);
    char *console = al_path_join(f->work, "console.log");
    char *seed = al_path_join(f->work, "seed.iso");
    assert_true(asprintf(&f->domain, "agentlab-test-img-%s", f->tag) > 0);
    char *xml = NULL;
    assert_true(
            asprintf(
                    &xml,
                    "<domain type='%s'>\n"
                    "  <name>%s</name>\n"
                    "  <memory unit='MiB'>1024</memory>\n"
                    "  <vcpu>2</vcpu>\n"
                    "  <os>\n"
                    "    <type arch='x86_64' machine='pc'>hvm</type>\n"
                    "    <kernel>%s</kernel>\n"
                    "    <initrd>%s</initrd>\n"
                    "    <cmdline>%s</cmdline>\n"
                    "  </os>\n"
                    "  <features><acpi/></features>\n"
                    "  <on_poweroff>destroy</on_poweroff>\n"
                    "  <on_reboot>destroy</on_reboot>\n"
                    "  <devices>\n"
                    "    <disk type='file' device='disk'>\n"
                    "      <driver name='qemu' type='qcow2'/>\n"
                    "      <source file='%s'/>\n"
                    "      <target dev='vda' bus='virtio'/>\n"
                    "    </disk>\n"
                    "    <disk type='file' device='disk'>\n"
                    "      <driver name='qemu' type='raw'/>\n"
                    "      <source file='%s'/>\n"
                    "      <target dev='vdb' bus='virtio'/>\n"
                    "      <readonly/>\n"
                    "    </disk>\n"
                    "    <serial type='file'>\n"
                    "      <source path='%s'/>\n"
                    "      <target port='0'/>\n"
                    "    </serial>\n"
                    "    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>\n"
                    "    <memballoon model='none'/>\n"
                    "  </devices>\n"
                    "</domain>\n",
                    accel_domain_type(&accel), f->domain, img->kernel, img->initrd, img->cmdline,
                    overlay, seed, console) > 0);
    f->conn = virConnectOpen("qemu:///system");
    if (!f->conn)
        fail_msg("cannot connect to qemu:///system: %s", virGetLastErrorMessage());
    t0 = al_now_mono_ms();
    virDomainPtr dom = virDomainCreateXML(f->conn, xml, 0);
    if (!dom)
        fail_msg("virDomainCreateXML: %s", virGetLastErrorMessage());
    virDomainFree(dom);

    /* 4. while it runs, the image must not be removable */
    assert_int_equal(image_remove(f->state, IMAGE, "qemu:///system", &err), -EBUSY);
    assert_non_null(strstr(al_error_message(err), f->domain));
    al_error_free(err);
    err = NULL;

    /* 5. cloud-init runcmd prints the marker */
    char *line = NULL;
    while (!line && al_now_mono_ms() - t0 < BOOT_TIMEOUT_S * 1000u) {
        char *text = console_text(console);
        char *hit = text ? strstr(text, marker) : NULL;
        /* the probe's line, not the kernel's echo of the command */
        while (hit && strncmp(hit + strlen(marker), " uptime=", 8) != 0)
            hit = strstr(hit + 1, marker);
        if (hit && strchr(hit, '\n'))
            line = strndup(hit, (size_t)(strchr(hit, '\n') - hit));
        free(text);
        if (!line) {
            struct timespec ts = {0, 200 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    uint64_t boot_ms = al_now_mono_ms() - t0;
    if (!line) {
        char *text = console_text(console);
        size_t len = text ? strlen(text) : 0;
        fail_msg("no runcmd marker after %d s; console tail:\n%s", BOOT_TIMEOUT_S,
                 text ? text + (len > 3000 ? len - 3000 : 0) : "(none)");
        return;
    }
    fprintf(stderr, "# boot-to-runcmd: %.1f s (domain type %s, no NIC): %s\n",
            (double)boot_ms / 1000.0, accel_domain_type(&accel), line);
    char expect[128];
    snprintf(expect, sizeof(expect), "helper=%s", img->guest_helper_sha256);
    assert_non_null(strstr(line, expect));
    assert_non_null(strstr(line, "user=agentlab"));
    assert_non_null(strstr(line, "sudo=yes"));
    assert_non_null(strstr(line, "ssh_host_keys=0"));
    assert_null(strstr(line, "machine_id_bytes=0"));    /* systemd made a fresh one */
    assert_non_null(strstr(line, img->kernel_version)); /* booted the image's kernel */

    free(line);
    free(xml);
    free(seed);
    free(console);
    free(backing);
    free(overlay);
    free(helper);
    free(unit);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_build_and_boot, setup, teardown),
    };
    return test_exit_status(cmocka_run_group_tests(tests, NULL, NULL));
}
