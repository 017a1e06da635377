#include "provision/channel.h"

#include <fcntl.h>
#include <libvirt/virterror.h>
#include <stdlib.h>
#include <string.h>

#include "runner/base/list.h"
#include "runner/base/macro.h"
#include "runner/base/ratelimit.h"
#include "runner/base/util.h"
#include "runner/loop/work.h"

#define READ_CHUNK     (64u * 1024u)
#define FILE_CHUNK     (256u * 1024u)
#define RETRY_DELAY_MS 50
/* reads of a stream per event, so that a busy guest cannot hold the loop */
#define STREAM_READS_PER_EVENT 16

enum item_kind { ITEM_FRAME, ITEM_FILE };

struct item {
    enum item_kind kind;
    struct al_list link; /* on channel.queue */
    /* ITEM_FRAME */
    uint8_t *buf;
    size_t len;
    /* ITEM_FILE */
    char *path;
    uint8_t type, end_type;
    void (*done)(struct channel *ch, int result, void *data);
    void *done_data;
};

struct channel {
    uv_loop_t *loop;
    uv_pipe_t pipe;
    /* the remote transport instead of the pipe: a libvirt stream driven by
     * its event callback (READABLE while reading, WRITABLE while a write is
     * pending) */
    virStreamPtr stream;
    int stream_events;
    bool stream_reading;
    const uint8_t *wbuf; /* the write in progress on the stream */
    size_t wlen, woff;
    uv_timer_t retry;
    uv_timer_t throttle; /* reading paused until it fires */
    uv_write_t wreq;
    uv_fs_t fsreq;
    char *path;
    const struct channel_ops *ops;
    void *data;
    struct al_frame_decoder dec;
    uint8_t rbuf[READ_CHUNK];
    uint64_t received;
    uint64_t deadline_ms;
    struct al_rate_limit byte_rate, frame_rate;
    uint64_t throttled_ms;
    uint64_t throttles;
    bool throttled;

    struct al_list queue; /* FIFO of items: the front one is being sent */
    bool writing;
    /* the file being streamed by the front item */
    int file_fd;
    uint8_t *chunk; /* frame header + FILE_CHUNK bytes */
    bool fs_busy;

    bool connected;
    bool ended;   /* the connection is over; no more I/O */
    bool closing; /* channel_close() called */
    bool pipe_open;
    int pending_closes;
};

static void process_queue(struct channel *ch);
static int stream_set_events(struct channel *ch, int events);
static void written(struct channel *ch, int status);

/* The item being sent, or NULL when the queue is empty. */
static struct item *queue_front(struct channel *ch)
{
    if (al_list_empty(&ch->queue))
        return NULL;
    return al_list_first_entry(&ch->queue, struct item, link);
}

static void item_free(struct item *it)
{
    if (!it)
        return;
    free(it->buf);
    free(it->path);
    free(it);
}

static void maybe_free(struct channel *ch)
{
    if (!ch->closing || ch->pending_closes || ch->fs_busy || ch->writing)
        return;
    al_list_for_each_safe(it, tmp, &ch->queue, struct item, link) {
        al_list_del(&it->link);
        item_free(it);
    }
    if (ch->file_fd >= 0)
        close(ch->file_fd);
    /* only now: the stream's own callback may have been on the stack when
     * channel_close() was called */
    if (ch->stream)
        channel_stream_release(ch->loop, ch->stream);
    al_frame_decoder_free(&ch->dec);
    free(ch->chunk);
    free(ch->path);
    free(ch);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct channel *ch = h->data;
    ch->pending_closes--;
    maybe_free(ch);
}

/* Ends the connection once and tells the owner (unless it closed us). */
static void end(struct channel *ch, int result, const char *message)
{
    if (ch->ended)
        return;
    ch->ended = true;
    ch->connected = false;
    if (ch->stream)
        stream_set_events(ch, 0);
    else if (ch->pipe_open)
        uv_read_stop((uv_stream_t *)&ch->pipe);
    /* fail pending file streams so their owners hear about it */
    al_list_for_each(it, &ch->queue, struct item, link) {
        if (it->kind == ITEM_FILE && it->done && !ch->closing) {
            void (*done)(struct channel *, int, void *) = it->done;
            it->done = NULL;
            done(ch, -ENOTCONN, it->done_data);
        }
    }
    if (!ch->closing && ch->ops->closed)
        ch->ops->closed(ch, result, message, ch->data);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);

