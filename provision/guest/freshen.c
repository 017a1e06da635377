/* What a guest restored from a memory snapshot must not share with its
 * siblings: the kernel's random state, the clock, the host name and the
 * machine id (the FRESHEN frame), and the flush before the snapshot is
 * taken (SYNC). */
#include "provision/guest/helper.h"

#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <linux/random.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "provision/proto/proto.h"

#define ENTROPY_MIN 16u
#define ENTROPY_MAX 512u
#define MACHINE_ID  "/etc/machine-id"

/* Mixes the host's bytes into the input pool, credited, then makes the CRNG
 * take a new key from it at once: on kernels before 5.18 crediting alone
 * does not reseed an initialised CRNG, and on later ones reseeding waits for
 * its interval. Writing to /dev/urandom would neither credit nor reseed. */
static int add_entropy(const uint8_t *val, uint32_t len)
{
    if (len < ENTROPY_MIN || len > ENTROPY_MAX)
        return -EINVAL;
    /* struct rand_pool_info ends in a flexible array: room behind it */
    _Alignas(struct rand_pool_info) uint8_t raw[sizeof(struct rand_pool_info) + ENTROPY_MAX];
    struct rand_pool_info *info = (struct rand_pool_info *)raw;
    info->entropy_count = (int)len * 8;
    info->buf_size = (int)len;
    memcpy(raw + offsetof(struct rand_pool_info, buf), val, len);
    int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int r = ioctl(fd, RNDADDENTROPY, info) < 0 ? -errno : 0;
    if (r == 0 && ioctl(fd, RNDRESEEDCRNG) < 0)
        r = -errno;
    close(fd);
    explicit_bzero(raw, sizeof(raw));
    return r;
}

static int set_clock(const uint8_t *val, uint32_t len)
{
    uint64_t ns;
    if (al_tlv_value_u64(val, len, &ns) < 0)
        return -EINVAL;
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000u),
                          .tv_nsec = (long)(ns % 1000000000u)};
    return clock_settime(CLOCK_REALTIME, &ts) < 0 ? -errno : 0;
}

static bool is_hostname(const uint8_t *val, uint32_t len)
{
    if (len == 0 || len > 63)
        return false;
    for (uint32_t i = 0; i < len; i++) {
        uint8_t c = val[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
            return false;
    }
    return true;
}

static bool is_machine_id(const uint8_t *val, uint32_t len)
{
    if (len != 32)
        return false;
    for (uint32_t i = 0; i < len; i++) {
        if (!((val[i] >= '0' && val[i] <= '9') || (val[i] >= 'a' && val[i] <= 'f')))
            return false;
    }
    return true;
}

/* Replaces the machine id when the system has one (an image without the
 * file has nothing that reads it). */
static int set_machine_id(const uint8_t *val, uint32_t len)
{
    if (access(MACHINE_ID, F_OK) < 0)
        return 0;
    char line[34];
    memcpy(line, val, len);
    line[len] = '\n';
    int fd = open(MACHINE_ID, O_WRONLY | O_TRUNC | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return -errno;
    ssize_t n = write(fd, line, len + 1);
    int r = n == (ssize_t)(len + 1) ? 0 : n < 0 ? -errno : -EIO;
    if (close(fd) < 0 && r == 0)
        r = -errno;
    return r;
}

int apply_freshen(struct helper *h, const uint8_t *payload, size_t len)
{
    struct al_tlv_iter it;
    al_tlv_iter_init(&it, payload, len);
    uint16_t tag;
    const uint8_t *val;
    uint32_t vlen;
    int r;
    bool entropy = false;
    while ((r = al_tlv_next(&it, &tag, &val, &vlen)) == 1) {
        int e = 0;
        const char *what = NULL;
        switch (tag) {
        case AL_TLV_ENTROPY:
            what = "adding the host's entropy";
            e = add_entropy(val, vlen);
            entropy = e == 0;
            break;
        case AL_TLV_CLOCK_NS:
            what = "setting the clock";
            e = set_clock(val, vlen);
            break;
        case AL_TLV_HOSTNAME:
            what = "setting the host name";
            e = !is_hostname(val, vlen)                    ? -EINVAL
                : sethostname((const char *)val, vlen) < 0 ? -errno
                                                           : 0;
            break;
        case AL_TLV_MACHINE_ID:
            what = "writing " MACHINE_ID;
            e = is_machine_id(val, vlen) ? set_machine_id(val, vlen) : -EINVAL;
            break;
        default:
            break;
        }
        if (e < 0) {
            diag(h, "freshen: %s failed: %s", what, strerror(-e));
            return e;
        }
    }
    if (r < 0) {
        diag(h, "freshen: malformed FRESHEN frame");
        return -EPROTO;
    }
    if (!entropy) {
        /* without it, every guest restored from one snapshot would draw the
         * same "random" numbers: refuse to run a job that way */
        diag(h, "freshen: the host sent no entropy");
        return -EPROTO;
    }
    return 0;
}

void sync_for_snapshot(struct helper *h)
{
    sync();
    send_frame(h, AL_FRAME_SYNCED, NULL, 0);
    /* the next host is the one that restores this memory: greet it */
    h->host_spoke = false;
    h->next_hello = now_ms() + HELLO_INTERVAL_MS;
}
