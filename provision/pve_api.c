#include "provision/pve_api.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdarg.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "runner/base/list.h"
#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/loop/http_client.h"

#define RETRY_FIRST_MS    250u
#define RETRY_MAX_MS      4000u
#define RETRY_MAX_TRIES   7
#define TICKET_MAX_AGE_MS (90u * 60u * 1000u) /* tickets live 2 h */
#define CREDENTIALS_MAX   4096

enum call_state {
    CALL_DELAYED = 0,
    CALL_AUTH_WAIT,
    CALL_IN_FLIGHT,
};

struct pve_call {
    struct pve_api *api;
    struct al_list link; /* on pve_api.calls */
    enum call_state state;
    uint64_t due_ms;
    char method[8];
    char *path;
    char *params;
    unsigned flags;
    size_t max_reply;
    long timeout_ms;
    int tries;
    bool timer_only;
    bool internal; /* the login itself: no auth headers */
    bool relogged;
    bool cancelling;
    struct al_http_call *http;
    pve_cb cb;
    void *data;
};

struct pve_api {
    uv_loop_t *loop;
    struct al_curl *curl;
    char *base; /* url + /api2/json */
    char *token_file;
    char *user;
    char *password_file;
    char *ca_file;
    bool have_pin;
    uint8_t pin[32];
    char pin_seen[100]; /* fingerprint of the last certificate that did not match */
    char *auth_header;  /* token auth */
    char *secret;       /* registered with the redactor */
    char *password;
    char *ticket;
    char *csrf;
    char *cookie_header;
    char *csrf_header;
    uint64_t ticket_at;
    struct pve_call *login;
    long connect_timeout_ms, timeout_ms;
    uv_timer_t timer;
    bool closing;
    struct al_list calls; /* every call not yet delivered, newest first */
    uint64_t requests;
    uint32_t rng;
    void (*close_done)(void *data);
    void *close_data;
};

/* ------------------------------------------------------------ encoding */

static bool unreserved(unsigned char c)
{
    return isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~';
}

int pve_percent_encode(struct al_buf *out, const char *s, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        int r;
        if (unreserved(c)) {
            r = al_buf_append(out, &s[i], 1);
        } else {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            r = al_buf_append(out, e, 3);
        }
        if (r < 0)
            return r;
    }
    return 0;
}

int pve_path_segment(struct al_buf *out, const char *s)
{
    int r = al_buf_append(out, "/", 1);
    return r < 0 ? r : pve_percent_encode(out, s, strlen(s));
}

void pve_params_add(struct pve_params *p, const char *key, const char *value)
{
    if (p->error)
        return;
    int r = 0;
    if (p->buf.len)
        r = al_buf_append(&p->buf, "&", 1);
    if (r == 0)
        r = pve_percent_encode(&p->buf, key, strlen(key));
    if (r == 0)
        r = al_buf_append(&p->buf, "=", 1);
    if (r == 0)
        r = pve_percent_encode(&p->buf, value, strlen(value));
    if (r == 0 && !p->buf.data)
        r = al_buf_append(&p->buf, "", 0);
    if (r < 0)
        p->error = r;
}

void pve_params_add_int(struct pve_params *p, const char *key, int64_t value)
{
    char v[32];
    snprintf(v, sizeof(v), "%" PRId64, value);
    pve_params_add(p, key, v);
}

void pve_params_add_bool(struct pve_params *p, const char *key, bool value)
{
    pve_params_add(p, key, value ? "1" : "0");
}

void pve_params_clear(struct pve_params *p)
{
    if (p->buf.data)
        explicit_bzero(p->buf.data, p->buf.len);
    al_buf_free(&p->buf);
    p->error = 0;
}

/* ------------------------------------------------------------ credentials */

