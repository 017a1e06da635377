#include "images/disk.h"

#include <errno.h>
#include <fcntl.h>
#include <guestfs.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "provision/appliance_watchdog.h"
#include "runner/base/buf.h"
#include "runner/base/util.h"

#define GUEST_HELPER_PATH "/usr/local/bin/agentlab-guest"
#define GUEST_UNIT_NAME   "agentlab-guest.service"
#define UNIT_MAX_BYTES    (64u * 1024u)

const char disk_cloud_cfg[] =
        "# Written by agentlab image build. Throwaway VMs get their data from a\n"
        "# NoCloud seed (or nothing): never probe cloud metadata services.\n"
        "datasource_list: [ NoCloud, None ]\n";

static void guestfs_closep(guestfs_h **g)
{
    if (*g)
        guestfs_close(*g);
}

static bool cancelled(const struct disk_build_opts *o)
{
    return o->cancel && o->cancel->requested;
}

/* Records the failure of guestfs call `what`, preferring "cancelled" when
 * the appliance died because of a cancel request. */
static int gfail(guestfs_h *g, const struct disk_build_opts *o, struct al_error **err,
                 const char *fmt, ...) _printf_(4, 5);
static int gfail(guestfs_h *g, const struct disk_build_opts *o, struct al_error **err,
                 const char *fmt, ...)
{
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    if (cancelled(o))
        return al_error_set(err, ECANCELED, "interrupted");
    const char *msg = guestfs_last_error(g);
    int code = guestfs_last_errno(g);
    if (msg && strstr(msg, "No space left on device"))
        code = ENOSPC;
    return al_error_set(err, code > 0 ? code : EIO, "%s: %s", what, msg ? msg : "failed");
}

static int write_file(guestfs_h *g, const struct disk_build_opts *o, const char *path,
                      const char *content, int mode, struct al_error **err)
{
    if (guestfs_write(g, path, content, strlen(content)) < 0)
        return gfail(g, o, err, "writing %s", path);
    if (guestfs_chmod(g, mode, path) < 0)
        return gfail(g, o, err, "chmod %s", path);
    return 0;
}

static void free_strv(char **v)
{
    if (!v)
        return;
    for (char **p = v; *p; p++)
        free(*p);
    free(v);
}

static int rm_glob(guestfs_h *g, const struct disk_build_opts *o, const char *pattern,
                   struct al_error **err)
{
    char **paths = guestfs_glob_expand(g, pattern);
    if (!paths)
        return gfail(g, o, err, "expanding %s", pattern);
    int r = 0;
    for (char **p = paths; *p && r == 0; p++)
        if (guestfs_rm_rf(g, *p) < 0)
            r = gfail(g, o, err, "removing %s", *p);
    free_strv(paths);
    return r;
}

/* "WantedBy=a.target b.target" lines of a unit's [Install] section. */
static int unit_wanted_by(const char *unit_text, char ***ret)
{
    char **v = calloc(1, sizeof(char *));
    size_t n = 0;
    if (!v)
        return -ENOMEM;
    bool install = false;
    _cleanup_free_ char *copy = strdup(unit_text);
    if (!copy) {
        free(v);
        return -ENOMEM;
    }
    char *save = NULL;
    for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        while (*line == ' ' || *line == '\t')
            line++;
        if (line[0] == '[') {
            install = strncmp(line, "[Install]", 9) == 0;
            continue;
        }
        if (!install || strncmp(line, "WantedBy=", 9) != 0)
            continue;
        char *wsave = NULL;
        for (char *w = strtok_r(line + 9, " \t\r", &wsave); w;
             w = strtok_r(NULL, " \t\r", &wsave)) {
            if (strchr(w, '/') || w[0] == '.')
                continue;
            char **nv = realloc(v, (n + 2) * sizeof(char *));
            if (!nv) {
                free_strv(v);
                return -ENOMEM;
            }
            v = nv;
            v[n] = strdup(w);
            v[++n] = NULL;
            if (!v[n - 1]) {
                free_strv(v);
                return -ENOMEM;
            }
        }
    }
    *ret = v;
    return 0;
}

