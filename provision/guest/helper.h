/* Private to the in-guest helper (provision/guest/): its state and the
 * functions its files share. The helper is split by phase: helper_io.c
 * (frames and messages to the host), setup.c (job and work dir unpack),
 * workload.c, artifacts.c, loop.c (frames from the host, children, the
 * state machine and the poll loop), agentlab-guest.c (startup, power off). */
#ifndef AL_GUEST_HELPER_H
#define AL_GUEST_HELPER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "runner/base/error.h"
#include "runner/base/macro.h"
#include "provision/guest/job.h"
#include "provision/guest/port.h"
#include "provision/guest/spawn.h"
#include "provision/proto/proto.h"
#include "provision/guest/tarscan.h"

#define DEFAULT_PORT        "/dev/virtio-ports/" AL_PROTO_PORT_NAME
#define PORT_WAIT_MS        30000u
#define HELLO_INTERVAL_MS   1000u
#define KILL_GRACE_MS       5000u /* SIGTERM -> SIGKILL */
#define PIPE_DRAIN_MS       2000u /* after the workload's main process ended */
#define HOST_ABSENT_BACKOFF 250u  /* char device reporting POLLHUP */
/* Output is queued and the port has taken nothing for this long: treat the
 * host as gone. Applies once the host has spoken or the EXIT is queued;
 * before that a warm VM may legitimately wait a long time for its host. */
#define PORT_STALL_MS      120000u
#define POWEROFF_LINGER_MS 2000u
#define READ_CHUNK         (64u * 1024u)
#define COLLECT_MAX        4096u
/* A script longer than this does not fit in one exec argument
 * (MAX_ARG_STRLEN is 128 KiB); it is run from a file on tmpfs instead. */
#define SCRIPT_ARG_MAX (100u * 1024u)
#define EXIT_INFRA     125

enum phase { PHASE_SETUP, PHASE_RUNNING, PHASE_ARTIFACTS, PHASE_FINISHING, PHASE_DONE };

enum end_reason { END_EXITED, END_TIMEOUT, END_CANCELED, END_ERROR };

/* Bytes read from a helper pipe that only matter as a message. */
struct collector {
    int fd;
    char buf[COLLECT_MAX];
    size_t len;
};

struct wqueue {
    uint8_t *data;
    size_t len, off, cap;
};

struct helper {
    /* options */
    const char *port_path;
    const char *job_path;
    bool no_poweroff;

    struct port port;
    struct al_frame_decoder dec;
    bool port_in_failed; /* decoder failed or socket EOF: stop reading */
    uint64_t port_retry_at;
    uint64_t port_progress_at; /* last write progress, or when output got queued */
    int sig_fd;
    enum phase phase;
    bool host_spoke;
    uint64_t next_hello;
    uint64_t next_heartbeat;

    /* the job */
    struct guest_job job;
    bool have_job;
    struct guest_user user;
    char *workdir;
    bool start_received;

    /* work dir unpack */
    bool untar_started, workdir_end, untar_checked;
    pid_t untar_pid;
    bool untar_reaped;
    int untar_status;
    int untar_in;
    struct wqueue wq;
    struct tar_scan untar_scan;
    struct collector untar_err;

    /* the workload */
    pid_t pid;
    bool reaped;
    int status;
    int out_fd, err_fd;
    uint64_t deadline, kill_at, drain_until;
    bool killing, killed_hard;
    enum end_reason reason;
    char *error_text;
    char *script_file;
    int exit_code;
    int exit_signal;

    /* artifacts */
    pid_t art_pid;
    bool art_reaped;
    int art_status;
    int art_fd;
    struct collector art_err, art_missing;
    struct tar_scan art_scan;
    uint64_t art_bytes;
    bool art_limit, art_canceled;

    bool exit_queued;
};

/* ---- helper_io.c ---- */

/* CLOCK_MONOTONIC in milliseconds: every timer of the helper. */
uint64_t now_ms(void);

/* A line "agentlab-guest: ..." on stderr (the guest console) only. */
void note(const char *fmt, ...) _printf_(1, 2);

/* Queues a frame to the host and writes what the port takes now. */
void send_frame(struct helper *h, uint8_t type, const void *data, size_t len);

/* Sends the TLV frame b when build_result is 0 (else notes why not); frees
 * b either way. */