static char *trim(char *s)
{
    while (*s && isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}

static bool header_safe(const char *s)
{
    for (; *s; s++) {
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return false;
    }
    return true;
}

int pve_token_parse(const char *text, char **ret_token, const char **ret_secret,
                    struct al_error **err)
{
    _cleanup_free_ char *copy = strdup(text);
    if (!copy)
        return al_error_set(err, ENOMEM, "out of memory");
    char *t = trim(copy);
    const char *at = strchr(t, '@');
    const char *bang = at ? strchr(at, '!') : NULL;
    const char *eq = bang ? strchr(bang, '=') : NULL;
    int r = 0;
    if (!at || at == t || !bang || bang == at + 1 || !eq || eq == bang + 1 || !header_safe(t) ||
        strchr(t, ' '))
        r = al_error_set(err, EINVAL,
                         "the token file must hold USER@REALM!TOKENID=SECRET on one line");
    else if (strlen(eq + 1) < AL_REDACT_MIN_LEN)
        r = al_error_set(err, EINVAL, "the token secret is shorter than %d characters",
                         AL_REDACT_MIN_LEN);
    if (r < 0) {
        explicit_bzero(copy, strlen(copy));
        return r;
    }
    char *token = strdup(t);
    explicit_bzero(copy, strlen(copy));
    if (!token)
        return al_error_set(err, ENOMEM, "out of memory");
    *ret_secret = token + (eq + 1 - t);
    *ret_token = token;
    return 0;
}

int pve_fingerprint_parse(const char *s, uint8_t ret[32])
{
    uint8_t out[32];
    size_t n = 0;
    int half = -1;
    for (const char *p = s; *p; p++) {
        if (*p == ':' && half < 0)
            continue;
        int v;
        if (*p >= '0' && *p <= '9')
            v = *p - '0';
        else if (*p >= 'a' && *p <= 'f')
            v = *p - 'a' + 10;
        else if (*p >= 'A' && *p <= 'F')
            v = *p - 'A' + 10;
        else
            return -EINVAL;
        if (half < 0) {
            half = v;
        } else {
            if (n >= sizeof(out))
                return -EINVAL;
            out[n++] = (uint8_t)(half << 4 | v);
            half = -1;
        }
    }
    if (n != sizeof(out) || half >= 0)
        return -EINVAL;
    memcpy(ret, out, sizeof(out));
    return 0;
}

static void secret_forget(char **s)
{
    if (!*s)
        return;
    al_redact_remove(*s);
    explicit_bzero(*s, strlen(*s));
    free(*s);
    *s = NULL;
}

static void string_wipe(char **s)
{
    if (!*s)
        return;
    explicit_bzero(*s, strlen(*s));
    free(*s);
    *s = NULL;
}

static void ticket_forget(struct pve_api *api)
{
    secret_forget(&api->ticket);
    secret_forget(&api->csrf);
    string_wipe(&api->cookie_header);
    string_wipe(&api->csrf_header);
    api->ticket_at = 0;
}

static int read_secret_file(const char *path, const char *what, char **ret, struct al_error **err)
{
    char *text = NULL;
    size_t len = 0;
    int r = al_read_secret_file(path, what, CREDENTIALS_MAX, &text, &len, err);
    if (r < 0)
        return r;
    if (memchr(text, '\0', len)) {
        explicit_bzero(text, len);
        free(text);
        return al_error_set(err, EINVAL, "%s holds a NUL byte", path);
    }
    *ret = text;
    return 0;
}

int pve_api_reload_credentials(struct pve_api *api, struct al_error **err)
{
    if (api->token_file) {
        _cleanup_free_ char *text = NULL;
        int r = read_secret_file(api->token_file, "token_file", &text, err);
        if (r < 0)
            return r;
        char *token = NULL;
        const char *secret = NULL;
        r = pve_token_parse(text, &token, &secret, err);
        explicit_bzero(text, strlen(text));
        if (r < 0)
            return al_error_wrap(err, "%s", api->token_file);
        char *header = NULL;
        char *sec = strdup(secret);
        if (!sec || asprintf(&header, "Authorization: PVEAPIToken=%s", token) < 0) {
            header = NULL;
            string_wipe(&sec);
            string_wipe(&token);
            return al_error_set(err, ENOMEM, "out of memory");
        }
        string_wipe(&token);
        if (al_redact_add(sec) < 0) {
            string_wipe(&sec);
            string_wipe(&header);
            return al_error_set(err, EINVAL, "the token secret cannot be masked in logs");
        }
        secret_forget(&api->secret);
        string_wipe(&api->auth_header);
        api->secret = sec;
        api->auth_header = header;
        return 0;
    }
    _cleanup_free_ char *text = NULL;
    int r = read_secret_file(api->password_file, "password_file", &text, err);
    if (r < 0)
        return r;
    char *pw = strdup(trim(text));
    explicit_bzero(text, strlen(text));
    if (!pw)
        return al_error_set(err, ENOMEM, "out of memory");
    if (strlen(pw) < AL_REDACT_MIN_LEN || al_redact_add(pw) < 0) {
        string_wipe(&pw);
        return al_error_set(err, EINVAL, "%s: the password is shorter than %d characters",
                            api->password_file, AL_REDACT_MIN_LEN);
    }
    secret_forget(&api->password);
    api->password = pw;
    ticket_forget(api);
    return 0;
}

/* ------------------------------------------------------------ TLS */

static int pin_index = -1;
static pthread_once_t pin_once = PTHREAD_ONCE_INIT;

static void pin_index_init(void)
{
    pin_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

/* Decides on the leaf certificate by its SHA-256; with a CA file the chain
 * must verify as well, without one the pin replaces chain and name checks
 * (Proxmox nodes use self-signed certificates). */
static int pin_verify(int preverify_ok, X509_STORE_CTX *store)
{
    SSL *ssl = X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx());
    SSL_CTX *ctx = ssl ? SSL_get_SSL_CTX(ssl) : NULL;
    struct pve_api *api = ctx ? SSL_CTX_get_ex_data(ctx, pin_index) : NULL;
    if (!api)
        return 0;
    int depth = X509_STORE_CTX_get_error_depth(store);
    if (depth > 0) {
        if (api->ca_file)
            return preverify_ok;
        X509_STORE_CTX_set_error(store, X509_V_OK);
        return 1;
    }
    X509 *cert = X509_STORE_CTX_get_current_cert(store);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (!cert || X509_digest(cert, EVP_sha256(), md, &len) != 1 || len != 32)
        return 0;
    if (memcmp(md, api->pin, 32) != 0) {
        for (unsigned i = 0; i < 32; i++)
            snprintf(api->pin_seen + i * 3, sizeof(api->pin_seen) - i * 3, "%02X%s", md[i],
                     i < 31 ? ":" : "");
        X509_STORE_CTX_set_error(store, X509_V_ERR_CERT_REJECTED);
        return 0;
    }
    if (api->ca_file)
        return preverify_ok;
    X509_STORE_CTX_set_error(store, X509_V_OK);
    return 1;
}

static CURLcode pin_ctx(CURL *easy, void *sslctx, void *parm)
{
    (void)easy;
    SSL_CTX *ctx = sslctx;
    if (pin_index < 0 || !SSL_CTX_set_ex_data(ctx, pin_index, parm))
        return CURLE_SSL_CERTPROBLEM;
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, pin_verify);
    return CURLE_OK;
}

