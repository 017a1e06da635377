#include "test_util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "provision/proto/proto.h"

static const uint8_t known_types[] = {
        AL_FRAME_HELLO,       AL_FRAME_STARTED, AL_FRAME_STDOUT,   AL_FRAME_STDERR,
        AL_FRAME_HEARTBEAT,   AL_FRAME_DIAG,    AL_FRAME_ARTIFACT, AL_FRAME_ARTIFACT_END,
        AL_FRAME_EXIT,        AL_FRAME_JOB,     AL_FRAME_SECRETS,  AL_FRAME_WORKDIR,
        AL_FRAME_WORKDIR_END, AL_FRAME_START,   AL_FRAME_CANCEL,   AL_FRAME_SYNCED,
        AL_FRAME_SYNC,        AL_FRAME_FRESHEN,
};

static void test_header_round_trip(void **state)
{
    (void)state;
    static const uint32_t lens[] = {0, 1, 255, 256, 65535, 65536, AL_PROTO_MAX_PAYLOAD};
    for (size_t t = 0; t < sizeof(known_types); t++) {
        for (size_t l = 0; l < sizeof(lens) / sizeof(lens[0]); l++) {
            uint8_t hdr[AL_PROTO_HEADER_SIZE];
            assert_int_equal(al_frame_header_encode(hdr, known_types[t], lens[l]), 0);
            assert_int_equal(hdr[1], 0);
            assert_int_equal(hdr[2], 0);
            assert_int_equal(hdr[3], 0);
            uint8_t type = 0;
            uint32_t len = 1234;
            assert_int_equal(al_frame_header_decode(hdr, 0, &type, &len), 0);
            assert_int_equal(type, known_types[t]);
            assert_int_equal(len, lens[l]);
        }
    }
    /* big-endian on the wire */
    uint8_t hdr[AL_PROTO_HEADER_SIZE];
    assert_int_equal(al_frame_header_encode(hdr, AL_FRAME_STDOUT, 0x010203), 0);
    static const uint8_t want[] = {AL_FRAME_STDOUT, 0, 0, 0, 0x00, 0x01, 0x02, 0x03};
    assert_memory_equal(hdr, want, sizeof(want));
}

static void test_header_validation(void **state)
{
    (void)state;
    uint8_t hdr[AL_PROTO_HEADER_SIZE];
    uint8_t type = 77;
    uint32_t len = 77;

    assert_int_equal(al_frame_header_encode(hdr, AL_FRAME_STDOUT, AL_PROTO_MAX_PAYLOAD + 1),
                     -EMSGSIZE);
    assert_int_equal(al_frame_header_encode(hdr, 0, 1), -EPROTO);
    assert_int_equal(al_frame_header_encode(hdr, 200, 1), -EPROTO);

    assert_int_equal(al_frame_header_encode(hdr, AL_FRAME_EXIT, 10), 0);
    hdr[1] = 0x01; /* flags */
    assert_int_equal(al_frame_header_decode(hdr, 0, &type, &len), -EPROTO);
    hdr[1] = 0;
    hdr[2] = 0x80; /* reserved */
    assert_int_equal(al_frame_header_decode(hdr, 0, &type, &len), -EPROTO);
    hdr[2] = 0;
    hdr[3] = 0x01;
    assert_int_equal(al_frame_header_decode(hdr, 0, &type, &len), -EPROTO);
    hdr[3] = 0;
    static const uint8_t unknown[] = {0, 11, 63, 72, 128, 255};
    for (size_t i = 0; i < sizeof(unknown); i++) {
        hdr[0] = unknown[i];
        assert_false(al_frame_type_is_known(unknown[i]));
        assert_int_equal(al_frame_header_decode(hdr, 0, &type, &len), -EPROTO);
    }
    /* outputs untouched on failure */
    assert_int_equal(type, 77);
    assert_int_equal(len, 77);

    hdr[0] = AL_FRAME_STDOUT;
    hdr[4] = 0x00;
    hdr[5] = 0x10;
    hdr[6] = 0x00;
    hdr[7] = 0x01; /* 1 MiB + 1 */
    assert_int_equal(al_frame_header_decode(hdr, 0, &type, &len), -EMSGSIZE);
    hdr[4] = 0xff; /* ~4 GiB */
    assert_int_equal(al_frame_header_decode(hdr, 0, &type, &len), -EMSGSIZE);
    /* a caller's own, lower limit; one above the protocol's is clamped */
    assert_int_equal(al_frame_header_encode(hdr, AL_FRAME_STDOUT, 4097), 0);
    assert_int_equal(al_frame_header_decode(hdr, 4096, &type, &len), -EMSGSIZE);
    assert_int_equal(al_frame_header_decode(hdr, 4097, &type, &len), 0);
    assert_int_equal(al_frame_header_encode(hdr, AL_FRAME_STDOUT, AL_PROTO_MAX_PAYLOAD), 0);
    hdr[7] = 1;
    assert_int_equal(al_frame_header_decode(hdr, UINT32_MAX, &type, &len), -EMSGSIZE);
}

