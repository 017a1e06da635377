#include "runner/base/hmac.h"

#include <string.h>

#define BLOCK 64

void al_hmac_sha256(const void *key, size_t key_len, const void *msg, size_t msg_len,
                    uint8_t out[AL_SHA256_DIGEST_SIZE])
{
    uint8_t k[BLOCK] = {0};
    if (key_len > BLOCK) {
        struct al_sha256 kc;
        al_sha256_init(&kc);
        al_sha256_update(&kc, key, key_len);
        al_sha256_final(&kc, k);
        explicit_bzero(&kc, sizeof(kc));
    } else if (key_len) {
        memcpy(k, key, key_len);
    }
    uint8_t pad[BLOCK];
    uint8_t inner[AL_SHA256_DIGEST_SIZE];
    struct al_sha256 c;

    for (size_t i = 0; i < BLOCK; i++)
        pad[i] = k[i] ^ 0x36;
    al_sha256_init(&c);
    al_sha256_update(&c, pad, BLOCK);
    al_sha256_update(&c, msg, msg_len);
    al_sha256_final(&c, inner);

    for (size_t i = 0; i < BLOCK; i++)
        pad[i] = k[i] ^ 0x5c;
    al_sha256_init(&c);
    al_sha256_update(&c, pad, BLOCK);
    al_sha256_update(&c, inner, sizeof(inner));
    al_sha256_final(&c, out);

    explicit_bzero(k, sizeof(k));
    explicit_bzero(pad, sizeof(pad));
    explicit_bzero(inner, sizeof(inner));
    explicit_bzero(&c, sizeof(c));
}
