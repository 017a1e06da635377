#include "runner/sources/github_auth.h"

#include <ctype.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "runner/base/base64.h"
#include "runner/base/buf.h"
#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/loop/http_client.h"
#include "runner/sources/github_payload.h"

#define KEY_MAX_BYTES   (16u << 10)
#define CALL_TIMEOUT_MS 30000L

struct github_auth {
    struct al_curl *curl;
    char *base;
    char *file_header; /* token-file auth: the whole header line */
    /* App auth */
    char *iss;
    EVP_PKEY *key;
    int64_t installation_id;
    char *lookup_path; /* /repos/{owner}/{repo}/installation or /orgs/{org}/installation */
    char *token;       /* registered with the redactor */
    char *token_header;
    int64_t token_expires; /* wall clock, seconds */
    char *jwt;             /* registered while a call uses it */
    struct al_http_call *call;
    void (*on_refreshed)(int result, const char *message, void *data);
    void *data;
};

/* Registers s with the redactor and hands it back, or wipes it. */
static char *secret_take(char *s)
{
    if (s && al_redact_add(s) < 0) {
        al_wipe_free(s);
        return NULL;
    }
    return s;
}

static void secret_drop(char **s)
{
    if (*s) {
        al_redact_remove(*s);
        al_wipe_free(*s);
        *s = NULL;
    }
}

int github_read_secret(const char *path, const char *what, size_t min, char **ret,
                       struct al_error **err)
{
    if (!path || !*path)
        return al_error_set(err, EINVAL, "no %s file configured", what);
    _cleanup_free_ char *data = NULL;
    size_t len = 0;
    char setting[64];
    snprintf(setting, sizeof(setting), "%s file", what);
    int r = al_read_secret_file(path, setting, 4096, &data, &len, err);
    if (r < 0)
        return r;
    size_t s = 0, e = len;
    while (s < e && isspace((unsigned char)data[s]))
        s++;
    while (e > s && isspace((unsigned char)data[e - 1]))
        e--;
    int ret_code = 0;
    for (size_t i = s; i < e && ret_code == 0; i++) {
        if ((unsigned char)data[i] <= ' ' || data[i] == 0x7f)
            ret_code = al_error_set(err, EINVAL, "%s file %s: expected one line without spaces",
                                    what, path);
    }
    if (ret_code == 0 && e - s < min)
        ret_code = al_error_set(err, EINVAL, "%s file %s: shorter than %zu bytes", what, path, min);
    char *v = ret_code == 0 ? strndup(data + s, e - s) : NULL;
    explicit_bzero(data, len);
    if (ret_code < 0)
        return ret_code;
    if (!v)
        return al_error_set(err, ENOMEM, "out of memory");
    *ret = v;
    return 0;
}

/* ---- JWT ------------------------------------------------------------------- */

static int b64url(struct al_buf *out, const void *data, size_t n)
{
    _cleanup_buf_ struct al_buf b = AL_BUF_INIT;
    int r = al_base64_encode(&b, data, n);
    if (r < 0)
        return r;
    for (size_t i = 0; i < b.len; i++) {
        char c = b.data[i];
        if (c == '=')
            break;
        c = c == '+' ? '-' : c == '/' ? '_' : c;
        if ((r = al_buf_append(out, &c, 1)) < 0)
            return r;
    }
    return 0;
}

static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf, (void)size, (void)rwflag, (void)u;
    return 0; /* an encrypted key fails instead of prompting */
}

static int load_key(const char *pem, size_t len, EVP_PKEY **ret, struct al_error **err)
{
    if (len > INT32_MAX)
        return al_error_set(err, E2BIG, "the private key is too large");
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    if (!bio)
        return al_error_set(err, ENOMEM, "out of memory");
    EVP_PKEY *key = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
    BIO_free(bio);
    if (!key)
        return al_error_set(err, EINVAL,
                            "not a PEM private key (or an encrypted one: GitHub's download "
                            "is not encrypted)");
    if (EVP_PKEY_base_id(key) != EVP_PKEY_RSA) {
        EVP_PKEY_free(key);
        return al_error_set(err, EINVAL, "not an RSA key (GitHub Apps sign with RS256)");
    }
    *ret = key;
    return 0;
}

