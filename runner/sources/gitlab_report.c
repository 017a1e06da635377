#include "runner/sources/gitlab_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <curl/curl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <yajl/yajl_gen.h>

#include "runner/base/buf.h"
#include "runner/base/crc32.h"
#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/loop/http_client.h"
#include "runner/loop/work.h"
#include "runner/sources/gitlab_artifacts.h"
#include "runner/sources/gitlab_checkout.h"
#include "runner/sources/gitlab_job.h"

static void continue_finish(struct gljob *j);

void gl_trace_append(struct gljob *j, const char *data, size_t len)
{
    if (j->trace_truncated || !len)
        return;
    uint64_t limit = j->g->src->output_limit;
    size_t room = j->trace.len < limit ? (size_t)(limit - j->trace.len) : 0;
    if (len <= room) {
        if (al_buf_append(&j->trace, data, len) < 0)
            j->trace_truncated = true;
        return;
    }
    if (room)
        al_buf_append(&j->trace, data, room);
    j->trace_truncated = true;
    char marker[200];
    int n = snprintf(marker, sizeof(marker),
                     "\n[agentlab: the job log exceeded the output limit of %" PRIu64
                     " bytes; the rest is not sent to GitLab]\n",
                     limit);
    al_buf_append(&j->trace, marker, (size_t)n);
}

/* ---- cancellation ---- */

void gl_request_cancel(struct gljob *j, const char *why)
{
    if (j->cancel_requested || j->phase == PHASE_FINISHING)
        return;
    j->cancel_requested = true;
    if (j->submitted)
        log_info(j->engine_id, "gitlab %s: job %" PRId64 ": %s; cancelling", j->g->src->name, j->id,
                 why);
    else
        log_info(NULL, "gitlab %s: job %" PRId64 ": %s; cancelling", j->g->src->name, j->id, why);
    if (j->phase == PHASE_CHECKOUT && j->checkout) {
        gitlab_checkout_cancel(j->checkout);
    } else if (j->phase == PHASE_CHECKOUT && j->call) {
        al_http_cancel(j->call); /* a dependency's artifacts: fails the job */
    } else if (j->phase == PHASE_ENGINE) {
        struct al_error *err = NULL;
        /* may finish the job at once (observers run inside) */
        if (engine_cancel(j->g->e, j->engine_id, &err) < 0 && err && err->code != EALREADY)
            log_warn(j->engine_id, "gitlab: cancel: %s", al_error_message(err));
        al_error_free(err);
    }
}

/* Job-Status of any answer about the job. */
static void check_job_status(struct gljob *j, const struct al_http_response *resp)
{
    const char *s = al_http_header(resp, "Job-Status");
    if (s && (streq(s, "canceling") || streq(s, "canceled")))
        gl_request_cancel(j, s[6] == 'i' ? "GitLab is cancelling it" : "GitLab cancelled it");
}

static void update_interval(struct gljob *j, const struct al_http_response *resp)
{
    const char *v = al_http_header(resp, "X-GitLab-Trace-Update-Interval");
    int n = 0;
    if (v && al_parse_int(v, 1, (int)TRACE_INTERVAL_MAX_S, &n) == 0)
        j->interval_s = (unsigned)n;
    else if (v && al_parse_int(v, 1, INT32_MAX, &n) == 0)
        j->interval_s = TRACE_INTERVAL_MAX_S;
}

/* ---- trace ---- */

