/* The libvirt backend's teardown: destroying a VM at any phase with all it
 * owns, and finding and removing owned leftovers after a restart. */
#include "provision/libvirt_priv.h"
#include "provision/libvirt_upload.h"

/* ------------------------------------------------------------ teardown */

struct teardown {
    virConnectPtr conn;
    char *pool_name;
    char *dom_name;
    virDomainPtr dom; /* may be NULL: look up by name */
    char *vol_name;
    char *seed_vol_name; /* the remote transport's seed volume, or NULL */
    char *run_dir;
    bool must_be_ours;
};

/* Frees what a teardown holds (not the struct, which is embedded). */
static void teardown_clear(struct teardown *t)
{
    if (t->dom)
        virDomainFree(t->dom);
    if (t->conn)
        virConnectClose(t->conn); /* drops the worker's reference */
    free(t->pool_name);
    free(t->dom_name);
    free(t->vol_name);
    free(t->seed_vol_name);
    free(t->run_dir);
    *t = (struct teardown){0};
}

static int teardown_work(void *data, struct al_error **err)
{
    struct teardown *t = data;
    int r = 0;
    if (!t->conn)
        return al_error_set(err, ENOTCONN,
                            "no connection to libvirtd; %s is left for the next sweep",
                            t->dom_name ? t->dom_name : "the VM");
    if (!t->dom && t->dom_name) {
        t->dom = virDomainLookupByName(t->conn, t->dom_name);
        /* a host that does not answer keeps the run dir's owner file, by
         * which the next sweep finds the VM */
        if (!t->dom && virGetLastErrorCode() != VIR_ERR_NO_DOMAIN)
            return al_error_set(err, ENOTCONN, "looking up %s: %s; it is left for the next sweep",
                                t->dom_name, lv_libvirt_msg());
    }
    if (t->dom && t->must_be_ours) {
        char *meta = virDomainGetMetadata(t->dom, VIR_DOMAIN_METADATA_ELEMENT, AL_XML_NS, 0);
        bool ours = meta != NULL;
        free(meta);
        if (!ours)
            return al_error_set(err, EPERM,
                                "domain %s carries no agentlab metadata; not touching it",
                                t->dom_name);
    }
    if (t->dom) {
        if (virDomainIsActive(t->dom) == 1 &&
            virDomainDestroyFlags(t->dom, VIR_DOMAIN_DESTROY_DEFAULT) < 0 &&
            virDomainIsActive(t->dom) == 1)
            r = al_error_set(err, EIO, "destroying %s: %s", t->dom_name, lv_libvirt_msg());
        /* a domain defined by someone by hand would survive destroy */
        if (virDomainIsPersistent(t->dom) == 1)
            virDomainUndefineFlags(t->dom, VIR_DOMAIN_UNDEFINE_NVRAM);
    }
    if (t->vol_name) {
        virStoragePoolPtr pool = virStoragePoolLookupByName(t->conn, t->pool_name);
        virStorageVolPtr vol = pool ? virStorageVolLookupByName(pool, t->vol_name) : NULL;
        if (!vol && pool) {
            /* created behind libvirt's back or pool not refreshed yet */
            virStoragePoolRefresh(pool, 0);
            vol = virStorageVolLookupByName(pool, t->vol_name);
        }
        if (vol) {
            if (virStorageVolDelete(vol, 0) < 0 && r == 0)
                r = al_error_set(err, EIO, "deleting volume %s: %s", t->vol_name, lv_libvirt_msg());
            virStorageVolFree(vol);
        }
        /* created through libvirt: known to the pool without a refresh */
        vol = pool && t->seed_vol_name ? virStorageVolLookupByName(pool, t->seed_vol_name) : NULL;
        if (vol) {
            if (virStorageVolDelete(vol, 0) < 0 && r == 0)
                r = al_error_set(err, EIO, "deleting volume %s: %s", t->seed_vol_name,
                                 lv_libvirt_msg());
            virStorageVolFree(vol);
        }
        if (pool)
            virStoragePoolFree(pool);
    }
    if (t->run_dir) {
        struct al_error *rerr = NULL;
        if (al_rm_rf(t->run_dir, &rerr) < 0 && r == 0)
            r = al_error_move(err, &rerr);
        al_error_free(rerr);
    }
    return r;
}