/* A stream of frames of many sizes, and what a decoder must return for it. */
struct sample {
    uint8_t *stream;
    size_t len;
    size_t nframes;
    uint8_t types[16];
    uint32_t lens[16];
    uint8_t *payloads[16];
};

static void sample_build(struct sample *s)
{
    static const uint32_t lens[] = {0, 1, 7, 8, 9, 511, 4096, 70000, 0, 3, 200000, 1};
    memset(s, 0, sizeof(*s));
    s->nframes = sizeof(lens) / sizeof(lens[0]);
    for (size_t i = 0; i < s->nframes; i++) {
        s->types[i] = known_types[(i * 7) % sizeof(known_types)];
        s->lens[i] = lens[i];
        s->payloads[i] = malloc(lens[i] ? lens[i] : 1);
        for (uint32_t k = 0; k < lens[i]; k++)
            s->payloads[i][k] = (uint8_t)(k * 31 + i);
        uint8_t *frame;
        size_t flen;
        assert_int_equal(al_frame_build(s->types[i], s->payloads[i], lens[i], &frame, &flen), 0);
        assert_int_equal(flen, AL_PROTO_HEADER_SIZE + lens[i]);
        s->stream = realloc(s->stream, s->len + flen);
        memcpy(s->stream + s->len, frame, flen);
        s->len += flen;
        free(frame);
    }
}

static void sample_free(struct sample *s)
{
    for (size_t i = 0; i < s->nframes; i++)
        free(s->payloads[i]);
    free(s->stream);
}

/* Feeds the sample in chunks chosen by next_chunk and checks every frame. */
static void decode_in_chunks(const struct sample *s, size_t (*next_chunk)(size_t left))
{
    struct al_frame_decoder d = {0};
    size_t pos = 0, seen = 0;
    while (pos < s->len) {
        size_t chunk = next_chunk(s->len - pos);
        const uint8_t *p = s->stream + pos;
        size_t left = chunk;
        while (left > 0) {
            size_t used = 0;
            struct al_frame f = {0};
            int r = al_frame_decoder_feed(&d, p, left, &used, &f);
            assert_true(r == 0 || r == 1);
            assert_true(used <= left);
            if (r == 1) {
                assert_true(seen < s->nframes);
                assert_int_equal(f.type, s->types[seen]);
                assert_int_equal(f.len, s->lens[seen]);
                assert_non_null(f.payload);
                if (f.len)
                    assert_memory_equal(f.payload, s->payloads[seen], f.len);
                seen++;
            } else {
                assert_int_equal(used, left);
            }
            p += used;
            left -= used;
        }
        pos += chunk;
    }
    assert_int_equal(seen, s->nframes);
    al_frame_decoder_free(&d);
}

static size_t chunk_all(size_t left)
{
    return left;
}

static size_t chunk_one(size_t left)
{
    (void)left;
    return 1;
}

static size_t chunk_random(size_t left)
{
    size_t c = (size_t)(rand() % 9000) + 1;
    if (rand() % 4 == 0)
        c = (size_t)(rand() % 7) + 1;
    return c < left ? c : left;
}

static void test_decoder_chunking(void **state)
{
    (void)state;
    struct sample s;
    sample_build(&s);
    decode_in_chunks(&s, chunk_all);
    decode_in_chunks(&s, chunk_one);
    srand(42);
    for (int round = 0; round < 20; round++)
        decode_in_chunks(&s, chunk_random);
    sample_free(&s);
}

