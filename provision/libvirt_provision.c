/* The libvirt backend's provisioning: the overlay volume, the seed, the
 * domain, and batched libguestfs injection. Blocking libvirt calls run on
 * the thread pool. */
#include "provision/libvirt_priv.h"
#include "provision/libvirt_upload.h"

/* -------------------------------------------------------------- workers */

int lv_ensure_pool(struct lv_backend *lb, struct al_error **err)
{
    /* remote: the pool's path is the host's, which builds it */
    return libvirt_pool_ensure(lb->conn, lb->pool_name, lb->pool_dir, !lb->remote, err);
}

/* The golden disk the overlay is backed by: its volume on a remote host. */
static const char *image_disk(const struct lv_vm *v)
{
    return v->host_disk ? v->host_disk : v->image->disk;
}

/* Creates v's overlay volume on backing (the image, or a snapshot's base). */
static int create_overlay(struct lv_vm *v, const char *backing, struct al_error **err)
{
    struct lv_backend *lb = v->lb;
    virStoragePoolPtr pool = virStoragePoolLookupByName(lb->conn, lb->pool_name);
    if (!pool)
        return al_error_set(err, EIO, "storage pool %s: %s", lb->pool_name, lv_libvirt_msg());
    uint64_t cap = v->image->virtual_size;
    if (v->req.disk_bytes > cap)
        cap = v->req.disk_bytes;
    _cleanup_free_ char *vol_xml = NULL;
    int r = volume_xml_build(v->vol_name, backing, cap, &vol_xml, err);
    if (r < 0) {
        virStoragePoolFree(pool);
        return r;
    }
    virStorageVolPtr vol = virStorageVolCreateXML(pool, vol_xml, 0);
    virStoragePoolFree(pool);
    if (!vol)
        return al_error_set(err, EIO, "creating the overlay %s: %s", v->vol_name, lv_libvirt_msg());
    v->vol_path = virStorageVolGetPath(vol);
    virStorageVolFree(vol);
    if (!v->vol_path)
        return al_error_set(err, EIO, "overlay path: %s", lv_libvirt_msg());
    return 0;
}

static int build_domain_xml(struct lv_vm *v, struct al_error **err)
{
    struct lv_backend *lb = v->lb;
    struct domain_params dp = {
            .name = v->base.name,
            .domain_type = v->accel == ACCEL_KIND_KVM ? "kvm" : "qemu",
            .emulator = *lb->b->cfg->libvirt.emulator ? lb->b->cfg->libvirt.emulator : NULL,
            .vcpus = v->req.cpus,
            .memory = v->req.memory,
            /* remote: the volumes of the host's pool */
            .kernel = v->host_kernel ? v->host_kernel : v->image->kernel,
            .initrd = v->host_initrd ? v->host_initrd : v->image->initrd,
            .cmdline = v->cmdline,
            .disk_path = v->vol_path,
            .disk_format = "qcow2",
            .seed_path = v->inject == INJECT_GUESTFS ? NULL
                         : lb->remote                ? v->seed_vol_path
                                                     : v->seed_path,
            /* remote: libvirt's socket path and no virtlogd file on the host;
             * both are read as streams */
            .channel_path = lb->remote ? NULL : v->channel_path,
            .console_log = lb->remote ? NULL : v->console_log,
            .network = *lb->b->cfg->libvirt.network ? lb->b->cfg->libvirt.network : NULL,
            .gateway = lb->gateway,
            .gateways6 = lb->gateway6,
            .job_id = v->req.job_id,
            .attempt = v->req.attempt,
            .owner = lb->b->env.owner_id,
            .backend = lb->b->name,
            .image = v->image->name,
    };
    free(v->domain_xml);
    v->domain_xml = NULL;
    return domain_xml_build(&dp, &v->domain_xml, err);
}

