/* Base64 (RFC 4648, standard alphabet, with padding). */
#ifndef AL_BASE64_H
#define AL_BASE64_H

#include <stddef.h>
#include <stdint.h>

#include "runner/base/buf.h"

/* Length of the encoding of n bytes. */
size_t al_base64_encoded_len(size_t n);

/* Appends the encoding of data[0..n) to out. Returns 0, -ENOMEM or -E2BIG. */
int al_base64_encode(struct al_buf *out, const void *data, size_t n);

/* Decodes text[0..len) and appends the bytes to out. Strict: only the
 * standard alphabet, padding only at the end, no whitespace. Returns 0,
 * -EINVAL for malformed input, or -ENOMEM/-E2BIG. */
int al_base64_decode(struct al_buf *out, const char *text, size_t len);

#endif