static int tls_setup(CURL *e, void *data)
{
    struct pve_call *c = data;
    struct pve_api *api = c->api;
    /* curl silently sends a request again when a reused connection turns
     * out dead before any reply; that must not happen to a request that is
     * not idempotent (a second clone, a second exec) */
    if (!(c->flags & PVE_IDEMPOTENT))
        curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
    /* the read timeout: a reply that stalls for this long is given up */
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, (long)(PVE_READ_TIMEOUT_MS / 1000));
    if (api->ca_file) {
        if (curl_easy_setopt(e, CURLOPT_CAINFO, api->ca_file) != CURLE_OK)
            return -1;
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    }
    if (api->have_pin) {
        /* no session resumption: every connection proves the pinned key */
        curl_easy_setopt(e, CURLOPT_SSL_SESSIONID_CACHE, 0L);
        if (curl_easy_setopt(e, CURLOPT_SSL_CTX_FUNCTION, pin_ctx) != CURLE_OK ||
            curl_easy_setopt(e, CURLOPT_SSL_CTX_DATA, api) != CURLE_OK)
            return -1; /* a TLS library without SSL_CTX hooks: fail closed */
        if (!api->ca_file) {
            curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
            curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
        }
    }
    return 0;
}

/* ------------------------------------------------------------ JSON */

static bool json_depth_ok(const char *s, size_t len, int max)
{
    int depth = 0;
    bool in_str = false, esc = false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (in_str) {
            if (esc)
                esc = false;
            else if (c == '\\')
                esc = true;
            else if (c == '"')
                in_str = false;
            continue;
        }
        if (c == '"')
            in_str = true;
        else if (c == '{' || c == '[') {
            if (++depth > max)
                return false;
        } else if (c == '}' || c == ']')
            depth--;
    }
    return true;
}

yajl_val pve_json_get(yajl_val obj, const char *key)
{
    if (!obj || !YAJL_IS_OBJECT(obj))
        return NULL;
    for (size_t i = 0; i < obj->u.object.len; i++) {
        if (streq(obj->u.object.keys[i], key))
            return obj->u.object.values[i];
    }
    return NULL;
}

const char *pve_json_str(yajl_val obj, const char *key)
{
    yajl_val v = pve_json_get(obj, key);
    return v && YAJL_IS_STRING(v) ? v->u.string : NULL;
}

