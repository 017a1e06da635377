/* CRC-32 (IEEE 802.3, the zlib/PNG/gzip polynomial), incrementally. */
#ifndef AL_CRC32_H
#define AL_CRC32_H

#include <stddef.h>
#include <stdint.h>

/* Returns the CRC of data[0..len) continuing from crc (0 to start), so
 * al_crc32(al_crc32(0, a, n), b, m) equals the CRC of a followed by b. */
uint32_t al_crc32(uint32_t crc, const void *data, size_t len);

#endif
