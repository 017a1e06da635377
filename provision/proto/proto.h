/* The host <-> guest protocol on the virtio-serial port "org.agentlab.job".
 *
 * Pure C with no dependencies beyond libc: the same proto.c is compiled into
 * the daemon and into the in-guest helper (agentlab-guest).
 *
 * Wire format: a stream of frames. Each frame is an 8-byte header
 *
 *     u8  type        (enum al_frame_type)
 *     u8  flags       must be 0
 *     u16 reserved    must be 0
 *     u32 length      payload bytes, big-endian, <= AL_PROTO_MAX_PAYLOAD
 *
 * followed by the payload. STDOUT, STDERR, ARTIFACT and WORKDIR payloads are
 * raw bytes; every other payload is a TLV list: repeated
 *
 *     u16 tag (enum al_tlv_tag), u32 length (big-endian), bytes
 *
 * Values are text unless noted (numbers in decimal ASCII). Unknown tags are
 * skipped by readers (forward compatibility); unknown frame types are a
 * protocol error.
 *
 * Conversation:
 *   guest: HELLO {VERSION, [JOB_ID if it already holds a job], UPTIME_MS}
 *          (re-sent every second until the host sends anything)
 *   host:  [JOB {...}] [SECRETS {SECRET_ENV...}] [WORKDIR... WORKDIR_END] START
 *          JOB is sent only when HELLO carried no JOB_ID (a warm VM); a cold
 *          VM got the same TLV list through cloud-init (/run/agentlab/job.tlv).
 *   guest: STARTED, then STDOUT/STDERR chunks as the workload writes them,
 *          HEARTBEAT every AL_PROTO_HEARTBEAT_MS, DIAG lines from the helper;
 *          after the workload ends: ARTIFACT chunks (one tar stream),
 *          ARTIFACT_END {BYTES, FILES, [ERROR]}, EXIT {...}; then it powers off
 *          unless the job said POWEROFF=0.
 *   host:  CANCEL at any time: the guest kills the workload, sends EXIT with
 *          REASON=canceled.
 *
 * Memory snapshots (provision/libvirt_snapshot.c): a VM booted without a job
 * is told SYNC after its HELLO; the helper flushes the file systems, answers
 * SYNCED and goes back to sending HELLO (the host then saves the VM; the
 * HELLO reaches whoever restores it). A restored guest gets FRESHEN before
 * JOB: new entropy (credited to the kernel's pool, which reseeds the CRNG),
 * the host's clock, a host name and a machine id, so nothing random or
 * identifying is shared between guests restored from one saved state.
 *
 * Details the helper (provision/guest/) implements and the host relies on:
 *   - STARTED, HEARTBEAT, START, CANCEL and WORKDIR_END have empty payloads.
 *   - HEARTBEATs flow from STARTED until EXIT.
 *   - The job file is a bare TLV list (no frame header) and must carry
 *     JOB_ID; it may carry SECRET_ENV too (it lives on tmpfs). SECRETS may
 *     come before or after JOB, never after START. TIMEOUT_S 0 = no limit.
 *   - ARTIFACT frames and ARTIFACT_END are sent only when the job listed
 *     ARTIFACT paths and the workload exited or timed out (not after CANCEL
 *     or a helper error). FILES counts tar members (files, dirs, links).
 *     ERROR is "; "-joined from: "limit", "canceled", "missing: a, b",
 *     "tar failed: ...". The stream is cut at exactly MAX_ARTIFACT_BYTES.
 *   - EXIT: REASON=exited with EXIT_CODE 0..255, or with SIGNAL and
 *     EXIT_CODE 128+SIGNAL; timeout: EXIT_CODE 124, TIMED_OUT=1; canceled:
 *     130. A program that cannot be executed is the workload failing like in
 *     a shell: STARTED, a STDERR line, EXIT_CODE 127 (missing) or 126.
 *     When the job cannot start at all (bad job, unknown user, work dir
 *     refused, protocol violation) there is no STARTED, and EXIT carries
 *     EXIT_CODE 125 and REASON "error: <why>", preceded by a DIAG.
 */