static int install_helper(guestfs_h *g, const struct disk_build_opts *o, struct al_error **err)
{
    const struct disk_seal *s = &o->seal;
    if (guestfs_mkdir_p(g, "/usr/local/bin") < 0)
        return gfail(g, o, err, "creating /usr/local/bin");
    if (guestfs_upload(g, s->helper, GUEST_HELPER_PATH) < 0)
        return gfail(g, o, err, "installing %s", GUEST_HELPER_PATH);
    if (guestfs_chmod(g, 0755, GUEST_HELPER_PATH) < 0)
        return gfail(g, o, err, "chmod %s", GUEST_HELPER_PATH);

    _cleanup_free_ char *unit = NULL;
    int r = al_read_file(s->unit, UNIT_MAX_BYTES, &unit, NULL, err);
    if (r < 0)
        return r;
    const char *unit_path = "/etc/systemd/system/" GUEST_UNIT_NAME;
    r = write_file(g, o, unit_path, unit, 0644, err);
    if (r < 0)
        return r;
    /* enabled the way `systemctl enable` would; a unit without [Install] is
     * started by cloud-init instead */
    char **targets = NULL;
    if (unit_wanted_by(unit, &targets) < 0)
        return al_error_set(err, ENOMEM, "reading %s", s->unit);
    for (char **t = targets; *t && r == 0; t++) {
        _cleanup_free_ char *dir = NULL, *link = NULL;
        if (asprintf(&dir, "/etc/systemd/system/%s.wants", *t) < 0 ||
            asprintf(&link, "%s/" GUEST_UNIT_NAME, dir) < 0)
            r = al_error_set(err, ENOMEM, "enabling the guest helper");
        else if (guestfs_mkdir_p(g, dir) < 0)
            r = gfail(g, o, err, "creating %s", dir);
        else if (guestfs_ln_sf(g, unit_path, link) < 0)
            r = gfail(g, o, err, "enabling %s", GUEST_UNIT_NAME);
    }
    free_strv(targets);
    return r;
}

static int seal(guestfs_h *g, const struct disk_build_opts *o, struct al_error **err)
{
    const struct disk_seal *s = &o->seal;
    int r;
    /* a fresh machine id on every clone's first boot (empty: generated, not "first boot") */
    if (guestfs_is_file(g, "/etc/machine-id") > 0 && guestfs_truncate(g, "/etc/machine-id") < 0)
        return gfail(g, o, err, "emptying /etc/machine-id");
    static const char *const remove[] = {
            "/var/lib/dbus/machine-id",
            "/var/lib/systemd/random-seed",
            "/var/lib/systemd/credential.secret",
            "/etc/ssh/ssh_host_*",
            "/var/lib/cloud",
            "/var/log/cloud-init*",
            "/var/cache/apt/*.bin",
            "/var/lib/apt/lists/*_*",
            "/root/.bash_history",
    };
    for (size_t i = 0; i < ARRAY_SIZE(remove); i++)
        if ((r = rm_glob(g, o, remove[i], err)) < 0)
            return r;

    if (guestfs_mkdir_p(g, "/etc/cloud/cloud.cfg.d") < 0)
        return gfail(g, o, err, "creating /etc/cloud/cloud.cfg.d");
    if ((r = write_file(g, o, "/etc/cloud/cloud.cfg.d/90-agentlab.cfg", disk_cloud_cfg, 0644,
                        err)) < 0)
        return r;

    _cleanup_free_ char *fstab = NULL, *hostname = NULL, *hosts = NULL;
    if (asprintf(&fstab,
                 "# Written by agentlab image build.\n"
                 "LABEL=%s / %s rw,noatime,errors=remount-ro 0 0\n",
                 o->label, o->filesystem) < 0 ||
        asprintf(&hostname, "%s\n", s->hostname) < 0 ||
        asprintf(&hosts, "127.0.0.1 localhost\n127.0.1.1 %s\n::1 localhost ip6-localhost\n",
                 s->hostname) < 0)
        return al_error_set(err, ENOMEM, "sealing");
    if ((r = write_file(g, o, "/etc/fstab", fstab, 0644, err)) < 0 ||
        (r = write_file(g, o, "/etc/hostname", hostname, 0644, err)) < 0 ||
        (r = write_file(g, o, "/etc/hosts", hosts, 0644, err)) < 0)
        return r;

    /* a login prompt on the serial console */
    if (guestfs_mkdir_p(g, "/etc/systemd/system/getty.target.wants") < 0)
        return gfail(g, o, err, "creating getty.target.wants");
    if (guestfs_ln_sf(g, "/lib/systemd/system/serial-getty@.service",
                      "/etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service") < 0)
        return gfail(g, o, err, "enabling the serial console");

    for (char *const *u = s->mask; u && *u; u++) {
        _cleanup_free_ char *link = NULL;
        if (asprintf(&link, "/etc/systemd/system/%s", *u) < 0)
            return al_error_set(err, ENOMEM, "sealing");
        if (guestfs_rm_f(g, link) < 0 || guestfs_ln_sf(g, "/dev/null", link) < 0)
            return gfail(g, o, err, "masking %s", *u);
    }

    if (s->user_sudo) {
        _cleanup_free_ char *sudoers = NULL;
        if (asprintf(&sudoers,
                     "# Written by agentlab image build: the job user of a throwaway VM.\n"
                     "%s ALL=(ALL:ALL) NOPASSWD: ALL\n",
                     s->user) < 0)
            return al_error_set(err, ENOMEM, "sealing");
        if (guestfs_mkdir_p(g, "/etc/sudoers.d") < 0)
            return gfail(g, o, err, "creating /etc/sudoers.d");
        if ((r = write_file(g, o, "/etc/sudoers.d/agentlab", sudoers, 0440, err)) < 0)
            return r;
    }
    return install_helper(g, o, err);
}

