#include "test_util.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "runner/base/buf.h"
#include "runner/base/hex.h"
#include "runner/base/utf8.h"
#include "runner/base/util.h"
#include "runner/base/xml.h"

static void test_parse_int(void **state)
{
    (void)state;
    int v = 0;
    assert_int_equal(al_parse_int("42", 0, 100, &v), 0);
    assert_int_equal(v, 42);
    assert_int_equal(al_parse_int("-5", -10, 10, &v), 0);
    assert_int_equal(v, -5);
    assert_int_equal(al_parse_int("101", 0, 100, &v), -ERANGE);
    assert_int_equal(al_parse_int("", 0, 100, &v), -EINVAL);
    assert_int_equal(al_parse_int("12abc", 0, 100, &v), -EINVAL);
    assert_int_equal(al_parse_int(" 12", 0, 100, &v), 0); /* strtol skips leading space */
    assert_int_equal(al_parse_int("99999999999999999999", 0, 100, &v), -ERANGE);
    assert_int_equal(v, 12);
    uint64_t u;
    assert_int_equal(al_parse_uint64("-1", UINT64_MAX, &u), -EINVAL);
}

static void test_parse_duration_size(void **state)
{
    (void)state;
    int64_t s;
    assert_int_equal(al_parse_duration("90", &s), 0);
    assert_int_equal(s, 90);
    assert_int_equal(al_parse_duration("15m", &s), 0);
    assert_int_equal(s, 900);
    assert_int_equal(al_parse_duration("2h", &s), 0);
    assert_int_equal(s, 7200);
    assert_int_equal(al_parse_duration("7d", &s), 0);
    assert_int_equal(s, 7 * 86400);
    assert_int_equal(al_parse_duration("5x", &s), -EINVAL);
    assert_int_equal(al_parse_duration("m", &s), -EINVAL);
    uint64_t b;
    assert_int_equal(al_parse_size("64K", &b), 0);
    assert_int_equal(b, 65536);
    assert_int_equal(al_parse_size("2G", &b), 0);
    assert_int_equal(b, 2ull << 30);
    assert_int_equal(al_parse_size("99999999999T", &b), -ERANGE);
    assert_int_equal(al_parse_size("16383T", &b), 0);
    assert_int_equal(b, 16383ull << 40);
    assert_int_equal(al_parse_size("17", &b), 0);
    assert_int_equal(b, 17);
    assert_int_equal(al_parse_size("3B", &b), 0);
    assert_int_equal(b, 3);
    assert_int_equal(al_parse_size("1P", &b), -EINVAL);
    assert_int_equal(al_parse_duration("106751991167300d", &s), 0);
    assert_int_equal(al_parse_duration("106751991167301d", &s), -ERANGE);
    assert_int_equal(al_parse_duration("9223372036854775808", &s), -ERANGE);
    bool yes;
    assert_int_equal(al_parse_bool("On", &yes), 0);
    assert_true(yes);
    assert_int_equal(al_parse_bool("nope", &yes), -EINVAL);
}

/* The one UTF-8 validator of the tree (job specs, cloud-init, API JSON). */
static void test_utf8(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        bool valid;
    } cases[] = {
            {"plain ascii", true},
            {"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", true}, /* 2-, 3-, 4-byte */
            {"\xf4\x8f\xbf\xbf", true},                          /* U+10FFFF */
            {"\xc0\xaf", false},                                 /* overlong '/' */
            {"\xe0\x80\xaf", false},                             /* overlong, 3 bytes */
            {"\xed\xa0\x80", false},                             /* surrogate U+D800 */
            {"\xf4\x90\x80\x80", false},                         /* above U+10FFFF */
            {"\xe2\x82", false},                                 /* truncated */
            {"\x80", false},                                     /* lone continuation */
            {"\xf8\x88\x80\x80\x80", false},                     /* 5-byte form */
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++)
        assert_int_equal(al_utf8_is_valid(cases[i].s, strlen(cases[i].s)), cases[i].valid);
    uint32_t cp = 0;
    assert_int_equal(al_utf8_decode((const unsigned char *)"\xe2\x82\xac", 3, &cp), 3);
    assert_int_equal(cp, 0x20ac);
    /* the length bounds the sequence, not a NUL */
    assert_int_equal(al_utf8_decode((const unsigned char *)"\xe2\x82\xac", 2, &cp), 0);
    assert_true(al_utf8_is_valid("a\0b", 3));
}

static void test_hex(void **state)
{
    (void)state;
    uint8_t out[4];
    assert_int_equal(al_hex_decode("00fFa9", out, 3), 0);
    assert_int_equal(out[0], 0x00);
    assert_int_equal(out[1], 0xff);
    assert_int_equal(out[2], 0xa9);
    assert_int_equal(al_hex_decode("0g", out, 1), -EINVAL);
    assert_int_equal(al_hex_decode("g0", out, 1), -EINVAL);
    assert_int_equal(al_hex_decode("1", out, 1), -EINVAL); /* stops at the NUL */
    char text[9];
    al_hex_encode((const uint8_t[]){0xde, 0xad, 0x01, 0x0f}, 4, text);
    assert_string_equal(text, "dead010f");
    assert_int_equal(al_hex_digit('F'), 15);
    assert_int_equal(al_hex_digit('/'), -1);
}