static int read_start(struct channel *ch)
{
    if (ch->stream) {
        ch->stream_reading = true;
        return stream_set_events(ch, ch->stream_events | VIR_STREAM_EVENT_READABLE);
    }
    return uv_read_start((uv_stream_t *)&ch->pipe, on_alloc, on_read);
}

static void read_stop(struct channel *ch)
{
    if (ch->stream) {
        ch->stream_reading = false;
        stream_set_events(ch, ch->stream_events & ~VIR_STREAM_EVENT_READABLE);
        return;
    }
    uv_read_stop((uv_stream_t *)&ch->pipe);
}

static void on_throttle_timer(uv_timer_t *t)
{
    struct channel *ch = t->data;
    ch->throttled = false;
    if (ch->ended || ch->closing)
        return;
    int r = read_start(ch);
    if (r < 0)
        end(ch, r, ch->stream ? "resuming reading the channel stream failed" : uv_strerror(r));
}

/* Accounts what one read brought; over the rate, stops reading for as long
 * as the buckets need to refill. The guest's writes then block in its
 * virtio-serial port: it is slowed down, not ended, and nothing queues up
 * on the host. */
static void throttle(struct channel *ch, uint64_t bytes, uint64_t frames)
{
    uint64_t now = al_now_mono_us();
    uint64_t wait = al_rate_limit_take(&ch->byte_rate, bytes, now);
    uint64_t wf = al_rate_limit_take(&ch->frame_rate, frames, now);
    if (wf > wait)
        wait = wf;
    if (!wait)
        return;
    read_stop(ch);
    ch->throttled = true;
    ch->throttled_ms += wait;
    ch->throttles++;
    uv_timer_start(&ch->throttle, on_throttle_timer, wait, 0);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    struct channel *ch = h->data;
    buf->base = (char *)ch->rbuf;
    buf->len = sizeof(ch->rbuf);
}

/* Decodes n bytes read into rbuf. */
static void consume(struct channel *ch, size_t n);

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct channel *ch = s->data;
    (void)buf;
    if (n == UV_EOF) {
        end(ch, 0, "the guest closed the channel");
        return;
    }
    if (n < 0) {
        end(ch, (int)n, uv_strerror((int)n));
        return;
    }
    consume(ch, (size_t)n);
}

static void consume(struct channel *ch, size_t n)
{
    ch->received += (uint64_t)n;
    uint64_t frames = 0;
    size_t off = 0;
    while (off < n && !ch->ended && !ch->closing) {
        size_t used = 0;
        struct al_frame f;
        int r = al_frame_decoder_feed(&ch->dec, ch->rbuf + off, n - off, &used, &f);
        if (r < 0) {
            if (r == -EMSGSIZE)
                end(ch, -EMSGSIZE, "the guest sent an oversized frame");
            else
                end(ch, -EPROTO, "the guest sent a malformed frame");
            return;
        }
        off += used;
        if (r == 0)
            break;
        frames++;
        ch->ops->frame(ch, &f, ch->data);
    }
    if (!ch->ended && !ch->closing)
        throttle(ch, (uint64_t)n, frames);
}

static void start_reading(struct channel *ch)
{
    ch->connected = true;
    int r = read_start(ch);
    if (r < 0) {
        end(ch, r, uv_strerror(r));
        return;
    }
    process_queue(ch);
}

static void try_connect(struct channel *ch);

static void on_retry_timer(uv_timer_t *t)
{
    try_connect(t->data);
}

static void on_pipe_closed_for_retry(uv_handle_t *h)
{
    struct channel *ch = h->data;
    ch->pending_closes--;
    ch->pipe_open = false;
    if (ch->closing) {
        maybe_free(ch);
        return;
    }
    uv_timer_start(&ch->retry, on_retry_timer, RETRY_DELAY_MS, 0);
}

static void on_connect(uv_connect_t *req, int status)
{
    struct channel *ch = req->data;
    free(req);
    if (ch->closing || ch->ended)
        return;
    if (status == 0) {
        start_reading(ch);
        return;
    }
    bool retryable = status == UV_ENOENT || status == UV_ECONNREFUSED || status == UV_EAGAIN;
    if (!retryable || uv_now(ch->loop) >= ch->deadline_ms) {
        end(ch, -ETIMEDOUT, "could not connect to the VM's channel socket");
        return;
    }
    ch->pending_closes++;
    uv_close((uv_handle_t *)&ch->pipe, on_pipe_closed_for_retry);
}

