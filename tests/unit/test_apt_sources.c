#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "runner/base/util.h"
#include "images/apt_sources.h"

static const char one_line[] =
        "# comment\n"
        "deb http://deb.debian.org/debian bookworm main contrib\n"
        "deb-src http://deb.debian.org/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://mirror.example/debian "
        "bookworm-updates main # trailing comment\n"
        "deb http://security.debian.org/debian-security bookworm-security main\n"
        "deb http://deb.debian.org/debian trixie main\n"
        "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n"
        "deb [broken http://x bookworm main\n"
        "deb http://deb.debian.org/debian bookworm main\n";

static void test_one_line(void **state)
{
    (void)state;
    struct apt_sources s = {0};
    assert_int_equal(apt_sources_parse(&s, one_line, false), 0);
    char *comps[] = {"main", NULL};
    char *text = NULL;
    assert_int_equal(apt_sources_render(&s, "bookworm", comps, &text), 0);
    /* deb-src, other suites, a suite that merely contains the name, the
     * malformed line and the duplicate are gone; options reduce to signed-by */
    assert_string_equal(text,
                        "deb http://deb.debian.org/debian bookworm main\n"
                        "deb [signed-by=/usr/share/keyrings/k.gpg] http://mirror.example/debian "
                        "bookworm-updates main\n"
                        "deb http://security.debian.org/debian-security bookworm-security main\n");
    free(text);
    assert_int_equal(apt_sources_render(&s, "noble", comps, &text), -ENOENT);
    apt_sources_clear(&s);
}

static const char deb822[] = "Types: deb deb-src\n"
                             "URIs: http://deb.debian.org/debian\n"
                             "Suites: bookworm bookworm-updates\n"
                             "Components: main\n"
                             "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
                             "\n"
                             "# disabled\n"
                             "Types: deb\n"
                             "URIs: http://old.example/debian\n"
                             "Suites: bookworm\n"
                             "Enabled: no\n"
                             "\n"
                             "Types: deb\n"
                             "URIs: http://deb.debian.org/debian-security\n"
                             "Suites: bookworm-security\n"
                             "Components: main\n"
                             "Signed-By:\n"
                             " -----BEGIN PGP PUBLIC KEY BLOCK-----\n"
                             " .\n"
                             " mQINBF...\n"
                             " -----END PGP PUBLIC KEY BLOCK-----\n";

static void test_deb822(void **state)
{
    (void)state;
    struct apt_sources s = {0};
    assert_int_equal(apt_sources_parse(&s, deb822, true), 0);
    char *comps[] = {"main", "contrib", NULL};
    char *text = NULL;
    assert_int_equal(apt_sources_render(&s, "bookworm", comps, &text), 0);
    /* an embedded key cannot be written on one line: that entry relies on
     * the chroot's keyring */
    assert_string_equal(
            text, "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
                  "http://deb.debian.org/debian bookworm main contrib\n"
                  "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
                  "http://deb.debian.org/debian bookworm-updates main contrib\n"
                  "deb http://deb.debian.org/debian-security bookworm-security main contrib\n");
    free(text);
    apt_sources_clear(&s);
}

static void test_read_host(void **state)
{
    (void)state;
    char *root = test_tmpdir("apt");
    char *d = NULL;
    assert_true(asprintf(&d, "%s/etc/apt/sources.list.d", root) > 0);
    assert_int_equal(al_mkdir_p(d, 0755, NULL), 0);
    char *p1 = al_path_join(d, "b.sources");
    char *p2 = al_path_join(d, "a.list");
    char *p3 = al_path_join(d, "ignored.save");
    const char *b = "Types: deb\nURIs: http://b.example/debian\nSuites: bookworm\n"
                    "Components: main\n";
    assert_int_equal(al_write_file_atomic(p1, b, strlen(b), 0644, NULL), 0);
    const char *a = "deb http://a.example/debian bookworm main\n";
    assert_int_equal(al_write_file_atomic(p2, a, strlen(a), 0644, NULL), 0);
    const char *ig = "deb http://ignored.example/debian bookworm main\n";
    assert_int_equal(al_write_file_atomic(p3, ig, strlen(ig), 0644, NULL), 0);
    struct apt_sources s = {0};
    assert_int_equal(apt_sources_read_host(&s, root, NULL), 0);
    char *text = NULL;
    assert_int_equal(apt_sources_render(&s, "bookworm", NULL, &text), 0);
    /* sources.list is missing (fine); .d files in name order; other suffixes ignored */
    assert_string_equal(text, "deb http://a.example/debian bookworm main\n"
                              "deb http://b.example/debian bookworm main\n");
    free(text);
    apt_sources_clear(&s);
    free(p1);
    free(p2);
    free(p3);
    free(d);
    test_tmpdir_remove(root);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_one_line),
            cmocka_unit_test(test_deb822),
            cmocka_unit_test(test_read_host),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
