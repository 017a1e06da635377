/* The libvirt backend's side of a running VM: the guest channel's frames,
 * the boot watchdog and the heartbeat. */
#include "provision/libvirt_priv.h"

/* ------------------------------------------------------------- channel */

static void tlv_text(const uint8_t *val, uint32_t len, char *out, size_t size)
{
    size_t n = len < size - 1 ? len : size - 1;
    for (size_t i = 0; i < n; i++)
        out[i] = (val[i] >= 0x20 && val[i] < 0x7f) ? (char)val[i] : '?';
    out[n] = '\0';
}

/* A walk over the TLV items of a frame's payload:
 * for (frame_tlv_start(&t, f); frame_tlv_next(&t);) ... t.tag, t.val, t.len */
struct frame_tlv {
    struct al_tlv_iter it;
    uint16_t tag;
    const uint8_t *val;
    uint32_t len;
    int r; /* al_tlv_next()'s last result: negative when the payload is malformed */
};

static void frame_tlv_start(struct frame_tlv *t, const struct al_frame *f)
{
    al_tlv_iter_init(&t->it, f->payload, f->len);
    t->r = 0;
}

static bool frame_tlv_next(struct frame_tlv *t)
{
    t->r = al_tlv_next(&t->it, &t->tag, &t->val, &t->len);
    return t->r == 1;
}

static void on_workdir_sent(struct channel *ch, int result, void *data)
{
    (void)ch;
    struct lv_vm *v = data;
    if (result < 0 && !v->finished)
        lv_finish(v, VM_INFRA_ERROR, 0, "sending the work directory to the guest: %s",
                  strerror(-result));
}

static int send_tlv(struct lv_vm *v, uint8_t type, const struct al_tlv_buf *b)
{
    return channel_send(v->ch, type, b->data, b->len);
}

static void handle_hello(struct lv_vm *v, const struct al_frame *f)
{
    if (v->hello)
        return; /* the helper repeats HELLO until it hears from us */
    struct frame_tlv t;
    bool has_job = false;
    uint64_t version = 0;
    for (frame_tlv_start(&t, f); frame_tlv_next(&t);) {
        if (t.tag == AL_TLV_VERSION && al_tlv_value_u64(t.val, t.len, &version) < 0) {
            lv_finish(v, VM_INFRA_ERROR, 0, "the guest sent a bad HELLO version");
            return;
        }
        if (t.tag == AL_TLV_JOB_ID) {
            if (t.len != strlen(v->req.job_id) || memcmp(t.val, v->req.job_id, t.len) != 0) {
                lv_finish(v, VM_INFRA_ERROR, 0, "the guest holds a different job");
                return;
            }
            has_job = true;
        }
    }
    if (t.r < 0 || version != AL_PROTO_VERSION) {
        lv_finish(v, VM_INFRA_ERROR, 0, "the guest speaks protocol version %" PRIu64 ", not %d",
                  version, AL_PROTO_VERSION);
        return;
    }
    v->hello = true;
    lv_phase(v, VM_PHASE_CONNECTED);
    /* a warm VM waits here, idle, until assign() brings a job */
    if (v->req.warm && !v->assigned)
        return;
    lv_deliver(v, has_job);
}

/* Sends the job (unless the guest has it from cloud-init), the secrets, the
 * work dir and START. */
void lv_deliver(struct lv_vm *v, bool has_job)
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
    lv_finish(v, VM_INFRA_ERROR, 0, "delivering the job to the guest failed%s%s", err ? ": " : "",
              err ? al_error_message(err) : "");
    al_error_free(err);
}

static void handle_artifact_end(struct lv_vm *v, const struct al_frame *f)
{
    struct frame_tlv t;
    for (frame_tlv_start(&t, f); frame_tlv_next(&t);) {
        if (t.tag == AL_TLV_BYTES)
            al_tlv_value_u64(t.val, t.len, &v->result.artifact_bytes);
        else if (t.tag == AL_TLV_FILES)
            al_tlv_value_u64(t.val, t.len, &v->result.artifact_files);
        else if (t.tag == AL_TLV_ERROR)
            tlv_text(t.val, t.len, v->result.artifact_error, sizeof(v->result.artifact_error));
    }
}

static void handle_exit(struct lv_vm *v, const struct al_frame *f)
{
    struct frame_tlv t;
    uint64_t code = 0, sig = 0, timed_out = 0;
    bool have_code = false;
    char reason[128] = "exited";
    for (frame_tlv_start(&t, f); frame_tlv_next(&t);) {
        if (t.tag == AL_TLV_EXIT_CODE)
            have_code = al_tlv_value_u64(t.val, t.len, &code) == 0 && code <= 255;
        else if (t.tag == AL_TLV_SIGNAL)
            al_tlv_value_u64(t.val, t.len, &sig);
        else if (t.tag == AL_TLV_TIMED_OUT)
            al_tlv_value_u64(t.val, t.len, &timed_out);
        else if (t.tag == AL_TLV_REASON)
            tlv_text(t.val, t.len, reason, sizeof(reason));
    }
    if (t.r < 0 || !have_code) {
        lv_finish(v, VM_INFRA_ERROR, 0, "the guest sent a malformed EXIT frame");
        return;
    }
    v->result.signal = sig < 128 ? (int)sig : 0;
    v->result.t_exited = lv_since_ms(v);
    if (timed_out)
        lv_finish(v, VM_GUEST_TIMEOUT, (int)code, "the workload timed out in the guest");
    else if (streq(reason, "canceled"))
        lv_finish(v, VM_CANCELED, (int)code, "canceled");
    else if (sig)
        lv_finish(v, VM_EXITED, (int)code, "the workload was killed by signal %" PRIu64, sig);
    else
        lv_finish(v, VM_EXITED, (int)code, "the workload exited with status %" PRIu64, code);
}

