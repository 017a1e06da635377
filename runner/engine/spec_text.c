#include "runner/engine/spec_text.h"

#include <string.h>
#include <yajl/yajl_parse.h>

#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/engine/spec.h"

/* No C0/C1 control characters and no DEL (input is valid UTF-8). */
bool spec_is_printable(const unsigned char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (s[i] < 0x20 || s[i] == 0x7f)
            return false;
        if (s[i] == 0xC2 && i + 1 < len && s[i + 1] >= 0x80 && s[i + 1] <= 0x9F)
            return false;
    }
    return true;
}

/* Object names (images, pools, labels): [A-Za-z0-9][A-Za-z0-9._-]{0,62},
 * like config_name_is_valid() but on a counted, unterminated string. */
bool spec_name_is_valid(const char *s, size_t len)
{
    if (len == 0 || len > AL_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        bool alnum = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
        if (!alnum && (i == 0 || (c != '.' && c != '_' && c != '-')))
            return false;
    }
    return true;
}

bool job_env_name_is_valid(const char *s)
{
    if (!s)
        return false;
    size_t len = strlen(s);
    if (len == 0 || len > JOB_SPEC_MAX_ENV_NAME)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        bool alpha = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
        if (!alpha && (i == 0 || c < '0' || c > '9'))
            return false;
    }
    return true;
}

/* A relative path without ".." components, or an absolute guest path. */
bool spec_artifact_path_is_valid(const char *s)
{
    if (!*s)
        return false;
    for (const char *p = s; *p;) {
        const char *slash = strchr(p, '/');
        size_t n = slash ? (size_t)(slash - p) : strlen(p);
        if (n == 2 && p[0] == '.' && p[1] == '.')
            return false;
        if (!slash)
            break;
        p = slash + 1;
    }
    return true;
}

/* Replaces every secret of doc, in place, by AL_REDACTED (shorter than any
 * secret); returns the new length. */
static size_t mask_doc_secrets(const struct spec_doc_secrets *doc, char *buf, size_t len)
{
    const size_t rlen = strlen(AL_REDACTED);
    for (size_t k = 0; doc && k < doc->n; k++) {
        size_t slen = strlen(doc->values[k]);
        char *at = buf;
        while ((at = memmem(at, len - (size_t)(at - buf), doc->values[k], slen))) {
            memcpy(at, AL_REDACTED, rlen);
            memmove(at + rlen, at + slen, len - (size_t)(at - buf) - slen);
            len -= slen - rlen;
            at += rlen;
        }
    }
    buf[len] = '\0';
    return len;
}

/* A copy of s[0..len) with every registered secret and every secret of doc
 * masked; NULL when out of memory. */
char *spec_mask_secrets(const struct spec_doc_secrets *doc, const char *s, size_t len,
                        size_t *ret_len)
{
    size_t n = 0;
    char *masked = al_redact(s, len, &n);
    if (!masked)
        return NULL;
    *ret_len = mask_doc_secrets(doc, masked, n);
    return masked;
}

/* Writes s as a quoted, escaped, possibly shortened string for messages,
 * secrets masked before it is shortened or escaped (either would hide a
 * secret from a later search). */
void spec_quote(const struct spec_doc_secrets *doc, char *buf, size_t size, const char *in,
                size_t in_len)
{
    const size_t shown = 40;
    size_t o = 0;
    if (size < 8)
        return;
    size_t len = 0;
    _cleanup_free_ char *s = spec_mask_secrets(doc, in, in_len, &len);
    if (!s) {
        snprintf(buf, size, "a string");
        return;
    }
    buf[o++] = '"';
    for (size_t i = 0; i < len && i < shown; i++) {
        unsigned char c = (unsigned char)s[i];
        if (o + 6 >= size)
            break;
        if (c == '"' || c == '\\') {
            buf[o++] = '\\';
            buf[o++] = (char)c;
        } else if (c < 0x20 || c >= 0x7f) {
            o += (size_t)snprintf(buf + o, size - o, "\\x%02x", c);
        } else {
            buf[o++] = (char)c;
        }
    }
    if (len > shown && o + 5 < size) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o++] = '"';
    buf[o] = '\0';
}

