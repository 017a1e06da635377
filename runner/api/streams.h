/* The control API's long-lived responses: job logs (with follow), event
 * long-polls and event streams, and file downloads.
 *
 * Logs are always served from the job's output.log, at the client's own
 * offset. A follower reads the file to its end, then waits; every chunk the
 * engine reports for the job wakes it to read what was just appended (the
 * engine writes a chunk to the file before it tells observers, on the same
 * thread, so nothing is missed or sent twice). A slow reader simply falls
 * behind in the file: what a follower holds in memory is bounded by the
 * server's stream high-water mark, not by how much the guest writes. When
 * a retry starts a new attempt, the follower finishes the previous
 * attempt's file and goes on with the new one. The stream ends once the
 * engine reports the job finished (and everything was sent).
 *
 * Events come from the store by sequence number (store_events_since), so a
 * stream or poll that falls behind just queries from where it was.
 *
 * Reading files happens on the loop thread in 64 KiB pieces, paced by the
 * client; these are page-cache reads of files the daemon just wrote.
 */
#ifndef AL_API_STREAMS_H
#define AL_API_STREAMS_H

#include "runner/api/context.h"

struct api_streams;

struct api_streams *api_streams_new(struct api_ctx *ctx);

/* Frees the registry once every stream is gone (the server aborts them when
 * it stops); done runs then. */
void api_streams_stop(struct api_streams *s, void (*done)(void *data), void *data);

/* GET /v1/jobs/{id}/logs[?offset=N][&follow=1] */
void api_logs(struct api_ctx *ctx, struct api_req *r, const struct route_match *m);

/* GET /v1/events and /v1/jobs/{id}/events:
 *   ?after=SEQ&limit=N&wait=SECONDS  long-poll: answers as soon as an event
 *                                    after SEQ exists, or after wait seconds
 *   ?follow=1[&after=SEQ]            chunked NDJSON stream, one event a line
 *                                    (and an empty line every 25 s) */
void api_events(struct api_ctx *ctx, struct api_req *r, const struct route_match *m);

/* Streams fd (owned; closed at the end) from its start as the response. */
void api_send_file(struct api_ctx *ctx, struct api_req *r, int fd, const char *content_type);

/* Engine observer events, forwarded by the API. */
void api_streams_on_event(struct api_streams *s, const struct store_event *ev);
void api_streams_on_output(struct api_streams *s, const char *job_id);
void api_streams_on_finished(struct api_streams *s, const char *job_id);

/* The highest event sequence number in the store (0 when none). */
int64_t api_streams_last_seq(struct store *store);

#endif
