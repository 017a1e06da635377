/* The Proxmox backend's teardown (stop and purge, with retries) and its
 * reconcile support: listing owned VMs by their tags, destroying them. */
#include "provision/proxmox_priv.h"

/* ------------------------------------------------------------ teardown */

enum td_step {
    TD_CHECK = 0,
    TD_STOP,
    TD_DELETE,
};

static void td_run(struct px_teardown *t);

static void td_end(struct px_teardown *t, int result, const char *msg)
{
    t->call = NULL;
    t->task = NULL;
    t->done(t, result, msg);
}

void px_on_defer(uv_timer_t *h)
{
    struct px_backend *pb = h->data;
    while (!al_list_empty(&pb->deferred)) {
        struct px_teardown *t = al_list_first_entry(&pb->deferred, struct px_teardown, defer_link);
        al_list_del(&t->defer_link);
        td_end(t, t->defer_result, t->defer_result < 0 ? t->defer_msg : NULL);
    }
}

/* Ends the teardown from the loop, never inside the caller's stack. */
static void td_defer_end(struct px_teardown *t, int result, const char *msg)
{
    struct px_backend *pb = t->pb;
    if (pb->closing) {
        /* the timer is closing too; close runs its own callbacks anyway */
        td_end(t, result, msg);
        return;
    }
    t->defer_result = result;
    snprintf(t->defer_msg, sizeof(t->defer_msg), "%s", msg ? msg : "");
    al_list_add(&pb->deferred, &t->defer_link);
    uv_timer_start(&pb->defer, px_on_defer, 0, 0);
}

static void td_path(const struct px_teardown *t, const char *suffix, char *buf, size_t size)
{
    snprintf(buf, size, "/nodes/%s/qemu/%" PRId64 "%s", t->node, t->vmid, suffix);
}

static bool msg_gone(const char *m)
{
    return strstr(m, "does not exist") != NULL;
}

static void td_retry_or_end(struct px_teardown *t, int result, const struct al_error *err,
                            const char *message)
{
    if (++t->tries < TEARDOWN_TRIES && !t->pb->closing && result != -ECANCELED &&
        pve_message_is_lock_timeout(message ? message : "")) {
        td_run(t);
        return;
    }
    char msg[400];
    snprintf(msg, sizeof(msg), "removing VM %" PRId64 " on %s: %s", t->vmid, t->node,
             al_error_message(err));
    td_end(t, result, msg);
}

static void td_on_task(int result, const char *exitstatus, const struct al_error *err, void *data)
{
    struct px_teardown *t = data;
    t->task = NULL;
    if (result < 0) {
        const char *x = exitstatus ? exitstatus : "";
        if ((t->step == TD_DELETE && msg_gone(x)) ||
            (t->step == TD_STOP && (strstr(x, "not running") || msg_gone(x)))) {
            result = 0;
        } else {
            td_retry_or_end(t, result, err, x);
            return;
        }
    }
    if (t->step == TD_DELETE) {
        td_end(t, 0, NULL);
        return;
    }
    t->step++;
    t->tries = 0;
    td_run(t);
}

static void td_on_reply(int result, const struct pve_reply *reply, const struct al_error *err,
                        void *data)
{
    struct px_teardown *t = data;
    t->call = NULL;
    if (t->step == TD_CHECK) {
        if (result < 0 && msg_gone(reply->message)) {
            td_end(t, 0, NULL);
            return;
        }
        if (result < 0) {
            td_retry_or_end(t, result, err, reply->message);
            return;
        }
        const char *name = pve_json_str(reply->data, "name");
        if (!name || !streq(name, t->check_name)) {
            td_end(t, 0, NULL); /* someone else's VM took that id */
            return;
        }
        t->step = TD_STOP;
        t->stop = true;
        td_run(t);
        return;
    }
    if (result < 0) {
        if ((t->step == TD_DELETE && msg_gone(reply->message)) ||
            (t->step == TD_STOP && msg_gone(reply->message))) {
            td_end(t, 0, NULL);
            return;
        }
        if (t->step == TD_STOP && strstr(reply->message, "not running")) {
            t->step = TD_DELETE;
            td_run(t);
            return;
        }
        td_retry_or_end(t, result, err, reply->message);
        return;
    }
    const char *upid = reply->data && YAJL_IS_STRING(reply->data) ? reply->data->u.string : NULL;
    struct al_error *e = NULL;
    if (!upid || pve_task_wait(t->pb->api, upid, 0, td_on_task, t, &t->task, &e) < 0) {
        if (!e)
            al_error_set(&e, EPROTO, "no task id in the reply");
        char msg[400];
        snprintf(msg, sizeof(msg), "removing VM %" PRId64 ": %s", t->vmid, al_error_message(e));
        al_error_free(e);
        td_end(t, -EPROTO, msg);
    }
}

