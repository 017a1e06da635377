/* `agentlab batch submit|ls|show|cancel|watch|results`: batches of jobs
 * through the control API (runner/api/batches.h). */
#include "runner/cli/cli.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <yajl/yajl_gen.h>

#include "runner/base/buf.h"
#include "runner/base/util.h"
#include "runner/base/xml.h"
#include "runner/engine/batch.h"
#include "runner/engine/spec.h"
#include "runner/api/json.h"
#include "runner/cli/api_client.h"
#include "runner/cli/cli_opts.h"
#include "runner/cli/job_remote.h"
#include "runner/cli/table.h"

#define MAX_MATRIX_PARAMS 8
#define MAX_MATRIX_VALUES BATCH_MAX_JOBS

/* ------------------------------------------------------------ helpers */

static int open_api(const char *socket, struct cli_api **ret)
{
    _cleanup_error_ struct al_error *err = NULL;
    if (cli_api_open(socket, ret, &err) < 0) {
        fprintf(stderr, "agentlab: %s\n", al_error_message(err));
        return CLI_EXIT_FAILED;
    }
    return 0;
}

static bool check_batch_id(const char *cmd, const char *id)
{
    if (id && store_batch_id_is_valid(id, strlen(id)))
        return true;
    fprintf(stderr, "agentlab batch %s: \"%s\" is not a batch id (\"b\" and 20 hex digits)\n", cmd,
            id ? id : "");
    return false;
}

static int query_add(struct al_buf *q, const char *name, const char *value)
{
    int r = al_buf_printf(q, "%c%s=", strchr(q->data ? q->data : "", '?') ? '&' : '?', name);
    for (const unsigned char *p = (const unsigned char *)value; *p && r == 0; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            strchr("-._~,", *p))
            r = al_buf_append(q, p, 1);
        else
            r = al_buf_printf(q, "%%%02X", *p);
    }
    return r;
}

/* Reads a whole file, or standard input for "-", up to max bytes. */
static int read_input(const char *path, size_t max, char **ret, size_t *ret_len,
                      struct al_error **err)
{
    if (!streq(path, "-")) {
        int r = al_read_file(path, max, ret, ret_len, err);
        if (r == -EFBIG)
            return al_error_set(err, E2BIG, "%s: larger than %zu MiB", path, max >> 20);
        return r;
    }
    struct al_buf b = AL_BUF_INIT;
    char chunk[65536];
    for (;;) {
        ssize_t k = read(STDIN_FILENO, chunk, sizeof(chunk));
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            al_buf_free(&b);
            return al_error_set_errno(err, errno, "reading standard input");
        }
        if (k == 0)
            break;
        if (b.len + (size_t)k > max) {
            al_buf_free(&b);
            return al_error_set(err, E2BIG, "standard input: larger than %zu MiB", max >> 20);
        }
        if (al_buf_append(&b, chunk, (size_t)k) < 0) {
            al_buf_free(&b);
            return al_error_set(err, ENOMEM, "reading standard input");
        }
    }
    if (al_buf_puts(&b, "") < 0) {
        al_buf_free(&b);
        return al_error_set(err, ENOMEM, "reading standard input");
    }
    *ret_len = b.len;
    *ret = al_buf_steal(&b);
    return 0;
}

static void fmt_duration(int64_t ms, char *buf, size_t size)
{
    if (ms < 0)
        ms = 0;
    int64_t s = ms / 1000;
    if (s < 60)
        snprintf(buf, size, "%" PRId64 "s", s);
    else if (s < 3600)
        snprintf(buf, size, "%" PRId64 "m%02" PRId64 "s", s / 60, s % 60);
    else
        snprintf(buf, size, "%" PRId64 "h%02" PRId64 "m", s / 3600, (s / 60) % 60);
}

/* A job name as a directory name: [A-Za-z0-9._-], others '_', no leading dot. */
static void safe_name(const char *name, char *buf, size_t size)
{
    size_t i = 0;
    for (const char *p = name; *p && i + 1 < size; p++) {
        char c = *p;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '_' || (c == '.' && i > 0);
        buf[i++] = ok ? c : '_';
    }
    buf[i] = '\0';
    if (!i)
        snprintf(buf, size, "_");
}

/* ------------------------------------------------------------ matrix */

struct matrix_param {
    char *name;
    char **values;
    size_t n;
};

static void matrix_free(struct matrix_param *m, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(m[i].name);
        strv_free(m[i].values);
    }
}

/* "name=v1,v2" or "name=@FILE" (one value a line, blank lines skipped). */
static int matrix_parse(const char *arg, struct matrix_param *ret, struct al_error **err)
{
    const char *eq = strchr(arg, '=');
    if (!eq || eq == arg)
        return al_error_set(err, EINVAL, "--matrix %s: expected NAME=v1,v2 or NAME=@FILE", arg);
    _cleanup_free_ char *name = strndup(arg, (size_t)(eq - arg));
    if (!name)
        return -ENOMEM;
    if (!job_env_name_is_valid(name))
        return al_error_set(err, EINVAL,
                            "--matrix %s: the name becomes an environment variable: letters, "
                            "digits and _",
                            name);
    _cleanup_free_ char *file_data = NULL;
    const char *list = eq + 1;
    char sep = ',';
    if (list[0] == '@') {
        size_t len = 0;
        int r = al_read_file(list + 1, BATCH_MAX_BYTES, &file_data, &len, err);
        if (r < 0)
            return r;
        list = file_data;
        sep = '\n';
    }
    size_t cap = 16, n = 0;
    char **values = calloc(cap + 1, sizeof(char *));
    if (!values)
        return -ENOMEM;
    for (const char *p = list; *p;) {
        const char *e = strchr(p, sep);
        size_t len = e ? (size_t)(e - p) : strlen(p);
        size_t vlen = len;
        while (vlen && (p[vlen - 1] == '\r' || p[vlen - 1] == ' ' || p[vlen - 1] == '\t'))
            vlen--;
        if (vlen) {
            if (n >= MAX_MATRIX_VALUES) {
                strv_free(values);
                return al_error_set(err, E2BIG, "--matrix %s: more than %d values", name,
                                    MAX_MATRIX_VALUES);
            }
            if (n == cap) {
                char **v = realloc(values, (cap * 2 + 1) * sizeof(char *));
                if (!v) {
                    strv_free(values);
                    return -ENOMEM;
                }
                values = v;
                cap *= 2;
            }
            values[n] = strndup(p, vlen);
            if (!values[n]) {
                strv_free(values);
                return -ENOMEM;
            }
            values[++n] = NULL;
        }
        p += len;
        p += *p == sep;
    }
    if (!n) {
        strv_free(values);
        return al_error_set(err, EINVAL, "--matrix %s: no values", name);
    }
    *ret = (struct matrix_param){.name = TAKE_PTR(name), .values = values, .n = n};
    return 0;
}