static void test_decoder_empty_feed(void **state)
{
    (void)state;
    struct al_frame_decoder d = {0};
    size_t used = 99;
    struct al_frame f;
    assert_int_equal(al_frame_decoder_feed(&d, NULL, 0, &used, &f), 0);
    assert_int_equal(used, 0);
    /* an empty frame is complete right after its header */
    uint8_t hdr[AL_PROTO_HEADER_SIZE];
    assert_int_equal(al_frame_header_encode(hdr, AL_FRAME_HEARTBEAT, 0), 0);
    assert_int_equal(al_frame_decoder_feed(&d, hdr, sizeof(hdr), &used, &f), 1);
    assert_int_equal(used, sizeof(hdr));
    assert_int_equal(f.type, AL_FRAME_HEARTBEAT);
    assert_int_equal(f.len, 0);
    assert_non_null(f.payload);
    al_frame_decoder_free(&d);
    al_frame_decoder_free(NULL);
}

static void expect_decoder_failure(const uint8_t *bytes, size_t n, uint32_t max, int want)
{
    struct al_frame_decoder d = {.max_payload = max};
    size_t used;
    struct al_frame f;
    int r = 0;
    size_t pos = 0;
    /* byte by byte: the error must come as soon as the header is complete */
    while (pos < n && r >= 0) {
        r = al_frame_decoder_feed(&d, bytes + pos, 1, &used, &f);
        pos++;
    }
    assert_int_equal(r, want);
    assert_int_equal(pos, AL_PROTO_HEADER_SIZE);
    assert_true(d.failed);
    /* failed for good, also for valid input */
    uint8_t ok[AL_PROTO_HEADER_SIZE];
    assert_int_equal(al_frame_header_encode(ok, AL_FRAME_HEARTBEAT, 0), 0);
    assert_true(al_frame_decoder_feed(&d, ok, sizeof(ok), &used, &f) < 0);
    al_frame_decoder_free(&d);
}

static void test_decoder_rejects(void **state)
{
    (void)state;
    uint8_t b[16] = {0};
    assert_int_equal(al_frame_header_encode(b, AL_FRAME_STDOUT, 4), 0);
    b[1] = 1;
    expect_decoder_failure(b, sizeof(b), 0, -EPROTO);

    assert_int_equal(al_frame_header_encode(b, AL_FRAME_STDOUT, 4), 0);
    b[3] = 2;
    expect_decoder_failure(b, sizeof(b), 0, -EPROTO);

    assert_int_equal(al_frame_header_encode(b, AL_FRAME_STDOUT, 4), 0);
    b[0] = 42;
    expect_decoder_failure(b, sizeof(b), 0, -EPROTO);

    uint8_t big[] = {AL_FRAME_STDOUT, 0, 0, 0, 0xff, 0xff, 0xff, 0xff};
    expect_decoder_failure(big, sizeof(big), 0, -EMSGSIZE);

    assert_int_equal(al_frame_header_encode(b, AL_FRAME_STDOUT, 101), 0);
    expect_decoder_failure(b, sizeof(b), 100, -EMSGSIZE);

    /* a valid frame, then garbage: the first frame still comes out */
    uint8_t two[AL_PROTO_HEADER_SIZE * 2 + 2] = {0};
    assert_int_equal(al_frame_header_encode(two, AL_FRAME_STDERR, 2), 0);
    two[8] = 'h';
    two[9] = 'i';
    two[10] = 99; /* unknown type */
    struct al_frame_decoder d = {0};
    size_t used;
    struct al_frame f;
    assert_int_equal(al_frame_decoder_feed(&d, two, sizeof(two), &used, &f), 1);
    assert_int_equal(used, 10);
    assert_memory_equal(f.payload, "hi", 2);
    assert_int_equal(al_frame_decoder_feed(&d, two + used, sizeof(two) - used, &used, &f), -EPROTO);
    al_frame_decoder_free(&d);
}

