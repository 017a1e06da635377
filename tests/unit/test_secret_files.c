/* Every reader of a file holding a secret refuses one that everyone may
 * read, through the one helper al_read_secret_file(): the GitLab runner
 * token, the Proxmox token and password, the HTTP queue token, the GitHub
 * secrets and the CLI's API token alike. Group-readable files are fine
 * (root:agentlab 0640 is the usual layout). */
#include "test_util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/cli/api_client.h"
#include "runner/engine/config.h"
#include "runner/loop/curl_uv.h"
#include "provision/pve_api.h"
#include "runner/sources/github_auth.h"
#include "runner/sources/gitlab.h"
#include "runner/sources/httpq.h"

#define SECRET "s3cret-value-0123456789"

struct ctx {
    char *dir;
    char path[512];
};

static int setup(void **state)
{
    struct ctx *c = calloc(1, sizeof(*c));
    c->dir = test_tmpdir("secret-files");
    snprintf(c->path, sizeof(c->path), "%s/secret", c->dir);
    *state = c;
    return 0;
}

static int teardown(void **state)
{
    struct ctx *c = *state;
    test_tmpdir_remove(c->dir);
    free(c);
    al_redact_clear();
    return 0;
}

static void write_secret(const struct ctx *c, const char *text, mode_t mode)
{
    struct al_error *err = NULL;
    assert_int_equal(al_write_file_atomic(c->path, text, strlen(text), mode, &err), 0);
}

/* The message says what to do and never holds the contents. */
static void assert_refused(struct al_error *err)
{
    const char *msg = al_error_message(err);
    if (!strstr(msg, "is readable by everyone; chmod o-r it first") || strstr(msg, "s3cret"))
        fail_msg("unexpected message: %s", msg);
    al_error_free(err);
}

static void test_helper(void **state)
{
    struct ctx *c = *state;
    char *data = NULL;
    size_t len = 0;
    struct al_error *err = NULL;
    write_secret(c, SECRET "\n", 0640);
    assert_int_equal(al_read_secret_file(c->path, "token_file", 4096, &data, &len, &err), 0);
    assert_string_equal(data, SECRET "\n");
    assert_int_equal(len, strlen(SECRET) + 1);
    free(data);

    write_secret(c, SECRET "\n", 0604);
    data = NULL;
    assert_int_equal(al_read_secret_file(c->path, "token_file", 4096, &data, &len, &err), -EPERM);
    assert_null(data);
    assert_non_null(strstr(al_error_message(err), "token_file "));
    assert_refused(err);
    err = NULL;

    write_secret(c, SECRET "\n", 0600);
    assert_int_equal(al_read_secret_file(c->path, "token_file", 4, &data, &len, &err), -EFBIG);
    assert_null(strstr(al_error_message(err), "s3cret"));
    err = al_error_free(err);
    assert_true(al_read_secret_file("/nonexistent/x", "token_file", 4096, &data, &len, &err) < 0);
    assert_non_null(strstr(al_error_message(err), "token_file /nonexistent/x"));
    err = al_error_free(err);
    assert_int_equal(al_read_secret_file("", "token_file", 4096, &data, &len, &err), -EINVAL);
    al_error_free(err);
}

static void test_gitlab_runner_token(void **state)
{
    struct ctx *c = *state;
    char *token = NULL;
    struct al_error *err = NULL;
    write_secret(c, "glrt-" SECRET "\n", 0600);
    assert_int_equal(gitlab_read_token(c->path, &token, &err), 0);
    assert_string_equal(token, "glrt-" SECRET);
    free(token);
    write_secret(c, "glrt-" SECRET "\n", 0644);
    assert_int_equal(gitlab_read_token(c->path, &token, &err), -EPERM);
    assert_refused(err);
}

static void test_github_secrets(void **state)
{
    struct ctx *c = *state;
    char *s = NULL;
    struct al_error *err = NULL;
    write_secret(c, SECRET "\n", 0644);
    assert_int_equal(github_read_secret(c->path, "webhook_secret", 8, &s, &err), -EPERM);
    assert_refused(err);
}

static void on_closed(void *data)
{
    *(bool *)data = true;
}

static void test_proxmox_token_and_password(void **state)
{
    struct ctx *c = *state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct al_curl *curl = NULL;
    struct al_error *err = NULL;
    assert_int_equal(al_curl_new(&loop, &curl, &err), 0);
    struct pve_api *api = NULL;

    write_secret(c, "root@pam!agentlab=" SECRET "\n", 0644);
    struct pve_api_config tok = {.url = "https://pve.example:8006", .token_file = c->path};
    assert_int_equal(pve_api_new(&loop, curl, &tok, &api, &err), -EPERM);
    assert_null(api);
    assert_refused(err);
    err = NULL;
    write_secret(c, "root@pam!agentlab=" SECRET "\n", 0600);
    assert_int_equal(pve_api_new(&loop, curl, &tok, &api, &err), 0);
    bool closed = false;
    pve_api_close(api, on_closed, &closed);
    assert_true(test_run_until(&loop, &closed, 2000));

    write_secret(c, SECRET "\n", 0604);
    struct pve_api_config pw = {
            .url = "https://pve.example:8006", .user = "root@pam", .password_file = c->path};
    assert_int_equal(pve_api_new(&loop, curl, &pw, &api, &err), -EPERM);
    assert_refused(err);

    closed = false;
    al_curl_close(curl, on_closed, &closed);
    assert_true(test_run_until(&loop, &closed, 2000));
    test_loop_close(&loop);
}

static void test_http_queue_token(void **state)
{
    struct ctx *c = *state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct al_curl *curl = NULL;
    struct al_error *err = NULL;
    assert_int_equal(al_curl_new(&loop, &curl, &err), 0);
    write_secret(c, SECRET "\n", 0644);
    struct config_source src = {.name = "q", .url = "http://127.0.0.1:9", .token_file = c->path};
    struct httpq *q = NULL;
    /* refused before the engine is looked at */
    assert_int_equal(httpq_start(&loop, curl, NULL, &src, &q, &err), -EPERM);
    assert_null(q);
    assert_non_null(strstr(al_error_message(err), "queue q: token_file"));
    assert_refused(err);
    bool closed = false;
    al_curl_close(curl, on_closed, &closed);
    assert_true(test_run_until(&loop, &closed, 2000));
    test_loop_close(&loop);
}

static void test_cli_api_token(void **state)
{
    struct ctx *c = *state;
    write_secret(c, SECRET "\n", 0644);
    setenv("AGENTLAB_URL", "http://127.0.0.1:9", 1);
    setenv("AGENTLAB_TOKEN_FILE", c->path, 1);
    unsetenv("AGENTLAB_SOCKET");
    struct cli_api *a = NULL;
    struct al_error *err = NULL;
    assert_true(cli_api_open(NULL, &a, &err) < 0);
    assert_null(a);
    assert_refused(err);
    unsetenv("AGENTLAB_URL");
    unsetenv("AGENTLAB_TOKEN_FILE");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_helper, setup, teardown),
            cmocka_unit_test_setup_teardown(test_gitlab_runner_token, setup, teardown),
            cmocka_unit_test_setup_teardown(test_github_secrets, setup, teardown),
            cmocka_unit_test_setup_teardown(test_proxmox_token_and_password, setup, teardown),
            cmocka_unit_test_setup_teardown(test_http_queue_token, setup, teardown),
            cmocka_unit_test_setup_teardown(test_cli_api_token, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