static int gen_str(yajl_gen g, const char *s)
{
    return yajl_gen_string(g, (const unsigned char *)s, strlen(s)) == yajl_gen_status_ok ? 0
                                                                                         : -EINVAL;
}

/* One line per combination of the parameters:
 * {"params": {...}, "spec": <template with the values in env>}. */
static int matrix_expand(const char *tmpl, size_t tmpl_len, struct matrix_param *m, size_t n_m,
                         struct al_buf *out, struct al_error **err)
{
    size_t total = 1;
    for (size_t i = 0; i < n_m; i++) {
        total *= m[i].n;
        if (total > BATCH_MAX_JOBS)
            return al_error_set(err, E2BIG, "--matrix: more than %d combinations", BATCH_MAX_JOBS);
    }
    {
        _cleanup_job_spec_ struct job_spec *probe = NULL;
        int r = job_spec_parse(tmpl, tmpl_len, 0, &probe, err);
        if (r < 0)
            return al_error_wrap(err, "template");
        if (probe->n_secret_env)
            return al_error_set(err, EINVAL,
                                "template: secret_env cannot go through --matrix; write the "
                                "batch as JSON Lines instead");
    }
    size_t idx[MAX_MATRIX_PARAMS] = {0};
    for (size_t k = 0; k < total; k++) {
        _cleanup_job_spec_ struct job_spec *spec = NULL;
        int r = job_spec_parse(tmpl, tmpl_len, 0, &spec, err);
        if (r < 0)
            return r;
        struct job_env_var *env = realloc(spec->env, (spec->n_env + n_m) * sizeof(*env));
        if (!env)
            return al_error_set(err, ENOMEM, "--matrix");
        spec->env = env;
        _cleanup_buf_ struct al_buf name = AL_BUF_INIT;
        if (spec->name)
            al_buf_printf(&name, "%s", spec->name);
        for (size_t i = 0; i < n_m; i++) {
            const char *value = m[i].values[idx[i]];
            struct job_env_var *slot = NULL;
            for (size_t e = 0; e < spec->n_env; e++) {
                if (streq(spec->env[e].name, m[i].name))
                    slot = &spec->env[e];
            }
            if (!slot) {
                slot = &spec->env[spec->n_env++];
                *slot = (struct job_env_var){.name = strdup(m[i].name)};
                if (!slot->name)
                    return al_error_set(err, ENOMEM, "--matrix");
            }
            free(slot->value);
            slot->value = strdup(value);
            if (!slot->value)
                return al_error_set(err, ENOMEM, "--matrix");
            char safe[96];
            safe_name(value, safe, sizeof(safe));
            al_buf_printf(&name, "%s%s", name.len ? "-" : "", safe);
        }
        free(spec->name);
        spec->name = strndup(name.data ? name.data : "job", JOB_SPEC_MAX_NAME);
        if (!spec->name)
            return al_error_set(err, ENOMEM, "--matrix");
        _cleanup_free_ char *json = NULL;
        r = job_spec_to_json(spec, &json, NULL, err);
        if (r < 0)
            return r;
        _cleanup_json_gen_ yajl_gen g = json_gen_new();
        if (!g)
            return al_error_set(err, ENOMEM, "--matrix");
        int rc = yajl_gen_map_open(g) == yajl_gen_status_ok ? 0 : -EINVAL;
        rc |= gen_str(g, "params");
        rc |= yajl_gen_map_open(g) == yajl_gen_status_ok ? 0 : -EINVAL;
        for (size_t i = 0; i < n_m; i++) {
            rc |= gen_str(g, m[i].name);
            rc |= gen_str(g, m[i].values[idx[i]]);
        }
        rc |= yajl_gen_map_close(g) == yajl_gen_status_ok ? 0 : -EINVAL;
        rc |= yajl_gen_map_close(g) == yajl_gen_status_ok ? 0 : -EINVAL;
        const unsigned char *buf;
        size_t len;
        if (rc || yajl_gen_get_buf(g, &buf, &len) != yajl_gen_status_ok || len < 2)
            return al_error_set(err, EINVAL, "--matrix: generating the batch failed");
        /* splice the spec in before the closing brace */
        if (al_buf_append(out, buf, len - 1) < 0 || al_buf_puts(out, ",\"spec\":") < 0 ||
            al_buf_puts(out, json) < 0 || al_buf_puts(out, "}\n") < 0)
            return al_error_set(err, ENOMEM, "--matrix");
        for (size_t i = n_m; i-- > 0;) {
            if (++idx[i] < m[i].n)
                break;
            idx[i] = 0;
        }
    }
    return 0;
}

/* ------------------------------------------------------------ submit */

