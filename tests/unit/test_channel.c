/* The host end of the VM channel against a fake guest on a unix socket. */
#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runner/base/buf.h"
#include "runner/base/util.h"
#include "provision/channel.h"

struct fake_guest {
    uv_pipe_t server;
    uv_pipe_t conn;
    bool accepted;
    struct al_buf rx; /* what the host sent */
    uv_write_t w;
};

struct ctx {
    uv_loop_t loop;
    char *dir;
    char *path;
    struct fake_guest g;
    struct channel *ch;
    int frames;
    uint8_t types[64];
    struct al_buf out;
    bool closed;
    int close_result;
    char close_msg[128];
    bool file_done;
    int file_result;
    bool stop;
};

static void g_alloc(uv_handle_t *h, size_t s, uv_buf_t *b)
{
    (void)h;
    b->base = malloc(s);
    b->len = s;
}

static void g_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    struct ctx *c = s->data;
    if (n > 0)
        al_buf_append(&c->g.rx, b->base, (size_t)n);
    free(b->base);
}

static void g_on_conn(uv_stream_t *server, int status)
{
    struct ctx *c = server->data;
    assert_int_equal(status, 0);
    uv_pipe_init(&c->loop, &c->g.conn, 0);
    c->g.conn.data = c;
    assert_int_equal(uv_accept(server, (uv_stream_t *)&c->g.conn), 0);
    c->g.accepted = true;
    uv_read_start((uv_stream_t *)&c->g.conn, g_alloc, g_read);
}

static void g_listen(struct ctx *c)
{
    uv_pipe_init(&c->loop, &c->g.server, 0);
    c->g.server.data = c;
    assert_int_equal(uv_pipe_bind(&c->g.server, c->path), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&c->g.server, 4, g_on_conn), 0);
}

static void g_written(uv_write_t *w, int status)
{
    (void)status;
    free(w->data);
    free(w);
}

static void g_send_raw(struct ctx *c, const void *data, size_t len)
{
    uv_write_t *w = calloc(1, sizeof(*w));
    w->data = malloc(len);
    memcpy(w->data, data, len);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)len);
    assert_int_equal(uv_write(w, (uv_stream_t *)&c->g.conn, &b, 1, g_written), 0);
}

static void g_send(struct ctx *c, uint8_t type, const void *payload, size_t len)
{
    uint8_t *f = NULL;
    size_t flen = 0;
    assert_int_equal(al_frame_build(type, payload, len, &f, &flen), 0);
    g_send_raw(c, f, flen);
    free(f);
}

static void on_frame(struct channel *ch, const struct al_frame *f, void *data)
{
    (void)ch;
    struct ctx *c = data;
    c->types[c->frames++ % 64] = f->type;
    if (f->type == AL_FRAME_STDOUT)
        al_buf_append(&c->out, f->payload, f->len);
}

static void on_closed(struct channel *ch, int result, const char *msg, void *data)
{
    (void)ch;
    struct ctx *c = data;
    c->closed = true;
    c->close_result = result;
    snprintf(c->close_msg, sizeof(c->close_msg), "%s", msg);
}

static const struct channel_ops ops = {.frame = on_frame, .closed = on_closed};

static int setup(void **state)
{
    struct ctx *c = calloc(1, sizeof(*c));
    uv_loop_init(&c->loop);
    c->dir = test_tmpdir("chan");
    c->path = al_path_join(c->dir, "job.sock");
    *state = c;
    return 0;
}

static int teardown(void **state)
{
    struct ctx *c = *state;
    if (c->ch)
        channel_close(c->ch);
    if (uv_is_active((uv_handle_t *)&c->g.server) || c->g.server.loop)
        uv_close((uv_handle_t *)&c->g.server, NULL);
    if (c->g.accepted)
        uv_close((uv_handle_t *)&c->g.conn, NULL);
    uv_run(&c->loop, UV_RUN_DEFAULT);
    test_loop_close(&c->loop);
    al_buf_free(&c->g.rx);
    al_buf_free(&c->out);
    free(c->path);
    test_tmpdir_remove(c->dir);
    free(c);
    return 0;
}

static void on_late_listen(uv_timer_t *t)
{
    g_listen(t->data);
    uv_close((uv_handle_t *)t, NULL);
}