static void on_trace_done(int result, const struct al_http_response *resp,
                          const struct al_error *err, void *data)
{
    struct gljob *j = data;
    j->call = NULL;
    if (result == 0) {
        j->last_contact_ms = al_now_mono_ms();
        update_interval(j, resp);
        uint64_t have = 0;
        if (resp->status == 202) {
            j->tries = 0;
            if (gl_parse_range(resp, &have) && have <= j->trace.len)
                j->sent = (size_t)have;
        } else if (resp->status == 416) {
            /* the server holds a different amount: continue from there */
            j->tries++;
            if (gl_parse_range(resp, &have) && have <= j->trace.len) {
                log_info(j->submitted ? j->engine_id : NULL,
                         "gitlab %s: job %" PRId64 ": trace resent from byte %" PRIu64,
                         j->g->src->name, j->id, have);
                j->sent = (size_t)have;
            }
        } else if (resp->status == 403 || resp->status == 404) {
            j->gone = true;
        } else {
            j->tries++;
        }
        check_job_status(j, resp);
        if (j->gone)
            gl_request_cancel(j, "GitLab no longer accepts updates for it");
    } else if (result != -ECANCELED) {
        j->tries++;
        log_debug(j->submitted ? j->engine_id : NULL, "gitlab: trace update failed: %s",
                  al_error_message(err));
    }
    if (j->phase == PHASE_FINISHING) {
        if (j->tries > 0 && !j->shutdown)
            j->delay_ms = al_jitter_ms(BACKOFF_MIN_MS << (j->tries > 6 ? 6 : j->tries - 1));
        continue_finish(j);
    } else if (j->trace.len - j->sent >= TRACE_CHUNK && j->tries == 0) {
        gl_trace_tick_arm(j, 0); /* a backlog: do not wait for the interval */
    } else {
        gl_trace_tick_arm(j, (uint64_t)j->interval_s * 1000u);
    }
}

static int send_trace(struct gljob *j)
{
    size_t start = j->sent;
    size_t end = j->trace.len;
    if (end - start > TRACE_CHUNK)
        end = start + TRACE_CHUNK;
    char path[96], range[64];
    snprintf(path, sizeof(path), API "/jobs/%" PRId64 "/trace", j->id);
    snprintf(range, sizeof(range), "%zu-%zu", start, end - 1);
    struct call_opts o = {
            .method = "PATCH",
            .path = path,
            .job_token = j->token,
            .content_type = "text/plain",
            .content_range = range,
            .body = j->trace.data + start,
            .body_len = end - start,
            .timeout_ms = j->shutdown ? SHUTDOWN_TIMEOUT_MS : CALL_TIMEOUT_MS,
    };
    struct al_error *err = NULL;
    int r = gl_api_call(j->g, &o, on_trace_done, j, &j->call, &err);
    if (r < 0) {
        log_warn(NULL, "gitlab %s: job %" PRId64 ": %s", j->g->src->name, j->id,
                 al_error_message(err));
        al_error_free(err);
    }
    return r;
}

/* The running-job keep-alive: PUT state=running, whose answer carries
 * Job-Status like every other. */
static int send_update(struct gljob *j, bool final);

void gl_on_tick(uv_timer_t *t)
{
    struct gljob *j = t->data;
    j->timer_armed = false;
    if (j->phase == PHASE_FINISHING) {
        continue_finish(j);
        return;
    }
    if (j->call || j->gone) {
        gl_trace_tick_arm(j, (uint64_t)j->interval_s * 1000u);
        return;
    }
    int r = 0;
    uint64_t keepalive = (uint64_t)j->interval_s * 1000u;
    if (keepalive < KEEPALIVE_MS)
        keepalive = KEEPALIVE_MS;
    if (j->trace.len > j->sent)
        r = send_trace(j);
    else if (al_now_mono_ms() - j->last_contact_ms >= keepalive)
        r = send_update(j, false);
    if (!j->call || r < 0)
        gl_trace_tick_arm(j, (uint64_t)j->interval_s * 1000u);
}

void gl_trace_tick_arm(struct gljob *j, uint64_t ms)
{
    uv_timer_start(&j->timer, gl_on_tick, ms, 0);
    j->timer_armed = true;
}

/* ---- the job's state updates ---- */

static bool reason_supported(const struct gljob *j, const char *reason)
{
    if (!j->payload || !j->payload->failure_reasons)
        return true;
    for (size_t i = 0; i < j->payload->n_failure_reasons; i++) {
        if (streq(j->payload->failure_reasons[i], reason))
            return true;
    }
    return false;
}

static void on_update_done(int result, const struct al_http_response *resp,
                           const struct al_error *err, void *data);

