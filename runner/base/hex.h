/* Hexadecimal: the one encoder and decoder (digests, signatures, percent
 * escapes). */
#ifndef AL_HEX_H
#define AL_HEX_H

#include <stddef.h>
#include <stdint.h>

/* The value 0..15 of one hex digit (either case), or -1. */
int al_hex_digit(char c);

/* Decodes exactly 2 * n hex digits (either case) at hex into n bytes at out.
 * Returns 0, or -EINVAL at the first non-digit (out then holds garbage). */
int al_hex_decode(const char *hex, uint8_t *out, size_t n);

/* Writes the lowercase hex of data[0..n) and a NUL to out (2n + 1 bytes). */
void al_hex_encode(const void *data, size_t n, char *out);

#endif
