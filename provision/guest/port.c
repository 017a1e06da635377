#include "provision/guest/port.h"

#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static int connect_unix(const char *path, struct al_error **err)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = strlen(path);
    if (len >= sizeof(sa.sun_path))
        return al_error_set(err, ENAMETOOLONG, "socket path '%s' too long", path);
    memcpy(sa.sun_path, path, len + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return al_error_set_errno(err, errno, "socket");
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        return al_error_set_errno(err, e, "connecting to '%s'", path);
    }
    return fd;
}

int port_open(struct port *p, const char *path, unsigned wait_ms, struct al_error **err)
{
    memset(p, 0, sizeof(*p));
    p->fd = -1;
    for (unsigned waited = 0;; waited += 100) {
        struct stat st;
        if (stat(path, &st) == 0) {
            if (S_ISSOCK(st.st_mode)) {
                int fd = connect_unix(path, err);
                if (fd < 0)
                    return fd;
                p->fd = fd;
                p->is_socket = true;
                return 0;
            }
            int fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
            if (fd < 0)
                return al_error_set_errno(err, errno, "opening port '%s'", path);
            p->fd = fd;
            return 0;
        }
        if (errno != ENOENT || waited >= wait_ms)
            return al_error_set_errno(err, errno, "port '%s'", path);
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

int port_watch_host(struct port *p)
{
    if (p->is_socket || p->fd < 0)
        return 0;
    int fl = fcntl(p->fd, F_GETFL);
    if (fl < 0 || fcntl(p->fd, F_SETOWN, getpid()) < 0 || fcntl(p->fd, F_SETFL, fl | O_ASYNC) < 0)
        return -1;
    return 0;
}

void port_close(struct port *p)
{
    if (p->fd >= 0)
        close(p->fd);
    p->fd = -1;
    free(p->q);
    p->q = NULL;
    p->qlen = p->qoff = p->qcap = 0;
}

size_t port_backlog(const struct port *p)
{
    return p->qlen - p->qoff;
}

static int reserve(struct port *p, size_t extra)
{
    if (p->qoff > 0 && p->qoff == p->qlen) {
        p->qoff = p->qlen = 0;
    } else if (p->qoff > 0 && p->qlen + extra > p->qcap) {
        memmove(p->q, p->q + p->qoff, p->qlen - p->qoff);
        p->qlen -= p->qoff;
        p->qoff = 0;
    }
    if (p->qlen + extra <= p->qcap)
        return 0;
    size_t cap = p->qcap ? p->qcap : 64 * 1024;
    while (cap < p->qlen + extra) {
        if (cap > SIZE_MAX / 2)
            return -ENOMEM;
        cap *= 2;
    }
    uint8_t *q = realloc(p->q, cap);
    if (!q)
        return -ENOMEM;
    p->q = q;
    p->qcap = cap;
    return 0;
}

int port_send(struct port *p, uint8_t type, const void *payload, size_t len)
{
    if (p->dead)
        return -EPIPE;
    if (len > AL_PROTO_MAX_PAYLOAD)
        return -EMSGSIZE;
    int r = reserve(p, AL_PROTO_HEADER_SIZE + len);
    if (r < 0)
        return r;
    r = al_frame_header_encode(p->q + p->qlen, type, (uint32_t)len);
    if (r < 0)
        return r;
    if (len)
        memcpy(p->q + p->qlen + AL_PROTO_HEADER_SIZE, payload, len);
    p->qlen += AL_PROTO_HEADER_SIZE + len;
    return 0;
}

int port_send_tlv(struct port *p, uint8_t type, const struct al_tlv_buf *b)
{
    return port_send(p, type, b->data, b->len);
}

long port_flush(struct port *p)
{
    if (p->dead)
        return -EPIPE;
    long total = 0;
    while (p->qoff < p->qlen) {
        size_t n = p->qlen - p->qoff;
        ssize_t w = p->is_socket ? send(p->fd, p->q + p->qoff, n, MSG_NOSIGNAL | MSG_DONTWAIT)
                                 : write(p->fd, p->q + p->qoff, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            p->dead = true;
            return -EPIPE;
        }
        p->qoff += (size_t)w;
        total += w;
    }
    if (p->qoff == p->qlen)
        p->qoff = p->qlen = 0;
    return total;
}