static void submit_usage(FILE *out)
{
    fprintf(out, "Usage: agentlab batch submit [OPTIONS] FILE|-\n"
                 "\n"
                 "Submits a batch of jobs in one request. FILE holds JSON Lines: one job spec a\n"
                 "line, or {\"spec\": {...}, \"params\": {...}}. With --matrix, FILE is one job\n"
                 "spec, a template: every combination of the matrix values becomes a job, each\n"
                 "value in the job's env under the parameter's name. A bad line refuses the\n"
                 "whole batch, naming the line and the field. Prints the batch id.\n"
                 "\n"
                 "  --name NAME          the batch's name (default: the file's name)\n"
                 "  --max-parallel N     at most N of its jobs run at a time (0: no cap)\n"
                 "  --retries N          retry infrastructure errors N times (not failures)\n"
                 "  --pool POOL          for jobs whose spec names no pool\n"
                 "  --label L            add a label to every job (repeatable)\n"
                 "  --matrix NAME=V1,V2  a parameter and its values; NAME=@FILE reads one\n"
                 "                       value a line (repeatable: the product of all)\n"
                 "  --watch              then watch it (exit status as `batch watch`)\n"
                 "  --socket PATH        agentlabd's control socket\n");
}

static int batch_watch_id(struct cli_api *a, const char *id, unsigned interval_ms, bool quiet);

static int batch_submit(int argc, char **argv)
{
    const char *path = NULL, *name = NULL, *socket = NULL, *pool = NULL;
    const char *max_parallel = NULL, *retries = NULL;
    bool watch = false;
    struct matrix_param matrix[MAX_MATRIX_PARAMS];
    size_t n_matrix = 0;
    _cleanup_buf_ struct al_buf labels = AL_BUF_INIT;
    _cleanup_error_ struct al_error *err = NULL;
    int code = 0;
    for (int i = 1; i < argc && !code; i++) {
        const char *arg = argv[i];
        const char *next = i + 1 < argc ? argv[i + 1] : NULL;
        bool takes = streq(arg, "--name") || streq(arg, "--max-parallel") ||
                     streq(arg, "--retries") || streq(arg, "--pool") || streq(arg, "--label") ||
                     streq(arg, "--matrix") || streq(arg, "--socket");
        if (streq(arg, "--help") || streq(arg, "-h")) {
            submit_usage(stdout);
            matrix_free(matrix, n_matrix);
            return 0;
        }
        if (takes && !next) {
            fprintf(stderr, "agentlab batch submit: %s needs a value\n", arg);
            code = CLI_EXIT_USAGE;
            break;
        }
        if (streq(arg, "--name"))
            name = argv[++i];
        else if (streq(arg, "--max-parallel"))
            max_parallel = argv[++i];
        else if (streq(arg, "--retries"))
            retries = argv[++i];
        else if (streq(arg, "--pool"))
            pool = argv[++i];
        else if (streq(arg, "--socket"))
            socket = argv[++i];
        else if (streq(arg, "--label"))
            al_buf_printf(&labels, "%s%s", labels.len ? "," : "", argv[++i]);
        else if (streq(arg, "--watch"))
            watch = true;
        else if (streq(arg, "--matrix")) {
            if (n_matrix == MAX_MATRIX_PARAMS) {
                fprintf(stderr, "agentlab batch submit: at most %d --matrix parameters\n",
                        MAX_MATRIX_PARAMS);
                code = CLI_EXIT_USAGE;
            } else if (matrix_parse(argv[++i], &matrix[n_matrix], &err) < 0) {
                fprintf(stderr, "agentlab batch submit: %s\n", al_error_message(err));
                code = CLI_EXIT_USAGE;
            } else {
                n_matrix++;
            }
        } else if (!path && (arg[0] != '-' || streq(arg, "-")))
            path = arg;
        else {
            fprintf(stderr, "agentlab batch submit: unexpected argument \"%s\"\n", arg);
            code = CLI_EXIT_USAGE;
        }
    }
    if (!code && !path) {
        submit_usage(stderr);
        code = CLI_EXIT_USAGE;
    }
    int mp = 0;
    int rt = -1;
    if (!code && max_parallel && al_parse_int(max_parallel, 0, 100000, &mp) < 0) {
        fprintf(stderr, "agentlab batch submit: --max-parallel: expected a number\n");
        code = CLI_EXIT_USAGE;
    }
    if (!code && retries && al_parse_int(retries, 0, JOB_SPEC_MAX_MAX_ATTEMPTS - 1, &rt) < 0) {
        fprintf(stderr, "agentlab batch submit: --retries: expected 0 to %d\n",
                JOB_SPEC_MAX_MAX_ATTEMPTS - 1);
        code = CLI_EXIT_USAGE;
    }
    char default_name[STORE_BATCH_NAME_MAX + 1];
    if (!code && !name) {
        const char *base = streq(path, "-") ? "batch" : strrchr(path, '/');
        base = base ? (base[0] == '/' ? base + 1 : base) : path;
        safe_name(base, default_name, sizeof(default_name));
        char *dot = strrchr(default_name, '.');
        if (dot && dot != default_name)
            *dot = '\0';
        name = default_name;
    }
    _cleanup_free_ char *data = NULL;
    size_t len = 0;
    _cleanup_buf_ struct al_buf expanded = AL_BUF_INIT;
    if (!code &&
        read_input(path, n_matrix ? JOB_SPEC_MAX_BYTES : BATCH_MAX_BYTES, &data, &len, &err) < 0) {
        fprintf(stderr, "agentlab batch submit: %s\n", al_error_message(err));
        code = CLI_EXIT_FAILED;
    }
    if (!code && n_matrix && matrix_expand(data, len, matrix, n_matrix, &expanded, &err) < 0) {
        fprintf(stderr, "agentlab batch submit: %s\n", al_error_message(err));
        code = CLI_EXIT_FAILED;
    }
    matrix_free(matrix, n_matrix);
    if (code)
        return code;

    _cleanup_buf_ struct al_buf q = AL_BUF_INIT;
    al_buf_puts(&q, "/v1/batches");
    query_add(&q, "name", name);
    char num[32];
    if (max_parallel) {
        snprintf(num, sizeof(num), "%d", mp);
        query_add(&q, "max_parallel", num);
    }
    if (rt >= 0) {
        snprintf(num, sizeof(num), "%d", rt);
        query_add(&q, "retries", num);
    }
    if (pool)
        query_add(&q, "pool", pool);
    if (labels.len)
        query_add(&q, "labels", labels.data);

    _cleanup_cli_api_ struct cli_api *a = NULL;
    if ((code = open_api(socket, &a)))
        return code;
    const char *body = n_matrix ? expanded.data : data;
    size_t body_len = n_matrix ? expanded.len : len;
    struct cli_resp r = {0};
    int rc = cli_api_request(a, "POST", q.data, "application/x-ndjson", body, body_len, &r, &err);
    if (rc < 0 || r.status != 201) {
        code = cli_api_fail(a, rc, &r, err, "submitting the batch");
        cli_resp_clear(&r);
        return code;
    }
    _cleanup_yajl_ yajl_val v = cli_resp_json(&r);
    cli_resp_clear(&r);
    const char *id = v ? cli_json_str(v, JPATH("id")) : NULL;
    if (!id) {
        fprintf(stderr, "agentlab batch submit: the daemon's answer has no batch id\n");
        return CLI_EXIT_FAILED;
    }
    printf("%s\n", id);
    fflush(stdout);
    if (!watch)
        return 0;
    return batch_watch_id(a, id, 0, false);
}