static void vm_unlink(struct lv_vm *v)
{
    lv_snapshot_release(v);
    if (!v->lb)
        return;
    al_list_del(&v->link);
    lv_snapshot_vm_left(v->lb);
    v->lb = NULL;
}

/* Frees the VM's memory; it no longer belongs to the backend (which may be
 * gone already). */
static void vm_free(struct lv_vm *v)
{
    lv_streams_stop(v);
    vm_unlink(v);
    free(v->image);
    free(v->base.name);
    free(v->run_dir);
    free(v->channel_path);
    free(v->seed_path);
    free(v->console_log);
    free(v->vol_name);
    free(v->vol_path);
    free(v->seed_vol_name);
    free(v->seed_vol_path);
    free(v->host_disk);
    free(v->host_kernel);
    free(v->host_initrd);
    free(v->meta_data);
    free(v->user_data);
    free(v->domain_xml);
    free(v->cmdline);
    free(v->restore_state);
    free(v->snap_fallback);
    al_tlv_buf_free(&v->job);
    free(v);
}

void lv_on_hb_timer_closed(uv_handle_t *h)
{
    struct lv_vm *v = h->data;
    v->hb_timer_open = false;
    vm_free(v);
}

static void on_torn_down(void *data, int result, struct al_error *err)
{
    struct lv_vm *v = data;
    backend_done_cb done = v->destroy_done;
    void *ddata = v->destroy_data;
    if (result < 0)
        log_warn(v->req.job_id, "cleanup of %s incomplete: %s", v->base.name,
                 al_error_message(err));
    /* gone from the backend before the owner hears of it: the owner may
     * close the backend right away */
    vm_unlink(v);
    if (done)
        done(result, err, ddata);
    al_error_free(err);
    uv_close((uv_handle_t *)&v->hb_timer, lv_on_hb_timer_closed);
}

struct vm_teardown {
    struct teardown t;
    struct lv_vm *v;
    /* the remote transport: its pool may hold old image volumes only this
     * VM kept (lv_images_sweep_pending()); a backend outlives its VMs */
    struct lv_backend *images_lb;
    char *job_id;
};

static int vm_teardown_work(void *data, struct al_error **err)
{
    struct vm_teardown *vt = data;
    int r = teardown_work(&vt->t, err);
    if (vt->images_lb) {
        lv_images_release(vt->images_lb, vt->v);
        if (vt->t.conn)
            lv_images_sweep_pending(vt->images_lb, vt->t.conn, vt->job_id);
    }
    return r;
}

static void vm_teardown_done(void *data, int result, struct al_error *err)
{
    struct vm_teardown *vt = data;
    struct lv_vm *v = vt->v;
    teardown_clear(&vt->t);
    free(vt->job_id);
    free(vt);
    v->dom = NULL;
    on_torn_down(v, result, err);
}

void lv_destroy_continue(struct lv_vm *v)
{
    lv_streams_stop(v); /* no worker holds v now */
    struct vm_teardown *vt = calloc(1, sizeof(*vt));
    bool up = lv_ensure_conn(v->lb);
    if (vt) {
        vt->v = v;
        vt->t.conn = up ? v->lb->conn : NULL;
        if (vt->t.conn)
            virConnectRef(vt->t.conn);
        vt->t.dom = TAKE_PTR(v->dom);
        vt->t.dom_name = strdup(v->base.name);
        vt->t.pool_name = strdup(v->lb->pool_name);
        vt->t.vol_name = strdup(v->vol_name);
        vt->t.seed_vol_name = v->seed_vol_name ? strdup(v->seed_vol_name) : NULL;
        vt->t.run_dir = strdup(v->run_dir);
        vt->images_lb = v->lb->remote ? v->lb : NULL;
        vt->job_id = v->req.job_id ? strdup(v->req.job_id) : NULL;
    }
    if (!vt || !vt->t.dom_name || !vt->t.pool_name || !vt->t.vol_name || !vt->t.run_dir ||
        (v->seed_vol_name && !vt->t.seed_vol_name) ||
        al_work_queue(v->lb->b->env.loop, vm_teardown_work, vm_teardown_done, vt, NULL) < 0) {
        /* last resort: tear down synchronously rather than leak (no sweep
         * on the loop: the next VM's teardown does it) */
        struct al_error *err = NULL;
        int r = vt ? teardown_work(&vt->t, &err) : -ENOMEM;
        if (v->lb->remote)
            lv_images_release(v->lb, v);
        if (vt)
            vm_teardown_done(vt, r, err);
        else
            on_torn_down(v, r, NULL);
    }
}

