/* Ownership and cleanup helpers (the systemd/crun idiom).
 *
 * Locals that own memory are declared with a cleanup attribute so every
 * return path frees them; ownership is handed out with TAKE_PTR/TAKE_FD.
 */
#ifndef AL_MACRO_H
#define AL_MACRO_H

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define _cleanup_(f)         __attribute__((cleanup(f)))
#define _unused_             __attribute__((unused))
#define _printf_(a, b)       __attribute__((format(printf, a, b)))
#define _warn_unused_result_ __attribute__((warn_unused_result))

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#ifndef container_of
#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))
#endif

/* Returns the pointer and clears the variable that held it. */
#define TAKE_PTR(p)                    \
    ({                                 \
        __typeof__(p) _take_tmp = (p); \
        (p) = NULL;                    \
        _take_tmp;                     \
    })

#define TAKE_FD(fd)          \
    ({                       \
        int _take_fd = (fd); \
        (fd) = -1;           \
        _take_fd;            \
    })

static inline void freep(void *p)
{
    free(*(void **)p);
}

static inline void closep(int *fd)
{
    if (*fd >= 0) {
        int saved = errno;
        close(*fd);
        errno = saved;
    }
}

static inline void fclosep(FILE **f)
{
    if (*f)
        fclose(*f);
}

/* Frees a NULL-terminated array of strings. */
static inline void strv_free(char **v)
{
    if (!v)
        return;
    for (char **s = v; *s; s++)
        free(*s);
    free(v);
}

static inline void strv_freep(char ***v)
{
    strv_free(*v);
}

#define _cleanup_free_   _cleanup_(freep)
#define _cleanup_close_  _cleanup_(closep)
#define _cleanup_fclose_ _cleanup_(fclosep)
#define _cleanup_strv_   _cleanup_(strv_freep)

/* Declares NAME##p(type **) calling func(*p) when *p is set. */
#define DEFINE_CLEANUP_FUNC(type, func)  \
    static inline void func##p(type **p) \
    {                                    \
        if (*p)                          \
            func(*p);                    \
    }

#define streq(a, b) (strcmp((a), (b)) == 0)

#endif
