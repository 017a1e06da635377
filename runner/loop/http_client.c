#include "runner/loop/http_client.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct al_http_call {
    struct al_curl *multi;
    CURL *easy;
    struct curl_slist *headers;
    char *body;
    char errbuf[CURL_ERROR_SIZE];
    struct al_http_response resp;
    size_t max_response;
    al_http_cb cb;
    void *data;
};

static void response_clear_headers(struct al_http_response *r)
{
    for (size_t i = 0; i < r->n_headers; i++) {
        free(r->headers[i].name);
        free(r->headers[i].value);
    }
    r->n_headers = 0;
    r->header_bytes = 0;
}

static void call_free(struct al_http_call *call)
{
    if (!call)
        return;
    if (call->easy)
        curl_easy_cleanup(call->easy);
    curl_slist_free_all(call->headers);
    free(call->body);
    response_clear_headers(&call->resp);
    free(call->resp.reason);
    al_buf_free(&call->resp.body);
    free(call);
}

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct al_http_call *call = userdata;
    size_t n = size * nmemb;
    if (al_buf_append(&call->resp.body, ptr, n) < 0) {
        call->resp.truncated = true;
        return 0; /* makes curl fail with CURLE_WRITE_ERROR */
    }
    return n;
}

static char *trim_dup(const char *s, size_t n)
{
    while (n && (*s == ' ' || *s == '\t')) {
        s++;
        n--;
    }
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n'))
        n--;
    return strndup(s, n);
}

static size_t on_header(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct al_http_call *call = userdata;
    struct al_http_response *r = &call->resp;
    size_t n = size * nmemb;

    r->header_bytes += n;
    if (r->header_bytes > AL_HTTP_MAX_HEADER_BYTES)
        return 0;

    if (n >= 5 && strncmp(ptr, "HTTP/", 5) == 0) {
        /* A new response (redirect, 100-continue): start over. */
        response_clear_headers(r);
        r->header_bytes = n;
        const char *sp = memchr(ptr, ' ', n);
        const char *sp2 = sp ? memchr(sp + 1, ' ', n - (size_t)(sp + 1 - ptr)) : NULL;
        free(r->reason);
        r->reason = sp2 ? trim_dup(sp2 + 1, n - (size_t)(sp2 + 1 - ptr)) : strdup("");
        return r->reason ? n : 0;
    }

    const char *colon = memchr(ptr, ':', n);
    if (!colon)
        return n; /* the blank line ending the block */
    if (r->n_headers >= AL_HTTP_MAX_HEADERS)
        return 0;
    char *name = trim_dup(ptr, (size_t)(colon - ptr));
    char *value = trim_dup(colon + 1, n - (size_t)(colon + 1 - ptr));
    if (!name || !value) {
        free(name);
        free(value);
        return 0;
    }
    r->headers[r->n_headers].name = name;
    r->headers[r->n_headers].value = value;
    r->n_headers++;
    return n;
}

int al_http_curlcode_to_errno(CURLcode rc)
{
    switch (rc) {
    case CURLE_OK:
        return 0;
    case CURLE_OPERATION_TIMEDOUT:
        return -ETIMEDOUT;
    case CURLE_COULDNT_CONNECT:
        return -ECONNREFUSED;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return -EHOSTUNREACH;
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
        return -ECONNRESET;
    case CURLE_ABORTED_BY_CALLBACK:
        return -ECANCELED;
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
        return -EPERM;
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_UNSUPPORTED_PROTOCOL:
        return -EPROTO;
    case CURLE_OUT_OF_MEMORY:
        return -ENOMEM;
    default:
        return -EIO;
    }
}

static void on_done(CURL *easy, CURLcode rc, void *data)
{
    struct al_http_call *call = data;
    struct al_error *err = NULL;
    int result = 0;

    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &call->resp.status);
    if (call->resp.truncated) {
        result = al_error_set(&err, EFBIG, "response body exceeds %zu bytes", call->max_response);
    } else if (rc != CURLE_OK) {
        result = al_http_curlcode_to_errno(rc);
        al_error_set(&err, -result, "%s", call->errbuf[0] ? call->errbuf : curl_easy_strerror(rc));
    }
    if (!call->resp.reason)
        call->resp.reason = strdup("");
    call->cb(result, &call->resp, err, call->data);
    al_error_free(err);
    call_free(call);
}

int al_http_start(struct al_curl *c, const struct al_http_request *req, al_http_cb cb, void *data,
                  struct al_http_call **ret_call, struct al_error **err)
{
    struct al_http_call *call = calloc(1, sizeof(*call));
    if (!call)
        return al_error_set(err, ENOMEM, "allocating an HTTP call");
    call->multi = c;
    call->cb = cb;
    call->data = data;
    call->max_response = req->max_response ? req->max_response : AL_HTTP_DEFAULT_MAX_RESPONSE;
    call->resp.body.limit = call->max_response;
    call->easy = curl_easy_init();
    if (!call->easy) {
        call_free(call);
        return al_error_set(err, ENOMEM, "curl_easy_init failed");
    }
    CURL *e = call->easy;
    const char *method = req->method ? req->method : "GET";

    curl_easy_setopt(e, CURLOPT_URL, req->url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, call);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, call->errbuf);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, call);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, call);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, req->timeout_ms > 0 ? req->timeout_ms : 60000L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                     req->connect_timeout_ms > 0 ? req->connect_timeout_ms : 10000L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "agentlab/" AL_VERSION);
    if (req->unix_socket)
        curl_easy_setopt(e, CURLOPT_UNIX_SOCKET_PATH, req->unix_socket);

    if (strcasecmp(method, "GET") == 0) {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else if (strcasecmp(method, "HEAD") == 0) {
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    } else {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    }
    if (req->body) {
        call->body = malloc(req->body_len ? req->body_len : 1);
        if (!call->body) {
            call_free(call);
            return al_error_set(err, ENOMEM, "copying the request body");
        }
        memcpy(call->body, req->body, req->body_len);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, call->body);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
        if (strcasecmp(method, "POST") != 0)
            curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    }
    /* No "Expect: 100-continue" round trip. */
    call->headers = curl_slist_append(NULL, "Expect:");
    for (const char *const *h = req->headers; h && *h; h++) {
        struct curl_slist *n = curl_slist_append(call->headers, *h);
        if (!n) {
            call_free(call);
            return al_error_set(err, ENOMEM, "building request headers");
        }
        call->headers = n;
    }
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, call->headers);

    if (req->setup && req->setup(e, req->setup_data) != 0) {
        call_free(call);
        return al_error_set(err, EINVAL, "request setup refused %s", req->url);
    }

    int r = al_curl_add(c, e, on_done, call);
    if (r < 0) {
        call_free(call);
        return al_error_set(err, -r, "starting the request to %s", req->url);
    }
    if (ret_call)
        *ret_call = call;
    return 0;
}

void al_http_cancel(struct al_http_call *call)
{
    if (call)
        al_curl_cancel(call->multi, call->easy);
}

const char *al_http_header(const struct al_http_response *resp, const char *name)
{
    for (size_t i = 0; i < resp->n_headers; i++) {
        if (strcasecmp(resp->headers[i].name, name) == 0)
            return resp->headers[i].value;
    }
    return NULL;
}
