/* The host end of a VM's virtio-serial channel, speaking proto.h frames over
 * one of two transports: a libuv pipe connected to the unix socket libvirt
 * created for the port on this host (channel_open), or a libvirt stream
 * from virDomainOpenChannel() driven by libvirt's events on the loop
 * (channel_open_stream), for a host that shares no filesystem with us.
 *
 * Frames are validated by the decoder (size, type); callers validate
 * payloads. Writes are queued in order; channel_send_file() streams a file
 * as frames without holding more than one chunk in memory.
 */
#ifndef AL_CHANNEL_H
#define AL_CHANNEL_H

#include <stddef.h>
#include <stdint.h>
#include <libvirt/libvirt.h>
#include <uv.h>

#include "provision/proto/proto.h"
#include "runner/base/error.h"

struct channel;

struct channel_ops {
    /* A complete, header-valid frame. The payload is valid during the call. */
    void (*frame)(struct channel *ch, const struct al_frame *f, void *data);
    /* The connection ended: result 0 for EOF, negative errno for an error
     * (-EPROTO for a malformed frame, -EMSGSIZE for one over the size
     * limit, -ETIMEDOUT when connecting failed). message
     * says what happened. Not called after channel_close(). */
    void (*closed)(struct channel *ch, int result, const char *message, void *data);
};

/* Connects to path, retrying for up to connect_timeout_ms while the socket
 * is not there yet. max_payload 0 = AL_PROTO_MAX_PAYLOAD. */
int channel_open(uv_loop_t *loop, const char *path, unsigned connect_timeout_ms,
                 uint32_t max_payload, const struct channel_ops *ops, void *data,
                 struct channel **ret, struct al_error **err);

/* Speaks over st, a stream opened with VIR_STREAM_NONBLOCK and
 * virDomainOpenChannel(); takes st on success (the channel aborts and frees
 * it when closed). Connected at once. The rate limit pauses reading the
 * stream, but libvirt's client keeps buffering what the guest sends
 * meanwhile: over a stream the guest is not slowed down by it. */
int channel_open_stream(uv_loop_t *loop, virStreamPtr st, uint32_t max_payload,
                        const struct channel_ops *ops, void *data, struct channel **ret,
                        struct al_error **err);

/* Aborts and frees st (its event callback removed) on the thread pool:
 * the abort waits for libvirtd. NULL is ignored. */
void channel_stream_release(uv_loop_t *loop, virStreamPtr st);

/* Queues one frame. Returns 0, -ENOTCONN before the connection is up or
 * after it ended, -EMSGSIZE, -ENOMEM. */
int channel_send(struct channel *ch, uint8_t type, const void *payload, size_t len);

/* Streams the file at path as frames of type, then one empty end_type frame,
 * then calls done (0 or negative errno) on the loop. Frames queued later with
 * channel_send() go after the whole file. */
int channel_send_file(struct channel *ch, uint8_t type, uint8_t end_type, const char *path,
                      void (*done)(struct channel *ch, int result, void *data), void *data);

/* True once connected. */
bool channel_is_connected(const struct channel *ch);

/* Bytes received so far (for rate accounting). */
uint64_t channel_bytes_received(const struct channel *ch);

/* Limits what the peer may send: bytes and frames per second on average
 * (0 = unlimited), each with a burst of one second's worth. Over it the
 * channel stops reading until the average holds again, so the sender is
 * slowed down (its writes block), never dropped. Off by default. */
void channel_set_rate_limit(struct channel *ch, uint64_t bytes_per_s, uint64_t frames_per_s);

/* How long and how often reading was paused by the rate limit. */
void channel_throttle_stats(const struct channel *ch, uint64_t *ret_ms, uint64_t *ret_count);

/* Stops all callbacks and frees the channel (from its close callback). */
void channel_close(struct channel *ch);

#endif