static void td_run(struct px_teardown *t)
{
    char path[256];
    struct pve_params p = {0};
    struct pve_request req = {.flags = PVE_IDEMPOTENT};
    if (t->step == TD_CHECK && !t->check_name[0])
        t->step = TD_STOP;
    if (t->step == TD_STOP && !t->stop)
        t->step = TD_DELETE;
    switch (t->step) {
    case TD_CHECK:
        td_path(t, "/config", path, sizeof(path));
        req.method = "GET";
        break;
    case TD_STOP:
        td_path(t, "/status/stop", path, sizeof(path));
        req.method = "POST";
        break;
    default:
        td_path(t, "", path, sizeof(path));
        req.method = "DELETE";
        pve_params_add_bool(&p, "purge", true);
        pve_params_add_bool(&p, "destroy-unreferenced-disks", true);
        req.params = &p;
        break;
    }
    req.path = path;
    req.delay_ms = t->tries ? 1000u * (uint64_t)t->tries : 0;
    struct al_error *err = NULL;
    int r = pve_api_call(t->pb->api, &req, td_on_reply, t, &t->call, &err);
    pve_params_clear(&p);
    if (r < 0) {
        char msg[400];
        snprintf(msg, sizeof(msg), "removing VM %" PRId64 ": %s", t->vmid, al_error_message(err));
        al_error_free(err);
        td_defer_end(t, r, msg);
    }
}

/* ------------------------------------------------------------ VM end */

void px_waiters_remove(struct px_vm *v)
{
    al_list_del(&v->wait_link);
}

static void vm_unlink(struct px_vm *v)
{
    struct px_backend *pb = v->pb;
    if (!pb)
        return;
    al_list_del(&v->link);
    px_waiters_remove(v);
    v->pb = NULL;
}

void px_vm_free(struct px_vm *v)
{
    vm_unlink(v);
    if (v->secrets.data)
        explicit_bzero(v->secrets.data, v->secrets.len);
    al_buf_free(&v->secrets);
    al_buf_free(&v->job);
    if (v->wd_fd >= 0)
        close(v->wd_fd);
    strv_free(v->cmd);
    free(v->base.name);
    free(v);
}

static void on_vm_torn_down(struct px_teardown *t, int result, const char *message)
{
    struct px_vm *v = t->data;
    backend_done_cb done = v->destroy_done;
    void *data = v->destroy_data;
    struct al_error *err = NULL;
    if (result < 0) {
        al_error_set(&err, -result, "%s", message ? message : "teardown failed");
        log_warn(v->req.job_id, "cleanup of %s incomplete: %s", v->base.name, message);
    }
    /* gone from the backend before the owner hears of it */
    vm_unlink(v);
    if (done)
        done(result, err, data);
    al_error_free(err);
    px_vm_free(v);
}

void px_teardown_start(struct px_vm *v)
{
    struct px_backend *pb = v->pb;
    if (v->cloned || v->clone_unsure) {
        v->td = (struct px_teardown){
                .pb = pb,
                .vmid = v->vmid,
                .stop = v->start_sent || v->clone_unsure,
                .done = on_vm_torn_down,
                .data = v,
        };
        snprintf(v->td.node, sizeof(v->td.node), "%s", v->node);
        if (!v->cloned)
            snprintf(v->td.check_name, sizeof(v->td.check_name), "%s", v->base.name);
        td_run(&v->td);
        return;
    }
    /* nothing exists; still answer from the loop, never from inside destroy */
    v->td = (struct px_teardown){.pb = pb, .done = on_vm_torn_down, .data = v};
    td_defer_end(&v->td, 0, NULL);
}

