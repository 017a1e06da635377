#include "runner/base/json_tree.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* How many open containers al_json_check_escapes() names in a path. */
#define ESCAPE_PATH_DEPTH 32

struct escape_frame {
    bool object;
    bool expect_key;       /* object: the next string is a key */
    const char *key;       /* object: raw bytes of the current key */
    size_t key_len, index; /* array: index of the current element */
};

static int hex4(const char *s, size_t avail, uint32_t *ret)
{
    uint32_t v = 0;
    if (avail < 4)
        return -EINVAL;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0)
            return -EINVAL;
        v = (v << 4) | (uint32_t)d;
    }
    *ret = v;
    return 0;
}

/* Appends a key to a path: plain names as ".name", others as ["..."] with
 * bytes outside printable ASCII shown as \xNN, at most 40 of them. */
static void path_append_key(char *buf, size_t size, const char *key, size_t len)
{
    size_t o = strlen(buf);
    bool plain = len > 0 && len <= 64;
    for (size_t i = 0; i < len && plain; i++) {
        char c = key[i];
        plain = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                c == '_' || c == '-';
    }
    if (plain) {
        snprintf(buf + o, size - o, "%s%.*s", o ? "." : "", (int)len, key);
        return;
    }
    snprintf(buf + o, size - o, "[\"");
    for (size_t i = 0; i < len && i < 40; i++) {
        unsigned char c = (unsigned char)key[i];
        o = strlen(buf);
        if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\')
            snprintf(buf + o, size - o, "\\x%02x", c);
        else
            snprintf(buf + o, size - o, "%c", c);
    }
    o = strlen(buf);
    snprintf(buf + o, size - o, "%s\"]", len > 40 ? "..." : "");
}

static int escape_fail(const struct escape_frame *stack, unsigned depth, bool in_key, uint32_t cp,
                       const char *what, struct al_error **err)
{
    char path[512] = "";
    if (depth > ESCAPE_PATH_DEPTH) {
        snprintf(path, sizeof(path), "(deep path)");
    } else {
        for (unsigned i = 0; i < depth; i++) {
            const struct escape_frame *f = &stack[i];
            size_t o = strlen(path);
            if (!f->object)
                snprintf(path + o, sizeof(path) - o, "[%zu]", f->index);
            else if (f->key && !(in_key && i == depth - 1))
                path_append_key(path, sizeof(path), f->key, f->key_len);
        }
    }
    return al_error_set(err, EINVAL,
                        "%s: %s a lone UTF-16 surrogate escape \\u%04x, which is not text",
                        path[0] ? path : what, in_key ? "a key has" : "has", (unsigned)cp);
}

int al_json_check_escapes(const char *data, size_t len, const char *what, struct al_error **err)
{
    struct escape_frame stack[ESCAPE_PATH_DEPTH] = {0};
    unsigned depth = 0;
    for (size_t i = 0; i < len; i++) {
        struct escape_frame *top = depth && depth <= ESCAPE_PATH_DEPTH ? &stack[depth - 1] : NULL;
        switch (data[i]) {
        case '{':
        case '[':
            if (depth < ESCAPE_PATH_DEPTH)
                stack[depth] = (struct escape_frame){.object = data[i] == '{',
                                                     .expect_key = data[i] == '{'};
            depth++;
            break;
        case '}':
        case ']':
            if (depth)
                depth--;
            break;
        case ',':
            if (top && top->object)
                top->expect_key = true;
            else if (top)
                top->index++;
            break;
        case '"': {
            size_t start = ++i;
            bool in_key = top && top->object && top->expect_key;
            for (; i < len && data[i] != '"'; i++) {
                if (data[i] != '\\')
                    continue;
                if (++i >= len || data[i] != 'u')
                    continue;
                uint32_t cp, low;
                if (hex4(data + i + 1, len - i - 1, &cp) < 0)
                    continue;
                i += 4;
                if (cp < 0xD800 || cp > 0xDFFF)
                    continue;
                /* a high half must be followed right away by a low half */
                if (cp <= 0xDBFF && len - i > 2 && data[i + 1] == '\\' && data[i + 2] == 'u' &&
                    hex4(data + i + 3, len - i - 3, &low) == 0 && low >= 0xDC00 && low <= 0xDFFF) {
                    i += 6;
                    continue;
                }
                return escape_fail(stack, depth, in_key, cp, what, err);
            }
            if (in_key) {
                top->key = data + start;
                top->key_len = i - start;
                top->expect_key = false;
            }
            break;
        }
        default:
            break;
        }
    }
    return 0;
}

