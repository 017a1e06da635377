#include "json_tree.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>

#include <string.h>

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
    return 0;
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