/* ------------------------------------------------------------ reconcile */

/* Owner ids are tagged with ':' as '.'; the ids agentlab makes have no '.'. */
static char *owner_from_tag(const char *t)
{
    char *o = strdup(t);
    for (char *p = o; p && *p; p++) {
        if (*p == '.')
            *p = ':';
    }
    return o;
}

struct owned_scan {
    char *job;
    char *owner;
    bool ours;     /* tagged "agentlab" */
    bool other_be; /* tagged for another backend */
};

static void scan_tags(const struct px_backend *pb, const char *tags, struct owned_scan *s)
{
    if (!tags)
        return;
    _cleanup_free_ char *copy = strdup(tags);
    char *save = NULL;
    for (char *t = copy ? strtok_r(copy, ";, ", &save) : NULL; t;
         t = strtok_r(NULL, ";, ", &save)) {
        if (strcasecmp(t, "agentlab") == 0)
            s->ours = true;
        else if (strncasecmp(t, "agentlab-backend.", 17) == 0)
            s->other_be = strcasecmp(t + 17, pb->b->name) != 0;
        else if (strncasecmp(t, "agentlab-job.", 13) == 0 && !s->job)
            s->job = strdup(t + 13);
        else if (strncasecmp(t, "agentlab-owner.", 15) == 0 && !s->owner)
            s->owner = owner_from_tag(t + 15);
    }
}

/* "agentlab-<job>-<attempt>": the job and attempt, or false. */
static bool parse_vm_name(const char *name, char *job, size_t size, int *attempt)
{
    size_t pl = strlen(VM_PREFIX);
    if (strncmp(name, VM_PREFIX, pl) != 0)
        return false;
    const char *dash = strrchr(name, '-');
    if (!dash || dash < name + pl + 1 || al_parse_int(dash + 1, 1, 1000, attempt) < 0)
        return false;
    size_t n = (size_t)(dash - name - (ptrdiff_t)pl);
    if (n >= size)
        return false;
    memcpy(job, name + pl, n);
    job[n] = '\0';
    return al_name_is_valid(job);
}

struct list_op {
    struct px_backend *pb;
    backend_list_cb cb;
    void *data;
};

static void on_list(int result, const struct pve_reply *reply, const struct al_error *err,
                    void *data)
{
    struct list_op *op = data;
    struct px_backend *pb = op->pb;
    if (result < 0) {
        px_note_failure(pb, result, err);
        op->cb(result, NULL, 0, err, op->data);
        free(op);
        return;
    }
    yajl_val list = reply->data;
    size_t cap = list && YAJL_IS_ARRAY(list) ? list->u.array.len : 0;
    struct owned_vm *vms = calloc(cap + 1, sizeof(*vms));
    size_t n = 0;
    for (size_t i = 0; vms && i < cap; i++) {
        yajl_val it = list->u.array.values[i];
        const char *name = pve_json_str(it, "name");
        int64_t tmpl = 0;
        pve_json_int(it, "template", &tmpl);
        char job[128];
        int attempt = 0;
        if (!name || tmpl == 1 || !parse_vm_name(name, job, sizeof(job), &attempt))
            continue;
        struct owned_scan s = {0};
        scan_tags(pb, pve_json_str(it, "tags"), &s);
        const char *status = pve_json_str(it, "status");
        /* untagged: a crash between clone and config; the store decides */
        if (s.other_be || (!s.ours && pve_json_str(it, "tags") && *pve_json_str(it, "tags"))) {
            free(s.job);
            free(s.owner);
            continue;
        }
        vms[n] = (struct owned_vm){
                .name = strdup(name),
                .job_id = s.job ? s.job : strdup(job),
                .attempt = attempt,
                .owner = s.owner,
                .running = status && streq(status, "running"),
        };
        if (!vms[n].name || !vms[n].job_id) {
            owned_vm_array_free(vms, n + 1);
            vms = NULL;
            break;
        }
        n++;
    }
    if (!vms) {
        struct al_error *e = NULL;
        al_error_set(&e, ENOMEM, "out of memory");
        op->cb(-ENOMEM, NULL, 0, e, op->data);
        al_error_free(e);
    } else {
        op->cb(0, vms, n, NULL, op->data);
    }
    free(op);
}