static int version_cmp(const void *a, const void *b)
{
    return strverscmp(*(char *const *)a, *(char *const *)b);
}

/* Copies the newest /boot/vmlinuz-V with its initrd.img-V out of the image. */
static int extract_boot(guestfs_h *g, const struct disk_build_opts *o, char **ret_version,
                        struct al_error **err)
{
    char **files = guestfs_ls(g, "/boot");
    if (!files)
        return gfail(g, o, err, "listing /boot");
    size_t n = 0;
    for (char **f = files; *f; f++)
        if (strncmp(*f, "vmlinuz-", 8) == 0)
            files[n++] = *f;
        else
            free(*f);
    files[n] = NULL;
    qsort(files, n, sizeof(char *), version_cmp);
    _cleanup_free_ char *kernel = NULL, *initrd = NULL;
    const char *version = NULL;
    for (size_t i = n; i-- > 0 && !version;) {
        free(kernel);
        free(initrd);
        kernel = initrd = NULL;
        if (asprintf(&kernel, "/boot/%s", files[i]) < 0 ||
            asprintf(&initrd, "/boot/initrd.img-%s", files[i] + 8) < 0) {
            free_strv(files);
            return al_error_set(err, ENOMEM, "copying the kernel");
        }
        if (guestfs_is_file(g, initrd) > 0)
            version = files[i] + 8;
    }
    _cleanup_free_ char *v = version ? strdup(version) : NULL;
    free_strv(files);
    if (!version)
        return al_error_set(err, ENOENT,
                            "the image has no /boot/vmlinuz-VERSION with a matching "
                            "initrd.img-VERSION (does the recipe install a kernel?)");
    _cleanup_free_ char *okernel = al_path_join(o->out_dir, IMAGE_KERNEL_FILE);
    _cleanup_free_ char *oinitrd = al_path_join(o->out_dir, IMAGE_INITRD_FILE);
    if (!v || !okernel || !oinitrd)
        return al_error_set(err, ENOMEM, "copying the kernel");
    if (guestfs_download(g, kernel, okernel) < 0)
        return gfail(g, o, err, "copying %s out of the image", kernel);
    if (guestfs_download(g, initrd, oinitrd) < 0)
        return gfail(g, o, err, "copying %s out of the image", initrd);
    /* QEMU runs as another user under qemu:///system */
    if (chmod(okernel, 0644) < 0 || chmod(oinitrd, 0644) < 0)
        return al_error_set_errno(err, errno, "chmod %s", okernel);
    *ret_version = TAKE_PTR(v);
    return 0;
}

/* Everything after the appliance is up. */
static int populate(guestfs_h *g, const struct disk_build_opts *o, char **ret_version,
                    struct al_error **err)
{
    if (cancelled(o))
        return al_error_set(err, ECANCELED, "interrupted");
    if (guestfs_mkfs_opts(g, o->filesystem, "/dev/sda", GUESTFS_MKFS_OPTS_LABEL, o->label, -1) < 0)
        return gfail(g, o, err, "making the %s filesystem", o->filesystem);
    if (guestfs_mount(g, "/dev/sda", "/") < 0)
        return gfail(g, o, err, "mounting the new filesystem");
    if (guestfs_tar_in_opts(g, o->rootfs_tar, "/", GUESTFS_TAR_IN_OPTS_XATTRS, 1, -1) < 0)
        return gfail(g, o, err, "unpacking the rootfs");