int al_json_prescan(const char *data, size_t len, unsigned max_depth, size_t max_values,
                    const char *what, struct al_error **err)
{
    unsigned depth = 0;
    size_t values = 0;
    bool in_string = false;
    for (size_t i = 0; i < len; i++) {
        char c = data[i];
        if (in_string) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_string = false;
            continue;
        }
        switch (c) {
        case '"':
            in_string = true;
            values++;
            break;
        case '[':
        case '{':
            if (++depth > max_depth)
                return al_error_set(err, EINVAL, "%s nests deeper than %u levels", what, max_depth);
            values++;
            break;
        case ']':
        case '}':
            if (depth)
                depth--;
            break;
        case ',':
            values++;
            break;
        default:
            break;
        }
        if (values > max_values)
            return al_error_set(err, EINVAL, "%s has more than %zu values", what, max_values);
    }
    return al_json_check_escapes(data, len, what, err);
}

const char *al_json_type_name(yajl_val v)
{
    if (!v)
        return "nothing";
    if (YAJL_IS_STRING(v))
        return "a string";
    if (YAJL_IS_INTEGER(v))
        return "an integer";
    if (YAJL_IS_NUMBER(v))
        return "a number";
    if (YAJL_IS_OBJECT(v))
        return "an object";
    if (YAJL_IS_ARRAY(v))
        return "an array";
    if (YAJL_IS_TRUE(v) || YAJL_IS_FALSE(v))
        return "a boolean";
    return "null";
}

int al_json_fail(struct al_error **err, const char *path, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return al_error_set(err, EINVAL, "%s%s%s", path, *path ? ": " : "", msg);
}

const char *al_json_path(char *buf, size_t size, const char *path, const char *key, size_t idx)
{
    int n;
    if (key)
        n = snprintf(buf, size, "%s%s%s", path, *path ? "." : "", key);
    else
        n = snprintf(buf, size, "%s[%zu]", path, idx);
    if (n < 0 || (size_t)n >= size)
        snprintf(buf, size, "%s", "(deep path)");
    return buf;
}

int al_json_member(yajl_val obj, const char *key, const char *path, yajl_val *ret,
                   struct al_error **err)
{
    yajl_val found = NULL;
    bool seen = false;
    for (size_t i = 0; i < obj->u.object.len; i++) {
        if (!streq(obj->u.object.keys[i], key))
            continue;
        if (seen) {
            char p[256];
            return al_json_fail(err, al_json_path(p, sizeof(p), path, key, 0),
                                "given more than once");
        }
        seen = true;
        found = obj->u.object.values[i];
    }
    *ret = found && !YAJL_IS_NULL(found) ? found : NULL;
    return 0;
}

int al_json_parse(const char *data, size_t len, size_t max_bytes, unsigned max_depth,
                  size_t max_values, const char *what, yajl_val *ret, struct al_error **err)
{
    if (len > max_bytes)
        return al_error_set(err, E2BIG, "%s is larger than %zu bytes", what, max_bytes);
    if (memchr(data, '\0', len))
        return al_error_set(err, EINVAL, "%s contains a NUL byte", what);
    int r = al_json_prescan(data, len, max_depth, max_values, what, err);
    if (r < 0)
        return r;
    /* yajl_tree_parse wants a C string */
    char *text = strndup(data, len);
    if (!text)
        return al_error_set(err, ENOMEM, "out of memory");
    char ebuf[256] = "";
    yajl_val root = yajl_tree_parse(text, ebuf, sizeof(ebuf));
    explicit_bzero(text, len);
    free(text);
    if (!root) {
        /* yajl's message quotes the input around the error: keep only its
         * first line, which names the problem without the bytes */
        ebuf[strcspn(ebuf, "\n")] = '\0';
        return al_error_set(err, EINVAL, "%s is not valid JSON: %s", what,
                            ebuf[0] ? ebuf : "parse error");
    }
    *ret = root;
    return 0;
}

/* The member key of obj with its path into p: *ret NULL when absent or
 * null (an error when required), else a value that is_type accepts (an
 * error naming expected otherwise). */
static int member(yajl_val obj, const char *key, const char *path, bool required,
                  bool (*is_type)(yajl_val v), const char *expected, char *p, size_t size,
                  yajl_val *ret, struct al_error **err)
{
    int r = al_json_member(obj, key, path, ret, err);
    if (r < 0)
        return r;
    al_json_path(p, size, path, key, 0);
    if (!*ret)
        return required ? al_json_fail(err, p, "missing") : 0;
    if (!is_type(*ret))
        return al_json_fail(err, p, "expected %s, got %s", expected, al_json_type_name(*ret));
    return 0;
}

static bool is_integer(yajl_val v)
{
    return YAJL_IS_INTEGER(v);
}

static bool is_bool(yajl_val v)
{
    return YAJL_IS_TRUE(v) || YAJL_IS_FALSE(v);
}

static bool is_object(yajl_val v)
{
    return YAJL_IS_OBJECT(v);
}

static bool is_array(yajl_val v)
{
    return YAJL_IS_ARRAY(v);
}

static bool is_string(yajl_val v)
{
    return YAJL_IS_STRING(v);
}

