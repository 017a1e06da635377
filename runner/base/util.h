/* Small checked helpers: number parsing, files, paths, time, randomness. */
#ifndef AL_UTIL_H
#define AL_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "runner/base/error.h"

/* Parses a whole decimal integer in [min, max]. Leading/trailing junk,
 * empty strings and overflow give -EINVAL/-ERANGE. */
int al_parse_int64(const char *s, int64_t min, int64_t max, int64_t *ret);
int al_parse_int(const char *s, int min, int max, int *ret);
int al_parse_uint64(const char *s, uint64_t max, uint64_t *ret);

/* Splits a listen address "HOST:PORT" or "[IPV6]:PORT" (port 0 to 65535)
 * into host (a buffer of host_size bytes) and *ret_port. what names the
 * setting in messages ("api_listen"). Returns 0 or -EINVAL. */
int al_parse_host_port(const char *s, const char *what, char *host, size_t host_size, int *ret_port,
                       struct al_error **err);

/* "yes/no/true/false/on/off/1/0" */
int al_parse_bool(const char *s, bool *ret);

/* Durations: "90", "90s", "15m", "2h", "7d" -> seconds. */
int al_parse_duration(const char *s, int64_t *ret_seconds);

/* Sizes: "512", "64K", "10M", "2G", "1T" (binary units) -> bytes. */
int al_parse_size(const char *s, uint64_t *ret_bytes);

/* Opens, creating each with mode 0755 when missing, the directories named
 * by the first n bytes of the relative path below the directory dfd, one
 * component at a time and without following symlinks (ELOOP or ENOTDIR for
 * one). "." and empty components are skipped. budget (may be NULL: no
 * limit) is how many directories it may create, decremented for each one
 * created; -EDQUOT when one more would be needed. Returns the last
 * directory's fd (O_CLOEXEC; dfd duplicated when there is none) or -errno. */
int al_open_dirs_nofollow(int dfd, const char *path, size_t n, uint64_t *budget);

/* Reads a whole file, at most max bytes (else -EFBIG). Adds a NUL. */
int al_read_file(const char *path, size_t max, char **ret_data, size_t *ret_len,
                 struct al_error **err);

/* Reads a file that holds a secret (a token, a password, a key) like
 * al_read_file(), wiping every buffer that held it, after refusing a file
 * that everyone may read ("WHAT PATH is readable by everyone; chmod o-r it
 * first", -EPERM; checked on the opened file). what names the setting in
 * messages ("api_token_file"); they never contain the contents. Every
 * reader of a secret file goes through here, so all are held to the same
 * rule. */
int al_read_secret_file(const char *path, const char *what, size_t max, char **ret_data,
                        size_t *ret_len, struct al_error **err);

/* Writes data to path atomically (temp file in the same dir, fsync, rename)
 * with the given mode. */
int al_write_file_atomic(const char *path, const void *data, size_t len, mode_t mode,
                         struct al_error **err);

/* mkdir -p with mode for each created component. */
int al_mkdir_p(const char *path, mode_t mode, struct al_error **err);

/* rm -rf without following symlinks and without crossing mount points.
 * A missing path is not an error. */
int al_rm_rf(const char *path, struct al_error **err);

/* Joins two path parts with one '/'. Returns NULL on ENOMEM. */
char *al_path_join(const char *a, const char *b);

/* The first executable name in $PATH (or a default path when it is unset),
 * or NULL. The caller frees it. */
char *al_find_in_path(const char *name);

/* Overwrites a secret string with zeros, then frees it. Accepts NULL. */
void al_wipe_free(char *s);

/* ms plus up to a quarter more, at random: retries of many clients spread. */
uint64_t al_jitter_ms(uint64_t ms);

/* Monotonic clock in milliseconds / microseconds; wall clock in ms since the epoch. */
uint64_t al_now_mono_ms(void);
uint64_t al_now_mono_us(void);
int64_t al_now_wall_ms(void);

/* Formats ms since the epoch as "2026-11-29T07:00:00.123Z" into buf (>= 25 bytes). */
void al_format_time_ms(int64_t ms, char *buf, size_t size);

/* Fills buf with n bytes from getrandom(). */
int al_random_bytes(void *buf, size_t n);

/* Lowercase hex of n random bytes into a new string (2n chars). */
char *al_random_hex(size_t n);

/* A random version 4 UUID in its text form (36 chars), a new string. */
char *al_random_uuid(void);

/* Constant-time comparison of two byte strings; lengths are not secret. */
bool al_consttime_equal(const void *a, size_t alen, const void *b, size_t blen);

/* Sets O_CLOEXEC/O_NONBLOCK on an fd. */
int al_fd_set_nonblock(int fd, bool on);

/* A program's answer to -h/--help (usage on stdout, status 0) or to an
 * option it does not take (usage on stderr, status 2): returns the status. */
int al_usage_exit(void (*usage)(FILE *out), bool help);

/* The first error wins: formats into *dst unless *dst already holds a
 * message (parsers that report only their first problem). Returns true when
 * it formatted; *dst stays NULL when memory runs out. */
bool al_first_vformat(char **dst, const char *fmt, va_list ap) _printf_(2, 0);

/* The longest object name (backends, pools, sources, images, job ids). */
#define AL_NAME_MAX 63

/* True when s is a valid object name: [A-Za-z0-9][A-Za-z0-9._-]{0,62}. */
bool al_name_is_valid(const char *s);

#endif