static void test_tlv_round_trip(void **state)
{
    (void)state;
    struct al_tlv_buf b = {0};
    assert_int_equal(al_tlv_add_str(&b, AL_TLV_ARGV, "echo"), 0);
    assert_int_equal(al_tlv_add(&b, AL_TLV_ARGV, "", 0), 0);
    assert_int_equal(al_tlv_add(&b, AL_TLV_ARGV, NULL, 0), 0);
    assert_int_equal(al_tlv_add_u64(&b, AL_TLV_TIMEOUT_S, UINT64_MAX), 0);
    assert_int_equal(al_tlv_add(&b, 0xffff, "\0\1\2", 3), 0);
    uint8_t big[5000];
    memset(big, 'x', sizeof(big));
    assert_int_equal(al_tlv_add(&b, AL_TLV_SCRIPT, big, sizeof(big)), 0);
    assert_int_equal(al_tlv_add_str(&b, AL_TLV_ENV, NULL), -EINVAL);
    assert_int_equal(al_tlv_add(&b, AL_TLV_ENV, NULL, 3), -EINVAL);

    struct al_tlv_iter it;
    al_tlv_iter_init(&it, b.data, b.len);
    uint16_t tag;
    const uint8_t *val;
    uint32_t len;
    assert_int_equal(al_tlv_next(&it, &tag, &val, &len), 1);
    assert_int_equal(tag, AL_TLV_ARGV);
    assert_int_equal(len, 4);
    assert_memory_equal(val, "echo", 4);
    assert_int_equal(al_tlv_next(&it, &tag, &val, &len), 1);
    assert_int_equal(len, 0);
    assert_int_equal(al_tlv_next(&it, &tag, &val, &len), 1);
    assert_int_equal(len, 0);
    assert_int_equal(al_tlv_next(&it, &tag, &val, &len), 1);
    assert_int_equal(tag, AL_TLV_TIMEOUT_S);
    uint64_t v;
    assert_int_equal(al_tlv_value_u64(val, len, &v), 0);
    assert_true(v == UINT64_MAX);
    assert_int_equal(al_tlv_next(&it, &tag, &val, &len), 1);
    assert_int_equal(tag, 0xffff);
    assert_false(al_tlv_value_is_text(val, len));
    assert_int_equal(al_tlv_next(&it, &tag, &val, &len), 1);
    assert_int_equal(tag, AL_TLV_SCRIPT);
    assert_int_equal(len, sizeof(big));
    assert_true(al_tlv_value_is_text(val, len));
    assert_int_equal(al_tlv_next(&it, &tag, &val, &len), 0);
    assert_int_equal(al_tlv_next(&it, &tag, &val, &len), 0);
    al_tlv_buf_free(&b);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    al_tlv_buf_free(&b);
    al_tlv_buf_free(NULL);

    /* empty list */
    al_tlv_iter_init(&it, NULL, 0);
    assert_int_equal(al_tlv_next(&it, &tag, &val, &len), 0);
}

static void test_tlv_truncated(void **state)
{
    (void)state;
    struct al_tlv_buf b = {0};
    assert_int_equal(al_tlv_add_str(&b, AL_TLV_ENV, "A=1"), 0);
    assert_int_equal(al_tlv_add_str(&b, AL_TLV_ENV, "B=22"), 0);
    uint16_t tag;
    const uint8_t *val;
    uint32_t len;
    /* every proper prefix that ends inside the second item is malformed */
    for (size_t cut = 9 + 1; cut < b.len; cut++) {
        struct al_tlv_iter it;
        al_tlv_iter_init(&it, b.data, cut);
        assert_int_equal(al_tlv_next(&it, &tag, &val, &len), 1);
        assert_int_equal(al_tlv_next(&it, &tag, &val, &len), -EPROTO);
        /* and stays malformed */
        assert_int_equal(al_tlv_next(&it, &tag, &val, &len), -EPROTO);
    }
    /* inside the first item */
    for (size_t cut = 1; cut < 9; cut++) {
        struct al_tlv_iter it;
        al_tlv_iter_init(&it, b.data, cut);
        assert_int_equal(al_tlv_next(&it, &tag, &val, &len), -EPROTO);
    }
    /* a length that would wrap a 32-bit pointer sum */
    uint8_t evil[] = {0, 12, 0xff, 0xff, 0xff, 0xfa, 'x'};
    struct al_tlv_iter it;
    al_tlv_iter_init(&it, evil, sizeof(evil));
    assert_int_equal(al_tlv_next(&it, &tag, &val, &len), -EPROTO);
    al_tlv_buf_free(&b);
}

