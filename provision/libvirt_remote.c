/* The libvirt backend's remote transport, for a host that shares no
 * filesystem with agentlabd: the seed ISO uploaded as a volume of the
 * backend's storage pool, the guest channel and the serial console opened
 * as libvirt streams. The console's bytes go to the same per-VM log file
 * virtlogd writes for a local VM, so everything that reads it works
 * unchanged. */
#include "provision/libvirt_priv.h"

#define SEED_CHUNK (64u * 1024u)
/* reads of the console per event, so that a chatty guest cannot hold the loop */
#define CONSOLE_READS_PER_EVENT 8
/* the console log starts over past this, as virtlogd rolls its file over */
#define CONSOLE_LOG_MAX (2u << 20)

struct lv_console {
    virStreamPtr st;
    int fd;
    uint64_t size;
    bool done; /* EOF or error: nothing more to read */
    char buf[16 * 1024];
};

/* ------------------------------------------------------------ the seed */

/* Sends the file at path into st (blocking), then finishes the stream. */
static int upload_file(virStreamPtr st, const char *path, struct al_error **err)
{
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return al_error_set(err, errno, "opening %s", path);
    _cleanup_free_ char *buf = malloc(SEED_CHUNK);
    if (!buf)
        return al_error_set(err, ENOMEM, "out of memory");
    for (;;) {
        ssize_t n = read(fd, buf, SEED_CHUNK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return al_error_set(err, errno, "reading %s", path);
        if (n == 0)
            break;
        for (ssize_t off = 0; off < n;) {
            int sent = virStreamSend(st, buf + off, (size_t)(n - off));
            if (sent < 0)
                return al_error_set(err, EIO, "sending the seed: %s", lv_libvirt_msg());
            off += sent;
        }
    }
    if (virStreamFinish(st) < 0)
        return al_error_set(err, EIO, "finishing the seed upload: %s", lv_libvirt_msg());
    return 0;
}

int lv_seed_upload(struct lv_vm *v, struct al_error **err)
{
    struct lv_backend *lb = v->lb;
    struct stat sb;
    if (stat(v->seed_path, &sb) < 0)
        return al_error_set(err, errno, "the seed ISO %s", v->seed_path);
    _cleanup_free_ char *xml = NULL;
    int r = seed_volume_xml_build(v->seed_vol_name, (uint64_t)sb.st_size, &xml, err);
    if (r < 0)
        return r;
    virStoragePoolPtr pool = virStoragePoolLookupByName(lb->conn, lb->pool_name);
    if (!pool)
        return al_error_set(err, EIO, "storage pool %s: %s", lb->pool_name, lv_libvirt_msg());
    virStorageVolPtr vol = virStorageVolCreateXML(pool, xml, 0);
    virStoragePoolFree(pool);
    if (!vol)
        return al_error_set(err, EIO, "creating the seed volume %s: %s", v->seed_vol_name,
                            lv_libvirt_msg());
    virStreamPtr st = virStreamNew(lb->conn, 0);
    if (!st)
        r = al_error_set(err, EIO, "a stream for the seed: %s", lv_libvirt_msg());
    else if (virStorageVolUpload(vol, st, 0, (unsigned long long)sb.st_size, 0) < 0)
        r = al_error_set(err, EIO, "uploading the seed volume %s: %s", v->seed_vol_name,
                         lv_libvirt_msg());
    else
        r = upload_file(st, v->seed_path, err);
    if (st) {
        if (r < 0)
            virStreamAbort(st);
        virStreamFree(st);
    }
    if (r == 0 && !(v->seed_vol_path = virStorageVolGetPath(vol)))
        r = al_error_set(err, EIO, "the seed volume's path: %s", lv_libvirt_msg());
    if (r < 0)
        virStorageVolDelete(vol, 0); /* no half volume */
    virStorageVolFree(vol);
    return r;
}

/* ------------------------------------------------------------- streams */

int lv_open_streams(struct lv_vm *v, struct al_error **err)
{
    virConnectPtr conn = v->lb->conn;
    v->con_stream = virStreamNew(conn, VIR_STREAM_NONBLOCK);
    if (!v->con_stream)
        return al_error_set(err, EIO, "a stream for the console: %s", lv_libvirt_msg());
    /* FORCE: nobody else can have the console of a domain this new but a
     * stale session of a domain of the same name */
    if (virDomainOpenConsole(v->dom, NULL, v->con_stream, VIR_DOMAIN_CONSOLE_FORCE) < 0)
        return al_error_set(err, EIO, "opening the console: %s", lv_libvirt_msg());
    v->chan_stream = virStreamNew(conn, VIR_STREAM_NONBLOCK);
    if (!v->chan_stream)
        return al_error_set(err, EIO, "a stream for the channel: %s", lv_libvirt_msg());
    if (virDomainOpenChannel(v->dom, AL_PROTO_PORT_NAME, v->chan_stream, VIR_DOMAIN_CHANNEL_FORCE) <
        0)
        return al_error_set(err, EIO, "opening the channel: %s", lv_libvirt_msg());
    return 0;
}

static void console_write(struct lv_console *c, const char *buf, size_t n)
{
    if (c->size + n > CONSOLE_LOG_MAX && ftruncate(c->fd, 0) == 0)
        c->size = 0; /* O_APPEND: the next write lands at the start */
    while (n > 0) {
        ssize_t w = write(c->fd, buf, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return; /* a full disk loses console lines, not the job */
        buf += w;
        n -= (size_t)w;
        c->size += (uint64_t)w;
    }
}

static void on_console_event(virStreamPtr st, int events, void *opaque)
{
    (void)events;
    struct lv_console *c = opaque;
    for (int i = 0; i < CONSOLE_READS_PER_EVENT && !c->done; i++) {
        int n = virStreamRecv(st, c->buf, sizeof(c->buf));
        if (n == -2)
            return;
        if (n <= 0) {
            /* the domain went away: its end is reported by the lifecycle
             * event or the channel */
            c->done = true;
            virStreamEventUpdateCallback(st, 0);
            return;
        }
        console_write(c, c->buf, (size_t)n);
    }
}

int lv_console_start(struct lv_vm *v, struct al_error **err)
{
    struct lv_console *c = calloc(1, sizeof(*c));
    if (!c)
        return al_error_set(err, ENOMEM, "out of memory");
    c->fd = open(v->console_log, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC | O_NOFOLLOW,
                 0640);
    if (c->fd < 0) {
        int r = al_error_set(err, errno, "opening %s", v->console_log);
        free(c);
        return r;
    }
    if (virStreamEventAddCallback(v->con_stream,
                                  VIR_STREAM_EVENT_READABLE | VIR_STREAM_EVENT_ERROR |
                                          VIR_STREAM_EVENT_HANGUP,
                                  on_console_event, c, NULL) < 0) {
        int r = al_error_set(err, EIO, "watching the console stream: %s", lv_libvirt_msg());
        close(c->fd);
        free(c);
        return r;
    }
    c->st = TAKE_PTR(v->con_stream);
    v->console = c;
    return 0;
}

/* Without a loop (the backend is gone) the abort waits here. */
static void release(uv_loop_t *loop, virStreamPtr st)
{
    if (!st)
        return;
    if (loop) {
        channel_stream_release(loop, st);
        return;
    }
    virStreamAbort(st);
    virStreamFree(st);
}

void lv_streams_stop(struct lv_vm *v)
{
    uv_loop_t *loop = v->lb ? v->lb->b->env.loop : NULL;
    struct lv_console *c = TAKE_PTR(v->console);
    if (c) {
        virStreamEventRemoveCallback(c->st);
        release(loop, c->st);
        close(c->fd);
        free(c);
    }
    virStreamPtr streams[] = {TAKE_PTR(v->con_stream), TAKE_PTR(v->chan_stream)};
    for (size_t i = 0; i < ARRAY_SIZE(streams); i++) {
        release(loop, streams[i]);
    }
}