int px_list_owned(struct backend *b, backend_list_cb cb, void *data)
{
    struct px_backend *pb = b->priv;
    struct list_op *op = calloc(1, sizeof(*op));
    if (!op)
        return -ENOMEM;
    *op = (struct list_op){.pb = pb, .cb = cb, .data = data};
    int r = px_list_resources(pb, on_list, op, NULL);
    if (r < 0)
        free(op);
    return r;
}

struct destroy_op {
    struct px_backend *pb;
    char name[64];
    backend_done_cb done;
    void *data;
    struct px_teardown *tds;
    size_t n, pending;
    int result;
    char error[400];
};

static void destroy_op_step(struct destroy_op *op)
{
    if (op->pending)
        return;
    struct al_error *e = NULL;
    if (op->result < 0)
        al_error_set(&e, -op->result, "%s", op->error);
    op->done(op->result, e, op->data);
    al_error_free(e);
    free(op->tds);
    free(op);
}

static void on_owned_torn_down(struct px_teardown *t, int result, const char *message)
{
    struct destroy_op *op = t->data;
    if (result < 0 && op->result == 0) {
        op->result = result;
        snprintf(op->error, sizeof(op->error), "%s", message ? message : "teardown failed");
    }
    op->pending--;
    destroy_op_step(op);
}

static void on_destroy_lookup(int result, const struct pve_reply *reply, const struct al_error *err,
                              void *data)
{
    struct destroy_op *op = data;
    struct px_backend *pb = op->pb;
    if (result < 0) {
        op->result = result;
        snprintf(op->error, sizeof(op->error), "%s", al_error_message(err));
        destroy_op_step(op);
        return;
    }
    yajl_val list = reply->data;
    size_t cap = list && YAJL_IS_ARRAY(list) ? list->u.array.len : 0;
    op->tds = calloc(cap + 1, sizeof(*op->tds));
    if (!op->tds) {
        op->result = -ENOMEM;
        snprintf(op->error, sizeof(op->error), "out of memory");
        destroy_op_step(op);
        return;
    }
    for (size_t i = 0; i < cap; i++) {
        yajl_val it = list->u.array.values[i];
        const char *name = pve_json_str(it, "name");
        const char *node = pve_json_str(it, "node");
        const char *tags = pve_json_str(it, "tags");
        int64_t vmid = 0, tmpl = 0;
        pve_json_int(it, "template", &tmpl);
        if (!name || !streq(name, op->name) || tmpl == 1 || !node || !px_node_name_ok(node) ||
            !pve_json_int(it, "vmid", &vmid))
            continue;
        struct owned_scan s = {0};
        scan_tags(pb, tags, &s);
        bool skip = s.other_be || (!s.ours && tags && *tags);
        free(s.job);
        free(s.owner);
        if (skip)
            continue;
        const char *status = pve_json_str(it, "status");
        struct px_teardown *t = &op->tds[op->n++];
        *t = (struct px_teardown){
                .pb = pb,
                .vmid = vmid,
                .stop = !status || !streq(status, "stopped"),
                .done = on_owned_torn_down,
                .data = op,
        };
        snprintf(t->node, sizeof(t->node), "%s", node);
    }
    op->pending = op->n + 1;
    for (size_t i = 0; i < op->n; i++)
        td_run(&op->tds[i]);
    op->pending--;
    destroy_op_step(op);
}

int px_destroy_owned(struct backend *b, const char *name, backend_done_cb done, void *data)
{
    struct px_backend *pb = b->priv;
    char job[128];
    int attempt;
    if (!parse_vm_name(name, job, sizeof(job), &attempt) || strlen(name) >= 64)
        return -EINVAL;
    al_list_for_each(v, &pb->vms, struct px_vm, link) {
        if (streq(v->base.name, name))
            return -EBUSY; /* live: destroy it through its owner */
    }
    struct destroy_op *op = calloc(1, sizeof(*op));
    if (!op)
        return -ENOMEM;
    op->pb = pb;
    snprintf(op->name, sizeof(op->name), "%s", name);
    op->done = done;
    op->data = data;
    int r = px_list_resources(pb, on_destroy_lookup, op, NULL);
    if (r < 0)
        free(op);
    return r;
}
