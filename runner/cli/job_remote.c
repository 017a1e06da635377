#include "runner/cli/job_remote.h"

#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runner/api/json.h"
#include "runner/api/router.h"
#include "runner/base/util.h"
#include "runner/engine/spec.h"
#include "runner/cli/cli_opts.h"
#include "runner/cli/cmd_job.h"
#include "provision/workdir.h"
#include "runner/cli/table.h"

/* ------------------------------------------------------------ shared */

static volatile sig_atomic_t interrupt_count;

static void on_signal(int sig)
{
    (void)sig;
    interrupt_count++;
}

void cli_install_interrupt(void)
{
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
}

bool cli_interrupted(void)
{
    return interrupt_count > 0;
}

/* Appends name=value (value percent-encoded) to a query string. */
static int query_add(struct al_buf *q, const char *name, const char *value)
{
    if (!value)
        return 0;
    int r = al_buf_printf(q, "%c%s=", q->len ? '&' : '?', name);
    for (const unsigned char *p = (const unsigned char *)value; *p && r == 0; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            strchr("-._~", *p))
            r = al_buf_append(q, p, 1);
        else
            r = al_buf_printf(q, "%%%02X", *p);
    }
    return r;
}

static bool check_id(const char *cmd, const char *id)
{
    if (id && route_job_id_is_valid(id, strlen(id)))
        return true;
    fprintf(stderr, "agentlab %s: \"%s\" is not a job id (\"j\" and 20 hex digits)\n", cmd,
            id ? id : "");
    return false;
}

