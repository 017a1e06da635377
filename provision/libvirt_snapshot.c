/* Memory snapshots of booted guests: a job VM restored from one starts in a
 * fraction of a second instead of waiting for a boot.
 *
 * A snapshot is per image and size (vCPUs, memory) and has slots:
 *
 *     <image dir>/snapshots/<cpus>c-<MiB>m/slot-<K>/{state,base.qcow2,manifest.json}
 *
 * Making one (in the background, when a job asked for a snapshot and a slot
 * was missing or stale, once a VM slot is free: maker_want()): a VM boots the
 * image without a job as a warm VM does; its helper greets us, we send SYNC,
 * it flushes its disk and answers SYNCED; we hang up, virDomainSaveFlags()
 * its memory to state; its overlay becomes base.qcow2, read-only from then
 * on; the manifest (all the state depends on) is written last.
 *
 * Restoring: a fresh overlay on base.qcow2, then virDomainRestoreFlags()
 * with the saved XML whose paths (disk, channel, console log, seed) point
 * at this job's, and whose metadata names this job. libvirt keeps the
 * saved domain's name and UUID, so one slot serves one job at a time and
 * the VM carries the slot's domain name. The helper, frozen while waiting
 * for a host, sees the channel come back; we send FRESHEN (entropy, clock,
 * host name, machine id), then the job.
 *
 * Anything that does not hold (no slot, stale manifest, restore error)
 * boots the VM normally; the reason is counted (provision/snapshot.h) and
 * told to the job as a diagnostic.
 *
 * Stale, unused and unfinished slots are removed as libvirt_snapshot_gc.c
 * says. */
#include "provision/libvirt_priv.h"

#include <time.h>

#include "provision/snapshot.h"
#include "runner/base/json_tree.h"
#include "runner/base/version.h"

#define MAKER_PREFIX "snap-"
/* a snapshot that could not be made MAKER_TRIES times in a row (an image
 * whose helper predates SYNC, a guest that does not boot) is not tried
 * again for MAKER_RETRY_MS: each try is a boot. Fewer failures are retried
 * at once (a guest under TCG on a loaded host may panic in its timer check) */
#define MAKER_TRIES    3u
#define MAKER_RETRY_MS (15u * 60u * 1000u)
/* a maker waits this long for a free VM slot: queued jobs go first */
#define MAKER_IDLE_MS 2000u

/* A VM being made into a snapshot: owns what its request points at. */
struct snap_maker {
    struct lv_backend *lb;
    struct lv_snap_slot *s;
    struct lv_vm *v;
    char job_id[64];
    struct vm_image image;
    struct snapshot_manifest want;
    struct snapshot_manifest made; /* worker -> loop */
    bool saved;                    /* made holds a saved snapshot */
    uint64_t t0;
    int cpus;
    uint64_t memory;
};

/* ------------------------------------------------------------- helpers */

void lv_snap_slot_free(struct lv_snap_slot *s)
{
    if (s->user)
        s->user->snap = NULL;
    if (s->maker)
        s->maker->snap = NULL;
    al_list_del(&s->link);
    snapshot_manifest_clear(&s->m);
    free(s->dir);
    free(s->state);
    free(s->base);
    free(s->manifest_path);
    free(s->wait_img);
    free(s);
}

void lv_snapshot_free_all(struct lv_backend *lb)
{
    while (!al_list_empty(&lb->snap_slots))
        lv_snap_slot_free(al_list_first_entry(&lb->snap_slots, struct lv_snap_slot, link));
}

/* The directory that holds the image's files: the golden disk's. */
char *lv_snap_image_dir(const struct vm_image *img)
{
    const char *slash = strrchr(img->disk, '/');
    return slash ? strndup(img->disk, (size_t)(slash - img->disk)) : NULL;
}

struct lv_snap_slot *lv_snap_slot_get(struct lv_backend *lb, const char *dir)
{
    al_list_for_each(s, &lb->snap_slots, struct lv_snap_slot, link) {
        if (streq(s->dir, dir))
            return s;
    }
    struct lv_snap_slot *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    al_list_init(&s->link);
    s->dir = strdup(dir);
    s->state = al_path_join(dir, "state");
    s->base = al_path_join(dir, "base.qcow2");
    s->manifest_path = al_path_join(dir, "manifest.json");
    if (!s->dir || !s->state || !s->base || !s->manifest_path) {
        lv_snap_slot_free(s);
        return NULL;
    }
    al_list_add_tail(&lb->snap_slots, &s->link);
    return s;
}

/* Reads the slot's manifest; false when there is none (or it is unreadable,
 * which makes the slot one to remake). */
bool lv_snap_slot_load(struct lv_snap_slot *s)
{
    if (s->removing)
        return false;
    if (s->loaded)
        return true;
    _cleanup_free_ char *text = NULL;
    size_t len = 0;
    struct al_error *err = NULL;
    struct snapshot_manifest m = {0};
    if (al_read_file(s->manifest_path, SNAPSHOT_MANIFEST_MAX, &text, &len, &err) == 0 &&
        snapshot_manifest_parse(text, len, &m, &err) == 0) {
        snapshot_manifest_clear(&s->m);
        s->m = m;
        s->loaded = true;
    }
    al_error_free(err);
    return s->loaded;
}

/* What identifies the image's contents: its checksum and creation time
 * from its manifest (a rebuilt or re-imported image has a new one), and
 * the size and modification time of its disk, kernel and initrd. */