static bool iss_is_valid(const char *s)
{
    size_t n = 0;
    for (const char *p = s; *p; p++, n++) {
        if (!isalnum((unsigned char)*p) && *p != '.' && *p != '_' && *p != '-')
            return false;
    }
    return n >= 1 && n <= 64;
}

static int sign_jwt(EVP_PKEY *key, const char *iss, int64_t now_s, char **ret,
                    struct al_error **err)
{
    static const char header[] = "{\"alg\":\"RS256\",\"typ\":\"JWT\"}";
    char claims[160];
    int n = snprintf(claims, sizeof(claims),
                     "{\"iat\":%" PRId64 ",\"exp\":%" PRId64 ",\"iss\":\"%s\"}", now_s - 60,
                     now_s + GITHUB_JWT_LIFETIME_S, iss);
    if (n < 0 || (size_t)n >= sizeof(claims))
        return al_error_set(err, EINVAL, "app_id is too long");
    _cleanup_buf_ struct al_buf out = AL_BUF_INIT;
    int r = b64url(&out, header, sizeof(header) - 1);
    r |= al_buf_puts(&out, ".");
    r |= b64url(&out, claims, (size_t)n);
    if (r)
        return al_error_set(err, ENOMEM, "out of memory");
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    size_t siglen = 0;
    unsigned char *sig = NULL;
    if (!ctx || EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, key) != 1 ||
        EVP_DigestSign(ctx, NULL, &siglen, (const unsigned char *)out.data, out.len) != 1 ||
        !(sig = malloc(siglen)) ||
        EVP_DigestSign(ctx, sig, &siglen, (const unsigned char *)out.data, out.len) != 1) {
        EVP_MD_CTX_free(ctx);
        free(sig);
        return al_error_set(err, EIO, "signing the App JWT failed");
    }
    EVP_MD_CTX_free(ctx);
    r = al_buf_puts(&out, ".");
    r |= b64url(&out, sig, siglen);
    free(sig);
    if (r)
        return al_error_set(err, ENOMEM, "out of memory");
    *ret = al_buf_steal(&out);
    return 0;
}

int github_app_jwt(const char *pem, size_t len, const char *iss, int64_t now_s, char **ret,
                   struct al_error **err)
{
    if (!iss_is_valid(iss))
        return al_error_set(err, EINVAL, "app_id: expected the App id or client id");
    EVP_PKEY *key = NULL;
    int r = load_key(pem, len, &key, err);
    if (r < 0)
        return r;
    r = sign_jwt(key, iss, now_s, ret, err);
    EVP_PKEY_free(key);
    return r;
}

/* ---- lifecycle --------------------------------------------------------------- */

static int read_key_file(const char *path, EVP_PKEY **ret, struct al_error **err)
{
    if (!path || !*path)
        return al_error_set(err, EINVAL, "app_id is set but app_key_file is not");
    _cleanup_free_ char *pem = NULL;
    size_t len = 0;
    int r = al_read_secret_file(path, "app_key_file", KEY_MAX_BYTES, &pem, &len, err);
    if (r < 0)
        return r;
    r = load_key(pem, len, ret, err);
    explicit_bzero(pem, len);
    if (r < 0)
        return al_error_wrap(err, "app_key_file %s", path);
    return 0;
}

