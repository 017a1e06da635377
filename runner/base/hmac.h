/* HMAC-SHA256 (RFC 2104 over FIPS 180-4), for webhook signatures.
 *
 * Built on sha256.h so that checking a signature needs no crypto library. */
#ifndef AL_HMAC_H
#define AL_HMAC_H

#include <stddef.h>
#include <stdint.h>

#include "runner/base/sha256.h"

/* out = HMAC-SHA256(key, msg). Keys longer than a block are hashed first,
 * as the RFC says. The key's copies on the stack are wiped. */
void al_hmac_sha256(const void *key, size_t key_len, const void *msg, size_t msg_len,
                    uint8_t out[AL_SHA256_DIGEST_SIZE]);

#endif