static void try_connect(struct channel *ch)
{
    if (ch->closing || ch->ended)
        return;
    uv_pipe_init(ch->loop, &ch->pipe, 0);
    ch->pipe.data = ch;
    ch->pipe_open = true;
    uv_connect_t *req = calloc(1, sizeof(*req));
    if (!req) {
        end(ch, -ENOMEM, "out of memory");
        return;
    }
    req->data = ch;
    uv_pipe_connect(req, &ch->pipe, ch->path, on_connect);
}

/* A channel of either transport with nothing started yet (freed with
 * free() of its chunk and itself), or NULL on ENOMEM. */
static struct channel *channel_alloc(uv_loop_t *loop, uint32_t max_payload,
                                     const struct channel_ops *ops, void *data)
{
    struct channel *ch = calloc(1, sizeof(*ch));
    if (!ch || !(ch->chunk = malloc(AL_PROTO_HEADER_SIZE + FILE_CHUNK))) {
        free(ch);
        return NULL;
    }
    ch->loop = loop;
    ch->ops = ops;
    ch->data = data;
    al_list_init(&ch->queue);
    ch->file_fd = -1;
    ch->dec.max_payload = max_payload ? max_payload : AL_PROTO_MAX_PAYLOAD;
    return ch;
}

/* From here on the channel is freed by channel_close() only. */
static void timers_init(struct channel *ch)
{
    uv_timer_init(ch->loop, &ch->retry);
    ch->retry.data = ch;
    uv_timer_init(ch->loop, &ch->throttle);
    ch->throttle.data = ch;
}

/* ---------------------------------------------------- the stream transport */

static int stream_set_events(struct channel *ch, int events)
{
    if (!ch->stream || events == ch->stream_events)
        return 0;
    if (virStreamEventUpdateCallback(ch->stream, events) < 0)
        return -EIO;
    ch->stream_events = events;
    return 0;
}

static const char *stream_error(void)
{
    const char *m = virGetLastErrorMessage();
    return m && *m ? m : "the libvirt stream failed";
}

/* Sends what is left of the pending write; false when the stream cannot
 * take more now or the channel ended. */
static bool stream_flush(struct channel *ch)
{
    while (ch->woff < ch->wlen) {
        int n = virStreamSend(ch->stream, (const char *)ch->wbuf + ch->woff, ch->wlen - ch->woff);
        if (n == -2)
            return false;
        if (n < 0) {
            ch->writing = false;
            end(ch, -EIO, stream_error());
            return false;
        }
        ch->woff += (size_t)n;
    }
    ch->wbuf = NULL;
    stream_set_events(ch, ch->stream_events & ~VIR_STREAM_EVENT_WRITABLE);
    return true;
}

static void on_stream_event(virStreamPtr st, int events, void *opaque)
{
    struct channel *ch = opaque;
    (void)st;
    if (ch->closing || ch->ended)
        return;
    if ((events & VIR_STREAM_EVENT_WRITABLE) && ch->writing && stream_flush(ch))
        written(ch, 0);
    for (int i = 0; i < STREAM_READS_PER_EVENT && ch->stream_reading && !ch->closing && !ch->ended;
         i++) {
        int n = virStreamRecv(ch->stream, (char *)ch->rbuf, sizeof(ch->rbuf));
        if (n == -2)
            break;
        if (n == 0) {
            end(ch, 0, "the guest closed the channel");
            break;
        }
        if (n < 0) {
            end(ch, -EIO, stream_error());
            break;
        }
        consume(ch, (size_t)n);
    }
}

int channel_open_stream(uv_loop_t *loop, virStreamPtr st, uint32_t max_payload,
                        const struct channel_ops *ops, void *data, struct channel **ret,
                        struct al_error **err)
{
    struct channel *ch = channel_alloc(loop, max_payload, ops, data);
    if (!ch)
        return al_error_set(err, ENOMEM, "allocating a channel");
    if (virStreamEventAddCallback(st, VIR_STREAM_EVENT_READABLE, on_stream_event, ch, NULL) < 0) {
        int r = al_error_set(err, EIO, "watching the channel stream: %s", stream_error());
        free(ch->chunk);
        free(ch);
        return r;
    }
    ch->stream = st;
    ch->stream_events = VIR_STREAM_EVENT_READABLE;
    ch->stream_reading = true;
    ch->connected = true;
    timers_init(ch);
    *ret = ch;
    return 0;
}