static int write_all(int fd, const char *buf, size_t len)
{
    while (len) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -errno;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static int fd_sink(const char *buf, size_t len, void *data)
{
    return write_all(*(int *)data, buf, len);
}

int cli_job_result(struct cli_api *a, const char *id, struct cli_job_result *ret)
{
    char path[96];
    snprintf(path, sizeof(path), "/v1/jobs/%s", id);
    _cleanup_yajl_ yajl_val v = NULL;
    int rc = cli_api_call_json(a, "GET", path, 200, "reading the job", &v);
    if (rc)
        return rc;
    struct cli_job_result r = {.state = JOB_STATE_NONE};
    const char *st = cli_json_str(v, JPATH("job", "state"));
    if (!st || job_state_from_string(st, &r.state) < 0) {
        fprintf(stderr, "agentlab: the daemon's answer has no job state\n");
        return CLI_EXIT_FAILED;
    }
    int64_t code = cli_json_int(v, JPATH("job", "exit_code"), -1);
    r.has_exit_code = code >= 0;
    r.exit_code = (int)code;
    const char *reason = cli_json_str(v, JPATH("job", "reason"));
    snprintf(r.reason, sizeof(r.reason), "%s", reason ? reason : "");
    r.created_ms = cli_json_int(v, JPATH("job", "created_ms"), 0);
    r.updated_ms = cli_json_int(v, JPATH("job", "updated_ms"), 0);
    *ret = r;
    return 0;
}

int cli_run_exit_code(enum job_state state, bool has_exit_code, int exit_code)
{
    switch (state) {
    case JOB_STATE_SUCCEEDED:
    case JOB_STATE_FAILED:
        return has_exit_code ? exit_code : 125;
    case JOB_STATE_TIMED_OUT:
        return 124;
    case JOB_STATE_CANCELED:
        return 130;
    default:
        return 125;
    }
}

struct follow {
    struct cli_api *a;
    const char *id;
    int fd;
    bool interruptible;
};

static bool follow_interrupted(void *data)
{
    struct follow *f = data;
    return f->interruptible && cli_interrupted();
}

static void follow_cancel(void *data)
{
    struct follow *f = data;
    fprintf(stderr, "agentlab: cancelling job %s; the VM is being cleaned up\n", f->id);
    char path[96];
    snprintf(path, sizeof(path), "/v1/jobs/%s/cancel", f->id);
    struct cli_resp r = {0};
    struct al_error *err = NULL;
    if (cli_api_request(f->a, "POST", path, NULL, NULL, 0, &r, &err) < 0 ||
        (r.status != 202 && r.status != 409))
        cli_api_fail(f->a, err ? -EIO : 0, &r, err, "cancelling the job");
    al_error_free(err);
    cli_resp_clear(&r);
}

int cli_follow_logs(struct cli_api *a, const char *id, int fd, bool interruptible)
{
    struct follow f = {.a = a, .id = id, .fd = fd, .interruptible = interruptible};
    char path[128];
    snprintf(path, sizeof(path), "/v1/jobs/%s/logs?follow=1", id);
    struct cli_resp r = {0};
    _cleanup_error_ struct al_error *err = NULL;
    int rc = cli_api_stream(a, path, fd_sink, &fd, interruptible ? follow_interrupted : NULL,
                            follow_cancel, &r, &err);
    (void)f;
    int code = 0;
    if (rc < 0 || r.status != 200)
        code = cli_api_fail(a, rc, &r, err, "following the log");
    cli_resp_clear(&r);
    return code;
}

int cli_upload_workdir(struct cli_api *a, const char *dir, char *ret_id, size_t size)
{
    _cleanup_error_ struct al_error *err = NULL;
    char tmp[] = "/tmp/agentlab-workdir-XXXXXX";
    int fd = mkstemp(tmp);
    if (fd < 0) {
        fprintf(stderr, "agentlab: creating a temporary file: %s\n", strerror(errno));
        return CLI_EXIT_FAILED;
    }
    close(fd);
    int code = 0;
    struct cli_resp r = {0};
    if (workdir_pack(dir, tmp, 0, NULL, &err) < 0) {
        fprintf(stderr, "agentlab: %s\n", al_error_message(err));
        code = CLI_EXIT_FAILED;
    } else {
        int rc = cli_api_upload(a, "/v1/uploads", tmp, &r, &err);
        if (rc < 0 || r.status != 201) {
            code = cli_api_fail(a, rc, &r, err, "uploading the work dir");
        } else {
            _cleanup_yajl_ yajl_val v = cli_resp_json(&r);
            const char *id = cli_json_str(v, JPATH("upload"));
            if (!id) {
                code = CLI_EXIT_FAILED;
            } else {
                snprintf(ret_id, size, "%s", id);
            }
        }
    }
    cli_resp_clear(&r);
    unlink(tmp);
    return code;
}

int cli_submit_job(struct cli_api *a, const char *workdir, const char *spec, size_t len,
                   struct cli_resp *ret, char ret_id[STORE_JOB_ID_SIZE])
{
    char upload[64] = "";
    int code;
    if (workdir && (code = cli_upload_workdir(a, workdir, upload, sizeof(upload))))
        return code;
    char path[128] = "/v1/jobs";
    if (upload[0])
        snprintf(path, sizeof(path), "/v1/jobs?workdir=%s", upload);
    if ((code = cli_api_call(a, "POST", path, "application/json", spec, len, 201,
                             "submitting the job", ret)))
        return code;
    _cleanup_yajl_ yajl_val v = cli_resp_json(ret);
    const char *id = cli_json_str(v, JPATH("id"));
    if (!id || strlen(id) >= STORE_JOB_ID_SIZE) {
        cli_resp_clear(ret);
        return CLI_EXIT_FAILED;
    }
    memcpy(ret_id, id, strlen(id) + 1);
    return 0;
}

/* Writes one artifact below the directory dfd (named dir in messages),
 * creating its directories, the way provision/artifacts.c writes them: one
 * component at a time without following symlinks, and never through or
 * over an existing file. */
static int download_one(struct cli_api *a, const char *id, int dfd, const char *dir,
                        const char *rel)
{
    if (!route_artifact_path_is_valid(rel, strlen(rel))) {
        fprintf(stderr, "agentlab: skipping artifact with a bad path \"%s\"\n", rel);
        return CLI_EXIT_FAILED;
    }
    _cleanup_free_ char *dest = al_path_join(dir, rel);
    _cleanup_error_ struct al_error *err = NULL;
    if (!dest)
        return CLI_EXIT_FAILED;
    const char *slash = strrchr(rel, '/');
    const char *name = slash ? slash + 1 : rel;
    _cleanup_close_ int pfd =
            al_open_dirs_nofollow(dfd, rel, slash ? (size_t)(slash - rel) : 0, NULL);
    if (pfd < 0) {
        fprintf(stderr, "agentlab: %s: %s%s\n", dest, strerror(-pfd),
                pfd == -ELOOP || pfd == -ENOTDIR
                        ? " (a directory on the way is a symlink or a file)"
                        : "");
        return CLI_EXIT_FAILED;
    }
    int fd = openat(pfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0 && errno == EEXIST) {
        fprintf(stderr,
                "agentlab: %s already exists; not overwriting it (remove it or choose "
                "another --artifacts-dir)\n",
                dest);
        return CLI_EXIT_FAILED;
    }
    if (fd < 0) {
        fprintf(stderr, "agentlab: %s: %s\n", dest, strerror(errno));
        return CLI_EXIT_FAILED;
    }
    _cleanup_buf_ struct al_buf path = AL_BUF_INIT;
    al_buf_printf(&path, "/v1/jobs/%s/artifacts/", id);
    /* keep the slashes, escape the rest */
    for (const unsigned char *p = (const unsigned char *)rel; *p; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            strchr("-._~/", *p))
            al_buf_append(&path, p, 1);
        else
            al_buf_printf(&path, "%%%02X", *p);
    }
    struct cli_resp r = {0};
    int rc = cli_api_stream(a, path.data, fd_sink, &fd, NULL, NULL, &r, &err);
    int code = 0;
    if (rc < 0 || r.status != 200)
        code = cli_api_fail(a, rc, &r, err, rel);
    if (close(fd) < 0 && !code) {
        fprintf(stderr, "agentlab: %s: %s\n", dest, strerror(errno));
        code = CLI_EXIT_FAILED;
    }
    /* a partial file would be taken for the artifact */
    if (code)
        unlinkat(pfd, name, 0);
    cli_resp_clear(&r);
    return code;
}