/* ---------------------------------------------------- reconcile support */

struct list_ctx {
    struct lv_backend *lb;
    virConnectPtr conn;
    char *pool_name;
    char *vms_dir;
    struct owned_vm *vms;
    size_t n;
    backend_list_cb cb;
    void *data;
};

static struct owned_vm *owned_get(struct list_ctx *c, const char *name)
{
    for (size_t i = 0; i < c->n; i++) {
        if (streq(c->vms[i].name, name))
            return &c->vms[i];
    }
    struct owned_vm *g = realloc(c->vms, (c->n + 1) * sizeof(*g));
    if (!g)
        return NULL;
    c->vms = g;
    struct owned_vm *o = &g[c->n];
    *o = (struct owned_vm){.name = strdup(name)};
    if (!o->name)
        return NULL;
    c->n++;
    return o;
}

static int list_work(void *data, struct al_error **err)
{
    struct list_ctx *c = data;
    virDomainPtr *doms = NULL;
    int n = virConnectListAllDomains(c->conn, &doms, 0);
    if (n < 0)
        return al_error_set(err, EIO, "listing domains: %s", lv_libvirt_msg());
    for (int i = 0; i < n; i++) {
        char *meta = virDomainGetMetadata(doms[i], VIR_DOMAIN_METADATA_ELEMENT, AL_XML_NS, 0);
        struct domain_metadata m = {0};
        if (meta && domain_metadata_parse(meta, &m) == 0 && m.backend &&
            streq(m.backend, c->lb->b->name)) {
            struct owned_vm *o = owned_get(c, virDomainGetName(doms[i]));
            if (o) {
                o->job_id = TAKE_PTR(m.job_id);
                o->owner = TAKE_PTR(m.owner);
                o->attempt = m.attempt;
                o->running = virDomainIsActive(doms[i]) == 1;
            }
        }
        domain_metadata_clear(&m);
        free(meta);
        virDomainFree(doms[i]);
    }
    free(doms);

    /* leftovers: overlays without a domain */
    virStoragePoolPtr pool = virStoragePoolLookupByName(c->conn, c->pool_name);
    if (pool) {
        virStoragePoolRefresh(pool, 0);
        virStorageVolPtr *vols = NULL;
        int nv = virStoragePoolListAllVolumes(pool, &vols, 0);
        for (int i = 0; i < nv; i++) {
            const char *vn = virStorageVolGetName(vols[i]);
            size_t len = strlen(vn);
            /* the golden images' volumes share the prefix; kept */
            if (image_vol_classify(vn, NULL) != IMAGE_VOL_NOT_OURS) {
                virStorageVolFree(vols[i]);
                continue;
            }
            /* overlays, and the seeds of the remote transport */
            static const char *const suffixes[] = {".qcow2", AL_SEED_VOL_SUFFIX};
            for (size_t k = 0; k < ARRAY_SIZE(suffixes); k++) {
                size_t sl = strlen(suffixes[k]);
                if (strncmp(vn, AL_DOMAIN_PREFIX, strlen(AL_DOMAIN_PREFIX)) != 0 ||
                    len <= strlen(AL_DOMAIN_PREFIX) + sl || !streq(vn + len - sl, suffixes[k]))
                    continue;
                _cleanup_free_ char *name = strndup(vn, len - sl);
                if (name)
                    owned_get(c, name);
                break;
            }
            virStorageVolFree(vols[i]);
        }
        free(vols);
        virStoragePoolFree(pool);
    }

    /* leftovers: run dirs; their owner file says who made them */
    DIR *d = opendir(c->vms_dir);
    if (d) {
        struct dirent *de;
        while ((de = readdir(d))) {
            if (strncmp(de->d_name, AL_DOMAIN_PREFIX, strlen(AL_DOMAIN_PREFIX)) != 0)
                continue;
            _cleanup_free_ char *dir = al_path_join(c->vms_dir, de->d_name);
            _cleanup_free_ char *path = dir ? al_path_join(dir, "owner") : NULL;
            _cleanup_free_ char *text = NULL;
            struct al_error *rerr = NULL;
            char owner[256], job[128], backend[128];
            int attempt = 0, fields = 0;
            if (path && al_read_file(path, 4096, &text, NULL, &rerr) == 0)
                fields = sscanf(text, "%255s %127s %d %127s", owner, job, &attempt, backend);
            al_error_free(rerr);
            /* the run dirs of all the daemon's libvirt backends share
             * vms_dir: another backend's are its own to sweep (a file
             * without a backend's name is of an older agentlabd) */
            if (fields == 4 && !streq(backend, c->lb->b->name))
                continue;
            struct owned_vm *o = owned_get(c, de->d_name);
            if (!o || o->owner || fields < 3)
                continue;
            o->owner = strdup(owner);
            o->job_id = strdup(job);
            o->attempt = attempt;
        }
        closedir(d);
    }
    return 0;
}