int lv_provision_work(void *data, struct al_error **err)
{
    struct lv_vm *v = data;
    struct lv_backend *lb = v->lb;
    int r = al_mkdir_p(v->run_dir, 0711, err);
    if (r < 0)
        return r;
    /* the owner file lets gc attribute leftovers of a VM that never got a domain */
    _cleanup_free_ char *owner_path = al_path_join(v->run_dir, "owner");
    _cleanup_free_ char *owner_line = NULL;
    if (!owner_path || asprintf(&owner_line, "%s %s %d %s\n", lb->b->env.owner_id, v->req.job_id,
                                v->req.attempt, lb->b->name) < 0)
        return al_error_set(err, ENOMEM, "owner file");
    r = al_write_file_atomic(owner_path, owner_line, strlen(owner_line), 0644, err);
    if (r < 0)
        return r;

    uint64_t t_api = al_now_mono_us();
    r = lv_ensure_pool(lb, err);
    if (r < 0)
        return r;
    /* remote: nothing of this host's filesystem, also not the image */
    if (lb->remote) {
        r = lv_images_ensure(v, err);
        if (r < 0 || v->images_busy)
            return r; /* busy: lv_on_provisioned queues this again */
    }
    /* a restore's disk is an overlay on the snapshot's frozen base */
    r = create_overlay(v, v->restore && v->snap ? lv_snapshot_base(v->snap) : image_disk(v), err);
    if (r < 0)
        return r;
    /* read on the loop thread only after this work item completed */
    v->result.us_provision_api = al_now_mono_us() - t_api;

    /* guestfs injection comes after, batched on the loop (inject_queue) */
    if (v->inject != INJECT_GUESTFS) {
        r = seed_iso_write(v->seed_path, 0644, v->meta_data, v->user_data, NULL, err);
        if (r < 0)
            return al_error_wrap(err, "writing the seed ISO");
        if (lb->remote) {
            r = lv_seed_upload(v, err);
            if (r < 0)
                return r;
        }
    }
    if (v->restore)
        return 0; /* the XML is the saved one, edited when restoring */
    return build_domain_xml(v, err);
}

int lv_boot_instead(struct lv_vm *v, struct al_error **err)
{
    virStoragePoolPtr pool = virStoragePoolLookupByName(v->lb->conn, v->lb->pool_name);
    virStorageVolPtr vol = pool ? virStorageVolLookupByName(pool, v->vol_name) : NULL;
    if (vol) {
        virStorageVolDelete(vol, 0);
        virStorageVolFree(vol);
    }
    if (pool)
        virStoragePoolFree(pool);
    free(v->vol_path);
    v->vol_path = NULL;
    v->restore = false;
    int r = create_overlay(v, image_disk(v), err);
    return r < 0 ? r : build_domain_xml(v, err);
}

static int start_work(void *data, struct al_error **err)
{
    struct lv_vm *v = data;
    if (v->restore)
        return lv_snapshot_restore_work(v, err);
    /* remote: paused until the console stream is open, which would lose
     * what the kernel printed before (a pty drops output nobody reads) */
    bool remote = v->lb->remote;
    v->dom = virDomainCreateXML(v->lb->conn, v->domain_xml, remote ? VIR_DOMAIN_START_PAUSED : 0);
    if (!v->dom)
        return al_error_set(err, EIO, "starting the VM: %s", lv_libvirt_msg());
    if (!remote)
        return 0;
    int r = lv_open_streams(v, err);
    if (r == 0 && virDomainResume(v->dom) < 0)
        r = al_error_set(err, EIO, "resuming the VM: %s", lv_libvirt_msg());
    return r;
}

/* A worker of v's returned: false when v goes no further, because it is
 * being destroyed or because the work failed (v finished). Takes err. */
static bool worker_done(struct lv_vm *v, int result, struct al_error *err)
{
    v->worker_busy = false;
    if (v->destroying) {
        al_error_free(err);
        lv_destroy_continue(v);
        return false;
    }
    if (result < 0) {
        lv_finish(v, VM_INFRA_ERROR, 0, "%s", al_error_message(err));
        al_error_free(err);
        return false;
    }
    return true;
}

/* Another host's KVM (accel = auto, host_accel) that cannot start a guest
 * at all (QEMU aborts, e.g. "failed to set MSR"): this backend runs its VMs
 * under TCG from now on, and the job is retried once without using up an
 * attempt, as after the boot watchdog. */
static void host_kvm_start_failed(struct lv_vm *v, const char *msg)
{
    struct lv_backend *lb = v->lb;
    if (!lb->host_accel || v->restore || v->accel != ACCEL_KIND_KVM ||
        lb->b->cfg->libvirt.accel != ACCEL_AUTO)
        return;
    v->result.silent_boot = true;
    char reason[256];
    snprintf(reason, sizeof(reason), "a KVM guest could not start: %.200s", msg);
    lv_kvm_unusable(v, reason);
}

