#include "runner/base/utf8.h"

size_t al_utf8_decode(const unsigned char *s, size_t n, uint32_t *ret_cp)
{
    uint32_t cp, min;
    size_t len;
    if (s[0] < 0x80) {
        cp = s[0];
        len = 1;
        min = 0;
    } else if ((s[0] & 0xe0) == 0xc0) {
        cp = s[0] & 0x1f;
        len = 2;
        min = 0x80;
    } else if ((s[0] & 0xf0) == 0xe0) {
        cp = s[0] & 0x0f;
        len = 3;
        min = 0x800;
    } else if ((s[0] & 0xf8) == 0xf0) {
        cp = s[0] & 0x07;
        len = 4;
        min = 0x10000;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    if (ret_cp)
        *ret_cp = cp;
    return len;
}

bool al_utf8_is_valid(const void *s, size_t len)
{
    const unsigned char *u = s;
    size_t i = 0;
    while (i < len) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        size_t k = al_utf8_decode(u + i, len - i, NULL);
        if (k == 0)
            return false;
        i += k;
    }
    return true;
}
