/* Error objects (crun style).
 *
 * Functions return 0 on success or a negative errno-style code. When the
 * caller passes a non-NULL `struct al_error **err`, the human-readable detail
 * is stored there once, at the point of failure, and callers up the stack may
 * add context with al_error_wrap(). The caller owns *err and frees it with
 * al_error_free().
 */
#ifndef AL_ERROR_H
#define AL_ERROR_H

#include "runner/base/macro.h"

struct al_error {
    int code;      /* positive errno value; EIO when nothing better fits */
    char *message; /* full message, context first: "opening x: reading y: No such file" */
};

/* Records a new error unless one is already set. Returns -code (never 0). */
int al_error_set(struct al_error **err, int code, const char *fmt, ...) _printf_(3, 4);

/* Like al_error_set() and appends ": strerror(code)". */
int al_error_set_errno(struct al_error **err, int code, const char *fmt, ...) _printf_(3, 4);

/* Prefixes the existing message with context ("context: old message").
 * Returns -code of the existing error, or -EIO when none was set. */
int al_error_wrap(struct al_error **err, const char *fmt, ...) _printf_(2, 3);

/* Moves *src into *dst (when *dst is empty) and clears *src. Returns -code. */
int al_error_move(struct al_error **dst, struct al_error **src);

/* Frees an error; accepts NULL; returns NULL. */
struct al_error *al_error_free(struct al_error *e);

/* The message, or "unknown error" for NULL. Never NULL. */
const char *al_error_message(const struct al_error *e);

static inline void al_error_freep(struct al_error **e)
{
    *e = al_error_free(*e);
}
#define _cleanup_error_ _cleanup_(al_error_freep)

#endif
