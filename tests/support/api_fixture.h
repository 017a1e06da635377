/* A cmocka fixture for control-API tests: a temporary state dir, the real
 * store and engine on the simulated hypervisor (fake_backend.h), and the
 * API on a unix socket in that dir plus 127.0.0.1 (any free port) with the
 * token API_FIXTURE_TOKEN, with short limits (api_fixture_limits). */
#ifndef AL_TEST_API_FIXTURE_H
#define AL_TEST_API_FIXTURE_H

#include <stdbool.h>
#include <uv.h>

#include "runner/api/api.h"
#include "runner/engine/config.h"
#include "runner/engine/engine.h"
#include "runner/engine/store.h"

#define API_FIXTURE_TOKEN "test-token-0123456789abcdef"

struct api_fixture {
    uv_loop_t loop;
    char *dir;
    char *sock;
    struct config *cfg;
    struct store *store;
    struct engine *engine;
    struct api *api;
    int port;
    bool reconciled;
    bool stopped;
};

/* max 12 connections, headers within 400 ms, body within 1.5 s, idle 2 s,
 * 64 KiB stream high-water mark */
extern struct api_server_limits api_fixture_limits;

int api_fixture_setup(void **state);
int api_fixture_teardown(void **state);

/* A done callback that sets ->stopped. */
void api_fixture_on_stopped(void *data);

#endif
