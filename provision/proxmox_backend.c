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
#include "provision/proxmox_priv.h"

/* ------------------------------------------------------------ helpers */

static uint64_t since_ms(const struct px_vm *v)
{
    uint64_t t = al_now_mono_ms() - v->t0;
    return t ? t : 1;
}

bool px_node_name_ok(const char *s)
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
void px_note_failure(struct px_backend *pb, int result, const struct al_error *err)
{
    if (result == -EACCES || result == -EPERM)
        set_health(pb, result, al_error_message(err));
}

void px_phase(struct px_vm *v, enum vm_phase p)
{
    vm_phase_reached(&v->base, &v->result, p, since_ms(v));
}

void px_finish(struct px_vm *v, enum vm_outcome outcome, int exit_code, const char *fmt, ...)
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
void px_fail_call(struct px_vm *v, int result, const struct al_error *err, const char *what)
{
    px_note_failure(v->pb, result, err);
    px_finish(v, VM_INFRA_ERROR, 0, "Proxmox: %s: %s", what, al_error_message(err));
}

/* Common head of every callback of a VM step: the call is over; a destroy
 * that came meanwhile takes over. */
bool px_settle(struct px_vm *v)
{
    v->call = NULL;
    v->call_cancellable = false;
    if (v->destroying) {
        px_teardown_start(v);
        return true;
    }
    return false;
}

int px_vm_call(struct px_vm *v, const char *method, const char *suffix,
               const struct pve_params *params, unsigned flags, uint64_t delay, size_t max_reply,
               bool cancellable, pve_cb cb)
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
        px_finish(v, VM_INFRA_ERROR, 0, "Proxmox: %s", al_error_message(err));
        al_error_free(err);
        return r;
    }
    v->call_cancellable = cancellable;
    return 0;
}

int px_list_resources(struct px_backend *pb, pve_cb cb, void *data, struct al_error **err)
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
    int r = pve_api_call(pb->api, &req, cb, data, NULL, err);
    pve_params_clear(&p);
    return r;
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
    al_list_init(&v->link);
    al_list_init(&v->wait_link);
    v->wd_fd = -1;
    v->base.backend = b;
    v->base.ev = ev;
    v->base.ev_data = ev_data;
    v->req = *req;
    px_template_of(b->cfg, req->image_name, v->tmpl_want, sizeof(v->tmpl_want));
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
    al_list_add(&pb->vms, &v->link);
    /* start from the loop: launch never reports events itself */
    r = pve_api_after(pb->api, 0, px_on_start_timer, v, &v->call);
    if (r < 0) {
        al_list_del(&v->link);
        r = al_error_set(err, -r, "starting the launch");
        goto fail;
    }
    v->call_cancellable = true;
    *ret_vm = &v->base;
    return 0;
fail:
    v->pb = NULL;
    px_vm_free(v);
    return r;
}

static int px_cancel(struct vm *vm)
{
    struct px_vm *v = container_of(vm, struct px_vm, base);
    /* the VM is stopped hard by destroy; nothing in the guest survives */
    px_finish(v, VM_CANCELED, 130, "canceled");
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
    if (al_list_linked(&v->wait_link)) {
        px_waiters_remove(v);
        px_teardown_start(v);
        return;
    }
    if (v->call) {
        if (v->call_cancellable)
            pve_call_cancel(v->call); /* its callback sees destroying */
        return;
    }
    if (v->task)
        return; /* a task we must let end; its callback continues */
    px_teardown_start(v);
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
    al_list_for_each(v, &pb->vms, struct px_vm, link) {
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
        if (!name || !px_node_wanted(pb, name))
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
    al_list_init(&pb->tmpl_waiters);
    al_list_init(&pb->vms);
    al_list_init(&pb->deferred);
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
            if (!px_node_name_ok(*n))
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
    /* the VMs left unlink from one another, never from the freed heads */
    al_list_del(&pb->vms);
    al_list_del(&pb->tmpl_waiters);
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
    if (!al_list_empty(&pb->vms))
        log_warn(NULL, "backend %s closed with VMs still alive", b->name);
    pb->closing = true;
    pb->close_done = done;
    pb->close_data = data;
    pb->closes_pending = 2;
    px_on_defer(&pb->defer); /* ends still owed */
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
