/* Strict UTF-8: the one validator every edge that takes text uses. */
#ifndef AL_UTF8_H
#define AL_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Decodes the sequence at s[0..n) (n >= 1). Returns its length (1 to 4) and
 * stores its code point in *ret_cp (may be NULL), or returns 0 for a
 * sequence that is truncated, overlong, a surrogate (U+D800..U+DFFF) or
 * above U+10FFFF. */
size_t al_utf8_decode(const unsigned char *s, size_t n, uint32_t *ret_cp);

/* Whether s[0..len) is strict UTF-8 as al_utf8_decode() defines it. NUL
 * bytes are valid UTF-8; callers that refuse them check separately. */
bool al_utf8_is_valid(const void *s, size_t len);

#endif