static void on_frame(struct channel *ch, const struct al_frame *f, void *data)
{
    (void)ch;
    struct lv_vm *v = data;
    if (v->finished)
        return;
    v->last_frame_ms = al_now_mono_ms();
    if (!v->hello && f->type != AL_FRAME_HELLO && f->type != AL_FRAME_DIAG) {
        lv_finish(v, VM_INFRA_ERROR, 0, "the guest sent frame type %u before HELLO", f->type);
        return;
    }
    switch (f->type) {
    case AL_FRAME_HELLO:
        handle_hello(v, f);
        break;
    case AL_FRAME_STARTED:
        if (!v->result.t_running)
            lv_phase(v, VM_PHASE_RUNNING);
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
        struct frame_tlv t;
        for (frame_tlv_start(&t, f); frame_tlv_next(&t);) {
            if (t.tag == AL_TLV_REASON && v->base.ev->diag) {
                char msg[512];
                tlv_text(t.val, t.len, msg, sizeof(msg));
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
    case AL_FRAME_SYNCED:
        lv_snapshot_synced(v);
        break;
    default:
        lv_finish(v, VM_INFRA_ERROR, 0, "the guest sent a host-only frame (type %u)", f->type);
        break;
    }
}

static void on_channel_closed(struct channel *ch, int result, const char *message, void *data)
{
    (void)ch;
    struct lv_vm *v = data;
    _cleanup_free_ char *tail = lv_console_tail(v);
    if (result == -EMSGSIZE)
        lv_note_limit(v, AL_LIMIT_FRAME_SIZE);
    if (result == -EPROTO || result == -EMSGSIZE)
        lv_finish(v, VM_INFRA_ERROR, 0, "protocol violation: %s", message);
    else if (!v->hello)
        lv_finish(v, VM_INFRA_ERROR, 0,
                  "the VM went away before reporting a result: its channel closed before the guest "
                  "helper started%s%s",
                  tail ? "; console: " : "", tail ? tail : "");
    else
        lv_finish(v, VM_INFRA_ERROR, 0, "the VM went away before reporting a result (%s)%s%s",
                  message, tail ? "; console: " : "", tail ? tail : "");
}

const struct channel_ops lv_channel_ops = {
        .frame = on_frame,
        .closed = on_channel_closed,
};

/* What the verdict is now: a watchdog may have turned KVM down since. */
enum accel_kind lv_accel_now(struct lv_backend *lb)
{
    if (lb->b->cfg->libvirt.accel == ACCEL_AUTO && !lb->host_accel) {
        struct accel_probe_opts o = {.mode = ACCEL_AUTO, .cache_dir = lb->b->env.run_dir};
        struct accel_result r;
        if (accel_probe(&o, &r, NULL) == 0)
            lb->accel = r;
    }
    return lb->accel.kind;
}

/* A guest of v's backend under KVM (chosen by accel = auto) showed that KVM
 * does not work there: the backend's VMs run under TCG from now on. Another
 * host's KVM is turned down for this backend alone; this machine's for
 * every backend here, through the probe's cache file. */
void lv_kvm_unusable(struct lv_vm *v, const char *reason)
{
    struct lv_backend *lb = v->lb;
    if (lb->host_accel) {
        if (lb->accel.kind != ACCEL_KIND_KVM)
            return;
        lb->accel.kind = ACCEL_KIND_TCG;
        snprintf(lb->accel.reason, sizeof(lb->accel.reason), "%s", reason);
        log_warn(v->req.job_id,
                 "backend %s: KVM is not usable on that host (%s); VMs there run under TCG "
                 "software emulation from now on",
                 lb->b->name, reason);
        return;
    }
    if (accel_mark_kvm_unusable(lb->b->env.run_dir, reason))
        log_warn(v->req.job_id,
                 "backend %s: KVM is not usable (%s); VMs run under TCG software emulation "
                 "from now on",
                 lb->b->name, reason);
    (void)lv_accel_now(lb);
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
    int64_t bound_s = v->accel == ACCEL_KIND_KVM ? bc->libvirt.boot_watchdog_s
                                                 : bc->libvirt.boot_watchdog_tcg_s;
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
    if (v->accel == ACCEL_KIND_KVM && !forced_kvm)
        lv_kvm_unusable(v, reason);
    v->result.silent_boot = !forced_kvm;
    lv_finish(v, VM_INFRA_ERROR, 0, "%s", reason);
    return true;
}

void lv_on_heartbeat_check(uv_timer_t *t)
{
    struct lv_vm *v = t->data;
    if (v->ch && !v->finished)
        lv_note_throttling(v);
    if (!v->hello && !v->alive && !v->finished && boot_watchdog(v))
        return;
    if (!v->hello || v->finished)
        return;
    uint64_t limit = (uint64_t)v->lb->b->env.heartbeat_timeout_s * 1000u;
    uint64_t quiet = al_now_mono_ms() - v->last_frame_ms;
    if (quiet > limit)
        lv_finish(v, VM_INFRA_ERROR, 0, "the guest sent nothing for %" PRIu64 " s (heartbeat lost)",
                  quiet / 1000u);
}
