#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runner/base/sha256.h"
#include "runner/base/util.h"
#include "images/recipe.h"

struct fixture {
    char *root; /* a recipes directory */
};

static void write_file(const char *dir, const char *rel, const char *text, mode_t mode)
{
    char *path = al_path_join(dir, rel);
    char *slash = strrchr(path, '/');
    *slash = '\0';
    assert_int_equal(al_mkdir_p(path, 0755, NULL), 0);
    *slash = '/';
    assert_int_equal(al_write_file_atomic(path, text, strlen(text), mode, NULL), 0);
    free(path);
}

static const char good[] =
        "[recipe]\n"
        "description = test image\n"
        "[bootstrap]\n"
        "suite = bookworm\n"
        "packages = systemd-sysv, udev\n"
        "    linux-image-amd64\n"
        "mirror = http://deb.example/debian\n"
        "mirror = deb http://sec.example/debian-security bookworm-security main\n"
        "environment = INITRD=No A=b\n"
        "[disk]\n"
        "size = 4G\n"
        "[seal]\n"
        "mask = apt-daily.timer serial-getty@ttyS1.service\n"
        "user_sudo = yes\n";

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    f->root = test_tmpdir("recipe");
    char *dir = al_path_join(f->root, "deb");
    write_file(dir, "recipe.conf", good, 0644);
    write_file(dir, "hooks/customize10-x", "#!/bin/sh\ntrue\n", 0755);
    write_file(dir, "rootfs/etc/motd", "hello\n", 0644);
    free(dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    test_tmpdir_remove(f->root);
    free(f);
    return 0;
}

static void test_load(void **state)
{
    struct fixture *f = *state;
    char *dir = al_path_join(f->root, "deb");
    struct recipe *r = NULL;
    struct al_error *err = NULL;
    assert_int_equal(recipe_load(dir, &r, &err), 0);
    assert_string_equal(r->name, "deb");
    assert_string_equal(r->suite, "bookworm");
    assert_string_equal(r->variant, "minbase");
    assert_string_equal(r->packages[0], "systemd-sysv");
    assert_string_equal(r->packages[2], "linux-image-amd64");
    assert_null(r->packages[3]);
    assert_string_equal(r->mirrors[1],
                        "deb http://sec.example/debian-security bookworm-security main");
    assert_string_equal(r->components[0], "main");
    assert_int_equal(r->size, 4ull << 30);
    assert_string_equal(r->filesystem, "ext4");
    assert_string_equal(r->label, "agentlab-root");
    assert_string_equal(r->user, "agentlab");
    assert_true(r->user_sudo);
    assert_string_equal(r->mask[1], "serial-getty@ttyS1.service");
    assert_non_null(strstr(r->cmdline, "root=/dev/vda"));
    assert_non_null(r->hooks_dir);
    assert_non_null(r->rootfs_dir);
    recipe_free(r);
    free(dir);
}

static void expect_error(struct fixture *f, const char *text, const char *needle)
{
    char *dir = al_path_join(f->root, "bad");
    write_file(dir, "recipe.conf", text, 0644);
    struct recipe *r = NULL;
    struct al_error *err = NULL;
    assert_true(recipe_load(dir, &r, &err) < 0);
    assert_null(r);
    if (!strstr(al_error_message(err), needle))
        fail_msg("error \"%s\" lacks \"%s\"", al_error_message(err), needle);
    al_error_free(err);
    free(dir);
}

static void test_errors(void **state)
{
    struct fixture *f = *state;
    expect_error(f, "[bootstrap]\nsuite = bookworm\npackages = a\nsize = 4G\n",
                 "recipe.conf:4: unknown key \"size\" in [bootstrap]");
    expect_error(f, "[bootstrap]\nsuite = bookworm\npackages = a\n[disk]\nsize = huge\n",
                 "bad size \"huge\"");
    expect_error(f, "[bootstrap]\npackages = a\n", "suite is required");
    expect_error(f, "[bootstrap]\nsuite = bookworm\npackages = a;rm\n", "bad package name");
    expect_error(f, "[extras]\nx = 1\n", "unknown section [extras]");
    expect_error(f, "[bootstrap]\nsuite = bookworm\npackages = a\nenvironment = NOVALUE\n",
                 "not KEY=VALUE");
    expect_error(f, "[bootstrap]\nsuite = b\npackages = a\n[boot]\ncmdline = console=ttyS0\n",
                 "root device");
}