#ifndef AL_PROTO_H
#define AL_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define AL_PROTO_VERSION      1
#define AL_PROTO_PORT_NAME    "org.agentlab.job"
#define AL_PROTO_HEADER_SIZE  8
#define AL_PROTO_MAX_PAYLOAD  (1024u * 1024u)
#define AL_PROTO_HEARTBEAT_MS 1000
#define AL_PROTO_JOB_FILE     "/run/agentlab/job.tlv"

enum al_frame_type {
    /* guest -> host */
    AL_FRAME_HELLO = 1,
    AL_FRAME_STARTED = 2,
    AL_FRAME_STDOUT = 3,
    AL_FRAME_STDERR = 4,
    AL_FRAME_HEARTBEAT = 5,
    AL_FRAME_DIAG = 6, /* TLV {REASON}: a message from the helper itself */
    AL_FRAME_ARTIFACT = 7,
    AL_FRAME_ARTIFACT_END = 8,
    AL_FRAME_EXIT = 9,
    AL_FRAME_SYNCED = 10, /* empty: the guest's disk is flushed (answers SYNC) */
    /* host -> guest */
    AL_FRAME_JOB = 64,
    AL_FRAME_SECRETS = 65,
    AL_FRAME_WORKDIR = 66,
    AL_FRAME_WORKDIR_END = 67,
    AL_FRAME_START = 68,
    AL_FRAME_CANCEL = 69,
    AL_FRAME_SYNC = 70,    /* empty: flush the disk, answer SYNCED, wait for a new host */
    AL_FRAME_FRESHEN = 71, /* TLV {ENTROPY, CLOCK_NS, HOSTNAME, [MACHINE_ID]} */
};

enum al_tlv_tag {
    AL_TLV_VERSION = 1,
    AL_TLV_JOB_ID = 2,
    AL_TLV_UPTIME_MS = 3,
    /* the job (JOB frame / job.tlv) */
    AL_TLV_ARGV = 10,        /* one per argument, in order; or SCRIPT */
    AL_TLV_SCRIPT = 11,      /* run with /bin/sh -e */
    AL_TLV_ENV = 12,         /* "NAME=value", repeated */
    AL_TLV_TIMEOUT_S = 13,   /* in-guest timeout of the workload */
    AL_TLV_ARTIFACT = 14,    /* path (relative to the work dir, or absolute), repeated */
    AL_TLV_USER = 15,        /* user to run as (default "agentlab") */
    AL_TLV_WORKDIR = 16,     /* work dir in the guest (default ~USER/work) */
    AL_TLV_HAS_WORKDIR = 17, /* "1": WORKDIR frames follow before START */
    AL_TLV_POWEROFF = 18,    /* "0": stay up after EXIT (debugging) */
    AL_TLV_MAX_ARTIFACT_BYTES = 19,
    /* SECRETS frame */
    AL_TLV_SECRET_ENV = 30, /* "NAME=value", repeated; never written to disk */
    /* EXIT / ARTIFACT_END / DIAG */
    AL_TLV_EXIT_CODE = 40, /* workload exit status 0..255 */
    AL_TLV_SIGNAL = 41,    /* signal that killed it, when it was killed */
    AL_TLV_TIMED_OUT = 42, /* "1" when the in-guest timeout fired */
    AL_TLV_REASON = 43,    /* text: "exited", "timeout", "canceled", "error: ..." */
    AL_TLV_BYTES = 44,
    AL_TLV_FILES = 45,
    AL_TLV_ERROR = 46,
    /* FRESHEN frame (a guest restored from a memory snapshot) */
    AL_TLV_ENTROPY = 50,    /* raw bytes (16..512) from the host's CSPRNG */
    AL_TLV_CLOCK_NS = 51,   /* the host's CLOCK_REALTIME in nanoseconds */
    AL_TLV_HOSTNAME = 52,   /* the guest's new host name */
    AL_TLV_MACHINE_ID = 53, /* 32 lowercase hex digits for /etc/machine-id */
};

/* ---- frame headers ---- */

/* Writes the 8-byte header. Returns 0, -EMSGSIZE when len is too big, or
 * -EPROTO for a type this version does not define. */
