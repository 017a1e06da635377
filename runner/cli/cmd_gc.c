/* agentlab gc: the daemon's crash-recovery sweep, by hand.
 *
 * Ends the jobs a crashed daemon left in a running phase (requeuing them when
 * attempts remain), and destroys every VM, overlay, seed and run dir this
 * installation owns that no job is using, plus those of `agentlab run`
 * processes that are gone. It needs the state dir to itself: while agentlabd
 * runs, gc asks the daemon to sweep instead (POST /v1/gc). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "runner/base/log.h"
#include "images/sweep.h"
#include "runner/base/util.h"
#include "runner/engine/config.h"
#include "runner/engine/engine.h"
#include "runner/loop/curl_uv.h"
#include "runner/loop/virt_uv.h"
#include "runner/engine/owner.h"
#include "runner/engine/store.h"
#include "runner/cli/api_client.h"
#include "runner/cli/cli.h"

struct gc_ctx {
    struct engine *engine;
    struct al_curl *curl; /* for HTTP backends (Proxmox) */
    struct engine_reconcile_report report;
    bool done;
};

static void on_stopped(void *data)
{
    struct gc_ctx *c = data;
    c->engine = NULL;
    if (c->curl)
        al_curl_close(c->curl, NULL, NULL);
    c->curl = NULL;
    al_virt_event_shutdown();
}

static void on_reconciled(const struct engine_reconcile_report *r, void *data)
{
    struct gc_ctx *c = data;
    c->report = *r;
    c->done = true;
    engine_stop(c->engine, on_stopped, c);
}

/* While agentlabd runs it owns the state dir: it sweeps on request. */
static int gc_through_daemon(struct cli_api *a)
{
    _cleanup_yajl_ yajl_val v = NULL;
    int code = cli_api_call_json(a, "POST", "/v1/gc", 200, "gc", &v);
    if (code)
        return code;
    long long errors = (long long)cli_json_int(v, JPATH("errors"), 0);
    printf("gc (agentlabd): %lld VMs destroyed, %lld errors\n",
           (long long)cli_json_int(v, JPATH("vms_destroyed"), 0), errors);
    return errors ? 1 : 0;
}

int cmd_gc(int argc, char **argv)
{
    const char *socket = NULL;
    for (int i = 1; i < argc; i++) {
        if (streq(argv[i], "--help") || streq(argv[i], "-h")) {
            printf("Usage: agentlab gc [--socket PATH]\n\n"
                   "Destroys the VMs, overlays, seeds and run dirs this installation owns that\n"
                   "no job uses (also those of `agentlab run` processes that died), and ends\n"
                   "jobs a crashed agentlabd left running (ERROR, requeued when attempts\n"
                   "remain), and the build directories of interrupted image builds and\n"
                   "imports. Prints what it removed. While agentlabd runs, gc asks it to\n"
                   "sweep (it reconciles jobs itself at start).\n");
            return 0;
        }
        if (streq(argv[i], "--socket") && i + 1 < argc) {
            socket = argv[++i];
            continue;
        }
        fprintf(stderr, "agentlab gc: unexpected argument \"%s\"\n", argv[i]);
        return 2;
    }
    _cleanup_error_ struct al_error *err = NULL;
    _cleanup_config_ struct config *cfg = NULL;
    if (config_load(NULL, &cfg, &err) < 0) {
        fprintf(stderr, "agentlab: %s\n", al_error_message(err));
        return 1;
    }
    /* build dirs of killed image builds: provably ours and unused when
     * nobody holds their image's build and image locks */
    unsigned swept = 0;
    int sweep_r = image_sweep_builds(cfg->agent.state_dir, NULL, false, &swept, &err);
    if (swept)
        printf("gc: %u leftover image build director%s removed\n", swept, swept == 1 ? "y" : "ies");
    if (sweep_r < 0) {
        fprintf(stderr, "agentlab gc: %s\n", al_error_message(err));
        err = al_error_free(err);
    }
    {
        _cleanup_cli_api_ struct cli_api *api = NULL;
        if (cli_api_open(socket, &api, &err) == 0 && cli_api_daemon_running(api)) {
            int rc = gc_through_daemon(api);
            return sweep_r < 0 && rc == 0 ? 1 : rc;
        }
        err = al_error_free(err);
    }
    al_log_set_level(AL_LOG_INFO);
    _cleanup_close_ int lock_fd = -1;
    _cleanup_free_ char *owner = NULL;
    _cleanup_free_ char *db = al_path_join(cfg->agent.state_dir, "agentlab.db");
    if (al_mkdir_p(cfg->agent.state_dir, 0711, &err) < 0 ||
        owner_lock_state_dir(cfg->agent.state_dir, &lock_fd, &err) < 0 ||
        owner_id_for_state_dir(cfg->agent.state_dir, &owner, &err) < 0) {
        fprintf(stderr, "agentlab gc: %s\n", al_error_message(err));
        return 1;
    }
    struct store *store = NULL;
    if (!db || store_open(db, NULL, &store, &err) < 0) {
        fprintf(stderr, "agentlab gc: %s\n", err ? al_error_message(err) : "out of memory");
        return 1;
    }
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct gc_ctx c = {0};
    int rc = 0;
    if (al_curl_global_init() < 0 || al_curl_new(&loop, &c.curl, &err) < 0) {
        fprintf(stderr, "agentlab gc: %s\n", err ? al_error_message(err) : "curl init failed");
        uv_loop_close(&loop);
        store_close(store);
        al_curl_global_cleanup();
        return 1;
    }
    struct engine_params ep = {
            .loop = &loop,
            .cfg = cfg,
            .store = store,
            .curl = c.curl,
            .owner_id = owner,
            .reconcile_only = true,
    };
    if (al_virt_event_register(&loop, &err) < 0 || engine_new(&ep, &c.engine, &err) < 0) {
        fprintf(stderr, "agentlab gc: %s\n", al_error_message(err));
        on_stopped(&c);
        rc = 1;
    } else {
        engine_start(c.engine, on_reconciled, &c);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    al_curl_global_cleanup();
    if (uv_loop_close(&loop) != 0)
        fprintf(stderr, "agentlab gc: warning: event loop did not close cleanly\n");
    store_close(store);
    if (c.done) {
        const struct engine_reconcile_report *r = &c.report;
        printf("gc: %u VMs destroyed, %u running jobs ended as ERROR (%u requeued), "
               "%u errors\n",
               r->vms_destroyed, r->jobs_failed, r->jobs_requeued, r->errors);
        rc = r->errors ? 1 : 0;
    }
    return sweep_r < 0 && rc == 0 ? 1 : rc;
}
