#include "runner/base/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static char *vformat(const char *fmt, va_list ap) _printf_(1, 0);

static char *vformat(const char *fmt, va_list ap)
{
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0)
        return NULL;
    return s;
}

static int store(struct al_error **err, int code, char *msg)
{
    if (code <= 0)
        code = EIO;
    if (!err || *err) {
        free(msg);
        return -code;
    }
    struct al_error *e = calloc(1, sizeof(*e));
    if (!e) {
        free(msg);
        return -code;
    }
    e->code = code;
    e->message = msg ? msg : strdup("out of memory while formatting an error");
    *err = e;
    return -code;
}

int al_error_set(struct al_error **err, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = vformat(fmt, ap);
    va_end(ap);
    return store(err, code, msg);
}

int al_error_set_errno(struct al_error **err, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    _cleanup_free_ char *head = vformat(fmt, ap);
    va_end(ap);
    char *msg = NULL;
    if (asprintf(&msg, "%s: %s", head ? head : "?", strerror(code > 0 ? code : EIO)) < 0)
        msg = NULL;
    return store(err, code, msg);
}

int al_error_wrap(struct al_error **err, const char *fmt, ...)
{
    if (!err || !*err)
        return -EIO;
    va_list ap;
    va_start(ap, fmt);
    _cleanup_free_ char *ctx = vformat(fmt, ap);
    va_end(ap);
    char *msg = NULL;
    if (ctx && asprintf(&msg, "%s: %s", ctx, (*err)->message) >= 0) {
        free((*err)->message);
        (*err)->message = msg;
    }
    return -(*err)->code;
}

int al_error_move(struct al_error **dst, struct al_error **src)
{
    if (!src || !*src)
        return -EIO;
    int code = (*src)->code;
    if (dst && !*dst)
        *dst = TAKE_PTR(*src);
    else
        *src = al_error_free(*src);
    return -code;
}

struct al_error *al_error_free(struct al_error *e)
{
    if (e) {
        free(e->message);
        free(e);
    }
    return NULL;
}

const char *al_error_message(const struct al_error *e)
{
    return e && e->message ? e->message : "unknown error";
}
