#include "runner/cli/api_client.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "runner/base/util.h"
#include "runner/engine/config.h"

#define TOKEN_MAX 4096

struct cli_api {
    CURL *curl;
    char *socket; /* unix socket, or NULL for TCP */
    char *base;   /* "http://agentlabd" or the URL */
    char *auth;   /* "Authorization: Bearer ..." or NULL */
    bool busy;    /* a transfer is running on curl (a nested call gets its own) */
    char where[600];
};

static int read_token(const char *path, char **ret, struct al_error **err)
{
    char *data = NULL;
    size_t len = 0;
    int r = al_read_secret_file(path, "AGENTLAB_TOKEN_FILE", TOKEN_MAX, &data, &len, err);
    if (r < 0)
        return r;
    while (len && (data[len - 1] == '\n' || data[len - 1] == '\r' || data[len - 1] == ' '))
        data[--len] = '\0';
    int n = asprintf(ret, "Authorization: Bearer %s", data);
    explicit_bzero(data, len);
    free(data);
    if (n < 0)
        return al_error_set(err, ENOMEM, "token");
    return 0;
}

int cli_api_open(const char *socket, struct cli_api **ret, struct al_error **err)
{
    _cleanup_(cli_api_closep) struct cli_api *a = calloc(1, sizeof(*a));
    if (!a)
        return al_error_set(err, ENOMEM, "api client");
    const char *env_sock = getenv("AGENTLAB_SOCKET");
    const char *env_url = getenv("AGENTLAB_URL");
    if (!socket && env_sock && *env_sock)
        socket = env_sock;
    if (!socket && env_url && *env_url) {
        if (strncmp(env_url, "http://", 7) != 0)
            return al_error_set(err, EINVAL, "AGENTLAB_URL must start with http://");
        a->base = strdup(env_url);
        size_t l = a->base ? strlen(a->base) : 0;
        if (l && a->base[l - 1] == '/')
            a->base[l - 1] = '\0';
        const char *tf = getenv("AGENTLAB_TOKEN_FILE");
        if (tf && *tf && read_token(tf, &a->auth, err) < 0)
            return -EINVAL;
        snprintf(a->where, sizeof(a->where), "%s", env_url);
    } else {
        _cleanup_config_ struct config *cfg = NULL;
        if (!socket) {
            int r = config_load(NULL, &cfg, err);
            if (r < 0)
                return r;
            socket = cfg->agent.api_socket;
        }
        a->socket = strdup(socket);
        a->base = strdup("http://agentlabd");
        snprintf(a->where, sizeof(a->where), "unix socket %s", socket);
    }
    if (!a->base || (!env_url && !a->socket))
        return al_error_set(err, ENOMEM, "api client");
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK || !(a->curl = curl_easy_init()))
        return al_error_set(err, EIO, "curl initialisation failed");
    *ret = TAKE_PTR(a);
    return 0;
}

struct cli_api *cli_api_close(struct cli_api *a)
{
    if (!a)
        return NULL;
    if (a->curl)
        curl_easy_cleanup(a->curl);
    free(a->socket);
    free(a->base);
    if (a->auth) {
        explicit_bzero(a->auth, strlen(a->auth));
        free(a->auth);
    }
    free(a);
    return NULL;
}

const char *cli_api_where(const struct cli_api *a)
{
    return a->where;
}

