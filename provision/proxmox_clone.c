/* The Proxmox backend's way to a running clone: the template cache, the
 * node choice, the VMID, the clone, its configuration and its start. */
#include "provision/proxmox_priv.h"

/* ------------------------------------------------------------ template */

void px_template_of(const struct backend_settings *cfg, const char *image, char *buf, size_t size)
{
    for (char **t = cfg->proxmox.templates; image && t && *t; t++) {
        const char *colon = strrchr(*t, ':');
        if (colon && (size_t)(colon - *t) == strlen(image) &&
            strncmp(*t, image, (size_t)(colon - *t)) == 0) {
            snprintf(buf, size, "%s", colon + 1);
            return;
        }
    }
    snprintf(buf, size, "%s", cfg->proxmox.template_vm);
}

static void template_lookup(struct px_backend *pb, const char *want);

/* Runs the VMs waiting now for the template just looked up; those that
 * start waiting meanwhile, and those that want another template, wait for
 * the next lookup. */
static void template_waiters_run(struct px_backend *pb)
{
    struct al_list run = AL_LIST_INIT(run);
    struct px_vm *other = NULL;
    al_list_for_each_safe(w, next, &pb->tmpl_waiters, struct px_vm, wait_link) {
        if (!streq(w->tmpl_want, pb->tmpl_want)) {
            other = w;
            continue;
        }
        al_list_del(&w->wait_link);
        al_list_add_tail(&run, &w->wait_link);
    }
    while (!al_list_empty(&run)) {
        struct px_vm *w = al_list_first_entry(&run, struct px_vm, wait_link);
        al_list_del(&w->wait_link);
        if (pb->tmpl_error[0]) {
            px_finish(w, VM_INFRA_ERROR, 0, "%s", pb->tmpl_error);
        } else {
            w->tmpl_vmid = pb->tmpl_vmid;
            snprintf(w->tmpl_node, sizeof(w->tmpl_node), "%s", pb->tmpl_node);
            px_step_nodes(w);
        }
    }
    if (other && !pb->tmpl_busy)
        template_lookup(pb, other->tmpl_want);
}

