/* images/sweep.c: the build dirs of killed image builds and imports are
 * removed when, and only when, nobody holds their image's locks. */
#include "test_util.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "images/catalog.h"
#include "images/sweep.h"
#include "runner/base/util.h"

struct ctx {
    char state[64];
    char *root;
};

static int setup(void **state)
{
    struct ctx *c = calloc(1, sizeof(*c));
    snprintf(c->state, sizeof(c->state), "/tmp/al-sweep-XXXXXX");
    assert_non_null(mkdtemp(c->state));
    c->root = image_root_path(c->state);
    assert_int_equal(al_mkdir_p(c->root, 0755, NULL), 0);
    *state = c;
    return 0;
}

static int teardown(void **state)
{
    struct ctx *c = *state;
    assert_int_equal(al_rm_rf(c->state, NULL), 0);
    free(c->root);
    free(c);
    return 0;
}

/* root/entry with a file (and a subdirectory) in it */
static char *make_dir(struct ctx *c, const char *entry)
{
    char *dir = al_path_join(c->root, entry);
    assert_int_equal(al_mkdir_p(dir, 0755, NULL), 0);
    char *sub = al_path_join(dir, "rootfs/etc");
    assert_int_equal(al_mkdir_p(sub, 0755, NULL), 0);
    char *f = al_path_join(sub, "hostname");
    int fd = open(f, O_WRONLY | O_CREAT, 0644);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "x\n", 2), 2);
    close(fd);
    free(f);
    free(sub);
    return dir;
}

static bool exists(const char *p)
{
    struct stat st;
    return lstat(p, &st) == 0;
}

static void test_stale_removed_others_kept(void **state)
{
    struct ctx *c = *state;
    char *stale = make_dir(c, ".build-debian-12-a1B2c3");
    char *stale2 = make_dir(c, ".build-micro-zzzzzz");
    char *image = make_dir(c, "debian-12");          /* an image: never touched */
    char *odd = make_dir(c, ".build-");              /* not a build dir name */
    char *odd2 = make_dir(c, ".build-x-toolong123"); /* no mkdtemp suffix */
    char *odd3 = make_dir(c, ".build-../x-abcdef");  /* not an image name */
    unsigned n = 99;
    struct al_error *err = NULL;
    assert_int_equal(image_sweep_builds(c->state, NULL, false, &n, &err), 0);
    assert_null(err);
    assert_int_equal(n, 2);
    assert_false(exists(stale));
    assert_false(exists(stale2));
    assert_true(exists(image));
    assert_true(exists(odd));
    assert_true(exists(odd2));
    /* nothing to do the second time */
    assert_int_equal(image_sweep_builds(c->state, NULL, false, &n, NULL), 0);
    assert_int_equal(n, 0);
    free(stale);
    free(stale2);
    free(image);
    free(odd);
    free(odd2);
    free(odd3);
}

static void test_only_named_image(void **state)
{
    struct ctx *c = *state;
    char *a = make_dir(c, ".build-debian-12-aaaaaa");
    char *b = make_dir(c, ".build-debian-123456");
    unsigned n = 0;
    assert_int_equal(image_sweep_builds(c->state, "debian-12", false, &n, NULL), 0);
    assert_int_equal(n, 1);
    assert_false(exists(a));
    assert_true(exists(b)); /* image "debian" */
    free(a);
    free(b);
}

/* A running build (its build lock held, here by a child that inherited it
 * like mmdebstrap does) or an import (the image lock) keeps the dir. */
static void test_live_dirs_kept(void **state)
{
    struct ctx *c = *state;
    char *dir = make_dir(c, ".build-debian-12-bbbbbb");
    int lock = image_build_lock(c->root, "debian-12", NULL);
    assert_true(lock >= 0);
    /* a second build of the same image is refused */
    struct al_error *err = NULL;
    assert_int_equal(image_build_lock(c->root, "debian-12", &err), -EBUSY);
    al_error_free(err);
    int pipefd[2];
    assert_int_equal(pipe(pipefd), 0);
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        /* the "mmdebstrap" of a build whose parent was killed: it holds
         * the inherited lock until it exits */
        close(pipefd[1]);
        char b;
        (void)!read(pipefd[0], &b, 1);
        _exit(0);
    }
    close(pipefd[0]);
    close(lock); /* the builder is gone; its child is not */
    unsigned n = 99;
    assert_int_equal(image_sweep_builds(c->state, NULL, false, &n, NULL), 0);
    assert_int_equal(n, 0);
    assert_true(exists(dir));
    close(pipefd[1]);
    int st;
    assert_int_equal(waitpid(child, &st, 0), child);
    /* an import holds the image lock */
    int ilock = image_lock(c->state, "debian-12", true, 0, NULL);
    assert_true(ilock >= 0);
    assert_int_equal(image_sweep_builds(c->state, NULL, false, &n, NULL), 0);
    assert_int_equal(n, 0);
    assert_true(exists(dir));
    close(ilock);
    /* the builder itself sweeps its image's leftovers under its own lock */
    lock = image_build_lock(c->root, "debian-12", NULL);
    assert_true(lock >= 0);
    assert_int_equal(image_sweep_builds(c->state, "debian-12", true, &n, NULL), 0);
    assert_int_equal(n, 1);
    assert_false(exists(dir));
    close(lock);
    free(dir);
}

/* What an interrupted mmdebstrap left mounted below the dir is detached
 * first, and nothing on the mounted file system is removed. */
static void test_mounts_detached(void **state)
{
    struct ctx *c = *state;
    if (geteuid() != 0)
        test_skip("mounting a tmpfs needs root");
    char *dir = make_dir(c, ".build-debian-12-cccccc");
    char *proc = al_path_join(dir, "rootfs/proc");
    assert_int_equal(al_mkdir_p(proc, 0755, NULL), 0);
    assert_int_equal(mount("tmpfs", proc, "tmpfs", 0, "size=1m"), 0);
    /* a file on the mounted tmpfs, and a bind mount of it elsewhere to
     * see that the file survives */
    char *keep = al_path_join(c->state, "keep");
    assert_int_equal(al_mkdir_p(keep, 0755, NULL), 0);
    assert_int_equal(mount(proc, keep, "none", MS_BIND, NULL), 0);
    char *f = al_path_join(proc, "precious");
    int fd = open(f, O_WRONLY | O_CREAT, 0644);
    assert_true(fd >= 0);
    close(fd);
    unsigned n = 0;
    assert_int_equal(image_sweep_builds(c->state, NULL, false, &n, NULL), 0);
    assert_int_equal(n, 1);
    assert_false(exists(dir));
    char *kept = al_path_join(keep, "precious");
    assert_true(exists(kept));
    assert_int_equal(umount2(keep, MNT_DETACH), 0);
    free(kept);
    free(f);
    free(keep);
    free(proc);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_stale_removed_others_kept, setup, teardown),
            cmocka_unit_test_setup_teardown(test_only_named_image, setup, teardown),
            cmocka_unit_test_setup_teardown(test_live_dirs_kept, setup, teardown),
            cmocka_unit_test_setup_teardown(test_mounts_detached, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