static void list_done(void *data, int result, struct al_error *err)
{
    struct list_ctx *c = data;
    /* a VM being made into a snapshot belongs to no job but is not left over */
    for (size_t i = 0; result >= 0 && i < c->n;) {
        struct lv_vm *v = lv_find_vm(c->lb, c->vms[i].name);
        if (v && v->snap_maker) {
            free(c->vms[i].name);
            free(c->vms[i].job_id);
            free(c->vms[i].owner);
            memmove(&c->vms[i], &c->vms[i + 1], (c->n - i - 1) * sizeof(c->vms[0]));
            c->n--;
        } else {
            i++;
        }
    }
    if (result < 0) {
        owned_vm_array_free(c->vms, c->n);
        c->cb(result, NULL, 0, err, c->data);
    } else {
        c->cb(0, c->vms, c->n, NULL, c->data);
    }
    al_error_free(err);
    virConnectClose(c->conn);
    free(c->pool_name);
    free(c->vms_dir);
    free(c);
}

int lv_list_owned(struct backend *b, backend_list_cb cb, void *data)
{
    struct lv_backend *lb = b->priv;
    struct list_ctx *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->lb = lb;
    if (!lv_ensure_conn(lb)) {
        free(c);
        return -ENOTCONN;
    }
    c->conn = lb->conn;
    virConnectRef(c->conn);
    c->pool_name = strdup(lb->pool_name);
    c->vms_dir = strdup(lb->vms_dir);
    c->cb = cb;
    c->data = data;
    int r = (!c->pool_name || !c->vms_dir)
                    ? -ENOMEM
                    : al_work_queue(b->env.loop, list_work, list_done, c, NULL);
    if (r < 0) {
        free(c->pool_name);
        free(c->vms_dir);
        free(c);
    }
    return r;
}

struct owned_destroy {
    struct teardown t;
    backend_done_cb done;
    void *data;
};

static int owned_destroy_work(void *data, struct al_error **err)
{
    struct owned_destroy *od = data;
    return teardown_work(&od->t, err);
}

static void owned_destroy_done(void *data, int result, struct al_error *err)
{
    struct owned_destroy *od = data;
    od->done(result, err, od->data);
    al_error_free(err);
    teardown_clear(&od->t);
    free(od);
}

