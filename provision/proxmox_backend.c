/* The Proxmox VE backend: one linked clone of a template per attempt, the
 * job delivered and run through the QEMU guest agent (pve_guest.h), the VM
 * stopped and purged afterwards. Everything is API calls on the loop
 * (pve_api.h); nothing blocks.
 *
 * One attempt, in API calls:
 *   GET  /cluster/resources?type=vm      template lookup (cached 60 s, shared)
 *   GET  /nodes                          node choice: online, configured,
 *                                        most free memory that fits
 *   GET  /cluster/nextid                 VMID (bumped past ids in flight here;
 *                                        a collision at clone time retries)
 *   POST .../qemu/{template}/clone       linked (or full) clone, then its task
 *   PUT  .../qemu/{vmid}/config          cores, memory, tags, agent, net0, ci*
 *   POST .../status/start                then its task
 *   POST .../agent/file-write            job (+ secrets, work dir) in chunks;
 *                                        the first one waits for the agent
 *   POST .../agent/exec                  the runner, script on stdin
 *   GET  .../agent/exec-status           \ every 0.3-2 s while it runs:
 *   GET  .../agent/file-read (out, err)  / live-ish output
 *   GET  .../agent/file-read (a.tar)     artifacts, in chunks
 *   POST .../status/stop, DELETE ...?purge=1&destroy-unreferenced-disks=1
 *                                        each with its task
 *
 * Ownership: the VM is named agentlab-<job>-<attempt> and tagged
 * "agentlab", "agentlab-backend.<name>", "agentlab-job.<id>" and
 * "agentlab-owner.<owner id, ':' as '.'>"; list_owned reads them from
 * /cluster/resources. Health: GET /nodes every 15 s; 401/403 and TLS
 * failures mark the backend broken (an operator must fix the config).
 */
#include <ctype.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "provision/backend.h"
#include "provision/pve_api.h"
#include "provision/pve_guest.h"
#include "provision/pve_task.h"
#include "runner/base/base64.h"
#include "runner/base/log.h"
#include "runner/base/util.h"

#define VM_PREFIX          "agentlab-"
#define DEFAULT_MAX_VMS    8
#define PROBE_INTERVAL_MS  15000u
#define TEMPLATE_TTL_MS    60000u
#define MAX_VMID_TRIES     10
#define AGENT_POLL_MS      300u
#define AGENT_POLL_MAX_MS  1000u
#define POLL_FAST_MS       300u
#define POLL_MAX_MS        1000u
#define POLL_SLOW_MS       2000u
#define POLL_SLOW_AFTER_MS 60000u
#define LOG_CHUNK          (1u << 20)
#define ART_CHUNK          (3u << 20)
#define TEARDOWN_TRIES     5
#define AGENT_HICCUPS      20 /* agent answers "not running" while the job runs */

struct px_vm;
struct px_backend;

/* Stop and purge of one VM; shared by destroy and destroy_owned. */
struct px_teardown {
    struct px_backend *pb;
    char node[64];
    int64_t vmid;
    char check_name[64]; /* only delete when the VM has this name ("" = no check) */
    bool stop;
    int step;
    int tries;
    struct pve_call *call;
    struct pve_task *task;
    void (*done)(struct px_teardown *t, int result, const char *message);
    void *data;
    /* an end that must not happen inside the caller's call (destroy) */
    struct px_teardown *defer_next;
    int defer_result;
    char defer_msg[400];
};

struct px_backend {
    struct backend *b;
    struct pve_api *api;
    char **nodes_cfg; /* candidate nodes; NULL = every node */
    int max_vms;
    int64_t cap_vcpus;
    uint64_t cap_memory;
    /* template */
    int64_t tmpl_vmid;
    char tmpl_node[64];
    char tmpl_name[64];
    bool tmpl_is_template;
    uint64_t tmpl_at;
    bool tmpl_busy;
    char tmpl_error[300];
    struct px_vm *tmpl_waiters;
    /* health */
    bool healthy;
    bool broken;
    char health[200];
    struct pve_call *probe;
    struct px_vm *vms;
    uv_timer_t defer;
    struct px_teardown *deferred;
    int closes_pending;
    bool closing;
    void (*close_done)(void *data);
    void *close_data;
};

enum write_file {
    W_JOB = 0,
    W_SECRETS,
    W_WORKDIR,
    W_DONE,
};

enum tick_step {
    T_STATUS = 0,
    T_OUT,
    T_ERR,
};

struct px_vm {
    struct vm base;
    struct px_backend *pb;
    struct px_vm *next;
    struct px_vm *wait_next;
    bool waiting;
    struct vm_request req;
    uint64_t t0;
    struct vm_result result;
    bool finished;
    bool destroying;
    backend_done_cb destroy_done;
    void *destroy_data;
    struct pve_call *call;
    bool call_cancellable;
    struct pve_task *task;
    /* the VM */
    char node[64];
    int64_t vmid;
    bool cloned;       /* the clone task ended OK: the VM exists */
    bool clone_unsure; /* the clone request may have worked */
    bool start_sent;
    int vmid_tries;
    /* delivery */
    struct al_buf job, secrets;
    int wd_fd;
    uint64_t wd_size;
    enum write_file wfile;
    uint32_t wchunk;
    bool agent_up;
    uint64_t agent_wait;
    char **cmd;
    /* the run */
    int64_t pid;
    bool exited;
    enum tick_step tick;
    bool tick_output;
    uint64_t poll_ms, t_running;
    uint64_t out_off, err_off, art_off;
    bool stream_done[3]; /* after the exit: nothing more to read */
    uint64_t log_cap, art_cap;
    int hiccups;
    struct pve_guest_status st;
    struct px_teardown td;
};

static void finish(struct px_vm *v, enum vm_outcome outcome, int exit_code, const char *fmt, ...)
        _printf_(4, 5);
static void teardown_start(struct px_vm *v);
static void step_nodes(struct px_vm *v);
static void step_nextid(struct px_vm *v);
static void step_write(struct px_vm *v);
static void pump(struct px_vm *v);

/* ------------------------------------------------------------ helpers */

static uint64_t since_ms(const struct px_vm *v)
{
    uint64_t t = al_now_mono_ms() - v->t0;
    return t ? t : 1;
}

static bool node_name_ok(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++) {
        if (!isalnum((unsigned char)s[n]) && s[n] != '-' && s[n] != '.' && s[n] != '_')
            return false;
    }
    return n > 0 && n < 64;
}

static void set_health(struct px_backend *pb, int result, const char *message)
{
    bool was = pb->healthy;
    if (result == 0) {
        pb->healthy = true;
        pb->broken = false;
        pb->health[0] = '\0';
        if (!was)
            log_info(NULL, "backend %s: the Proxmox API answers again", pb->b->name);
        return;
    }
    pb->healthy = false;
    pb->broken = result == -EACCES || result == -EPERM;
    snprintf(pb->health, sizeof(pb->health), "%s", message);
    if (was)
        log_warn(NULL, "backend %s: %s", pb->b->name, message);
}

