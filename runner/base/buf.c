#include "runner/base/buf.h"

#include <stdarg.h>
#include <string.h>

static int reserve(struct al_buf *b, size_t extra)
{
    if (extra > (size_t)-1 - b->len - 1)
        return -ENOMEM;
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap = cap > (size_t)-1 / 2 ? need : cap * 2;
    char *d = realloc(b->data, cap);
    if (!d)
        return -ENOMEM;
    b->data = d;
    b->cap = cap;
    return 0;
}

int al_buf_append(struct al_buf *b, const void *data, size_t n)
{
    if (b->limit && (n > b->limit || b->len > b->limit - n))
        return -E2BIG;
    int r = reserve(b, n);
    if (r < 0)
        return r;
    if (n)
        memcpy(b->data + b->len, data, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int al_buf_puts(struct al_buf *b, const char *s)
{
    return al_buf_append(b, s, strlen(s));
}

int al_buf_printf(struct al_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return -EINVAL;
    if (b->limit && ((size_t)n > b->limit || b->len > b->limit - (size_t)n))
        return -E2BIG;
    int r = reserve(b, (size_t)n);
    if (r < 0)
        return r;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void al_buf_consume(struct al_buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
    } else {
        memmove(b->data, b->data + n, b->len - n);
        b->len -= n;
    }
    if (b->data)
        b->data[b->len] = '\0';
}

void al_buf_reset(struct al_buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

char *al_buf_steal(struct al_buf *b)
{
    if (!b->data && reserve(b, 0) < 0)
        return NULL;
    b->data[b->len] = '\0';
    char *d = b->data;
    b->data = NULL;
    b->len = b->cap = 0;
    return d;
}

void al_buf_free(struct al_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

int al_str_replace_all(char **s, const char *from, const char *to)
{
    if (!*from)
        return 0;
    _cleanup_buf_ struct al_buf b = AL_BUF_INIT;
    const char *p = *s, *q;
    size_t flen = strlen(from);
    int r = 0;
    while (r == 0 && (q = strstr(p, from))) {
        r = al_buf_append(&b, p, (size_t)(q - p));
        if (r == 0)
            r = al_buf_puts(&b, to);
        p = q + flen;
    }
    if (r == 0)
        r = al_buf_puts(&b, p);
    char *out = r == 0 ? al_buf_steal(&b) : NULL;
    if (!out)
        return -ENOMEM;
    free(*s);
    *s = out;
    return 0;
}