int cli_download_artifacts(struct cli_api *a, const char *id, const char *dir, unsigned *ret_files)
{
    char path[128];
    snprintf(path, sizeof(path), "/v1/jobs/%s/artifacts", id);
    _cleanup_yajl_ yajl_val v = NULL;
    int code = cli_api_call_json(a, "GET", path, 200, "listing artifacts", &v);
    if (code)
        return code;
    yajl_val arr = cli_json_array(v, JPATH("artifacts"));
    _cleanup_error_ struct al_error *err = NULL;
    if (al_mkdir_p(dir, 0755, &err) < 0) {
        fprintf(stderr, "agentlab: %s\n", al_error_message(err));
        return CLI_EXIT_FAILED;
    }
    _cleanup_close_ int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        fprintf(stderr, "agentlab: %s: %s\n", dir, strerror(errno));
        return CLI_EXIT_FAILED;
    }
    unsigned n = 0;
    for (size_t i = 0; arr && i < arr->u.array.len; i++) {
        const char *rel = cli_json_str(arr->u.array.values[i], JPATH("path"));
        if (!rel)
            continue;
        int c = download_one(a, id, dfd, dir, rel);
        if (c)
            code = c;
        else
            n++;
    }
    if (ret_files)
        *ret_files = n;
    return code;
}

/* ------------------------------------------------------------ submit */

static void submit_usage(FILE *out)
{
    fprintf(out, "Usage: agentlab job submit [OPTIONS] FILE|-\n"
                 "\n"
                 "Submits a job spec (JSON, see README \"Job spec\") to the running agentlabd\n"
                 "and prints the job's id. \"-\" reads standard input.\n"
                 "\n"
                 "  --workdir DIR   upload DIR as the job's work directory\n"
                 "  -f, --follow    stream the job's output until it ends; exit like\n"
                 "                  `agentlab run` (the workload's status, 124, 130, 125)\n"
                 "  --json          print the accepted job as JSON\n"
                 "  --socket PATH   the daemon's socket (default: api_socket)\n"
                 "  -h, --help      show this help\n");
}