int al_json_get_int(yajl_val obj, const char *key, const char *path, int64_t min, int64_t max,
                    bool required, int64_t *ret, struct al_error **err)
{
    char p[256];
    yajl_val v = NULL;
    int r = member(obj, key, path, required, is_integer, "an integer", p, sizeof(p), &v, err);
    if (r < 0 || !v)
        return r;
    long long x = YAJL_GET_INTEGER(v);
    if (x < min || x > max)
        return al_json_fail(err, p, "expected an integer from %lld to %lld", (long long)min,
                            (long long)max);
    *ret = x;
    return 0;
}

int al_json_get_bool(yajl_val obj, const char *key, const char *path, bool required, bool *ret,
                     struct al_error **err)
{
    char p[256];
    yajl_val v = NULL;
    int r = member(obj, key, path, required, is_bool, "true or false", p, sizeof(p), &v, err);
    if (r == 0 && v)
        *ret = YAJL_IS_TRUE(v);
    return r;
}

int al_json_get_object(yajl_val obj, const char *key, const char *path, bool required,
                       yajl_val *ret, struct al_error **err)
{
    char p[256];
    yajl_val v = NULL;
    int r = member(obj, key, path, required, is_object, "an object", p, sizeof(p), &v, err);
    if (r == 0 && v)
        *ret = v;
    return r;
}

int al_json_get_array(yajl_val obj, const char *key, const char *path, size_t max, bool required,
                      yajl_val *ret, struct al_error **err)
{
    char p[256];
    yajl_val v = NULL;
    int r = member(obj, key, path, required, is_array, "an array", p, sizeof(p), &v, err);
    if (r < 0 || !v)
        return r;
    if (v->u.array.len > max)
        return al_json_fail(err, p, "more than %zu entries", max);
    *ret = v;
    return 0;
}

/* The checks of a string value common to al_json_get_string() and the
 * elements of al_json_get_strv(). */
static int check_text(yajl_val v, const char *p, size_t max, bool nonempty,
                      al_json_text_check check, struct al_error **err)
{
    if (!is_string(v))
        return al_json_fail(err, p, "expected a string, got %s", al_json_type_name(v));
    size_t n = strlen(v->u.string);
    if (n > max)
        return al_json_fail(err, p, "longer than %zu bytes", max);
    if (nonempty && n == 0)
        return al_json_fail(err, p, "empty");
    const char *wrong = check ? check(v->u.string) : NULL;
    if (wrong)
        return al_json_fail(err, p, "%s", wrong);
    return 0;
}

int al_json_get_string(yajl_val obj, const char *key, const char *path, size_t max, bool required,
                       al_json_text_check check, char **ret, struct al_error **err)
{
    char p[256];
    yajl_val v = NULL;
    int r = member(obj, key, path, required, is_string, "a string", p, sizeof(p), &v, err);
    if (r < 0 || !v)
        return r;
    if ((r = check_text(v, p, max, required, check, err)) < 0)
        return r;
    char *copy = strdup(v->u.string);
    if (!copy)
        return al_error_set(err, ENOMEM, "out of memory");
    free(*ret);
    *ret = copy;
    return 0;
}

int al_json_get_strv(yajl_val obj, const char *key, const char *path, size_t max_n, size_t max_len,
                     bool required, al_json_text_check check, char ***ret, size_t *ret_n,
                     struct al_error **err)
{
    yajl_val arr = NULL;
    int r = al_json_get_array(obj, key, path, max_n, required, &arr, err);
    if (r < 0 || !arr)
        return r;
    size_t n = arr->u.array.len;
    _cleanup_strv_ char **v = calloc(n + 1, sizeof(char *));
    if (!v)
        return al_error_set(err, ENOMEM, "out of memory");
    char base[256], p[256];
    al_json_path(base, sizeof(base), path, key, 0);
    for (size_t i = 0; i < n; i++) {
        yajl_val s = arr->u.array.values[i];
        al_json_path(p, sizeof(p), base, NULL, i);
        if ((r = check_text(s, p, max_len, false, check, err)) < 0)
            return r;
        if (!(v[i] = strdup(s->u.string)))
            return al_error_set(err, ENOMEM, "out of memory");
    }
    strv_free(*ret);
    *ret = TAKE_PTR(v);
    *ret_n = n;
    return 0;
}

int al_json_element_object(yajl_val arr, size_t idx, const char *path, char *buf, size_t size,
                           yajl_val *ret, struct al_error **err)
{
    yajl_val v = arr->u.array.values[idx];
    al_json_path(buf, size, path, NULL, idx);
    if (!YAJL_IS_OBJECT(v))
        return al_json_fail(err, buf, "expected an object, got %s", al_json_type_name(v));
    *ret = v;
    return 0;
}

static const char *check_printable(const char *s, bool allow_space)
{
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if (*c < 0x20 || *c == 0x7f)
            return allow_space ? "contains control characters"
                               : "contains spaces or control characters";
        if (*c == ' ' && !allow_space)
            return "contains spaces or control characters";
    }
    return NULL;
}

const char *al_json_check_line(const char *s)
{
    return check_printable(s, true);
}

const char *al_json_check_word(const char *s)
{
    return check_printable(s, false);
}
