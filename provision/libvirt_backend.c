/* The libvirt backend: one transient domain per attempt, booted directly
 * from the image's kernel and initrd, its disk a qcow2 overlay on the golden
 * image created through the storage API, its per-job cloud-init data a
 * NoCloud seed ISO (or injected into the overlay with libguestfs), and its
 * workload driven over a virtio-serial channel (proto.h).
 *
 * libvirt calls that take longer than a few milliseconds (volume creation,
 * domain start and destroy, libguestfs) run on the thread pool; everything
 * else, including the channel and the events, runs on the loop thread.
 */
#include "provision/libvirt_priv.h"

static void quiet_libvirt_errors(void *data, virErrorPtr e)
{
    (void)data;
    (void)e;
}

/* ---------------------------------------------------------------- helpers */

static uint32_t fnv1a(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 16777619u;
    }
    return h;
}

struct lv_vm *lv_find_vm(struct lv_backend *lb, const char *name)
{
    al_list_for_each(v, &lb->vms, struct lv_vm, link) {
        if (streq(v->base.name, name))
            return v;
    }
    return NULL;
}

/* The decisive part of the serial console for errors about guests that
 * died: the kernel's panic line when there is one, then the last line. */
char *lv_console_tail(const struct lv_vm *v)
{
    if (!v->console_log)
        return NULL;
    FILE *f = fopen(v->console_log, "re");
    if (!f)
        return NULL;
    char buf[8 * CONSOLE_TAIL_BYTES + 1];
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    long from = size > (long)sizeof(buf) - 1 ? size - ((long)sizeof(buf) - 1) : 0;
    fseek(f, from, SEEK_SET);
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    for (char *p = buf; *p; p++) {
        if (*p == '\r' || ((unsigned char)*p < 0x20 && *p != '\n'))
            *p = ' ';
    }
    /* the last non-empty line */
    char *end = buf + n;
    while (end > buf && (end[-1] == '\n' || end[-1] == ' '))
        *--end = '\0';
    char *last = strrchr(buf, '\n');
    last = last ? last + 1 : buf;
    char *panic = strstr(buf, "Kernel panic");
    char *out = NULL;
    if (panic && panic < last) {
        char *eol = strchr(panic, '\n');
        int plen = eol ? (int)(eol - panic) : (int)strlen(panic);
        if (asprintf(&out, "%.*s ... %.300s", plen > 300 ? 300 : plen, panic, last) < 0)
            out = NULL;
    } else if (*last) {
        out = strndup(last, 400);
    }
    return out;
}

/* Records that the guest ran into limit l (once per VM). */
void lv_note_limit(struct lv_vm *v, enum al_limit l)
{
    if (v->result.limits & (1u << l))
        return;
    v->result.limits |= 1u << l;
    v->base.limits = v->result.limits;
    limits_hit(l);
}

/* The channel's rate limit slowed the guest down: say so once, and keep the
 * time it was held back for the result. */
void lv_note_throttling(struct lv_vm *v)
{
    uint64_t ms = 0;
    channel_throttle_stats(v->ch, &ms, NULL);
    v->result.throttled_ms = ms;
    if (!ms || (v->result.limits & (1u << AL_LIMIT_CHANNEL_RATE)))
        return;
    lv_note_limit(v, AL_LIMIT_CHANNEL_RATE);
    log_warn(v->req.job_id, "the guest sends faster than the channel allows; slowing it down");
}

void lv_finish(struct lv_vm *v, enum vm_outcome outcome, int exit_code, const char *fmt, ...)
{
    if (v->finished)
        return;
    v->finished = true;
    v->result.outcome = outcome;
    v->result.exit_code = exit_code;
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(v->result.reason, sizeof(v->result.reason), fmt, ap);
        va_end(ap);
    }
    if (!v->result.t_exited)
        v->result.t_exited = lv_since_ms(v);
    if (v->hb_timer_open)
        uv_timer_stop(&v->hb_timer);
    if (v->ch) {
        lv_note_throttling(v);
        channel_close(v->ch);
        v->ch = NULL;
    }
    /* a start worker may be opening them still: its completion goes on to
     * the teardown, which stops them */
    if (!v->worker_busy)
        lv_streams_stop(v);
    if (v->base.ev->finished)
        v->base.ev->finished(&v->base, &v->result, v->base.ev_data);
}

void lv_phase(struct lv_vm *v, enum vm_phase p)
{
    vm_phase_reached(&v->base, &v->result, p, lv_since_ms(v));
}

/* ------------------------------------------------------------------ ops */