int lv_destroy_owned(struct backend *b, const char *name, backend_done_cb done, void *data)
{
    struct lv_backend *lb = b->priv;
    if (strncmp(name, AL_DOMAIN_PREFIX, strlen(AL_DOMAIN_PREFIX)) != 0 || !al_name_is_valid(name))
        return -EINVAL;
    if (lv_find_vm(lb, name))
        return -EBUSY; /* a live VM of ours: destroy it through its owner */
    struct owned_destroy *od = calloc(1, sizeof(*od));
    if (!od)
        return -ENOMEM;
    od->done = done;
    od->data = data;
    if (!lv_ensure_conn(lb)) {
        free(od);
        return -ENOTCONN;
    }
    od->t.conn = lb->conn;
    virConnectRef(od->t.conn);
    od->t.must_be_ours = true;
    od->t.dom_name = strdup(name);
    od->t.pool_name = strdup(lb->pool_name);
    if (asprintf(&od->t.vol_name, "%s.qcow2", name) < 0)
        od->t.vol_name = NULL;
    /* a remote VM's seed (a lookup that finds none costs nothing) */
    if (asprintf(&od->t.seed_vol_name, "%s" AL_SEED_VOL_SUFFIX, name) < 0)
        od->t.seed_vol_name = NULL;
    od->t.run_dir = al_path_join(lb->vms_dir, name);
    int r = (!od->t.dom_name || !od->t.pool_name || !od->t.vol_name || !od->t.seed_vol_name ||
             !od->t.run_dir)
                    ? -ENOMEM
                    : al_work_queue(b->env.loop, owned_destroy_work, owned_destroy_done, od, NULL);
    if (r < 0) {
        teardown_clear(&od->t);
        free(od);
    }
    return r;
}

/* ------------------------------------------ after the host came back */

struct host_sweep {
    struct lv_backend *lb;
    unsigned pending; /* destroys under way, plus one while listing */
    unsigned destroyed;
    unsigned failed;
};

static void host_sweep_step(struct host_sweep *hs)
{
    if (--hs->pending > 0)
        return;
    struct lv_backend *lb = hs->lb;
    if (hs->destroyed || hs->failed)
        log_info(NULL, "backend %s: the host kept %u VMs of ours; removed %u%s", lb->b->name,
                 hs->destroyed + hs->failed, hs->destroyed,
                 hs->failed ? " (the rest at the next sweep)" : "");
    lb->host_sweep_running = false;
    free(hs);
    lv_close_continue(lb);
}

static void on_host_leftover_destroyed(int result, const struct al_error *err, void *data)
{
    struct host_sweep *hs = data;
    if (result < 0) {
        hs->failed++;
        log_warn(NULL, "backend %s: removing a VM the host kept: %s", hs->lb->b->name,
                 al_error_message(err));
    } else {
        hs->destroyed++;
    }
    host_sweep_step(hs);
}

static void on_host_listed(int result, struct owned_vm *vms, size_t n, const struct al_error *err,
                           void *data)
{
    struct host_sweep *hs = data;
    struct lv_backend *lb = hs->lb;
    if (result < 0)
        log_warn(NULL, "backend %s: listing what the host kept: %s", lb->b->name,
                 al_error_message(err));
    for (size_t i = 0; i < n && !lb->closing; i++) {
        /* ours: made by this process (a domain's metadata or the run dir's
         * owner file), or an overlay or seed in this backend's pool that
         * nothing claims; never a VM of a live attempt (lv_destroy_owned
         * refuses those) */
        const struct owned_vm *o = &vms[i];
        if (o->owner && !streq(o->owner, lb->b->env.owner_id))
            continue;
        if (lv_find_vm(lb, o->name))
            continue;
        hs->pending++;
        if (lv_destroy_owned(lb->b, o->name, on_host_leftover_destroyed, hs) < 0) {
            hs->pending--;
            hs->failed++;
        }
    }
    owned_vm_array_free(vms, n);
    host_sweep_step(hs);
}

void lv_host_sweep(struct lv_backend *lb)
{
    if (lb->host_sweep_running || lb->closing)
        return;
    struct host_sweep *hs = calloc(1, sizeof(*hs));
    if (!hs)
        return; /* the engine's periodic sweep finds them */
    hs->lb = lb;
    hs->pending = 1;
    lb->host_sweep_running = true;
    if (lv_list_owned(lb->b, on_host_listed, hs) < 0) {
        lb->host_sweep_running = false;
        free(hs);
    }
}
