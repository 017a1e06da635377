#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runner/base/sha256.h"
#include "runner/base/util.h"

static void test_vectors(void **state)
{
    (void)state;
    char hex[AL_SHA256_HEX_SIZE];
    al_sha256_hex("", 0, hex);
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    al_sha256_hex("abc", 3, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    al_sha256_hex(two, strlen(two), hex);
    assert_string_equal(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

/* Feeding the same bytes in odd-sized pieces gives the one-shot digest. */
static void test_incremental(void **state)
{
    (void)state;
    size_t n = 1000000;
    char *a = malloc(n);
    assert_non_null(a);
    memset(a, 'a', n);
    char one[AL_SHA256_HEX_SIZE], inc[AL_SHA256_HEX_SIZE];
    al_sha256_hex(a, n, one);
    assert_string_equal(one, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    struct al_sha256 ctx;
    al_sha256_init(&ctx);
    size_t off = 0, step = 1;
    while (off < n) {
        size_t k = step < n - off ? step : n - off;
        al_sha256_update(&ctx, a + off, k);
        off += k;
        step = step * 3 % 257 + 1;
    }
    al_sha256_final_hex(&ctx, inc);
    assert_string_equal(one, inc);
    free(a);
}

static void test_file(void **state)
{
    (void)state;
    char *dir = test_tmpdir("sha256");
    assert_non_null(dir);
    char *path = al_path_join(dir, "f");
    /* 55, 56 and 64 bytes sit on the padding boundaries */
    for (size_t len = 54; len <= 66; len++) {
        char data[80];
        memset(data, 'x', len);
        assert_int_equal(al_write_file_atomic(path, data, len, 0644, NULL), 0);
        char h1[AL_SHA256_HEX_SIZE], h2[AL_SHA256_HEX_SIZE];
        uint64_t size = 0;
        assert_int_equal(al_sha256_file(path, h1, &size, NULL), 0);
        assert_int_equal(size, len);
        al_sha256_hex(data, len, h2);
        assert_string_equal(h1, h2);
    }
    struct al_error *err = NULL;
    char h[AL_SHA256_HEX_SIZE];
    assert_int_equal(al_sha256_file("/nonexistent/x", h, NULL, &err), -ENOENT);
    assert_non_null(strstr(al_error_message(err), "/nonexistent/x"));
    al_error_free(err);
    free(path);
    test_tmpdir_remove(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_vectors),
            cmocka_unit_test(test_incremental),
            cmocka_unit_test(test_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