int job_submit(int argc, char **argv)
{
    struct cli_opts o = {0};
    int code = cli_parse_opts(argc, argv, CLI_OPTS_WORKDIR | CLI_OPTS_FOLLOW | CLI_OPTS_OPERAND,
                              submit_usage, &o);
    if (code >= 0)
        return code;
    _cleanup_error_ struct al_error *err = NULL;
    _cleanup_free_ char *spec = NULL;
    size_t len = 0;
    if (cli_read_spec(o.operand, &spec, &len, &err) < 0) {
        fprintf(stderr, "agentlab: %s\n", al_error_message(err));
        return CLI_EXIT_FAILED;
    }
    _cleanup_cli_api_ struct cli_api *a = NULL;
    if ((code = cli_api_connect(o.socket, &a)))
        return code;
    struct cli_resp r = {0};
    char id[STORE_JOB_ID_SIZE];
    if ((code = cli_submit_job(a, o.workdir, spec, len, &r, id)))
        return code;
    if (o.json)
        fwrite(r.body.data, 1, r.body.len, stdout);
    else if (!o.follow)
        printf("%s\n", id);
    cli_resp_clear(&r);
    if (!o.follow)
        return 0;
    fflush(stdout);
    fprintf(stderr, "agentlab: job %s: queued\n", id);
    cli_install_interrupt();
    code = cli_follow_logs(a, id, o.json ? STDERR_FILENO : STDOUT_FILENO, true);
    if (code)
        return code;
    struct cli_job_result res;
    if ((code = cli_job_result(a, id, &res)))
        return code;
    fprintf(stderr, "agentlab: job %s: %s%s%s\n", id, job_state_to_string(res.state),
            res.reason[0] ? ": " : "", res.reason);
    return cli_run_exit_code(res.state, res.has_exit_code, res.exit_code);
}

/* ------------------------------------------------------------ ls */

static void ls_usage(FILE *out)
{
    fprintf(out, "Usage: agentlab job ls [OPTIONS]\n"
                 "\n"
                 "Lists jobs, newest first.\n"
                 "\n"
                 "  --state STATE   only jobs in STATE (queued, running, succeeded, ...)\n"
                 "  --label LABEL   only jobs with LABEL\n"
                 "  --source TYPE   only jobs from api, cli, spool, http, gitlab or github\n"
                 "  --limit N       at most N jobs (default 50, at most 1000 a page)\n"
                 "  --all           every matching job (follows the pages)\n"
                 "  --json          JSON instead of a table\n"
                 "  --socket PATH   the daemon's socket (default: api_socket)\n"
                 "  -h, --help      show this help\n");
}

static void job_row(struct table *t, yajl_val j)
{
    char age[32], code[24];
    table_age(cli_json_int(j, JPATH("created_ms"), 0), age, sizeof(age));
    int64_t ec = cli_json_int(j, JPATH("exit_code"), -1);
    if (ec >= 0)
        snprintf(code, sizeof(code), "%lld", (long long)ec);
    else
        snprintf(code, sizeof(code), "-");
    const char *cells[] = {cli_json_str(j, JPATH("id")),
                           cli_json_str(j, JPATH("state")),
                           code,
                           age,
                           cli_json_str(j, JPATH("source", "type")),
                           cli_json_str(j, JPATH("name")),
                           cli_json_str(j, JPATH("reason"))};
    table_add(t, cells);
}