static int send_update(struct gljob *j, bool final)
{
    _cleanup_(yajl_gen_freep) yajl_gen gen = yajl_gen_alloc(NULL);
    if (!gen)
        return -ENOMEM;
    int r = yajl_gen_map_open(gen) != yajl_gen_status_ok;
    r |= gl_gen_kv(gen, "token", j->token);
    if (!final) {
        r |= gl_gen_kv(gen, "state", "running");
    } else {
        r |= gl_gen_kv(gen, "state", j->succeeded ? "success" : "failed");
        const char *reason = j->failure_reason;
        if (reason && !reason_supported(j, reason))
            reason = reason_supported(j, "runner_system_failure") ? "runner_system_failure" : NULL;
        if (!j->succeeded && reason)
            r |= gl_gen_kv(gen, "failure_reason", reason);
        if (j->has_exit_code) {
            r |= gl_gen_key(gen, "exit_code");
            r |= yajl_gen_integer(gen, j->exit_code) != yajl_gen_status_ok;
        }
        char crc[32];
        snprintf(crc, sizeof(crc), "crc32:%08" PRIx32,
                 al_crc32(0, j->trace.data ? j->trace.data : "", j->trace.len));
        r |= gl_gen_key(gen, "output");
        r |= yajl_gen_map_open(gen) != yajl_gen_status_ok;
        r |= gl_gen_kv(gen, "checksum", crc);
        r |= gl_gen_key(gen, "bytesize");
        r |= yajl_gen_integer(gen, (long long)j->trace.len) != yajl_gen_status_ok;
        r |= yajl_gen_map_close(gen) != yajl_gen_status_ok;
    }
    r |= yajl_gen_map_close(gen) != yajl_gen_status_ok;
    size_t len = 0;
    char *body = r ? NULL : gl_gen_take(gen, &len);
    if (!body)
        return -ENOMEM;
    char path[64];
    snprintf(path, sizeof(path), API "/jobs/%" PRId64, j->id);
    struct call_opts o = {
            .method = "PUT",
            .path = path,
            .content_type = "application/json",
            .body = body,
            .body_len = len,
            .timeout_ms = j->shutdown ? SHUTDOWN_TIMEOUT_MS : CALL_TIMEOUT_MS,
    };
    struct al_error *err = NULL;
    r = gl_api_call(j->g, &o, on_update_done, j, &j->call, &err);
    al_wipe_free(body);
    if (r < 0) {
        log_warn(NULL, "gitlab %s: job %" PRId64 ": %s", j->g->src->name, j->id,
                 al_error_message(err));
        al_error_free(err);
    }
    return r;
}

