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
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libvirt/libvirt.h>
#include <stdarg.h>
#include <libvirt/virterror.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "provision/accel.h"
#include "provision/backend.h"
#include "provision/channel.h"
#include "provision/cloudinit.h"
#include "provision/domain_xml.h"
#include "provision/guest_job.h"
#include "provision/guestfs_inject.h"
#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/base/xml.h"
#include "runner/base/hardlimits.h"
#include "runner/loop/work.h"
#include "provision/seed_iso.h"

#define CONNECT_TIMEOUT_MS 15000
#define CONSOLE_TAIL_BYTES 1500
/* inject = guestfs: overlays ready within this window share one libguestfs
 * appliance (its launch is seconds, the window a rounding error) */
#define INJECT_WINDOW_MS 200
#define INJECT_BATCH_MAX 16

struct lv_vm;

struct lv_backend {
    struct backend *b;
    virConnectPtr conn;
    int lifecycle_id;
    struct accel_result accel;
    char *pool_name;
    char *pool_dir;
    char *vms_dir; /* <run_dir>/vms */
    int max_vms;
    int vcpus;
    uint64_t memory;
    char *gateway;   /* the network's IPv4 host address, for the egress filter */
    char **gateway6; /* its IPv6 host addresses (NULL-terminated), dropped */
    struct lv_vm *vms;
    bool conn_dead;      /* libvirtd closed the connection */
    uint64_t last_retry; /* ms, of the last reconnect attempt */
    char conn_error[160];
    char health[160];
    /* inject = guestfs: overlays waiting for the next shared appliance */
    struct lv_vm *inject_head, **inject_tail;
    uv_timer_t *inject_timer; /* the coalescing window; heap: closes after lb */
    bool inject_running;      /* one batch at a time */
};

struct lv_vm {
    struct vm base;
    struct lv_backend *lb;
    struct lv_vm *next;
    struct vm_request req; /* the strings belong to the caller */
    int inject;
    struct vm_image *image; /* our copy of the request's */
    char *run_dir;
    char *channel_path;
    char *seed_path;
    char *console_log;
    char *vol_name;
    char *vol_path;
    char *meta_data;
    char *user_data;
    char *domain_xml;
    struct al_tlv_buf job;
    virDomainPtr dom;
    struct channel *ch;
    uv_timer_t hb_timer;
    bool hb_timer_open;
    uint64_t t0;
    uint64_t last_frame_ms;
    struct vm_result result;
    char *cmdline;
    enum accel_kind accel; /* what the domain is started under */
    uint64_t t_started;    /* ms (monotonic) the domain started, 0 before */
    bool alive;            /* the kernel wrote to the console */
    bool hello;
    bool assigned; /* a warm VM got its job */
    bool finished;
    bool worker_busy;
    bool injected;             /* inject = guestfs: the seed is in the overlay */
    struct lv_vm *inject_next; /* in lb's inject queue */
    bool destroying;
    backend_done_cb destroy_done;
    void *destroy_data;
};

static void finish(struct lv_vm *v, enum vm_outcome outcome, int exit_code, const char *fmt, ...)
        _printf_(4, 5);
static void destroy_continue(struct lv_vm *v);
static bool lv_ensure_conn(struct lv_backend *lb);

static void quiet_libvirt_errors(void *data, virErrorPtr e)
{
    (void)data;
    (void)e;
}

static const char *libvirt_msg(void)
{
    const char *m = virGetLastErrorMessage();
    return m && *m ? m : "unknown libvirt error";
}

static uint64_t since_ms(const struct lv_vm *v)
{
    uint64_t t = al_now_mono_ms() - v->t0;
    return t ? t : 1;
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

static struct lv_vm *find_vm(struct lv_backend *lb, const char *name)
{
    for (struct lv_vm *v = lb->vms; v; v = v->next) {
        if (streq(v->base.name, name))
            return v;
    }
    return NULL;
}

/* The decisive part of the serial console for errors about guests that
 * died: the kernel's panic line when there is one, then the last line. */
static char *console_tail(const struct lv_vm *v)
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
static void note_limit(struct lv_vm *v, enum al_limit l)
{
    if (v->result.limits & (1u << l))
        return;
    v->result.limits |= 1u << l;
    v->base.limits = v->result.limits;
    limits_hit(l);
}

/* The channel's rate limit slowed the guest down: say so once, and keep the
 * time it was held back for the result. */
static void note_throttling(struct lv_vm *v)
{
    uint64_t ms = 0;
    channel_throttle_stats(v->ch, &ms, NULL);
    v->result.throttled_ms = ms;
    if (!ms || (v->result.limits & (1u << AL_LIMIT_CHANNEL_RATE)))
        return;
    note_limit(v, AL_LIMIT_CHANNEL_RATE);
    log_warn(v->req.job_id, "the guest sends faster than the channel allows; slowing it down");
}

static void finish(struct lv_vm *v, enum vm_outcome outcome, int exit_code, const char *fmt, ...)
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
        v->result.t_exited = since_ms(v);
    if (v->hb_timer_open)
        uv_timer_stop(&v->hb_timer);
    if (v->ch) {
        note_throttling(v);
        channel_close(v->ch);
        v->ch = NULL;
    }
    if (v->base.ev->finished)
        v->base.ev->finished(&v->base, &v->result, v->base.ev_data);
}

static void phase(struct lv_vm *v, enum vm_phase p)
{
    vm_phase_reached(&v->base, &v->result, p, since_ms(v));
}

/* ------------------------------------------------------------- channel */

static void tlv_text(const uint8_t *val, uint32_t len, char *out, size_t size)
{
    size_t n = len < size - 1 ? len : size - 1;
    for (size_t i = 0; i < n; i++)
        out[i] = (val[i] >= 0x20 && val[i] < 0x7f) ? (char)val[i] : '?';
    out[n] = '\0';
}

