/* Daemon logging and secret redaction.
 *
 * One line per event on stderr. When stderr is connected to journald
 * (JOURNAL_STREAM set) lines carry a "<N>" syslog priority prefix and no
 * timestamp; otherwise an ISO-8601 UTC timestamp and the level.
 *
 * Every line passes through the redactor: a secret registered with
 * al_redact_add() is replaced by "***" wherever it appears, and so is the
 * rest of any token that starts with a prefix registered with
 * al_redact_add_prefix() ("glpat-abc" shows as "glpat-***"). Registration
 * is reference-counted and thread-safe.
 */
#ifndef AL_LOG_H
#define AL_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

#include "runner/base/macro.h"

enum al_log_level {
    AL_LOG_ERROR = 0,
    AL_LOG_WARN,
    AL_LOG_INFO,
    AL_LOG_DEBUG,
};

#define AL_REDACTED "***"

void al_log_set_level(enum al_log_level level);
enum al_log_level al_log_get_level(void);

/* Parses "error|warn|info|debug"; returns 0 or -EINVAL. */
int al_log_level_from_string(const char *s, enum al_log_level *ret_level);
const char *al_log_level_to_string(enum al_log_level level);

/* Sends log lines to fd instead of stderr (tests); -1 restores stderr. */
void al_log_set_fd(int fd);

/* Logs one line. job_id may be NULL. Newlines in the message are escaped so
 * one event stays one line. */
void al_log(enum al_log_level level, const char *job_id, const char *fmt, ...) _printf_(3, 4);

#define log_error(job, ...) al_log(AL_LOG_ERROR, (job), __VA_ARGS__)
#define log_warn(job, ...)  al_log(AL_LOG_WARN, (job), __VA_ARGS__)
#define log_info(job, ...)  al_log(AL_LOG_INFO, (job), __VA_ARGS__)
#define log_debug(job, ...)                           \
    do {                                              \
        if (al_log_get_level() >= AL_LOG_DEBUG)       \
            al_log(AL_LOG_DEBUG, (job), __VA_ARGS__); \
    } while (0)

/* Registers a secret value (copied). Values shorter than AL_REDACT_MIN_LEN
 * are refused with -EINVAL because masking them would mangle ordinary text;
 * callers must reject such secrets at the input edge. */
#define AL_REDACT_MIN_LEN 4
int al_redact_add(const char *secret);

/* Drops one registration of the secret. Unknown values are ignored. */
void al_redact_remove(const char *secret);

/* Token prefixes (GitLab's `features.token_mask_prefixes`, `glpat-`, ...).
 * As gitlab-runner's token sanitizer does, a prefix followed by at least
 * one token character ([A-Za-z0-9._=-]) anywhere in a text, also inside a
 * word, has those characters replaced by AL_REDACTED up to the first other
 * byte; the prefix itself stays. A prefix is 3 to 64 printable ASCII
 * characters without spaces; at most AL_REDACT_MAX_PREFIXES distinct
 * prefixes are registered at a time. */
#define AL_REDACT_PREFIX_MIN_LEN 3
#define AL_REDACT_PREFIX_MAX_LEN 64
#define AL_REDACT_MAX_PREFIXES   64
/* A stream holds back at most this much of an unfinished token; a longer
 * one is masked at once and the rest of it dropped as it arrives. */
#define AL_REDACT_TOKEN_HOLD_MAX 4096

bool al_redact_prefix_is_valid(const char *prefix);

/* Registers a token prefix (copied). -EINVAL when it is not valid, -ENOSPC
 * when AL_REDACT_MAX_PREFIXES others are registered, -ENOMEM. */
int al_redact_add_prefix(const char *prefix);

/* Drops one registration of the prefix. Unknown values are ignored. */
void al_redact_remove_prefix(const char *prefix);

/* Forgets every registered secret and prefix (tests, shutdown). */
void al_redact_clear(void);

/* Returns a newly allocated copy of text[0..len) with every registered
 * secret and prefixed token masked, and its length in *ret_len (may be
 * NULL). NULL on allocation failure. */
char *al_redact(const char *text, size_t len, size_t *ret_len);

/* al_redact() of a message formatted from fmt and ap (cut at 1 KiB). */
char *al_redact_vformat(size_t *ret_len, const char *fmt, va_list ap) _printf_(2, 0);

/* True when text[0..len) contains a registered secret or a token after a
 * registered prefix. */
bool al_redact_contains(const char *text, size_t len);

/* Redaction of a byte stream that arrives in chunks (job output): a secret
 * or a prefixed token split across two chunks is still caught. Bytes that
 * could be the start of a secret, a prefix or an unfinished token are held
 * back until the next chunk (or the flush) decides. */
struct al_redact_stream {
    char *held;
    size_t held_len;
    bool in_token; /* inside a token too long to hold, already masked */
};

struct al_buf;

/* Appends the redacted output that is certain so far to out. */
int al_redact_stream_feed(struct al_redact_stream *s, const void *data, size_t len,
                          struct al_buf *out);

/* Appends whatever is still held (redacted) and resets the stream. */
int al_redact_stream_flush(struct al_redact_stream *s, struct al_buf *out);

void al_redact_stream_free(struct al_redact_stream *s);

#endif