static void on_update_done(int result, const struct al_http_response *resp,
                           const struct al_error *err, void *data)
{
    struct gljob *j = data;
    j->call = NULL;
    const char *id = j->submitted ? j->engine_id : NULL;
    if (j->phase != PHASE_FINISHING) {
        /* keep-alive */
        if (result == 0) {
            j->last_contact_ms = al_now_mono_ms();
            update_interval(j, resp);
            if (resp->status == 403 || resp->status == 404)
                j->gone = true;
            check_job_status(j, resp);
            if (j->gone)
                gl_request_cancel(j, "GitLab no longer accepts updates for it");
        }
        if (j->phase != PHASE_FINISHING)
            gl_trace_tick_arm(j, (uint64_t)j->interval_s * 1000u);
        else
            continue_finish(j);
        return;
    }
    if (result == 0 && (resp->status == 200 || resp->status == 201)) {
        log_info(id, "gitlab %s: job %" PRId64 " reported as %s%s%s", j->g->src->name, j->id,
                 j->succeeded ? "success" : "failed", j->failure_reason ? ": " : "",
                 j->failure_reason ? j->failure_reason : "");
        j->fstep = FS_DONE;
    } else if (result == 0 && resp->status == 202) {
        /* accepted, not yet complete (the trace is being verified): again */
        update_interval(j, resp);
        if (++j->tries > (j->shutdown ? 1 : ACCEPTED_TRIES)) {
            log_warn(id, "gitlab %s: job %" PRId64 ": the final update stayed 202 Accepted",
                     j->g->src->name, j->id);
            j->fstep = FS_DONE;
        }
        uint64_t ms = (uint64_t)j->interval_s * 1000u;
        j->delay_ms = ms > 10000u ? 10000u : ms;
    } else if (result == 0 && (resp->status == 403 || resp->status == 404)) {
        char ex[256];
        gl_body_excerpt(resp, ex, sizeof(ex));
        log_info(id, "gitlab %s: job %" PRId64 " is no longer running on GitLab (%ld %s)",
                 j->g->src->name, j->id, resp->status, ex);
        j->fstep = FS_DONE;
    } else {
        char what[320];
        if (result == 0) {
            char ex[256];
            gl_body_excerpt(resp, ex, sizeof(ex));
            snprintf(what, sizeof(what), "HTTP %ld %s", resp->status, ex);
        } else {
            snprintf(what, sizeof(what), "%s", al_error_message(err));
        }
        log_warn(id, "gitlab %s: job %" PRId64 ": final update failed: %s", j->g->src->name, j->id,
                 what);
        if (++j->tries >= (j->shutdown ? 1 : FINISH_TRIES))
            j->fstep = FS_DONE;
        else
            j->delay_ms = al_jitter_ms(BACKOFF_MIN_MS << (j->tries > 6 ? 6 : j->tries - 1));
    }
    continue_finish(j);
}

/* ---- artifacts ---- */

struct zip_req {
    struct gljob *j;
    const struct gitlab_artifact *a;
    char *dir;
    char *zip;
    uint64_t max;
    struct gitlab_zip_result res;
};

static int zip_work(void *data, struct al_error **err)
{
    struct zip_req *q = data;
    return gitlab_artifacts_pack(q->dir, q->a, q->zip, q->max, &q->res, err);
}

/* The artifact being packed or uploaded (payload artifacts[art_next]). */
static const struct gitlab_artifact *current_artifact(const struct gljob *j)
{
    return &j->payload->artifacts[j->art_next];
}

/* The next artifact entry to upload after this one. */
static void next_artifact(struct gljob *j)
{
    j->art_next++;
    j->fstep = FS_ARTIFACTS;
}

static void job_failed_by_runner(struct gljob *j, const char *fmt, ...) _printf_(2, 3);

static void zip_done(void *data, int result, struct al_error *err)
{
    struct zip_req *q = data;
    struct gljob *j = q->j;
    j->working = false;
    bool archive = streq(q->a->type, "archive");
    if (result < 0) {
        job_failed_by_runner(j, "ERROR: Packing the artifacts failed: %s", al_error_message(err));
        j->fstep = FS_FOOTER;
    } else if (q->res.files == 0) {
        if (archive)
            al_buf_puts(&j->footer, "WARNING: No files to upload as artifacts\n");
        else
            al_buf_printf(&j->footer, "WARNING: No files to upload as %s report\n", q->a->type);
        next_artifact(j);
    } else {
        j->zip_path = TAKE_PTR(q->zip);
        j->fstep = FS_UPLOAD;
        j->tries = 0;
    }
    al_error_free(err);
    free(q->dir);
    free(q->zip);
    free(q);
    continue_finish(j);
}

static void job_failed_by_runner(struct gljob *j, const char *fmt, ...)
{
    size_t len = 0;
    va_list ap;
    va_start(ap, fmt);
    _cleanup_free_ char *red = al_redact_vformat(&len, fmt, ap);
    va_end(ap);
    if (red) {
        al_buf_append(&j->footer, red, len);
        al_buf_puts(&j->footer, "\n");
    }
    if (j->succeeded) {
        j->succeeded = false;
        j->failure_reason = "runner_system_failure";
        j->has_exit_code = false;
    }
}