static void test_tlv_limits(void **state)
{
    (void)state;
    struct al_tlv_buf b = {0};
    size_t chunk = 64 * 1024;
    uint8_t *data = calloc(1, chunk);
    while (al_tlv_add(&b, AL_TLV_SCRIPT, data, chunk) == 0)
        assert_true(b.len <= AL_PROTO_MAX_PAYLOAD);
    assert_int_equal(al_tlv_add(&b, AL_TLV_SCRIPT, data, chunk), -EMSGSIZE);
    /* fill exactly to the limit */
    size_t room = AL_PROTO_MAX_PAYLOAD - b.len;
    assert_true(room >= 6);
    assert_int_equal(al_tlv_add(&b, AL_TLV_SCRIPT, data, room - 5), -EMSGSIZE);
    assert_int_equal(al_tlv_add(&b, AL_TLV_SCRIPT, data, room - 6), 0);
    assert_int_equal(b.len, AL_PROTO_MAX_PAYLOAD);
    assert_int_equal(al_tlv_add(&b, AL_TLV_SCRIPT, NULL, 0), -EMSGSIZE);
    assert_int_equal(al_tlv_add(&b, AL_TLV_SCRIPT, data, SIZE_MAX), -EMSGSIZE);
    assert_int_equal(al_tlv_add_u64(&b, AL_TLV_BYTES, 1), -EMSGSIZE);
    free(data);
    al_tlv_buf_free(&b);
}

static void test_u64_parse(void **state)
{
    (void)state;
    struct {
        const char *s;
        int want;
        uint64_t v;
    } cases[] = {
            {"0", 0, 0},
            {"7", 0, 7},
            {"00012", 0, 12},
            {"4294967296", 0, 4294967296ull},
            {"18446744073709551615", 0, UINT64_MAX},
            {"18446744073709551616", -ERANGE, 0},
            {"99999999999999999999", -ERANGE, 0},
            {"123456789012345678901234567890", -ERANGE, 0},
            {"", -EINVAL, 0},
            {"-1", -EINVAL, 0},
            {"+1", -EINVAL, 0},
            {" 1", -EINVAL, 0},
            {"1 ", -EINVAL, 0},
            {"1a", -EINVAL, 0},
            {"0x10", -EINVAL, 0},
            {"1.5", -EINVAL, 0},
            {"99999999999999999999x", -EINVAL, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t v = 4242;
        int r = al_tlv_value_u64((const uint8_t *)cases[i].s, (uint32_t)strlen(cases[i].s), &v);
        if (r != cases[i].want)
            fail_msg("'%s': got %d, want %d", cases[i].s, r, cases[i].want);
        assert_true(v == (r == 0 ? cases[i].v : 4242));
    }
    uint64_t v;
    assert_int_equal(al_tlv_value_u64(NULL, 0, &v), -EINVAL);
    /* embedded NUL is junk, not an end */
    assert_int_equal(al_tlv_value_u64((const uint8_t *)"1\0002", 3, &v), -EINVAL);
}

static void test_text_and_build(void **state)
{
    (void)state;
    assert_true(al_tlv_value_is_text((const uint8_t *)"abc", 3));
    assert_true(al_tlv_value_is_text(NULL, 0));
    assert_false(al_tlv_value_is_text((const uint8_t *)"a\0c", 3));
    assert_false(al_tlv_value_is_text((const uint8_t *)"abc", 4)); /* the terminator */

    uint8_t *f = NULL;
    size_t n = 0;
    assert_int_equal(al_frame_build(AL_FRAME_CANCEL, NULL, 0, &f, &n), 0);
    assert_int_equal(n, AL_PROTO_HEADER_SIZE);
    free(f);
    f = NULL;
    assert_int_equal(al_frame_build(3, NULL, 5, &f, &n), -EINVAL);
    assert_int_equal(al_frame_build(99, "x", 1, &f, &n), -EPROTO);
    uint8_t *big = calloc(1, AL_PROTO_MAX_PAYLOAD + 1);
    assert_int_equal(al_frame_build(AL_FRAME_ARTIFACT, big, AL_PROTO_MAX_PAYLOAD + 1, &f, &n),
                     -EMSGSIZE);
    assert_null(f);
    assert_int_equal(al_frame_build(AL_FRAME_ARTIFACT, big, AL_PROTO_MAX_PAYLOAD, &f, &n), 0);
    assert_int_equal(n, AL_PROTO_HEADER_SIZE + AL_PROTO_MAX_PAYLOAD);
    free(f);
    free(big);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_header_round_trip), cmocka_unit_test(test_header_validation),
            cmocka_unit_test(test_decoder_chunking),  cmocka_unit_test(test_decoder_empty_feed),
            cmocka_unit_test(test_decoder_rejects),   cmocka_unit_test(test_tlv_round_trip),
            cmocka_unit_test(test_tlv_truncated),     cmocka_unit_test(test_tlv_limits),
            cmocka_unit_test(test_u64_parse),         cmocka_unit_test(test_text_and_build),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