bool pve_json_int(yajl_val obj, const char *key, int64_t *ret)
{
    yajl_val v = pve_json_get(obj, key);
    if (!v)
        return false;
    if (YAJL_IS_INTEGER(v)) {
        *ret = YAJL_GET_INTEGER(v);
        return true;
    }
    if (YAJL_IS_DOUBLE(v)) {
        double d = YAJL_GET_DOUBLE(v);
        if (d < -9.0e18 || d > 9.0e18)
            return false;
        *ret = (int64_t)d;
        return true;
    }
    if (YAJL_IS_STRING(v))
        return al_parse_int64(v->u.string, INT64_MIN, INT64_MAX, ret) == 0;
    return false;
}

bool pve_json_bool(yajl_val obj, const char *key, bool *ret)
{
    yajl_val v = pve_json_get(obj, key);
    if (!v)
        return false;
    if (YAJL_IS_TRUE(v) || YAJL_IS_FALSE(v)) {
        *ret = YAJL_IS_TRUE(v);
        return true;
    }
    int64_t i;
    if (pve_json_int(obj, key, &i) && (i == 0 || i == 1)) {
        *ret = i == 1;
        return true;
    }
    return false;
}

/* Appends s as it is (separators). */
static void msg_sep(char *out, size_t size, const char *s)
{
    size_t o = strlen(out);
    snprintf(out + o, size - o, "%s", s);
}

/* Appends printable text (control characters become spaces), trimmed. */
static void msg_append(char *out, size_t size, const char *s)
{
    size_t o = strlen(out);
    while (*s && isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1]))
        n--;
    for (size_t i = 0; i < n && o + 1 < size; i++)
        out[o++] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? ' ' : s[i];
    out[o] = '\0';
}

int pve_reply_parse(long status, const char *reason_phrase, const char *body, size_t len,
                    yajl_val *ret_tree, yajl_val *ret_data, char *ret_message, size_t msg_size)
{
    char ebuf[128];
    ret_message[0] = '\0';
    bool ok = status >= 200 && status < 300;
    yajl_val tree = NULL;
    if (len && body && json_depth_ok(body, len, PVE_MAX_JSON_DEPTH) && strlen(body) == len)
        tree = yajl_tree_parse(body, ebuf, sizeof(ebuf));
    if (ok) {
        if (!tree || !YAJL_IS_OBJECT(tree) || !pve_json_get(tree, "data")) {
            snprintf(ret_message, msg_size, "malformed reply (%s)",
                     !len    ? "empty body"
                     : !tree ? "not JSON within limits"
                             : "no data member");
            yajl_tree_free(tree);
            return -EPROTO;
        }
        yajl_val d = pve_json_get(tree, "data");
        *ret_tree = tree;
        *ret_data = YAJL_IS_NULL(d) ? NULL : d;
        return 0;
    }
    msg_append(ret_message, msg_size, reason_phrase ? reason_phrase : "");
    const char *m = tree ? pve_json_str(tree, "message") : NULL;
    if (m) {
        char trimmed[PVE_MESSAGE_MAX] = "";
        msg_append(trimmed, sizeof(trimmed), m);
        if (trimmed[0] && !strstr(ret_message, trimmed)) {
            if (ret_message[0])
                msg_sep(ret_message, msg_size, ": ");
            msg_append(ret_message, msg_size, trimmed);
        }
    }
    yajl_val errors = tree ? pve_json_get(tree, "errors") : NULL;
    if (errors && YAJL_IS_OBJECT(errors) && errors->u.object.len) {
        msg_sep(ret_message, msg_size, ret_message[0] ? " (" : "(");
        for (size_t i = 0; i < errors->u.object.len; i++) {
            yajl_val v = errors->u.object.values[i];
            if (i)
                msg_sep(ret_message, msg_size, "; ");
            msg_append(ret_message, msg_size, errors->u.object.keys[i]);
            msg_sep(ret_message, msg_size, ": ");
            msg_append(ret_message, msg_size, YAJL_IS_STRING(v) ? v->u.string : "invalid");
        }
        msg_sep(ret_message, msg_size, ")");
    }
    if (!ret_message[0])
        snprintf(ret_message, msg_size, "no reason given");
    yajl_tree_free(tree);
    return 0;
}

bool pve_message_is_lock_timeout(const char *m)
{
    return (strstr(m, "can't lock file") && strstr(m, "got timeout")) ||
           strstr(m, "VM is locked") || strstr(m, "CT is locked") || strstr(m, "cfs-lock") ||
           strstr(m, "trying to acquire lock");
}

/* ------------------------------------------------------------ calls */

static void on_timer(uv_timer_t *t);

static uint64_t now_ms(const struct pve_api *api)
{
    return uv_now(api->loop);
}