static int upload_setup(CURL *easy, void *data)
{
    struct gljob *j = data;
    j->mime = curl_mime_init(easy);
    if (!j->mime)
        return -1;
    const struct gitlab_artifact *a = current_artifact(j);
    _cleanup_free_ char *name = gitlab_artifact_file_name(a);
    curl_mimepart *part = curl_mime_addpart(j->mime);
    if (!part || !name || curl_mime_name(part, "file") != CURLE_OK ||
        curl_mime_filedata(part, j->zip_path) != CURLE_OK ||
        curl_mime_filename(part, name) != CURLE_OK ||
        curl_mime_type(part, "application/octet-stream") != CURLE_OK || /* as gitlab-runner */
        curl_easy_setopt(easy, CURLOPT_MIMEPOST, j->mime) != CURLE_OK)
        return -1;
    return 0;
}

static void upload_cleanup(struct gljob *j)
{
    if (j->mime) {
        curl_mime_free(j->mime);
        j->mime = NULL;
    }
}

static void on_upload_done(int result, const struct al_http_response *resp,
                           const struct al_error *err, void *data)
{
    struct gljob *j = data;
    j->call = NULL;
    upload_cleanup(j);
    const char *id = j->submitted ? j->engine_id : NULL;
    if (result == 0) {
        j->last_contact_ms = al_now_mono_ms();
        check_job_status(j, resp);
    }
    if (result == 0 && resp->status == 201) {
        log_info(id, "gitlab %s: job %" PRId64 ": %s artifact uploaded", j->g->src->name, j->id,
                 current_artifact(j)->type);
        next_artifact(j);
    } else if (result == 0 && resp->status < 500 && resp->status != 429) {
        char ex[256];
        gl_body_excerpt(resp, ex, sizeof(ex));
        job_failed_by_runner(j, "ERROR: Uploading artifacts failed: %ld %s %s", resp->status,
                             resp->reason ? resp->reason : "", ex);
        j->fstep = FS_FOOTER;
    } else if (++j->tries < (j->shutdown ? 1 : 3)) {
        j->delay_ms = al_jitter_ms(BACKOFF_MIN_MS << j->tries);
    } else {
        if (result == 0)
            job_failed_by_runner(j, "ERROR: Uploading artifacts failed: HTTP %ld", resp->status);
        else
            job_failed_by_runner(j, "ERROR: Uploading artifacts failed: %s", al_error_message(err));
        j->fstep = FS_FOOTER;
    }
    if (j->fstep != FS_UPLOAD && j->zip_path) {
        unlink(j->zip_path);
        free(j->zip_path);
        j->zip_path = NULL;
    }
    continue_finish(j);
}

static int send_upload(struct gljob *j)
{
    const struct gitlab_artifact *a = current_artifact(j);
    _cleanup_free_ char *expire = a->expire_in ? gl_url_escape(a->expire_in) : NULL;
    _cleanup_free_ char *type = gl_url_escape(a->type);
    _cleanup_free_ char *format = gl_url_escape(a->format);
    char path[512];
    int n = snprintf(path, sizeof(path),
                     API "/jobs/%" PRId64 "/artifacts?artifact_format=%s&artifact_type=%s%s%s",
                     j->id, format ? format : "", type ? type : "", expire ? "&expire_in=" : "",
                     expire ? expire : "");
    if (!type || !format || n < 0 || (size_t)n >= sizeof(path)) {
        job_failed_by_runner(j, "ERROR: Uploading artifacts failed: out of memory");
        return -ENOMEM;
    }
    struct call_opts o = {
            .method = "POST",
            .path = path,
            .job_token = j->token,
            .timeout_ms = j->shutdown ? SHUTDOWN_TIMEOUT_MS : UPLOAD_TIMEOUT_MS,
            .setup = upload_setup,
            .setup_data = j,
    };
    struct al_error *err = NULL;
    int r = gl_api_call(j->g, &o, on_upload_done, j, &j->call, &err);
    if (r < 0) {
        upload_cleanup(j);
        job_failed_by_runner(j, "ERROR: Uploading artifacts failed: %s", al_error_message(err));
        al_error_free(err);
    }
    return r;
}

