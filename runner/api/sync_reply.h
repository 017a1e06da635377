/* Answering a submission once the store has reached the disk: the request
 * waits for engine_sync(), and is forgotten if its client goes away first. */
#ifndef AL_API_SYNC_REPLY_H
#define AL_API_SYNC_REPLY_H

#include "runner/api/context.h"

/* Large enough for a job id and a batch id. */
#define API_SYNC_REPLY_ID_SIZE 64

/* Answers r once the sync is done; result is engine_sync()'s (< 0: the
 * sync failed, the submission is committed all the same). */
typedef void (*api_sync_reply_fn)(struct api_ctx *ctx, struct api_req *r, const char *id,
                                  int result);

struct api_sync_reply {
    struct api_ctx *ctx;
    struct api_req *req; /* NULL once the client went away */
    api_sync_reply_fn fn;
    char id[API_SYNC_REPLY_ID_SIZE]; /* the caller fills it in before api_sync_reply_start() */
};

/* A pending answer for r, allocated before the submission so that nothing
 * can fail between committing and answering. NULL when out of memory;
 * free() it when the submission fails. */
struct api_sync_reply *api_sync_reply_new(struct api_ctx *ctx, struct api_req *r,
                                          api_sync_reply_fn fn);

/* Starts engine_sync(); p is owned by the sync from then on and freed after
 * fn ran (or was skipped because the client went away). */
void api_sync_reply_start(struct api_sync_reply *p);

#endif