static void on_workdir_sent(struct channel *ch, int result, void *data)
{
    (void)ch;
    struct lv_vm *v = data;
    if (result < 0 && !v->finished)
        finish(v, VM_INFRA_ERROR, 0, "sending the work directory to the guest: %s",
               strerror(-result));
}

static int send_tlv(struct lv_vm *v, uint8_t type, const struct al_tlv_buf *b)
{
    return channel_send(v->ch, type, b->data, b->len);
}

static void deliver(struct lv_vm *v, bool has_job);

static void handle_hello(struct lv_vm *v, const struct al_frame *f)
{
    if (v->hello)
        return; /* the helper repeats HELLO until it hears from us */
    struct al_tlv_iter it;
    al_tlv_iter_init(&it, f->payload, f->len);
    uint16_t tag;
    const uint8_t *val;
    uint32_t len;
    int r;
    bool has_job = false;
    uint64_t version = 0;
    while ((r = al_tlv_next(&it, &tag, &val, &len)) == 1) {
        if (tag == AL_TLV_VERSION && al_tlv_value_u64(val, len, &version) < 0) {
            finish(v, VM_INFRA_ERROR, 0, "the guest sent a bad HELLO version");
            return;
        }
        if (tag == AL_TLV_JOB_ID) {
            if (len != strlen(v->req.job_id) || memcmp(val, v->req.job_id, len) != 0) {
                finish(v, VM_INFRA_ERROR, 0, "the guest holds a different job");
                return;
            }
            has_job = true;
        }
    }
    if (r < 0 || version != AL_PROTO_VERSION) {
        finish(v, VM_INFRA_ERROR, 0, "the guest speaks protocol version %" PRIu64 ", not %d",
               version, AL_PROTO_VERSION);
        return;
    }
    v->hello = true;
    phase(v, VM_PHASE_CONNECTED);
    /* a warm VM waits here, idle, until assign() brings a job */
    if (v->req.warm && !v->assigned)
        return;
    deliver(v, has_job);
}

/* Sends the job (unless the guest has it from cloud-init), the secrets, the
 * work dir and START. */
static void deliver(struct lv_vm *v, bool has_job)
{
    struct al_error *err = NULL;
    struct al_tlv_buf secrets = {0};
    int r;
    if (!has_job && send_tlv(v, AL_FRAME_JOB, &v->job) < 0)
        goto fail;
    if (v->req.n_secret_env) {
        if (guest_secrets_encode(&v->req, &secrets, &err) < 0)
            goto fail;
        r = send_tlv(v, AL_FRAME_SECRETS, &secrets);
        explicit_bzero(secrets.data, secrets.len);
        al_tlv_buf_free(&secrets);
        if (r < 0)
            goto fail;
    }
    if (v->req.workdir_tar && channel_send_file(v->ch, AL_FRAME_WORKDIR, AL_FRAME_WORKDIR_END,
                                                v->req.workdir_tar, on_workdir_sent, v) < 0)
        goto fail;
    if (channel_send(v->ch, AL_FRAME_START, NULL, 0) < 0)
        goto fail;
    return;
fail:
    finish(v, VM_INFRA_ERROR, 0, "delivering the job to the guest failed%s%s", err ? ": " : "",
           err ? al_error_message(err) : "");
    al_error_free(err);
}

static void handle_artifact_end(struct lv_vm *v, const struct al_frame *f)
{
    struct al_tlv_iter it;
    al_tlv_iter_init(&it, f->payload, f->len);
    uint16_t tag;
    const uint8_t *val;
    uint32_t len;
    while (al_tlv_next(&it, &tag, &val, &len) == 1) {
        if (tag == AL_TLV_BYTES)
            al_tlv_value_u64(val, len, &v->result.artifact_bytes);
        else if (tag == AL_TLV_FILES)
            al_tlv_value_u64(val, len, &v->result.artifact_files);
        else if (tag == AL_TLV_ERROR)
            tlv_text(val, len, v->result.artifact_error, sizeof(v->result.artifact_error));
    }
}

static void handle_exit(struct lv_vm *v, const struct al_frame *f)
{
    struct al_tlv_iter it;
    al_tlv_iter_init(&it, f->payload, f->len);
    uint16_t tag;
    const uint8_t *val;
    uint32_t len;
    uint64_t code = 0, sig = 0, timed_out = 0;
    bool have_code = false;
    char reason[128] = "exited";
    int r;
    while ((r = al_tlv_next(&it, &tag, &val, &len)) == 1) {
        if (tag == AL_TLV_EXIT_CODE)
            have_code = al_tlv_value_u64(val, len, &code) == 0 && code <= 255;
        else if (tag == AL_TLV_SIGNAL)
            al_tlv_value_u64(val, len, &sig);
        else if (tag == AL_TLV_TIMED_OUT)
            al_tlv_value_u64(val, len, &timed_out);
        else if (tag == AL_TLV_REASON)
            tlv_text(val, len, reason, sizeof(reason));
    }
    if (r < 0 || !have_code) {
        finish(v, VM_INFRA_ERROR, 0, "the guest sent a malformed EXIT frame");
        return;
    }
    v->result.signal = sig < 128 ? (int)sig : 0;
    v->result.t_exited = since_ms(v);
    if (timed_out)
        finish(v, VM_GUEST_TIMEOUT, (int)code, "the workload timed out in the guest");
    else if (streq(reason, "canceled"))
        finish(v, VM_CANCELED, (int)code, "canceled");
    else if (sig)
        finish(v, VM_EXITED, (int)code, "the workload was killed by signal %" PRIu64, sig);
    else
        finish(v, VM_EXITED, (int)code, "the workload exited with status %" PRIu64, code);
}