static void test_find_and_list(void **state)
{
    struct fixture *f = *state;
    char *path[] = {f->root, "/nonexistent", NULL};
    char *dir = NULL;
    struct al_error *err = NULL;
    assert_int_equal(recipe_find(path, "deb", &dir, &err), 0);
    free(dir);
    assert_int_equal(recipe_find(path, "ubuntu-24.04", &dir, &err), -ENOENT);
    /* the message says what exists and where we looked */
    assert_non_null(strstr(al_error_message(err), "unknown recipe \"ubuntu-24.04\""));
    assert_non_null(strstr(al_error_message(err), "available: deb"));
    assert_non_null(strstr(al_error_message(err), f->root));
    al_error_free(err);
    err = NULL;
    assert_int_equal(recipe_find(path, "../etc", &dir, &err), -EINVAL);
    al_error_free(err);
    char **names = NULL;
    assert_int_equal(recipe_list(path, &names, NULL), 0);
    assert_string_equal(names[0], "deb");
    assert_null(names[1]);
    strv_free(names);
}

static void tree_hash(const char *dir, char out[AL_SHA256_HEX_SIZE])
{
    struct al_sha256 ctx;
    al_sha256_init(&ctx);
    assert_int_equal(recipe_hash_tree(dir, &ctx, NULL), 0);
    al_sha256_final_hex(&ctx, out);
}

static void test_hash(void **state)
{
    struct fixture *f = *state;
    char *dir = al_path_join(f->root, "deb");
    char h1[AL_SHA256_HEX_SIZE], h2[AL_SHA256_HEX_SIZE];
    tree_hash(dir, h1);
    tree_hash(dir, h2);
    assert_string_equal(h1, h2);
    /* content, mode and new files all change the hash */
    write_file(dir, "rootfs/etc/motd", "hello!\n", 0644);
    tree_hash(dir, h2);
    assert_string_not_equal(h1, h2);
    memcpy(h1, h2, sizeof(h1));
    char *hook = al_path_join(dir, "hooks/customize10-x");
    assert_int_equal(chmod(hook, 0644), 0);
    tree_hash(dir, h2);
    assert_string_not_equal(h1, h2);
    memcpy(h1, h2, sizeof(h1));
    write_file(dir, "hooks/customize20-y", "", 0755);
    tree_hash(dir, h2);
    assert_string_not_equal(h1, h2);
    free(hook);
    free(dir);
}

/* The shipped recipes parse. */
static void test_shipped_recipe(void **state)
{
    (void)state;
    const char *src = getenv("AL_SOURCE_DIR");
    if (!src)
        test_skip("AL_SOURCE_DIR is not set: run through ctest");
    static const char *const names[] = {"debian-12", "debian-12-actions"};
    for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
        char *dir = NULL;
        assert_true(asprintf(&dir, "%s/images/recipes/%s", src, names[i]) > 0);
        struct recipe *r = NULL;
        struct al_error *err = NULL;
        if (recipe_load(dir, &r, &err) < 0)
            fail_msg("%s: %s", names[i], al_error_message(err));
        assert_string_equal(r->suite, "bookworm");
        assert_null(r->mirrors); /* the host's sources, never a hard-coded mirror */
        /* the actions recipe brings the runner's hook along */
        assert_non_null(r->hooks_dir);
        if (i == 1) {
            char *hook = NULL;
            assert_true(asprintf(&hook, "%s/customize60-actions-runner", r->hooks_dir) > 0);
            assert_int_equal(access(hook, X_OK), 0);
            free(hook);
        }
        recipe_free(r);
        free(dir);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_load, setup, teardown),
            cmocka_unit_test_setup_teardown(test_errors, setup, teardown),
            cmocka_unit_test_setup_teardown(test_find_and_list, setup, teardown),
            cmocka_unit_test_setup_teardown(test_hash, setup, teardown),
            cmocka_unit_test(test_shipped_recipe),
    };
    return test_exit_status(cmocka_run_group_tests(tests, NULL, NULL));
}
