#include "provision/guest/helper.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "runner/base/error.h"
#include "runner/base/macro.h"
#include "provision/guest/job.h"
#include "provision/guest/port.h"
#include "provision/proto/proto.h"
#include "provision/guest/spawn.h"
#include "provision/guest/tarscan.h"

uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void note(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("agentlab-guest: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

void send_frame(struct helper *h, uint8_t type, const void *data, size_t len)
{
    if (port_backlog(&h->port) == 0)
        h->port_progress_at = now_ms();
    if (port_send(&h->port, type, data, len) == 0)
        flush_port(h);
}

void send_tlv(struct helper *h, uint8_t type, struct al_tlv_buf *b, int build_result)
{
    if (build_result == 0)
        send_frame(h, type, b->data, b->len);
    else
        note("cannot build frame %u: %s", type, strerror(-build_result));
    al_tlv_buf_free(b);
}

/* Formats into buf; false (buf empty) when fmt cannot be formatted. A
 * longer message is cut, which is fine for a diagnostic. */
static bool vformat(char *buf, size_t size, const char *fmt, va_list ap) _printf_(3, 0);

static bool vformat(char *buf, size_t size, const char *fmt, va_list ap)
{
    if (vsnprintf(buf, size, fmt, ap) >= 0)
        return true;
    buf[0] = '\0';
    return false;
}

static void send_diag(struct helper *h, const char *msg)
{
    note("%s", msg);
    struct al_tlv_buf b = {0};
    send_tlv(h, AL_FRAME_DIAG, &b, al_tlv_add_str(&b, AL_TLV_REASON, msg));
}

void diag(struct helper *h, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    bool ok = vformat(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (ok)
        send_diag(h, msg);
}

void collector_init(struct collector *c)
{
    c->fd = -1;
    c->len = 0;
    c->buf[0] = '\0';
}

bool collector_read(struct collector *c)
{
    char tmp[1024];
    ssize_t n = read(c->fd, tmp, sizeof(tmp));
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return true;
    if (n <= 0) {
        close(c->fd);
        c->fd = -1;
        return false;
    }
    size_t room = COLLECT_MAX - 1 - c->len;
    size_t take = (size_t)n < room ? (size_t)n : room;
    memcpy(c->buf + c->len, tmp, take);
    c->len += take;
    c->buf[c->len] = '\0';
    return true;
}

void collector_close(struct collector *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

const char *first_line(struct collector *c)
{
    char *nl = strchr(c->buf, '\n');
    if (nl)
        *nl = '\0';
    return c->buf;
}

int make_pipe(int fds[2], bool nonblock_read, bool nonblock_write)
{
    if (pipe2(fds, O_CLOEXEC) < 0)
        return -errno;
    if (nonblock_read)
        fcntl(fds[0], F_SETFL, O_NONBLOCK);
    if (nonblock_write)
        fcntl(fds[1], F_SETFL, O_NONBLOCK);
    return 0;
}

/* ---- frames to the host ---- */

static uint64_t uptime_ms(void)
{
    char buf[64];
    int fd = open("/proc/uptime", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    uint64_t secs = 0, frac = 0, scale = 1000;
    const char *p = buf;
    for (; *p >= '0' && *p <= '9'; p++)
        secs = secs * 10 + (uint64_t)(*p - '0');
    if (*p == '.')
        for (p++; *p >= '0' && *p <= '9' && scale > 1; p++) {
            scale /= 10;
            frac += (uint64_t)(*p - '0') * scale;
        }
    return secs * 1000 + frac;
}

void send_hello(struct helper *h)
{
    struct al_tlv_buf b = {0};
    int r = al_tlv_add_u64(&b, AL_TLV_VERSION, AL_PROTO_VERSION);
    if (r == 0 && h->have_job && h->job.job_id)
        r = al_tlv_add_str(&b, AL_TLV_JOB_ID, h->job.job_id);
    if (r == 0)
        r = al_tlv_add_u64(&b, AL_TLV_UPTIME_MS, uptime_ms());
    send_tlv(h, AL_FRAME_HELLO, &b, r);
    h->next_hello = now_ms() + HELLO_INTERVAL_MS;
}

void send_exit(struct helper *h, int code, int sig, bool timed_out, const char *reason)
{
    struct al_tlv_buf b = {0};
    int r = al_tlv_add_u64(&b, AL_TLV_EXIT_CODE, (uint64_t)code);
    if (r == 0 && sig > 0)
        r = al_tlv_add_u64(&b, AL_TLV_SIGNAL, (uint64_t)sig);
    if (r == 0 && timed_out)
        r = al_tlv_add_str(&b, AL_TLV_TIMED_OUT, "1");
    if (r == 0)
        r = al_tlv_add_str(&b, AL_TLV_REASON, reason);
    send_tlv(h, AL_FRAME_EXIT, &b, r);
    h->exit_queued = true;
    h->phase = PHASE_FINISHING;
    h->port_progress_at = now_ms(); /* the full stall window for the last frames */
}

void fail_setup(struct helper *h, const char *fmt, ...)
{
    if (h->untar_pid > 0 && !h->untar_reaped)
        kill(-h->untar_pid, SIGKILL);
    if (h->phase != PHASE_SETUP)
        return;
    char msg[900];
    va_list ap;
    va_start(ap, fmt);
    vformat(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    send_diag(h, msg);
    char reason[1024];
    snprintf(reason, sizeof(reason), "error: %s", msg); /* cut short is fine */
    send_exit(h, EXIT_INFRA, 0, false, reason);
}

void flush_port(struct helper *h)
{
    long n = port_flush(&h->port);
    if (n > 0)
        h->port_progress_at = now_ms();
    else if (n < 0 && !h->port_in_failed)
        h->port_in_failed = true; /* dead: handled in advance() */
}