static void on_frame(struct channel *ch, const struct al_frame *f, void *data)
{
    (void)ch;
    struct lv_vm *v = data;
    if (v->finished)
        return;
    v->last_frame_ms = al_now_mono_ms();
    if (!v->hello && f->type != AL_FRAME_HELLO && f->type != AL_FRAME_DIAG) {
        finish(v, VM_INFRA_ERROR, 0, "the guest sent frame type %u before HELLO", f->type);
        return;
    }
    switch (f->type) {
    case AL_FRAME_HELLO:
        handle_hello(v, f);
        break;
    case AL_FRAME_STARTED:
        if (!v->result.t_running)
            phase(v, VM_PHASE_RUNNING);
        break;
    case AL_FRAME_STDOUT:
    case AL_FRAME_STDERR:
        if (v->base.ev->output && f->len)
            v->base.ev->output(&v->base, f->type == AL_FRAME_STDOUT ? VM_STDOUT : VM_STDERR,
                               f->payload, f->len, v->base.ev_data);
        break;
    case AL_FRAME_HEARTBEAT:
        break;
    case AL_FRAME_DIAG: {
        struct al_tlv_iter it;
        al_tlv_iter_init(&it, f->payload, f->len);
        uint16_t tag;
        const uint8_t *val;
        uint32_t len;
        while (al_tlv_next(&it, &tag, &val, &len) == 1) {
            if (tag == AL_TLV_REASON && v->base.ev->diag) {
                char msg[512];
                tlv_text(val, len, msg, sizeof(msg));
                v->base.ev->diag(&v->base, msg, v->base.ev_data);
            }
        }
        break;
    }
    case AL_FRAME_ARTIFACT:
        if (v->base.ev->artifact && f->len)
            v->base.ev->artifact(&v->base, f->payload, f->len, v->base.ev_data);
        break;
    case AL_FRAME_ARTIFACT_END:
        handle_artifact_end(v, f);
        break;
    case AL_FRAME_EXIT:
        handle_exit(v, f);
        break;
    default:
        finish(v, VM_INFRA_ERROR, 0, "the guest sent a host-only frame (type %u)", f->type);
        break;
    }
}

static void on_channel_closed(struct channel *ch, int result, const char *message, void *data)
{
    (void)ch;
    struct lv_vm *v = data;
    _cleanup_free_ char *tail = console_tail(v);
    if (result == -EMSGSIZE)
        note_limit(v, AL_LIMIT_FRAME_SIZE);
    if (result == -EPROTO || result == -EMSGSIZE)
        finish(v, VM_INFRA_ERROR, 0, "protocol violation: %s", message);
    else if (!v->hello)
        finish(v, VM_INFRA_ERROR, 0,
               "the VM went away before reporting a result: its channel closed before the guest "
               "helper started%s%s",
               tail ? "; console: " : "", tail ? tail : "");
    else
        finish(v, VM_INFRA_ERROR, 0, "the VM went away before reporting a result (%s)%s%s", message,
               tail ? "; console: " : "", tail ? tail : "");
}

static const struct channel_ops channel_ops = {
        .frame = on_frame,
        .closed = on_channel_closed,
};

/* What the verdict is now: a watchdog may have turned KVM down since. */
static enum accel_kind lv_accel_now(struct lv_backend *lb)
{
    if (lb->b->cfg->libvirt.accel == ACCEL_AUTO) {
        struct accel_probe_opts o = {.mode = ACCEL_AUTO,
                                     .cache_dir = lb->b->env.run_dir};
        struct accel_result r;
        if (accel_probe(&o, &r, NULL) == 0)
            lb->accel = r;
    }
    return lb->accel.kind;
}

/* A Linux kernel on the console: its banner, or a line with a printk time
 * stamp ("[    1.234567] ..."; a kernel booted with quiet prints few). */
static bool console_shows_life(const char *path)
{
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return false;
    char buf[64 * 1024];
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n <= 0)
        return false;
    if (memmem(buf, (size_t)n, "Linux version ", 14))
        return true;
    for (ssize_t i = 0; i + 1 < n; i++) {
        if (buf[i] != '[' || (i > 0 && buf[i - 1] != '\n'))
            continue;
        ssize_t k = i + 1;
        while (k < n && buf[k] == ' ')
            k++;
        ssize_t d = k;
        while (k < n && buf[k] >= '0' && buf[k] <= '9')
            k++;
        if (k > d && k < n && buf[k] == '.')
            return true;
    }
    return false;
}

/* The boot watchdog: a guest that shows no sign of life within the bound
 * of its accelerator is ended. Under KVM (chosen by the probe, not forced)
 * that also turns KVM down for this boot of the host: the probe passed, yet
 * guests hang, so every later VM starts under TCG. Returns true when it
 * ended the VM. */
static bool boot_watchdog(struct lv_vm *v)
{
    const struct backend_settings *bc = v->lb->b->cfg;
    int64_t bound_s = v->accel == ACCEL_KIND_KVM ? bc->libvirt.boot_watchdog_s : bc->libvirt.boot_watchdog_tcg_s;
    if (bound_s <= 0 || !v->t_started || !v->console_log)
        return false;
    if (console_shows_life(v->console_log)) {
        v->alive = true;
        return false;
    }
    if (al_now_mono_ms() - v->t_started < (uint64_t)bound_s * 1000u)
        return false;
    char reason[256];
    snprintf(reason, sizeof(reason),
             "a guest showed no sign of life %" PRId64 " s after it started under %s (no kernel "
             "output on its console, no hello from its helper)",
             bound_s, v->accel == ACCEL_KIND_KVM ? "KVM" : "TCG");
    bool forced_kvm = bc->libvirt.accel == ACCEL_KVM;
    if (v->accel == ACCEL_KIND_KVM && !forced_kvm) {
        if (accel_mark_kvm_unusable(v->lb->b->env.run_dir, reason))
            log_warn(v->req.job_id,
                     "backend %s: KVM is not usable (%s); VMs run under TCG software emulation "
                     "from now on",
                     v->lb->b->name, reason);
        (void)lv_accel_now(v->lb);
    }
    v->result.silent_boot = !forced_kvm;
    finish(v, VM_INFRA_ERROR, 0, "%s", reason);
    return true;
}

