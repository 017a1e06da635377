/* A growable byte buffer with an optional hard size limit.
 * The contents are always NUL-terminated (the NUL is not counted in len). */
#ifndef AL_BUF_H
#define AL_BUF_H

#include <stdbool.h>
#include <stddef.h>

#include "runner/base/macro.h"

struct al_buf {
    char *data;
    size_t len;
    size_t cap;
    size_t limit; /* 0 = unlimited; appends past it fail with -E2BIG */
};

#define AL_BUF_INIT \
    {               \
        0           \
    }

/* Appends n bytes. Returns 0, -ENOMEM or -E2BIG (nothing appended). */
int al_buf_append(struct al_buf *b, const void *data, size_t n);
int al_buf_puts(struct al_buf *b, const char *s);
int al_buf_printf(struct al_buf *b, const char *fmt, ...) _printf_(2, 3);
/* Drops the first n bytes. */
void al_buf_consume(struct al_buf *b, size_t n);
void al_buf_reset(struct al_buf *b);
/* Hands out the data (caller frees) and resets the buffer. Never NULL on success. */
char *al_buf_steal(struct al_buf *b);
void al_buf_free(struct al_buf *b);

/* Replaces every occurrence of from (not empty) in the string *s by to: 0,
 * or -ENOMEM with *s unchanged. */
int al_str_replace_all(char **s, const char *from, const char *to);

static inline void al_buf_freep(struct al_buf *b)
{
    al_buf_free(b);
}
#define _cleanup_buf_ _cleanup_(al_buf_freep)

#endif
