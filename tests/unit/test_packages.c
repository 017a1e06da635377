#include "test_util.h"

#include <stdlib.h>
#include <string.h>

#include "images/packages.h"

static const char status[] =
        "Package: zlib1g\n"
        "Status: install ok installed\n"
        "Priority: optional\n"
        "Architecture: amd64\n"
        "Version: 1:1.2.13.dfsg-1\n"
        "Description: compression library - runtime\n"
        " zlib is a library implementing the deflate compression method found\n"
        " Version: 9.9 (a continuation line, not a field)\n"
        "\n"
        "Package: removed-pkg\n"
        "Status: deinstall ok config-files\n"
        "Architecture: amd64\n"
        "Version: 1.0\n"
        "\n"
        "Package: base-files\n"
        "Status: install ok installed\n"
        "Architecture: amd64\n"
        "Version: 12.4+deb12u5\n"
        "\n"
        "Package: libc6\n"
        "Status: install ok installed\n"
        "Architecture: i386\n"
        "Version: 2.36-9\n"
        "\n"
        "Package: tzdata\n"
        "Status: install ok installed\n"
        "Architecture: all\n"
        "Version: 2024a-0+deb12u1"; /* no final newline */

static void test_parse(void **state)
{
    (void)state;
    struct image_package *v = NULL;
    size_t n = 0;
    assert_int_equal(dpkg_status_parse(status, &v, &n, NULL), 0);
    assert_int_equal(n, 4);
    /* sorted; half-removed packages skipped; foreign arch qualified */
    assert_string_equal(v[0].name, "base-files");
    assert_string_equal(v[0].version, "12.4+deb12u5");
    assert_string_equal(v[1].name, "libc6:i386");
    assert_string_equal(v[2].name, "tzdata");
    assert_string_equal(v[2].version, "2024a-0+deb12u1");
    assert_string_equal(v[3].name, "zlib1g");
    assert_string_equal(v[3].version, "1:1.2.13.dfsg-1");
    image_packages_free(v, n);

    assert_int_equal(dpkg_status_parse("", &v, &n, NULL), 0);
    assert_int_equal(n, 0);
    image_packages_free(v, n);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_parse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