int job_ls(int argc, char **argv)
{
    struct cli_opts o = {0};
    int code = cli_parse_opts(argc, argv, CLI_OPTS_FILTER, ls_usage, &o);
    if (code >= 0)
        return code;
    int limit = 0;
    if (o.limit && al_parse_int(o.limit, 1, STORE_LIST_MAX, &limit) < 0) {
        fprintf(stderr, "agentlab job ls: --limit expects 1 to %d\n", STORE_LIST_MAX);
        return CLI_EXIT_USAGE;
    }
    _cleanup_cli_api_ struct cli_api *a = NULL;
    if ((code = cli_api_connect(o.socket, &a)))
        return code;
    static const char *const heads[] = {"ID", "STATE", "EXIT", "AGE", "SOURCE", "NAME", "REASON"};
    struct table *t = table_new(7, heads);
    _cleanup_json_gen_ yajl_gen g = json_gen_new();
    if (!t || !g) {
        table_free(t);
        return CLI_EXIT_FAILED;
    }
    int jr = json_open_map(g) | json_key(g, "jobs") | json_open_array(g);
    char cursor[64] = "";
    do {
        _cleanup_buf_ struct al_buf q = AL_BUF_INIT;
        char lim[16];
        snprintf(lim, sizeof(lim), "%d", limit ? limit : (o.all ? STORE_LIST_MAX : 50));
        query_add(&q, "limit", lim);
        query_add(&q, "state", o.state);
        query_add(&q, "label", o.label);
        query_add(&q, "source", o.source);
        query_add(&q, "cursor", cursor[0] ? cursor : NULL);
        _cleanup_free_ char *path = NULL;
        if (asprintf(&path, "/v1/jobs%s", q.data ? q.data : "") < 0)
            break;
        _cleanup_yajl_ yajl_val v = NULL;
        if ((code = cli_api_call_json(a, "GET", path, 200, "listing jobs", &v))) {
            table_free(t);
            return code;
        }
        yajl_val arr = cli_json_array(v, JPATH("jobs"));
        for (size_t i = 0; arr && i < arr->u.array.len; i++) {
            if (o.json)
                jr |= json_tree_value(g, arr->u.array.values[i]);
            else
                job_row(t, arr->u.array.values[i]);
        }
        const char *next = cli_json_str(v, JPATH("next_cursor"));
        snprintf(cursor, sizeof(cursor), "%s", next && o.all ? next : "");
    } while (cursor[0]);
    jr |= json_close_array(g) | json_close_map(g);
    if (o.json) {
        const unsigned char *buf;
        size_t len;
        if (jr || yajl_gen_get_buf(g, &buf, &len) != yajl_gen_status_ok) {
            table_free(t);
            return CLI_EXIT_FAILED;
        }
        printf("%.*s\n", (int)len, (const char *)buf);
    } else {
        table_print(t, stdout);
    }
    table_free(t);
    return 0;
}

/* ------------------------------------------------------------ show, logs, cancel */

/* Parses "[options] ID" for the commands that take one job id (flags as
 * cli_parse_opts()) and connects: -1 with *ret_a to go on, else an exit
 * code. */
static int id_command(int argc, char **argv, const char *cmd, void (*usage)(FILE *), unsigned flags,
                      struct cli_opts *o, struct cli_api **ret_a)
{
    int code = cli_parse_opts(argc, argv, flags | CLI_OPTS_OPERAND, usage, o);
    if (code >= 0)
        return code;
    if (!check_id(cmd, o->operand))
        return CLI_EXIT_USAGE;
    code = cli_api_connect(o->socket, ret_a);
    return code ? code : -1;
}

/* Sends METHOD /v1/jobs/ID<suffix> for a command of id_command(), which
 * must be answered with status want. Returns -1 with the answer in *ret
 * (the caller clears it); 0 once the answer is printed as it came (--json);
 * else an exit code. */
static int job_request(struct cli_api *a, const struct cli_opts *o, const char *method,
                       const char *suffix, long want, const char *what, struct cli_resp *ret)
{
    char path[160];
    snprintf(path, sizeof(path), "/v1/jobs/%s%s", o->operand, suffix);
    int code = cli_api_call(a, method, path, NULL, NULL, 0, want, what, ret);
    if (code)
        return code;
    if (o->json) {
        cli_resp_print_raw(ret);
        return 0;
    }
    return -1;
}

/* job_request() with the answer parsed: -1 with it in *ret_v, else an exit
 * code (0 once printed as it came, with --json). */
static int job_request_json(struct cli_api *a, const struct cli_opts *o, const char *method,
                            const char *suffix, long want, const char *what, yajl_val *ret_v)
{
    struct cli_resp r = {0};
    int code = job_request(a, o, method, suffix, want, what, &r);
    if (code < 0)
        *ret_v = cli_resp_json(&r);
    cli_resp_clear(&r);
    return code;
}

/* A command that is one request about job ID: id_command() then
 * job_request_json(). */