/* ------------------------------------------------------------ ls, show, cancel */

static int parse_common(int argc, char **argv, const char *cmd, void (*usage)(FILE *),
                        const char **ret_id, const char **ret_socket, bool *ret_json)
{
    for (int i = 1; i < argc; i++) {
        if (streq(argv[i], "--help") || streq(argv[i], "-h")) {
            usage(stdout);
            return -1;
        } else if (streq(argv[i], "--socket") && i + 1 < argc) {
            *ret_socket = argv[++i];
        } else if (streq(argv[i], "--json") && ret_json) {
            *ret_json = true;
        } else if (ret_id && !*ret_id && argv[i][0] != '-') {
            *ret_id = argv[i];
        } else {
            fprintf(stderr, "agentlab batch %s: unexpected argument \"%s\"\n", cmd, argv[i]);
            usage(stderr);
            return CLI_EXIT_USAGE;
        }
    }
    if (ret_id && !check_batch_id(cmd, *ret_id))
        return CLI_EXIT_USAGE;
    return 0;
}

static void print_json(yajl_val v)
{
    _cleanup_json_gen_ yajl_gen g = json_gen_new();
    const unsigned char *buf;
    size_t len;
    if (g && json_tree_value(g, v) == 0 && yajl_gen_get_buf(g, &buf, &len) == yajl_gen_status_ok)
        printf("%.*s\n", (int)len, (const char *)buf);
}

/* A command that is one request: parse_common() (an ID operand when ret_id
 * is given, --json when json_opt), then METHOD /v1/batches[/ID]<suffix>,
 * which must be answered 200 (what names it in errors). Returns -1 with the
 * answer in *ret_v (the caller's) to go on; 0 once --help or, with --json,
 * the answer was printed; else an exit code. */
static int batch_request(int argc, char **argv, const char *cmd, void (*usage)(FILE *),
                         bool json_opt, const char *method, const char *suffix, const char *what,
                         const char **ret_id, yajl_val *ret_v)
{
    const char *socket = NULL;
    bool json = false;
    int code = parse_common(argc, argv, cmd, usage, ret_id, &socket, json_opt ? &json : NULL);
    if (code)
        return code < 0 ? 0 : code;
    _cleanup_cli_api_ struct cli_api *a = NULL;
    if ((code = open_api(socket, &a)))
        return code;
    char path[96];
    snprintf(path, sizeof(path), "/v1/batches%s%s%s", ret_id ? "/" : "", ret_id ? *ret_id : "",
             suffix);
    if ((code = cli_api_call_json(a, method, path, 200, what, ret_v)))
        return code;
    if (json) {
        print_json(*ret_v);
        return 0;
    }
    return -1;
}

static void ls_usage(FILE *out)
{
    fprintf(out, "Usage: agentlab batch ls [--json] [--socket PATH]\n"
                 "\n"
                 "Lists the newest batches with their progress.\n");
}

static int batch_ls(int argc, char **argv)
{
    _cleanup_yajl_ yajl_val v = NULL;
    int code =
            batch_request(argc, argv, "ls", ls_usage, true, "GET", "", "listing batches", NULL, &v);
    if (code >= 0)
        return code;
    static const char *const headers[] = {"ID",     "NAME",   "CREATED", "DONE",
                                          "PASSED", "FAILED", "ERRORS",  "RUNNING"};
    struct table *t = table_new(ARRAY_SIZE(headers), headers);
    yajl_val arr = cli_json_array(v, JPATH("batches"));
    for (size_t i = 0; t && arr && i < arr->u.array.len; i++) {
        yajl_val b = arr->u.array.values[i];
        char age[32], done[48], passed[16], failed[16], errors[16], running[16];
        table_age(cli_json_int(b, JPATH("created_ms"), 0), age, sizeof(age));
        snprintf(done, sizeof(done), "%" PRId64 "/%" PRId64, cli_json_int(b, JPATH("done"), 0),
                 cli_json_int(b, JPATH("total"), 0));
        snprintf(passed, sizeof(passed), "%" PRId64, cli_json_int(b, JPATH("passed"), 0));
        snprintf(failed, sizeof(failed), "%" PRId64, cli_json_int(b, JPATH("failed"), 0));
        snprintf(errors, sizeof(errors), "%" PRId64, cli_json_int(b, JPATH("errors"), 0));
        snprintf(running, sizeof(running), "%" PRId64, cli_json_int(b, JPATH("running"), 0));
        const char *cells[] = {cli_json_str(b, JPATH("id")),
                               cli_json_str(b, JPATH("name")),
                               age,
                               done,
                               passed,
                               failed,
                               errors,
                               running};
        table_add(t, cells);
    }
    if (t)
        table_print(t, stdout);
    table_free(t);
    return 0;
}