/* Calls that failed on credentials or TLS say so about the whole backend. */
static void note_failure(struct px_backend *pb, int result, const struct al_error *err)
{
    if (result == -EACCES || result == -EPERM)
        set_health(pb, result, al_error_message(err));
}

static void phase(struct px_vm *v, enum vm_phase p)
{
    vm_phase_reached(&v->base, &v->result, p, since_ms(v));
}

static void finish(struct px_vm *v, enum vm_outcome outcome, int exit_code, const char *fmt, ...)
{
    if (v->finished)
        return;
    v->finished = true;
    v->result.outcome = outcome;
    v->result.exit_code = exit_code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(v->result.reason, sizeof(v->result.reason), fmt, ap);
    va_end(ap);
    if (!v->result.t_exited)
        v->result.t_exited = since_ms(v);
    if (v->base.ev->finished)
        v->base.ev->finished(&v->base, &v->result, v->base.ev_data);
}

/* Ends the attempt with an infrastructure error from an API call. */
static void fail_call(struct px_vm *v, int result, const struct al_error *err, const char *what)
{
    note_failure(v->pb, result, err);
    finish(v, VM_INFRA_ERROR, 0, "Proxmox: %s: %s", what, al_error_message(err));
}

/* Common head of every callback of a VM step: the call is over; a destroy
 * that came meanwhile takes over. */
static bool settle(struct px_vm *v)
{
    v->call = NULL;
    v->call_cancellable = false;
    if (v->destroying) {
        teardown_start(v);
        return true;
    }
    return false;
}

static int vm_call(struct px_vm *v, const char *method, const char *suffix,
                   const struct pve_params *params, unsigned flags, uint64_t delay,
                   size_t max_reply, bool cancellable, pve_cb cb)
{
    char path[256];
    if (v->vmid > 0)
        snprintf(path, sizeof(path), "/nodes/%s/qemu/%" PRId64 "%s", v->node, v->vmid, suffix);
    else
        snprintf(path, sizeof(path), "%s", suffix);
    struct pve_request req = {
            .method = method,
            .path = path,
            .params = params,
            .flags = flags,
            .delay_ms = delay,
            .max_reply = max_reply,
    };
    struct al_error *err = NULL;
    int r = pve_api_call(v->pb->api, &req, cb, v, &v->call, &err);
    if (r < 0) {
        finish(v, VM_INFRA_ERROR, 0, "Proxmox: %s", al_error_message(err));
        al_error_free(err);
        return r;
    }
    v->call_cancellable = cancellable;
    return 0;
}

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