void send_tlv(struct helper *h, uint8_t type, struct al_tlv_buf *b, int build_result);

/* A message from the helper itself: on its stderr (the guest console) and
 * to the host as DIAG. Callers never pass secret values. */
void diag(struct helper *h, const char *fmt, ...) _printf_(2, 3);

/* An empty collector without an fd. */
void collector_init(struct collector *c);

/* Reads what is there; returns false at EOF or error (fd closed then). */
bool collector_read(struct collector *c);

/* Closes the fd if open; keeps what was collected. */
void collector_close(struct collector *c);

/* First line of collected text, for a one-line reason. */
const char *first_line(struct collector *c);

/* pipe2() with O_CLOEXEC and, per end, O_NONBLOCK. Returns 0 or -errno. */
int make_pipe(int fds[2], bool nonblock_read, bool nonblock_write);

/* HELLO with the version, job id (once known) and uptime; schedules the
 * next one. */
void send_hello(struct helper *h);

/* Queues the EXIT frame and enters PHASE_FINISHING. */
void send_exit(struct helper *h, int code, int sig, bool timed_out, const char *reason);

/* The job cannot run (bad job, user, work dir, protocol): report and finish. */
void fail_setup(struct helper *h, const char *fmt, ...) _printf_(2, 3);

/* Writes what the port takes; marks the port failed when it is dead. */
void flush_port(struct helper *h);

/* ---- setup.c ---- */

/* Reads the job file given with --job, if there is one (warm mode has
 * none: 0 and no job). Returns 0 or a negative errno with err set. */
int read_job_file(struct helper *h, struct al_error **err);

/* Resolves the user and creates the work dir, as soon as the job is known. */
void prepare_job(struct helper *h);

/* Closes tar's stdin (EOF to it). */
void untar_close_input(struct helper *h);

/* Writes what tar's stdin takes of the queued work dir bytes. */
void untar_flush(struct helper *h);

/* Scans a chunk of the work dir stream and queues it for tar; starts tar
 * on the first chunk. */
void untar_feed(struct helper *h, const uint8_t *data, size_t len);

/* Whether the work dir is unpacked (or none was sent) and the setup still
 * stands; fails the setup once when the archive or tar failed. */
bool workdir_ready(struct helper *h);

/* ---- workload.c ---- */

/* The workload is over (or never started): collect artifacts, then EXIT. */
void finish_workload(struct helper *h);

/* Queues the EXIT that reports the workload's end. */
void send_final_exit(struct helper *h);

/* Ends the workload for reason: SIGTERM to its group, SIGKILL after
 * KILL_GRACE_MS. */
void start_kill(struct helper *h, enum end_reason reason, const char *why);

/* Forks and execs the job's command or script as the job's user. */
void start_workload(struct helper *h);

/* Forwards what the workload wrote, as soon as it is there. */
void forward_output(struct helper *h, int *fd, uint8_t type);

/* Records the workload's wait status. */
void workload_reaped(struct helper *h, int status);

/* ---- artifacts.c ---- */

/* Starts tar packing the job's artifacts, or finishes without any. */
void start_artifacts(struct helper *h);

/* Forwards a chunk of the artifact stream as ARTIFACT frames. */
void forward_artifact(struct helper *h);

/* Sends ARTIFACT_END with what went missing or wrong. */
void send_artifact_end(struct helper *h);

/* ---- freshen.c ---- */

/* Applies a FRESHEN payload: credits the host's entropy and reseeds the
 * CRNG, sets the clock, the host name and /etc/machine-id. Returns 0, or a
 * negative errno after a DIAG saying what failed (the job must not run:
 * a missing ENTROPY is a failure too). */
int apply_freshen(struct helper *h, const uint8_t *payload, size_t len);

/* SYNC: flushes the file systems, answers SYNCED and goes back to greeting
 * the host (the next one restores this memory from a snapshot). */
void sync_for_snapshot(struct helper *h);

/* ---- loop.c ---- */

/* Steps the state machine until it settles: one step may enable the next
 * (workload reaped -> artifacts -> EXIT queued -> done). */
void advance(struct helper *h);

/* The poll loop: returns when the phase is PHASE_DONE. */
void run_loop(struct helper *h);

#endif
