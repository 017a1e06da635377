#include "runner/api/sync_reply.h"

#include <stdlib.h>

static void on_sync_reply_abort(struct api_req *r, void *data)
{
    (void)r;
    struct api_sync_reply *p = data;
    p->req = NULL;
}

static void on_sync_reply_synced(int result, void *data)
{
    struct api_sync_reply *p = data;
    if (p->req) {
        api_req_on_abort(p->req, NULL, NULL);
        p->fn(p->ctx, p->req, p->id, result);
    }
    free(p);
}

struct api_sync_reply *api_sync_reply_new(struct api_ctx *ctx, struct api_req *r,
                                          api_sync_reply_fn fn)
{
    struct api_sync_reply *p = calloc(1, sizeof(*p));
    if (p)
        *p = (struct api_sync_reply){.ctx = ctx, .req = r, .fn = fn};
    return p;
}

void api_sync_reply_start(struct api_sync_reply *p)
{
    api_req_on_abort(p->req, on_sync_reply_abort, p);
    engine_sync(p->ctx->engine, on_sync_reply_synced, p);
}
