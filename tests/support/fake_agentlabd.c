/* agentlabd on the simulated hypervisor (fake_backend.h), for tests that
 * drive the real CLI against the real API and engine without VMs.
 *
 * Usage: fake_agentlabd STATE_DIR [MAX_VMS [DELAY_MS [TOKEN]]]
 * Listens on STATE_DIR/api.sock (and with TOKEN on 127.0.0.1, any free
 * port, that token required), prints "ready PORT" (0 without TCP) on stdout
 * once it accepts connections, and stops cleanly on SIGTERM or SIGINT. Jobs use image
 * "micro"; their env drives the fake (FAKE=ok|fail:N|hang|stream:N|error). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/api/api.h"
#include "runner/engine/engine.h"
#include "fake_backend.h"

struct daemon {
    uv_loop_t loop;
    uv_signal_t sigterm, sigint;
    struct engine *engine;
    struct api *api;
    bool stopping;
};

static void on_engine_stopped(void *data)
{
    struct daemon *d = data;
    uv_close((uv_handle_t *)&d->sigterm, NULL);
    uv_close((uv_handle_t *)&d->sigint, NULL);
}

static void on_api_stopped(void *data)
{
    struct daemon *d = data;
    engine_stop(d->engine, on_engine_stopped, d);
}

static void on_signal(uv_signal_t *s, int sig)
{
    (void)sig;
    struct daemon *d = s->data;
    if (d->stopping)
        return;
    d->stopping = true;
    api_stop(d->api, on_api_stopped, d);
}

static void on_reconciled(const struct engine_reconcile_report *r, void *data)
{
    struct daemon *d = data;
    struct al_error *err = NULL;
    if (api_start(d->api, r, &err) < 0) {
        fprintf(stderr, "fake_agentlabd: %s\n", al_error_message(err));
        exit(1);
    }
    printf("ready %d\n", api_tcp_port(d->api));
    fflush(stdout);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: fake_agentlabd STATE_DIR [MAX_VMS [DELAY_MS [TOKEN]]]\n");
        return 2;
    }
    const char *dir = argv[1];
    int max_vms = argc > 2 ? atoi(argv[2]) : 8;
    unsigned delay = argc > 3 ? (unsigned)atoi(argv[3]) : 5;
    char conf[2048];
    snprintf(conf, sizeof(conf),
             "[agent]\nstate_dir = %s\nrun_dir = %s/run\nimage = micro\nlog_level = error\n"
             "max_attempts = 1\n[backend \"local\"]\nmax_vms = %d\n",
             dir, dir, max_vms);
    struct al_error *err = NULL;
    struct config *cfg = NULL;
    if (al_mkdir_p(dir, 0755, &err) < 0 ||
        config_load_string(conf, strlen(conf), "fake_agentlabd.conf", &cfg, &err) < 0) {
        fprintf(stderr, "fake_agentlabd: %s\n", al_error_message(err));
        return 1;
    }
    fake_backend_write_image(dir, "micro");
    al_log_set_level(AL_LOG_WARN);
    fake_backend_register();
    fake_backend_delay_ms = delay;
    _cleanup_free_ char *db = al_path_join(dir, "agentlab.db");
    _cleanup_free_ char *sock = al_path_join(dir, "api.sock");
    struct store *store = NULL;
    struct daemon d = {0};
    uv_loop_init(&d.loop);
    if (store_open(db, NULL, &store, &err) < 0) {
        fprintf(stderr, "fake_agentlabd: %s\n", al_error_message(err));
        return 1;
    }
    struct engine_params ep = {.loop = &d.loop,
                               .cfg = cfg,
                               .store = store,
                               .owner_id = "daemon:00000000000000000000000000000003"};
    struct api_params ap = {.loop = &d.loop, .cfg = cfg, .unix_path = sock};
    if (argc > 4) {
        ap.tcp_host = "127.0.0.1";
        ap.tcp_port = 0;
        ap.token = argv[4];
    }
    if (engine_new(&ep, &d.engine, &err) < 0 ||
        (ap.engine = d.engine, api_new(&ap, &d.api, &err) < 0)) {
        fprintf(stderr, "fake_agentlabd: %s\n", al_error_message(err));
        return 1;
    }
    uv_signal_init(&d.loop, &d.sigterm);
    uv_signal_init(&d.loop, &d.sigint);
    d.sigterm.data = d.sigint.data = &d;
    uv_signal_start(&d.sigterm, on_signal, SIGTERM);
    uv_signal_start(&d.sigint, on_signal, SIGINT);
    engine_start(d.engine, on_reconciled, &d);
    uv_run(&d.loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(&d.loop);
    store_close(store);
    config_free(cfg);
    if (rc != 0) {
        fprintf(stderr, "fake_agentlabd: the loop did not close cleanly\n");
        return 1;
    }
    return 0;
}
