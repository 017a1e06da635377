#include "daemon.h"

#include <libvirt/libvirt.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <uv.h>

#include "base/log.h"
#include "base/util.h"
#include "loop/curl_uv.h"
#include "loop/virt_uv.h"

struct daemon {
    const struct config *cfg;
    uv_loop_t loop;
    uv_signal_t sigint;
    uv_signal_t sigterm;
    struct al_curl *curl;
    bool stopping;
};

static void on_signal_closed(uv_handle_t *h)
{
    (void)h;
}

static void daemon_stop(struct daemon *d)
{
    if (d->stopping)
        return;
    d->stopping = true;
    log_info(NULL, "shutting down");
    if (d->curl) {
        al_curl_close(d->curl, NULL, NULL);
        d->curl = NULL;
    }
    al_virt_event_shutdown();
    uv_close((uv_handle_t *)&d->sigint, on_signal_closed);
    uv_close((uv_handle_t *)&d->sigterm, on_signal_closed);
}

static void on_signal(uv_signal_t *s, int signum)
{
    struct daemon *d = s->data;
    log_info(NULL, "received %s", strsignal(signum));
    daemon_stop(d);
}

static int prepare_dirs(const struct config *cfg, struct al_error **err)
{
    /* 0711: QEMU runs as another user under qemu:///system and must be able
     * to traverse to images, overlays and channel sockets. */
    int r = al_mkdir_p(cfg->agent.state_dir, 0711, err);
    if (r < 0)
        return r;
    return al_mkdir_p(cfg->agent.run_dir, 0711, err);
}

int daemon_run(const struct config *cfg, struct al_error **err)
{
    struct daemon d = {.cfg = cfg};
    int r = prepare_dirs(cfg, err);
    if (r < 0)
        return al_error_wrap(err, "preparing directories");

    r = uv_loop_init(&d.loop);
    if (r < 0)
        return al_error_set(err, -r, "uv_loop_init: %s", uv_strerror(r));

    uv_signal_init(&d.loop, &d.sigint);
    uv_signal_init(&d.loop, &d.sigterm);
    d.sigint.data = d.sigterm.data = &d;
    uv_signal_start(&d.sigint, on_signal, SIGINT);
    uv_signal_start(&d.sigterm, on_signal, SIGTERM);

    if (al_curl_global_init() < 0) {
        r = al_error_set(err, EIO, "curl_global_init failed");
        goto out;
    }
    r = al_curl_new(&d.loop, &d.curl, err);
    if (r < 0)
        goto out;
    r = al_virt_event_register(&d.loop, err);
    if (r < 0)
        goto out;

    log_info(NULL, "agentlabd %s ready (state %s, run %s)", AL_VERSION, cfg->agent.state_dir,
             cfg->agent.run_dir);
    uv_run(&d.loop, UV_RUN_DEFAULT);
    r = 0;

out:
    daemon_stop(&d);
    uv_run(&d.loop, UV_RUN_DEFAULT);
    al_curl_global_cleanup();
    int cr = uv_loop_close(&d.loop);
    if (cr != 0) {
        log_error(NULL, "event loop still had open handles at shutdown: %s", uv_strerror(cr));
        if (r == 0)
            r = al_error_set(err, EBUSY, "event loop did not close cleanly");
    }
    return r;
}
