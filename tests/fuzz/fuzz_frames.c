/* Arbitrary bytes into the frame decoder and the TLV iterator.
 *
 * Besides "no crash, no leak, no UB" it checks one property: decoding the
 * input in one piece and in small chunks (sizes taken from the input)
 * yields the same frames and the same error. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "provision/proto/proto.h"

#define MAX_FRAMES 64

struct summary {
    size_t n;
    uint8_t type[MAX_FRAMES];
    uint32_t len[MAX_FRAMES];
    uint32_t sum[MAX_FRAMES];
    int error;
};

static uint32_t checksum(const uint8_t *p, uint32_t n)
{
    uint32_t h = 2166136261u;
    for (uint32_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h;
}

static void walk_tlv(const uint8_t *p, size_t n)
{
    struct al_tlv_iter it;
    al_tlv_iter_init(&it, p, n);
    uint16_t tag;
    const uint8_t *val;
    uint32_t len;
    int r;
    size_t items = 0;
    while ((r = al_tlv_next(&it, &tag, &val, &len)) == 1) {
        items++;
        uint64_t v;
        if (al_tlv_value_u64(val, len, &v) == 0 && len > 0 && val[0] != '0') {
            /* a parsed number prints back to the same digits */
            struct al_tlv_buf b = {0};
            if (al_tlv_add_u64(&b, tag, v) == 0 &&
                (b.len != 6 + len || memcmp(b.data + 6, val, len)))
                abort();
            al_tlv_buf_free(&b);
        }
        (void)al_tlv_value_is_text(val, len);
    }
    if (r != 0 && r != -EPROTO)
        abort();
    if (r == 0 && it.left != 0)
        abort();
    (void)items;
}

static void decode(const uint8_t *data, size_t size, size_t chunk, struct summary *s)
{
    struct al_frame_decoder d = {.max_payload = 64 * 1024};
    memset(s, 0, sizeof(*s));
    size_t pos = 0;
    while (pos < size && !s->error) {
        size_t n = size - pos < chunk ? size - pos : chunk;
        const uint8_t *p = data + pos;
        size_t left = n;
        while (left > 0) {
            size_t used = 0;
            struct al_frame f;
            int r = al_frame_decoder_feed(&d, p, left, &used, &f);
            if (r < 0) {
                s->error = r;
                break;
            }
            if (used > left)
                abort();
            if (r == 1) {
                if (!al_frame_type_is_known(f.type) || f.len > 64 * 1024)
                    abort();
                if (s->n < MAX_FRAMES) {
                    s->type[s->n] = f.type;
                    s->len[s->n] = f.len;
                    s->sum[s->n] = checksum(f.payload, f.len);
                }
                s->n++;
                walk_tlv(f.payload, f.len);
            } else if (used != left) {
                abort();
            }
            p += used;
            left -= used;
        }
        pos += n;
    }
    al_frame_decoder_free(&d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size >= AL_PROTO_HEADER_SIZE) {
        uint8_t type;
        uint32_t len;
        if (al_frame_header_decode(data, 0, &type, &len) == 0) {
            uint8_t again[AL_PROTO_HEADER_SIZE];
            if (al_frame_header_encode(again, type, len) != 0 ||
                memcmp(again, data, AL_PROTO_HEADER_SIZE) != 0)
                abort();
        }
    }
    walk_tlv(data, size);

    size_t chunk = size ? (size_t)(data[0] % 13) + 1 : 1;
    struct summary whole, pieces;
    decode(data, size, size ? size : 1, &whole);
    decode(data, size, chunk, &pieces);
    if (whole.n != pieces.n || whole.error != pieces.error)
        abort();
    size_t n = whole.n < MAX_FRAMES ? whole.n : MAX_FRAMES;
    for (size_t i = 0; i < n; i++)
        if (whole.type[i] != pieces.type[i] || whole.len[i] != pieces.len[i] ||
            whole.sum[i] != pieces.sum[i])
            abort();
    return 0;
}