static void show_usage(FILE *out)
{
    fprintf(out, "Usage: agentlab batch show [--json] [--socket PATH] ID\n"
                 "\n"
                 "One batch: its counts by state.\n");
}

static int batch_show(int argc, char **argv)
{
    const char *id = NULL;
    _cleanup_yajl_ yajl_val v = NULL;
    int code = batch_request(argc, argv, "show", show_usage, true, "GET", "", "reading the batch",
                             &id, &v);
    if (code >= 0)
        return code;
    printf("id:           %s\n", cli_json_str(v, JPATH("id")));
    printf("name:         %s\n", cli_json_str(v, JPATH("name")));
    printf("created:      %s\n", cli_json_str(v, JPATH("created")));
    if (cli_json_str(v, JPATH("canceled")))
        printf("canceled:     %s\n", cli_json_str(v, JPATH("canceled")));
    printf("max parallel: %" PRId64 "\n", cli_json_int(v, JPATH("max_parallel"), 0));
    printf("jobs:         %" PRId64 " (%" PRId64 " done)\n", cli_json_int(v, JPATH("total"), 0),
           cli_json_int(v, JPATH("done"), 0));
    static const char *const keys[] = {"passed", "failed", "errors", "running", "queued"};
    for (size_t i = 0; i < ARRAY_SIZE(keys); i++)
        printf("%-13s %" PRId64 "\n", keys[i], cli_json_int(v, JPATH(keys[i]), 0));
    printf("finished:     %s\n", cli_json_bool(v, JPATH("finished")) ? "yes" : "no");
    return 0;
}

static void cancel_usage(FILE *out)
{
    fprintf(out, "Usage: agentlab batch cancel [--socket PATH] ID\n"
                 "\n"
                 "Cancels every job of the batch that has not ended.\n");
}

static int batch_cancel(int argc, char **argv)
{
    const char *id = NULL;
    _cleanup_yajl_ yajl_val v = NULL;
    int code = batch_request(argc, argv, "cancel", cancel_usage, false, "POST", "/cancel",
                             "cancelling the batch", &id, &v);
    if (code >= 0)
        return code;
    printf("cancel requested for %" PRId64 " jobs\n",
           cli_json_int(v, JPATH("cancel_requested"), 0));
    return 0;
}

/* ------------------------------------------------------------ watch */

/* 0 when every job passed, 1 when any failed (FAILED, TIMED_OUT), 2 when any
 * ended in an error (ERROR, CANCELED): what a cron job acts on. */
static int batch_exit_code(yajl_val b)
{
    if (cli_json_int(b, JPATH("errors"), 0) > 0)
        return 2;
    if (cli_json_int(b, JPATH("failed"), 0) > 0)
        return 1;
    return 0;
}

struct watch_rate {
    int64_t first_ms;
    int64_t first_done;
};

static void progress_line(yajl_val b, struct watch_rate *rate, char *buf, size_t size)
{
    int64_t now = cli_json_int(b, JPATH("now_ms"), 0);
    int64_t created = cli_json_int(b, JPATH("created_ms"), now);
    int64_t total = cli_json_int(b, JPATH("total"), 0);
    int64_t done = cli_json_int(b, JPATH("done"), 0);
    char elapsed[32], eta[32] = "?";
    fmt_duration(now - created, elapsed, sizeof(elapsed));
    if (!rate->first_ms) {
        rate->first_ms = now;
        rate->first_done = done;
    }
    /* the rate seen while watching; before any job ended here, since creation */
    double per_ms = 0;
    if (done > rate->first_done && now > rate->first_ms)
        per_ms = (double)(done - rate->first_done) / (double)(now - rate->first_ms);
    else if (done > 0 && now > created)
        per_ms = (double)done / (double)(now - created);
    if (done >= total)
        snprintf(eta, sizeof(eta), "0s");
    else if (per_ms > 0)
        fmt_duration((int64_t)((double)(total - done) / per_ms), eta, sizeof(eta));
    snprintf(buf, size,
             "%s: %" PRId64 "/%" PRId64 " done, %" PRId64 " passed, %" PRId64 " failed, %" PRId64
             " errors, %" PRId64 " running, %" PRId64 " queued, elapsed %s, ETA %s",
             cli_json_str(b, JPATH("name")) ? cli_json_str(b, JPATH("name")) : "batch", done, total,
             cli_json_int(b, JPATH("passed"), 0), cli_json_int(b, JPATH("failed"), 0),
             cli_json_int(b, JPATH("errors"), 0), cli_json_int(b, JPATH("running"), 0),
             cli_json_int(b, JPATH("queued"), 0), elapsed, eta);
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR && !cli_interrupted())
        ;
}

static int batch_watch_id(struct cli_api *a, const char *id, unsigned interval_ms, bool quiet)
{
    bool tty = isatty(STDOUT_FILENO) == 1;
    if (!interval_ms)
        interval_ms = tty ? 500 : 10000;
    /* a terminal's line is redrawn often; plain lines come every interval */
    unsigned poll_ms = tty ? interval_ms : (interval_ms < 1000 ? interval_ms : 1000);
    char path[96];
    snprintf(path, sizeof(path), "/v1/batches/%s", id);
    struct watch_rate rate = {0};
    uint64_t last_print = 0;
    cli_install_interrupt();
    for (;;) {
        _cleanup_yajl_ yajl_val v = NULL;
        int code = cli_api_call_json(a, "GET", path, 200, "reading the batch", &v);
        if (code)
            return code == CLI_EXIT_NOT_FOUND || code == CLI_EXIT_UNREACHABLE ? code : 3;
        char line[512];
        progress_line(v, &rate, line, sizeof(line));
        bool finished = cli_json_bool(v, JPATH("finished"));
        uint64_t now = al_now_mono_ms();
        if (tty) {
            printf("\r\033[K%s", line);
            if (finished)
                printf("\n");
            fflush(stdout);
        } else if (!quiet && (finished || !last_print || now - last_print >= interval_ms)) {
            printf("%s\n", line);
            fflush(stdout);
            last_print = now;
        }
        if (finished)
            return batch_exit_code(v);
        if (cli_interrupted()) {
            if (tty)
                printf("\n");
            return 130;
        }
        sleep_ms(poll_ms);
    }
}