static void lv_destroy(struct vm *vm, backend_done_cb done, void *data)
{
    struct lv_vm *v = container_of(vm, struct lv_vm, base);
    if (v->destroying)
        return;
    v->destroying = true;
    v->destroy_done = done;
    v->destroy_data = data;
    /* no events after destroy: mark finished without telling anyone */
    v->finished = true;
    if (v->ch) {
        channel_close(v->ch);
        v->ch = NULL;
    }
    uv_timer_stop(&v->hb_timer);
    if (v->images_wait) {
        /* no worker: the timer that would queue one again is stopped */
        v->images_wait = false;
        v->worker_busy = false;
    }
    if (v->worker_busy)
        return; /* the worker's completion continues the teardown */
    lv_destroy_continue(v);
}

static int lv_assign(struct vm *vm, const struct vm_request *req, const struct vm_events *ev,
                     void *ev_data, struct al_error **err)
{
    struct lv_vm *v = container_of(vm, struct lv_vm, base);
    if (!v->req.warm || v->assigned || !v->hello || v->finished || v->destroying || !v->ch)
        return al_error_set(err, EBUSY, "VM %s is not a ready warm VM", v->base.name);
    struct al_tlv_buf job = {0};
    int r = guest_job_encode(req, &job, err);
    if (r < 0)
        return r;
    al_tlv_buf_free(&v->job);
    v->job = job;
    v->req = *req;
    v->req.warm = true;      /* still the VM's kind: it boots no job from cloud-init */
    v->req.image = v->image; /* booted from it; the job's request need not name it */
    v->assigned = true;
    v->base.ev = ev;
    v->base.ev_data = ev_data;
    v->t0 = al_now_mono_ms();
    v->result = (struct vm_result){0};
    /* the new owner sees the phases it missed, in order, at once */
    lv_phase(v, VM_PHASE_PROVISIONED);
    lv_phase(v, VM_PHASE_BOOTING);
    lv_phase(v, VM_PHASE_CONNECTED);
    if (!v->finished && !v->destroying)
        lv_deliver(v, false);
    return 0;
}

static int lv_cancel(struct vm *vm)
{
    struct lv_vm *v = container_of(vm, struct lv_vm, base);
    if (v->finished)
        return 0;
    if (v->ch && v->hello && channel_send(v->ch, AL_FRAME_CANCEL, NULL, 0) == 0)
        return 0; /* the guest answers with EXIT reason=canceled */
    lv_finish(v, VM_CANCELED, 130, "canceled before the workload started");
    return 0;
}

static int lv_vm_name(struct backend *b, const char *job_id, int attempt, char *buf, size_t size)
{
    (void)b;
    int n = snprintf(buf, size, AL_DOMAIN_PREFIX "%s-%d", job_id, attempt);
    return n < 0 || (size_t)n >= size ? -ENAMETOOLONG : 0;
}

