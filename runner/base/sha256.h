/* SHA-256 (FIPS 180-4): incremental hashing of buffers and files.
 *
 * Used for image checksums and recipe hashes; small enough to carry here
 * instead of linking a crypto library for one digest. */
#ifndef AL_SHA256_H
#define AL_SHA256_H

#include <stddef.h>
#include <stdint.h>

#include "runner/base/error.h"

#define AL_SHA256_DIGEST_SIZE 32
#define AL_SHA256_HEX_SIZE    65 /* 64 hex digits and a NUL */

struct al_sha256 {
    uint32_t state[8];
    uint64_t total; /* bytes hashed so far */
    uint8_t block[64];
    size_t used; /* bytes waiting in block */
};

void al_sha256_init(struct al_sha256 *ctx);
void al_sha256_update(struct al_sha256 *ctx, const void *data, size_t len);
/* Writes the digest; the context must be re-initialised before reuse. */
void al_sha256_final(struct al_sha256 *ctx, uint8_t out[AL_SHA256_DIGEST_SIZE]);
/* Like al_sha256_final() but writes lowercase hex into hex. */
void al_sha256_final_hex(struct al_sha256 *ctx, char hex[AL_SHA256_HEX_SIZE]);

/* One-shot digest of a buffer as lowercase hex. */
void al_sha256_hex(const void *data, size_t len, char hex[AL_SHA256_HEX_SIZE]);

/* Digest of a whole file as lowercase hex; ret_size (may be NULL) gets the
 * number of bytes read. */
int al_sha256_file(const char *path, char hex[AL_SHA256_HEX_SIZE], uint64_t *ret_size,
                   struct al_error **err);

#endif
