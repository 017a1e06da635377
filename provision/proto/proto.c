/* The host <-> guest frame protocol: header coding, stream decoding, TLV.
 *
 * libc only: this file is compiled into the daemon's core library and into
 * the in-guest helper. Every length read from the wire is checked against
 * what is actually there before it is used, and all size arithmetic is done
 * so that it cannot wrap.
 */
#include "provision/proto/proto.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void put_be16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint16_t get_be16(const uint8_t *p)
{
    return (uint16_t)((uint16_t)p[0] << 8 | p[1]);
}

static uint32_t get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Payload buffers may hold secrets (SECRETS frames, SECRET_ENV items): they
 * are cleared before their memory goes back to the allocator. */
static void wipe(void *p, size_t n)
{
    if (p && n)
        explicit_bzero(p, n);
}

bool al_frame_type_is_known(uint8_t type)
{
    switch ((enum al_frame_type)type) {
    case AL_FRAME_HELLO:
    case AL_FRAME_STARTED:
    case AL_FRAME_STDOUT:
    case AL_FRAME_STDERR:
    case AL_FRAME_HEARTBEAT:
    case AL_FRAME_DIAG:
    case AL_FRAME_ARTIFACT:
    case AL_FRAME_ARTIFACT_END:
    case AL_FRAME_EXIT:
    case AL_FRAME_SYNCED:
    case AL_FRAME_JOB:
    case AL_FRAME_SECRETS:
    case AL_FRAME_WORKDIR:
    case AL_FRAME_WORKDIR_END:
    case AL_FRAME_START:
    case AL_FRAME_CANCEL:
    case AL_FRAME_SYNC:
    case AL_FRAME_FRESHEN:
        return true;
    }
    return false;
}

int al_frame_header_encode(uint8_t out[AL_PROTO_HEADER_SIZE], uint8_t type, uint32_t len)
{
    if (!al_frame_type_is_known(type))
        return -EPROTO;
    if (len > AL_PROTO_MAX_PAYLOAD)
        return -EMSGSIZE;
    out[0] = type;
    out[1] = 0;
    put_be16(out + 2, 0);
    put_be32(out + 4, len);
    return 0;
}

static uint32_t effective_max(uint32_t max_payload)
{
    if (max_payload == 0 || max_payload > AL_PROTO_MAX_PAYLOAD)
        return AL_PROTO_MAX_PAYLOAD;
    return max_payload;
}

int al_frame_header_decode(const uint8_t in[AL_PROTO_HEADER_SIZE], uint32_t max_payload,
                           uint8_t *ret_type, uint32_t *ret_len)
{
    if (in[1] != 0 || get_be16(in + 2) != 0)
        return -EPROTO;
    if (!al_frame_type_is_known(in[0]))
        return -EPROTO;
    uint32_t len = get_be32(in + 4);
    if (len > effective_max(max_payload))
        return -EMSGSIZE;
    *ret_type = in[0];
    *ret_len = len;
    return 0;
}

/* A frame was handed out by the previous call exactly when the header is
 * complete and all payload bytes are there: zero-length frames are returned
 * in the same call that completes their header, so this state never means
 * "header just read, frame not yet returned". */
static bool decoder_holds_returned_frame(const struct al_frame_decoder *d)
{
    return d->hdr_len == AL_PROTO_HEADER_SIZE && d->got == d->len;
}

static int decoder_fail(struct al_frame_decoder *d, int r)
{
    d->failed = true;
    return r;
}

int al_frame_decoder_feed(struct al_frame_decoder *d, const uint8_t *data, size_t n,
                          size_t *ret_consumed, struct al_frame *ret_frame)
{
    if (d->failed)
        return -EPROTO;
    if (!data && n > 0)
        return decoder_fail(d, -EINVAL);

    if (decoder_holds_returned_frame(d)) {
        d->hdr_len = 0;
        d->got = 0;
        d->len = 0;
        d->type = 0;
    }

    size_t used = 0;
    if (d->hdr_len < AL_PROTO_HEADER_SIZE) {
        size_t take = AL_PROTO_HEADER_SIZE - d->hdr_len;
        if (take > n)
            take = n;
        if (take > 0)
            memcpy(d->hdr + d->hdr_len, data, take);
        d->hdr_len += take;
        used += take;
        if (d->hdr_len < AL_PROTO_HEADER_SIZE) {
            *ret_consumed = used;
            return 0;
        }
        uint8_t type;
        uint32_t len;
        int r = al_frame_header_decode(d->hdr, d->max_payload, &type, &len);
        if (r < 0)
            return decoder_fail(d, r);
        if (len > d->cap) {
            /* Grow to the announced size at once: it is bounded by
             * max_payload, and one allocation per size class keeps a
             * stream of large frames from reallocating on every feed. */
            uint8_t *p = malloc(len);
            if (!p)
                return decoder_fail(d, -ENOMEM);
            if (d->payload) {
                wipe(d->payload, d->cap);
                free(d->payload);
            }
            d->payload = p;
            d->cap = len;
        }
        d->type = type;
        d->len = len;
        d->got = 0;
    }

    size_t want = d->len - d->got;
    size_t avail = n - used;
    size_t take = want < avail ? want : avail;
    if (take > 0) {
        memcpy(d->payload + d->got, data + used, take);
        d->got += take;
        used += take;
    }
    *ret_consumed = used;
    if (d->got < d->len)
        return 0;

    ret_frame->type = d->type;
    ret_frame->len = d->len;
    /* never NULL, also for empty payloads: callers may pass it on freely */
    ret_frame->payload = d->payload ? d->payload : d->hdr;
    return 1;
}