/* ---- collecting a failed document's secret values ---------------------- */

struct secret_scan {
    int depth;
    bool key_is_secret_env; /* the last key at the top was "secret_env" */
    bool in_secret_env;
    char **values;
    size_t n, cap;
    bool nomem;
};

static int scan_start_map(void *ctx)
{
    struct secret_scan *sc = ctx;
    sc->depth++;
    if (sc->depth == 2 && sc->key_is_secret_env)
        sc->in_secret_env = true;
    return 1;
}

static int scan_end(void *ctx)
{
    struct secret_scan *sc = ctx;
    if (sc->depth == 2)
        sc->in_secret_env = false;
    sc->depth--;
    return 1;
}

static int scan_start_array(void *ctx)
{
    struct secret_scan *sc = ctx;
    sc->depth++;
    return 1;
}

static int scan_map_key(void *ctx, const unsigned char *key, size_t len)
{
    struct secret_scan *sc = ctx;
    if (sc->depth == 1)
        sc->key_is_secret_env = len == strlen("secret_env") && memcmp(key, "secret_env", len) == 0;
    return 1;
}

static int scan_string(void *ctx, const unsigned char *s, size_t len)
{
    struct secret_scan *sc = ctx;
    /* shorter values are refused anyway, and masking them would mangle text */
    if (!sc->in_secret_env || sc->depth != 2 || len < AL_REDACT_MIN_LEN || memchr(s, '\0', len))
        return 1;
    if (sc->n + 1 >= sc->cap) {
        size_t cap = sc->cap ? sc->cap * 2 : 8;
        char **v = reallocarray(sc->values, cap, sizeof(*v));
        if (!v) {
            sc->nomem = true;
            return 0;
        }
        sc->values = v;
        sc->cap = cap;
    }
    if (!(sc->values[sc->n] = strndup((const char *)s, len))) {
        sc->nomem = true;
        return 0;
    }
    sc->values[++sc->n] = NULL;
    return 1;
}

static const yajl_callbacks scan_callbacks = {
        .yajl_string = scan_string,
        .yajl_start_map = scan_start_map,
        .yajl_map_key = scan_map_key,
        .yajl_end_map = scan_end,
        .yajl_start_array = scan_start_array,
        .yajl_end_array = scan_end,
};

static int by_length_desc(const void *a, const void *b)
{
    size_t la = strlen(*(char *const *)a), lb = strlen(*(char *const *)b);
    return la < lb ? 1 : la > lb ? -1 : 0;
}

void spec_doc_secrets_done(struct spec_doc_secrets *doc)
{
    for (size_t i = 0; i < doc->n; i++)
        explicit_bzero(doc->values[i], strlen(doc->values[i]));
    strv_free(doc->values);
    *doc = (struct spec_doc_secrets){0};
}

/* Every string value of the top-level secret_env object that the document
 * holds before its first syntax error, whatever else is wrong with it.
 * Returns 0 or -ENOMEM. */
int spec_doc_secrets_collect(const char *data, size_t len, struct spec_doc_secrets *ret_doc)
{
    /* most failed documents have no secrets: spare them a second parse
     * (a key may spell "secret_env" with \u escapes) */
    if (!memmem(data, len, "secret_env", strlen("secret_env")) && !memmem(data, len, "\\u", 2))
        return 0;
    struct secret_scan sc = {0};
    yajl_handle h = yajl_alloc(&scan_callbacks, NULL, &sc);
    if (!h)
        return -ENOMEM;
    yajl_config(h, yajl_dont_validate_strings, 1);
    if (yajl_parse(h, (const unsigned char *)data, len) == yajl_status_ok)
        (void)yajl_complete_parse(h);
    yajl_free(h);
    struct spec_doc_secrets doc = {.values = sc.values, .n = sc.n};
    if (sc.nomem) {
        spec_doc_secrets_done(&doc);
        return -ENOMEM;
    }
    if (doc.n > 1)
        qsort(doc.values, doc.n, sizeof(*doc.values), by_length_desc);
    *ret_doc = doc;
    return 0;
}