static void watch_usage(FILE *out)
{
    fprintf(out, "Usage: agentlab batch watch [--interval SECONDS] [--socket PATH] ID\n"
                 "\n"
                 "Shows the batch's progress until every job has ended: one line redrawn on a\n"
                 "terminal, a plain line every interval (default 10 s) otherwise. Exits 0 when\n"
                 "every job passed, 1 when any failed (FAILED, TIMED_OUT), 2 when any ended in\n"
                 "an error (ERROR, CANCELED), 3 when the daemon could not be asked, 130 on\n"
                 "Ctrl-C (the batch goes on).\n");
}

static int batch_watch(int argc, char **argv)
{
    const char *socket = NULL, *id = NULL;
    int interval_s = 0;
    for (int i = 1; i < argc; i++) {
        if (streq(argv[i], "--help") || streq(argv[i], "-h")) {
            watch_usage(stdout);
            return 0;
        } else if (streq(argv[i], "--socket") && i + 1 < argc) {
            socket = argv[++i];
        } else if (streq(argv[i], "--interval") && i + 1 < argc) {
            if (al_parse_int(argv[++i], 1, 3600, &interval_s) < 0) {
                fprintf(stderr, "agentlab batch watch: --interval: expected 1 to 3600\n");
                return CLI_EXIT_USAGE;
            }
        } else if (!id && argv[i][0] != '-') {
            id = argv[i];
        } else {
            fprintf(stderr, "agentlab batch watch: unexpected argument \"%s\"\n", argv[i]);
            watch_usage(stderr);
            return CLI_EXIT_USAGE;
        }
    }
    if (!check_batch_id("watch", id))
        return CLI_EXIT_USAGE;
    _cleanup_cli_api_ struct cli_api *a = NULL;
    int code = open_api(socket, &a);
    if (code)
        return 3;
    return batch_watch_id(a, id, (unsigned)interval_s * 1000, false);
}

/* ------------------------------------------------------------ results */

struct results {
    yajl_val batch;
    yajl_val *pages;
    size_t n_pages;
};

static yajl_val object_member(yajl_val obj, const char *key)
{
    for (size_t i = 0; obj && YAJL_IS_OBJECT(obj) && i < obj->u.object.len; i++) {
        if (streq(obj->u.object.keys[i], key))
            return obj->u.object.values[i];
    }
    return NULL;
}

static bool cli_json_has_number(yajl_val obj, const char *key)
{
    yajl_val v = object_member(obj, key);
    return v && YAJL_IS_NUMBER(v);
}

static void results_clear(struct results *r)
{
    if (r->batch)
        yajl_tree_free(r->batch);
    for (size_t i = 0; i < r->n_pages; i++)
        yajl_tree_free(r->pages[i]);
    free(r->pages);
}

static int results_fetch(struct cli_api *a, const char *id, unsigned tail, struct results *ret)
{
    char path[160];
    snprintf(path, sizeof(path), "/v1/batches/%s", id);
    int code = cli_api_call_json(a, "GET", path, 200, "reading the batch", &ret->batch);
    int64_t after = 0;
    while (!code) {
        snprintf(path, sizeof(path), "/v1/batches/%s/jobs?limit=1000&tail=%u&after=%" PRId64, id,
                 tail, after);
        yajl_val page = NULL;
        code = cli_api_call_json(a, "GET", path, 200, "reading the batch's jobs", &page);
        if (code)
            break;
        yajl_val *v = realloc(ret->pages, (ret->n_pages + 1) * sizeof(*v));
        if (!v) {
            yajl_tree_free(page);
            return CLI_EXIT_FAILED;
        }
        ret->pages = v;
        ret->pages[ret->n_pages++] = page;
        after = cli_json_int(page, JPATH("next_after"), -1);
        if (after < 0)
            break;
    }
    return code;
}

#define FOR_EACH_ROW(res, row)                                                                   \
    for (size_t _p = 0; _p < (res)->n_pages; _p++)                                               \
        for (yajl_val _arr = cli_json_array((res)->pages[_p], JPATH("jobs")); _arr; _arr = NULL) \
            for (size_t _i = 0; _i < _arr->u.array.len && ((row) = _arr->u.array.values[_i]); _i++)

/* Text for XML 1.0: the escaper refuses control characters, so they go. */
static int xml_text(struct al_buf *b, const char *s)
{
    if (!s)
        return 0;
    _cleanup_free_ char *clean = strdup(s);
    if (!clean)
        return -ENOMEM;
    for (char *p = clean; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if ((c < 0x20 && c != '\t' && c != '\n' && c != '\r') || c == 0x7f)
            *p = '?';
    }
    return al_xml_escape_append(b, clean);
}