static int stream_release_work(void *data, struct al_error **err)
{
    (void)err;
    virStreamPtr st = data;
    virStreamAbort(st);
    virStreamFree(st);
    return 0;
}

static void stream_release_done(void *data, int result, struct al_error *err)
{
    (void)data;
    (void)result;
    al_error_free(err);
}

void channel_stream_release(uv_loop_t *loop, virStreamPtr st)
{
    if (!st)
        return;
    /* aborting is a round trip to libvirtd: not on the loop */
    if (al_work_queue(loop, stream_release_work, stream_release_done, st, NULL) < 0)
        stream_release_work(st, NULL);
}

/* ------------------------------------------------------ the unix socket */

int channel_open(uv_loop_t *loop, const char *path, unsigned connect_timeout_ms,
                 uint32_t max_payload, const struct channel_ops *ops, void *data,
                 struct channel **ret, struct al_error **err)
{
    struct channel *ch = channel_alloc(loop, max_payload, ops, data);
    if (ch && !(ch->path = strdup(path))) {
        free(ch->chunk);
        free(ch);
        ch = NULL;
    }
    if (!ch)
        return al_error_set(err, ENOMEM, "allocating a channel");
    ch->deadline_ms = uv_now(loop) + connect_timeout_ms;
    timers_init(ch);
    try_connect(ch);
    *ret = ch;
    return 0;
}

static int enqueue(struct channel *ch, struct item *it)
{
    if (ch->ended || ch->closing) {
        item_free(it);
        return -ENOTCONN;
    }
    al_list_add_tail(&ch->queue, &it->link);
    process_queue(ch);
    return 0;
}

int channel_send(struct channel *ch, uint8_t type, const void *payload, size_t len)
{
    if (len > AL_PROTO_MAX_PAYLOAD)
        return -EMSGSIZE;
    struct item *it = calloc(1, sizeof(*it));
    if (!it)
        return -ENOMEM;
    it->kind = ITEM_FRAME;
    int r = al_frame_build(type, payload, len, &it->buf, &it->len);
    if (r < 0) {
        free(it);
        return r;
    }
    return enqueue(ch, it);
}

int channel_send_file(struct channel *ch, uint8_t type, uint8_t end_type, const char *path,
                      void (*done)(struct channel *ch, int result, void *data), void *data)
{
    struct item *it = calloc(1, sizeof(*it));
    if (!it)
        return -ENOMEM;
    it->kind = ITEM_FILE;
    it->path = strdup(path);
    if (!it->path) {
        free(it);
        return -ENOMEM;
    }
    it->type = type;
    it->end_type = end_type;
    it->done = done;
    it->done_data = data;
    return enqueue(ch, it);
}

/* Drops the front item; the queue must not be empty. */
static void pop_front(struct channel *ch)
{
    struct item *it = queue_front(ch);
    al_list_del(&it->link);
    item_free(it);
}

static void written(struct channel *ch, int status)
{
    ch->writing = false;
    if (ch->closing) {
        maybe_free(ch);
        return;
    }
    if (status < 0) {
        end(ch, status, uv_strerror(status));
        return;
    }
    struct item *it = queue_front(ch);
    if (it && it->kind == ITEM_FRAME)
        pop_front(ch);
    process_queue(ch);
}

static void on_written(uv_write_t *w, int status)
{
    written(w->data, status);
}

static void write_buf(struct channel *ch, uint8_t *buf, size_t len)
{
    if (ch->stream) {
        /* sent from the WRITABLE event: a write never completes inside
         * process_queue(), so queued frames cannot recurse */
        ch->writing = true;
        ch->wbuf = buf;
        ch->wlen = len;
        ch->woff = 0;
        int r = stream_set_events(ch, ch->stream_events | VIR_STREAM_EVENT_WRITABLE);
        if (r < 0) {
            ch->writing = false;
            end(ch, r, "writing to the channel failed");
        }
        return;
    }
    uv_buf_t b = uv_buf_init((char *)buf, (unsigned)len);
    ch->writing = true;
    ch->wreq.data = ch;
    int r = uv_write(&ch->wreq, (uv_stream_t *)&ch->pipe, &b, 1, on_written);
    if (r < 0) {
        ch->writing = false;
        end(ch, r, uv_strerror(r));
    }
}