static void on_started(void *data, int result, struct al_error *err)
{
    struct lv_vm *v = data;
    if (result < 0 && !v->destroying)
        host_kvm_start_failed(v, al_error_message(err));
    if (!worker_done(v, result, err))
        return;
    v->t_started = al_now_mono_ms();
    lv_phase(v, VM_PHASE_BOOTING);
    lv_snapshot_fallen_back(v);
    if (v->finished || v->destroying)
        return;
    struct al_error *cerr = NULL;
    const struct backend_env *ac = &v->lb->b->env;
    int r;
    if (v->lb->remote) {
        r = lv_console_start(v, &cerr);
        if (r == 0) {
            r = channel_open_stream(ac->loop, v->chan_stream, (uint32_t)ac->channel_max_frame_bytes,
                                    &lv_channel_ops, v, &v->ch, &cerr);
            if (r == 0)
                v->chan_stream = NULL; /* the channel's now */
        }
    } else {
        r = channel_open(ac->loop, v->channel_path, CONNECT_TIMEOUT_MS,
                         (uint32_t)ac->channel_max_frame_bytes, &lv_channel_ops, v, &v->ch, &cerr);
    }
    if (r < 0) {
        lv_finish(v, VM_INFRA_ERROR, 0, "%s: %s",
                  v->lb->remote ? "streaming the guest's console and channel"
                                : "opening the channel",
                  al_error_message(cerr));
        al_error_free(cerr);
        return;
    }
    channel_set_rate_limit(v->ch, ac->channel_max_bytes_per_s,
                           (uint64_t)ac->channel_max_frames_per_s);
    v->last_frame_ms = al_now_mono_ms();
    uv_timer_start(&v->hb_timer, lv_on_heartbeat_check, 1000, 1000);
    if (v->restored)
        lv_snapshot_restored(v);
}

/* ------------------------------------------- batched guestfs injection */

struct inject_batch {
    struct lv_backend *lb;
    bool force_tcg;
    bool may_turn_down_kvm; /* accel = auto: a hung appliance means TCG */
    size_t n;
    struct lv_vm *vms[INJECT_BATCH_MAX];
    struct guestfs_inject_item items[INJECT_BATCH_MAX];
    int results[INJECT_BATCH_MAX];
    struct al_error *errs[INJECT_BATCH_MAX];
};

static void provisioned_continue(struct lv_vm *v);
static void inject_start(struct lv_backend *lb);
static void on_inject_window(uv_timer_t *t);

/* Worker thread: one appliance for the whole batch. When that fails, each
 * overlay is tried on its own, so one bad disk does not fail its neighbours. */
static int inject_batch_work(void *data, struct al_error **err)
{
    (void)err;
    struct inject_batch *ib = data;
    struct al_error *e = NULL;
    int r = guestfs_inject_seed(ib->items, ib->n, ib->force_tcg, &e);
    if (r == -ETIMEDOUT && !ib->force_tcg && ib->may_turn_down_kvm) {
        /* KVM runs the probe's kernel but hangs the appliance: TCG from now
         * on, for this batch too */
        if (accel_mark_kvm_unusable(ib->lb->b->env.run_dir, al_error_message(e)))
            log_warn(NULL, "backend %s: KVM is not usable (%s); VMs run under TCG from now on",
                     ib->lb->b->name, al_error_message(e));
        e = al_error_free(e);
        ib->force_tcg = true;
        r = guestfs_inject_seed(ib->items, ib->n, true, &e);
    }
    if (r == 0)
        return 0;
    if (ib->n == 1) {
        ib->results[0] = -EIO;
        ib->errs[0] = e;
        return 0;
    }
    al_error_free(e);
    for (size_t i = 0; i < ib->n; i++)
        ib->results[i] = guestfs_inject_seed(&ib->items[i], 1, ib->force_tcg, &ib->errs[i]);
    return 0;
}

static void inject_batch_done(void *data, int result, struct al_error *err)
{
    struct inject_batch *ib = data;
    struct lv_backend *lb = ib->lb;
    lb->inject_running = false;
    for (size_t i = 0; i < ib->n; i++) {
        struct lv_vm *v = ib->vms[i];
        v->worker_busy = false;
        v->injected = true;
        if (v->destroying) {
            lv_destroy_continue(v);
        } else if (result < 0 || ib->results[i] < 0) {
            const struct al_error *e = result < 0 ? err : ib->errs[i];
            lv_finish(v, VM_INFRA_ERROR, 0, "injecting cloud-init data with libguestfs: %s",
                      e ? al_error_message(e) : "failed");
        } else {
            provisioned_continue(v);
        }
        al_error_free(ib->errs[i]);
    }
    al_error_free(err);
    free(ib);
    inject_start(lb);
}

