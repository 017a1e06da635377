/* Arbitrary bytes into the guest helper's tar scanner, strict and counting
 * mode, whole and in chunks: same verdict either way. */
#include <stdint.h>
#include <stdlib.h>

#include "provision/guest/tarscan.h"

static int scan(const uint8_t *data, size_t size, size_t chunk, bool strict, uint64_t *members)
{
    struct tar_scan s;
    tar_scan_init(&s, strict);
    int r = 0;
    for (size_t pos = 0; pos < size && r == 0; pos += chunk) {
        size_t n = size - pos < chunk ? size - pos : chunk;
        struct al_error *err = NULL;
        r = tar_scan_feed(&s, data + pos, n, &err);
        al_error_free(err);
    }
    *members = s.members;
    tar_scan_free(&s);
    return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t chunk = size ? (size_t)(data[size - 1] % 700) + 1 : 1;
    for (int strict = 0; strict < 2; strict++) {
        uint64_t m1, m2;
        int r1 = scan(data, size, size ? size : 1, strict, &m1);
        int r2 = scan(data, size, chunk, strict, &m2);
        if (r1 != r2 || m1 != m2)
            abort();
    }
    return 0;
}
