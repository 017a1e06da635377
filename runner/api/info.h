/* Read-mostly endpoints of the control API: health, metrics, pools and
 * backends, images, owned VMs, the status summary behind the status page,
 * the page itself, and the on-demand sweep behind `agentlab gc`.
 */
#ifndef AL_API_INFO_H
#define AL_API_INFO_H

#include "runner/api/context.h"

void api_healthz(struct api_ctx *ctx, struct api_req *r, const struct route_match *m);
void api_metrics(struct api_ctx *ctx, struct api_req *r, const struct route_match *m);
void api_pools(struct api_ctx *ctx, struct api_req *r, const struct route_match *m);
void api_hosts(struct api_ctx *ctx, struct api_req *r, const struct route_match *m);
void api_images(struct api_ctx *ctx, struct api_req *r, const struct route_match *m);
void api_vms(struct api_ctx *ctx, struct api_req *r, const struct route_match *m);
void api_status(struct api_ctx *ctx, struct api_req *r, const struct route_match *m);
void api_status_page(struct api_ctx *ctx, struct api_req *r, const struct route_match *m);
void api_gc(struct api_ctx *ctx, struct api_req *r, const struct route_match *m);

/* The API is going away: a sweep still running must not report to it. */
void api_gc_forget(struct api_ctx *ctx);

#endif
