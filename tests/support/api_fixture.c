#include "api_fixture.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runner/base/log.h"
#include "runner/base/util.h"
#include "fake_backend.h"
#include "test_util.h"

struct api_server_limits api_fixture_limits = {
        .max_connections = 12,
        .header_timeout_ms = 400,
        .body_timeout_ms = 1500,
        .idle_timeout_ms = 2000,
        .stream_high_water = 64 << 10,
};

static void on_reconciled(const struct engine_reconcile_report *r, void *data)
{
    (void)r;
    struct api_fixture *c = data;
    c->reconciled = true;
}

void api_fixture_on_stopped(void *data)
{
    struct api_fixture *c = data;
    c->stopped = true;
}

int api_fixture_setup(void **state)
{
    struct api_fixture *c = calloc(1, sizeof(*c));
    uv_loop_init(&c->loop);
    c->dir = test_tmpdir("api");
    unsetenv("AGENTLAB_STATE_DIR");
    unsetenv("AGENTLAB_RUN_DIR");
    char conf[2048];
    snprintf(conf, sizeof(conf),
             "[agent]\nstate_dir = %s\nrun_dir = %s/run\nlog_level = error\nmax_attempts = 1\n"
             "[backend \"local\"]\nmax_vms = 3\n",
             c->dir, c->dir);
    struct al_error *err = NULL;
    assert_int_equal(config_load_string(conf, strlen(conf), "test.conf", &c->cfg, &err), 0);
    fake_backend_write_image(c->dir, "debian-12");
    char *db = al_path_join(c->dir, "agentlab.db");
    assert_int_equal(store_open(db, NULL, &c->store, &err), 0);
    free(db);
    fake_backend_register();
    al_log_set_level(AL_LOG_ERROR);
    struct engine_params ep = {.loop = &c->loop,
                               .cfg = c->cfg,
                               .store = c->store,
                               .owner_id = "daemon:00000000000000000000000000000002"};
    assert_int_equal(engine_new(&ep, &c->engine, &err), 0);
    c->sock = al_path_join(c->dir, "api.sock");
    struct api_params ap = {.loop = &c->loop,
                            .cfg = c->cfg,
                            .engine = c->engine,
                            .unix_path = c->sock,
                            .tcp_host = "127.0.0.1",
                            .tcp_port = 0,
                            .token = API_FIXTURE_TOKEN,
                            .limits = &api_fixture_limits};
    if (api_new(&ap, &c->api, &err) < 0)
        fail_msg("api_new: %s", al_error_message(err));
    engine_start(c->engine, on_reconciled, c);
    assert_true(test_run_until(&c->loop, &c->reconciled, 5000));
    assert_int_equal(api_start(c->api, NULL, &err), 0);
    c->port = api_tcp_port(c->api);
    assert_true(c->port > 0);
    struct stat st;
    assert_int_equal(stat(c->sock, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0660);
    *state = c;
    return 0;
}

int api_fixture_teardown(void **state)
{
    struct api_fixture *c = *state;
    c->stopped = false;
    api_stop(c->api, api_fixture_on_stopped, c);
    assert_true(test_run_until(&c->loop, &c->stopped, 5000));
    assert_int_equal(access(c->sock, F_OK), -1);
    c->stopped = false;
    engine_stop(c->engine, api_fixture_on_stopped, c);
    assert_true(test_run_until(&c->loop, &c->stopped, 5000));
    test_loop_close(&c->loop);
    store_close(c->store);
    config_free(c->cfg);
    test_tmpdir_remove(c->dir);
    free(c->sock);
    free(c);
    return 0;
}
