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

/* ---- job setup ---- */

int read_job_file(struct helper *h, struct al_error **err)
{
    int fd = open(h->job_path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        if (errno == ENOENT)
            return 0; /* warm mode: the job comes as a JOB frame */
        return al_error_set_errno(err, errno, "job file '%s'", h->job_path);
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > AL_PROTO_MAX_PAYLOAD) {
        close(fd);
        return al_error_set(err, EINVAL, "job file '%s': not a regular file of at most %u bytes",
                            h->job_path, AL_PROTO_MAX_PAYLOAD);
    }
    size_t size = (size_t)st.st_size;
    uint8_t *data = malloc(size ? size : 1);
    if (!data) {
        close(fd);
        return al_error_set(err, ENOMEM, "out of memory");
    }
    size_t got = 0;
    while (got < size) {
        ssize_t n = read(fd, data + got, size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    int r = 0;
    if (got != size)
        r = al_error_set(err, EIO, "job file '%s': short read", h->job_path);
    if (r == 0)
        r = guest_job_parse(&h->job, data, size, err);
    explicit_bzero(data, size);
    free(data);
    if (r == 0 && !h->job.job_id)
        r = al_error_set(err, EINVAL, "job file '%s' has no JOB_ID", h->job_path);
    if (r < 0)
        return r;
    h->have_job = true;
    return 0;
}

void prepare_job(struct helper *h)
{
    _cleanup_error_ struct al_error *err = NULL;
    const char *name = h->job.user ? h->job.user : GUEST_JOB_DEFAULT_USER;
    if (guest_user_resolve(name, &h->user, &err) < 0) {
        fail_setup(h, "%s", al_error_message(err));
        return;
    }
    if (h->job.workdir) {
        h->workdir = strdup(h->job.workdir);
    } else if (asprintf(&h->workdir, "%s/work", h->user.home) < 0) {
        h->workdir = NULL;
    }
    if (!h->workdir) {
        fail_setup(h, "out of memory");
        return;
    }
    if (guest_make_workdir(h->workdir, &h->user, &err) < 0)
        fail_setup(h, "work dir: %s", al_error_message(err));
}

/* ---- work dir unpack ---- */

/* GNU tar running as the job's user does the unpacking, fed only with bytes
 * that tarscan has already accepted. The user is the trust boundary: the
 * archive cannot do anything the workload could not do a moment later, and
 * a non-root tar cannot create device nodes or files owned by others. The
 * scanner refuses absolute names, "..", escaping symlinks, devices and
 * FIFOs up front (tar alone would silently strip a leading "/"), and tar
 * adds its own defences (it skips ".." members and defers symlinks that
 * point outside until the end, so nothing is written through them).
 * Reusing tar rather than a private extractor keeps permissions, long names
 * and pax extensions behaving exactly as users expect. */
static void untar_start(struct helper *h)
{
    int in[2], errp[2];
    if (make_pipe(in, false, true) < 0) {
        fail_setup(h, "work dir: pipe: %s", strerror(errno));
        return;
    }
    if (make_pipe(errp, true, false) < 0) {
        close(in[0]);
        close(in[1]);
        fail_setup(h, "work dir: pipe: %s", strerror(errno));
        return;
    }
    static char *const tar_argv[] = {"tar",
                                     "-x",
                                     "-f",
                                     "-",
                                     "--no-same-owner",
                                     "--no-same-permissions",
                                     "--no-overwrite-dir",
                                     "--warning=no-timestamp",
                                     NULL};
    static char *const tar_env[] = {"PATH=/usr/local/bin:/usr/bin:/bin", "LC_ALL=C", NULL};
    struct guest_spawn_opts o = {
            .user = &h->user,
            .cwd = h->workdir,
            .argv = tar_argv,
            .envp = tar_env,
            .stdin_fd = in[0],
            .stdout_fd = -1,
            .stderr_fd = errp[1],
            .fd3 = -1,
            .new_pgroup = true,
    };
    _cleanup_error_ struct al_error *err = NULL;
    int r = guest_spawn(&o, &h->untar_pid, NULL, &err);
    close(in[0]);
    close(errp[1]);
    if (r < 0) {
        close(in[1]);
        close(errp[0]);
        fail_setup(h, "work dir: %s", al_error_message(err));
        return;
    }
    h->untar_started = true;
    h->untar_in = in[1];
    h->untar_err.fd = errp[0];
}

void untar_close_input(struct helper *h)
{
    if (h->untar_in >= 0)
        close(h->untar_in);
    h->untar_in = -1;
}

void untar_flush(struct helper *h)
{
    struct wqueue *q = &h->wq;
    while (h->untar_in >= 0 && q->off < q->len) {
        ssize_t n = write(h->untar_in, q->data + q->off, q->len - q->off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (n < 0) {
            /* tar went away early; its exit status tells why */
            untar_close_input(h);
            q->len = q->off = 0;
            return;
        }
        q->off += (size_t)n;
    }
    if (q->off == q->len)
        q->off = q->len = 0;
    if (h->workdir_end && q->len == 0)
        untar_close_input(h);
}

void untar_feed(struct helper *h, const uint8_t *data, size_t len)
{
    if (!h->untar_started) {
        untar_start(h);
        if (h->phase != PHASE_SETUP)
            return;
    }
    _cleanup_error_ struct al_error *err = NULL;
    if (tar_scan_feed(&h->untar_scan, data, len, &err) < 0) {
        fail_setup(h, "work dir refused: %s", al_error_message(err));
        return;
    }
    struct wqueue *q = &h->wq;
    if (q->len + len > q->cap) {
        size_t cap = q->cap ? q->cap : 256 * 1024;
        while (cap < q->len + len)
            cap *= 2;
        uint8_t *p = realloc(q->data, cap);
        if (!p) {
            fail_setup(h, "work dir: out of memory");
            return;
        }
        q->data = p;
        q->cap = cap;
    }
    memcpy(q->data + q->len, data, len);
    q->len += len;
    untar_flush(h);
}

bool workdir_ready(struct helper *h)
{
    if (!h->job.has_workdir)
        return true;
    if (!h->workdir_end)
        return false;
    if (!h->untar_started)
        return true;
    if (!h->untar_reaped || h->untar_err.fd >= 0)
        return false;
    if (!h->untar_checked) {
        h->untar_checked = true;
        if (!tar_scan_finished(&h->untar_scan)) {
            fail_setup(h, "work dir: archive is truncated");
        } else if (!WIFEXITED(h->untar_status) || WEXITSTATUS(h->untar_status) != 0) {
            fail_setup(h, "work dir: tar failed (status %d): %s",
                       WIFEXITED(h->untar_status) ? WEXITSTATUS(h->untar_status) : -1,
                       first_line(&h->untar_err));
        }
    }
    return h->phase == PHASE_SETUP;
}