static void test_connect_retry_and_frames(void **state)
{
    struct ctx *c = *state;
    struct al_error *err = NULL;
    /* the socket appears only after 200 ms: the channel keeps trying */
    assert_int_equal(channel_open(&c->loop, c->path, 5000, 0, &ops, c, &c->ch, &err), 0);
    uv_timer_t late;
    uv_timer_init(&c->loop, &late);
    late.data = c;
    uv_timer_start(&late, on_late_listen, 200, 0);
    while (!c->g.accepted || !channel_is_connected(c->ch))
        uv_run(&c->loop, UV_RUN_ONCE);

    g_send(c, AL_FRAME_HELLO, NULL, 0);
    g_send(c, AL_FRAME_STDOUT, "hello ", 6);
    /* a frame split over three writes still arrives whole */
    uint8_t *f = NULL;
    size_t flen = 0;
    al_frame_build(AL_FRAME_STDOUT, "world", 5, &f, &flen);
    g_send_raw(c, f, 3);
    g_send_raw(c, f + 3, 6);
    g_send_raw(c, f + 9, flen - 9);
    free(f);
    g_send(c, AL_FRAME_EXIT, NULL, 0);
    while (c->frames < 4)
        uv_run(&c->loop, UV_RUN_ONCE);
    assert_int_equal(c->types[0], AL_FRAME_HELLO);
    assert_int_equal(c->types[3], AL_FRAME_EXIT);
    assert_int_equal(c->out.len, 11);
    assert_memory_equal(c->out.data, "hello world", 11);

    /* the guest goes away: closed with 0 */
    uv_close((uv_handle_t *)&c->g.conn, NULL);
    c->g.accepted = false;
    while (!c->closed)
        uv_run(&c->loop, UV_RUN_ONCE);
    assert_int_equal(c->close_result, 0);
}

static void test_bad_frames_close(void **state)
{
    struct ctx *c = *state;
    struct al_error *err = NULL;
    g_listen(c);
    assert_int_equal(channel_open(&c->loop, c->path, 5000, 1024, &ops, c, &c->ch, &err), 0);
    while (!c->g.accepted || !channel_is_connected(c->ch))
        uv_run(&c->loop, UV_RUN_ONCE);
    /* larger than the 1024-byte limit this channel was opened with */
    uint8_t hdr[AL_PROTO_HEADER_SIZE];
    al_frame_header_encode(hdr, AL_FRAME_STDOUT, 4096);
    g_send_raw(c, hdr, sizeof(hdr));
    while (!c->closed)
        uv_run(&c->loop, UV_RUN_ONCE);
    assert_int_equal(c->close_result, -EMSGSIZE);
    assert_non_null(strstr(c->close_msg, "oversized"));
    assert_int_equal(c->frames, 0);
}

/* Over its frame rate the channel stops reading for a while: every frame
 * still arrives, only later, and the pause is accounted. */
static void test_rate_limit_throttles(void **state)
{
    struct ctx *c = *state;
    struct al_error *err = NULL;
    g_listen(c);
    assert_int_equal(channel_open(&c->loop, c->path, 5000, 0, &ops, c, &c->ch, &err), 0);
    channel_set_rate_limit(c->ch, 0, 100);
    while (!c->g.accepted || !channel_is_connected(c->ch))
        uv_run(&c->loop, UV_RUN_ONCE);
    uint64_t t0 = al_now_mono_ms();
    /* a burst of 100 frames is free; 150 more at 100/s take about 1.5 s */
    for (int i = 0; i < 250; i++)
        g_send(c, AL_FRAME_STDOUT, "x", 1);
    while (c->frames < 250 && !c->closed)
        uv_run(&c->loop, UV_RUN_ONCE);
    /* what one read brought is delivered at once (the bucket goes into
     * debt); the next frame waits until the debt is paid */
    g_send(c, AL_FRAME_STDOUT, "y", 1);
    while (c->frames < 251 && !c->closed)
        uv_run(&c->loop, UV_RUN_ONCE);
    uint64_t took = al_now_mono_ms() - t0;
    assert_false(c->closed);
    assert_int_equal(c->out.len, 251);
    uint64_t ms = 0, count = 0;
    channel_throttle_stats(c->ch, &ms, &count);
    assert_true(count >= 1);
    assert_true(ms >= 1000);
    assert_true(took >= 1000);
}