int github_auth_new(const struct github_auth_params *p, struct github_auth **ret,
                    struct al_error **err)
{
    struct github_auth *a = calloc(1, sizeof(*a));
    if (!a)
        return al_error_set(err, ENOMEM, "out of memory");
    a->curl = p->curl;
    a->on_refreshed = p->on_refreshed;
    a->data = p->data;
    int r = 0;
    if (!(a->base = strdup(p->api_base)))
        r = al_error_set(err, ENOMEM, "out of memory");
    if (r == 0 && (!p->app_id || !*p->app_id)) {
        char *token = NULL;
        r = github_read_secret(p->token_file, "token", 8, &token, err);
        if (r == 0) {
            if (asprintf(&a->file_header, "Authorization: Bearer %s", token) < 0)
                a->file_header = NULL;
            al_wipe_free(token);
            if (!(a->file_header = secret_take(a->file_header)))
                r = al_error_set(err, ENOMEM, "out of memory");
        }
    } else if (r == 0) {
        if (!iss_is_valid(p->app_id))
            r = al_error_set(err, EINVAL, "app_id \"%s\": expected the App id or client id",
                             p->app_id);
        else if (!(a->iss = strdup(p->app_id)))
            r = al_error_set(err, ENOMEM, "out of memory");
        if (r == 0)
            r = read_key_file(p->app_key_file, &a->key, err);
        if (r == 0 && p->installation_id && *p->installation_id &&
            al_parse_int64(p->installation_id, 1, INT64_MAX, &a->installation_id) < 0)
            r = al_error_set(err, EINVAL, "installation_id \"%s\": expected a number",
                             p->installation_id);
        if (r == 0 && !a->installation_id) {
            int n = p->repo && *p->repo
                            ? asprintf(&a->lookup_path, "/repos/%s/installation", p->repo)
                            : asprintf(&a->lookup_path, "/orgs/%s/installation",
                                       p->org ? p->org : "");
            if (n < 0) {
                a->lookup_path = NULL;
                r = al_error_set(err, ENOMEM, "out of memory");
            }
        }
    }
    if (r < 0) {
        github_auth_free(a);
        return r;
    }
    *ret = a;
    return 0;
}

void github_auth_free(struct github_auth *a)
{
    if (!a)
        return;
    a->on_refreshed = NULL;
    if (a->call)
        al_http_cancel(a->call);
    secret_drop(&a->file_header);
    secret_drop(&a->token_header);
    secret_drop(&a->token);
    secret_drop(&a->jwt);
    EVP_PKEY_free(a->key);
    free(a->iss);
    free(a->base);
    free(a->lookup_path);
    free(a);
}

bool github_auth_is_app(const struct github_auth *a)
{
    return a->key != NULL;
}

const char *github_auth_header(struct github_auth *a)
{
    if (a->file_header)
        return a->file_header;
    if (!a->token_header)
        return NULL;
    int64_t now = al_now_wall_ms() / 1000;
    if (a->token_expires - now <= GITHUB_TOKEN_MARGIN_S)
        return NULL;
    return a->token_header;
}

void github_auth_invalidate(struct github_auth *a)
{
    secret_drop(&a->token_header);
    secret_drop(&a->token);
    a->token_expires = 0;
}

/* ---- fetching an installation token ----------------------------------------- */

static void refreshed(struct github_auth *a, int result, const char *fmt, ...) _printf_(3, 4);
static void refreshed(struct github_auth *a, int result, const char *fmt, ...)
{
    secret_drop(&a->jwt);
    char msg[400] = "";
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
    }
    if (a->on_refreshed)
        a->on_refreshed(result, msg, a->data);
}

static int app_call(struct github_auth *a, const char *method, const char *path, al_http_cb cb,
                    struct al_error **err)
{
    secret_drop(&a->jwt);
    char *jwt = NULL;
    int r = sign_jwt(a->key, a->iss, al_now_wall_ms() / 1000, &jwt, err);
    if (r < 0)
        return r;
    if (!(a->jwt = secret_take(jwt)))
        return al_error_set(err, ENOMEM, "out of memory");
    _cleanup_free_ char *url = NULL;
    char *auth = NULL;
    if (asprintf(&url, "%s%s", a->base, path) < 0)
        url = NULL;
    if (asprintf(&auth, "Authorization: Bearer %s", a->jwt) < 0)
        auth = NULL;
    if (!url || !auth) {
        al_wipe_free(auth);
        return al_error_set(err, ENOMEM, "out of memory");
    }
    const char *headers[] = {"Accept: application/vnd.github+json",
                             "X-GitHub-Api-Version: 2022-11-28", auth, NULL};
    struct al_http_request req = {
            .method = method,
            .url = url,
            .headers = headers,
            .max_response = 64u << 10,
            .timeout_ms = CALL_TIMEOUT_MS,
    };
    r = al_http_start(a->curl, &req, cb, a, &a->call, err);
    al_wipe_free(auth);
    return r;
}

