#include "test_util.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runner/base/util.h"
#include "images/catalog.h"

struct fixture {
    char *state;
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    f->state = test_tmpdir("catalog");
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    test_tmpdir_remove(f->state);
    free(f);
    return 0;
}

/* Creates <state>/images/<dir_name> with a manifest for image `name`. */
static void make_image(const char *state, const char *dir_name, const char *name)
{
    char *root = image_root_path(state);
    char *dir = al_path_join(root, dir_name);
    assert_int_equal(al_mkdir_p(dir, 0755, NULL), 0);
    struct image_package pkgs[] = {{"bash", "5.2.15-2+b2"}, {"zlib1g", "1:1.2.13"}};
    struct image_info i = {
            .name = (char *)name,
            .disk = al_path_join(dir, "disk.qcow2"),
            .kernel = al_path_join(dir, "vmlinuz"),
            .initrd = al_path_join(dir, "initrd.img"),
            .cmdline = "root=/dev/vda rw console=ttyS0",
            .recipe = "debian-12",
            .recipe_hash = "abc123",
            .sha256 = "00ff",
            .size = 123456789,
            .virtual_size = 8ull << 30,
            .created_ms = 1795849200123,
            .kernel_version = "6.1.0-56-amd64",
            .builder_version = "agentlab test",
            .packages = pkgs,
            .n_packages = 2,
            .build_ms = {70000, 56000, 3000, 2000},
    };
    struct al_error *err = NULL;
    if (image_manifest_write(dir, &i, &err) < 0)
        fail_msg("%s", al_error_message(err));
    free(i.disk);
    free(i.kernel);
    free(i.initrd);
    free(dir);
    free(root);
}

static void test_roundtrip(void **state)
{
    struct fixture *f = *state;
    make_image(f->state, "debian-12", "debian-12");
    struct image_info *i = NULL;
    struct al_error *err = NULL;
    assert_int_equal(image_find(f->state, "debian-12", &i, &err), 0);
    char *dir = image_dir_path(f->state, "debian-12");
    char *disk = al_path_join(dir, "disk.qcow2");
    assert_string_equal(i->dir, dir);
    assert_string_equal(i->disk, disk); /* absolute again */
    assert_string_equal(i->format, "qcow2");
    assert_string_equal(i->cmdline, "root=/dev/vda rw console=ttyS0");
    assert_int_equal(i->size, 123456789);
    assert_int_equal(i->virtual_size, 8ull << 30);
    assert_int_equal(i->created_ms, 1795849200123);
    assert_int_equal(i->n_packages, 2);
    assert_string_equal(i->packages[1].name, "zlib1g");
    assert_string_equal(i->packages[1].version, "1:1.2.13");
    assert_int_equal(i->build_ms[IMAGE_PHASE_DISK], 56000);
    assert_string_equal(i->kernel_version, "6.1.0-56-amd64");

    /* the stored manifest names files relative to the directory */
    char *mpath = al_path_join(dir, "manifest.json");
    char *text = NULL;
    assert_int_equal(al_read_file(mpath, 1 << 20, &text, NULL, NULL), 0);
    assert_non_null(strstr(text, "\"disk\": \"disk.qcow2\""));
    assert_null(strstr(text, dir));
    free(text);
    char *json = NULL;
    assert_int_equal(image_info_to_json(&i, 1, false, &json, NULL), 0);
    assert_non_null(strstr(json, disk));
    free(json);
    free(mpath);
    free(disk);
    free(dir);
    image_info_free(i);
}

static void test_only_complete_images_listed(void **state)
{
    struct fixture *f = *state;
    make_image(f->state, "b", "b");
    make_image(f->state, "a", "a");
    make_image(f->state, ".build-c-XXXX", "c");  /* a build in progress */
    make_image(f->state, "renamed", "original"); /* name mismatch */
    char *root = image_root_path(f->state);
    char *half = al_path_join(root, "half"); /* no manifest yet */
    assert_int_equal(al_mkdir_p(half, 0755, NULL), 0);
    char *bad = al_path_join(root, "bad");
    assert_int_equal(al_mkdir_p(bad, 0755, NULL), 0);
    char *badm = al_path_join(bad, "manifest.json");
    assert_int_equal(al_write_file_atomic(badm, "{\"schema\": 1, \"name\": ", 22, 0644, NULL), 0);

    struct image_info **v = NULL;
    size_t n = 0;
    assert_int_equal(image_list(f->state, &v, &n, NULL), 0);
    assert_int_equal(n, 2);
    assert_string_equal(v[0]->name, "a");
    assert_string_equal(v[1]->name, "b");
    char *json = NULL;
    assert_int_equal(image_info_to_json(v, n, true, &json, NULL), 0);
    assert_true(json[0] == '[');
    free(json);
    image_info_list_free(v, n);

    struct image_info *i = NULL;
    struct al_error *err = NULL;
    assert_int_equal(image_find(f->state, "half", &i, &err), -ENOENT);
    assert_non_null(strstr(al_error_message(err), "available: a, b"));
    al_error_free(err);
    err = NULL;
    assert_int_equal(image_find(f->state, "bad", &i, &err), -EINVAL);
    assert_non_null(strstr(al_error_message(err), "manifest.json"));
    al_error_free(err);
    free(badm);
    free(bad);
    free(half);
    free(root);
}

