/* The Proxmox backend's workload through the guest agent: delivering the
 * job's files, starting the runner, polling its status, output and
 * artifacts. */
#include "provision/proxmox_priv.h"

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
    if (px_settle(v))
        return;
    if (result < 0 && strstr(reply->message, "guest agent is not running") &&
        (!v->agent_up || ++v->hiccups <= AGENT_HICCUPS)) {
        /* still booting: the first write doubles as the agent probe */
        v->agent_wait = v->agent_wait * 3 / 2;
        if (v->agent_wait > AGENT_POLL_MAX_MS)
            v->agent_wait = AGENT_POLL_MAX_MS;
        px_step_write(v);
        return;
    }
    if (result < 0) {
        px_fail_call(v, result, err, "writing the job into the guest");
        return;
    }
    if (!v->agent_up) {
        v->agent_up = true;
        px_phase(v, VM_PHASE_CONNECTED);
        if (v->finished || v->destroying)
            return;
    }
    v->wchunk++;
    px_step_write(v);
}

void px_step_write(struct px_vm *v)
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
            px_finish(v, VM_INFRA_ERROR, 0, "reading the work directory archive: %s",
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
    px_vm_call(v, "POST", "/agent/file-write", &p, PVE_IDEMPOTENT, v->agent_up ? 0 : v->agent_wait,
               0, true, on_write);
    pve_params_clear(&p);
}

/* ------------------------------------------------------------ run */

static void on_exec(int result, const struct pve_reply *reply, const struct al_error *err,
                    void *data)
{
    struct px_vm *v = data;
    if (px_settle(v))
        return;
    if (result < 0) {
        px_fail_call(v, result, err, "starting the job with agent/exec");
        return;
    }
    int64_t pid = 0;
    if (!pve_json_int(reply->data, "pid", &pid) || pid <= 0) {
        px_finish(v, VM_INFRA_ERROR, 0, "Proxmox: agent/exec returned no pid");
        return;
    }
    v->pid = pid;
    v->t_running = al_now_mono_ms();
    v->poll_ms = POLL_FAST_MS;
    px_phase(v, VM_PHASE_RUNNING);
    if (!v->finished && !v->destroying)
        px_pump(v);
}

static void step_exec(struct px_vm *v)
{
    struct pve_params p = {0};
    pve_params_add(&p, "command", "/bin/sh");
    for (char **a = v->cmd + 1; *a; a++)
        pve_params_add(&p, "command", *a);
    pve_params_add(&p, "input-data", pve_guest_runner());
    /* not idempotent: a second exec would run the job twice */
    px_vm_call(v, "POST", "/agent/exec", &p, 0, 0, 0, false, on_exec);
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
        px_finish(v, VM_GUEST_TIMEOUT, 124, "the workload timed out in the guest");
    else
        px_finish(v, VM_EXITED, st->exit_code, "the workload exited with status %d", st->exit_code);
}

/* qemu-guest-agent restarts (upgrades, OOM) for a moment: ask again later. */
static bool agent_hiccup(struct px_vm *v, int result, const struct pve_reply *reply)
{
    if (result >= 0 || !strstr(reply->message, "guest agent is not running") ||
        ++v->hiccups > AGENT_HICCUPS)
        return false;
    v->tick = T_STATUS;
    v->poll_ms = AGENT_POLL_MAX_MS;
    px_pump(v);
    return true;
}

static void on_exec_status(int result, const struct pve_reply *reply, const struct al_error *err,
                           void *data)
{
    struct px_vm *v = data;
    if (px_settle(v))
        return;
    if (agent_hiccup(v, result, reply))
        return;
    if (result < 0) {
        px_fail_call(v, result, err, "following the job (agent/exec-status)");
        return;
    }
    bool exited = false;
    if (!pve_json_bool(reply->data, "exited", &exited)) {
        px_finish(v, VM_INFRA_ERROR, 0, "Proxmox: agent/exec-status without \"exited\"");
        return;
    }
    if (!exited) {
        v->tick = T_OUT;
        px_pump(v);
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
        px_finish(v, VM_INFRA_ERROR, 0, "the job runner in the guest failed (exit %" PRId64 ")%s%s",
                  code, tail[0] ? ": " : "", tail);
        return;
    }
    if (v->st.diag[0] && v->base.ev->diag)
        v->base.ev->diag(&v->base, v->st.diag, v->base.ev_data);
    if (v->finished || v->destroying)
        return;
    if (!v->st.ok) {
        px_finish(v, VM_INFRA_ERROR, 0, "the job could not start in the guest: %s",
                  v->st.diag[0] ? v->st.diag : "no reason given");
        return;
    }
    v->exited = true;
    px_pump(v);
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
    if (px_settle(v))
        return;
    size_t got = 0;
    bool more = false;
    if (result < 0 && strstr(reply->message, "No such file")) {
        /* the runner has not created it yet */
    } else if (!v->exited && agent_hiccup(v, result, reply)) {
        return;
    } else if (result < 0) {
        px_fail_call(v, result, err,
                     s == S_ART ? "reading the artifacts" : "reading the job's output");
        return;
    } else {
        const char *content = pve_json_str(reply->data, "content");
        struct al_buf raw = AL_BUF_INIT;
        if (!content || al_base64_decode(&raw, content, strlen(content)) < 0) {
            al_buf_free(&raw);
            px_finish(v, VM_INFRA_ERROR, 0, "Proxmox: agent/file-read returned no base64 content");
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
                px_pump(v); /* same stream again, at once */
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
    px_pump(v);
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
    px_vm_call(v, "GET", "/agent/file-read", &p, PVE_IDEMPOTENT, 0, max_reply, true, cbs[s]);
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
void px_pump(struct px_vm *v)
{
    if (!v->exited) {
        uint64_t cap = v->log_cap ? v->log_cap : UINT64_MAX;
        switch (v->tick) {
        case T_STATUS: {
            struct pve_params p = {0};
            pve_params_add_int(&p, "pid", v->pid);
            px_vm_call(v, "GET", "/agent/exec-status", &p, PVE_IDEMPOTENT, v->poll_ms, 0, true,
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
            px_pump(v);
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