static void on_defer(uv_timer_t *h)
{
    struct px_backend *pb = h->data;
    while (pb->deferred) {
        struct px_teardown *t = pb->deferred;
        pb->deferred = t->defer_next;
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
    t->defer_next = pb->deferred;
    pb->deferred = t;
    uv_timer_start(&pb->defer, on_defer, 0, 0);
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

static void waiters_remove(struct px_vm *v)
{
    if (!v->waiting)
        return;
    for (struct px_vm **pp = &v->pb->tmpl_waiters; *pp; pp = &(*pp)->wait_next) {
        if (*pp == v) {
            *pp = v->wait_next;
            break;
        }
    }
    v->waiting = false;
    v->wait_next = NULL;
}

static void vm_unlink(struct px_vm *v)
{
    struct px_backend *pb = v->pb;
    if (!pb)
        return;
    for (struct px_vm **pp = &pb->vms; *pp; pp = &(*pp)->next) {
        if (*pp == v) {
            *pp = v->next;
            break;
        }
    }
    waiters_remove(v);
    v->pb = NULL;
}

static void vm_free(struct px_vm *v)
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
    vm_free(v);
}

static void teardown_start(struct px_vm *v)
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

/* ------------------------------------------------------------ template */

static void template_waiters_run(struct px_backend *pb)
{
    struct px_vm *w = pb->tmpl_waiters;
    pb->tmpl_waiters = NULL;
    while (w) {
        struct px_vm *next = w->wait_next;
        w->waiting = false;
        w->wait_next = NULL;
        if (pb->tmpl_error[0])
            finish(w, VM_INFRA_ERROR, 0, "%s", pb->tmpl_error);
        else
            step_nodes(w);
        w = next;
    }
}

static void on_resources_for_template(int result, const struct pve_reply *reply,
                                      const struct al_error *err, void *data)
{
    struct px_backend *pb = data;
    const char *want = pb->b->cfg->proxmox.template_vm;
    int64_t want_id = 0;
    bool by_id = al_parse_int64(want, 100, 999999999, &want_id) == 0;
    pb->tmpl_busy = false;
    pb->tmpl_error[0] = '\0';
    if (result < 0) {
        note_failure(pb, result, err);
        snprintf(pb->tmpl_error, sizeof(pb->tmpl_error), "Proxmox: looking up the template: %s",
                 al_error_message(err));
        template_waiters_run(pb);
        return;
    }
    yajl_val list = reply->data;
    int matches = 0;
    if (list && YAJL_IS_ARRAY(list)) {
        for (size_t i = 0; i < list->u.array.len; i++) {
            yajl_val it = list->u.array.values[i];
            int64_t id;
            const char *name = pve_json_str(it, "name");
            const char *node = pve_json_str(it, "node");
            const char *type = pve_json_str(it, "type");
            if (!pve_json_int(it, "vmid", &id) || !node || !node_name_ok(node) ||
                (type && !streq(type, "qemu")))
                continue;
            if (by_id ? id != want_id : !(name && streq(name, want)))
                continue;
            int64_t tmpl = 0;
            pve_json_int(it, "template", &tmpl);
            /* by name, prefer a template over a VM of the same name */
            if (matches && !(tmpl == 1 && !pb->tmpl_is_template))
                continue;
            matches++;
            pb->tmpl_vmid = id;
            pb->tmpl_is_template = tmpl == 1;
            snprintf(pb->tmpl_node, sizeof(pb->tmpl_node), "%s", node);
            snprintf(pb->tmpl_name, sizeof(pb->tmpl_name), "%s", name ? name : "");
        }
    }
    if (!matches) {
        snprintf(pb->tmpl_error, sizeof(pb->tmpl_error),
                 "Proxmox: template \"%s\" not found in the cluster (as %s)", want,
                 by_id ? "a VMID" : "a VM name");
    } else if (!pb->tmpl_is_template && !pb->b->cfg->proxmox.full_clone) {
        snprintf(pb->tmpl_error, sizeof(pb->tmpl_error),
                 "Proxmox: VM %" PRId64 " (%s) is not a template, and a linked clone needs one: "
                 "convert it (qm template %" PRId64 ") or set full_clone = yes",
                 pb->tmpl_vmid, pb->tmpl_name, pb->tmpl_vmid);
    } else {
        pb->tmpl_at = al_now_mono_ms();
    }
    template_waiters_run(pb);
}

static void step_template(struct px_vm *v)
{
    struct px_backend *pb = v->pb;
    if (pb->tmpl_at && al_now_mono_ms() - pb->tmpl_at < TEMPLATE_TTL_MS) {
        step_nodes(v);
        return;
    }
    v->waiting = true;
    v->wait_next = pb->tmpl_waiters;
    pb->tmpl_waiters = v;
    if (pb->tmpl_busy)
        return;
    struct pve_params p = {0};
    pve_params_add(&p, "type", "vm");
    struct pve_request req = {
            .method = "GET",
            .path = "/cluster/resources",
            .params = &p,
            .flags = PVE_IDEMPOTENT,
            .max_reply = 16u << 20,
    };
    struct al_error *err = NULL;
    int r = pve_api_call(pb->api, &req, on_resources_for_template, pb, NULL, &err);
    pve_params_clear(&p);
    if (r < 0) {
        snprintf(pb->tmpl_error, sizeof(pb->tmpl_error), "Proxmox: %s", al_error_message(err));
        al_error_free(err);
        template_waiters_run(pb);
        return;
    }
    pb->tmpl_busy = true;
}

static void on_start_timer(int result, const struct pve_reply *reply, const struct al_error *err,
                           void *data)
{
    (void)reply;
    (void)err;
    struct px_vm *v = data;
    if (settle(v))
        return;
    if (result < 0) {
        finish(v, VM_INFRA_ERROR, 0, "Proxmox: canceled");
        return;
    }
    step_template(v);
}

/* ------------------------------------------------------------ node choice */

static bool node_wanted(const struct px_backend *pb, const char *name)
{
    if (!pb->nodes_cfg)
        return true;
    for (char **n = pb->nodes_cfg; *n; n++) {
        if (streq(*n, name))
            return true;
    }
    return false;
}

/* Memory our VMs on the node take that the node's own numbers may not show
 * yet (not started, or just started). */
static uint64_t node_reserved(const struct px_backend *pb, const char *node,
                              const struct px_vm *except)
{
    uint64_t sum = 0;
    for (const struct px_vm *o = pb->vms; o; o = o->next) {
        if (o != except && o->node[0] && streq(o->node, node) && !o->exited)
            sum += o->req.memory;
    }
    return sum;
}

static void on_nodes(int result, const struct pve_reply *reply, const struct al_error *err,
                     void *data)
{
    struct px_vm *v = data;
    if (settle(v))
        return;
    if (result < 0) {
        fail_call(v, result, err, "listing nodes");
        return;
    }
    struct px_backend *pb = v->pb;
    yajl_val list = reply->data;
    char why[400] = "";
    size_t wl = 0;
    const char *best = NULL;
    uint64_t best_free = 0;
    if (list && YAJL_IS_ARRAY(list)) {
        for (size_t i = 0; i < list->u.array.len; i++) {
            yajl_val it = list->u.array.values[i];
            const char *name = pve_json_str(it, "node");
            const char *status = pve_json_str(it, "status");
            if (!name || !node_name_ok(name) || !node_wanted(pb, name))
                continue;
            int64_t maxmem = 0, mem = 0;
            pve_json_int(it, "maxmem", &maxmem);
            pve_json_int(it, "mem", &mem);
            uint64_t used = (uint64_t)(mem > 0 ? mem : 0) + node_reserved(pb, name, v);
            uint64_t free_mem = maxmem > 0 && (uint64_t)maxmem > used ? (uint64_t)maxmem - used : 0;
            int n;
            if (!status || !streq(status, "online")) {
                n = snprintf(why + wl, sizeof(why) - wl, "%s%s is %s", wl ? ", " : "", name,
                             status ? status : "in an unknown state");
            } else if (free_mem < v->req.memory) {
                n = snprintf(why + wl, sizeof(why) - wl, "%s%s has %" PRIu64 " MiB free",
                             wl ? ", " : "", name, free_mem >> 20);
            } else {
                n = 0;
                if (!best || free_mem > best_free) {
                    best = name;
                    best_free = free_mem;
                }
            }
            if (n > 0 && (size_t)n < sizeof(why) - wl)
                wl += (size_t)n;
        }
    }
    if (!best) {
        finish(v, VM_INFRA_ERROR, 0, "Proxmox: no node can take the job's %" PRIu64 " MiB: %s",
               v->req.memory >> 20,
               why[0] ? why
                      : (pb->nodes_cfg ? "none of the configured nodes exists"
                                       : "the cluster lists no nodes"));
        return;
    }
    snprintf(v->node, sizeof(v->node), "%s", best);
    step_nextid(v);
}

static void step_nodes(struct px_vm *v)
{
    vm_call(v, "GET", "/nodes", NULL, PVE_IDEMPOTENT, 0, 0, true, on_nodes);
}

/* ------------------------------------------------------------ clone */

static bool vmid_in_use_here(const struct px_backend *pb, int64_t id, const struct px_vm *except)
{
    for (const struct px_vm *o = pb->vms; o; o = o->next) {
        if (o != except && o->vmid == id)
            return true;
    }
    return false;
}

static void step_clone(struct px_vm *v);

static void on_nextid(int result, const struct pve_reply *reply, const struct al_error *err,
                      void *data)
{
    struct px_vm *v = data;
    if (settle(v))
        return;
    if (result < 0) {
        fail_call(v, result, err, "allocating a VMID");
        return;
    }
    int64_t id = 0;
    yajl_val d = reply->data;
    bool ok = false;
    if (d && YAJL_IS_STRING(d)) /* Proxmox sends the id as a string */
        ok = al_parse_int64(d->u.string, 100, 999999999, &id) == 0;
    else if (d && YAJL_IS_INTEGER(d))
        ok = (id = YAJL_GET_INTEGER(d)) >= 100 && id <= 999999999;
    if (!ok) {
        finish(v, VM_INFRA_ERROR, 0, "Proxmox: /cluster/nextid returned no VMID");
        return;
    }
    /* nothing is reserved: concurrent attempts here would all get the same
     * id, so skip the ones our other VMs hold */
    while (vmid_in_use_here(v->pb, id, v) && id < 999999999)
        id++;
    v->vmid = id;
    step_clone(v);
}

static void step_nextid(struct px_vm *v)
{
    v->vmid = 0;
    vm_call(v, "GET", "/cluster/nextid", NULL, PVE_IDEMPOTENT, 0, 0, true, on_nextid);
}

static void step_config(struct px_vm *v);

static void on_clone_task(int result, const char *exitstatus, const struct al_error *err,
                          void *data)
{
    struct px_vm *v = data;
    v->task = NULL;
    if (result == 0) {
        v->cloned = true;
        v->clone_unsure = false;
    } else if (exitstatus && strstr(exitstatus, "already exists")) {
        v->clone_unsure = false; /* someone else's VM; ours was never made */
    }
    if (settle(v))
        return;
    if (result < 0) {
        if (exitstatus && strstr(exitstatus, "already exists") &&
            ++v->vmid_tries < MAX_VMID_TRIES) {
            step_nextid(v);
            return;
        }
        v->pb->tmpl_at = 0; /* look the template up afresh next time */
        fail_call(v, result, err, "cloning the template");
        return;
    }
    step_config(v);
}

static void on_clone(int result, const struct pve_reply *reply, const struct al_error *err,
                     void *data)
{
    struct px_vm *v = data;
    const char *upid = result == 0 && reply->data && YAJL_IS_STRING(reply->data)
                               ? reply->data->u.string
                               : NULL;
    if (result < 0 && reply->status == 0 && result != -ECONNREFUSED && result != -EPERM &&
        result != -ECANCELED)
        v->clone_unsure = true; /* lost on the way back: it may exist */
    if (upid) {
        /* even when destroying: the clone must end before the VM can go */
        v->clone_unsure = true;
        v->call = NULL;
        v->call_cancellable = false;
        struct al_error *e = NULL;
        if (pve_task_wait(v->pb->api, upid, 0, on_clone_task, v, &v->task, &e) == 0)
            return;
        if (!settle(v))
            finish(v, VM_INFRA_ERROR, 0, "Proxmox: cloning: %s", al_error_message(e));
        al_error_free(e);
        return;
    }
    if (settle(v))
        return;
    if (result < 0 && strstr(reply->message, "already exists") &&
        ++v->vmid_tries < MAX_VMID_TRIES) {
        step_nextid(v);
        return;
    }
    if (result < 0) {
        v->pb->tmpl_at = 0;
        fail_call(v, result, err, "cloning the template");
        return;
    }
    finish(v, VM_INFRA_ERROR, 0, "Proxmox: the clone reply carries no task id");
}

static void step_clone(struct px_vm *v)
{
    struct px_backend *pb = v->pb;
    const struct backend_settings *cfg = pb->b->cfg;
    struct pve_params p = {0};
    char desc[600];
    snprintf(desc, sizeof(desc),
             "agentlab job %s attempt %d, backend %s, owner %s. Destroyed when the job ends.",
             v->req.job_id, v->req.attempt, pb->b->name, pb->b->env.owner_id);
    pve_params_add_int(&p, "newid", v->vmid);
    pve_params_add(&p, "name", v->base.name);
    pve_params_add(&p, "description", desc);
    pve_params_add_bool(&p, "full", cfg->proxmox.full_clone);
    if (cfg->proxmox.full_clone && *cfg->proxmox.storage)
        pve_params_add(&p, "storage", cfg->proxmox.storage);
    if (*cfg->proxmox.pool)
        pve_params_add(&p, "pool", cfg->proxmox.pool);
    if (!streq(v->node, pb->tmpl_node))
        pve_params_add(&p, "target", v->node);
    char path[200];
    snprintf(path, sizeof(path), "/nodes/%s/qemu/%" PRId64 "/clone", pb->tmpl_node, pb->tmpl_vmid);
    int64_t vmid = v->vmid;
    v->vmid = 0; /* the path is the template's */
    vm_call(v, "POST", path, &p, 0, 0, 0, false, on_clone);
    v->vmid = vmid;
    pve_params_clear(&p);
}

/* ------------------------------------------------------------ config, start */

static void step_start(struct px_vm *v);

static int add_tag(struct al_buf *b, const char *prefix, const char *value)
{
    int r = al_buf_printf(b, "%s%s", b->len ? ";" : "", prefix);
    for (const char *p = value; r == 0 && *p; p++) {
        char c = (char)tolower((unsigned char)*p);
        if (c == ':')
            c = '.';
        else if (!isalnum((unsigned char)c) && c != '-' && c != '_' && c != '.')
            return -EINVAL;
        r = al_buf_append(b, &c, 1);
    }
    return r;
}

static void on_config(int result, const struct pve_reply *reply, const struct al_error *err,
                      void *data)
{
    (void)reply;
    struct px_vm *v = data;
    if (settle(v))
        return;
    if (result < 0) {
        fail_call(v, result, err, "configuring the VM");
        return;
    }
    phase(v, VM_PHASE_PROVISIONED);
    if (!v->finished && !v->destroying)
        step_start(v);
}

static void step_config(struct px_vm *v)
{
    struct px_backend *pb = v->pb;
    const struct backend_settings *cfg = pb->b->cfg;
    struct pve_params p = {0};
    struct al_buf tags = AL_BUF_INIT;
    int r = al_buf_puts(&tags, "agentlab");
    if (r == 0)
        r = add_tag(&tags, "agentlab-backend.", pb->b->name);
    if (r == 0)
        r = add_tag(&tags, "agentlab-job.", v->req.job_id);
    /* an owner id with other characters is left out: the store's VM
     * record still proves ownership */
    if (r == 0) {
        struct al_buf t2 = AL_BUF_INIT;
        if (add_tag(&t2, "agentlab-owner.", pb->b->env.owner_id) == 0 && t2.data)
            r = al_buf_printf(&tags, ";%s", t2.data);
        al_buf_free(&t2);
    }
    pve_params_add_int(&p, "cores", v->req.cpus);
    pve_params_add_int(&p, "memory", (int64_t)(v->req.memory >> 20));
    pve_params_add(&p, "tags", tags.data ? tags.data : "agentlab");
    pve_params_add(&p, "agent", "1");
    pve_params_add_bool(&p, "onboot", false);
    if (*cfg->proxmox.bridge) {
        char net[128];
        snprintf(net, sizeof(net), "virtio,bridge=%s", cfg->proxmox.bridge);
        pve_params_add(&p, "net0", net);
    }
    if (*cfg->proxmox.ciuser)
        pve_params_add(&p, "ciuser", cfg->proxmox.ciuser);
    if (*cfg->proxmox.sshkeys_file) {
        /* Proxmox wants sshkeys strictly percent-encoded, and the form
         * encoding then encodes that once more */
        _cleanup_free_ char *keys = NULL;
        struct al_error *rerr = NULL;
        size_t klen = 0;
        if (al_read_file(cfg->proxmox.sshkeys_file, 64u << 10, &keys, &klen, &rerr) < 0) {
            pve_params_clear(&p);
            al_buf_free(&tags);
            finish(v, VM_INFRA_ERROR, 0, "reading sshkeys_file: %s", al_error_message(rerr));
            al_error_free(rerr);
            return;
        }
        struct al_buf enc = AL_BUF_INIT;
        if (pve_percent_encode(&enc, keys, klen) == 0 && enc.data)
            pve_params_add(&p, "sshkeys", enc.data);
        al_buf_free(&enc);
    }
    al_buf_free(&tags);
    if (r < 0)
        p.error = r;
    vm_call(v, "PUT", "/config", &p, PVE_IDEMPOTENT, 0, 0, false, on_config);
    pve_params_clear(&p);
}

static void on_start_task(int result, const char *exitstatus, const struct al_error *err,
                          void *data)
{
    (void)exitstatus;
    struct px_vm *v = data;
    v->task = NULL;
    if (settle(v))
        return;
    if (result < 0) {
        fail_call(v, result, err, "starting the VM");
        return;
    }
    phase(v, VM_PHASE_BOOTING);
    if (v->finished || v->destroying)
        return;
    v->agent_wait = AGENT_POLL_MS;
    step_write(v);
}

static void on_start(int result, const struct pve_reply *reply, const struct al_error *err,
                     void *data)
{
    struct px_vm *v = data;
    const char *upid = result == 0 && reply->data && YAJL_IS_STRING(reply->data)
                               ? reply->data->u.string
                               : NULL;
    if (settle(v))
        return;
    if (result < 0 && strstr(reply->message, "already running")) {
        /* a retried start whose first try went through */
        on_start_task(0, "OK", NULL, v);
        return;
    }
    if (result < 0) {
        fail_call(v, result, err, "starting the VM");
        return;
    }
    struct al_error *e = NULL;
    if (!upid || pve_task_wait(v->pb->api, upid, 0, on_start_task, v, &v->task, &e) < 0) {
        finish(v, VM_INFRA_ERROR, 0, "Proxmox: starting the VM: %s",
               e ? al_error_message(e) : "no task id in the reply");
        al_error_free(e);
    }
}

static void step_start(struct px_vm *v)
{
    v->start_sent = true;
    vm_call(v, "POST", "/status/start", NULL, PVE_IDEMPOTENT, 0, 0, false, on_start);
}

/* ------------------------------------------------------------ delivery */

static const char *const wfile_names[] = {"job", "secrets", "wd"};

static uint64_t wfile_size(const struct px_vm *v, enum write_file f)
{
    switch (f) {
    case W_JOB:
        return v->job.len;
    case W_SECRETS:
        return v->secrets.len;
    case W_WORKDIR:
        return v->wd_fd >= 0 ? v->wd_size : 0;
    default:
        return 0;
    }
}

static void step_exec(struct px_vm *v);

static void on_write(int result, const struct pve_reply *reply, const struct al_error *err,
                     void *data)
{
    struct px_vm *v = data;
    if (settle(v))
        return;
    if (result < 0 && strstr(reply->message, "guest agent is not running") &&
        (!v->agent_up || ++v->hiccups <= AGENT_HICCUPS)) {
        /* still booting: the first write doubles as the agent probe */
        v->agent_wait = v->agent_wait * 3 / 2;
        if (v->agent_wait > AGENT_POLL_MAX_MS)
            v->agent_wait = AGENT_POLL_MAX_MS;
        step_write(v);
        return;
    }
    if (result < 0) {
        fail_call(v, result, err, "writing the job into the guest");
        return;
    }
    if (!v->agent_up) {
        v->agent_up = true;
        phase(v, VM_PHASE_CONNECTED);
        if (v->finished || v->destroying)
            return;
    }
    v->wchunk++;
    step_write(v);
}

static void step_write(struct px_vm *v)
{
    /* the next chunk of the next file that has one */
    while (v->wfile < W_DONE && (uint64_t)v->wchunk * PVE_GUEST_CHUNK >= wfile_size(v, v->wfile)) {
        v->wfile++;
        v->wchunk = 0;
    }
    if (v->wfile == W_DONE) {
        step_exec(v);
        return;
    }
    uint64_t off = (uint64_t)v->wchunk * PVE_GUEST_CHUNK;
    uint64_t left = wfile_size(v, v->wfile) - off;
    size_t n = left < PVE_GUEST_CHUNK ? (size_t)left : PVE_GUEST_CHUNK;
    uint8_t wd_buf[PVE_GUEST_CHUNK];
    const void *src = NULL;
    if (v->wfile == W_JOB)
        src = v->job.data + off;
    else if (v->wfile == W_SECRETS)
        src = v->secrets.data + off;
    else {
        ssize_t got = pread(v->wd_fd, wd_buf, n, (off_t)off);
        if (got != (ssize_t)n) {
            finish(v, VM_INFRA_ERROR, 0, "reading the work directory archive: %s",
                   got < 0 ? strerror(errno) : "short read");
            return;
        }
        src = wd_buf;
    }
    struct al_buf b64 = AL_BUF_INIT;
    char file[128];
    snprintf(file, sizeof(file), "%s.%s.%03" PRIu32, PVE_GUEST_PREFIX, wfile_names[v->wfile],
             v->wchunk);
    struct pve_params p = {0};
    if (al_base64_encode(&b64, src, n) < 0 || al_buf_append(&b64, "", 0) < 0)
        p.error = -ENOMEM;
    pve_params_add(&p, "content", b64.data ? b64.data : "");
    pve_params_add_bool(&p, "encode", false);
    pve_params_add(&p, "file", file);
    if (b64.data)
        explicit_bzero(b64.data, b64.len);
    al_buf_free(&b64);
    explicit_bzero(wd_buf, n);
    vm_call(v, "POST", "/agent/file-write", &p, PVE_IDEMPOTENT, v->agent_up ? 0 : v->agent_wait, 0,
            true, on_write);
    pve_params_clear(&p);
}

/* ------------------------------------------------------------ run */

static void on_exec(int result, const struct pve_reply *reply, const struct al_error *err,
                    void *data)
{
    struct px_vm *v = data;
    if (settle(v))
        return;
    if (result < 0) {
        fail_call(v, result, err, "starting the job with agent/exec");
        return;
    }
    int64_t pid = 0;
    if (!pve_json_int(reply->data, "pid", &pid) || pid <= 0) {
        finish(v, VM_INFRA_ERROR, 0, "Proxmox: agent/exec returned no pid");
        return;
    }
    v->pid = pid;
    v->t_running = al_now_mono_ms();
    v->poll_ms = POLL_FAST_MS;
    phase(v, VM_PHASE_RUNNING);
    if (!v->finished && !v->destroying)
        pump(v);
}

static void step_exec(struct px_vm *v)
{
    struct pve_params p = {0};
    pve_params_add(&p, "command", "/bin/sh");
    for (char **a = v->cmd + 1; *a; a++)
        pve_params_add(&p, "command", *a);
    pve_params_add(&p, "input-data", pve_guest_runner());
    /* not idempotent: a second exec would run the job twice */
    vm_call(v, "POST", "/agent/exec", &p, 0, 0, 0, false, on_exec);
    pve_params_clear(&p);
}

static void complete(struct px_vm *v)
{
    const struct pve_guest_status *st = &v->st;
    v->result.artifact_bytes = v->art_off;
    if (st->missing[0])
        snprintf(v->result.artifact_error, sizeof(v->result.artifact_error), "missing: %.230s",
                 st->missing);
    else if (st->art_rc)
        snprintf(v->result.artifact_error, sizeof(v->result.artifact_error),
                 "tar exited %d in the guest", st->art_rc);
    if (st->timed_out)
        finish(v, VM_GUEST_TIMEOUT, 124, "the workload timed out in the guest");
    else
        finish(v, VM_EXITED, st->exit_code, "the workload exited with status %d", st->exit_code);
}

/* qemu-guest-agent restarts (upgrades, OOM) for a moment: ask again later. */
static bool agent_hiccup(struct px_vm *v, int result, const struct pve_reply *reply)
{
    if (result >= 0 || !strstr(reply->message, "guest agent is not running") ||
        ++v->hiccups > AGENT_HICCUPS)
        return false;
    v->tick = T_STATUS;
    v->poll_ms = AGENT_POLL_MAX_MS;
    pump(v);
    return true;
}

static void on_exec_status(int result, const struct pve_reply *reply, const struct al_error *err,
                           void *data)
{
    struct px_vm *v = data;
    if (settle(v))
        return;
    if (agent_hiccup(v, result, reply))
        return;
    if (result < 0) {
        fail_call(v, result, err, "following the job (agent/exec-status)");
        return;
    }
    bool exited = false;
    if (!pve_json_bool(reply->data, "exited", &exited)) {
        finish(v, VM_INFRA_ERROR, 0, "Proxmox: agent/exec-status without \"exited\"");
        return;
    }
    if (!exited) {
        v->tick = T_OUT;
        pump(v);
        return;
    }
    const char *out = pve_json_str(reply->data, "out-data");
    const char *errd = pve_json_str(reply->data, "err-data");
    int64_t code = -1;
    pve_json_int(reply->data, "exitcode", &code);
    if (pve_guest_status_parse(out ? out : "", out ? strlen(out) : 0, &v->st) < 0 ||
        !v->st.have_status) {
        char tail[200] = "";
        if (errd) {
            size_t n = strlen(errd);
            snprintf(tail, sizeof(tail), "%s", n > 150 ? errd + n - 150 : errd);
            for (char *p = tail; *p; p++) {
                if ((unsigned char)*p < 0x20)
                    *p = ' ';
            }
        }
        finish(v, VM_INFRA_ERROR, 0, "the job runner in the guest failed (exit %" PRId64 ")%s%s",
               code, tail[0] ? ": " : "", tail);
        return;
    }
    if (v->st.diag[0] && v->base.ev->diag)
        v->base.ev->diag(&v->base, v->st.diag, v->base.ev_data);
    if (v->finished || v->destroying)
        return;
    if (!v->st.ok) {
        finish(v, VM_INFRA_ERROR, 0, "the job could not start in the guest: %s",
               v->st.diag[0] ? v->st.diag : "no reason given");
        return;
    }
    v->exited = true;
    pump(v);
}

enum stream {
    S_OUT = 0,
    S_ERR,
    S_ART,
};

static uint64_t *stream_off(struct px_vm *v, enum stream s)
{
    return s == S_OUT ? &v->out_off : s == S_ERR ? &v->err_off : &v->art_off;
}

static void on_read(int result, const struct pve_reply *reply, const struct al_error *err,
                    void *data, enum stream s)
{
    struct px_vm *v = data;
    if (settle(v))
        return;
    size_t got = 0;
    bool more = false;
    if (result < 0 && strstr(reply->message, "No such file")) {
        /* the runner has not created it yet */
    } else if (!v->exited && agent_hiccup(v, result, reply)) {
        return;
    } else if (result < 0) {
        fail_call(v, result, err,
                  s == S_ART ? "reading the artifacts" : "reading the job's output");
        return;
    } else {
        const char *content = pve_json_str(reply->data, "content");
        struct al_buf raw = AL_BUF_INIT;
        if (!content || al_base64_decode(&raw, content, strlen(content)) < 0) {
            al_buf_free(&raw);
            finish(v, VM_INFRA_ERROR, 0, "Proxmox: agent/file-read returned no base64 content");
            return;
        }
        got = raw.len;
        *stream_off(v, s) += got;
        pve_json_bool(reply->data, "truncated", &more);
        if (got && s == S_ART && v->base.ev->artifact)
            v->base.ev->artifact(&v->base, (const uint8_t *)raw.data, got, v->base.ev_data);
        else if (got && s != S_ART && v->base.ev->output)
            v->base.ev->output(&v->base, s == S_OUT ? VM_STDOUT : VM_STDERR,
                               (const uint8_t *)raw.data, got, v->base.ev_data);
        al_buf_free(&raw);
        if (v->finished || v->destroying)
            return;
    }
    if (!v->exited) {
        if (got) {
            v->tick_output = true;
            if (got >= LOG_CHUNK || more) {
                pump(v); /* same stream again, at once */
                return;
            }
        }
        v->tick = s == S_OUT ? T_ERR : T_STATUS;
        if (v->tick == T_STATUS) {
            uint64_t cap = al_now_mono_ms() - v->t_running > POLL_SLOW_AFTER_MS ? POLL_SLOW_MS
                                                                                : POLL_MAX_MS;
            v->poll_ms = v->tick_output ? POLL_FAST_MS : v->poll_ms * 3 / 2;
            if (v->poll_ms > cap)
                v->poll_ms = cap;
            v->tick_output = false;
        }
    } else if (!got) {
        /* the runner reported more than the file holds: do not spin */
        v->stream_done[s] = true;
    }
    pump(v);
}

static void on_read_out(int result, const struct pve_reply *reply, const struct al_error *err,
                        void *data)
{
    on_read(result, reply, err, data, S_OUT);
}

static void on_read_err(int result, const struct pve_reply *reply, const struct al_error *err,
                        void *data)
{
    on_read(result, reply, err, data, S_ERR);
}

static void on_read_art(int result, const struct pve_reply *reply, const struct al_error *err,
                        void *data)
{
    on_read(result, reply, err, data, S_ART);
}

static void read_stream(struct px_vm *v, enum stream s, uint64_t count)
{
    static const char *const files[] = {PVE_GUEST_ROOT "/out", PVE_GUEST_ROOT "/err",
                                        PVE_GUEST_ROOT "/art/a.tar"};
    static const pve_cb cbs[] = {on_read_out, on_read_err, on_read_art};
    struct pve_params p = {0};
    pve_params_add(&p, "file", files[s]);
    pve_params_add_int(&p, "offset", (int64_t)*stream_off(v, s));
    pve_params_add_int(&p, "count", (int64_t)count);
    pve_params_add_bool(&p, "decode", false);
    size_t max_reply = (size_t)al_base64_encoded_len(count) + (64u << 10);
    vm_call(v, "GET", "/agent/file-read", &p, PVE_IDEMPOTENT, 0, max_reply, true, cbs[s]);
    pve_params_clear(&p);
}

static bool below(uint64_t off, uint64_t size, uint64_t cap)
{
    return off < size && (!cap || off < cap);
}

static uint64_t min2(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

/* The next step of a running or finished job. */
static void pump(struct px_vm *v)
{
    if (!v->exited) {
        uint64_t cap = v->log_cap ? v->log_cap : UINT64_MAX;
        switch (v->tick) {
        case T_STATUS: {
            struct pve_params p = {0};
            pve_params_add_int(&p, "pid", v->pid);
            vm_call(v, "GET", "/agent/exec-status", &p, PVE_IDEMPOTENT, v->poll_ms, 0, true,
                    on_exec_status);
            pve_params_clear(&p);
            return;
        }
        case T_OUT:
            if (v->out_off < cap) {
                read_stream(v, S_OUT, LOG_CHUNK);
                return;
            }
            v->tick = T_ERR;
            /* fall through */
        case T_ERR:
            if (v->err_off < cap) {
                read_stream(v, S_ERR, LOG_CHUNK);
                return;
            }
            v->tick = T_STATUS;
            pump(v);
            return;
        }
        return;
    }
    const struct pve_guest_status *st = &v->st;
    if (!v->stream_done[S_OUT] && below(v->out_off, st->out_bytes, v->log_cap))
        read_stream(v, S_OUT, min2(LOG_CHUNK, st->out_bytes - v->out_off));
    else if (!v->stream_done[S_ERR] && below(v->err_off, st->err_bytes, v->log_cap))
        read_stream(v, S_ERR, min2(LOG_CHUNK, st->err_bytes - v->err_off));
    else if (!v->stream_done[S_ART] && below(v->art_off, st->art_bytes, v->art_cap))
        read_stream(v, S_ART, min2(ART_CHUNK, st->art_bytes - v->art_off));
    else
        complete(v);
}

/* ------------------------------------------------------------ ops */

static int px_vm_name(struct backend *b, const char *job_id, int attempt, char *buf, size_t size)
{
    (void)b;
    int n = snprintf(buf, size, VM_PREFIX "%s-%d", job_id, attempt);
    return n < 0 || (size_t)n >= size || n > 63 ? -ENAMETOOLONG : 0;
}

static int px_launch(struct backend *b, const struct vm_request *req, const struct vm_events *ev,
                     void *ev_data, struct vm **ret_vm, struct al_error **err)
{
    struct px_backend *pb = b->priv;
    if (!al_name_is_valid(req->job_id))
        return al_error_set(err, EINVAL, "invalid job id \"%s\"", req->job_id);
    if (req->cpus < 1 || req->memory < (128u << 20))
        return al_error_set(err, EINVAL, "a VM needs at least 1 vCPU and 128 MiB");
    if (pb->broken)
        return al_error_set(err, EACCES, "backend %s: %s", b->name, pb->health);
    struct px_vm *v = calloc(1, sizeof(*v));
    if (!v)
        return al_error_set(err, ENOMEM, "allocating a VM");
    v->pb = pb;
    v->wd_fd = -1;
    v->base.backend = b;
    v->base.ev = ev;
    v->base.ev_data = ev_data;
    v->req = *req;
    v->t0 = al_now_mono_ms();
    v->log_cap = b->env.max_log_bytes;
    uint64_t ma = req->max_artifact_bytes;
    v->art_cap = ma ? ma + ma / 10 + (1u << 20) : 0;
    char name[64];
    int r;
    if (px_vm_name(b, req->job_id, req->attempt, name, sizeof(name)) < 0 ||
        !(v->base.name = strdup(name)) || !(v->cmd = pve_guest_command(req))) {
        r = al_error_set(err, ENOMEM, "allocating a VM");
        goto fail;
    }
    r = pve_guest_job_file(req, &v->job, err);
    if (r == 0)
        r = pve_guest_secrets_file(req, &v->secrets, err);
    if (r < 0)
        goto fail;
    if (v->secrets.len > (size_t)PVE_GUEST_CHUNK * 10) {
        r = al_error_set(err, E2BIG, "the job's secrets exceed %u bytes", PVE_GUEST_CHUNK * 10);
        goto fail;
    }
    if (req->workdir_tar) {
        v->wd_fd = open(req->workdir_tar, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        struct stat stb;
        if (v->wd_fd < 0 || fstat(v->wd_fd, &stb) < 0) {
            r = al_error_set_errno(err, errno, "opening %s", req->workdir_tar);
            goto fail;
        }
        v->wd_size = (uint64_t)stb.st_size;
        if (v->wd_size > (uint64_t)PVE_GUEST_CHUNK * PVE_GUEST_MAX_CHUNKS) {
            r = al_error_set(err, E2BIG,
                             "the work directory archive (%" PRIu64 " bytes) exceeds the %u "
                             "bytes the Proxmox backend copies through the guest agent",
                             v->wd_size, PVE_GUEST_CHUNK * PVE_GUEST_MAX_CHUNKS);
            goto fail;
        }
    }
    v->next = pb->vms;
    pb->vms = v;
    /* start from the loop: launch never reports events itself */
    r = pve_api_after(pb->api, 0, on_start_timer, v, &v->call);
    if (r < 0) {
        pb->vms = v->next;
        r = al_error_set(err, -r, "starting the launch");
        goto fail;
    }
    v->call_cancellable = true;
    *ret_vm = &v->base;
    return 0;
fail:
    v->pb = NULL;
    vm_free(v);
    return r;
}

static int px_cancel(struct vm *vm)
{
    struct px_vm *v = container_of(vm, struct px_vm, base);
    /* the VM is stopped hard by destroy; nothing in the guest survives */
    finish(v, VM_CANCELED, 130, "canceled");
    return 0;
}

static void px_destroy(struct vm *vm, backend_done_cb done, void *data)
{
    struct px_vm *v = container_of(vm, struct px_vm, base);
    if (v->destroying)
        return;
    v->destroying = true;
    v->finished = true; /* no events after destroy */
    v->destroy_done = done;
    v->destroy_data = data;
    if (v->waiting) {
        waiters_remove(v);
        teardown_start(v);
        return;
    }
    if (v->call) {
        if (v->call_cancellable)
            pve_call_cancel(v->call); /* its callback sees destroying */
        return;
    }
    if (v->task)
        return; /* a task we must let end; its callback continues */
    teardown_start(v);
}

static void px_capacity(struct backend *b, struct backend_capacity *ret)
{
    struct px_backend *pb = b->priv;
    struct backend_capacity c = {
            .max_vms = pb->max_vms,
            .vcpus = (int)pb->cap_vcpus,
            .memory = pb->cap_memory,
            .healthy = pb->healthy,
            .broken = pb->broken,
    };
    for (struct px_vm *v = pb->vms; v; v = v->next) {
        c.used_vms++;
        c.used_vcpus += v->req.cpus;
        c.used_memory += v->req.memory;
    }
    if (!c.healthy)
        snprintf(c.reason, sizeof(c.reason), "%.159s", pb->health);
    *ret = c;
}

/* ------------------------------------------------------------ health */

static void probe_schedule(struct px_backend *pb, uint64_t delay);

static void on_probe(int result, const struct pve_reply *reply, const struct al_error *err,
                     void *data)
{
    struct px_backend *pb = data;
    pb->probe = NULL;
    if (result == -ECANCELED || pb->closing)
        return;
    if (result < 0) {
        char msg[200];
        snprintf(msg, sizeof(msg), "%s", al_error_message(err));
        set_health(pb, result, msg);
        /* maybe the operator fixed the token file meanwhile */
        struct al_error *rerr = NULL;
        if (pb->broken && pve_api_reload_credentials(pb->api, &rerr) < 0)
            al_error_free(rerr);
        probe_schedule(pb, pb->broken ? PROBE_INTERVAL_MS : PROBE_INTERVAL_MS / 3);
        return;
    }
    set_health(pb, 0, NULL);
    /* capacity from the configured nodes unless the config sets it */
    int64_t cpus = 0;
    uint64_t mem = 0;
    yajl_val list = reply->data;
    for (size_t i = 0; list && YAJL_IS_ARRAY(list) && i < list->u.array.len; i++) {
        yajl_val it = list->u.array.values[i];
        const char *name = pve_json_str(it, "node");
        int64_t mc = 0, mm = 0;
        if (!name || !node_wanted(pb, name))
            continue;
        if (pve_json_int(it, "maxcpu", &mc) && mc > 0)
            cpus += mc;
        if (pve_json_int(it, "maxmem", &mm) && mm > 0)
            mem += (uint64_t)mm;
    }
    if (!pb->b->cfg->vcpus && cpus > 0)
        pb->cap_vcpus = cpus > 100000 ? 100000 : cpus;
    if (!pb->b->cfg->memory && mem > 0)
        pb->cap_memory = mem;
    probe_schedule(pb, PROBE_INTERVAL_MS);
}

static void probe_schedule(struct px_backend *pb, uint64_t delay)
{
    struct pve_request req = {
            .method = "GET",
            .path = "/nodes",
            .flags = PVE_IDEMPOTENT,
            .delay_ms = delay,
    };
    struct al_error *err = NULL;
    if (pve_api_call(pb->api, &req, on_probe, pb, &pb->probe, &err) < 0)
        al_error_free(err);
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
        note_failure(pb, result, err);
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

static int list_resources(struct px_backend *pb, pve_cb cb, void *data)
{
    struct pve_params p = {0};
    pve_params_add(&p, "type", "vm");
    struct pve_request req = {
            .method = "GET",
            .path = "/cluster/resources",
            .params = &p,
            .flags = PVE_IDEMPOTENT,
            .max_reply = 16u << 20,
    };
    struct al_error *err = NULL;
    int r = pve_api_call(pb->api, &req, cb, data, NULL, &err);
    pve_params_clear(&p);
    al_error_free(err);
    return r;
}

static int px_list_owned(struct backend *b, backend_list_cb cb, void *data)
{
    struct px_backend *pb = b->priv;
    struct list_op *op = calloc(1, sizeof(*op));
    if (!op)
        return -ENOMEM;
    *op = (struct list_op){.pb = pb, .cb = cb, .data = data};
    int r = list_resources(pb, on_list, op);
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
        if (!name || !streq(name, op->name) || tmpl == 1 || !node || !node_name_ok(node) ||
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

static int px_destroy_owned(struct backend *b, const char *name, backend_done_cb done, void *data)
{
    struct px_backend *pb = b->priv;
    char job[128];
    int attempt;
    if (!parse_vm_name(name, job, sizeof(job), &attempt) || strlen(name) >= 64)
        return -EINVAL;
    for (struct px_vm *v = pb->vms; v; v = v->next) {
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
    int r = list_resources(pb, on_destroy_lookup, op);
    if (r < 0)
        free(op);
    return r;
}

/* ------------------------------------------------------------ open, close */

static char **split_nodes(const char *s)
{
    if (!s || !*s)
        return NULL;
    size_t n = 1;
    for (const char *p = s; *p; p++)
        n += *p == ',';
    char **v = calloc(n + 1, sizeof(char *));
    _cleanup_free_ char *copy = strdup(s);
    if (!v || !copy) {
        free(v);
        return NULL;
    }
    size_t k = 0;
    char *save = NULL;
    for (char *t = strtok_r(copy, ", ", &save); t; t = strtok_r(NULL, ", ", &save)) {
        if (!(v[k++] = strdup(t))) {
            strv_free(v);
            return NULL;
        }
    }
    return v;
}

static int px_open(struct backend *b, struct al_error **err)
{
    const struct backend_settings *cfg = b->cfg;
    struct px_backend *pb = calloc(1, sizeof(*pb));
    if (!pb)
        return al_error_set(err, ENOMEM, "allocating the Proxmox backend");
    pb->b = b;
    pb->healthy = true; /* until the first probe says otherwise */
    pb->max_vms = cfg->max_vms > 0 ? cfg->max_vms : DEFAULT_MAX_VMS;
    /* before the first probe: room for anything; the probe fills in the
     * cluster's numbers */
    pb->cap_vcpus = cfg->vcpus > 0 ? cfg->vcpus : 4096;
    pb->cap_memory = cfg->memory > 0 ? cfg->memory : (uint64_t)1 << 50;
    int r = 0;
    if (*cfg->proxmox.node) {
        pb->nodes_cfg = split_nodes(cfg->proxmox.node);
        if (!pb->nodes_cfg)
            r = al_error_set(err, ENOMEM, "out of memory");
        for (char **n = pb->nodes_cfg; r == 0 && *n; n++) {
            if (!node_name_ok(*n))
                r = al_error_set(err, EINVAL, "node: \"%s\" is not a node name", *n);
        }
    }
    if (r == 0) {
        struct pve_api_config ac = {
                .url = cfg->proxmox.url,
                .token_file = *cfg->proxmox.token_file ? cfg->proxmox.token_file : NULL,
                .user = cfg->proxmox.user,
                .password_file = cfg->proxmox.password_file,
                .ca_file = cfg->proxmox.ca_file,
                .fingerprint = cfg->proxmox.fingerprint,
        };
        r = pve_api_new(b->env.loop, b->env.curl, &ac, &pb->api, err);
    }
    if (r < 0) {
        strv_free(pb->nodes_cfg);
        free(pb);
        return r;
    }
    uv_timer_init(b->env.loop, &pb->defer);
    pb->defer.data = pb;
    b->priv = pb;
    probe_schedule(pb, 0);
    return 0;
}

static void on_api_closed(void *data)
{
    struct px_backend *pb = data;
    if (--pb->closes_pending > 0)
        return;
    void (*done)(void *) = pb->close_done;
    void *ddata = pb->close_data;
    strv_free(pb->nodes_cfg);
    free(pb);
    if (done)
        done(ddata);
}

static void on_defer_closed(uv_handle_t *h)
{
    on_api_closed(h->data);
}

static void px_close(struct backend *b, void (*done)(void *data), void *data)
{
    struct px_backend *pb = b->priv;
    if (!pb) {
        if (done)
            done(data);
        return;
    }
    b->priv = NULL;
    if (pb->vms)
        log_warn(NULL, "backend %s closed with VMs still alive", b->name);
    pb->closing = true;
    pb->close_done = done;
    pb->close_data = data;
    pb->closes_pending = 2;
    on_defer(&pb->defer); /* ends still owed */
    uv_close((uv_handle_t *)&pb->defer, on_defer_closed);
    pve_api_close(pb->api, on_api_closed, pb);
}

const struct backend_ops proxmox_backend_ops = {
        .type = "proxmox",
        .open = px_open,
        .close = px_close,
        .vm_name = px_vm_name,
        .capacity = px_capacity,
        .launch = px_launch,
        .cancel = px_cancel,
        .destroy = px_destroy,
        .list_owned = px_list_owned,
        .destroy_owned = px_destroy_owned,
};
