/* The helper's end of the virtio-serial port (or a unix socket in tests):
 * opening it, and an ordered, non-blocking output queue of whole frames.
 *
 * Frames are appended whole and written in order, so a port that is slow or
 * full never reorders or drops output; producers check port_backlog() and
 * stop reading their sources while it is above PORT_HIGH_WATER (the
 * workload then blocks on its pipe instead of the helper growing without
 * bound).
 */
#ifndef AL_GUEST_PORT_H
#define AL_GUEST_PORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runner/base/error.h"
#include "provision/proto/proto.h"

#define PORT_HIGH_WATER (4u * 1024u * 1024u)

struct port {
    int fd;
    bool is_socket; /* EOF means the host is gone */
    bool dead;      /* write or read error: nothing more can be exchanged */
    uint8_t *q;
    size_t qlen, qoff, qcap;
};

/* Opens a character device read-write, or connects to a unix socket.
 * Retries a missing path for up to wait_ms (the device appears late in
 * boot). Returns 0 or a negative errno. */
int port_open(struct port *p, const char *path, unsigned wait_ms, struct al_error **err);

/* Has the kernel send this process SIGIO when the host side of a virtio
 * port connects (the driver does on every host open), so a helper waiting
 * for a host wakes at once instead of at its next retry: what a guest
 * restored from a memory snapshot waits for. Nothing to do on a socket.
 * Returns 0 or -1 with errno set. */
int port_watch_host(struct port *p);

void port_close(struct port *p);

/* Queues one frame. Returns 0, -EMSGSIZE, -ENOMEM, or -EPIPE when dead
 * (then the frame is dropped: nobody will read it). */
int port_send(struct port *p, uint8_t type, const void *payload, size_t len);
int port_send_tlv(struct port *p, uint8_t type, const struct al_tlv_buf *b);

/* Writes as much of the queue as the port takes without blocking. Returns
 * the number of bytes written (>= 0) or -EPIPE once the port is dead. */
long port_flush(struct port *p);

/* Bytes queued and not yet written. */
size_t port_backlog(const struct port *p);

#endif