/* ---- finishing ---- */

static void on_synced(int result, void *data)
{
    struct gljob *j = data;
    (void)result; /* committed either way: only power loss could take it */
    j->working = false;
    continue_finish(j);
}

static void retry_later(struct gljob *j, uint64_t ms)
{
    uv_timer_start(&j->timer, gl_on_tick, ms, 0);
    j->timer_armed = true;
}

static void continue_finish(struct gljob *j)
{
    struct gitlab *g = j->g;
    if (j->freed || j->call || j->working || j->timer_armed)
        return;
    if (j->delay_ms) {
        retry_later(j, j->delay_ms);
        j->delay_ms = 0;
        return;
    }
    for (;;) {
        switch (j->fstep) {
        case FS_CACHE:
            j->fstep = FS_ARTIFACTS;
            if (gl_cache_save(j))
                return;
            continue;
        case FS_ARTIFACTS: {
            /* every entry in turn: the archive and the reports */
            while (j->payload && j->art_next < j->payload->n_artifacts &&
                   !gitlab_when_applies(current_artifact(j)->when, j->succeeded))
                j->art_next++;
            j->fstep = FS_FOOTER;
            if (!j->payload || j->art_next >= j->payload->n_artifacts || !j->submitted || j->gone)
                continue;
            const struct gitlab_artifact *a = current_artifact(j);
            _cleanup_free_ char *job_dir = engine_job_dir(g->e, j->engine_id);
            struct zip_req *q = calloc(1, sizeof(*q));
            char file[48];
            snprintf(file, sizeof(file), "gitlab-artifact-%zu", j->art_next);
            if (!q || !job_dir || !(q->dir = al_path_join(job_dir, "artifacts")) ||
                !(q->zip = al_path_join(job_dir, file))) {
                if (q) {
                    free(q->dir);
                    free(q);
                }
                job_failed_by_runner(j, "ERROR: Packing the artifacts failed: out of memory");
                continue;
            }
            q->j = j;
            q->a = a;
            q->max = g->cfg->agent.max_artifact_bytes;
            if (al_work_queue(g->loop, zip_work, zip_done, q, NULL) < 0) {
                free(q->dir);
                free(q->zip);
                free(q);
                job_failed_by_runner(j, "ERROR: Packing the artifacts failed");
                continue;
            }
            j->fstep = FS_ARTIFACTS;
            j->working = true;
            return;
        }
        case FS_UPLOAD:
            if (j->gone) {
                j->fstep = FS_FOOTER;
                continue;
            }
            if (send_upload(j) == 0)
                return;
            j->fstep = FS_FOOTER;
            continue;
        case FS_FOOTER:
            if (j->footer.len) {
                if (j->trace.len && j->trace.data[j->trace.len - 1] != '\n')
                    al_buf_puts(&j->trace, "\n");
                al_buf_append(&j->trace, j->footer.data, j->footer.len);
                al_buf_reset(&j->footer);
            }
            j->fstep = FS_SYNC;
            j->tries = 0;
            continue;
        case FS_SYNC:
            j->fstep = FS_TRACE;
            if (!j->submitted)
                continue;
            j->working = true;
            engine_sync(g->e, on_synced, j);
            return;
        case FS_TRACE:
            if (j->gone || j->sent >= j->trace.len ||
                j->tries >= (j->shutdown ? 1 : FINISH_TRIES)) {
                if (!j->gone && j->sent < j->trace.len)
                    log_warn(j->submitted ? j->engine_id : NULL,
                             "gitlab %s: job %" PRId64 ": %zu bytes of the log not delivered",
                             g->src->name, j->id, j->trace.len - j->sent);
                j->fstep = j->gone ? FS_DONE : FS_UPDATE;
                j->tries = 0;
                continue;
            }
            if (send_trace(j) == 0)
                return;
            j->tries++;
            continue;
        case FS_UPDATE:
            if (send_update(j, true) == 0)
                return;
            if (++j->tries >= (j->shutdown ? 1 : FINISH_TRIES))
                j->fstep = FS_DONE;
            continue;
        case FS_DONE:
            if (j->zip_path) {
                unlink(j->zip_path);
                free(j->zip_path);
                j->zip_path = NULL;
            }
            j->freed = true;
            gl_job_free(j);
            if (!g->stopping && !g->backoff_ms)
                gl_poll_schedule(g, 0);
            return;
        }
    }
}

