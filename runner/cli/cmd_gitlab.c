/* agentlab gitlab register: creates a GitLab runner for agentlabd.
 *
 * POST /api/v4/user/runners with a user's token (PRIVATE-TOKEN, scope
 * create_runner) answers with the runner authentication token ("glrt-..."),
 * which is written to the token file (mode 0600, never printed); the user
 * token is only read from its file and never stored. Prints the [source]
 * section to add to agentlab.conf. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>
#include <yajl/yajl_gen.h>

#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/loop/curl_uv.h"
#include "runner/loop/http_client.h"
#include "runner/sources/gitlab.h"
#include "runner/sources/gitlab_register.h"
#include "runner/cli/cli.h"

#define MAX_TAGS           64
#define RESPONSE_MAX       (64u << 10)
#define DEFAULT_TOKEN_FILE "/etc/agentlab/gitlab-runner.token"

struct register_opts {
    const char *url;
    const char *user_token_file;
    const char *token_file;
    const char *description;
    const char *runner_type;
    const char *name;
    int64_t group_id;
    int64_t project_id;
    char *tags[MAX_TAGS + 1];
    size_t n_tags;
    bool run_untagged;
    bool locked;
    bool force;
};

struct register_ctx {
    bool done;
    int result;
    long status;
    char *body;
    size_t body_len;
    char error[512];
};

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: agentlab gitlab register --url URL --user-token-file FILE --tags T1,T2\n"
            "                                [OPTIONS]\n"
            "\n"
            "Creates a runner on GitLab (POST /api/v4/user/runners) and writes its\n"
            "authentication token to a file with mode 0600. The user token needs the\n"
            "create_runner scope; it is read from its file and never stored.\n"
            "\n"
            "  --url URL               GitLab base URL, e.g. https://gitlab.example.com\n"
            "  --user-token-file FILE  file holding a personal, group or project access token\n"
            "  --tags T1,T2            runner tags; jobs with `tags: [T1]` run here\n"
            "  --token-file FILE       where to write the runner token\n"
            "                          (default " DEFAULT_TOKEN_FILE ")\n"
            "  --runner-type TYPE      instance_type (default), group_type or project_type\n"
            "  --group-id N            the group of a group_type runner\n"
            "  --project-id N          the project of a project_type runner\n"
            "  --description TEXT      shown in GitLab's runner list (default: agentlab)\n"
            "  --run-untagged          also take jobs without tags\n"
            "  --locked                lock a project runner to its project\n"
            "  --name NAME             source name in the printed config (default: gitlab)\n"
            "  --force                 replace an existing token file\n");
}

static int split_tags(struct register_opts *o, const char *list)
{
    _cleanup_free_ char *copy = strdup(list);
    if (!copy)
        return -ENOMEM;
    char *save = NULL;
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        while (*t == ' ')
            t++;
        size_t n = strlen(t);
        while (n && t[n - 1] == ' ')
            t[--n] = '\0';
        if (!n)
            continue;
        if (o->n_tags >= MAX_TAGS || n > 255)
            return -EINVAL;
        if (!(o->tags[o->n_tags++] = strdup(t)))
            return -ENOMEM;
    }
    return 0;
}

static int gen_str(yajl_gen g, const char *s)
{
    return yajl_gen_string(g, (const unsigned char *)s, strlen(s)) == yajl_gen_status_ok ? 0 : 1;
}

static char *request_body(const struct register_opts *o, size_t *ret_len)
{
    yajl_gen g = yajl_gen_alloc(NULL);
    if (!g)
        return NULL;
    int r = yajl_gen_map_open(g) != yajl_gen_status_ok;
    r |= gen_str(g, "runner_type") | gen_str(g, o->runner_type);
    if (streq(o->runner_type, "group_type"))
        r |= gen_str(g, "group_id") | (yajl_gen_integer(g, o->group_id) != yajl_gen_status_ok);
    if (streq(o->runner_type, "project_type"))
        r |= gen_str(g, "project_id") | (yajl_gen_integer(g, o->project_id) != yajl_gen_status_ok);
    r |= gen_str(g, "description") | gen_str(g, o->description);
    r |= gen_str(g, "tag_list") | (yajl_gen_array_open(g) != yajl_gen_status_ok);
    for (size_t i = 0; i < o->n_tags; i++)
        r |= gen_str(g, o->tags[i]);
    r |= yajl_gen_array_close(g) != yajl_gen_status_ok;
    r |= gen_str(g, "run_untagged") | (yajl_gen_bool(g, o->run_untagged) != yajl_gen_status_ok);
    r |= gen_str(g, "locked") | (yajl_gen_bool(g, o->locked) != yajl_gen_status_ok);
    r |= yajl_gen_map_close(g) != yajl_gen_status_ok;
    const unsigned char *buf = NULL;
    size_t len = 0;
    char *out = NULL;
    if (!r && yajl_gen_get_buf(g, &buf, &len) == yajl_gen_status_ok)
        out = strndup((const char *)buf, len);
    yajl_gen_free(g);
    if (out)
        *ret_len = len;
    return out;
}

static void on_done(int result, const struct al_http_response *resp, const struct al_error *err,
                    void *data)
{
    struct register_ctx *c = data;
    c->done = true;
    c->result = result;
    if (result < 0) {
        snprintf(c->error, sizeof(c->error), "%s", al_error_message(err));
        return;
    }
    c->status = resp->status;
    c->body = resp->body.data ? strndup(resp->body.data, resp->body.len) : strdup("");
    c->body_len = resp->body.len;
}

static void on_curl_closed(void *data)
{
    (void)data;
}

static int do_register(const struct register_opts *o)
{
    _cleanup_error_ struct al_error *err = NULL;
    _cleanup_free_ char *user_token = NULL;
    if (gitlab_read_token(o->user_token_file, &user_token, &err) < 0) {
        fprintf(stderr, "agentlab gitlab register: user token: %s\n", al_error_message(err));
        return 1;
    }
    al_redact_add(user_token);
    if (!o->force && access(o->token_file, F_OK) == 0) {
        fprintf(stderr,
                "agentlab gitlab register: %s exists; use --force to replace it (the runner it "
                "belongs to stays registered on GitLab)\n",
                o->token_file);
        return 1;
    }
    size_t n = strlen(o->url);
    while (n && o->url[n - 1] == '/')
        n--;
    _cleanup_free_ char *url = NULL;
    _cleanup_free_ char *auth = NULL;
    size_t body_len = 0;
    _cleanup_free_ char *body = request_body(o, &body_len);
    if (asprintf(&url, "%.*s/api/v4/user/runners", (int)n, o->url) < 0 ||
        asprintf(&auth, "PRIVATE-TOKEN: %s", user_token) < 0 || !body) {
        fprintf(stderr, "agentlab gitlab register: out of memory\n");
        return 1;
    }
    const char *headers[] = {auth, "Content-Type: application/json", "Accept: application/json",
                             NULL};
    struct register_ctx ctx = {0};
    uv_loop_t loop;
    if (uv_loop_init(&loop) < 0 || al_curl_global_init() < 0) {
        fprintf(stderr, "agentlab gitlab register: cannot set up the event loop\n");
        return 1;
    }
    struct al_curl *curl = NULL;
    int r = al_curl_new(&loop, &curl, &err);
    if (r == 0) {
        struct al_http_request req = {
                .method = "POST",
                .url = url,
                .headers = headers,
                .body = body,
                .body_len = body_len,
                .max_response = RESPONSE_MAX,
                .timeout_ms = 60000,
        };
        r = al_http_start(curl, &req, on_done, &ctx, NULL, &err);
        explicit_bzero(auth, strlen(auth));
        if (r == 0)
            uv_run(&loop, UV_RUN_DEFAULT);
        al_curl_close(curl, on_curl_closed, NULL);
        uv_run(&loop, UV_RUN_DEFAULT);
    }
    uv_loop_close(&loop);
    al_curl_global_cleanup();
    explicit_bzero(user_token, strlen(user_token));
    if (r < 0) {
        fprintf(stderr, "agentlab gitlab register: %s\n", al_error_message(err));
        return 1;
    }
    _cleanup_free_ char *answer = ctx.body;
    if (ctx.result < 0) {
        fprintf(stderr, "agentlab gitlab register: %s: %s\n", url, ctx.error);
        return 1;
    }
    if (ctx.status != 201) {
        char ex[200] = "";
        for (size_t i = 0, o2 = 0; answer && answer[i] && i < 190; i++)
            ex[o2++] = (unsigned char)answer[i] < 0x20 ? ' ' : answer[i], ex[o2] = '\0';
        fprintf(stderr, "agentlab gitlab register: GitLab answered %ld: %s%s\n", ctx.status, ex,
                ctx.status == 401 || ctx.status == 403
                        ? " (does the user token have the create_runner scope?)"
                        : "");
        return 1;
    }
    _cleanup_free_ char *token = NULL;
    int64_t id = 0;
    char msg[200];
    if (gitlab_register_answer_parse(answer, answer ? strlen(answer) : 0, &token, &id, msg,
                                     sizeof(msg)) < 0) {
        fprintf(stderr, "agentlab gitlab register: %s\n", msg);
        return 1;
    }
    size_t tlen = strlen(token);
    token[tlen] = '\n';
    _cleanup_free_ char *dir = strdup(o->token_file);
    char *slash = dir ? strrchr(dir, '/') : NULL;
    if (slash && slash != dir) {
        *slash = '\0';
        if (al_mkdir_p(dir, 0700, &err) < 0)
            err = al_error_free(err);
    }
    r = al_write_file_atomic(o->token_file, token, tlen + 1, 0600, &err);
    explicit_bzero(token, tlen + 1);
    explicit_bzero(answer, strlen(answer));
    if (r < 0) {
        fprintf(stderr,
                "agentlab gitlab register: runner %" PRId64 " was created but its token could not "
                "be saved: %s\nDelete the runner in GitLab and try again.\n",
                id, al_error_message(err));
        return 1;
    }
    _cleanup_free_ char *abs = realpath(o->token_file, NULL);
    const char *shown = abs ? abs : o->token_file;
    fprintf(stderr, "agentlab: created GitLab runner %" PRId64 "; token in %s (mode 0600)\n", id,
            shown);
    printf("[source \"%s\"]\ntype = gitlab\nurl = %.*s\ntoken_file = %s\nlabels = ", o->name,
           (int)n, o->url, shown);
    for (size_t i = 0; i < o->n_tags; i++)
        printf("%s%s", i ? "," : "", o->tags[i]);
    printf("\n");
    return 0;
}

int cmd_gitlab(int argc, char **argv)
{
    if (argc < 2 || streq(argv[1], "--help") || streq(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!streq(argv[1], "register")) {
        fprintf(stderr, "agentlab gitlab: unknown subcommand \"%s\"\n", argv[1]);
        return 2;
    }
    struct register_opts o = {
            .token_file = DEFAULT_TOKEN_FILE,
            .description = "agentlab",
            .runner_type = "instance_type",
            .name = "gitlab",
    };
    enum {
        O_URL = 256,
        O_USER,
        O_TAGS,
        O_TOKEN,
        O_TYPE,
        O_GROUP,
        O_PROJECT,
        O_DESC,
        O_UNTAGGED,
        O_LOCKED,
        O_NAME,
        O_FORCE,
        O_HELP
    };
    static const struct option longopts[] = {
            {"url", required_argument, NULL, O_URL},
            {"user-token-file", required_argument, NULL, O_USER},
            {"tags", required_argument, NULL, O_TAGS},
            {"token-file", required_argument, NULL, O_TOKEN},
            {"runner-type", required_argument, NULL, O_TYPE},
            {"group-id", required_argument, NULL, O_GROUP},
            {"project-id", required_argument, NULL, O_PROJECT},
            {"description", required_argument, NULL, O_DESC},
            {"run-untagged", no_argument, NULL, O_UNTAGGED},
            {"locked", no_argument, NULL, O_LOCKED},
            {"name", required_argument, NULL, O_NAME},
            {"force", no_argument, NULL, O_FORCE},
            {"help", no_argument, NULL, O_HELP},
            {0},
    };
    int rc = 2;
    optind = 1;
    int c;
    while ((c = getopt_long(argc - 1, argv + 1, "", longopts, NULL)) != -1) {
        switch (c) {
        case O_URL:
            o.url = optarg;
            break;
        case O_USER:
            o.user_token_file = optarg;
            break;
        case O_TAGS:
            if (split_tags(&o, optarg) < 0) {
                fprintf(stderr,
                        "agentlab gitlab register: --tags: at most %d tags of up to 255 "
                        "characters\n",
                        MAX_TAGS);
                goto out;
            }
            break;
        case O_TOKEN:
            o.token_file = optarg;
            break;
        case O_TYPE:
            o.runner_type = optarg;
            break;
        case O_GROUP:
        case O_PROJECT:
            if (al_parse_int64(optarg, 1, INT64_MAX, c == O_GROUP ? &o.group_id : &o.project_id) <
                0) {
                fprintf(stderr, "agentlab gitlab register: --%s: expected a positive integer\n",
                        c == O_GROUP ? "group-id" : "project-id");
                goto out;
            }
            break;
        case O_DESC:
            o.description = optarg;
            break;
        case O_UNTAGGED:
            o.run_untagged = true;
            break;
        case O_LOCKED:
            o.locked = true;
            break;
        case O_NAME:
            o.name = optarg;
            break;
        case O_FORCE:
            o.force = true;
            break;
        case O_HELP:
            usage(stdout);
            rc = 0;
            goto out;
        default:
            goto out;
        }
    }
    if (optind + 1 < argc) {
        fprintf(stderr, "agentlab gitlab register: unexpected argument \"%s\"\n", argv[optind + 1]);
        goto out;
    }
    if (!o.url || !o.user_token_file) {
        fprintf(stderr, "agentlab gitlab register: --url and --user-token-file are required\n");
        goto out;
    }
    if (strncmp(o.url, "https://", 8) != 0 && strncmp(o.url, "http://", 7) != 0) {
        fprintf(stderr, "agentlab gitlab register: --url must be an http or https URL\n");
        goto out;
    }
    if (!streq(o.runner_type, "instance_type") && !streq(o.runner_type, "group_type") &&
        !streq(o.runner_type, "project_type")) {
        fprintf(stderr, "agentlab gitlab register: --runner-type must be instance_type, "
                        "group_type or project_type\n");
        goto out;
    }
    if ((streq(o.runner_type, "group_type") && !o.group_id) ||
        (streq(o.runner_type, "project_type") && !o.project_id)) {
        fprintf(stderr, "agentlab gitlab register: %s needs --%s\n", o.runner_type,
                streq(o.runner_type, "group_type") ? "group-id" : "project-id");
        goto out;
    }
    if (!o.n_tags && !o.run_untagged) {
        fprintf(stderr, "agentlab gitlab register: give --tags (or --run-untagged)\n");
        goto out;
    }
    if (!config_name_is_valid(o.name)) {
        fprintf(stderr, "agentlab gitlab register: --name: not a valid source name\n");
        goto out;
    }
    rc = do_register(&o);
out:
    for (size_t i = 0; i < o.n_tags; i++)
        free(o.tags[i]);
    return rc;
}
