/* agentlab-guest: the in-guest helper.
 *
 * Runs one job inside a throwaway VM and talks to the host over the
 * virtio-serial port org.agentlab.job with the frame protocol of
 * provision/proto/proto.h. One single-threaded poll(2) loop serves the port (both
 * directions), a signalfd (SIGCHLD, SIGTERM, SIGINT, SIGHUP), the workload's
 * stdout and stderr pipes, and the pipes of the two tar helpers (work dir
 * unpack, artifact pack); timers are poll timeouts on CLOCK_MONOTONIC.
 *
 * Phases: SETUP (HELLO, job, secrets, work dir, START) -> RUNNING (workload)
 * -> ARTIFACTS -> FINISHING (EXIT queued, draining the port) -> DONE, then
 * power off unless told not to.
 *
 * Links only libc. Secret values are kept in memory and in the workload's
 * environment only; the helper never prints them.
 */
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
#include "runner/base/util.h"
#include "provision/guest/helper.h"
#include "runner/base/macro.h"
#include "provision/guest/job.h"
#include "provision/guest/port.h"
#include "provision/proto/proto.h"
#include "provision/guest/spawn.h"
#include "provision/guest/tarscan.h"

/* ---- startup and shutdown ---- */

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: agentlab-guest [--port PATH] [--job FILE] [--no-poweroff]\n"
            "\n"
            "Runs the agentlab job of this VM and reports over the host channel.\n"
            "\n"
            "  --port PATH     virtio-serial port or unix socket (default %s)\n"
            "  --job FILE      job description; when missing, wait for the host to\n"
            "                  send one (warm mode) (default %s)\n"
            "  --no-poweroff   stay up after the job instead of powering off\n"
            "  --help          show this help\n",
            DEFAULT_PORT, AL_PROTO_JOB_FILE);
}

static void ensure_std_fds(void)
{
    for (int fd = 0; fd < 3; fd++) {
        if (fcntl(fd, F_GETFD) >= 0)
            continue;
        int n = open("/dev/null", O_RDWR | O_CLOEXEC); /* lands on fd: the lowest free */
        if (n > 2)
            close(n);
    }
}

static int setup_signals(struct helper *h)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGIO); /* the host connected to the port (port_watch_host()) */
    if (sigprocmask(SIG_BLOCK, &set, NULL) < 0)
        return -errno;
    h->sig_fd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (h->sig_fd < 0)
        return -errno;
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

static void linger_then_poweroff(struct helper *h)
{
    if (h->port.fd >= 0 && !h->port.dead) {
        /* give the host a moment to read the last frames and hang up */
        struct pollfd p = {.fd = h->port.fd, .events = POLLIN};
        uint64_t end = now_ms() + POWEROFF_LINGER_MS;
        for (uint64_t now = now_ms(); now < end; now = now_ms()) {
            if (poll(&p, 1, (int)(end - now)) <= 0 || (p.revents & (POLLHUP | POLLERR)))
                break;
            uint8_t tmp[4096];
            if (read(h->port.fd, tmp, sizeof(tmp)) == 0)
                break;
        }
    }
    sync();
    /* The VM is thrown away: no orderly shutdown, just off. */
    if (reboot(RB_POWER_OFF) < 0)
        note("power off failed: %s", strerror(errno));
}

static void helper_free(struct helper *h)
{
    port_close(&h->port);
    al_frame_decoder_free(&h->dec);
    guest_job_free(&h->job);
    guest_user_free(&h->user);
    free(h->workdir);
    free(h->wq.data);
    free(h->error_text);
    tar_scan_free(&h->untar_scan);
    tar_scan_free(&h->art_scan);
    untar_close_input(h);
    collector_close(&h->untar_err);
    collector_close(&h->art_err);
    collector_close(&h->art_missing);
    if (h->out_fd >= 0)
        close(h->out_fd);
    if (h->err_fd >= 0)
        close(h->err_fd);
    if (h->art_fd >= 0)
        close(h->art_fd);
    if (h->sig_fd >= 0)
        close(h->sig_fd);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
            {"port", required_argument, NULL, 'p'},
            {"job", required_argument, NULL, 'j'},
            {"no-poweroff", no_argument, NULL, 'n'},
            {"help", no_argument, NULL, 'h'},
            {0},
    };
    struct helper h = {
            .port_path = DEFAULT_PORT,
            .job_path = AL_PROTO_JOB_FILE,
            .sig_fd = -1,
            .untar_in = -1,
            .out_fd = -1,
            .err_fd = -1,
            .art_fd = -1,
            .dec = {.max_payload = AL_PROTO_MAX_PAYLOAD},
    };
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'p':
            h.port_path = optarg;
            break;
        case 'j':
            h.job_path = optarg;
            break;
        case 'n':
            h.no_poweroff = true;
            break;
        case 'h':
        default:
            return al_usage_exit(usage, c == 'h');
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }

    ensure_std_fds();
    umask(022);
    guest_job_init(&h.job);
    collector_init(&h.untar_err);
    collector_init(&h.art_err);
    collector_init(&h.art_missing);
    tar_scan_init(&h.untar_scan, true);
    tar_scan_init(&h.art_scan, false);
    h.port.fd = -1;
    if (setup_signals(&h) < 0) {
        note("signals: %s", strerror(errno));
        return 1;
    }
    /* orphans of the job are reparented to us, so none outlive the job */
    prctl(PR_SET_CHILD_SUBREAPER, 1);

    _cleanup_error_ struct al_error *job_err = NULL;
    int jr = read_job_file(&h, &job_err);

    _cleanup_error_ struct al_error *err = NULL;
    if (port_open(&h.port, h.port_path, PORT_WAIT_MS, &err) < 0) {
        note("%s", al_error_message(err));
        helper_free(&h);
        return 1;
    }
    if (port_watch_host(&h.port) < 0)
        note("port: no SIGIO when the host connects (%s); polling for it", strerror(errno));

    h.phase = PHASE_SETUP;
    send_hello(&h);
    if (jr < 0) {
        guest_job_free(&h.job);
        h.have_job = false;
        fail_setup(&h, "%s", al_error_message(job_err));
    } else if (h.have_job) {
        prepare_job(&h);
    }

    run_loop(&h);

    bool delivered = h.exit_queued && !h.port.dead && port_backlog(&h.port) == 0;
    bool poweroff = !h.no_poweroff && (!h.have_job || h.job.poweroff);
    if (!delivered)
        note("the host did not get the job's result");
    if (poweroff)
        linger_then_poweroff(&h);
    helper_free(&h);
    return delivered ? 0 : 1;
}
