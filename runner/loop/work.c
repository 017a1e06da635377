#include "runner/loop/work.h"

#include <stdlib.h>

struct al_work {
    uv_work_t req;
    al_work_fn work;
    al_work_done_fn done;
    void *data;
    int result;
    struct al_error *err;
};

static void run(uv_work_t *req)
{
    struct al_work *w = container_of(req, struct al_work, req);
    w->result = w->work(w->data, &w->err);
}

static void after(uv_work_t *req, int status)
{
    struct al_work *w = container_of(req, struct al_work, req);
    int result = status == UV_ECANCELED ? -ECANCELED : w->result;
    al_work_done_fn done = w->done;
    void *data = w->data;
    struct al_error *err = TAKE_PTR(w->err);
    free(w);
    done(data, result, err);
}

int al_work_queue(uv_loop_t *loop, al_work_fn work, al_work_done_fn done, void *data,
                  struct al_work **ret_work)
{
    struct al_work *w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    w->work = work;
    w->done = done;
    w->data = data;
    int r = uv_queue_work(loop, &w->req, run, after);
    if (r < 0) {
        free(w);
        return r;
    }
    if (ret_work)
        *ret_work = w;
    return 0;
}

int al_work_cancel(struct al_work *w)
{
    return uv_cancel((uv_req_t *)&w->req) == 0 ? 0 : -EBUSY;
}