static void on_heartbeat_check(uv_timer_t *t)
{
    struct lv_vm *v = t->data;
    if (v->ch && !v->finished)
        note_throttling(v);
    if (!v->hello && !v->alive && !v->finished && boot_watchdog(v))
        return;
    if (!v->hello || v->finished)
        return;
    uint64_t limit = (uint64_t)v->lb->b->env.heartbeat_timeout_s * 1000u;
    uint64_t quiet = al_now_mono_ms() - v->last_frame_ms;
    if (quiet > limit)
        finish(v, VM_INFRA_ERROR, 0, "the guest sent nothing for %" PRIu64 " s (heartbeat lost)",
               quiet / 1000u);
}

/* -------------------------------------------------------------- workers */

static int ensure_pool(struct lv_backend *lb, struct al_error **err)
{
    virStoragePoolPtr pool = virStoragePoolLookupByName(lb->conn, lb->pool_name);
    if (pool) {
        int active = virStoragePoolIsActive(pool);
        if (active == 0 && virStoragePoolCreate(pool, 0) < 0) {
            int r = al_error_set(err, EIO, "starting storage pool %s: %s", lb->pool_name,
                                 libvirt_msg());
            virStoragePoolFree(pool);
            return r;
        }
        virStoragePoolFree(pool);
        return 0;
    }
    int r = al_mkdir_p(lb->pool_dir, 0711, err);
    if (r < 0)
        return r;
    _cleanup_free_ char *xml = NULL;
    r = pool_xml_build(lb->pool_name, lb->pool_dir, &xml, err);
    if (r < 0)
        return r;
    pool = virStoragePoolCreateXML(lb->conn, xml, 0);
    if (!pool) {
        /* another process may have created it meanwhile */
        pool = virStoragePoolLookupByName(lb->conn, lb->pool_name);
        if (!pool)
            return al_error_set(err, EIO, "creating storage pool %s: %s", lb->pool_name,
                                libvirt_msg());
    }
    virStoragePoolFree(pool);
    return 0;
}

static int provision_work(void *data, struct al_error **err)
{
    struct lv_vm *v = data;
    struct lv_backend *lb = v->lb;
    int r = al_mkdir_p(v->run_dir, 0711, err);
    if (r < 0)
        return r;
    /* the owner file lets gc attribute leftovers of a VM that never got a domain */
    _cleanup_free_ char *owner_path = al_path_join(v->run_dir, "owner");
    _cleanup_free_ char *owner_line = NULL;
    if (!owner_path ||
        asprintf(&owner_line, "%s %s %d\n", lb->b->env.owner_id, v->req.job_id, v->req.attempt) < 0)
        return al_error_set(err, ENOMEM, "owner file");
    r = al_write_file_atomic(owner_path, owner_line, strlen(owner_line), 0644, err);
    if (r < 0)
        return r;

    uint64_t t_api = al_now_mono_us();
    r = ensure_pool(lb, err);
    if (r < 0)
        return r;
    virStoragePoolPtr pool = virStoragePoolLookupByName(lb->conn, lb->pool_name);
    if (!pool)
        return al_error_set(err, EIO, "storage pool %s: %s", lb->pool_name, libvirt_msg());
    uint64_t cap = v->image->virtual_size;
    if (v->req.disk_bytes > cap)
        cap = v->req.disk_bytes;
    _cleanup_free_ char *vol_xml = NULL;
    r = volume_xml_build(v->vol_name, v->image->disk, cap, &vol_xml, err);
    if (r < 0) {
        virStoragePoolFree(pool);
        return r;
    }
    virStorageVolPtr vol = virStorageVolCreateXML(pool, vol_xml, 0);
    virStoragePoolFree(pool);
    if (!vol)
        return al_error_set(err, EIO, "creating the overlay %s: %s", v->vol_name, libvirt_msg());
    v->vol_path = virStorageVolGetPath(vol);
    virStorageVolFree(vol);
    if (!v->vol_path)
        return al_error_set(err, EIO, "overlay path: %s", libvirt_msg());
    /* read on the loop thread only after this work item completed */
    v->result.us_provision_api = al_now_mono_us() - t_api;

    /* guestfs injection comes after, batched on the loop (inject_queue) */
    if (v->inject != INJECT_GUESTFS) {
        r = seed_iso_write(v->seed_path, 0644, v->meta_data, v->user_data, NULL, err);
        if (r < 0)
            return al_error_wrap(err, "writing the seed ISO");
    }

    struct domain_params dp = {
            .name = v->base.name,
            .domain_type = v->accel == ACCEL_KIND_KVM ? "kvm" : "qemu",
            .emulator = *lb->b->cfg->libvirt.emulator ? lb->b->cfg->libvirt.emulator : NULL,
            .vcpus = v->req.cpus,
            .memory = v->req.memory,
            .kernel = v->image->kernel,
            .initrd = v->image->initrd,
            .cmdline = v->cmdline,
            .disk_path = v->vol_path,
            .disk_format = "qcow2",
            .seed_path = v->inject == INJECT_GUESTFS ? NULL : v->seed_path,
            .channel_path = v->channel_path,
            .console_log = v->console_log,
            .network = *lb->b->cfg->libvirt.network ? lb->b->cfg->libvirt.network : NULL,
            .gateway = lb->gateway,
            .gateways6 = lb->gateway6,
            .job_id = v->req.job_id,
            .attempt = v->req.attempt,
            .owner = lb->b->env.owner_id,
            .backend = lb->b->name,
            .image = v->image->name,
    };
    return domain_xml_build(&dp, &v->domain_xml, err);
}