bool cli_api_daemon_running(struct cli_api *a)
{
    if (!a->socket) {
        struct cli_resp r = {0};
        int rc = cli_api_request(a, "GET", "/healthz", NULL, NULL, 0, &r, NULL);
        cli_resp_clear(&r);
        return rc == 0;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", a->socket);
    bool ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    close(fd);
    return ok;
}

void cli_resp_clear(struct cli_resp *r)
{
    al_buf_free(&r->body);
    memset(r, 0, sizeof(*r));
}

/* ------------------------------------------------------------ transfers */

struct xfer {
    struct cli_resp *resp;
    int (*sink)(const char *buf, size_t len, void *data);
    void *data;
    bool (*interrupted)(void *data);
    void (*on_interrupt)(void *data);
    bool interrupt_done;
    bool sink_failed;
    FILE *upload;
};

static size_t on_write(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct xfer *x = userdata;
    size_t n = size * nmemb;
    if (x->sink && x->resp->status >= 200 && x->resp->status < 300) {
        if (x->sink(ptr, n, x->data) < 0) {
            x->sink_failed = true;
            return 0;
        }
        return n;
    }
    if (al_buf_append(&x->resp->body, ptr, n) < 0)
        return 0;
    return n;
}

static size_t on_header(char *buf, size_t size, size_t nitems, void *userdata)
{
    struct xfer *x = userdata;
    size_t n = size * nitems;
    if (n > 9 && strncmp(buf, "HTTP/1.", 7) == 0) {
        /* a status line: remember the final status for on_write */
        long st = strtol(buf + 9, NULL, 10);
        if (st >= 200)
            x->resp->status = st;
        return n;
    }
    static const char name[] = "x-agentlab-job-state:";
    if (n > sizeof(name) && strncasecmp(buf, name, sizeof(name) - 1) == 0) {
        const char *v = buf + sizeof(name) - 1;
        while (*v == ' ')
            v++;
        size_t len = strcspn(v, "\r\n");
        snprintf(x->resp->job_state, sizeof(x->resp->job_state), "%.*s", (int)len, v);
    }
    return n;
}

static int on_progress(void *userdata, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    (void)dltotal;
    (void)dlnow;
    (void)ultotal;
    (void)ulnow;
    struct xfer *x = userdata;
    if (!x->interrupt_done && x->interrupted && x->interrupted(x->data)) {
        x->interrupt_done = true;
        if (x->on_interrupt)
            x->on_interrupt(x->data);
    }
    return 0;
}

static size_t on_read(char *buf, size_t size, size_t nitems, void *userdata)
{
    struct xfer *x = userdata;
    size_t n = fread(buf, 1, size * nitems, x->upload);
    if (n == 0 && ferror(x->upload))
        return CURL_READFUNC_ABORT;
    return n;
}

static int perform(struct cli_api *a, const char *method, const char *path,
                   const char *content_type, const void *body, size_t len, struct xfer *x,
                   struct al_error **err)
{
    /* a request from inside a running stream (a cancel on Ctrl-C) gets
     * a handle of its own */
    CURL *own = a->busy ? curl_easy_init() : NULL;
    CURL *c = own ? own : a->curl;
    if (a->busy && !own)
        return al_error_set(err, ENOMEM, "curl");
    curl_easy_reset(c);
    _cleanup_free_ char *url = NULL;
    if (asprintf(&url, "%s%s", a->base, path) < 0) {
        if (own)
            curl_easy_cleanup(own);
        return al_error_set(err, ENOMEM, "url");
    }
    struct curl_slist *hdrs = NULL;
    char ct[128];
    if (content_type) {
        snprintf(ct, sizeof(ct), "Content-Type: %s", content_type);
        hdrs = curl_slist_append(hdrs, ct);
    }
    hdrs = curl_slist_append(hdrs, "Expect:");
    if (a->auth)
        hdrs = curl_slist_append(hdrs, a->auth);
    curl_easy_setopt(c, CURLOPT_URL, url);
    if (a->socket)
        curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, a->socket);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http");
    if (!x->sink)
        curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)CLI_MAX_RESPONSE);
    if (x->interrupted) {
        curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
        curl_easy_setopt(c, CURLOPT_XFERINFODATA, x);
    }
    if (x->upload) {
        curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(c, CURLOPT_READFUNCTION, on_read);
        curl_easy_setopt(c, CURLOPT_READDATA, x);
        curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, (curl_off_t)len);
    } else if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    } else if (strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
    }
    bool was_busy = a->busy;
    a->busy = true;
    CURLcode rc = curl_easy_perform(c);
    a->busy = was_busy;
    curl_slist_free_all(hdrs);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    x->resp->status = status;
    if (own)
        curl_easy_cleanup(own);
    if (rc == CURLE_OK)
        return 0;
    if (x->sink_failed)
        return al_error_set(err, EIO, "writing the output failed");
    if (status > 0 && rc == CURLE_WRITE_ERROR)
        return 0;
    int e = rc == CURLE_COULDNT_CONNECT      ? ECONNREFUSED
            : rc == CURLE_OPERATION_TIMEDOUT ? ETIMEDOUT
            : rc == CURLE_FILESIZE_EXCEEDED  ? EFBIG
            : rc == CURLE_RECV_ERROR || rc == CURLE_PARTIAL_FILE || rc == CURLE_GOT_NOTHING
                    ? ECONNRESET
                    : EIO;
    return al_error_set(err, e, "%s: %s", cli_api_where(a), curl_easy_strerror(rc));
}

int cli_api_request(struct cli_api *a, const char *method, const char *path,
                    const char *content_type, const void *body, size_t len, struct cli_resp *ret,
                    struct al_error **err)
{
    cli_resp_clear(ret);
    struct xfer x = {.resp = ret};
    return perform(a, method, path, content_type, body, len, &x, err);
}

int cli_api_upload(struct cli_api *a, const char *path, const char *file, struct cli_resp *ret,
                   struct al_error **err)
{
    cli_resp_clear(ret);
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return al_error_set_errno(err, errno, "opening %s", file);
    struct stat st;
    FILE *f = fstat(fd, &st) == 0 ? fdopen(fd, "rb") : NULL;
    if (!f) {
        close(fd);
        return al_error_set_errno(err, errno, "reading %s", file);
    }
    struct xfer x = {.resp = ret, .upload = f};
    int r = perform(a, "PUT", path, "application/x-tar", NULL, (size_t)st.st_size, &x, err);
    fclose(f);
    return r;
}

