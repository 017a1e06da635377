#include "images/import.h"

#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "images/catalog.h"
#include "runner/base/sha256.h"
#include "runner/base/util.h"

extern char **environ;

static int copy_file(const char *from, const char *to, struct al_error **err)
{
    _cleanup_close_ int in = open(from, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return al_error_set_errno(err, errno, "opening %s", from);
    _cleanup_close_ int out = open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (out < 0)
        return al_error_set_errno(err, errno, "creating %s", to);
    char buf[1 << 16];
    ssize_t n;
    while ((n = read(in, buf, sizeof(buf))) > 0) {
        if (write(out, buf, (size_t)n) != n)
            return al_error_set_errno(err, errno, "writing %s", to);
    }
    if (n < 0)
        return al_error_set_errno(err, errno, "reading %s", from);
    if (fsync(out) < 0)
        return al_error_set_errno(err, errno, "fsync %s", to);
    return 0;
}

/* The virtual size from a qcow2 header (magic "QFI\xfb", size at 24). */
static int qcow2_virtual_size(const char *path, uint64_t *ret, struct al_error **err)
{
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return al_error_set_errno(err, errno, "opening %s", path);
    unsigned char h[32];
    if (read(fd, h, sizeof(h)) != (ssize_t)sizeof(h) || memcmp(h, "QFI\xfb", 4) != 0)
        return al_error_set(err, EINVAL, "%s is not a qcow2 image", path);
    uint64_t v = 0;
    for (int i = 24; i < 32; i++)
        v = (v << 8) | h[i];
    *ret = v;
    return 0;
}

static int qemu_img_create(const char *path, uint64_t size, struct al_error **err)
{
    char sz[32];
    snprintf(sz, sizeof(sz), "%llu", (unsigned long long)size);
    char *argv[] = {"qemu-img", "create", "-q", "-f", "qcow2", (char *)path, sz, NULL};
    pid_t pid;
    int r = posix_spawnp(&pid, "qemu-img", NULL, NULL, argv, environ);
    if (r != 0)
        return al_error_set(err, r, "running qemu-img: %s (install qemu-utils)", strerror(r));
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        return al_error_set(err, EIO, "qemu-img create %s failed", path);
    return 0;
}

int image_import(const char *state_dir, const struct image_import *imp, struct al_error **err)
{
    if (!image_name_is_valid(imp->name))
        return al_error_set(err, EINVAL, "invalid image name \"%s\"", imp->name);
    if (!imp->kernel || !imp->initrd)
        return al_error_set(err, EINVAL, "an imported image needs a kernel and an initrd");
    _cleanup_free_ char *root = image_root_path(state_dir);
    _cleanup_free_ char *dest = image_dir_path(state_dir, imp->name);
    if (!root || !dest)
        return al_error_set(err, ENOMEM, "image paths");
    int r = al_mkdir_p(root, 0711, err);
    if (r < 0)
        return r;
    _cleanup_close_ int lock = image_lock(state_dir, imp->name, true, 10000, err);
    if (lock < 0)
        return lock;
    struct stat st;
    if (stat(dest, &st) == 0 && !imp->replace)
        return al_error_set(err, EEXIST, "image %s exists (replace it with --force)", imp->name);

    _cleanup_free_ char *tmpl = NULL;
    if (asprintf(&tmpl, "%s/%s%s-XXXXXX", root, IMAGE_BUILD_DIR_PREFIX, imp->name) < 0)
        return al_error_set(err, ENOMEM, "image paths");
    if (!mkdtemp(tmpl))
        return al_error_set_errno(err, errno, "creating a directory in %s", root);
    chmod(tmpl, 0755);

    struct image_info info = {.name = (char *)imp->name,
                              .dir = tmpl,
                              .format = "qcow2",
                              .cmdline = (char *)(imp->cmdline ? imp->cmdline : ""),
                              .recipe = "import",
                              .recipe_hash = "",
                              .builder_version = "agentlab " AL_VERSION " (import)"};
    char sha[AL_SHA256_HEX_SIZE];
    _cleanup_free_ char *disk = al_path_join(tmpl, IMAGE_DISK_FILE);
    _cleanup_free_ char *kernel = al_path_join(tmpl, IMAGE_KERNEL_FILE);
    _cleanup_free_ char *initrd = al_path_join(tmpl, IMAGE_INITRD_FILE);
    if (!disk || !kernel || !initrd) {
        r = al_error_set(err, ENOMEM, "image paths");
        goto fail;
    }
    info.disk = disk;
    info.kernel = kernel;
    info.initrd = initrd;
    if ((r = copy_file(imp->kernel, kernel, err)) < 0 ||
        (r = copy_file(imp->initrd, initrd, err)) < 0)
        goto fail;
    if (imp->disk) {
        r = qcow2_virtual_size(imp->disk, &info.virtual_size, err);
        if (r == 0)
            r = copy_file(imp->disk, disk, err);
    } else {
        info.virtual_size = imp->empty_size ? imp->empty_size : 64ull << 20;
        r = qemu_img_create(disk, info.virtual_size, err);
    }
    if (r < 0 || (r = al_sha256_file(disk, sha, &info.size, err)) < 0)
        goto fail;
    info.sha256 = sha;
    info.created_ms = al_now_wall_ms();
    r = image_manifest_write(tmpl, &info, err);
    if (r < 0)
        goto fail;
    if (stat(dest, &st) == 0) {
        _cleanup_free_ char *old = NULL;
        if (asprintf(&old, "%s.old-%d", tmpl, (int)getpid()) < 0 || rename(dest, old) < 0) {
            r = al_error_set_errno(err, errno, "moving the old image %s away", imp->name);
            goto fail;
        }
        struct al_error *rerr = NULL;
        al_rm_rf(old, &rerr);
        al_error_free(rerr);
    }
    if (rename(tmpl, dest) < 0) {
        r = al_error_set_errno(err, errno, "renaming %s to %s", tmpl, dest);
        goto fail;
    }
    return 0;
fail:;
    struct al_error *rerr = NULL;
    al_rm_rf(tmpl, &rerr);
    al_error_free(rerr);
    return r;
}
