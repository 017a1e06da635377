#include "provision/pve_task.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runner/base/buf.h"
#include "runner/base/util.h"

#define POLL_FIRST_MS   100u
#define POLL_MAX_MS     800u
#define POLL_SLOW_MS    2000u
#define POLL_SLOW_AFTER 10000u
#define DEFAULT_MAX_MS  (10u * 60u * 1000u)

struct pve_task {
    struct pve_api *api;
    char *upid;
    char *path;
    struct pve_upid u;
    uint64_t t0, max_ms, delay;
    struct pve_call *call;
    pve_task_cb cb;
    void *data;
};

static bool field_ok(const char *s, size_t n, size_t max)
{
    if (n == 0 || n >= max)
        return false;
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)s[i] < 0x21 || s[i] == 0x7f || s[i] == '/')
            return false;
    }
    return true;
}

int pve_upid_parse(const char *upid, struct pve_upid *ret)
{
    if (strncmp(upid, "UPID:", 5) != 0 || strlen(upid) > 512)
        return -EINVAL;
    const char *f[7];
    size_t len[7];
    const char *p = upid + 5;
    int n = 0;
    while (n < 7) {
        const char *colon = strchr(p, ':');
        if (!colon)
            return -EINVAL;
        f[n] = p;
        len[n] = (size_t)(colon - p);
        n++;
        p = colon + 1;
    }
    if (*p)
        return -EINVAL;
    /* node, pid, pstart, starttime, type, id, user; id may be empty */
    struct pve_upid u = {0};
    if (!field_ok(f[0], len[0], sizeof(u.node)) || !field_ok(f[4], len[4], sizeof(u.type)) ||
        len[5] >= sizeof(u.id) || len[6] == 0)
        return -EINVAL;
    memcpy(u.node, f[0], len[0]);
    memcpy(u.type, f[4], len[4]);
    memcpy(u.id, f[5], len[5]);
    *ret = u;
    return 0;
}

static void task_free(struct pve_task *t)
{
    free(t->upid);
    free(t->path);
    free(t);
}

static void task_end(struct pve_task *t, int result, const char *exitstatus,
                     const struct al_error *err)
{
    t->cb(result, exitstatus ? exitstatus : "", err, t->data);
    task_free(t);
}

static int poll_once(struct pve_task *t, uint64_t delay, struct al_error **err);

static void on_status(int result, const struct pve_reply *reply, const struct al_error *err,
                      void *data)
{
    struct pve_task *t = data;
    t->call = NULL;
    if (result < 0) {
        task_end(t, result, NULL, err);
        return;
    }
    const char *status = pve_json_str(reply->data, "status");
    struct al_error *e = NULL;
    if (!status) {
        al_error_set(&e, EPROTO, "task %s: the status reply has no status", t->upid);
        task_end(t, -EPROTO, NULL, e);
        al_error_free(e);
        return;
    }
    if (streq(status, "stopped")) {
        const char *x = pve_json_str(reply->data, "exitstatus");
        if (x && (streq(x, "OK") || strncmp(x, "WARNINGS", 8) == 0)) {
            task_end(t, 0, x, NULL);
            return;
        }
        char shown[300];
        snprintf(shown, sizeof(shown), "%s", x ? x : "no exit status");
        for (char *p = shown; *p; p++) {
            if ((unsigned char)*p < 0x20)
                *p = ' ';
        }
        al_error_set(&e, EIO, "task %s%s%s on %s failed: %s", t->u.type, t->u.id[0] ? " " : "",
                     t->u.id, t->u.node, shown);
        task_end(t, -EIO, x, e);
        al_error_free(e);
        return;
    }
    uint64_t elapsed = al_now_mono_ms() - t->t0;
    if (elapsed > t->max_ms) {
        al_error_set(&e, ETIMEDOUT, "task %s on %s still running after %llu s", t->u.type,
                     t->u.node, (unsigned long long)(elapsed / 1000u));
        task_end(t, -ETIMEDOUT, NULL, e);
        al_error_free(e);
        return;
    }
    t->delay = t->delay * 3 / 2;
    uint64_t cap = elapsed > POLL_SLOW_AFTER ? POLL_SLOW_MS : POLL_MAX_MS;
    if (t->delay > cap)
        t->delay = cap;
    if (poll_once(t, t->delay, &e) < 0) {
        task_end(t, -EIO, NULL, e);
        al_error_free(e);
    }
}

static int poll_once(struct pve_task *t, uint64_t delay, struct al_error **err)
{
    struct pve_request req = {
            .method = "GET",
            .path = t->path,
            .flags = PVE_IDEMPOTENT | PVE_RETRY_NO_SUCH_TASK,
            .max_reply = 64u << 10,
            .delay_ms = delay,
    };
    return pve_api_call(t->api, &req, on_status, t, &t->call, err);
}

int pve_task_wait(struct pve_api *api, const char *upid, uint64_t max_ms, pve_task_cb cb,
                  void *data, struct pve_task **ret, struct al_error **err)
{
    struct pve_upid u;
    if (pve_upid_parse(upid, &u) < 0)
        return al_error_set(err, EPROTO, "not a task id: \"%.80s\"", upid);
    struct pve_task *t = calloc(1, sizeof(*t));
    if (!t)
        return al_error_set(err, ENOMEM, "out of memory");
    t->api = api;
    t->u = u;
    t->cb = cb;
    t->data = data;
    t->t0 = al_now_mono_ms();
    t->max_ms = max_ms ? max_ms : DEFAULT_MAX_MS;
    t->delay = POLL_FIRST_MS;
    struct al_buf path = AL_BUF_INIT;
    int r = al_buf_puts(&path, "/nodes");
    if (r == 0)
        r = pve_path_segment(&path, u.node);
    if (r == 0)
        r = al_buf_puts(&path, "/tasks");
    if (r == 0)
        r = pve_path_segment(&path, upid);
    if (r == 0)
        r = al_buf_puts(&path, "/status");
    t->upid = strdup(upid);
    if (r < 0 || !t->upid) {
        al_buf_free(&path);
        task_free(t);
        return al_error_set(err, ENOMEM, "out of memory");
    }
    t->path = al_buf_steal(&path);
    r = poll_once(t, POLL_FIRST_MS, err);
    if (r < 0) {
        task_free(t);
        return r;
    }
    if (ret)
        *ret = t;
    return 0;
}

void pve_task_cancel(struct pve_task *t)
{
    if (t && t->call)
        pve_call_cancel(t->call); /* on_status ends the task with -ECANCELED */
}