static int job_call(int argc, char **argv, const char *cmd, void (*usage)(FILE *),
                    const char *method, const char *suffix, long want, const char *what,
                    struct cli_opts *o, yajl_val *ret_v)
{
    _cleanup_cli_api_ struct cli_api *a = NULL;
    int code = id_command(argc, argv, cmd, usage, 0, o, &a);
    if (code >= 0)
        return code;
    return job_request_json(a, o, method, suffix, want, what, ret_v);
}

/* "label: a b c" for a non-empty array of strings; nothing otherwise. */
static void print_words(const char *label, yajl_val arr)
{
    if (!arr || !arr->u.array.len)
        return;
    printf("%s", label);
    for (size_t i = 0; i < arr->u.array.len; i++) {
        yajl_val w = arr->u.array.values[i];
        printf(" %s", YAJL_IS_STRING(w) ? YAJL_GET_STRING(w) : "?");
    }
    printf("\n");
}

static void show_usage(FILE *out)
{
    fprintf(out, "Usage: agentlab job show [--json] [--socket PATH] ID\n"
                 "\n"
                 "Shows one job: state, exit code, reason, source, times, attempts, and\n"
                 "its spec (without secret values) with --json.\n");
}

int job_show(int argc, char **argv)
{
    struct cli_opts o = {0};
    _cleanup_yajl_ yajl_val v = NULL;
    int code =
            job_call(argc, argv, "job show", show_usage, "GET", "", 200, "reading the job", &o, &v);
    if (code >= 0)
        return code;
    if (!v)
        return CLI_EXIT_FAILED;
    yajl_val j = yajl_tree_get(v, (const char *[]){"job", NULL}, yajl_t_object);
    int64_t ec = cli_json_int(j, JPATH("exit_code"), -1);
    const char *s;
    printf("id:        %s\n", cli_json_str(j, JPATH("id")));
    if ((s = cli_json_str(j, JPATH("name"))))
        printf("name:      %s\n", s);
    printf("state:     %s", cli_json_str(j, JPATH("state")));
    if (ec >= 0)
        printf(" (exit %lld)", (long long)ec);
    printf("\n");
    if ((s = cli_json_str(j, JPATH("reason"))))
        printf("reason:    %s\n", s);
    printf("source:    %s", (s = cli_json_str(j, JPATH("source", "type"))) ? s : "-");
    if ((s = cli_json_str(j, JPATH("source", "ref"))))
        printf(" (%s)", s);
    printf("\npool:      %s", (s = cli_json_str(j, JPATH("pool"))) ? s : "-");
    if ((s = cli_json_str(j, JPATH("pool_reason"))))
        printf(" (%s)", s);
    printf("\n");
    print_words("labels:   ", cli_json_array(j, JPATH("labels")));
    printf("created:   %s\n", (s = cli_json_str(j, JPATH("created"))) ? s : "-");
    printf("updated:   %s\n", (s = cli_json_str(j, JPATH("updated"))) ? s : "-");
    printf("attempts:  %lld of %lld\n", (long long)cli_json_int(j, JPATH("attempts"), 0),
           (long long)cli_json_int(j, JPATH("max_attempts"), 0));
    char size[32];
    table_size((uint64_t)cli_json_int(j, JPATH("log_bytes"), 0), size, sizeof(size));
    printf("log:       %s\n", size);
    /* hard limits the job ran into (SECURITY.md), names from the daemon */
    print_words("limits:   ", cli_json_array(j, JPATH("limits_hit")));
    yajl_val att = cli_json_array(v, JPATH("attempts"));
    if (att && att->u.array.len) {
        static const char *const heads[] = {"ATTEMPT", "BACKEND", "VM",
                                            "STARTED", "ENDED",   "RESULT"};
        struct table *t = table_new(6, heads);
        for (size_t i = 0; t && i < att->u.array.len; i++) {
            yajl_val x = att->u.array.values[i];
            char n[24];
            snprintf(n, sizeof(n), "%lld", (long long)cli_json_int(x, JPATH("n"), 0));
            const char *cells[] = {n,
                                   cli_json_str(x, JPATH("backend")),
                                   cli_json_str(x, JPATH("vm")),
                                   cli_json_str(x, JPATH("started")),
                                   cli_json_str(x, JPATH("ended")),
                                   cli_json_str(x, JPATH("result"))};
            table_add(t, cells);
        }
        if (t) {
            printf("\n");
            table_print(t, stdout);
        }
        table_free(t);
    }
    return 0;
}