static void describe(const struct al_http_response *resp, char *buf, size_t size)
{
    char m[200];
    github_error_message(resp->body.data, resp->body.len, m, sizeof(m));
    snprintf(buf, size, "HTTP %ld%s%s", resp->status, *m ? ": " : "", m);
}

static void on_token(int result, const struct al_http_response *resp, const struct al_error *err,
                     void *data)
{
    struct github_auth *a = data;
    a->call = NULL;
    if (result == -ECANCELED)
        return;
    if (result < 0) {
        refreshed(a, result, "fetching an installation token: %s", al_error_message(err));
        return;
    }
    if (resp->status != 201) {
        char what[300];
        describe(resp, what, sizeof(what));
        refreshed(a, resp->status == 401 || resp->status == 403 ? -EACCES : -EIO,
                  "fetching an installation token: %s", what);
        return;
    }
    char *token = NULL;
    int64_t expires = 0;
    struct al_error *perr = NULL;
    int r = github_parse_token(resp->body.data, resp->body.len, &token, &expires, &perr);
    /* the answer held the token: leave nothing in the freed buffer */
    explicit_bzero(resp->body.data, resp->body.len);
    if (r < 0) {
        refreshed(a, r, "the installation token answer: %s", al_error_message(perr));
        al_error_free(perr);
        return;
    }
    github_auth_invalidate(a);
    char *header = NULL;
    if (asprintf(&header, "Authorization: Bearer %s", token) < 0)
        header = NULL;
    a->token = secret_take(token);
    a->token_header = secret_take(header);
    if (!a->token || !a->token_header) {
        github_auth_invalidate(a);
        refreshed(a, -ENOMEM, "out of memory");
        return;
    }
    a->token_expires = expires;
    int64_t left = expires - al_now_wall_ms() / 1000;
    if (left <= GITHUB_TOKEN_MARGIN_S)
        log_warn(NULL,
                 "github: the installation token expires in %" PRId64
                 " s; is this host's clock right?",
                 left);
    refreshed(a, 0, NULL);
}

static void fetch_token(struct github_auth *a)
{
    char path[96];
    snprintf(path, sizeof(path), "/app/installations/%" PRId64 "/access_tokens",
             a->installation_id);
    struct al_error *err = NULL;
    if (app_call(a, "POST", path, on_token, &err) < 0) {
        refreshed(a, err ? -err->code : -EIO, "%s", al_error_message(err));
        al_error_free(err);
    }
}

static void on_installation(int result, const struct al_http_response *resp,
                            const struct al_error *err, void *data)
{
    struct github_auth *a = data;
    a->call = NULL;
    if (result == -ECANCELED)
        return;
    if (result < 0) {
        refreshed(a, result, "looking up the App installation: %s", al_error_message(err));
        return;
    }
    if (resp->status != 200) {
        char what[300];
        describe(resp, what, sizeof(what));
        refreshed(a, resp->status == 404 ? -ENOENT : -EIO,
                  "looking up the App installation (%s): %s%s", a->lookup_path, what,
                  resp->status == 404 ? " (is the App installed there?)" : "");
        return;
    }
    struct al_error *perr = NULL;
    int64_t id = 0;
    if (github_parse_installation(resp->body.data, resp->body.len, &id, &perr) < 0) {
        refreshed(a, -EINVAL, "the installation answer: %s", al_error_message(perr));
        al_error_free(perr);
        return;
    }
    a->installation_id = id;
    log_info(NULL, "github: App installation %" PRId64 " (set installation_id to skip the lookup)",
             id);
    fetch_token(a);
}

int github_auth_refresh(struct github_auth *a)
{
    if (!a->key)
        return -ENOTSUP;
    if (a->call)
        return -EALREADY;
    if (a->installation_id) {
        fetch_token(a);
        return 0;
    }
    struct al_error *err = NULL;
    if (app_call(a, "GET", a->lookup_path, on_installation, &err) < 0) {
        refreshed(a, err ? -err->code : -EIO, "%s", al_error_message(err));
        al_error_free(err);
    }
    return 0;
}