static void test_garbage_closes(void **state)
{
    struct ctx *c = *state;
    struct al_error *err = NULL;
    g_listen(c);
    assert_int_equal(channel_open(&c->loop, c->path, 5000, 0, &ops, c, &c->ch, &err), 0);
    while (!c->g.accepted || !channel_is_connected(c->ch))
        uv_run(&c->loop, UV_RUN_ONCE);
    g_send_raw(c, "GET / HTTP/1.1\r\n\r\n", 18);
    while (!c->closed)
        uv_run(&c->loop, UV_RUN_ONCE);
    assert_int_equal(c->close_result, -EPROTO);
    assert_non_null(strstr(c->close_msg, "malformed"));
}

static void on_file_sent(struct channel *ch, int result, void *data)
{
    (void)ch;
    struct ctx *c = data;
    c->file_done = true;
    c->file_result = result;
}

static void test_send_file_then_frame(void **state)
{
    struct ctx *c = *state;
    struct al_error *err = NULL;
    g_listen(c);
    /* 600 KiB: three chunks */
    size_t size = 600 * 1024;
    char *data = malloc(size);
    for (size_t i = 0; i < size; i++)
        data[i] = (char)(i % 251);
    char *file = al_path_join(c->dir, "wd.tar");
    assert_int_equal(al_write_file_atomic(file, data, size, 0600, &err), 0);

    assert_int_equal(channel_open(&c->loop, c->path, 5000, 0, &ops, c, &c->ch, &err), 0);
    /* queued before the connection exists: goes out once connected, in order */
    assert_int_equal(channel_send(c->ch, AL_FRAME_JOB, "job", 3), 0);
    assert_int_equal(
            channel_send_file(c->ch, AL_FRAME_WORKDIR, AL_FRAME_WORKDIR_END, file, on_file_sent, c),
            0);
    assert_int_equal(channel_send(c->ch, AL_FRAME_START, NULL, 0), 0);
    /* the guest reads everything; parse what it got */
    size_t expect = (8 + 3) + 3 * 8 + size + 8 + 8;
    while (c->g.rx.len < expect)
        uv_run(&c->loop, UV_RUN_ONCE);
    assert_true(c->file_done);
    assert_int_equal(c->file_result, 0);

    struct al_frame_decoder dec = {0};
    size_t off = 0;
    uint8_t order[16];
    int n = 0;
    struct al_buf wd = AL_BUF_INIT;
    while (off < c->g.rx.len) {
        size_t used;
        struct al_frame f;
        int r = al_frame_decoder_feed(&dec, (uint8_t *)c->g.rx.data + off, c->g.rx.len - off, &used,
                                      &f);
        assert_true(r >= 0);
        off += used;
        if (r == 1) {
            order[n++] = f.type;
            if (f.type == AL_FRAME_WORKDIR)
                al_buf_append(&wd, f.payload, f.len);
        }
    }
    al_frame_decoder_free(&dec);
    assert_int_equal(n, 6);
    assert_int_equal(order[0], AL_FRAME_JOB);
    assert_int_equal(order[1], AL_FRAME_WORKDIR);
    assert_int_equal(order[4], AL_FRAME_WORKDIR_END);
    assert_int_equal(order[5], AL_FRAME_START);
    assert_int_equal(wd.len, size);
    assert_memory_equal(wd.data, data, size);
    al_buf_free(&wd);
    free(file);
    free(data);
}

static void test_connect_timeout(void **state)
{
    struct ctx *c = *state;
    struct al_error *err = NULL;
    assert_int_equal(channel_open(&c->loop, c->path, 300, 0, &ops, c, &c->ch, &err), 0);
    while (!c->closed)
        uv_run(&c->loop, UV_RUN_ONCE);
    assert_int_equal(c->close_result, -ETIMEDOUT);
    assert_int_equal(channel_send(c->ch, AL_FRAME_START, NULL, 0), -ENOTCONN);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_connect_retry_and_frames, setup, teardown),
            cmocka_unit_test_setup_teardown(test_bad_frames_close, setup, teardown),
            cmocka_unit_test_setup_teardown(test_garbage_closes, setup, teardown),
            cmocka_unit_test_setup_teardown(test_send_file_then_frame, setup, teardown),
            cmocka_unit_test_setup_teardown(test_connect_timeout, setup, teardown),
            cmocka_unit_test_setup_teardown(test_rate_limit_throttles, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