static void test_buf_limit(void **state)
{
    (void)state;
    struct al_buf b = {.limit = 8};
    assert_int_equal(al_buf_puts(&b, "12345"), 0);
    assert_int_equal(al_buf_puts(&b, "6789"), -E2BIG);
    assert_int_equal(b.len, 5);
    assert_string_equal(b.data, "12345");
    assert_int_equal(al_buf_printf(&b, "%d", 678), 0);
    assert_string_equal(b.data, "12345678");
    al_buf_consume(&b, 3);
    assert_string_equal(b.data, "45678");
    char *s = al_buf_steal(&b);
    assert_string_equal(s, "45678");
    assert_null(b.data);
    free(s);
    al_buf_free(&b);
}

static void test_files(void **state)
{
    (void)state;
    char *dir = test_tmpdir("util");
    assert_non_null(dir);
    char *deep = al_path_join(dir, "a/b/c");
    struct al_error *err = NULL;
    assert_int_equal(al_mkdir_p(deep, 0755, &err), 0);
    char *file = al_path_join(deep, "f.txt");
    assert_int_equal(al_write_file_atomic(file, "hello", 5, 0600, &err), 0);
    struct stat st;
    assert_int_equal(stat(file, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    char *data = NULL;
    size_t len = 0;
    assert_int_equal(al_read_file(file, 100, &data, &len, &err), 0);
    assert_int_equal(len, 5);
    assert_string_equal(data, "hello");
    free(data);
    assert_int_equal(al_read_file(file, 3, &data, &len, &err), -EFBIG);
    assert_non_null(err);
    assert_non_null(strstr(al_error_message(err), "larger than 3 bytes"));
    err = al_error_free(err);

    /* mkdir_p over a file fails clearly */
    assert_true(al_mkdir_p(file, 0755, &err) < 0);
    assert_non_null(strstr(al_error_message(err), "not a directory"));
    err = al_error_free(err);

    /* rm -rf does not follow symlinks out of the tree */
    char *outside = test_tmpdir("outside");
    char *keep = al_path_join(outside, "keep");
    assert_int_equal(al_write_file_atomic(keep, "x", 1, 0644, &err), 0);
    char *link = al_path_join(dir, "a/link");
    assert_int_equal(symlink(outside, link), 0);
    char *top = al_path_join(dir, "a");
    assert_int_equal(al_rm_rf(top, &err), 0);
    assert_int_equal(stat(top, &st), -1);
    assert_int_equal(stat(keep, &st), 0);
    assert_int_equal(al_rm_rf(top, &err), 0); /* missing is fine */

    free(top);
    free(link);
    free(keep);
    test_tmpdir_remove(outside);
    free(file);
    free(deep);
    test_tmpdir_remove(dir);
}

static void test_error_wrap(void **state)
{
    (void)state;
    struct al_error *err = NULL;
    assert_int_equal(al_error_set(&err, ENOENT, "opening %s", "x"), -ENOENT);
    assert_int_equal(al_error_set(&err, EIO, "second"), -EIO); /* first one wins */
    assert_int_equal(al_error_wrap(&err, "loading %s", "image"), -ENOENT);
    assert_string_equal(al_error_message(err), "loading image: opening x");
    al_error_free(err);
    assert_string_equal(al_error_message(NULL), "unknown error");
    assert_int_equal(al_error_set(NULL, EPERM, "ignored"), -EPERM);
}

static void test_random_consttime(void **state)
{
    (void)state;
    char *a = al_random_hex(16);
    char *b = al_random_hex(16);
    assert_int_equal(strlen(a), 32);
    assert_string_not_equal(a, b);
    assert_true(al_consttime_equal("abc", 3, "abc", 3));
    assert_false(al_consttime_equal("abc", 3, "abd", 3));
    assert_false(al_consttime_equal("abc", 3, "ab", 2));
    free(a);
    free(b);
}

/* Retries spread: never less than asked, never more than a quarter over. */
static void test_jitter_and_wipe(void **state)
{
    (void)state;
    bool spread = false;
    for (int i = 0; i < 200; i++) {
        uint64_t j = al_jitter_ms(1000);
        assert_true(j >= 1000 && j <= 1250);
        spread |= j != 1000;
    }
    assert_true(spread);
    assert_int_equal(al_jitter_ms(0), 0);
    al_wipe_free(NULL);
    al_wipe_free(strdup("a secret"));
}

static void test_text_helpers(void **state)
{
    (void)state;
    char *s = strdup("a-b-ab");
    assert_int_equal(al_str_replace_all(&s, "b", "xyz"), 0);
    assert_string_equal(s, "a-xyz-axyz");
    assert_int_equal(al_str_replace_all(&s, "", "q"), 0); /* nothing to find */
    assert_int_equal(al_str_replace_all(&s, "xyz", ""), 0);
    assert_string_equal(s, "a--a");
    free(s);
    char *t = al_xml_text("<domain><name>vm1</name><uuid>u</uuid></domain>", "name");
    assert_string_equal(t, "vm1");
    free(t);
    assert_null(al_xml_text("<domain><name>vm1</domain>", "name"));
    char *u = al_random_uuid(), *v = al_random_uuid();
    assert_int_equal(strlen(u), 36);
    assert_true(u[14] == '4' && strchr("89ab", u[19]) && u[8] == '-' && u[23] == '-');
    assert_string_not_equal(u, v);
    free(u);
    free(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_parse_int),
            cmocka_unit_test(test_parse_duration_size),
            cmocka_unit_test(test_buf_limit),
            cmocka_unit_test(test_files),
            cmocka_unit_test(test_error_wrap),
            cmocka_unit_test(test_random_consttime),
            cmocka_unit_test(test_jitter_and_wipe),
            cmocka_unit_test(test_utf8),
            cmocka_unit_test(test_hex),
            cmocka_unit_test(test_text_helpers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