int al_frame_header_encode(uint8_t out[AL_PROTO_HEADER_SIZE], uint8_t type, uint32_t len);

/* Reads and validates a header (flags/reserved zero, len <= max_payload,
 * known type). max_payload 0, or above AL_PROTO_MAX_PAYLOAD, means
 * AL_PROTO_MAX_PAYLOAD. Returns 0, -EMSGSIZE or -EPROTO. */
int al_frame_header_decode(const uint8_t in[AL_PROTO_HEADER_SIZE], uint32_t max_payload,
                           uint8_t *ret_type, uint32_t *ret_len);

/* True for the types this protocol version defines. */
bool al_frame_type_is_known(uint8_t type);

/* ---- incremental decoder (reads frames from a byte stream) ---- */

struct al_frame {
    uint8_t type;
    uint32_t len;
    uint8_t *payload; /* owned by the decoder; valid until the next feed;
                       * never NULL, also when len is 0 */
};

struct al_frame_decoder {
    uint32_t max_payload; /* 0 = AL_PROTO_MAX_PAYLOAD */
    uint8_t hdr[AL_PROTO_HEADER_SIZE];
    size_t hdr_len;
    uint8_t type;
    uint32_t len;
    uint8_t *payload;
    size_t cap;
    size_t got;
    bool failed;
};

/* Consumes bytes from data[0..n). Returns 1 when *ret_frame holds a complete
 * frame (then *ret_consumed says how much was used; feed the rest again), 0
 * when all n bytes were consumed without completing a frame (*ret_consumed
 * is n), or a negative errno (-EPROTO, -EMSGSIZE, -ENOMEM) after which the
 * decoder stays failed and every later call returns -EPROTO. The payload
 * buffer is sized from the header, so it is at most max_payload bytes.
 * al_frame_decoder_free() clears the buffer (it may have held secrets) and
 * resets the decoder, keeping max_payload. */
int al_frame_decoder_feed(struct al_frame_decoder *d, const uint8_t *data, size_t n,
                          size_t *ret_consumed, struct al_frame *ret_frame);
void al_frame_decoder_free(struct al_frame_decoder *d);

/* ---- TLV payloads ---- */

struct al_tlv_buf {
    uint8_t *data;
    size_t len;
    size_t cap;
};

/* Appends one item. Returns 0, -ENOMEM, -EINVAL (NULL value with a length),
 * or -EMSGSIZE past AL_PROTO_MAX_PAYLOAD. al_tlv_buf_free() clears the
 * bytes before freeing them (SECRETS payloads). */
int al_tlv_add(struct al_tlv_buf *b, uint16_t tag, const void *val, size_t len);
int al_tlv_add_str(struct al_tlv_buf *b, uint16_t tag, const char *s);
int al_tlv_add_u64(struct al_tlv_buf *b, uint16_t tag, uint64_t v);
void al_tlv_buf_free(struct al_tlv_buf *b);

struct al_tlv_iter {
    const uint8_t *p;
    size_t left;
};

void al_tlv_iter_init(struct al_tlv_iter *it, const uint8_t *data, size_t len);

/* Returns 1 and the next item, 0 at the end, -EPROTO when malformed. */
int al_tlv_next(struct al_tlv_iter *it, uint16_t *ret_tag, const uint8_t **ret_val,
                uint32_t *ret_len);

/* Parses a TLV value as a whole decimal u64 (no sign, no junk, no spaces;
 * leading zeros allowed). Returns 0, -EINVAL or -ERANGE. */
int al_tlv_value_u64(const uint8_t *val, uint32_t len, uint64_t *ret);

/* True when the value is valid text for a C string: no NUL bytes. */
bool al_tlv_value_is_text(const uint8_t *val, uint32_t len);

/* Builds a complete frame (header + payload) in a new buffer the caller
 * frees. Returns 0, -EMSGSIZE, -EPROTO (unknown type), -EINVAL or -ENOMEM. */
int al_frame_build(uint8_t type, const void *payload, size_t len, uint8_t **ret, size_t *ret_len);

#endif
