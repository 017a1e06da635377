/* The CLI's job commands through the daemon (runner/cli/job_remote.c)
 * against a small HTTP server in a thread that plays the daemon: exit codes
 * and output of job show|logs|cancel|artifacts, and the artifact download,
 * whose files are written like the host extraction writes them, never
 * through a symlink and never over an existing file. */
#include "test_util.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runner/base/util.h"
#include "runner/cli/api_client.h"
#include "runner/cli/job_remote.h"

#define JOB "j0123456789abcdef0123"

struct fake_daemon {
    int listen_fd;
    pthread_t thread;
};

static void answer(int fd, int status, const char *type, const char *body)
{
    char head[256];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d X\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n",
                     status, type, strlen(body));
    assert_true(write(fd, head, (size_t)n) == n);
    assert_true(write(fd, body, strlen(body)) == (ssize_t)strlen(body));
}

static void *serve(void *data)
{
    struct fake_daemon *d = data;
    for (;;) {
        int fd = accept4(d->listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            return NULL;
        char req[2048];
        size_t len = 0;
        ssize_t k;
        while (len < sizeof(req) - 1 && (k = read(fd, req + len, sizeof(req) - 1 - len)) > 0) {
            len += (size_t)k;
            req[len] = '\0';
            if (strstr(req, "\r\n\r\n"))
                break;
        }
        req[len] = '\0';
        char method[16] = "", path[512] = "";
        if (sscanf(req, "%15s %511s", method, path) != 2)
            answer(fd, 400, "text/plain", "");
        else if (streq(method, "POST") && streq(path, "/v1/jobs/" JOB "/cancel"))
            answer(fd, 202, "application/json", "{\"id\":\"" JOB "\",\"state\":\"RUNNING\"}");
        else if (!streq(method, "GET"))
            answer(fd, 405, "application/json", "{\"error\":{\"message\":\"method\"}}");
        else if (streq(path, "/v1/jobs/" JOB))
            answer(fd, 200, "application/json",
                   "{\"job\":{\"id\":\"" JOB "\",\"state\":\"FAILED\",\"exit_code\":3,"
                   "\"labels\":[\"big\",\"gpu\"],\"limits_hit\":[\"disk\"]},\"attempts\":[]}");
        else if (streq(path, "/v1/jobs/" JOB "/logs?offset=2"))
            answer(fd, 200, "text/plain", "llo\n");
        else if (streq(path, "/v1/jobs/" JOB "/artifacts"))
            answer(fd, 200, "application/json",
                   "{\"artifacts\":[{\"path\":\"x.log\",\"size\":2048}]}");
        else if (streq(path, "/v1/jobs/j1/artifacts"))
            answer(fd, 200, "application/json",
                   "{\"artifacts\":[{\"path\":\"sub/a.txt\",\"size\":4},"
                   "{\"path\":\"b.txt\",\"size\":4}]}");
        else if (streq(path, "/v1/jobs/j1/artifacts/sub/a.txt"))
            answer(fd, 200, "application/octet-stream", "AAAA");
        else if (streq(path, "/v1/jobs/j1/artifacts/b.txt"))
            answer(fd, 200, "application/octet-stream", "BBBB");
        else
            answer(fd, 404, "application/json",
                   "{\"error\":{\"code\":\"not_found\",\"message\":\"no\"}}");
        close(fd);
    }
}

static int setup(void **state)
{
    struct fake_daemon *d = calloc(1, sizeof(*d));
    d->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(d->listen_fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(d->listen_fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(d->listen_fd, 8), 0);
    socklen_t sl = sizeof(sa);
    assert_int_equal(getsockname(d->listen_fd, (struct sockaddr *)&sa, &sl), 0);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", ntohs(sa.sin_port));
    setenv("AGENTLAB_URL", url, 1);
    unsetenv("AGENTLAB_SOCKET");
    unsetenv("AGENTLAB_TOKEN_FILE");
    assert_int_equal(pthread_create(&d->thread, NULL, serve, d), 0);
    *state = d;
    return 0;
}

static int teardown(void **state)
{
    struct fake_daemon *d = *state;
    shutdown(d->listen_fd, SHUT_RDWR);
    pthread_join(d->thread, NULL);
    close(d->listen_fd);
    free(d);
    return 0;
}

static void write_text(const char *path, const char *text)
{
    struct al_error *err = NULL;
    assert_int_equal(al_write_file_atomic(path, text, strlen(text), 0644, &err), 0);
}

static void assert_file(const char *path, const char *want)
{
    char *text = NULL;
    struct al_error *err = NULL;
    if (al_read_file(path, 4096, &text, NULL, &err) < 0)
        fail_msg("%s: %s", path, al_error_message(err));
    assert_string_equal(text, want);
    free(text);
}

static int download(const char *dir, unsigned *ret_files)
{
    struct cli_api *a = NULL;
    struct al_error *err = NULL;
    assert_int_equal(cli_api_open(NULL, &a, &err), 0);
    int code = cli_download_artifacts(a, "j1", dir, ret_files);
    cli_api_close(a);
    return code;
}

static void test_download(void **state)
{
    (void)state;
    char *tmp = test_tmpdir("job-remote");
    char *dir = al_path_join(tmp, "out");
    char path[600];
    unsigned n = 0;
    assert_int_equal(download(dir, &n), 0);
    assert_int_equal(n, 2);
    snprintf(path, sizeof(path), "%s/sub/a.txt", dir);
    assert_file(path, "AAAA");
    snprintf(path, sizeof(path), "%s/b.txt", dir);
    assert_file(path, "BBBB");
    free(dir);
    test_tmpdir_remove(tmp);
}

/* A second download into the same directory, or one where a file of that
 * name is already there, does not replace it. */
static void test_never_clobbers(void **state)
{
    (void)state;
    char *tmp = test_tmpdir("job-remote");
    char path[600];
    snprintf(path, sizeof(path), "%s/b.txt", tmp);
    write_text(path, "mine");
    unsigned n = 0;
    assert_int_not_equal(download(tmp, &n), 0);
    assert_int_equal(n, 1);
    assert_file(path, "mine");
    snprintf(path, sizeof(path), "%s/sub/a.txt", tmp);
    assert_file(path, "AAAA");
    /* all there now: nothing is written */
    assert_int_not_equal(download(tmp, &n), 0);
    assert_int_equal(n, 0);
    test_tmpdir_remove(tmp);
}

/* Symlinks in the target directory, to a file or to a directory, are not
 * followed: what they point to stays as it was. */
static void test_never_follows_symlinks(void **state)
{
    (void)state;
    char *tmp = test_tmpdir("job-remote");
    char outside[512], path[600];
    snprintf(outside, sizeof(outside), "%s/outside", tmp);
    assert_int_equal(mkdir(outside, 0755), 0);
    snprintf(path, sizeof(path), "%s/victim", outside);
    write_text(path, "precious");
    char *dir = al_path_join(tmp, "out");
    assert_int_equal(mkdir(dir, 0755), 0);
    /* out/b.txt -> outside/victim, out/sub -> outside */
    snprintf(path, sizeof(path), "%s/b.txt", dir);
    assert_int_equal(symlink("../outside/victim", path), 0);
    snprintf(path, sizeof(path), "%s/sub", dir);
    assert_int_equal(symlink("../outside", path), 0);
    unsigned n = 0;
    assert_int_not_equal(download(dir, &n), 0);
    assert_int_equal(n, 0);
    snprintf(path, sizeof(path), "%s/victim", outside);
    assert_file(path, "precious");
    snprintf(path, sizeof(path), "%s/a.txt", outside);
    assert_int_equal(access(path, F_OK), -1);
    free(dir);
    test_tmpdir_remove(tmp);
}

/* Runs a job command with argv (NULL-terminated) and its stdout captured
 * into out; returns its exit code. */
static int run_captured(int (*cmd)(int argc, char **argv), char **argv, char *out, size_t size)
{
    int argc = 0;
    while (argv[argc])
        argc++;
    FILE *f = tmpfile();
    assert_non_null(f);
    fflush(stdout);
    int saved = dup(STDOUT_FILENO);
    assert_true(dup2(fileno(f), STDOUT_FILENO) >= 0);
    int code = cmd(argc, argv);
    fflush(stdout);
    assert_true(dup2(saved, STDOUT_FILENO) >= 0);
    close(saved);
    rewind(f);
    size_t n = fread(out, 1, size - 1, f);
    out[n] = '\0';
    fclose(f);
    return code;
}

static void test_job_commands(void **state)
{
    (void)state;
    char out[4096];
    assert_int_equal(run_captured(job_show, (char *[]){"show", JOB, NULL}, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "state:     FAILED (exit 3)"));
    assert_non_null(strstr(out, "labels:    big gpu\n"));
    assert_non_null(strstr(out, "limits:    disk\n"));
    assert_int_equal(
            run_captured(job_show, (char *[]){"show", "--json", JOB, NULL}, out, sizeof(out)), 0);
    assert_true(strncmp(out, "{\"job\":", 7) == 0);
    assert_int_equal(run_captured(job_logs, (char *[]){"logs", "--offset", "2", JOB, NULL}, out,
                                  sizeof(out)),
                     0);
    assert_string_equal(out, "llo\n");
    assert_int_equal(run_captured(job_cancel, (char *[]){"cancel", JOB, NULL}, out, sizeof(out)),
                     0);
    assert_string_equal(out, "job " JOB ": cancel requested (RUNNING)\n");
    assert_int_equal(
            run_captured(job_artifacts, (char *[]){"artifacts", JOB, NULL}, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "x.log"));
    /* no such job: 4; not a job id, an option the command does not take,
     * no id: usage, 2 */
    assert_int_equal(run_captured(job_logs, (char *[]){"logs", "j0123456789abcdef0124", NULL}, out,
                                  sizeof(out)),
                     CLI_EXIT_NOT_FOUND);
    assert_int_equal(run_captured(job_show, (char *[]){"show", "j1", NULL}, out, sizeof(out)),
                     CLI_EXIT_USAGE);
    assert_int_equal(run_captured(job_show, (char *[]){"show", "-f", JOB, NULL}, out, sizeof(out)),
                     CLI_EXIT_USAGE);
    assert_int_equal(run_captured(job_cancel, (char *[]){"cancel", NULL}, out, sizeof(out)),
                     CLI_EXIT_USAGE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_job_commands),
            cmocka_unit_test(test_download),
            cmocka_unit_test(test_never_clobbers),
            cmocka_unit_test(test_never_follows_symlinks),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