static void test_empty_state(void **state)
{
    struct fixture *f = *state;
    struct image_info **v = NULL;
    size_t n = 7;
    assert_int_equal(image_list(f->state, &v, &n, NULL), 0);
    assert_int_equal(n, 0);
    free(v);
    struct image_info *i = NULL;
    struct al_error *err = NULL;
    assert_int_equal(image_find(f->state, "debian-12", &i, &err), -ENOENT);
    assert_non_null(strstr(al_error_message(err), "agentlab image build debian-12"));
    al_error_free(err);
    err = NULL;
    assert_int_equal(image_find(f->state, "../x", &i, &err), -EINVAL);
    al_error_free(err);
}

static pid_t dead_pid(void)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(0);
    int st;
    waitpid(pid, &st, 0);
    return pid;
}

static void test_in_use(void **state)
{
    struct fixture *f = *state;
    make_image(f->state, "img", "img");
    struct al_error *err = NULL;
    char *lock = NULL;
    assert_int_equal(image_use_acquire(f->state, "img", getpid(), &lock, &err), 0);
    assert_non_null(strstr(lock, "/img/.inuse."));

    char *dir = image_dir_path(f->state, "img");
    size_t n = 0;
    assert_int_equal(image_live_users(dir, NULL, &n, NULL), 0);
    assert_int_equal(n, 1);
    assert_int_equal(image_remove(f->state, "img", NULL, &err), -EBUSY);
    assert_non_null(strstr(al_error_message(err), "in use by process"));
    al_error_free(err);
    err = NULL;
    struct image_info *i = NULL;
    assert_int_equal(image_find(f->state, "img", &i, NULL), 0); /* still there */
    image_info_free(i);

    assert_int_equal(image_use_release(lock, NULL), 0);
    free(lock);
    /* a process that died without releasing does not count */
    char *stale = NULL;
    assert_true(asprintf(&stale, "%s/.inuse.%d", dir, (int)dead_pid()) > 0);
    int fd = open(stale, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(image_remove(f->state, "img", NULL, &err), 0);
    struct stat st;
    assert_int_equal(stat(dir, &st), -1);
    assert_int_equal(image_find(f->state, "img", &i, NULL), -ENOENT);
    assert_int_equal(image_remove(f->state, "img", NULL, &err), -ENOENT);
    al_error_free(err);
    free(stale);
    free(dir);
}

static void test_lock(void **state)
{
    struct fixture *f = *state;
    struct al_error *err = NULL;
    int a = image_lock(f->state, "x", false, 0, NULL);
    int b = image_lock(f->state, "x", false, 0, NULL);
    assert_true(a >= 0 && b >= 0); /* shared locks coexist */
    assert_int_equal(image_lock(f->state, "x", true, 100, &err), -EBUSY);
    assert_non_null(strstr(al_error_message(err), "locked"));
    al_error_free(err);
    close(a);
    close(b);
    int c = image_lock(f->state, "x", true, 0, NULL);
    assert_true(c >= 0);
    close(c);

    /* the builder's lock file: the caller's busy message, no symlink */
    char *path = al_path_join(f->state, "build.lock");
    int d = image_lock_path(path, true, false, 0, "another build is running", NULL);
    assert_true(d >= 0);
    assert_true(fcntl(d, F_GETFD) & FD_CLOEXEC);
    err = NULL;
    assert_int_equal(image_lock_path(path, false, false, 0, "another build is running", &err),
                     -EBUSY);
    assert_string_equal(al_error_message(err), "another build is running");
    err = al_error_free(err);
    close(d);
    /* inherited by children: no close-on-exec */
    d = image_lock_path(path, true, true, 0, "busy", NULL);
    assert_true(d >= 0);
    assert_false(fcntl(d, F_GETFD) & FD_CLOEXEC);
    close(d);
    char *link = al_path_join(f->state, "link.lock");
    assert_int_equal(symlink(path, link), 0);
    assert_int_equal(image_lock_path(link, true, true, 0, "busy", &err), -ELOOP);
    al_error_free(err);
    free(link);
    free(path);
}

static void test_names(void **state)
{
    (void)state;
    assert_true(image_name_is_valid("debian-12"));
    assert_true(image_name_is_valid("ubuntu-24.04"));
    assert_false(image_name_is_valid(""));
    assert_false(image_name_is_valid(".hidden"));
    assert_false(image_name_is_valid("a/b"));
    assert_false(image_name_is_valid(".."));
    assert_false(image_name_is_valid("x.lock"));
    assert_false(image_name_is_valid("with space"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_roundtrip, setup, teardown),
            cmocka_unit_test_setup_teardown(test_only_complete_images_listed, setup, teardown),
            cmocka_unit_test_setup_teardown(test_empty_state, setup, teardown),
            cmocka_unit_test_setup_teardown(test_in_use, setup, teardown),
            cmocka_unit_test_setup_teardown(test_lock, setup, teardown),
            cmocka_unit_test(test_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