static char *image_identity(const struct vm_image *img)
{
    _cleanup_free_ char *dir = lv_snap_image_dir(img);
    _cleanup_free_ char *path = dir ? al_path_join(dir, "manifest.json") : NULL;
    _cleanup_free_ char *text = NULL;
    _cleanup_free_ char *sha = NULL, *created = NULL;
    size_t len = 0;
    struct al_error *err = NULL;
    if (path && al_read_file(path, 1024 * 1024, &text, &len, &err) == 0) {
        _cleanup_(yajl_tree_freep) yajl_val root = NULL;
        if (al_json_parse(text, len, 1024 * 1024, 16, 100000, "image manifest", &root, &err) == 0 &&
            YAJL_IS_OBJECT(root)) {
            al_json_get_string(root, "sha256", "", 128, false, NULL, &sha, NULL);
            al_json_get_string(root, "created", "", 64, false, NULL, &created, NULL);
        }
    }
    al_error_free(err);
    const char *files[] = {img->disk, img->kernel, img->initrd};
    char stamp[3][64];
    for (size_t i = 0; i < ARRAY_SIZE(files); i++) {
        struct stat st;
        if (files[i] && stat(files[i], &st) == 0)
            snprintf(stamp[i], sizeof(stamp[i]), "%lld.%ld:%lld", (long long)st.st_mtim.tv_sec,
                     st.st_mtim.tv_nsec, (long long)st.st_size);
        else
            snprintf(stamp[i], sizeof(stamp[i]), "-");
    }
    char *id = NULL;
    if (asprintf(&id, "sha256:%s created:%s disk:%s kernel:%s initrd:%s cmdline:%s",
                 sha ? sha : "-", created ? created : "-", stamp[0], stamp[1], stamp[2],
                 img->cmdline ? img->cmdline : "") < 0)
        return NULL;
    return id;
}

/* The present conditions for a VM of this request. */
int lv_snap_conditions(struct lv_backend *lb, const struct vm_image *img, int cpus, uint64_t memory,
                       struct snapshot_manifest *ret)
{
    struct snapshot_manifest m = {
            .qemu_version = lb->qemu_version,
            .libvirt_version = lb->libvirt_version,
            .cpus = cpus,
            .memory = memory,
    };
    m.image = strdup(img->name);
    m.image_id = image_identity(img);
    m.accel = strdup(accel_kind_name(lv_accel_now(lb)));
    m.cpu_model = strdup(lb->cpu_model ? lb->cpu_model : "");
    m.helper = strdup(AL_VERSION);
    if (!m.image || !m.image_id || !m.accel || !m.cpu_model || !m.helper) {
        snapshot_manifest_clear(&m);
        return -ENOMEM;
    }
    *ret = m;
    return 0;
}

void lv_snapshot_probe(struct lv_backend *lb)
{
    unsigned long v = 0;
    if (virConnectGetVersion(lb->conn, &v) == 0)
        lb->qemu_version = v;
    if (virConnectGetLibVersion(lb->conn, &v) == 0)
        lb->libvirt_version = v;
    _cleanup_free_ char *caps = virConnectGetCapabilities(lb->conn);
    const char *host = caps ? strstr(caps, "<host>") : NULL;
    const char *model = host ? strstr(host, "<model>") : NULL;
    const char *end = model ? strstr(model, "</model>") : NULL;
    free(lb->cpu_model);
    lb->cpu_model = end ? strndup(model + 7, (size_t)(end - model - 7)) : strdup("unknown");
}

char *lv_make_hostname(const char *job_id)
{
    char *h = NULL;
    size_t n = strlen(job_id);
    const char *tail = n > 12 ? job_id + n - 12 : job_id;
    if (asprintf(&h, "al-%s", tail) < 0)
        return NULL;
    for (char *p = h; *p; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-'))
            *p = (*p >= 'A' && *p <= 'Z') ? (char)(*p - 'A' + 'a') : '-';
    }
    return h;
}

static void set_fallback(struct lv_vm *v, enum snapshot_fallback r, const char *fmt, ...)
        _printf_(3, 4);