    if (o->phase)
        o->phase(o->phase_data, IMAGE_PHASE_SEAL);
    int r = seal(g, o, err);
    if (r < 0)
        return r;
    _cleanup_free_ char *version = NULL;
    r = extract_boot(g, o, &version, err);
    if (r < 0)
        return r;
    _cleanup_free_ char *status = al_path_join(o->out_dir, "dpkg-status");
    if (!status)
        return al_error_set(err, ENOMEM, "sealing");
    if (guestfs_download(g, "/var/lib/dpkg/status", status) < 0)
        return gfail(g, o, err, "reading the package list");
    /* unused blocks back to the host: a smaller qcow2 */
    if (guestfs_fstrim(g, "/", -1) < 0)
        return gfail(g, o, err, "trimming the filesystem");
    if (guestfs_umount_all(g) < 0)
        return gfail(g, o, err, "unmounting");
    if (guestfs_shutdown(g) < 0)
        return gfail(g, o, err, "shutting down the appliance");
    *ret_version = TAKE_PTR(version);
    return 0;
}

static int disk_build_once(const struct disk_build_opts *o, bool force_tcg,
                           struct disk_build_result *ret, struct al_error **err)
{
    _cleanup_(guestfs_closep) guestfs_h *g = guestfs_create();
    if (!g)
        return al_error_set(err, EIO, "cannot create a libguestfs handle");
    /* errors are collected with guestfs_last_error(), not printed */
    guestfs_set_error_handler(g, NULL, NULL);
    const char *backend = getenv("LIBGUESTFS_BACKEND");
    if ((!backend || !backend[0]) && guestfs_set_backend(g, "direct") < 0)
        return gfail(g, o, err, "selecting the libguestfs backend");
    if (force_tcg && guestfs_set_backend_setting(g, "force_tcg", "1") < 0)
        return gfail(g, o, err, "forcing TCG");

    if (guestfs_disk_create(g, o->disk, "qcow2", (int64_t)o->size,
                            GUESTFS_DISK_CREATE_PREALLOCATION, "off", -1) < 0)
        return gfail(g, o, err, "creating %s", o->disk);
    /* flushes are pointless for a disk that is thrown away on failure */
    if (guestfs_add_drive_opts(g, o->disk, GUESTFS_ADD_DRIVE_OPTS_FORMAT, "qcow2",
                               GUESTFS_ADD_DRIVE_OPTS_CACHEMODE, "unsafe",
                               GUESTFS_ADD_DRIVE_OPTS_DISCARD, "besteffort", -1) < 0)
        return gfail(g, o, err, "adding %s", o->disk);
    if (cancelled(o))
        return al_error_set(err, ECANCELED, "interrupted");
    /* under KVM, a launch that hangs is ended early (appliance_watchdog.h) */
    int r = appliance_launch(g, force_tcg ? 0 : APPLIANCE_WATCHDOG_KVM_S);
    if (r == -ETIMEDOUT)
        return al_error_set(err, ETIMEDOUT,
                            "the libguestfs appliance showed no sign of life in %d s under KVM",
                            APPLIANCE_WATCHDOG_KVM_S);
    if (r < 0)
        return gfail(g, o, err, "starting the libguestfs appliance");
    if (o->cancel) {
        int pid = guestfs_get_pid(g);
        o->cancel->pid_pgrp = 0;
        o->cancel->pid = pid > 0 ? pid : 0;
    }
    char *version = NULL;
    r = populate(g, o, &version, err);
    if (o->cancel)
        o->cancel->pid = 0;
    if (r < 0)
        return r;
    ret->kernel_version = version;
    return 0;
}

int disk_build(const struct disk_build_opts *o, struct disk_build_result *ret,
               struct al_error **err)
{
    int r = disk_build_once(o, o->force_tcg, ret, err);
    if (r != -ETIMEDOUT || o->force_tcg || !o->tcg_fallback)
        return r;
    /* KVM ran the accelerator probe's kernel but hangs the appliance */
    snprintf(ret->kvm_failure, sizeof(ret->kvm_failure), "%s",
             err && *err ? al_error_message(*err) : "the libguestfs appliance hung under KVM");
    if (err && *err)
        *err = al_error_free(*err);
    (void)unlink(o->disk);
    return disk_build_once(o, true, ret, err);
}