void al_frame_decoder_free(struct al_frame_decoder *d)
{
    if (!d)
        return;
    if (d->payload) {
        wipe(d->payload, d->cap);
        free(d->payload);
    }
    uint32_t max = d->max_payload;
    memset(d, 0, sizeof(*d));
    d->max_payload = max;
}

int al_tlv_add(struct al_tlv_buf *b, uint16_t tag, const void *val, size_t len)
{
    if (!val && len > 0)
        return -EINVAL;
    if (b->len > AL_PROTO_MAX_PAYLOAD || len > AL_PROTO_MAX_PAYLOAD - b->len ||
        AL_PROTO_MAX_PAYLOAD - b->len - len < 6)
        return -EMSGSIZE;
    size_t need = b->len + 6 + len;
    if (need > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < need)
            cap *= 2; /* need <= 1 MiB, so this cannot wrap */
        uint8_t *p = malloc(cap);
        if (!p)
            return -ENOMEM;
        if (b->len)
            memcpy(p, b->data, b->len);
        if (b->data) {
            wipe(b->data, b->cap);
            free(b->data);
        }
        b->data = p;
        b->cap = cap;
    }
    put_be16(b->data + b->len, tag);
    put_be32(b->data + b->len + 2, (uint32_t)len);
    if (len)
        memcpy(b->data + b->len + 6, val, len);
    b->len = need;
    return 0;
}

int al_tlv_add_str(struct al_tlv_buf *b, uint16_t tag, const char *s)
{
    if (!s)
        return -EINVAL;
    return al_tlv_add(b, tag, s, strlen(s));
}

int al_tlv_add_u64(struct al_tlv_buf *b, uint16_t tag, uint64_t v)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof(tmp), "%" PRIu64, v);
    if (n < 0 || (size_t)n >= sizeof(tmp))
        return -EOVERFLOW;
    return al_tlv_add(b, tag, tmp, (size_t)n);
}

void al_tlv_buf_free(struct al_tlv_buf *b)
{
    if (!b)
        return;
    if (b->data) {
        wipe(b->data, b->cap);
        free(b->data);
    }
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

void al_tlv_iter_init(struct al_tlv_iter *it, const uint8_t *data, size_t len)
{
    it->p = data;
    it->left = data ? len : 0;
}

int al_tlv_next(struct al_tlv_iter *it, uint16_t *ret_tag, const uint8_t **ret_val,
                uint32_t *ret_len)
{
    if (it->left == 0)
        return 0;
    /* On error the iterator does not move: every later call fails too. */
    if (it->left < 6)
        return -EPROTO;
    uint32_t len = get_be32(it->p + 2);
    if (len > it->left - 6)
        return -EPROTO;
    *ret_tag = get_be16(it->p);
    *ret_val = it->p + 6;
    *ret_len = len;
    it->p += 6 + (size_t)len;
    it->left -= 6 + (size_t)len;
    return 1;
}

int al_tlv_value_u64(const uint8_t *val, uint32_t len, uint64_t *ret)
{
    if (!val || len == 0)
        return -EINVAL;
    for (uint32_t i = 0; i < len; i++)
        if (val[i] < '0' || val[i] > '9')
            return -EINVAL;
    uint64_t v = 0;
    for (uint32_t i = 0; i < len; i++) {
        unsigned d = (unsigned)(val[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -ERANGE;
        v = v * 10 + d;
    }
    *ret = v;
    return 0;
}

bool al_tlv_value_is_text(const uint8_t *val, uint32_t len)
{
    if (len == 0)
        return true;
    return val && memchr(val, 0, len) == NULL;
}

int al_frame_build(uint8_t type, const void *payload, size_t len, uint8_t **ret, size_t *ret_len)
{
    if (!payload && len > 0)
        return -EINVAL;
    if (len > AL_PROTO_MAX_PAYLOAD)
        return -EMSGSIZE;
    uint8_t hdr[AL_PROTO_HEADER_SIZE];
    int r = al_frame_header_encode(hdr, type, (uint32_t)len);
    if (r < 0)
        return r;
    uint8_t *p = malloc(AL_PROTO_HEADER_SIZE + len);
    if (!p)
        return -ENOMEM;
    memcpy(p, hdr, AL_PROTO_HEADER_SIZE);
    if (len)
        memcpy(p + AL_PROTO_HEADER_SIZE, payload, len);
    *ret = p;
    *ret_len = AL_PROTO_HEADER_SIZE + len;
    return 0;
}