int lv_launch_vm(struct backend *b, const struct vm_request *req, const struct vm_events *ev,
                 void *ev_data, bool snap_maker, struct vm **ret_vm, struct al_error **err)
{
    struct lv_backend *lb = b->priv;
    if (!al_name_is_valid(req->job_id))
        return al_error_set(err, EINVAL, "invalid job id \"%s\"", req->job_id);
    if (req->cpus < 1 || req->memory < (128u << 20))
        return al_error_set(err, EINVAL, "a VM needs at least 1 vCPU and 128 MiB");

    struct lv_vm *v = calloc(1, sizeof(*v));
    if (!v)
        return al_error_set(err, ENOMEM, "allocating a VM");
    v->lb = lb;
    al_list_init(&v->link);
    al_list_init(&v->inject_link);
    v->base.backend = b;
    v->base.ev = ev;
    v->base.ev_data = ev_data;
    v->req = *req;
    v->inject = req->inject >= 0 ? req->inject : b->cfg->libvirt.inject;
    /* libguestfs needs the overlay as a file here; the same cloud-init
     * data reaches the guest on the seed (the backend's own setting is
     * refused at open) */
    if (lb->remote && v->inject == INJECT_GUESTFS)
        v->inject = INJECT_SEED;
    v->snap_fb = -1;
    v->snap_maker = snap_maker;
    v->t0 = al_now_mono_ms();
    v->accel = lv_accel_now(lb);
    snprintf(v->result.accel, sizeof(v->result.accel), "%s", accel_kind_name(v->accel));
    uv_timer_init(b->env.loop, &v->hb_timer);
    v->hb_timer.data = v;
    v->hb_timer_open = true;
    _cleanup_free_ char *hostname = NULL;
    int r;

    if (!req->image) {
        r = al_error_set(err, EINVAL, "no image for job %s", req->job_id);
        goto fail;
    }
    if (!(v->image = vm_image_dup(req->image))) {
        r = al_error_set(err, ENOMEM, "allocating a VM");
        goto fail;
    }
    v->req.image = v->image;
    /* a restored VM keeps the name its slot's state was saved under */
    lv_snapshot_choose(v);
    char name[160];
    if (v->restore)
        snprintf(name, sizeof(name), "%s", lv_snapshot_domain(v->snap));
    if ((!v->restore && lv_vm_name(b, req->job_id, req->attempt, name, sizeof(name)) < 0) ||
        !(v->base.name = strdup(name)) || asprintf(&v->vol_name, "%s.qcow2", v->base.name) < 0 ||
        !(v->run_dir = al_path_join(lb->vms_dir, v->base.name)) ||
        !(v->channel_path = al_path_join(v->run_dir, "job.sock")) ||
        !(v->seed_path = al_path_join(v->run_dir, "seed.iso")) ||
        !(v->console_log = al_path_join(v->run_dir, "console.log")) ||
        (lb->remote && asprintf(&v->seed_vol_name, "%s" AL_SEED_VOL_SUFFIX, v->base.name) < 0)) {
        r = al_error_set(err, ENOMEM, "allocating a VM");
        goto fail;
    }
    if (!lb->remote && strlen(v->channel_path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        r = al_error_set(err, ENAMETOOLONG,
                         "the channel socket path %s is too long for a unix socket; use a "
                         "shorter run_dir",
                         v->channel_path);
        goto fail;
    }
    if (!req->warm) {
        r = guest_job_encode(req, &v->job, err);
        if (r < 0)
            goto fail;
    }
    /* a warm VM's helper is started by agentlab-guest.service, which runs
     * only with agentlab.warm=1 on the kernel command line */
    /* a snapshot's guest zeroes the pages it frees: QEMU saves a zero page
     * as a flag, so the state holds the memory in use, not all the memory
     * the boot ever touched (the decompressed initrd, the boot's page
     * cache); every restore reads and loads less */
    if (asprintf(&v->cmdline, "%s%s%s", v->image->cmdline ? v->image->cmdline : "",
                 req->warm ? " agentlab.warm=1" : "", snap_maker ? " init_on_free=1" : "") < 0) {
        v->cmdline = NULL;
        r = al_error_set(err, ENOMEM, "kernel command line");
        goto fail;
    }
    hostname = lv_make_hostname(req->job_id);
    struct cloudinit_job cj = {
            .instance_id = req->job_id,
            .hostname = hostname,
            .job_blob = req->warm ? NULL : v->job.data,
            .job_blob_len = req->warm ? 0 : v->job.len,
    };
    r = cloudinit_render(&cj, &v->meta_data, &v->user_data, err);
    if (r < 0)
        goto fail;

    al_list_add(&lb->vms, &v->link);
    v->worker_busy = true;
    r = al_work_queue(b->env.loop, lv_provision_work, lv_on_provisioned, v, NULL);
    if (r < 0) {
        al_list_del(&v->link);
        v->worker_busy = false;
        r = al_error_set(err, -r, "queueing provisioning");
        goto fail;
    }
    *ret_vm = &v->base;
    return 0;
fail:
    uv_close((uv_handle_t *)&v->hb_timer, lv_on_hb_timer_closed);
    return r;
}

static int lv_launch(struct backend *b, const struct vm_request *req, const struct vm_events *ev,
                     void *ev_data, struct vm **ret_vm, struct al_error **err)
{
    return lv_launch_vm(b, req, ev, ev_data, false, ret_vm, err);
}

static void lv_capacity(struct backend *b, struct backend_capacity *ret)
{
    struct lv_backend *lb = b->priv;
    struct backend_capacity c = {
            .max_vms = lb->max_vms,
            .vcpus = lb->vcpus,
            .memory = lb->memory,
            .healthy = lv_ensure_conn(lb),
            .size_unknown = lb->host_unknown,
    };
    enum accel_kind k = lv_accel_now(lb);
    snprintf(c.accel, sizeof(c.accel), "%s", accel_kind_name(k));
    if (k != ACCEL_KIND_KVM)
        snprintf(c.accel_reason, sizeof(c.accel_reason), "%s", lb->accel.reason);
    al_list_for_each(v, &lb->vms, struct lv_vm, link) {
        c.used_vms++;
        c.used_vcpus += v->req.cpus;
        c.used_memory += v->req.memory;
    }
    if (!c.healthy) {
        if (lb->conn_error[0])
            snprintf(c.reason, sizeof(c.reason), "libvirt connection down: %.130s", lb->conn_error);
        else
            snprintf(c.reason, sizeof(c.reason), "the libvirt connection to %.100s is down",
                     b->cfg->libvirt.uri);
    }
    *ret = c;
}

static void on_lifecycle_event(virConnectPtr conn, virDomainPtr dom, int event, int detail,
                               void *data)
{
    (void)conn;
    struct lv_backend *lb = data;
    struct lv_vm *v = lv_find_vm(lb, virDomainGetName(dom));
    if (!v || v->finished || v->snap_saving)
        return;
    if (event == VIR_DOMAIN_EVENT_STOPPED || event == VIR_DOMAIN_EVENT_CRASHED) {
        static const char *const stopped[] = {"shut down", "destroyed", "crashed", "migrated",
                                              "saved",     "failed",    "snapshot"};
        const char *what = event == VIR_DOMAIN_EVENT_CRASHED                       ? "crashed"
                           : (detail >= 0 && (size_t)detail < ARRAY_SIZE(stopped)) ? stopped[detail]
                                                                                   : "stopped";
        _cleanup_free_ char *tail = lv_console_tail(v);
        lv_finish(v, VM_INFRA_ERROR, 0, "the VM %s before reporting a result%s%s", what,
                  tail ? "; console: " : "", tail ? tail : "");
    }
}

static int lifecycle_cb(virConnectPtr conn, virDomainPtr dom, int event, int detail, void *data)
{
    on_lifecycle_event(conn, dom, event, detail, data);
    return 0;
}

/* The remote transport's channel and console were streams of the lost
 * connection: the jobs end as infrastructure errors (the engine retries
 * them on a fresh VM); their teardown, which needs the host, fails until
 * the sweep after the reconnect. */
static void finish_lost_vms(struct lv_backend *lb)
{
    for (;;) {
        struct lv_vm *victim = NULL;
        al_list_for_each(v, &lb->vms, struct lv_vm, link) {
            if (!v->finished && !v->destroying) {
                victim = v;
                break;
            }
        }
        if (!victim)
            return;
        lv_finish(victim, VM_INFRA_ERROR, 0, "lost the libvirt host of backend %s: %s", lb->b->name,
                  lb->conn_error);
    }
}

static void on_reconnect_timer(uv_timer_t *t)
{
    struct lv_backend *lb = t->data;
    if (lb->finish_lost) {
        lb->finish_lost = false;
        finish_lost_vms(lb);
    }
    if (lv_ensure_conn(lb))
        uv_timer_stop(t);
}

static void on_reconnect_timer_closed(uv_handle_t *h)
{
    free(h);
}

/* A host nobody asks about (no job queued) is retried by the timer, so
 * that it comes back, and its leftovers go, without a job. Its first run
 * is at once, outside libvirt's close callback. */
static void reconnect_timer_start(struct lv_backend *lb)
{
    if (!lb->reconnect_timer) {
        lb->reconnect_timer = malloc(sizeof(*lb->reconnect_timer));
        if (!lb->reconnect_timer)
            return; /* capacity() still reconnects; the streams end the VMs */
        uv_timer_init(lb->b->env.loop, lb->reconnect_timer);
        lb->reconnect_timer->data = lb;
    }
    uv_timer_start(lb->reconnect_timer, on_reconnect_timer, 0, RECONNECT_MS);
}

static void on_conn_closed(virConnectPtr conn, int reason, void *data)
{
    (void)conn;
    struct lv_backend *lb = data;
    static const char *const reasons[] = {"an error", "end of file", "a keepalive timeout",
                                          "a client request"};
    lb->conn_dead = true;
    snprintf(lb->conn_error, sizeof(lb->conn_error), "the connection to %.60s closed (%s)",
             lb->b->cfg->libvirt.uri,
             reason >= 0 && (size_t)reason < ARRAY_SIZE(reasons) ? reasons[reason] : "unknown");
    log_warn(NULL, "backend %s: %s; reconnecting", lb->b->name, lb->conn_error);
    /* VMs torn down meanwhile are left on the host */
    lb->host_lost = true;
    /* a local VM's channel socket and log file outlive libvirtd */
    lb->finish_lost = lb->remote;
    lb->last_retry = al_now_mono_ms(); /* a moment for the host */
    reconnect_timer_start(lb);
}

static void lv_disconnect(struct lv_backend *lb)
{
    if (!lb->conn)
        return;
    if (lb->lifecycle_id >= 0)
        virConnectDomainEventDeregisterAny(lb->conn, lb->lifecycle_id);
    lb->lifecycle_id = -1;
    virConnectUnregisterCloseCallback(lb->conn, on_conn_closed);
    virConnectClose(lb->conn);
    lb->conn = NULL;
}

static int lifecycle_cb(virConnectPtr conn, virDomainPtr dom, int event, int detail, void *data);

/* Subscribes conn (taken) to keepalives, domain events and its close, and
 * makes sure of the storage pool; then it is lb's connection. Loop thread. */
static int lv_connect_setup(struct lv_backend *lb, virConnectPtr conn, struct al_error **err)
{
    const char *uri = lb->b->cfg->libvirt.uri;
    lb->conn = conn;
    /* keepalives need the event loop, which runs on our uv loop */
    virConnectSetKeepAlive(lb->conn, 5, 3);
    virConnectRegisterCloseCallback(lb->conn, on_conn_closed, lb, NULL);
    lb->lifecycle_id =
            virConnectDomainEventRegisterAny(lb->conn, NULL, VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                             VIR_DOMAIN_EVENT_CALLBACK(lifecycle_cb), lb, NULL);
    int r = 0;
    if (lb->lifecycle_id < 0)
        r = al_error_set(err, EIO, "subscribing to domain events on %s: %s", uri, lv_libvirt_msg());
    if (r == 0)
        r = lv_ensure_pool(lb, err);
    if (r < 0) {
        lv_disconnect(lb);
        return r;
    }
    lb->conn_dead = false;
    lb->conn_error[0] = '\0';
    return 0;
}

/* Opens the connection with keepalives, domain events, a close callback and
 * the storage pool. Loop thread, at open, for a local URI only (its socket
 * answers or fails at once); a network URI connects like a reconnect. */
static int lv_connect(struct lv_backend *lb, struct al_error **err)
{
    const char *uri = lb->b->cfg->libvirt.uri;
    lb->last_retry = al_now_mono_ms();
    virConnectPtr conn = virConnectOpen(uri);
    if (!conn)
        return al_error_set(err, EIO, "connecting to %s: %s", uri, lv_libvirt_msg());
    return lv_connect_setup(lb, conn, err);
}

static int host_setup(struct lv_backend *lb, struct al_error **err);

/* A reconnect: virConnectOpen() on the thread pool, since a host that
 * drops packets holds it for the TCP connect timeout. */
struct reconnect {
    struct lv_backend *lb;
    char *uri;
    virConnectPtr conn;
};

static int reconnect_work(void *data, struct al_error **err)
{
    struct reconnect *rc = data;
    rc->conn = virConnectOpen(rc->uri);
    if (!rc->conn)
        return al_error_set(err, EIO, "connecting to %s: %s", rc->uri, lv_libvirt_msg());
    return 0;
}

static void reconnect_done(void *data, int result, struct al_error *err)
{
    struct reconnect *rc = data;
    struct lv_backend *lb = rc->lb;
    virConnectPtr conn = TAKE_PTR(rc->conn);
    free(rc->uri);
    free(rc);
    lb->reconnecting = false;
    if (lb->closing) {
        if (conn)
            virConnectClose(conn);
        al_error_free(err);
        lv_close_continue(lb);
        return;
    }
    bool first = lb->host_unknown;
    if (result == 0 && lv_connect_setup(lb, conn, &err) == 0) {
        if (first && host_setup(lb, &err) < 0) {
            /* e.g. accel = kvm and the host has none: tried again */
            lv_disconnect(lb);
        } else {
            log_info(NULL, "backend %s: %s to %s", lb->b->name, first ? "connected" : "reconnected",
                     lb->b->cfg->libvirt.uri);
            if (lb->reconnect_timer)
                uv_timer_stop(lb->reconnect_timer);
            /* what the host kept of the VMs whose jobs ended with the
             * connection, or whose teardown could not reach it; at the
             * first connection, what an earlier run of ours left there
             * (the engine's sweep at start could not reach the host) */
            if (lb->host_lost || first) {
                lb->host_lost = false;
                lv_host_sweep(lb);
            }
            return;
        }
    }
    snprintf(lb->conn_error, sizeof(lb->conn_error), "%.150s", al_error_message(err));
    if (first && !lb->host_unknown_said) {
        lb->host_unknown_said = true;
        log_warn(NULL, "backend %s: %s; retrying every %d ms", lb->b->name, lb->conn_error,
                 RECONNECT_MS);
    }
    al_error_free(err);
}

/* True while a worker may use lb->conn, which a reconnect would free. */
static bool conn_in_use(struct lv_backend *lb)
{
    if (lb->clones_running || lb->inject_running)
        return true;
    al_list_for_each(v, &lb->vms, struct lv_vm, link) {
        if (v->worker_busy)
            return true;
    }
    return false;
}

/* Whether the connection is up; when it is down, starts a reconnect in
 * the background, at most every RECONNECT_MS. */
bool lv_ensure_conn(struct lv_backend *lb)
{
    if (lb->conn && !lb->conn_dead)
        return true;
    /* calls on a closed connection fail at once: the workers end soon */
    uint64_t now = al_now_mono_ms();
    if (lb->reconnecting || lb->closing || now - lb->last_retry < RECONNECT_MS ||
        (lb->conn && conn_in_use(lb)))
        return false;
    lv_disconnect(lb);
    lb->last_retry = now;
    struct reconnect *rc = calloc(1, sizeof(*rc));
    if (rc) {
        rc->lb = lb;
        rc->uri = strdup(lb->b->cfg->libvirt.uri);
    }
    if (!rc || !rc->uri ||
        al_work_queue(lb->b->env.loop, reconnect_work, reconnect_done, rc, NULL) < 0) {
        if (rc)
            free(rc->uri);
        free(rc);
        return false; /* tried again after RECONNECT_MS */
    }
    lb->reconnecting = true;
    return false;
}

/* A NIC is opt-in: define the egress filter and learn the network's host
 * address, which the filter lets through for DHCP and DNS only. */
static int prepare_network(struct lv_backend *lb, struct al_error **err)
{
    const char *name = lb->b->cfg->libvirt.network;
    virNetworkPtr net = virNetworkLookupByName(lb->conn, name);
    if (!net)
        return al_error_set(err, ENOENT, "libvirt network \"%s\": %s", name, lv_libvirt_msg());
    _cleanup_free_ char *xml = virNetworkGetXMLDesc(net, 0);
    virNetworkFree(net);
    if (!xml)
        return al_error_set(err, EIO, "libvirt network \"%s\": %s", name, lv_libvirt_msg());
    struct network_gateways g = {0};
    if (network_gateways_parse(xml, &g, err) < 0)
        return al_error_wrap(err, "libvirt network \"%s\"", name);
    free(lb->gateway);
    strv_free(lb->gateway6);
    lb->gateway = TAKE_PTR(g.ipv4);
    lb->gateway6 = TAKE_PTR(g.ipv6);
    if (!lb->gateway)
        return al_error_set(err, EINVAL,
                            "libvirt network \"%s\" has no IPv4 address; the egress filter "
                            "needs the host side of the network",
                            name);
    virNWFilterPtr f = virNWFilterDefineXML(lb->conn, nwfilter_xml());
    if (!f)
        return al_error_set(err, EIO, "defining nwfilter " AL_NWFILTER_NAME ": %s",
                            lv_libvirt_msg());
    virNWFilterFree(f);
    return 0;
}

/* transport = auto: remote when the URI reaches its host over a network
 * (ssh, tls, tcp); a unix socket to a libvirtd is taken for this host's. */
static int choose_transport(struct lv_backend *lb, struct al_error **err)
{
    const struct libvirt_settings *ls = &lb->b->cfg->libvirt;
    lb->remote = ls->transport == LV_TRANSPORT_REMOTE ||
                 (ls->transport == LV_TRANSPORT_AUTO && libvirt_uri_is_remote(ls->uri));
    if (lb->remote && ls->inject == INJECT_GUESTFS)
        return al_error_set(err, EINVAL,
                            "backend %s: %s is a remote connection (transport = auto) and inject "
                            "= guestfs needs the overlay on this host; set inject = seed, or "
                            "transport = local if the host shares this one's filesystem",
                            lb->b->name, ls->uri);
    return 0;
}

/* The accelerator of another host (a network URI): KVM when that host's
 * libvirt offers KVM domains for its QEMU, else TCG with libvirt's reason.
 * It cannot be proven by booting a kernel there as the local probe does;
 * the boot watchdog turns KVM down for this backend alone when a guest
 * shows no sign of life (see boot_watchdog() in libvirt_channel.c). */
static int host_accel_decide(struct lv_backend *lb, struct al_error **err)
{
    struct accel_result *a = &lb->accel;
    const char *name = lb->b->name;
    memset(a, 0, sizeof(*a));
    if (lb->b->cfg->libvirt.accel == ACCEL_TCG) {
        a->kind = ACCEL_KIND_TCG;
        snprintf(a->reason, sizeof(a->reason), "accel = tcg in the configuration");
        return 0;
    }
    char *caps = virConnectGetDomainCapabilities(lb->conn, NULL, "x86_64", NULL, "kvm", 0);
    if (caps) {
        free(caps);
        a->kind = ACCEL_KIND_KVM;
        log_info(NULL, "backend %s: the host's libvirt offers KVM; VMs there run under KVM", name);
        return 0;
    }
    if (lb->b->cfg->libvirt.accel == ACCEL_KVM)
        return al_error_set(err, ENODEV, "backend %s: accel = kvm, but the host offers no KVM: %s",
                            name, lv_libvirt_msg());
    a->kind = ACCEL_KIND_TCG;
    snprintf(a->reason, sizeof(a->reason), "the host offers no KVM: %.200s", lv_libvirt_msg());
    log_warn(NULL, "backend %s: %s; VMs there run under TCG software emulation", name, a->reason);
    return 0;
}

/* Disconnects and frees the backend's private part. */
static void lv_backend_free(struct backend *b)
{
    struct lv_backend *lb = b->priv;
    lv_disconnect(lb);
    lv_hostinfo_release(lb);
    lv_snapshot_free_all(lb);
    lv_images_free(lb);
    pthread_mutex_destroy(&lb->img_lock);
    free(lb->cpu_model);
    free(lb->pool_name);
    free(lb->pool_dir);
    free(lb->vms_dir);
    free(lb->gateway);
    strv_free(lb->gateway6);
    free(lb);
    b->priv = NULL;
}

/* What needs the host once connected: the network and its egress filter,
 * the versions snapshots depend on, and for another machine its
 * accelerator and size. Loop thread (round trips to a host that answers). */
static int host_setup(struct lv_backend *lb, struct al_error **err)
{
    const struct backend_settings *cfg = lb->b->cfg;
    int r;
    if (*cfg->libvirt.network) {
        r = prepare_network(lb, err);
        if (r < 0)
            return r;
    }
    lv_snapshot_probe(lb);

    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    uint64_t host_mem = (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)sysconf(_SC_PAGESIZE);
    if (lb->host_accel) {
        r = host_accel_decide(lb, err);
        if (r < 0)
            return r;
        /* the defaults are that host's CPUs and 80% of its memory */
        virNodeInfo ni;
        if (virNodeGetInfo(lb->conn, &ni) == 0 && ni.cpus > 0 && ni.memory > 0) {
            cpus = (long)ni.cpus;
            host_mem = (uint64_t)ni.memory << 10;
        } else if (cfg->vcpus <= 0 || cfg->memory <= 0) {
            return al_error_set(err, EIO, "backend %s: reading the host's CPUs and memory: %s",
                                lb->b->name, lv_libvirt_msg());
        }
    }
    lb->vcpus = cfg->vcpus > 0 ? cfg->vcpus : (int)(cpus > 0 ? cpus : 1);
    lb->memory = cfg->memory > 0 ? cfg->memory : host_mem / 10u * 8u;
    lb->max_vms = cfg->max_vms > 0 ? cfg->max_vms : lb->vcpus;
    lb->host_unknown = false;
    return 0;
}

static int lv_open(struct backend *b, struct al_error **err)
{
    const struct backend_env *env = &b->env;
    struct lv_backend *lb = calloc(1, sizeof(*lb));
    if (!lb)
        return al_error_set(err, ENOMEM, "allocating the libvirt backend");
    lb->b = b;
    b->priv = lb;
    al_list_init(&lb->vms);
    al_list_init(&lb->inject_queue);
    al_list_init(&lb->snap_slots);
    lb->lifecycle_id = -1;
    pthread_mutex_init(&lb->img_lock, NULL);
    int r;
    virSetErrorFunc(NULL, quiet_libvirt_errors);

    if (*b->cfg->libvirt.storage_pool) {
        lb->pool_name = strdup(b->cfg->libvirt.storage_pool);
    } else if (asprintf(&lb->pool_name, "agentlab-%s-%08x", b->name, fnv1a(env->state_dir)) < 0) {
        lb->pool_name = NULL;
    }
    lb->vms_dir = al_path_join(env->run_dir, "vms");
    if (!lb->pool_name || !lb->vms_dir) {
        r = al_error_set(err, ENOMEM, "allocating the libvirt backend");
        goto fail;
    }
    r = al_mkdir_p(lb->vms_dir, 0711, err);
    if (r < 0)
        goto fail;

    /* this machine's KVM says nothing of another host's: that one is asked
     * once connected (host_accel_decide()) */
    lb->host_accel = libvirt_uri_is_remote(b->cfg->libvirt.uri);
    if (!lb->host_accel) {
        struct accel_probe_opts ao = {.mode = b->cfg->libvirt.accel, .cache_dir = env->run_dir};
        r = accel_probe(&ao, &lb->accel, err);
        if (r < 0)
            goto fail;
        /* said once per boot of the host: whoever probed first says it */
        if (lb->accel.kind == ACCEL_KIND_TCG && b->cfg->libvirt.accel == ACCEL_AUTO &&
            !lb->accel.from_cache)
            log_warn(NULL,
                     "backend %s: KVM is not usable (%s); VMs run under TCG software emulation",
                     b->name, lb->accel.reason);
    }

    /* before connecting: the pool is made by the host when it is remote */
    r = choose_transport(lb, err);
    if (r < 0)
        goto fail;
    /* another host that shares no files has no state dir of ours: the pool
     * goes where libvirt keeps its images there */
    if (lb->remote && libvirt_uri_is_remote(b->cfg->libvirt.uri)) {
        lb->pool_dir = al_path_join(REMOTE_POOL_ROOT, lb->pool_name);
    } else {
        /* a block of its own: the gotos below must not jump into its scope */
        _cleanup_free_ char *pools = al_path_join(env->state_dir, "pools");
        lb->pool_dir = pools ? al_path_join(pools, b->name) : NULL;
    }
    if (!lb->pool_dir) {
        r = al_error_set(err, ENOMEM, "allocating the libvirt backend");
        goto fail;
    }
    if (lb->host_accel) {
        /* another machine: connected in the background (host_setup() once
         * it answers); meanwhile the configured size, or one VM */
        lb->host_unknown = true;
        lb->accel.kind = ACCEL_KIND_TCG;
        snprintf(lb->accel.reason, sizeof(lb->accel.reason), "not known until the host answers");
        snprintf(lb->conn_error, sizeof(lb->conn_error), "connecting to %.120s",
                 b->cfg->libvirt.uri);
        lb->vcpus = b->cfg->vcpus > 0 ? b->cfg->vcpus : 1;
        lb->memory = b->cfg->memory > 0 ? b->cfg->memory : 0;
        lb->max_vms = b->cfg->max_vms > 0 ? b->cfg->max_vms : lb->vcpus;
        reconnect_timer_start(lb);
        return 0;
    }
    r = lv_connect(lb, err);
    if (r == 0)
        r = host_setup(lb, err);
    if (r < 0)
        goto fail;
    return 0;
fail:
    lv_backend_free(b);
    return r;
}

static bool has_makers(struct lv_backend *lb)
{
    if (lb->clones_running || lb->host_sweep_running || lb->reconnecting)
        return true;
    al_list_for_each(v, &lb->vms, struct lv_vm, link) {
        if (v->snap_maker)
            return true;
    }
    return false;
}

static void lv_close(struct backend *b, void (*done)(void *data), void *data);

static void lv_prepare(struct backend *b, const struct vm_request *req)
{
    struct lv_backend *lb = b->priv;
    if (lb && !lb->closing && lv_ensure_conn(lb))
        lv_snapshot_prepare(lb, req);
}

void lv_close_continue(struct lv_backend *lb)
{
    if (!lb->closing || has_makers(lb))
        return;
    lb->closing = false;
    lv_close(lb->b, lb->close_done, lb->close_data);
}

static void lv_close(struct backend *b, void (*done)(void *data), void *data)
{
    struct lv_backend *lb = b->priv;
    if (lb && has_makers(lb)) {
        /* they are the backend's own: gone before it closes */
        lb->closing = true;
        lb->close_done = done;
        lb->close_data = data;
        lv_snapshot_stop_makers(lb);
        return;
    }
    if (lb) {
        if (!al_list_empty(&lb->vms))
            log_warn(NULL, "backend %s closed with VMs still alive", b->name);
        /* the VMs left unlink from one another, never from the freed head */
        al_list_del(&lb->vms);
        if (lb->inject_timer)
            uv_close((uv_handle_t *)lb->inject_timer, lv_on_inject_timer_closed);
        if (lb->snap_timer)
            uv_close((uv_handle_t *)lb->snap_timer, lv_on_inject_timer_closed); /* frees */
        if (lb->reconnect_timer)
            uv_close((uv_handle_t *)lb->reconnect_timer, on_reconnect_timer_closed);
        lv_backend_free(b);
    }
    if (done)
        done(data);
}

const struct backend_ops libvirt_backend_ops = {
        .type = "libvirt",
        .caps = BACKEND_NEEDS_IMAGE,
        .open = lv_open,
        .close = lv_close,
        .vm_name = lv_vm_name,
        .capacity = lv_capacity,
        .launch = lv_launch,
        .assign = lv_assign,
        .cancel = lv_cancel,
        .destroy = lv_destroy,
        .list_owned = lv_list_owned,
        .destroy_owned = lv_destroy_owned,
        .prepare = lv_prepare,
        .host_info = lv_host_info,
};