static void file_finish(struct channel *ch, int result)
{
    struct item *it = queue_front(ch);
    if (ch->file_fd >= 0) {
        close(ch->file_fd);
        ch->file_fd = -1;
    }
    void (*done)(struct channel *, int, void *) = it->done;
    void *data = it->done_data;
    it->done = NULL;
    pop_front(ch);
    if (done)
        done(ch, result, data);
}

static void on_file_read(uv_fs_t *req)
{
    struct channel *ch = req->data;
    ssize_t n = req->result;
    uv_fs_req_cleanup(req);
    ch->fs_busy = false;
    if (ch->closing) {
        maybe_free(ch);
        return;
    }
    if (ch->ended)
        return;
    struct item *it = queue_front(ch);
    if (n < 0) {
        file_finish(ch, (int)n);
        process_queue(ch);
        return;
    }
    if (n == 0) {
        /* the end marker goes out as a plain frame, then the item is done */
        uint8_t end_type = it->end_type;
        file_finish(ch, 0);
        struct item *marker = calloc(1, sizeof(*marker));
        if (!marker || al_frame_build(end_type, NULL, 0, &marker->buf, &marker->len) < 0) {
            free(marker);
            end(ch, -ENOMEM, "out of memory");
            return;
        }
        marker->kind = ITEM_FRAME;
        al_list_add(&ch->queue, &marker->link);
        process_queue(ch);
        return;
    }
    al_frame_header_encode(ch->chunk, it->type, (uint32_t)n);
    write_buf(ch, ch->chunk, AL_PROTO_HEADER_SIZE + (size_t)n);
}

static void file_read_next(struct channel *ch)
{
    uv_buf_t b = uv_buf_init((char *)ch->chunk + AL_PROTO_HEADER_SIZE, FILE_CHUNK);
    ch->fsreq.data = ch;
    ch->fs_busy = true;
    int r = uv_fs_read(ch->loop, &ch->fsreq, ch->file_fd, &b, 1, -1, on_file_read);
    if (r < 0) {
        ch->fs_busy = false;
        file_finish(ch, r);
        process_queue(ch);
    }
}

static void process_queue(struct channel *ch)
{
    while (ch->connected && !ch->ended && !ch->closing && !ch->writing && !ch->fs_busy &&
           !al_list_empty(&ch->queue)) {
        struct item *it = queue_front(ch);
        if (it->kind == ITEM_FRAME) {
            write_buf(ch, it->buf, it->len);
            return;
        }
        if (ch->file_fd < 0) {
            ch->file_fd = open(it->path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
            if (ch->file_fd < 0) {
                file_finish(ch, -errno);
                continue;
            }
        }
        file_read_next(ch);
        return;
    }
}

bool channel_is_connected(const struct channel *ch)
{
    return ch->connected && !ch->ended;
}

uint64_t channel_bytes_received(const struct channel *ch)
{
    return ch->received;
}

void channel_set_rate_limit(struct channel *ch, uint64_t bytes_per_s, uint64_t frames_per_s)
{
    uint64_t now = al_now_mono_us();
    /* a burst holds at least one full read, so a read never waits alone */
    uint64_t burst = bytes_per_s > READ_CHUNK ? bytes_per_s : READ_CHUNK;
    al_rate_limit_init(&ch->byte_rate, bytes_per_s, burst, now);
    al_rate_limit_init(&ch->frame_rate, frames_per_s, 0, now);
}

void channel_throttle_stats(const struct channel *ch, uint64_t *ret_ms, uint64_t *ret_count)
{
    if (ret_ms)
        *ret_ms = ch->throttled_ms;
    if (ret_count)
        *ret_count = ch->throttles;
}

void channel_close(struct channel *ch)
{
    if (!ch || ch->closing)
        return;
    ch->closing = true;
    ch->ended = true;
    if (ch->stream) {
        /* no callback after this; a write under way is abandoned */
        virStreamEventRemoveCallback(ch->stream);
        ch->writing = false;
    }
    uv_timer_stop(&ch->retry);
    uv_timer_stop(&ch->throttle);
    ch->pending_closes += 2;
    uv_close((uv_handle_t *)&ch->retry, on_handle_closed);
    uv_close((uv_handle_t *)&ch->throttle, on_handle_closed);
    if (ch->pipe_open && !uv_is_closing((uv_handle_t *)&ch->pipe)) {
        ch->pending_closes++;
        uv_close((uv_handle_t *)&ch->pipe, on_handle_closed);
    }
    if (ch->fs_busy)
        uv_cancel((uv_req_t *)&ch->fsreq);
    maybe_free(ch);
}