static void call_free(struct pve_call *c)
{
    free(c->path);
    if (c->params) {
        explicit_bzero(c->params, strlen(c->params));
        free(c->params);
    }
    free(c);
}

static void rearm(struct pve_api *api)
{
    if (api->closing)
        return;
    uint64_t due = UINT64_MAX;
    al_list_for_each(c, &api->calls, struct pve_call, link) {
        if (c->state == CALL_DELAYED && c->due_ms < due)
            due = c->due_ms;
    }
    if (due == UINT64_MAX) {
        uv_timer_stop(&api->timer);
        return;
    }
    uint64_t now = now_ms(api);
    uv_timer_start(&api->timer, on_timer, due > now ? due - now : 0, 0);
}

/* Removes the call, reports to its owner, frees it. */
static void deliver(struct pve_call *c, int result, long status, const char *message, yajl_val data,
                    const struct al_error *err)
{
    struct pve_api *api = c->api;
    al_list_del(&c->link);
    struct pve_reply reply = {.status = status, .message = message ? message : "", .data = data};
    c->cb(result, &reply, err, c->data);
    call_free(c);
    rearm(api);
}

static void deliver_error(struct pve_call *c, int result, long status, const char *fmt, ...)
        _printf_(4, 5);

static void deliver_error(struct pve_call *c, int result, long status, const char *fmt, ...)
{
    char msg[PVE_MESSAGE_MAX + 200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    struct al_error *err = NULL;
    if (c->timer_only)
        al_error_set(&err, -result, "%s", msg);
    else
        al_error_set(&err, -result, "%s %s: %s", c->method, c->path, msg);
    deliver(c, result, status, msg, NULL, err);
    al_error_free(err);
}

static uint64_t backoff_ms(struct pve_api *api, int tries)
{
    uint64_t d = RETRY_FIRST_MS;
    for (int i = 1; i < tries && d < RETRY_MAX_MS; i++)
        d *= 2;
    if (d > RETRY_MAX_MS)
        d = RETRY_MAX_MS;
    /* xorshift jitter of up to 25% so that many clients do not retry in step */
    api->rng ^= api->rng << 13;
    api->rng ^= api->rng >> 17;
    api->rng ^= api->rng << 5;
    return d - d / 8 + api->rng % (d / 4 + 1);
}

static void schedule_retry(struct pve_call *c)
{
    c->state = CALL_DELAYED;
    c->due_ms = now_ms(c->api) + backoff_ms(c->api, c->tries);
    rearm(c->api);
}

static void send_call(struct pve_call *c);
static void start_login(struct pve_api *api);

static void start_call(struct pve_call *c)
{
    struct pve_api *api = c->api;
    if (c->timer_only) {
        struct pve_reply reply = {.message = ""};
        al_list_del(&c->link);
        c->cb(0, &reply, NULL, c->data);
        call_free(c);
        rearm(api);
        return;
    }
    if (api->password && !c->internal &&
        (!api->ticket || now_ms(api) - api->ticket_at > TICKET_MAX_AGE_MS)) {
        c->state = CALL_AUTH_WAIT;
        if (!api->login)
            start_login(api);
        return;
    }
    send_call(c);
}

static void on_timer(uv_timer_t *t)
{
    struct pve_api *api = t->data;
    for (;;) {
        uint64_t now = now_ms(api);
        struct pve_call *due = NULL;
        al_list_for_each(c, &api->calls, struct pve_call, link) {
            if (c->state == CALL_DELAYED && c->due_ms <= now) {
                due = c;
                break;
            }
        }
        if (!due || api->closing)
            break;
        due->state = CALL_IN_FLIGHT;
        start_call(due);
    }
    rearm(api);
}

static bool retryable_transport(const struct pve_call *c, int result)
{
    switch (result) {
    case -ECONNREFUSED:
    case -EHOSTUNREACH:
        return true; /* nothing reached the server */
    case -ECONNRESET:
    case -ETIMEDOUT:
    case -EIO:
        return (c->flags & PVE_IDEMPOTENT) != 0;
    default:
        return false;
    }
}

static int status_to_errno(long status)
{
    if (status == 401 || status == 403)
        return -EACCES;
    if (status == 400)
        return -EINVAL;
    if (status == 404)
        return -ENOENT;
    return -EIO;
}

static void on_http_done(int result, const struct al_http_response *resp,
                         const struct al_error *herr, void *data)
{
    struct pve_call *c = data;
    struct pve_api *api = c->api;
    c->http = NULL;
    if (c->cancelling || result == -ECANCELED) {
        deliver_error(c, -ECANCELED, 0, "canceled");
        return;
    }
    c->tries++;
    bool may_retry = !(c->flags & PVE_NO_RETRY) && c->tries < RETRY_MAX_TRIES && !api->closing;
    if (result < 0) {
        if (may_retry && retryable_transport(c, result)) {
            schedule_retry(c);
            return;
        }
        if (result == -EPERM && api->have_pin && api->pin_seen[0]) {
            deliver_error(c, result, 0,
                          "TLS: the server's certificate has SHA-256 fingerprint %s, not the one "
                          "configured in fingerprint",
                          api->pin_seen);
            return;
        }
        deliver_error(c, result, 0, "%s", al_error_message(herr));
        return;
    }
    long status = resp->status;
    yajl_val tree = NULL, d = NULL;
    char msg[PVE_MESSAGE_MAX];
    int r = pve_reply_parse(status, resp->reason, resp->body.data, resp->body.len, &tree, &d, msg,
                            sizeof(msg));
    if (r < 0) {
        deliver_error(c, -EPROTO, status, "HTTP %ld with a %s", status, msg);
        return;
    }
    if (status >= 200 && status < 300) {
        deliver(c, 0, status, "", d, NULL);
        yajl_tree_free(tree);
        return;
    }
    if (status == 401 && api->password && !c->internal && !c->relogged && !api->closing) {
        /* the ticket expired early (server restart, clock): log in again once */
        c->relogged = true;
        ticket_forget(api);
        c->state = CALL_AUTH_WAIT;
        if (!api->login)
            start_login(api);
        return;
    }
    bool retry = false;
    if (status >= 500 && pve_message_is_lock_timeout(msg))
        retry = true;
    else if ((status == 502 || status == 503 || status == 504 || status == 596 || status == 599) &&
             (c->flags & PVE_IDEMPOTENT))
        retry = true;
    else if (status == 400 && (c->flags & PVE_RETRY_NO_SUCH_TASK) && strstr(msg, "no such task"))
        retry = true;
    if (retry && may_retry) {
        schedule_retry(c);
        return;
    }
    if (status == 401)
        deliver_error(c, -EACCES, status, "HTTP 401 %s (check %s)", msg,
                      api->password ? "user and password_file" : "token_file");
    else
        deliver_error(c, status_to_errno(status), status, "HTTP %ld %s", status, msg);
}

static void send_call(struct pve_call *c)
{
    struct pve_api *api = c->api;
    bool query = streq(c->method, "GET") || streq(c->method, "DELETE");
    _cleanup_free_ char *url = NULL;
    if (asprintf(&url, "%s%s%s%s", api->base, c->path, query && c->params[0] ? "?" : "",
                 query ? c->params : "") < 0) {
        url = NULL;
        deliver_error(c, -ENOMEM, 0, "out of memory");
        return;
    }
    const char *headers[6];
    size_t nh = 0;
    headers[nh++] = "Accept: application/json";
    if (!query)
        headers[nh++] = "Content-Type: application/x-www-form-urlencoded";
    if (!c->internal) {
        if (api->auth_header) {
            headers[nh++] = api->auth_header;
        } else if (api->cookie_header) {
            headers[nh++] = api->cookie_header;
            if (!streq(c->method, "GET"))
                headers[nh++] = api->csrf_header;
        }
    }
    headers[nh] = NULL;
    struct al_http_request hr = {
            .method = c->method,
            .url = url,
            .headers = headers,
            .body = query ? NULL : c->params,
            .body_len = query ? 0 : strlen(c->params),
            .max_response = c->max_reply,
            .timeout_ms = c->timeout_ms,
            .connect_timeout_ms = api->connect_timeout_ms,
            .setup = tls_setup,
            .setup_data = c,
    };
    struct al_error *err = NULL;
    c->state = CALL_IN_FLIGHT;
    api->requests++;
    api->pin_seen[0] = '\0';
    if (al_http_start(api->curl, &hr, on_http_done, c, &c->http, &err) < 0) {
        deliver_error(c, -EIO, 0, "%s", al_error_message(err));
        al_error_free(err);
    }
}

static struct pve_call *call_new(struct pve_api *api, const char *method, const char *path,
                                 const char *params, pve_cb cb, void *data)
{
    struct pve_call *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->api = api;
    al_list_init(&c->link);
    snprintf(c->method, sizeof(c->method), "%s", method);
    c->path = strdup(path);
    c->params = strdup(params);
    if (!c->path || !c->params) {
        call_free(c);
        return NULL;
    }
    c->cb = cb;
    c->data = data;
    c->timeout_ms = api->timeout_ms;
    c->max_reply = PVE_DEFAULT_MAX_REPLY;
    al_list_add(&api->calls, &c->link);
    return c;
}

/* ------------------------------------------------------------ tickets */

/* The first call waiting for a ticket, or NULL. Sending or failing it
 * takes it out of that state, so callers loop until NULL. */
static struct pve_call *first_auth_waiter(const struct pve_api *api)
{
    al_list_for_each(c, &api->calls, struct pve_call, link) {
        if (c->state == CALL_AUTH_WAIT)
            return c;
    }
    return NULL;
}

static void fail_auth_waiters(struct pve_api *api, int result, const char *msg)
{
    for (struct pve_call *w; (w = first_auth_waiter(api));)
        deliver_error(w, result, 0, "logging in: %s", msg);
}

static void on_login(int result, const struct pve_reply *reply, const struct al_error *err,
                     void *data)
{
    struct pve_api *api = data;
    api->login = NULL;
    if (result < 0) {
        fail_auth_waiters(api, result, al_error_message(err));
        return;
    }
    const char *ticket = pve_json_str(reply->data, "ticket");
    const char *csrf = pve_json_str(reply->data, "CSRFPreventionToken");
    if (!ticket || !csrf || !header_safe(ticket) || !header_safe(csrf) || strchr(ticket, ';') ||
        strlen(ticket) < AL_REDACT_MIN_LEN || strlen(csrf) < AL_REDACT_MIN_LEN) {
        fail_auth_waiters(api, -EPROTO, "the ticket reply lacks ticket or CSRFPreventionToken");
        return;
    }
    ticket_forget(api);
    api->ticket = strdup(ticket);
    api->csrf = strdup(csrf);
    if (!api->ticket || !api->csrf || al_redact_add(api->ticket) < 0 ||
        al_redact_add(api->csrf) < 0 ||
        asprintf(&api->cookie_header, "Cookie: PVEAuthCookie=%s", ticket) < 0 ||
        asprintf(&api->csrf_header, "CSRFPreventionToken: %s", csrf) < 0) {
        fail_auth_waiters(api, -ENOMEM, "out of memory");
        return;
    }
    api->ticket_at = now_ms(api);
    for (struct pve_call *w; (w = first_auth_waiter(api));)
        send_call(w);
}

static void start_login(struct pve_api *api)
{
    struct pve_params p = {0};
    pve_params_add(&p, "username", api->user);
    pve_params_add(&p, "password", api->password);
    struct pve_call *c =
            p.error ? NULL : call_new(api, "POST", "/access/ticket", p.buf.data, on_login, api);
    pve_params_clear(&p);
    if (!c) {
        fail_auth_waiters(api, -ENOMEM, "out of memory");
        return;
    }
    c->internal = true;
    c->flags = PVE_IDEMPOTENT;
    api->login = c;
    send_call(c);
}

/* ------------------------------------------------------------ public */

int pve_api_call(struct pve_api *api, const struct pve_request *req, pve_cb cb, void *data,
                 struct pve_call **ret_call, struct al_error **err)
{
    if (api->closing)
        return al_error_set(err, ESHUTDOWN, "the Proxmox client is closing");
    if (req->params && req->params->error)
        return al_error_set(err, -req->params->error, "%s %s: encoding the parameters", req->method,
                            req->path);
    const char *params = req->params && req->params->buf.data ? req->params->buf.data : "";
    struct pve_call *c = call_new(api, req->method, req->path, params, cb, data);
    if (!c)
        return al_error_set(err, ENOMEM, "out of memory");
    c->flags = req->flags;
    if (req->max_reply)
        c->max_reply = req->max_reply;
    if (req->timeout_ms)
        c->timeout_ms = req->timeout_ms;
    if (ret_call)
        *ret_call = c;
    c->state = CALL_DELAYED;
    c->due_ms = now_ms(api) + req->delay_ms;
    /* even an immediate call starts from the timer, so cb never runs
     * inside pve_api_call() */
    rearm(api);
    return 0;
}

int pve_api_after(struct pve_api *api, uint64_t delay_ms, pve_cb cb, void *data,
                  struct pve_call **ret_call)
{
    if (api->closing)
        return -ESHUTDOWN;
    struct pve_call *c = call_new(api, "", "", "", cb, data);
    if (!c)
        return -ENOMEM;
    c->timer_only = true;
    c->state = CALL_DELAYED;
    c->due_ms = now_ms(api) + delay_ms;
    if (ret_call)
        *ret_call = c;
    rearm(api);
    return 0;
}

void pve_call_cancel(struct pve_call *c)
{
    if (!c)
        return;
    if (c->state == CALL_IN_FLIGHT && c->http) {
        c->cancelling = true;
        al_http_cancel(c->http); /* on_http_done delivers */
        return;
    }
    if (c == c->api->login)
        c->api->login = NULL;
    deliver_error(c, -ECANCELED, 0, "canceled");
}

uint64_t pve_api_requests(const struct pve_api *api)
{
    return api->requests;
}

static void api_free(struct pve_api *api)
{
    secret_forget(&api->secret);
    string_wipe(&api->auth_header);
    secret_forget(&api->password);
    ticket_forget(api);
    free(api->base);
    free(api->token_file);
    free(api->user);
    free(api->password_file);
    free(api->ca_file);
    free(api);
}

int pve_api_new(uv_loop_t *loop, struct al_curl *curl, const struct pve_api_config *cfg,
                struct pve_api **ret, struct al_error **err)
{
    if (!curl)
        return al_error_set(err, EINVAL, "no HTTP client on this loop");
    if (!cfg->url || strncmp(cfg->url, "https://", 8) != 0 || strlen(cfg->url) <= 8)
        return al_error_set(err, EINVAL, "url must start with https://");
    bool token = cfg->token_file && *cfg->token_file;
    bool ticket = cfg->user && *cfg->user && cfg->password_file && *cfg->password_file;
    if (!token && !ticket)
        return al_error_set(err, EINVAL, "set token_file, or user and password_file");
    pthread_once(&pin_once, pin_index_init);
    struct pve_api *api = calloc(1, sizeof(*api));
    if (!api)
        return al_error_set(err, ENOMEM, "out of memory");
    api->loop = loop;
    api->curl = curl;
    al_list_init(&api->calls);
    api->connect_timeout_ms = cfg->connect_timeout_ms ? cfg->connect_timeout_ms : 10000;
    api->timeout_ms = cfg->timeout_ms ? cfg->timeout_ms : 60000;
    api->rng = (uint32_t)al_now_mono_us() | 1u;
    size_t ulen = strlen(cfg->url);
    while (ulen > 8 && cfg->url[ulen - 1] == '/')
        ulen--;
    /* tolerate the API path in the url */
    if (ulen > 18 && strncmp(cfg->url + ulen - 10, "/api2/json", 10) == 0)
        ulen -= 10;
    int r = 0;
    if (asprintf(&api->base, "%.*s/api2/json", (int)ulen, cfg->url) < 0) {
        api->base = NULL;
        r = al_error_set(err, ENOMEM, "out of memory");
    }
    if (r == 0 && token && !(api->token_file = strdup(cfg->token_file)))
        r = al_error_set(err, ENOMEM, "out of memory");
    if (r == 0 && !token &&
        (!(api->user = strdup(cfg->user)) || !(api->password_file = strdup(cfg->password_file))))
        r = al_error_set(err, ENOMEM, "out of memory");
    if (r == 0 && cfg->ca_file && *cfg->ca_file && !(api->ca_file = strdup(cfg->ca_file)))
        r = al_error_set(err, ENOMEM, "out of memory");
    if (r == 0 && cfg->fingerprint && *cfg->fingerprint) {
        if (pve_fingerprint_parse(cfg->fingerprint, api->pin) < 0)
            r = al_error_set(err, EINVAL,
                             "fingerprint must be the 32-byte SHA-256 as AA:BB:... (64 hex "
                             "digits), as Proxmox shows it");
        else if (pin_index < 0)
            r = al_error_set(err, EIO, "OpenSSL ex-data index unavailable");
        api->have_pin = true;
    }
    if (r == 0)
        r = pve_api_reload_credentials(api, err);
    if (r < 0) {
        api_free(api);
        return r;
    }
    uv_timer_init(loop, &api->timer);
    api->timer.data = api;
    *ret = api;
    return 0;
}

static void on_timer_closed(uv_handle_t *h)
{
    struct pve_api *api = h->data;
    void (*done)(void *) = api->close_done;
    void *data = api->close_data;
    api_free(api);
    if (done)
        done(data);
}

void pve_api_close(struct pve_api *api, void (*done)(void *data), void *data)
{
    if (!api) {
        if (done)
            done(data);
        return;
    }
    api->closing = true;
    api->close_done = done;
    api->close_data = data;
    while (!al_list_empty(&api->calls))
        pve_call_cancel(al_list_first_entry(&api->calls, struct pve_call, link));
    uv_timer_stop(&api->timer);
    uv_close((uv_handle_t *)&api->timer, on_timer_closed);
}