int cli_api_stream(struct cli_api *a, const char *path,
                   int (*sink)(const char *buf, size_t len, void *data), void *data,
                   bool (*interrupted)(void *data), void (*on_interrupt)(void *data),
                   struct cli_resp *ret, struct al_error **err)
{
    cli_resp_clear(ret);
    struct xfer x = {.resp = ret,
                     .sink = sink,
                     .data = data,
                     .interrupted = interrupted,
                     .on_interrupt = on_interrupt};
    return perform(a, "GET", path, NULL, NULL, 0, &x, err);
}

/* ------------------------------------------------------------ errors, JSON */

yajl_val cli_resp_json(const struct cli_resp *r)
{
    char errbuf[128];
    yajl_val v = yajl_tree_parse(r->body.data ? r->body.data : "", errbuf, sizeof(errbuf));
    if (!v)
        fprintf(stderr, "agentlab: the daemon's answer is not JSON: %s\n", errbuf);
    return v;
}

const char *cli_json_str(yajl_val v, const char *const *path)
{
    yajl_val x = v ? yajl_tree_get(v, (const char **)path, yajl_t_string) : NULL;
    return x ? YAJL_GET_STRING(x) : NULL;
}

int64_t cli_json_int(yajl_val v, const char *const *path, int64_t def)
{
    yajl_val x = v ? yajl_tree_get(v, (const char **)path, yajl_t_number) : NULL;
    return x && YAJL_IS_INTEGER(x) ? YAJL_GET_INTEGER(x) : def;
}

bool cli_json_bool(yajl_val v, const char *const *path)
{
    yajl_val x = v ? yajl_tree_get(v, (const char **)path, yajl_t_true) : NULL;
    return x != NULL;
}

yajl_val cli_json_array(yajl_val v, const char *const *path)
{
    return v ? yajl_tree_get(v, (const char **)path, yajl_t_array) : NULL;
}

int cli_api_fail(const struct cli_api *a, int result, const struct cli_resp *r,
                 const struct al_error *err, const char *what)
{
    if (result == -ECONNREFUSED || result == -ENOENT) {
        fprintf(stderr, "agentlab: %s: agentlabd is not running (nothing answers on %s)\n", what,
                cli_api_where(a));
        return CLI_EXIT_UNREACHABLE;
    }
    if (result < 0) {
        fprintf(stderr, "agentlab: %s: %s\n", what, al_error_message(err));
        return CLI_EXIT_FAILED;
    }
    char errbuf[128];
    yajl_val v = yajl_tree_parse(r->body.data ? r->body.data : "", errbuf, sizeof(errbuf));
    const char *msg = cli_json_str(v, JPATH("error", "message"));
    fprintf(stderr, "agentlab: %s: %s (HTTP %ld)\n", what, msg ? msg : "unexpected answer",
            r->status);
    if (v)
        yajl_tree_free(v);
    return r->status == 404 ? CLI_EXIT_NOT_FOUND : CLI_EXIT_FAILED;
}

int cli_api_connect(const char *socket, struct cli_api **ret)
{
    _cleanup_error_ struct al_error *err = NULL;
    if (cli_api_open(socket, ret, &err) < 0) {
        fprintf(stderr, "agentlab: %s\n", al_error_message(err));
        return CLI_EXIT_FAILED;
    }
    return 0;
}

int cli_api_call(struct cli_api *a, const char *method, const char *path, const char *content_type,
                 const void *body, size_t len, long want, const char *what, struct cli_resp *ret)
{
    _cleanup_error_ struct al_error *err = NULL;
    int rc = cli_api_request(a, method, path, content_type, body, len, ret, &err);
    if (rc < 0 || ret->status != want) {
        int code = cli_api_fail(a, rc, ret, err, what);
        cli_resp_clear(ret);
        return code;
    }
    return 0;
}

int cli_api_call_json(struct cli_api *a, const char *method, const char *path, long want,
                      const char *what, yajl_val *ret_v)
{
    struct cli_resp r = {0};
    int code = cli_api_call(a, method, path, NULL, NULL, 0, want, what, &r);
    if (code)
        return code;
    *ret_v = cli_resp_json(&r);
    cli_resp_clear(&r);
    return *ret_v ? 0 : CLI_EXIT_FAILED;
}

void cli_resp_print_raw(struct cli_resp *r)
{
    fwrite(r->body.data, 1, r->body.len, stdout);
    cli_resp_clear(r);
}