/* Enters the finishing phase with the outcome set. */
static void start_finishing(struct gljob *j, enum finish_step from)
{
    j->phase = PHASE_FINISHING;
    j->fstep = from;
    j->tries = 0;
    uv_timer_stop(&j->timer);
    j->timer_armed = false;
    continue_finish(j);
}

/* The job could not be started: report it failed with why. */
void gl_fail_early(struct gljob *j, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    _cleanup_free_ char *red = al_redact_vformat(NULL, fmt, ap);
    va_end(ap);
    log_warn(NULL, "gitlab %s: job %" PRId64 ": %s", j->g->src->name, j->id,
             red ? red : "out of memory");
    j->succeeded = false;
    bool canceled = j->cancel_requested && !j->shutdown;
    j->failure_reason = canceled ? "job_canceled" : "runner_system_failure";
    al_buf_printf(&j->footer, "ERROR: Job failed%s: %s\n", canceled ? "" : " (system failure)",
                  red ? red : "agentlab could not start the job");
    start_finishing(j, FS_FOOTER);
}

void gl_on_engine_finished(struct gljob *j, enum job_state state, const struct attempt_result *last)
{
    struct gitlab *g = j->g;
    (void)last;
    _cleanup_(store_job_freep) struct store_job *sj = NULL;
    struct al_error *err = NULL;
    if (store_job_get(engine_store(g->e), j->engine_id, &sj, &err) < 0)
        err = al_error_free(err);
    const char *reason = sj && sj->reason ? sj->reason : "";
    int code = sj && sj->has_exit_code ? sj->exit_code : 0;
    j->succeeded = state == JOB_STATE_SUCCEEDED;
    j->has_exit_code = false;
    switch (state) {
    case JOB_STATE_SUCCEEDED:
        j->has_exit_code = true;
        j->exit_code = 0;
        break;
    case JOB_STATE_FAILED:
        j->failure_reason = "script_failure";
        j->has_exit_code = sj && sj->has_exit_code;
        j->exit_code = code;
        al_buf_printf(&j->footer, "ERROR: Job failed: exit code %d\n", code);
        break;
    case JOB_STATE_TIMED_OUT:
        j->failure_reason = "job_execution_timeout";
        al_buf_printf(&j->footer,
                      "ERROR: Job failed: execution took longer than %" PRId64 " seconds\n",
                      j->payload && j->payload->timeout_s ? j->payload->timeout_s
                                                          : g->cfg->agent.job_timeout_s);
        break;
    case JOB_STATE_CANCELED:
        if (j->shutdown) {
            j->failure_reason = "runner_system_failure";
            al_buf_puts(&j->footer, "ERROR: Job failed (system failure): agentlabd stopped\n");
        } else {
            j->failure_reason = "job_canceled";
            al_buf_puts(&j->footer, "ERROR: Job failed: canceled\n");
        }
        break;
    default:
        j->failure_reason = "runner_system_failure";
        al_buf_printf(&j->footer, "ERROR: Job failed (system failure): %s\n",
                      *reason ? reason : "the VM could not run the job");
        break;
    }
    /* the checkout was only needed to start the VM */
    _cleanup_free_ char *job_dir = engine_job_dir(g->e, j->engine_id);
    _cleanup_free_ char *tar = job_dir ? al_path_join(job_dir, "workdir.tar") : NULL;
    if (tar)
        unlink(tar);
    log_info(j->engine_id, "gitlab %s: job %" PRId64 " ended %s", g->src->name, j->id,
             job_state_to_string(state));
    start_finishing(j, FS_CACHE);
}

void gl_finish_continue(struct gljob *j)
{
    continue_finish(j);
}