static void on_resources_for_template(int result, const struct pve_reply *reply,
                                      const struct al_error *err, void *data)
{
    struct px_backend *pb = data;
    const char *want = pb->tmpl_want;
    int64_t want_id = 0;
    bool by_id = al_parse_int64(want, 100, 999999999, &want_id) == 0;
    pb->tmpl_busy = false;
    pb->tmpl_error[0] = '\0';
    if (result < 0) {
        px_note_failure(pb, result, err);
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
            if (!pve_json_int(it, "vmid", &id) || !node || !px_node_name_ok(node) ||
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

/* Looks want up (the cache then holds it); its waiters run when it is done. */
static void template_lookup(struct px_backend *pb, const char *want)
{
    snprintf(pb->tmpl_want, sizeof(pb->tmpl_want), "%s", want);
    pb->tmpl_at = 0;
    struct al_error *err = NULL;
    int r = px_list_resources(pb, on_resources_for_template, pb, &err);
    if (r < 0) {
        snprintf(pb->tmpl_error, sizeof(pb->tmpl_error), "Proxmox: %s", al_error_message(err));
        al_error_free(err);
        template_waiters_run(pb);
        return;
    }
    pb->tmpl_busy = true;
}

static void step_template(struct px_vm *v)
{
    struct px_backend *pb = v->pb;
    if (pb->tmpl_at && al_now_mono_ms() - pb->tmpl_at < TEMPLATE_TTL_MS &&
        streq(pb->tmpl_want, v->tmpl_want)) {
        v->tmpl_vmid = pb->tmpl_vmid;
        snprintf(v->tmpl_node, sizeof(v->tmpl_node), "%s", pb->tmpl_node);
        px_step_nodes(v);
        return;
    }
    al_list_add(&pb->tmpl_waiters, &v->wait_link);
    if (!pb->tmpl_busy)
        template_lookup(pb, v->tmpl_want);
}

void px_on_start_timer(int result, const struct pve_reply *reply, const struct al_error *err,
                       void *data)
{
    (void)reply;
    (void)err;
    struct px_vm *v = data;
    if (px_settle(v))
        return;
    if (result < 0) {
        px_finish(v, VM_INFRA_ERROR, 0, "Proxmox: canceled");
        return;
    }
    step_template(v);
}

/* ------------------------------------------------------------ node choice */

bool px_node_wanted(const struct px_backend *pb, const char *name)
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
    al_list_for_each(o, &pb->vms, const struct px_vm, link) {
        if (o != except && o->node[0] && streq(o->node, node) && !o->exited)
            sum += o->req.memory;
    }
    return sum;
}

static void on_nodes(int result, const struct pve_reply *reply, const struct al_error *err,
                     void *data)
{
    struct px_vm *v = data;
    if (px_settle(v))
        return;
    if (result < 0) {
        px_fail_call(v, result, err, "listing nodes");
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
            if (!name || !px_node_name_ok(name) || !px_node_wanted(pb, name))
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
        px_finish(v, VM_INFRA_ERROR, 0, "Proxmox: no node can take the job's %" PRIu64 " MiB: %s",
                  v->req.memory >> 20,
                  why[0] ? why
                         : (pb->nodes_cfg ? "none of the configured nodes exists"
                                          : "the cluster lists no nodes"));
        return;
    }
    snprintf(v->node, sizeof(v->node), "%s", best);
    px_step_nextid(v);
}

void px_step_nodes(struct px_vm *v)
{
    px_vm_call(v, "GET", "/nodes", NULL, PVE_IDEMPOTENT, 0, 0, true, on_nodes);
}

/* ------------------------------------------------------------ clone */

static bool vmid_in_use_here(const struct px_backend *pb, int64_t id, const struct px_vm *except)
{
    al_list_for_each(o, &pb->vms, const struct px_vm, link) {
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
    if (px_settle(v))
        return;
    if (result < 0) {
        px_fail_call(v, result, err, "allocating a VMID");
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
        px_finish(v, VM_INFRA_ERROR, 0, "Proxmox: /cluster/nextid returned no VMID");
        return;
    }
    /* nothing is reserved: concurrent attempts here would all get the same
     * id, so skip the ones our other VMs hold */
    while (vmid_in_use_here(v->pb, id, v) && id < 999999999)
        id++;
    v->vmid = id;
    step_clone(v);
}

void px_step_nextid(struct px_vm *v)
{
    v->vmid = 0;
    px_vm_call(v, "GET", "/cluster/nextid", NULL, PVE_IDEMPOTENT, 0, 0, true, on_nextid);
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
    if (px_settle(v))
        return;
    if (result < 0) {
        if (exitstatus && strstr(exitstatus, "already exists") &&
            ++v->vmid_tries < MAX_VMID_TRIES) {
            px_step_nextid(v);
            return;
        }
        v->pb->tmpl_at = 0; /* look the template up afresh next time */
        px_fail_call(v, result, err, "cloning the template");
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
        if (!px_settle(v))
            px_finish(v, VM_INFRA_ERROR, 0, "Proxmox: cloning: %s", al_error_message(e));
        al_error_free(e);
        return;
    }
    if (px_settle(v))
        return;
    if (result < 0 && strstr(reply->message, "already exists") &&
        ++v->vmid_tries < MAX_VMID_TRIES) {
        px_step_nextid(v);
        return;
    }
    if (result < 0) {
        v->pb->tmpl_at = 0;
        px_fail_call(v, result, err, "cloning the template");
        return;
    }
    px_finish(v, VM_INFRA_ERROR, 0, "Proxmox: the clone reply carries no task id");
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
    if (!streq(v->node, v->tmpl_node))
        pve_params_add(&p, "target", v->node);
    char path[200];
    snprintf(path, sizeof(path), "/nodes/%s/qemu/%" PRId64 "/clone", v->tmpl_node, v->tmpl_vmid);
    int64_t vmid = v->vmid;
    v->vmid = 0; /* the path is the template's */
    px_vm_call(v, "POST", path, &p, 0, 0, 0, false, on_clone);
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
    if (px_settle(v))
        return;
    if (result < 0) {
        px_fail_call(v, result, err, "configuring the VM");
        return;
    }
    px_phase(v, VM_PHASE_PROVISIONED);
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
            px_finish(v, VM_INFRA_ERROR, 0, "reading sshkeys_file: %s", al_error_message(rerr));
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
    px_vm_call(v, "PUT", "/config", &p, PVE_IDEMPOTENT, 0, 0, false, on_config);
    pve_params_clear(&p);
}

static void on_start_task(int result, const char *exitstatus, const struct al_error *err,
                          void *data)
{
    (void)exitstatus;
    struct px_vm *v = data;
    v->task = NULL;
    if (px_settle(v))
        return;
    if (result < 0) {
        px_fail_call(v, result, err, "starting the VM");
        return;
    }
    px_phase(v, VM_PHASE_BOOTING);
    if (v->finished || v->destroying)
        return;
    v->agent_wait = AGENT_POLL_MS;
    px_step_write(v);
}

static void on_start(int result, const struct pve_reply *reply, const struct al_error *err,
                     void *data)
{
    struct px_vm *v = data;
    const char *upid = result == 0 && reply->data && YAJL_IS_STRING(reply->data)
                               ? reply->data->u.string
                               : NULL;
    if (px_settle(v))
        return;
    if (result < 0 && strstr(reply->message, "already running")) {
        /* a retried start whose first try went through */
        on_start_task(0, "OK", NULL, v);
        return;
    }
    if (result < 0) {
        px_fail_call(v, result, err, "starting the VM");
        return;
    }
    struct al_error *e = NULL;
    if (!upid || pve_task_wait(v->pb->api, upid, 0, on_start_task, v, &v->task, &e) < 0) {
        px_finish(v, VM_INFRA_ERROR, 0, "Proxmox: starting the VM: %s",
                  e ? al_error_message(e) : "no task id in the reply");
        al_error_free(e);
    }
}

static void step_start(struct px_vm *v)
{
    v->start_sent = true;
    px_vm_call(v, "POST", "/status/start", NULL, PVE_IDEMPOTENT, 0, 0, false, on_start);
}