static int write_junit(const struct results *res, const char *file)
{
    const char *bname = cli_json_str(res->batch, JPATH("name"));
    int64_t tests = 0, failures = 0, errors = 0, skipped = 0, total_ms = 0;
    yajl_val row = NULL;
    FOR_EACH_ROW(res, row)
    {
        const char *state = cli_json_str(row, JPATH("state"));
        tests++;
        total_ms += cli_json_int(row, JPATH("duration_ms"), 0);
        if (!state)
            continue;
        if (streq(state, "FAILED") || streq(state, "TIMED_OUT"))
            failures++;
        else if (streq(state, "ERROR") || streq(state, "CANCELED"))
            errors++;
        else if (!streq(state, "SUCCEEDED"))
            skipped++;
    }
    _cleanup_buf_ struct al_buf b = AL_BUF_INIT;
    int rc = al_buf_puts(&b, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    rc |= al_buf_puts(&b, "<testsuites name=\"");
    rc |= xml_text(&b, bname);
    rc |= al_buf_printf(&b,
                        "\" tests=\"%" PRId64 "\" failures=\"%" PRId64 "\" errors=\"%" PRId64
                        "\" time=\"%.3f\">\n  <testsuite name=\"",
                        tests, failures, errors, (double)total_ms / 1000.0);
    rc |= xml_text(&b, bname);
    rc |= al_buf_printf(&b,
                        "\" tests=\"%" PRId64 "\" failures=\"%" PRId64 "\" errors=\"%" PRId64
                        "\" skipped=\"%" PRId64 "\" time=\"%.3f\" timestamp=\"",
                        tests, failures, errors, skipped, (double)total_ms / 1000.0);
    rc |= xml_text(&b, cli_json_str(res->batch, JPATH("created")));
    rc |= al_buf_puts(&b, "\" id=\"");
    rc |= xml_text(&b, cli_json_str(res->batch, JPATH("id")));
    rc |= al_buf_puts(&b, "\">\n");
    FOR_EACH_ROW(res, row)
    {
        const char *state = cli_json_str(row, JPATH("state"));
        const char *tail = cli_json_str(row, JPATH("output_tail"));
        const char *reason = cli_json_str(row, JPATH("reason"));
        state = state ? state : "UNKNOWN";
        rc |= al_buf_puts(&b, "    <testcase name=\"");
        rc |= xml_text(&b, cli_json_str(row, JPATH("name")));
        rc |= al_buf_puts(&b, "\" classname=\"");
        rc |= xml_text(&b, bname);
        rc |= al_buf_printf(&b, "\" time=\"%.3f\">\n",
                            (double)cli_json_int(row, JPATH("duration_ms"), 0) / 1000.0);
        char msg[700];
        const char *elem = NULL;
        if (streq(state, "FAILED") || streq(state, "TIMED_OUT")) {
            elem = "failure";
            if (streq(state, "FAILED"))
                snprintf(msg, sizeof(msg), "exit code %" PRId64,
                         cli_json_int(row, JPATH("exit_code"), -1));
            else
                snprintf(msg, sizeof(msg), "timed out");
        } else if (streq(state, "ERROR") || streq(state, "CANCELED")) {
            elem = "error";
            snprintf(msg, sizeof(msg), "%s", reason ? reason : state);
        } else if (!streq(state, "SUCCEEDED")) {
            elem = "skipped";
            snprintf(msg, sizeof(msg), "not finished: %s", state);
        }
        if (elem) {
            rc |= al_buf_printf(&b, "      <%s type=\"%s\" message=\"", elem, state);
            rc |= xml_text(&b, msg);
            rc |= al_buf_puts(&b, "\"");
            if (tail && *tail && !streq(elem, "skipped")) {
                rc |= al_buf_puts(&b, ">");
                rc |= xml_text(&b, tail);
                rc |= al_buf_printf(&b, "</%s>\n", elem);
            } else {
                rc |= al_buf_puts(&b, "/>\n");
            }
        }
        if (tail && *tail) {
            rc |= al_buf_puts(&b, "      <system-out>");
            rc |= xml_text(&b, tail);
            rc |= al_buf_puts(&b, "</system-out>\n");
        }
        rc |= al_buf_puts(&b, "    </testcase>\n");
    }
    rc |= al_buf_puts(&b, "  </testsuite>\n</testsuites>\n");
    if (rc) {
        fprintf(stderr, "agentlab batch results: writing the JUnit report failed\n");
        return CLI_EXIT_FAILED;
    }
    _cleanup_error_ struct al_error *err = NULL;
    if (al_write_file_atomic(file, b.data, b.len, 0644, &err) < 0) {
        fprintf(stderr, "agentlab batch results: %s\n", al_error_message(err));
        return CLI_EXIT_FAILED;
    }
    return 0;
}

static void results_usage(FILE *out)
{
    fprintf(out, "Usage: agentlab batch results [--json|--jsonl] [--junit FILE] [--artifacts DIR]\n"
                 "                              [--tail N] [--socket PATH] ID\n"
                 "\n"
                 "One row per job: name, parameters, state, exit code, duration, the last lines\n"
                 "of output (--tail, default 5), artifact paths. A table by default; --json one\n"
                 "document {batch, jobs}; --jsonl one row a line. --junit also writes a JUnit XML\n"
                 "report (a testcase per job: FAILED and TIMED_OUT are failures, ERROR and\n"
                 "CANCELED errors, unfinished jobs skipped). --artifacts downloads every job's\n"
                 "artifacts into DIR/<job name>/.\n");
}

static int batch_results(int argc, char **argv)
{
    const char *socket = NULL, *id = NULL, *junit = NULL, *artifacts = NULL;
    bool json = false, jsonl = false;
    int tail = 5;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        bool has_next = i + 1 < argc;
        if (streq(arg, "--help") || streq(arg, "-h")) {
            results_usage(stdout);
            return 0;
        } else if (streq(arg, "--socket") && has_next) {
            socket = argv[++i];
        } else if (streq(arg, "--json")) {
            json = true;
        } else if (streq(arg, "--jsonl")) {
            jsonl = true;
        } else if (streq(arg, "--junit") && has_next) {
            junit = argv[++i];
        } else if (streq(arg, "--artifacts") && has_next) {
            artifacts = argv[++i];
        } else if (streq(arg, "--tail") && has_next) {
            if (al_parse_int(argv[++i], 0, 100, &tail) < 0) {
                fprintf(stderr, "agentlab batch results: --tail: expected 0 to 100\n");
                return CLI_EXIT_USAGE;
            }
        } else if (!id && arg[0] != '-') {
            id = arg;
        } else {
            fprintf(stderr, "agentlab batch results: unexpected argument \"%s\"\n", arg);
            results_usage(stderr);
            return CLI_EXIT_USAGE;
        }
    }
    if (json && jsonl) {
        fprintf(stderr, "agentlab batch results: --json or --jsonl, not both\n");
        return CLI_EXIT_USAGE;
    }
    if (!check_batch_id("results", id))
        return CLI_EXIT_USAGE;
    _cleanup_cli_api_ struct cli_api *a = NULL;
    int code = open_api(socket, &a);
    if (code)
        return code;
    struct results res = {0};
    code = results_fetch(a, id, (unsigned)tail, &res);
    if (code) {
        results_clear(&res);
        return code;
    }
    yajl_val row = NULL;
    if (jsonl) {
        FOR_EACH_ROW(&res, row)
        print_json(row);
    } else if (json) {
        _cleanup_json_gen_ yajl_gen g = json_gen_new();
        int rc = g ? 0 : -ENOMEM;
        if (g) {
            rc |= json_open_map(g);
            rc |= json_key(g, "batch");
            rc |= json_tree_value(g, res.batch);
            rc |= json_key(g, "jobs");
            rc |= json_open_array(g);
            FOR_EACH_ROW(&res, row)
            rc |= json_tree_value(g, row);
            rc |= json_close_array(g);
            rc |= json_close_map(g);
        }
        const unsigned char *buf;
        size_t len;
        if (!rc && yajl_gen_get_buf(g, &buf, &len) == yajl_gen_status_ok)
            printf("%.*s\n", (int)len, (const char *)buf);
        else
            code = CLI_EXIT_FAILED;
    } else {
        static const char *const headers[] = {"NAME", "STATE", "EXIT", "DURATION", "PARAMS"};
        struct table *t = table_new(ARRAY_SIZE(headers), headers);
        FOR_EACH_ROW(&res, row)
        {
            char exit_code[16] = "", dur[32] = "";
            bool ec = cli_json_has_number(row, "exit_code");
            if (ec)
                snprintf(exit_code, sizeof(exit_code), "%" PRId64,
                         cli_json_int(row, JPATH("exit_code"), 0));
            if (cli_json_has_number(row, "duration_ms"))
                fmt_duration(cli_json_int(row, JPATH("duration_ms"), 0), dur, sizeof(dur));
            _cleanup_buf_ struct al_buf params = AL_BUF_INIT;
            yajl_val p = object_member(row, "params");
            if (p && !YAJL_IS_OBJECT(p))
                p = NULL;
            for (size_t k = 0; p && k < p->u.object.len; k++) {
                yajl_val pv = p->u.object.values[k];
                al_buf_printf(&params, "%s%s=%s", k ? " " : "", p->u.object.keys[k],
                              YAJL_IS_STRING(pv)   ? YAJL_GET_STRING(pv)
                              : YAJL_IS_NUMBER(pv) ? YAJL_GET_NUMBER(pv)
                              : YAJL_IS_TRUE(pv)   ? "true"
                                                   : "false");
            }
            const char *cells[] = {cli_json_str(row, JPATH("name")),
                                   cli_json_str(row, JPATH("state")), exit_code, dur,
                                   params.data ? params.data : ""};
            if (t)
                table_add(t, cells);
        }
        if (t)
            table_print(t, stdout);
        table_free(t);
    }
    fflush(stdout);
    if (!code && junit)
        code = write_junit(&res, junit);
    if (!code && artifacts) {
        unsigned files = 0, jobs = 0;
        FOR_EACH_ROW(&res, row)
        {
            yajl_val arts = cli_json_array(row, JPATH("artifacts"));
            const char *jid = cli_json_str(row, JPATH("id"));
            const char *name = cli_json_str(row, JPATH("name"));
            if (!arts || !arts->u.array.len || !jid)
                continue;
            char safe[160];
            safe_name(name ? name : jid, safe, sizeof(safe));
            _cleanup_free_ char *dir = al_path_join(artifacts, safe);
            unsigned n = 0;
            int c = dir ? cli_download_artifacts(a, jid, dir, &n) : CLI_EXIT_FAILED;
            if (c)
                code = c;
            files += n;
            jobs++;
        }
        fprintf(stderr, "%u artifacts of %u jobs in %s\n", files, jobs, artifacts);
    }
    results_clear(&res);
    return code;
}

/* ------------------------------------------------------------ dispatch */

static void usage(FILE *out)
{
    fprintf(out, "Usage: agentlab batch COMMAND [ARGS...]\n"
                 "\n"
                 "  submit FILE|-     submit many jobs at once (JSON Lines, or --matrix)\n"
                 "  ls                list batches with their progress\n"
                 "  show ID           one batch's counts\n"
                 "  watch ID          progress until it ends; exit 0 passed, 1 failed, 2 errors\n"
                 "  results ID        one row per job; --jsonl, --json, --junit, --artifacts\n"
                 "  cancel ID         cancel every job that has not ended\n"
                 "\n"
                 "Run 'agentlab batch COMMAND --help' for a command's options.\n");
}

int cmd_batch(int argc, char **argv)
{
    static const struct cli_command subs[] = {
            {"submit", NULL, batch_submit}, {"ls", NULL, batch_ls},
            {"list", NULL, batch_ls},       {"show", NULL, batch_show},
            {"watch", NULL, batch_watch},   {"results", NULL, batch_results},
            {"cancel", NULL, batch_cancel},
    };
    return cli_run_subcommand("batch", subs, ARRAY_SIZE(subs), usage, argc, argv);
}