static int start_work(void *data, struct al_error **err)
{
    struct lv_vm *v = data;
    v->dom = virDomainCreateXML(v->lb->conn, v->domain_xml, 0);
    if (!v->dom)
        return al_error_set(err, EIO, "starting the VM: %s", libvirt_msg());
    return 0;
}

static void on_started(void *data, int result, struct al_error *err)
{
    struct lv_vm *v = data;
    v->worker_busy = false;
    if (v->destroying) {
        al_error_free(err);
        destroy_continue(v);
        return;
    }
    if (result < 0) {
        finish(v, VM_INFRA_ERROR, 0, "%s", al_error_message(err));
        al_error_free(err);
        return;
    }
    v->t_started = al_now_mono_ms();
    phase(v, VM_PHASE_BOOTING);
    struct al_error *cerr = NULL;
    const struct backend_env *ac = &v->lb->b->env;
    int r = channel_open(v->lb->b->env.loop, v->channel_path, CONNECT_TIMEOUT_MS,
                         (uint32_t)ac->channel_max_frame_bytes, &channel_ops, v, &v->ch, &cerr);
    if (r < 0) {
        finish(v, VM_INFRA_ERROR, 0, "opening the channel: %s", al_error_message(cerr));
        al_error_free(cerr);
        return;
    }
    channel_set_rate_limit(v->ch, ac->channel_max_bytes_per_s,
                           (uint64_t)ac->channel_max_frames_per_s);
    v->last_frame_ms = al_now_mono_ms();
    uv_timer_start(&v->hb_timer, on_heartbeat_check, 1000, 1000);
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
            destroy_continue(v);
        } else if (result < 0 || ib->results[i] < 0) {
            const struct al_error *e = result < 0 ? err : ib->errs[i];
            finish(v, VM_INFRA_ERROR, 0, "injecting cloud-init data with libguestfs: %s",
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
    if (lb->inject_running || !lb->inject_head)
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
    while (lb->inject_head && ib->n < INJECT_BATCH_MAX) {
        struct lv_vm *v = lb->inject_head;
        lb->inject_head = v->inject_next;
        v->inject_next = NULL;
        if (v->destroying) {
            v->worker_busy = false;
            destroy_continue(v);
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
    if (!lb->inject_head)
        lb->inject_tail = &lb->inject_head;
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

static void on_inject_timer_closed(uv_handle_t *h)
{
    free(h);
}

/* Queues v for the next shared appliance; v stays worker_busy until its
 * batch completes, so a destroy meanwhile waits for it. */
static void inject_queue(struct lv_vm *v)
{
    struct lv_backend *lb = v->lb;
    if (!lb->inject_tail)
        lb->inject_tail = &lb->inject_head;
    v->worker_busy = true;
    v->inject_next = NULL;
    *lb->inject_tail = v;
    lb->inject_tail = &v->inject_next;
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

static void on_provisioned(void *data, int result, struct al_error *err)
{
    struct lv_vm *v = data;
    v->worker_busy = false;
    if (v->destroying) {
        al_error_free(err);
        destroy_continue(v);
        return;
    }
    if (result < 0) {
        finish(v, VM_INFRA_ERROR, 0, "%s", al_error_message(err));
        al_error_free(err);
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
    phase(v, VM_PHASE_PROVISIONED);
    if (v->destroying || v->finished)
        return;
    v->worker_busy = true;
    if (al_work_queue(v->lb->b->env.loop, start_work, on_started, v, NULL) < 0) {
        v->worker_busy = false;
        finish(v, VM_INFRA_ERROR, 0, "queueing the VM start failed");
    }
}

/* ------------------------------------------------------------ teardown */

struct teardown {
    virConnectPtr conn;
    char *pool_name;
    char *dom_name;
    virDomainPtr dom; /* may be NULL: look up by name */
    char *vol_name;
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
    if (!t->dom && t->dom_name)
        t->dom = virDomainLookupByName(t->conn, t->dom_name);
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
            r = al_error_set(err, EIO, "destroying %s: %s", t->dom_name, libvirt_msg());
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
                r = al_error_set(err, EIO, "deleting volume %s: %s", t->vol_name, libvirt_msg());
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
    if (!v->lb)
        return;
    for (struct lv_vm **pp = &v->lb->vms; *pp; pp = &(*pp)->next) {
        if (*pp == v) {
            *pp = v->next;
            break;
        }
    }
    v->lb = NULL;
}

/* Frees the VM's memory; it no longer belongs to the backend (which may be
 * gone already). */
static void vm_free(struct lv_vm *v)
{
    vm_unlink(v);
    free(v->image);
    free(v->base.name);
    free(v->run_dir);
    free(v->channel_path);
    free(v->seed_path);
    free(v->console_log);
    free(v->vol_name);
    free(v->vol_path);
    free(v->meta_data);
    free(v->user_data);
    free(v->domain_xml);
    free(v->cmdline);
    al_tlv_buf_free(&v->job);
    free(v);
}

static void on_hb_timer_closed(uv_handle_t *h)
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
    uv_close((uv_handle_t *)&v->hb_timer, on_hb_timer_closed);
}

struct vm_teardown {
    struct teardown t;
    struct lv_vm *v;
};

static int vm_teardown_work(void *data, struct al_error **err)
{
    struct vm_teardown *vt = data;
    return teardown_work(&vt->t, err);
}

static void vm_teardown_done(void *data, int result, struct al_error *err)
{
    struct vm_teardown *vt = data;
    struct lv_vm *v = vt->v;
    teardown_clear(&vt->t);
    free(vt);
    v->dom = NULL;
    on_torn_down(v, result, err);
}

static void destroy_continue(struct lv_vm *v)
{
    struct vm_teardown *vt = calloc(1, sizeof(*vt));
    lv_ensure_conn(v->lb);
    if (vt) {
        vt->v = v;
        vt->t.conn = v->lb->conn;
        if (vt->t.conn)
            virConnectRef(vt->t.conn);
        vt->t.dom = TAKE_PTR(v->dom);
        vt->t.dom_name = strdup(v->base.name);
        vt->t.pool_name = strdup(v->lb->pool_name);
        vt->t.vol_name = strdup(v->vol_name);
        vt->t.run_dir = strdup(v->run_dir);
    }
    if (!vt || !vt->t.dom_name || !vt->t.pool_name || !vt->t.vol_name || !vt->t.run_dir ||
        al_work_queue(v->lb->b->env.loop, vm_teardown_work, vm_teardown_done, vt, NULL) < 0) {
        /* last resort: tear down synchronously rather than leak */
        struct al_error *err = NULL;
        int r = vt ? teardown_work(&vt->t, &err) : -ENOMEM;
        if (vt)
            vm_teardown_done(vt, r, err);
        else
            on_torn_down(v, r, NULL);
    }
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
    if (v->worker_busy)
        return; /* the worker's completion continues the teardown */
    destroy_continue(v);
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
    v->req.warm = true; /* still the VM's kind: it boots no job from cloud-init */
    v->req.image = v->image; /* booted from it; the job's request need not name it */
    v->assigned = true;
    v->base.ev = ev;
    v->base.ev_data = ev_data;
    v->t0 = al_now_mono_ms();
    v->result = (struct vm_result){0};
    /* the new owner sees the phases it missed, in order, at once */
    phase(v, VM_PHASE_PROVISIONED);
    phase(v, VM_PHASE_BOOTING);
    phase(v, VM_PHASE_CONNECTED);
    if (!v->finished && !v->destroying)
        deliver(v, false);
    return 0;
}

static int lv_cancel(struct vm *vm)
{
    struct lv_vm *v = container_of(vm, struct lv_vm, base);
    if (v->finished)
        return 0;
    if (v->ch && v->hello && channel_send(v->ch, AL_FRAME_CANCEL, NULL, 0) == 0)
        return 0; /* the guest answers with EXIT reason=canceled */
    finish(v, VM_CANCELED, 130, "canceled before the workload started");
    return 0;
}

static char *make_hostname(const char *job_id)
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

static int lv_vm_name(struct backend *b, const char *job_id, int attempt, char *buf, size_t size)
{
    (void)b;
    int n = snprintf(buf, size, AL_DOMAIN_PREFIX "%s-%d", job_id, attempt);
    return n < 0 || (size_t)n >= size ? -ENAMETOOLONG : 0;
}

static int lv_launch(struct backend *b, const struct vm_request *req, const struct vm_events *ev,
                     void *ev_data, struct vm **ret_vm, struct al_error **err)
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
    v->base.backend = b;
    v->base.ev = ev;
    v->base.ev_data = ev_data;
    v->req = *req;
    v->inject = req->inject >= 0 ? req->inject : b->cfg->libvirt.inject;
    v->t0 = al_now_mono_ms();
    v->accel = lv_accel_now(lb);
    snprintf(v->result.accel, sizeof(v->result.accel), "%s", accel_kind_name(v->accel));
    uv_timer_init(b->env.loop, &v->hb_timer);
    v->hb_timer.data = v;
    v->hb_timer_open = true;
    _cleanup_free_ char *hostname = NULL;
    int r;

    char name[160];
    if (lv_vm_name(b, req->job_id, req->attempt, name, sizeof(name)) < 0 ||
        !(v->base.name = strdup(name)) || asprintf(&v->vol_name, "%s.qcow2", v->base.name) < 0 ||
        !(v->run_dir = al_path_join(lb->vms_dir, v->base.name)) ||
        !(v->channel_path = al_path_join(v->run_dir, "job.sock")) ||
        !(v->seed_path = al_path_join(v->run_dir, "seed.iso")) ||
        !(v->console_log = al_path_join(v->run_dir, "console.log"))) {
        r = al_error_set(err, ENOMEM, "allocating a VM");
        goto fail;
    }
    if (strlen(v->channel_path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        r = al_error_set(err, ENAMETOOLONG,
                         "the channel socket path %s is too long for a unix socket; use a "
                         "shorter run_dir",
                         v->channel_path);
        goto fail;
    }
    if (!req->image) {
        r = al_error_set(err, EINVAL, "no image for job %s", req->job_id);
        goto fail;
    }
    if (!(v->image = vm_image_dup(req->image))) {
        r = al_error_set(err, ENOMEM, "allocating a VM");
        goto fail;
    }
    v->req.image = v->image;

    if (!req->warm) {
        r = guest_job_encode(req, &v->job, err);
        if (r < 0)
            goto fail;
    }
    /* a warm VM's helper is started by agentlab-guest.service, which runs
     * only with agentlab.warm=1 on the kernel command line */
    if (asprintf(&v->cmdline, "%s%s", v->image->cmdline ? v->image->cmdline : "",
                 req->warm ? " agentlab.warm=1" : "") < 0) {
        v->cmdline = NULL;
        r = al_error_set(err, ENOMEM, "kernel command line");
        goto fail;
    }
    hostname = make_hostname(req->job_id);
    struct cloudinit_job cj = {
            .instance_id = req->job_id,
            .hostname = hostname,
            .job_blob = req->warm ? NULL : v->job.data,
            .job_blob_len = req->warm ? 0 : v->job.len,
    };
    r = cloudinit_render(&cj, &v->meta_data, &v->user_data, err);
    if (r < 0)
        goto fail;

    v->next = lb->vms;
    lb->vms = v;
    v->worker_busy = true;
    r = al_work_queue(b->env.loop, provision_work, on_provisioned, v, NULL);
    if (r < 0) {
        lb->vms = v->next;
        v->worker_busy = false;
        r = al_error_set(err, -r, "queueing provisioning");
        goto fail;
    }
    *ret_vm = &v->base;
    return 0;
fail:
    uv_close((uv_handle_t *)&v->hb_timer, on_hb_timer_closed);
    return r;
}

static void lv_capacity(struct backend *b, struct backend_capacity *ret)
{
    struct lv_backend *lb = b->priv;
    struct backend_capacity c = {
            .max_vms = lb->max_vms,
            .vcpus = lb->vcpus,
            .memory = lb->memory,
            .healthy = lv_ensure_conn(lb),
    };
    enum accel_kind k = lv_accel_now(lb);
    snprintf(c.accel, sizeof(c.accel), "%s", accel_kind_name(k));
    if (k != ACCEL_KIND_KVM)
        snprintf(c.accel_reason, sizeof(c.accel_reason), "%s", lb->accel.reason);
    for (struct lv_vm *v = lb->vms; v; v = v->next) {
        c.used_vms++;
        c.used_vcpus += v->req.cpus;
        c.used_memory += v->req.memory;
    }
    if (!c.healthy)
        snprintf(c.reason, sizeof(c.reason), "the libvirt connection to %s is down", b->cfg->libvirt.uri);
    *ret = c;
}

static void on_lifecycle_event(virConnectPtr conn, virDomainPtr dom, int event, int detail,
                               void *data)
{
    (void)conn;
    struct lv_backend *lb = data;
    struct lv_vm *v = find_vm(lb, virDomainGetName(dom));
    if (!v || v->finished)
        return;
    if (event == VIR_DOMAIN_EVENT_STOPPED || event == VIR_DOMAIN_EVENT_CRASHED) {
        static const char *const stopped[] = {"shut down", "destroyed", "crashed", "migrated",
                                              "saved",     "failed",    "snapshot"};
        const char *what = event == VIR_DOMAIN_EVENT_CRASHED                       ? "crashed"
                           : (detail >= 0 && (size_t)detail < ARRAY_SIZE(stopped)) ? stopped[detail]
                                                                                   : "stopped";
        _cleanup_free_ char *tail = console_tail(v);
        finish(v, VM_INFRA_ERROR, 0, "the VM %s before reporting a result%s%s", what,
               tail ? "; console: " : "", tail ? tail : "");
    }
}

static int lifecycle_cb(virConnectPtr conn, virDomainPtr dom, int event, int detail, void *data)
{
    on_lifecycle_event(conn, dom, event, detail, data);
    return 0;
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

/* Opens the connection with keepalives, domain events, a close callback and
 * the storage pool. Loop thread. */
static int lv_connect(struct lv_backend *lb, struct al_error **err)
{
    const char *uri = lb->b->cfg->libvirt.uri;
    lb->last_retry = al_now_mono_ms();
    lb->conn = virConnectOpen(uri);
    if (!lb->conn)
        return al_error_set(err, EIO, "connecting to %s: %s", uri, libvirt_msg());
    /* keepalives need the event loop, which runs on our uv loop */
    virConnectSetKeepAlive(lb->conn, 5, 3);
    virConnectRegisterCloseCallback(lb->conn, on_conn_closed, lb, NULL);
    lb->lifecycle_id =
            virConnectDomainEventRegisterAny(lb->conn, NULL, VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                             VIR_DOMAIN_EVENT_CALLBACK(lifecycle_cb), lb, NULL);
    int r = 0;
    if (lb->lifecycle_id < 0)
        r = al_error_set(err, EIO, "subscribing to domain events on %s: %s", uri, libvirt_msg());
    if (r == 0)
        r = ensure_pool(lb, err);
    if (r < 0) {
        lv_disconnect(lb);
        return r;
    }
    lb->conn_dead = false;
    lb->conn_error[0] = '\0';
    return 0;
}

/* Reconnects a dead connection, at most every 2 s. Returns true when up. */
static bool lv_ensure_conn(struct lv_backend *lb)
{
    if (lb->conn && !lb->conn_dead)
        return true;
    if (al_now_mono_ms() - lb->last_retry < 2000)
        return false;
    lv_disconnect(lb);
    struct al_error *err = NULL;
    if (lv_connect(lb, &err) < 0) {
        snprintf(lb->conn_error, sizeof(lb->conn_error), "%.150s", al_error_message(err));
        al_error_free(err);
        return false;
    }
    log_info(NULL, "backend %s: reconnected to %s", lb->b->name, lb->b->cfg->libvirt.uri);
    return true;
}

/* A NIC is opt-in: define the egress filter and learn the network's host
 * address, which the filter lets through for DHCP and DNS only. */
static int prepare_network(struct lv_backend *lb, struct al_error **err)
{
    const char *name = lb->b->cfg->libvirt.network;
    virNetworkPtr net = virNetworkLookupByName(lb->conn, name);
    if (!net)
        return al_error_set(err, ENOENT, "libvirt network \"%s\": %s", name, libvirt_msg());
    _cleanup_free_ char *xml = virNetworkGetXMLDesc(net, 0);
    virNetworkFree(net);
    if (!xml)
        return al_error_set(err, EIO, "libvirt network \"%s\": %s", name, libvirt_msg());
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
        return al_error_set(err, EIO, "defining nwfilter " AL_NWFILTER_NAME ": %s", libvirt_msg());
    virNWFilterFree(f);
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
    lb->lifecycle_id = -1;
    int r;
    virSetErrorFunc(NULL, quiet_libvirt_errors);

    if (*b->cfg->libvirt.storage_pool) {
        lb->pool_name = strdup(b->cfg->libvirt.storage_pool);
    } else if (asprintf(&lb->pool_name, "agentlab-%s-%08x", b->name, fnv1a(env->state_dir)) <
               0) {
        lb->pool_name = NULL;
    }
    _cleanup_free_ char *pools = al_path_join(env->state_dir, "pools");
    lb->pool_dir = pools ? al_path_join(pools, b->name) : NULL;
    lb->vms_dir = al_path_join(env->run_dir, "vms");
    if (!lb->pool_name || !lb->pool_dir || !lb->vms_dir) {
        r = al_error_set(err, ENOMEM, "allocating the libvirt backend");
        goto fail;
    }
    r = al_mkdir_p(lb->vms_dir, 0711, err);
    if (r < 0)
        goto fail;

    struct accel_probe_opts ao = {.mode = b->cfg->libvirt.accel, .cache_dir = env->run_dir};
    r = accel_probe(&ao, &lb->accel, err);
    if (r < 0)
        goto fail;
    /* said once per boot of the host: whoever probed first says it */
    if (lb->accel.kind == ACCEL_KIND_TCG && b->cfg->libvirt.accel == ACCEL_AUTO && !lb->accel.from_cache)
        log_warn(NULL, "backend %s: KVM is not usable (%s); VMs run under TCG software emulation",
                 b->name, lb->accel.reason);

    r = lv_connect(lb, err);
    if (r < 0)
        goto fail;
    if (*b->cfg->libvirt.network) {
        r = prepare_network(lb, err);
        if (r < 0)
            goto fail;
    }

    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    lb->vcpus = b->cfg->vcpus > 0 ? b->cfg->vcpus : (int)(cpus > 0 ? cpus : 1);
    lb->memory = b->cfg->memory > 0 ? b->cfg->memory : (uint64_t)pages * (uint64_t)page / 10u * 8u;
    lb->max_vms = b->cfg->max_vms > 0 ? b->cfg->max_vms : lb->vcpus;
    return 0;
fail:
    lv_disconnect(lb);
    free(lb->pool_name);
    free(lb->pool_dir);
    free(lb->vms_dir);
    free(lb->gateway);
    strv_free(lb->gateway6);
    free(lb);
    b->priv = NULL;
    return r;
}

static void lv_close(struct backend *b, void (*done)(void *data), void *data)
{
    struct lv_backend *lb = b->priv;
    if (lb) {
        if (lb->vms)
            log_warn(NULL, "backend %s closed with VMs still alive", b->name);
        if (lb->inject_timer)
            uv_close((uv_handle_t *)lb->inject_timer, on_inject_timer_closed);
        lv_disconnect(lb);
        free(lb->pool_name);
        free(lb->pool_dir);
        free(lb->vms_dir);
        free(lb->gateway);
        strv_free(lb->gateway6);
        free(lb);
        b->priv = NULL;
    }
    if (done)
        done(data);
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
        return al_error_set(err, EIO, "listing domains: %s", libvirt_msg());
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
            if (strncmp(vn, AL_DOMAIN_PREFIX, strlen(AL_DOMAIN_PREFIX)) == 0 && len > 6 &&
                streq(vn + len - 6, ".qcow2")) {
                _cleanup_free_ char *name = strndup(vn, len - 6);
                if (name)
                    owned_get(c, name);
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
            struct owned_vm *o = owned_get(c, de->d_name);
            if (!o || o->owner)
                continue;
            _cleanup_free_ char *dir = al_path_join(c->vms_dir, de->d_name);
            _cleanup_free_ char *path = dir ? al_path_join(dir, "owner") : NULL;
            _cleanup_free_ char *text = NULL;
            struct al_error *rerr = NULL;
            if (path && al_read_file(path, 4096, &text, NULL, &rerr) == 0) {
                char owner[256], job[128];
                int attempt = 0;
                if (sscanf(text, "%255s %127s %d", owner, job, &attempt) == 3) {
                    o->owner = strdup(owner);
                    o->job_id = strdup(job);
                    o->attempt = attempt;
                }
            }
            al_error_free(rerr);
        }
        closedir(d);
    }
    return 0;
}

static void list_done(void *data, int result, struct al_error *err)
{
    struct list_ctx *c = data;
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

static int lv_list_owned(struct backend *b, backend_list_cb cb, void *data)
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

static int lv_destroy_owned(struct backend *b, const char *name, backend_done_cb done, void *data)
{
    struct lv_backend *lb = b->priv;
    if (strncmp(name, AL_DOMAIN_PREFIX, strlen(AL_DOMAIN_PREFIX)) != 0 ||
        !al_name_is_valid(name))
        return -EINVAL;
    if (find_vm(lb, name))
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
    od->t.run_dir = al_path_join(lb->vms_dir, name);
    int r = (!od->t.dom_name || !od->t.pool_name || !od->t.vol_name || !od->t.run_dir)
                    ? -ENOMEM
                    : al_work_queue(b->env.loop, owned_destroy_work, owned_destroy_done, od, NULL);
    if (r < 0) {
        teardown_clear(&od->t);
        free(od);
    }
    return r;
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
};