static void set_fallback(struct lv_vm *v, enum snapshot_fallback r, const char *fmt, ...)
{
    char detail[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    free(v->snap_fallback);
    if (asprintf(&v->snap_fallback, "%s: %s", snapshot_fallback_name(r), detail) < 0)
        v->snap_fallback = NULL;
    v->snap_fb = (int)r;
}

/* -------------------------------------------------------------- making */

static void image_clear(struct vm_image *img)
{
    free((char *)img->name);
    free((char *)img->disk);
    free((char *)img->kernel);
    free((char *)img->initrd);
    free((char *)img->cmdline);
    *img = (struct vm_image){0};
}

static void maker_free(struct snap_maker *mk)
{
    snapshot_manifest_clear(&mk->want);
    snapshot_manifest_clear(&mk->made);
    image_clear(&mk->image);
    free(mk);
}

static void clone_start(struct lv_backend *lb, struct lv_snap_slot *src);
static void maker_start(struct lv_backend *lb, struct lv_snap_slot *s, const struct vm_image *img,
                        int cpus, uint64_t memory, struct snapshot_manifest *want);

static void snap_timer_arm(struct lv_backend *lb);

/* A maker is a VM like any other, counted against max_vms, and never takes
 * a slot a job is waiting for: the slot waits, and a maker starts
 * MAKER_IDLE_MS after it was wanted or a VM left, only into a free slot
 * (the engine admits queued jobs at once). */
static void maker_want(struct lv_backend *lb, struct lv_snap_slot *s, const struct vm_image *img,
                       int cpus, uint64_t memory)
{
    if (!(s->wait_img && streq(s->wait_img->disk, img->disk) && s->wait_cpus == cpus &&
          s->wait_memory == memory)) {
        free(s->wait_img);
        s->wait_img = vm_image_dup(img);
        s->wait_cpus = cpus;
        s->wait_memory = memory;
    }
    snap_timer_arm(lb);
}

static void on_snap_timer(uv_timer_t *t)
{
    struct lv_backend *lb = t->data;
    al_list_for_each(s, &lb->snap_slots, struct lv_snap_slot, link) {
        if (!s->wait_img || s->maker || s->cloning || s->user || s->removing)
            continue; /* a removal's end re-arms the timer */
        if (al_list_length(&lb->vms) >= (size_t)lb->max_vms)
            return; /* the next VM to leave tries again */
        struct snapshot_manifest want = {0};
        if (lv_snap_conditions(lb, s->wait_img, s->wait_cpus, s->wait_memory, &want) < 0)
            continue;
        struct vm_image *img = s->wait_img;
        s->wait_img = NULL;
        char why[200]; /* made meanwhile (a copy of another slot)? */
        bool make = !lv_snap_slot_load(s) || s->broken ||
                    snapshot_manifest_check(&s->m, &want, why, 200);
        if (make) /* one maker at a time: its VM leaving re-arms the timer */
            maker_start(lb, s, img, s->wait_cpus, s->wait_memory, &want);
        snapshot_manifest_clear(&want);
        free(img);
        if (make)
            return;
    }
}

static void snap_timer_arm(struct lv_backend *lb)
{
    if (lb->closing)
        return;
    if (!lb->snap_timer) {
        lb->snap_timer = malloc(sizeof(*lb->snap_timer));
        if (!lb->snap_timer)
            return;
        uv_timer_init(lb->b->env.loop, lb->snap_timer);
        lb->snap_timer->data = lb;
    }
    uv_timer_start(lb->snap_timer, on_snap_timer, MAKER_IDLE_MS, 0);
}

void lv_snapshot_vm_left(struct lv_backend *lb)
{
    al_list_for_each(s, &lb->snap_slots, struct lv_snap_slot, link) {
        if (s->wait_img) {
            snap_timer_arm(lb);
            return;
        }
    }
}

/* The maker's VM is gone: only now may its slot be restored, since the
 * restored domain, its run dir and its overlay carry the maker's names. */
static void maker_destroyed(int result, const struct al_error *err, void *data)
{
    (void)result;
    (void)err;
    struct snap_maker *mk = data;
    struct lv_backend *lb = mk->lb;
    struct lv_snap_slot *s = mk->s;
    if (mk->saved && s && !lb->closing) {
        snapshot_manifest_clear(&s->m);
        s->m = mk->made;
        mk->made = (struct snapshot_manifest){0};
        s->loaded = true;
        log_info(NULL,
                 "backend %s: snapshot %s ready in %" PRIu64 " ms (state %" PRIu64
                 " MiB, base %" PRIu64 " KiB)",
                 lb->b->name, s->dir, s->m.made_ms, s->m.state_bytes >> 20, s->m.base_bytes >> 10);
        s->failures = 0;
        s->failed_ms = 0;
        clone_start(lb, s);
    } else if (s && !lb->closing && !s->user && s->failures < MAKER_TRIES) {
        maker_want(lb, s, &mk->image, mk->cpus, mk->memory);
    }
    maker_free(mk);
    lv_close_continue(lb);
}

void lv_snapshot_stop_makers(struct lv_backend *lb)
{
    al_list_for_each_safe(v, next, &lb->vms, struct lv_vm, link) {
        if (v->snap_maker && !v->destroying) {
            struct snap_maker *mk = v->base.ev_data;
            if (v->snap && v->snap->maker == v)
                v->snap->maker = NULL;
            v->snap = NULL;
            mk->s = NULL;
            v->base.backend->ops->destroy(&v->base, maker_destroyed, mk);
        }
    }
}

/* The maker is done, made or not: its VM goes; the slot stays being made
 * until the VM's teardown finished (lv_snapshot_release(), then
 * maker_destroyed()). */
static void maker_end(struct snap_maker *mk)
{
    struct lv_vm *v = mk->v;
    v->base.backend->ops->destroy(&v->base, maker_destroyed, mk);
}

static void maker_phase(struct vm *vm, enum vm_phase p, void *data)
{
    struct snap_maker *mk = data;
    struct lv_vm *v = container_of(vm, struct lv_vm, base);
    (void)mk;
    if (p == VM_PHASE_CONNECTED && v->ch && channel_send(v->ch, AL_FRAME_SYNC, NULL, 0) < 0)
        lv_finish(v, VM_INFRA_ERROR, 0, "asking the guest to sync failed");
}

static void maker_finished(struct vm *vm, const struct vm_result *r, void *data)
{
    (void)vm;
    struct snap_maker *mk = data;
    if (mk->s) {
        mk->s->failed_ms = al_now_mono_ms();
        mk->s->failures++;
    }
    log_warn(NULL, "backend %s: making a snapshot of %s in %s failed: %s", mk->lb->b->name,
             mk->want.image, mk->s ? mk->s->dir : "?", r->reason);
    maker_end(mk);
}

static const struct vm_events maker_events = {
        .phase = maker_phase,
        .finished = maker_finished,
};

static int maker_image_copy(struct snap_maker *mk, const struct vm_image *img)
{
    mk->image.virtual_size = img->virtual_size;
    mk->image.name = strdup(img->name);
    mk->image.disk = strdup(img->disk);
    mk->image.kernel = img->kernel ? strdup(img->kernel) : NULL;
    mk->image.initrd = img->initrd ? strdup(img->initrd) : NULL;
    mk->image.cmdline = img->cmdline ? strdup(img->cmdline) : NULL;
    return mk->image.name && mk->image.disk && (!img->kernel || mk->image.kernel) &&
                           (!img->initrd || mk->image.initrd) &&
                           (!img->cmdline || mk->image.cmdline)
                   ? 0
                   : -ENOMEM;
}

/* Boots a VM of this image and size to be saved into slot s; takes want. */
static void maker_start(struct lv_backend *lb, struct lv_snap_slot *s, const struct vm_image *img,
                        int cpus, uint64_t memory, struct snapshot_manifest *want)
{
    struct snap_maker *mk = calloc(1, sizeof(*mk));
    if (!mk)
        return;
    mk->lb = lb;
    mk->s = s;
    mk->t0 = al_now_mono_ms();
    mk->cpus = cpus;
    mk->memory = memory;
    mk->want = *want;
    *want = (struct snapshot_manifest){0};
    _cleanup_free_ char *rnd = al_random_hex(5);
    if (!rnd || maker_image_copy(mk, img) < 0) {
        maker_free(mk);
        return;
    }
    snprintf(mk->job_id, sizeof(mk->job_id), MAKER_PREFIX "%s", rnd);
    struct vm_request req = {
            .job_id = mk->job_id,
            .image_name = mk->image.name,
            .image = &mk->image,
            .cpus = cpus,
            .memory = memory,
            .inject = INJECT_SEED,
            .warm = true,
    };
    struct vm *vm = NULL;
    struct al_error *err = NULL;
    if (lv_launch_vm(lb->b, &req, &maker_events, mk, true, &vm, &err) < 0) {
        log_warn(NULL, "backend %s: cannot make a snapshot of %s: %s", lb->b->name, mk->image.name,
                 al_error_message(err));
        al_error_free(err);
        maker_free(mk);
        return;
    }
    mk->v = container_of(vm, struct lv_vm, base);
    mk->v->snap = s;
    s->maker = mk->v;
    s->loaded = false;
    s->broken = false;
    log_info(NULL, "backend %s: making a memory snapshot of %s (%d vCPU, %" PRIu64 " MiB) in %s",
             lb->b->name, mk->image.name, req.cpus, req.memory >> 20, s->dir);
}

/* The value of the first attribute name='...' in xml, a new string. */
static char *xml_attr_q(const char *xml, const char *name)
{
    char key[64];
    snprintf(key, sizeof(key), " %s='", name);
    const char *a = strstr(xml, key);
    const char *b = a ? strchr(a + strlen(key), '\'') : NULL;
    return b ? strndup(a + strlen(key), (size_t)(b - a - strlen(key))) : NULL;
}

static uint64_t file_bytes(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (uint64_t)st.st_blocks * 512u : 0;
}

static int save_work(void *data, struct al_error **err)
{
    struct snap_maker *mk = data;
    struct lv_vm *v = mk->v;
    struct lv_snap_slot *s = mk->s;
    _cleanup_free_ char *tmp_state = al_path_join(s->dir, "state.tmp");
    if (!tmp_state)
        return al_error_set(err, ENOMEM, "snapshot");
    struct al_error *rerr = NULL;
    al_rm_rf(s->dir, &rerr); /* a stale snapshot of this slot */
    al_error_free(rerr);
    int r = al_mkdir_p(s->dir, 0711, err);
    if (r < 0)
        return r;
    if (virDomainSaveFlags(v->dom, tmp_state, NULL, VIR_DOMAIN_SAVE_RUNNING) < 0)
        return al_error_set(err, EIO, "saving %s: %s", v->base.name, lv_libvirt_msg());
    _cleanup_free_ char *xml = virDomainSaveImageGetXMLDesc(v->lb->conn, tmp_state, 0);
    if (!xml)
        return al_error_set(err, EIO, "reading the saved XML: %s", lv_libvirt_msg());
    struct snapshot_manifest m = mk->want;
    mk->want = (struct snapshot_manifest){0};
    m.domain = strdup(v->base.name);
    m.uuid = al_xml_text(xml, "uuid");
    m.machine = xml_attr_q(xml, "machine");
    m.disk_path = strdup(v->vol_path);
    m.channel_path = strdup(v->channel_path);
    m.console_log = strdup(v->console_log);
    m.seed_path = strdup(v->inject == INJECT_GUESTFS ? "" : v->seed_path);
    mk->made = m;
    if (!m.domain || !m.uuid || !m.machine || !m.disk_path || !m.channel_path || !m.console_log ||
        !m.seed_path)
        return al_error_set(err, ENOMEM, "snapshot manifest");
    /* the overlay the saved memory belongs to becomes the frozen base */
    if (rename(v->vol_path, s->base) < 0)
        return al_error_set_errno(err, errno, "moving the overlay to %s", s->base);
    chmod(s->base, 0444);
    if (rename(tmp_state, s->state) < 0)
        return al_error_set_errno(err, errno, "renaming %s", tmp_state);
    mk->made.state_bytes = file_bytes(s->state);
    mk->made.base_bytes = file_bytes(s->base);
    mk->made.made_ms = al_now_mono_ms() - mk->t0;
    _cleanup_free_ char *json = NULL;
    if (snapshot_manifest_format(&mk->made, &json) < 0)
        return al_error_set(err, ENOMEM, "snapshot manifest");
    return al_write_file_atomic(s->manifest_path, json, strlen(json), 0644, err);
}

/* -------------------------------------------------------------- cloning
 *
 * Every slot needs a saved state of its own (libvirt keeps a restored
 * domain's name and UUID, so two restores of one state cannot run at once),
 * but not a boot of its own: the other slots are copies of the first state
 * whose header XML names another domain with another UUID (same lengths,
 * so nothing else in the file moves), sharing its base disk (a hard link).
 * The guest memory is the same in all of them, as it is in every restore of
 * one slot; FRESHEN is what makes each restored guest its own. */

#define SAVE_MAGIC      "LibvirtQemudSave"
#define SAVE_HEADER_LEN 92u /* magic, version, xml length, 3 flags, 14 unused (u32) */
#define SAVE_XML_MAX    (16u * 1024u * 1024u)

struct clone_target {
    struct lv_snap_slot *s; /* loop side only */
    char *dir, *state, *base, *manifest_path;
    struct snapshot_manifest m; /* worker -> loop */
    int result;
};

struct clone_job {
    struct lv_backend *lb;
    struct snapshot_manifest src; /* a copy of the source slot's manifest */
    char *src_state, *src_base;
    size_t n;
    struct clone_target t[64];
};

static int replace_once(char *buf, size_t len, const char *from, const char *to)
{
    size_t fl = strlen(from);
    if (strlen(to) != fl)
        return -EINVAL;
    char *p = memmem(buf, len, from, fl);
    if (!p)
        return -ENOENT;
    memcpy(p, to, fl);
    return 0;
}

static uint32_t get_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Copies the saved state src to dst with the domain's name and UUID
 * replaced in its header XML. */
static int copy_state(const char *src, const char *dst, const struct snapshot_manifest *from,
                      const struct snapshot_manifest *to, struct al_error **err)
{
    _cleanup_close_ int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return al_error_set_errno(err, errno, "opening %s", src);
    uint8_t hdr[SAVE_HEADER_LEN];
    if (read(in, hdr, sizeof(hdr)) != (ssize_t)sizeof(hdr) || memcmp(hdr, SAVE_MAGIC, 16) != 0)
        return al_error_set(err, EINVAL, "%s is not a libvirt saved state", src);
    uint32_t xml_len = get_le32(hdr + 20);
    if (xml_len == 0 || xml_len > SAVE_XML_MAX)
        return al_error_set(err, EINVAL, "%s: odd XML length %u", src, xml_len);
    _cleanup_free_ char *xml = malloc(xml_len);
    if (!xml)
        return al_error_set(err, ENOMEM, "copying a state");
    if (read(in, xml, xml_len) != (ssize_t)xml_len)
        return al_error_set(err, EIO, "%s: short read", src);
    char a[600], b[600];
    snprintf(a, sizeof(a), "<name>%s</name>", from->domain);
    snprintf(b, sizeof(b), "<name>%s</name>", to->domain);
    int r = replace_once(xml, xml_len, a, b);
    if (r == 0) {
        snprintf(a, sizeof(a), "<uuid>%s</uuid>", from->uuid);
        snprintf(b, sizeof(b), "<uuid>%s</uuid>", to->uuid);
        r = replace_once(xml, xml_len, a, b);
    }
    if (r < 0)
        return al_error_set(err, -r, "%s: cannot rename the saved domain", src);
    _cleanup_close_ int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (out < 0)
        return al_error_set_errno(err, errno, "creating %s", dst);
    if (write(out, hdr, sizeof(hdr)) != (ssize_t)sizeof(hdr) ||
        write(out, xml, xml_len) != (ssize_t)xml_len)
        return al_error_set_errno(err, errno, "writing %s", dst);
    for (;;) {
        ssize_t n = copy_file_range(in, NULL, out, NULL, 64u << 20, 0);
        if (n == 0)
            break;
        if (n < 0)
            return al_error_set_errno(err, errno, "copying %s", src);
    }
    if (fsync(out) < 0)
        return al_error_set_errno(err, errno, "writing %s", dst);
    return 0;
}

static int clone_one(struct clone_job *cj, struct clone_target *t, struct al_error **err)
{
    struct al_error *rerr = NULL;
    al_rm_rf(t->dir, &rerr);
    al_error_free(rerr);
    int r = al_mkdir_p(t->dir, 0711, err);
    if (r < 0)
        return r;
    /* the copy: the source's conditions and paths, its own name and UUID */
    struct snapshot_manifest *m = &t->m;
    const struct snapshot_manifest *src = &cj->src;
    _cleanup_free_ char *rnd = al_random_hex(5);
    m->image = strdup(src->image);
    m->image_id = strdup(src->image_id);
    m->machine = strdup(src->machine);
    m->accel = strdup(src->accel);
    m->cpu_model = strdup(src->cpu_model);
    m->helper = strdup(src->helper);
    m->disk_path = strdup(src->disk_path);
    m->channel_path = strdup(src->channel_path);
    m->console_log = strdup(src->console_log);
    m->seed_path = strdup(src->seed_path);
    m->qemu_version = src->qemu_version;
    m->libvirt_version = src->libvirt_version;
    m->cpus = src->cpus;
    m->memory = src->memory;
    m->uuid = al_random_uuid();
    if (rnd && asprintf(&m->domain, AL_DOMAIN_PREFIX MAKER_PREFIX "%s-0", rnd) < 0)
        m->domain = NULL;
    if (!rnd || !m->image || !m->image_id || !m->machine || !m->accel || !m->cpu_model ||
        !m->helper || !m->disk_path || !m->channel_path || !m->console_log || !m->seed_path ||
        !m->uuid || !m->domain)
        return al_error_set(err, ENOMEM, "cloning a snapshot");
    uint64_t t0 = al_now_mono_ms();
    if (link(cj->src_base, t->base) < 0)
        return al_error_set_errno(err, errno, "linking %s", t->base);
    _cleanup_free_ char *tmp = al_path_join(t->dir, "state.tmp");
    if (!tmp)
        return al_error_set(err, ENOMEM, "cloning a snapshot");
    r = copy_state(cj->src_state, tmp, src, m, err);
    if (r < 0)
        return r;
    if (rename(tmp, t->state) < 0)
        return al_error_set_errno(err, errno, "renaming %s", tmp);
    m->state_bytes = file_bytes(t->state);
    m->base_bytes = 0; /* shared with the source slot */
    m->made_ms = al_now_mono_ms() - t0;
    _cleanup_free_ char *json = NULL;
    if (snapshot_manifest_format(m, &json) < 0)
        return al_error_set(err, ENOMEM, "snapshot manifest");
    return al_write_file_atomic(t->manifest_path, json, strlen(json), 0644, err);
}

static int clone_work(void *data, struct al_error **err)
{
    (void)err;
    struct clone_job *cj = data;
    for (size_t i = 0; i < cj->n; i++) {
        struct al_error *e = NULL;
        cj->t[i].result = clone_one(cj, &cj->t[i], &e);
        if (e)
            log_warn(NULL, "backend %s: cloning a snapshot into %s failed: %s", cj->lb->b->name,
                     cj->t[i].dir, al_error_message(e));
        al_error_free(e);
    }
    return 0;
}

static void clone_job_free(struct clone_job *cj)
{
    for (size_t i = 0; i < cj->n; i++) {
        struct clone_target *t = &cj->t[i];
        free(t->dir);
        free(t->state);
        free(t->base);
        free(t->manifest_path);
        snapshot_manifest_clear(&t->m);
    }
    snapshot_manifest_clear(&cj->src);
    free(cj->src_state);
    free(cj->src_base);
    free(cj);
}

static void clone_done(void *data, int result, struct al_error *err)
{
    (void)result;
    struct clone_job *cj = data;
    struct lv_backend *lb = cj->lb;
    al_error_free(err);
    for (size_t i = 0; i < cj->n; i++) {
        struct clone_target *t = &cj->t[i];
        t->s->cloning = false;
        if (t->result < 0)
            continue;
        snapshot_manifest_clear(&t->s->m);
        t->s->m = t->m;
        t->m = (struct snapshot_manifest){0};
        t->s->loaded = true;
        t->s->broken = false;
        log_info(NULL, "backend %s: snapshot %s ready (a copy, %" PRIu64 " ms)", lb->b->name,
                 t->s->dir, t->s->m.made_ms);
    }
    clone_job_free(cj);
    lb->clones_running--;
    lv_close_continue(lb);
}

/* The slot src of this image and size was just made: the backend's other
 * slots for it that are missing or stale become copies of it. */
static void clone_start(struct lv_backend *lb, struct lv_snap_slot *src)
{
    const char *tail = strrchr(src->dir, '/');
    if (!tail)
        return;
    size_t prefix = (size_t)(tail - src->dir);
    struct clone_job *cj = calloc(1, sizeof(*cj));
    if (!cj)
        return;
    cj->lb = lb;
    cj->src_state = strdup(src->state);
    cj->src_base = strdup(src->base);
    char *json = NULL;
    struct al_error *e = NULL;
    if (!cj->src_state || !cj->src_base || snapshot_manifest_format(&src->m, &json) < 0 ||
        snapshot_manifest_parse(json, strlen(json), &cj->src, &e) < 0) {
        free(json);
        al_error_free(e);
        clone_job_free(cj);
        return;
    }
    free(json);
    for (int k = 0; k < lb->max_vms && k < 64 && cj->n < ARRAY_SIZE(cj->t); k++) {
        char dir[PATH_MAX];
        snprintf(dir, sizeof(dir), "%.*s/slot-%d", (int)prefix, src->dir, k);
        struct lv_snap_slot *s = lv_snap_slot_get(lb, dir);
        if (!s || s == src || s->maker || s->user || s->cloning || s->removing)
            continue;
        char why[200];
        if (lv_snap_slot_load(s) && !s->broken &&
            snapshot_manifest_check(&s->m, &src->m, why, sizeof(why)) == 0)
            continue;
        struct clone_target *t = &cj->t[cj->n];
        t->s = s;
        t->dir = strdup(s->dir);
        t->state = strdup(s->state);
        t->base = strdup(s->base);
        t->manifest_path = strdup(s->manifest_path);
        cj->n++;
        if (!t->dir || !t->state || !t->base || !t->manifest_path)
            break;
        s->cloning = true;
        s->loaded = false;
    }
    if (!cj->n) {
        clone_job_free(cj);
        return;
    }
    lb->clones_running++;
    if (al_work_queue(lb->b->env.loop, clone_work, clone_done, cj, NULL) < 0) {
        for (size_t i = 0; i < cj->n; i++)
            cj->t[i].s->cloning = false;
        lb->clones_running--;
        clone_job_free(cj);
    }
}

static void save_done(void *data, int result, struct al_error *err)
{
    struct snap_maker *mk = data;
    struct lv_vm *v = mk->v;
    v->worker_busy = false;
    struct lv_snap_slot *s = v->snap; /* NULL when the backend closed meanwhile */
    if (v->destroying) {
        al_error_free(err);
        if (s)
            s->maker = NULL;
        lv_destroy_continue(v);
        return;
    }
    if (result < 0) {
        log_warn(NULL, "backend %s: saving a snapshot of %s failed: %s", v->lb->b->name,
                 mk->image.name, al_error_message(err));
        if (s) {
            s->failed_ms = al_now_mono_ms();
            s->failures++;
        }
    } else {
        mk->saved = true;
    }
    al_error_free(err);
    maker_end(mk);
}

void lv_snapshot_synced(struct lv_vm *v)
{
    if (!v->snap_maker || v->snap_saving || !v->snap) {
        lv_finish(v, VM_INFRA_ERROR, 0, "the guest sent SYNCED unasked");
        return;
    }
    struct snap_maker *mk = v->base.ev_data;
    v->snap_saving = true;
    uv_timer_stop(&v->hb_timer);
    /* hang up first: the saved guest waits for a host, and greets the next */
    channel_close(v->ch);
    v->ch = NULL;
    v->worker_busy = true;
    if (al_work_queue(v->lb->b->env.loop, save_work, save_done, mk, NULL) < 0) {
        v->worker_busy = false;
        v->snap_saving = false;
        lv_finish(v, VM_INFRA_ERROR, 0, "queueing the snapshot save failed");
    }
}

/* ------------------------------------------------------------ choosing */

/* The directory of an image's snapshots of one size, a new string. */
static char *snapshot_dir(const struct vm_image *img, int cpus, uint64_t memory)
{
    _cleanup_free_ char *idir = lv_snap_image_dir(img);
    char *sdir = NULL;
    if (!idir || asprintf(&sdir, "%s/snapshots/%dc-%" PRIu64 "m", idir, cpus, memory >> 20) < 0)
        return NULL;
    return sdir;
}

/* Sweeps the image's snapshots (libvirt_snapshot_gc.c), then wants the
 * first of the size's slots that is missing or stale made, unless one is
 * being made or too many tries failed: the daemon starts with its pools'
 * snapshots made (engine_warm.c asks) rather than on the first job. */
void lv_snapshot_prepare(struct lv_backend *lb, const struct vm_request *req)
{
    /* a remote transport's VMs boot (lv_snapshot_choose): nothing to make */
    if (lb->remote || !req->image)
        return;
    lv_snapshot_sweep(lb, req->image);
    if (req->start == VM_START_BOOT || req->disk_bytes > req->image->virtual_size)
        return;
    _cleanup_free_ char *sdir = snapshot_dir(req->image, req->cpus, req->memory);
    struct snapshot_manifest want = {0};
    if (!sdir || lv_snap_conditions(lb, req->image, req->cpus, req->memory, &want) < 0)
        return;
    struct lv_snap_slot *to_make = NULL;
    for (int k = 0; k < lb->max_vms && k < 64; k++) {
        char dir[PATH_MAX], why[200];
        snprintf(dir, sizeof(dir), "%s/slot-%d", sdir, k);
        struct lv_snap_slot *s = lv_snap_slot_get(lb, dir);
        if (!s || s->maker || s->cloning || s->wait_img) {
            to_make = NULL; /* being made, or about to be */
            break;
        }
        if (!to_make && !s->user &&
            (!lv_snap_slot_load(s) || s->broken ||
             snapshot_manifest_check(&s->m, &want, why, 200) < 0))
            to_make = s;
    }
    snapshot_manifest_clear(&want);
    if (to_make && (to_make->failures < MAKER_TRIES ||
                    al_now_mono_ms() - to_make->failed_ms >= MAKER_RETRY_MS))
        maker_want(lb, to_make, req->image, req->cpus, req->memory);
}

void lv_snapshot_choose(struct lv_vm *v)
{
    struct lv_backend *lb = v->lb;
    v->snap_fb = -1;
    if (v->req.warm || v->req.start == VM_START_BOOT)
        return;
    if (v->inject == INJECT_GUESTFS) {
        set_fallback(v, SNAPSHOT_FB_UNSUPPORTED, "inject = guestfs VMs boot");
        return;
    }
    if (lb->remote) {
        /* saved state, its base disk and its manifest are files of this host */
        set_fallback(v, SNAPSHOT_FB_UNSUPPORTED, "VMs of a remote transport boot");
        return;
    }
    if (v->req.disk_bytes > v->image->virtual_size) {
        /* the saved guest knows its disk's size */
        set_fallback(v, SNAPSHOT_FB_UNSUPPORTED, "a disk larger than the image's");
        return;
    }
    _cleanup_free_ char *sdir = snapshot_dir(v->image, v->req.cpus, v->req.memory);
    if (!sdir) {
        set_fallback(v, SNAPSHOT_FB_NONE, "out of memory");
        return;
    }
    struct snapshot_manifest want = {0};
    if (lv_snap_conditions(lb, v->image, v->req.cpus, v->req.memory, &want) < 0) {
        set_fallback(v, SNAPSHOT_FB_NONE, "out of memory");
        return;
    }
    struct lv_snap_slot *chosen = NULL, *to_make = NULL;
    unsigned making = 0, busy = 0, stale = 0;
    char stale_why[200] = "";
    bool stale_changed = false;
    for (int k = 0; k < lb->max_vms && k < 64; k++) {
        char dir[PATH_MAX];
        snprintf(dir, sizeof(dir), "%s/slot-%d", sdir, k);
        struct lv_snap_slot *s = lv_snap_slot_get(lb, dir);
        if (!s)
            break;
        if (s->maker || s->cloning) {
            making++;
            continue;
        }
        if (s->user) {
            busy++;
            continue;
        }
        if (!lv_snap_slot_load(s)) {
            if (!to_make)
                to_make = s;
            continue;
        }
        char why[200];
        bool changed = snapshot_manifest_check(&s->m, &want, why, sizeof(why)) < 0;
        if (changed || s->broken) {
            /* what changed says more than a failed restore */
            if (!stale++ || (changed && !stale_changed))
                snprintf(stale_why, sizeof(stale_why), "%s",
                         changed ? why : "its last restore failed");
            stale_changed |= changed;
            if (changed) /* garbage now, not when remade */
                lv_snapshot_gc_slot(lb, s);
            if (!to_make)
                to_make = s;
            continue;
        }
        if (!chosen)
            chosen = s;
    }
    if (chosen) {
        v->snap = chosen;
        chosen->user = v;
        v->restore = true;
        v->restore_state = strdup(chosen->state);
        if (!v->restore_state) {
            chosen->user = NULL;
            v->snap = NULL;
            v->restore = false;
            set_fallback(v, SNAPSHOT_FB_NONE, "out of memory");
        }
    } else if (stale) {
        set_fallback(v, SNAPSHOT_FB_STALE, "%s", stale_why);
    } else if (busy) {
        set_fallback(v, SNAPSHOT_FB_BUSY, "all %u snapshot slots are in use", busy);
    } else {
        set_fallback(v, SNAPSHOT_FB_NONE, "%s",
                     making                          ? "the snapshot is being made"
                     : to_make && to_make->failed_ms ? "making the snapshot failed; retried later"
                                                     : "no snapshot of this image and size");
    }
    /* one maker per image and size at a time: each is a boot */
    if (to_make && to_make->failures >= MAKER_TRIES) {
        if (al_now_mono_ms() - to_make->failed_ms < MAKER_RETRY_MS)
            to_make = NULL;
        else
            to_make->failures = 0;
    }
    if (to_make && !making)
        maker_want(lb, to_make, v->image, v->req.cpus, v->req.memory);
    snapshot_manifest_clear(&want);
}

const char *lv_snapshot_base(const struct lv_snap_slot *s)
{
    return s->base;
}

const char *lv_snapshot_domain(const struct lv_snap_slot *s)
{
    return s->m.domain;
}

void lv_snapshot_release(struct lv_vm *v)
{
    struct lv_snap_slot *s = v->snap;
    if (!s)
        return;
    if (s->user == v)
        s->user = NULL;
    if (s->maker == v)
        s->maker = NULL;
    v->snap = NULL;
}

/* ----------------------------------------------------------- restoring */

static bool xml_plain(const char *s)
{
    return s && !strpbrk(s, "&<>'\"");
}

/* The saved XML made this job's: its disk, channel, console log and seed,
 * and metadata that names the job (so a restarted daemon knows the VM). */
static int restore_xml(struct lv_vm *v, const struct snapshot_manifest *m, char **ret,
                       struct al_error **err)
{
    char *xml = virDomainSaveImageGetXMLDesc(v->lb->conn, v->restore_state,
                                             VIR_DOMAIN_SAVE_IMAGE_XML_SECURE);
    if (!xml)
        return al_error_set(err, EIO, "reading the snapshot's XML: %s", lv_libvirt_msg());
    const char *pairs[][2] = {
            {m->disk_path, v->vol_path},
            {m->channel_path, v->channel_path},
            {m->console_log, v->console_log},
            {m->seed_path, *m->seed_path ? v->seed_path : ""},
    };
    int r = 0;
    for (size_t i = 0; i < ARRAY_SIZE(pairs) && r == 0; i++) {
        if (!xml_plain(pairs[i][0]) || !xml_plain(pairs[i][1]))
            r = al_error_set(err, EINVAL, "a path of the snapshot cannot be replaced");
        else if (al_str_replace_all(&xml, pairs[i][0], pairs[i][1]) < 0)
            r = al_error_set(err, ENOMEM, "restore XML");
    }
    /* the metadata: what the maker had, as this job's */
    const char *a = r == 0 ? strstr(xml, "<metadata>") : NULL;
    const char *b = a ? strstr(a, "</metadata>") : NULL;
    if (r == 0 && b) {
        _cleanup_buf_ struct al_buf nb = AL_BUF_INIT;
        int w = al_buf_append(&nb, xml, (size_t)(a - xml));
        if (w == 0)
            w = al_buf_puts(&nb, "<metadata><" AL_XML_NS_PREFIX ":vm xmlns:" AL_XML_NS_PREFIX
                                 "='" AL_XML_NS "' job='");
        if (w == 0)
            w = al_xml_escape_append(&nb, v->req.job_id);
        if (w == 0)
            w = al_buf_printf(&nb, "' attempt='%d' owner='", v->req.attempt);
        if (w == 0)
            w = al_xml_escape_append(&nb, v->lb->b->env.owner_id);
        if (w == 0)
            w = al_buf_puts(&nb, "' backend='");
        if (w == 0)
            w = al_xml_escape_append(&nb, v->lb->b->name);
        if (w == 0)
            w = al_buf_puts(&nb, "' image='");
        if (w == 0)
            w = al_xml_escape_append(&nb, v->image->name);
        if (w == 0)
            w = al_buf_puts(&nb, "'/></metadata>");
        if (w == 0)
            w = al_buf_puts(&nb, b + strlen("</metadata>"));
        if (w < 0) {
            r = al_error_set(err, ENOMEM, "restore XML");
        } else {
            free(xml);
            xml = al_buf_steal(&nb);
            if (!xml)
                r = al_error_set(err, ENOMEM, "restore XML");
        }
    }
    if (r < 0) {
        free(xml);
        return r;
    }
    *ret = xml;
    return 0;
}

int lv_snapshot_restore_work(struct lv_vm *v, struct al_error **err)
{
    struct lv_snap_slot *s = v->snap;
    struct al_error *rerr = NULL;
    _cleanup_free_ char *xml = NULL;
    int r = s ? restore_xml(v, &s->m, &xml, &rerr) : al_error_set(&rerr, EINVAL, "no slot");
    if (r == 0) {
        uint64_t t = al_now_mono_ms();
        if (virDomainRestoreFlags(v->lb->conn, v->restore_state, xml, VIR_DOMAIN_SAVE_RUNNING) < 0)
            r = al_error_set(&rerr, EIO, "%s", lv_libvirt_msg());
        else if (!(v->dom = virDomainLookupByName(v->lb->conn, v->base.name)))
            r = al_error_set(&rerr, EIO, "the restored domain: %s", lv_libvirt_msg());
        v->result.us_provision_api += (al_now_mono_ms() - t) * 1000u;
    }
    if (r == 0) {
        v->restored = true;
        return 0;
    }
    /* fall back to a boot of its own: a fresh overlay on the image itself */
    free(v->snap_fallback);
    if (asprintf(&v->snap_fallback, "%s: %s", snapshot_fallback_name(SNAPSHOT_FB_RESTORE_FAILED),
                 al_error_message(rerr)) < 0)
        v->snap_fallback = NULL;
    v->snap_fb = SNAPSHOT_FB_RESTORE_FAILED;
    al_error_free(rerr);
    if (v->dom) {
        virDomainDestroy(v->dom);
        virDomainFree(v->dom);
        v->dom = NULL;
    }
    r = lv_boot_instead(v, err);
    if (r < 0)
        return r;
    v->dom = virDomainCreateXML(v->lb->conn, v->domain_xml, 0);
    if (!v->dom)
        return al_error_set(err, EIO, "starting the VM: %s", lv_libvirt_msg());
    return 0;
}

void lv_snapshot_restored(struct lv_vm *v)
{
    snapshot_count_restore();
    uint8_t entropy[64];
    _cleanup_free_ char *hostname = lv_make_hostname(v->req.job_id);
    _cleanup_free_ char *machine_id = al_random_hex(16);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct al_tlv_buf b = {0};
    int r = hostname && machine_id && al_random_bytes(entropy, sizeof(entropy)) == 0 ? 0 : -ENOMEM;
    if (r == 0)
        r = al_tlv_add(&b, AL_TLV_ENTROPY, entropy, sizeof(entropy));
    if (r == 0)
        r = al_tlv_add_u64(&b, AL_TLV_CLOCK_NS,
                           (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec);
    if (r == 0)
        r = al_tlv_add_str(&b, AL_TLV_HOSTNAME, hostname);
    if (r == 0)
        r = al_tlv_add_str(&b, AL_TLV_MACHINE_ID, machine_id);
    if (r == 0)
        r = channel_send(v->ch, AL_FRAME_FRESHEN, b.data, b.len);
    explicit_bzero(entropy, sizeof(entropy));
    al_tlv_buf_free(&b);
    if (r < 0) {
        lv_finish(v, VM_INFRA_ERROR, 0, "freshening the restored guest failed");
        return;
    }
    /* the helper greeted the maker already; the job goes out now */
    v->hello = true;
    lv_phase(v, VM_PHASE_CONNECTED);
    if (!v->finished && !v->destroying)
        lv_deliver(v, false);
}

void lv_snapshot_fallen_back(struct lv_vm *v)
{
    if (v->snap_fb < 0)
        return;
    snapshot_count_fallback((enum snapshot_fallback)v->snap_fb);
    if (v->snap && v->snap_fb == SNAPSHOT_FB_RESTORE_FAILED)
        v->snap->broken = true;
    char msg[400];
    snprintf(msg, sizeof(msg), "start: booting instead of restoring a snapshot (%s)",
             v->snap_fallback ? v->snap_fallback : snapshot_fallback_name(v->snap_fb));
    log_info(v->req.job_id, "%s", msg);
    if (v->base.ev->diag)
        v->base.ev->diag(&v->base, msg, v->base.ev_data);
    v->snap_fb = -1;
}