static void logs_usage(FILE *out)
{
    fprintf(out, "Usage: agentlab job logs [-f] [--offset N] [--socket PATH] ID\n"
                 "\n"
                 "Prints the job's output (stdout and stderr as the guest wrote them, secrets\n"
                 "masked). -f follows it live until the job ends; --offset starts at a byte.\n");
}

int job_logs(int argc, char **argv)
{
    struct cli_opts o = {0};
    _cleanup_cli_api_ struct cli_api *a = NULL;
    int code = id_command(argc, argv, "job logs", logs_usage, CLI_OPTS_FOLLOW | CLI_OPTS_OFFSET, &o,
                          &a);
    if (code >= 0)
        return code;
    char path[160];
    snprintf(path, sizeof(path), "/v1/jobs/%s/logs?offset=%" PRIu64 "%s", o.operand, o.offset,
             o.follow ? "&follow=1" : "");
    int fd = STDOUT_FILENO;
    struct cli_resp r = {0};
    _cleanup_error_ struct al_error *err = NULL;
    int rc = cli_api_stream(a, path, fd_sink, &fd, NULL, NULL, &r, &err);
    code = rc < 0 || r.status != 200 ? cli_api_fail(a, rc, &r, err, "reading the log") : 0;
    cli_resp_clear(&r);
    return code;
}

static void cancel_usage(FILE *out)
{
    fprintf(out, "Usage: agentlab job cancel [--json] [--socket PATH] ID\n"
                 "\n"
                 "Cancels a job in any phase: a queued job ends at once, a running one once\n"
                 "its VM is stopped and destroyed (state CANCELED). Exits 1 when the job had\n"
                 "already ended, 4 when there is no such job.\n");
}

int job_cancel(int argc, char **argv)
{
    struct cli_opts o = {0};
    _cleanup_yajl_ yajl_val v = NULL;
    int code = job_call(argc, argv, "job cancel", cancel_usage, "POST", "/cancel", 202,
                        "cancelling the job", &o, &v);
    if (code >= 0)
        return code;
    const char *st = cli_json_str(v, JPATH("state"));
    printf("job %s: cancel requested (%s)\n", o.operand, st ? st : "?");
    return 0;
}

/* ------------------------------------------------------------ artifacts */

static void artifacts_usage(FILE *out)
{
    fprintf(out, "Usage: agentlab job artifacts [--out DIR] [--json] [--socket PATH] ID\n"
                 "\n"
                 "Lists the files the job brought back, or with --out downloads them all\n"
                 "into DIR (paths kept).\n");
}

int job_artifacts(int argc, char **argv)
{
    struct cli_opts o = {0};
    _cleanup_cli_api_ struct cli_api *a = NULL;
    int code = id_command(argc, argv, "job artifacts", artifacts_usage, CLI_OPTS_OUT, &o, &a);
    if (code >= 0)
        return code;
    if (o.out) {
        unsigned n = 0;
        code = cli_download_artifacts(a, o.operand, o.out, &n);
        fprintf(stderr, "agentlab: %u artifact%s written to %s\n", n, n == 1 ? "" : "s", o.out);
        return code;
    }
    _cleanup_yajl_ yajl_val v = NULL;
    if ((code = job_request_json(a, &o, "GET", "/artifacts", 200, "listing artifacts", &v)) >= 0)
        return code;
    yajl_val arr = cli_json_array(v, JPATH("artifacts"));
    static const char *const heads[] = {"PATH", "SIZE"};
    struct table *t = table_new(2, heads);
    for (size_t i = 0; t && arr && i < arr->u.array.len; i++) {
        char size[32];
        table_size((uint64_t)cli_json_int(arr->u.array.values[i], JPATH("size"), 0), size,
                   sizeof(size));
        const char *cells[] = {cli_json_str(arr->u.array.values[i], JPATH("path")), size};
        table_add(t, cells);
    }
    if (t)
        table_print(t, stdout);
    table_free(t);
    return 0;
}
