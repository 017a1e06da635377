/* Hard limits: their names, and how often each was hit.
 *
 * Every limit on outside input is enforced where the bytes enter (the guest
 * channel, the attempt's log and artifact sinks, the artifact extractor, the
 * sources, the control API, the webhook listener). The place that enforces
 * one calls limits_hit() once per occurrence; the counters are process-wide
 * so that every edge can count without a path to the metrics module, and
 * /metrics renders them as agentlab_limit_hits_total{limit="NAME"}.
 *
 * A job that ran into limits also carries them in its result: the bits of
 * enum al_limit in vm_result/attempt_result.limits, stored with the job and
 * shown as "limits_hit" by the API and the CLI.
 *
 * Thread-safe (atomic counters).
 */
#ifndef AL_HARDLIMITS_H
#define AL_HARDLIMITS_H

#include <stddef.h>
#include <stdint.h>

enum al_limit {
    AL_LIMIT_LOG_SIZE = 0,    /* max_log_size: output truncated with a marker */
    AL_LIMIT_ARTIFACT_SIZE,   /* max_artifact_size: artifacts cut */
    AL_LIMIT_ARTIFACT_FILES,  /* max_artifact_files: artifacts cut */
    AL_LIMIT_FRAME_SIZE,      /* channel_max_frame_size: the attempt ends in ERROR */
    AL_LIMIT_CHANNEL_RATE,    /* channel_max_bytes_per_s / _frames_per_s: throttled */
    AL_LIMIT_DISK_SIZE,       /* max_disk_size: the job is refused */
    AL_LIMIT_SOURCE_JOBS,     /* a source's cap on live jobs: intake waits */
    AL_LIMIT_API_JOBS,        /* api_max_jobs: a submission is refused (429) */
    AL_LIMIT_API_CONNECTIONS, /* api_max_connections: a connection gets 503 */
    AL_LIMIT_API_HEADERS,     /* api_max_header_size, header count, URI: 431/414 */
    AL_LIMIT_API_BODY,        /* a request body over its limit: 413 */
    AL_LIMIT_API_TIMEOUT,     /* a header, body or idle timeout closed a connection */
    AL_LIMIT_WEBHOOK_BODY,    /* a webhook delivery over its size: counted by the listener */
    AL_LIMIT_COUNT,
};

/* The limit's name as used in metrics and job results, e.g. "log_size". */
const char *al_limit_name(enum al_limit l);

/* Counts one occurrence. */
void limits_hit(enum al_limit l);

/* Occurrences so far. */
uint64_t limits_hits(enum al_limit l);

/* Writes the names of the bits set in mask (1u << enum al_limit), separated
 * by sep, into buf (always NUL-terminated; cut when too small). Returns the
 * number of names written. */
size_t al_limit_mask_format(unsigned mask, const char *sep, char *buf, size_t size);

/* Parses a list of names separated by spaces or commas back into a mask;
 * unknown names are ignored. */
unsigned al_limit_mask_parse(const char *s);

#endif
