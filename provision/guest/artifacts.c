#include "provision/guest/helper.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "runner/base/error.h"
#include "runner/base/macro.h"
#include "provision/guest/job.h"
#include "provision/guest/port.h"
#include "provision/proto/proto.h"
#include "provision/guest/spawn.h"
#include "provision/guest/tarscan.h"

/* ---- artifacts ---- */

struct artifact_prep {
    size_t first_path;
};

/* Runs in the artifact child, as the user in the work dir: reports paths
 * that do not exist (NUL-separated on fd 3) and leaves them out, so one
 * missing path does not fail the others. */
static int artifact_prepare(void *data, char ***argv)
{
    struct artifact_prep *prep = data;
    char **v = *argv;
    size_t out = prep->first_path;
    for (size_t i = prep->first_path; v[i]; i++) {
        struct stat st;
        if (lstat(v[i], &st) == 0) {
            v[out++] = v[i];
            continue;
        }
        size_t len = strlen(v[i]) + 1;
        ssize_t w = write(3, v[i], len);
        (void)w;
    }
    v[out] = NULL;
    close(3);
    return out == prep->first_path ? 1 : 0;
}

/* Artifact collection could not even start: END still goes out, with why. */
static void artifacts_failed(struct helper *h, const char *msg)
{
    diag(h, "artifacts: %s", msg);
    snprintf(h->art_err.buf, sizeof(h->art_err.buf), "%s", msg);
    h->art_err.len = strlen(h->art_err.buf);
    h->art_pid = 0;
    h->art_reaped = true;
    h->art_status = 2 << 8; /* as if tar had exited 2 */
}

void start_artifacts(struct helper *h)
{
    const struct guest_strv *paths = &h->job.artifacts;
    /* "--": paths come from the job and may start with "-" */
    static const char *const head[] = {"tar", "-c", "-f", "-", "--"};
    const size_t nhead = sizeof(head) / sizeof(head[0]);
    tar_scan_init(&h->art_scan, false);
    _cleanup_free_ char **argv = calloc(nhead + paths->n + 1, sizeof(char *));
    if (!argv) {
        artifacts_failed(h, "out of memory");
        return;
    }
    for (size_t i = 0; i < nhead; i++)
        argv[i] = (char *)head[i];
    for (size_t i = 0; i < paths->n; i++)
        argv[nhead + i] = paths->v[i];

    int out[2], errp[2], miss[2];
    if (make_pipe(out, true, false) < 0) {
        artifacts_failed(h, strerror(errno));
        return;
    }
    if (make_pipe(errp, true, false) < 0) {
        artifacts_failed(h, strerror(errno));
        close(out[0]);
        close(out[1]);
        return;
    }
    if (make_pipe(miss, true, false) < 0) {
        artifacts_failed(h, strerror(errno));
        close(out[0]);
        close(out[1]);
        close(errp[0]);
        close(errp[1]);
        return;
    }
    static char *const tar_env[] = {"PATH=/usr/local/bin:/usr/bin:/bin", "LC_ALL=C", NULL};
    struct artifact_prep prep = {.first_path = nhead};
    struct guest_spawn_opts o = {
            .user = &h->user,
            .cwd = h->workdir,
            .argv = argv,
            .envp = tar_env,
            .stdin_fd = -1,
            .stdout_fd = out[1],
            .stderr_fd = errp[1],
            .fd3 = miss[1],
            .new_pgroup = true,
            .prepare = artifact_prepare,
            .prepare_data = &prep,
    };
    _cleanup_error_ struct al_error *err = NULL;
    int r = guest_spawn(&o, &h->art_pid, NULL, &err);
    close(out[1]);
    close(errp[1]);
    close(miss[1]);
    if (r < 0) {
        close(out[0]);
        close(errp[0]);
        close(miss[0]);
        artifacts_failed(h, al_error_message(err));
        return;
    }
    h->art_fd = out[0];
    h->art_err.fd = errp[0];
    h->art_missing.fd = miss[0];
}

void forward_artifact(struct helper *h)
{
    uint8_t buf[READ_CHUNK];
    ssize_t n = read(h->art_fd, buf, sizeof(buf));
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        close(h->art_fd);
        h->art_fd = -1;
        return;
    }
    size_t len = (size_t)n;
    if (h->job.has_max_artifact_bytes && len > h->job.max_artifact_bytes - h->art_bytes) {
        len = (size_t)(h->job.max_artifact_bytes - h->art_bytes);
        h->art_limit = true;
    }
    if (len > 0) {
        send_frame(h, AL_FRAME_ARTIFACT, buf, len);
        h->art_bytes += len;
        tar_scan_feed(&h->art_scan, buf, len, NULL); /* counting only */
    }
    if (h->art_limit) {
        if (h->art_pid > 0 && !h->art_reaped)
            kill(-h->art_pid, SIGKILL);
        close(h->art_fd);
        h->art_fd = -1;
    }
}

static void append_part(char *buf, size_t size, const char *part)
{
    size_t len = strlen(buf);
    if (len + 1 >= size)
        return;
    snprintf(buf + len, size - len, "%s%s", len ? "; " : "", part);
}

void send_artifact_end(struct helper *h)
{
    char error[2048] = "";
    if (h->art_limit)
        append_part(error, sizeof(error), "limit");
    if (h->art_canceled)
        append_part(error, sizeof(error), "canceled");
    if (h->art_missing.len) {
        char missing[1100] = "missing: ";
        size_t ml = strlen(missing);
        for (size_t i = 0; i < h->art_missing.len && ml + 2 < sizeof(missing); i++) {
            char c = h->art_missing.buf[i];
            if (c == '\0') {
                if (i + 1 < h->art_missing.len) {
                    missing[ml++] = ',';
                    missing[ml++] = ' ';
                }
            } else {
                missing[ml++] = c;
            }
        }
        missing[ml] = '\0';
        append_part(error, sizeof(error), missing);
    }
    /* tar exits 1 when a file changed while being read: not an error here */
    bool tar_failed = !h->art_limit && !h->art_canceled &&
                      (!WIFEXITED(h->art_status) || WEXITSTATUS(h->art_status) > 1);
    if (tar_failed) {
        char part[1200];
        snprintf(part, sizeof(part), "tar failed: %s", first_line(&h->art_err));
        append_part(error, sizeof(error), part);
    }
    struct al_tlv_buf b = {0};
    int r = al_tlv_add_u64(&b, AL_TLV_BYTES, h->art_bytes);
    if (r == 0)
        r = al_tlv_add_u64(&b, AL_TLV_FILES, h->art_scan.members);
    if (r == 0 && error[0])
        r = al_tlv_add_str(&b, AL_TLV_ERROR, error);
    send_tlv(h, AL_FRAME_ARTIFACT_END, &b, r);
}