/* Takes up to INJECT_BATCH_MAX waiting overlays into one batch. */
static void inject_start(struct lv_backend *lb)
{
    if (lb->inject_running || al_list_empty(&lb->inject_queue))
        return;
    struct inject_batch *ib = calloc(1, sizeof(*ib));
    if (!ib) {
        /* try again after the window */
        if (lb->inject_timer)
            uv_timer_start(lb->inject_timer, on_inject_window, INJECT_WINDOW_MS, 0);
        return;
    }
    ib->lb = lb;
    ib->force_tcg = lv_accel_now(lb) == ACCEL_KIND_TCG;
    ib->may_turn_down_kvm = lb->b->cfg->libvirt.accel == ACCEL_AUTO;
    while (!al_list_empty(&lb->inject_queue) && ib->n < INJECT_BATCH_MAX) {
        struct lv_vm *v = al_list_first_entry(&lb->inject_queue, struct lv_vm, inject_link);
        al_list_del(&v->inject_link);
        if (v->destroying) {
            v->worker_busy = false;
            lv_destroy_continue(v);
            continue;
        }
        ib->vms[ib->n] = v;
        ib->items[ib->n] = (struct guestfs_inject_item){
                .disk = v->vol_path,
                .format = "qcow2",
                .meta_data = v->meta_data,
                .user_data = v->user_data,
        };
        ib->n++;
    }
    if (!ib->n) {
        free(ib);
        return;
    }
    log_debug(NULL, "backend %s: one libguestfs appliance for %zu overlay%s", lb->b->name, ib->n,
              ib->n == 1 ? "" : "s");
    lb->inject_running = true;
    if (al_work_queue(lb->b->env.loop, inject_batch_work, inject_batch_done, ib, NULL) < 0) {
        struct al_error *e = NULL;
        al_error_set(&e, ENOMEM, "queueing the injection failed");
        inject_batch_done(ib, -ENOMEM, e);
    }
}

static void on_inject_window(uv_timer_t *t)
{
    inject_start(t->data);
}

void lv_on_inject_timer_closed(uv_handle_t *h)
{
    free(h);
}

/* Queues v for the next shared appliance; v stays worker_busy until its
 * batch completes, so a destroy meanwhile waits for it. */
static void inject_queue(struct lv_vm *v)
{
    struct lv_backend *lb = v->lb;
    v->worker_busy = true;
    al_list_add_tail(&lb->inject_queue, &v->inject_link);
    if (lb->inject_running)
        return; /* the running batch's completion starts the next */
    if (!lb->inject_timer) {
        lb->inject_timer = malloc(sizeof(*lb->inject_timer));
        if (!lb->inject_timer) {
            inject_start(lb);
            return;
        }
        uv_timer_init(lb->b->env.loop, lb->inject_timer);
        lb->inject_timer->data = lb;
    }
    if (!uv_is_active((uv_handle_t *)lb->inject_timer))
        uv_timer_start(lb->inject_timer, on_inject_window, INJECT_WINDOW_MS, 0);
}

static void on_images_wait(uv_timer_t *t)
{
    struct lv_vm *v = t->data;
    v->images_wait = false;
    if (v->finished) {
        /* lost with its host meanwhile: the owner's destroy goes on */
        v->worker_busy = false;
        return;
    }
    if (al_work_queue(v->lb->b->env.loop, lv_provision_work, lv_on_provisioned, v, NULL) < 0) {
        v->worker_busy = false;
        lv_finish(v, VM_INFRA_ERROR, 0, "queueing provisioning failed");
    }
}

void lv_on_provisioned(void *data, int result, struct al_error *err)
{
    struct lv_vm *v = data;
    if (!worker_done(v, result, err))
        return;
    if (v->images_busy) {
        /* the heartbeat timer is idle until the VM starts; destroy stops
         * it and goes on (images_wait) */
        if (!v->images_told)
            log_info(v->req.job_id, "backend %s: waiting for another job's upload of image %s",
                     v->lb->b->name, v->image->name);
        v->images_busy = false;
        v->images_told = true;
        v->images_wait = true;
        v->worker_busy = true;
        uv_timer_start(&v->hb_timer, on_images_wait, IMAGES_WAIT_MS, 0);
        return;
    }
    if (v->inject == INJECT_GUESTFS && !v->injected) {
        inject_queue(v);
        return;
    }
    provisioned_continue(v);
}

static void provisioned_continue(struct lv_vm *v)
{
    lv_phase(v, VM_PHASE_PROVISIONED);
    if (v->destroying || v->finished)
        return;
    v->worker_busy = true;
    if (al_work_queue(v->lb->b->env.loop, start_work, on_started, v, NULL) < 0) {
        v->worker_busy = false;
        lv_finish(v, VM_INFRA_ERROR, 0, "queueing the VM start failed");
    }
}
