#include "runner/base/log.h"

#include "runner/base/buf.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static enum al_log_level current_level = AL_LOG_INFO;
static int log_fd = -1;

struct secret {
    char *value;
    size_t len;
    unsigned refs;
};

/* A token prefix: the token characters after it are masked. */
struct prefix {
    char *value;
    size_t len;
    unsigned refs;
};

static pthread_mutex_t redact_lock = PTHREAD_MUTEX_INITIALIZER;
static struct secret *secrets;
static size_t n_secrets;
static struct prefix prefixes[AL_REDACT_MAX_PREFIXES];
static size_t n_prefixes;

static const char *const level_names[] = {
        [AL_LOG_ERROR] = "error",
        [AL_LOG_WARN] = "warn",
        [AL_LOG_INFO] = "info",
        [AL_LOG_DEBUG] = "debug",
};

/* syslog priorities for journald's "<N>" prefix */
static const int level_prio[] = {
        [AL_LOG_ERROR] = 3,
        [AL_LOG_WARN] = 4,
        [AL_LOG_INFO] = 6,
        [AL_LOG_DEBUG] = 7,
};

void al_log_set_level(enum al_log_level level)
{
    current_level = level;
}

enum al_log_level al_log_get_level(void)
{
    return current_level;
}

int al_log_level_from_string(const char *s, enum al_log_level *ret_level)
{
    for (size_t i = 0; i < ARRAY_SIZE(level_names); i++) {
        if (s && streq(s, level_names[i])) {
            *ret_level = (enum al_log_level)i;
            return 0;
        }
    }
    return -EINVAL;
}

const char *al_log_level_to_string(enum al_log_level level)
{
    if ((size_t)level >= ARRAY_SIZE(level_names))
        return "?";
    return level_names[level];
}

void al_log_set_fd(int fd)
{
    log_fd = fd;
}

int al_redact_add(const char *secret)
{
    if (!secret || strlen(secret) < AL_REDACT_MIN_LEN)
        return -EINVAL;
    int r = 0;
    pthread_mutex_lock(&redact_lock);
    for (size_t i = 0; i < n_secrets; i++) {
        if (streq(secrets[i].value, secret)) {
            secrets[i].refs++;
            goto out;
        }
    }
    struct secret *grown = realloc(secrets, (n_secrets + 1) * sizeof(*secrets));
    if (!grown) {
        r = -ENOMEM;
        goto out;
    }
    secrets = grown;
    char *copy = strdup(secret);
    if (!copy) {
        r = -ENOMEM;
        goto out;
    }
    secrets[n_secrets++] = (struct secret){.value = copy, .len = strlen(copy), .refs = 1};
out:
    pthread_mutex_unlock(&redact_lock);
    return r;
}

static void secret_wipe(struct secret *s)
{
    /* explicit_bzero keeps the compiler from dropping the wipe */
    explicit_bzero(s->value, s->len);
    free(s->value);
}

void al_redact_remove(const char *secret)
{
    if (!secret)
        return;
    pthread_mutex_lock(&redact_lock);
    for (size_t i = 0; i < n_secrets; i++) {
        if (!streq(secrets[i].value, secret))
            continue;
        if (--secrets[i].refs == 0) {
            secret_wipe(&secrets[i]);
            secrets[i] = secrets[--n_secrets];
        }
        break;
    }
    pthread_mutex_unlock(&redact_lock);
}

void al_redact_clear(void)
{
    pthread_mutex_lock(&redact_lock);
    for (size_t i = 0; i < n_secrets; i++)
        secret_wipe(&secrets[i]);
    free(secrets);
    secrets = NULL;
    n_secrets = 0;
    for (size_t i = 0; i < n_prefixes; i++)
        free(prefixes[i].value);
    n_prefixes = 0;
    pthread_mutex_unlock(&redact_lock);
}

/* gitlab-runner's token alphabet (common/buildlogger/internal/tokensanitizer):
 * a token ends at the first byte outside it. */
static bool is_token_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '=';
}

bool al_redact_prefix_is_valid(const char *prefix)
{
    size_t n = prefix ? strlen(prefix) : 0;
    if (n < AL_REDACT_PREFIX_MIN_LEN || n > AL_REDACT_PREFIX_MAX_LEN)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)prefix[i];
        if (c <= ' ' || c >= 0x7f)
            return false;
    }
    return true;
}

int al_redact_add_prefix(const char *prefix)
{
    if (!al_redact_prefix_is_valid(prefix))
        return -EINVAL;
    int r = 0;
    pthread_mutex_lock(&redact_lock);
    for (size_t i = 0; i < n_prefixes; i++) {
        if (streq(prefixes[i].value, prefix)) {
            prefixes[i].refs++;
            goto out;
        }
    }
    if (n_prefixes == AL_REDACT_MAX_PREFIXES) {
        r = -ENOSPC;
        goto out;
    }
    char *copy = strdup(prefix);
    if (!copy) {
        r = -ENOMEM;
        goto out;
    }
    prefixes[n_prefixes++] = (struct prefix){.value = copy, .len = strlen(copy), .refs = 1};
out:
    pthread_mutex_unlock(&redact_lock);
    return r;
}

void al_redact_remove_prefix(const char *prefix)
{
    if (!prefix)
        return;
    pthread_mutex_lock(&redact_lock);
    for (size_t i = 0; i < n_prefixes; i++) {
        if (!streq(prefixes[i].value, prefix))
            continue;
        if (--prefixes[i].refs == 0) {
            free(prefixes[i].value);
            prefixes[i] = prefixes[--n_prefixes];
        }
        break;
    }
    pthread_mutex_unlock(&redact_lock);
}

/* Longest registered secret matching at text[pos], or NULL. Lock held. */
static const struct secret *match_at(const char *text, size_t len, size_t pos)
{
    const struct secret *best = NULL;
    for (size_t i = 0; i < n_secrets; i++) {
        const struct secret *s = &secrets[i];
        if (s->len <= len - pos && memcmp(text + pos, s->value, s->len) == 0 &&
            (!best || s->len > best->len))
            best = s;
    }
    return best;
}

char *al_redact_vformat(size_t *ret_len, const char *fmt, va_list ap)
{
    char raw[1024];
    vsnprintf(raw, sizeof(raw), fmt, ap);
    char *red = al_redact(raw, strlen(raw), ret_len);
    explicit_bzero(raw, sizeof(raw));
    return red;
}

/* Longest registered token prefix at text[pos], or NULL. Lock held. */
static const struct prefix *prefix_at(const char *text, size_t len, size_t pos)
{
    const struct prefix *best = NULL;
    for (size_t i = 0; i < n_prefixes; i++) {
        const struct prefix *p = &prefixes[i];
        if (p->len <= len - pos && memcmp(text + pos, p->value, p->len) == 0 &&
            (!best || p->len > best->len))
            best = p;
    }
    return best;
}

/* True when text[pos..len) is a proper prefix of some secret or token
 * prefix. Lock held. */
static bool partial_at_end(const char *text, size_t len, size_t pos)
{
    size_t rest = len - pos;
    for (size_t i = 0; i < n_secrets; i++) {
        if (secrets[i].len > rest && memcmp(text + pos, secrets[i].value, rest) == 0)
            return true;
    }
    for (size_t i = 0; i < n_prefixes; i++) {
        if (prefixes[i].len > rest && memcmp(text + pos, prefixes[i].value, rest) == 0)
            return true;
    }
    return false;
}

/* Redacts text into out: registered secrets become AL_REDACTED, and so do
 * the token characters after a registered prefix (the prefix stays, as
 * gitlab-runner shows it). Unless final, it stops at the first position
 * whose tail could still grow into a secret or a longer token, except that
 * a token longer than AL_REDACT_TOKEN_HOLD_MAX is masked at once and the
 * rest of it swallowed (s->in_token) so a stream never holds without bound.
 * s is NULL when final. Returns the bytes consumed. Lock held. */
static size_t redact_into(const char *text, size_t len, bool final, struct al_redact_stream *s,
                          struct al_buf *out, int *ret_r)
{
    size_t i = 0, run = 0;
    int r = 0;
    if (s && s->in_token) {
        while (i < len && is_token_char((unsigned char)text[i]))
            i++;
        if (i == len) {
            *ret_r = 0;
            return len;
        }
        s->in_token = false;
        run = i;
    }
    while (i < len) {
        const struct secret *sec = n_secrets ? match_at(text, len, i) : NULL;
        if (sec) {
            if ((r = al_buf_append(out, text + run, i - run)) < 0 ||
                (r = al_buf_puts(out, AL_REDACTED)) < 0)
                break;
            i += sec->len;
            run = i;
            continue;
        }
        const struct prefix *p = n_prefixes ? prefix_at(text, len, i) : NULL;
        if (p) {
            size_t body = i + p->len, end = body;
            while (end < len && is_token_char((unsigned char)text[end]))
                end++;
            if (end == len && !final) {
                if (end - i <= AL_REDACT_TOKEN_HOLD_MAX)
                    break; /* the token may go on in the next chunk */
                s->in_token = true;
            }
            if (end > body) {
                if ((r = al_buf_append(out, text + run, body - run)) < 0 ||
                    (r = al_buf_puts(out, AL_REDACTED)) < 0)
                    break;
                i = end;
                run = i;
                continue;
            }
        }
        if (!final && (n_secrets || n_prefixes) && partial_at_end(text, len, i))
            break;
        i++;
    }
    if (r == 0)
        r = al_buf_append(out, text + run, i - run);
    *ret_r = r;
    return i;
}

char *al_redact(const char *text, size_t len, size_t *ret_len)
{
    struct al_buf out = AL_BUF_INIT;
    int r = 0;
    pthread_mutex_lock(&redact_lock);
    if (n_secrets || n_prefixes)
        redact_into(text, len, true, NULL, &out, &r);
    else
        r = al_buf_append(&out, text, len);
    pthread_mutex_unlock(&redact_lock);
    size_t n = out.len;
    char *masked = r == 0 ? al_buf_steal(&out) : NULL;
    if (!masked) {
        if (out.data)
            explicit_bzero(out.data, out.len);
        al_buf_free(&out);
        return NULL;
    }
    if (ret_len)
        *ret_len = n;
    return masked;
}

int al_redact_stream_feed(struct al_redact_stream *s, const void *data, size_t len,
                          struct al_buf *out)
{
    /* join the held tail with the new bytes */
    char *joined = malloc(s->held_len + len + 1);
    if (!joined)
        return -ENOMEM;
    if (s->held_len)
        memcpy(joined, s->held, s->held_len);
    if (len)
        memcpy(joined + s->held_len, data, len);
    size_t total = s->held_len + len;
    int r = 0;
    pthread_mutex_lock(&redact_lock);
    size_t used = redact_into(joined, total, false, s, out, &r);
    pthread_mutex_unlock(&redact_lock);
    if (r < 0) {
        free(joined);
        return r;
    }
    free(s->held);
    s->held_len = total - used;
    s->held = NULL;
    if (s->held_len) {
        memmove(joined, joined + used, s->held_len);
        s->held = joined;
    } else {
        free(joined);
    }
    return 0;
}

int al_redact_stream_flush(struct al_redact_stream *s, struct al_buf *out)
{
    int r = 0;
    if (s->held_len) {
        pthread_mutex_lock(&redact_lock);
        redact_into(s->held, s->held_len, true, NULL, out, &r);
        pthread_mutex_unlock(&redact_lock);
    }
    al_redact_stream_free(s);
    return r;
}

void al_redact_stream_free(struct al_redact_stream *s)
{
    if (s->held)
        explicit_bzero(s->held, s->held_len);
    free(s->held);
    s->held = NULL;
    s->held_len = 0;
    s->in_token = false;
}

bool al_redact_contains(const char *text, size_t len)
{
    bool found = false;
    pthread_mutex_lock(&redact_lock);
    for (size_t i = 0; i < len && !found && (n_secrets || n_prefixes); i++) {
        found = match_at(text, len, i) != NULL;
        const struct prefix *p = found || !n_prefixes ? NULL : prefix_at(text, len, i);
        found = found || (p && i + p->len < len && is_token_char((unsigned char)text[i + p->len]));
    }
    pthread_mutex_unlock(&redact_lock);
    return found;
}

void al_log(enum al_log_level level, const char *job_id, const char *fmt, ...)
{
    if (level > current_level)
        return;

    char msg[4096];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    size_t mlen = (size_t)n < sizeof(msg) ? (size_t)n : sizeof(msg) - 1;

    /* One event, one line: escape control characters. */
    char flat[sizeof(msg) * 2];
    size_t f = 0;
    for (size_t i = 0; i < mlen && f + 2 < sizeof(flat); i++) {
        unsigned char c = (unsigned char)msg[i];
        if (c == '\n') {
            flat[f++] = '\\';
            flat[f++] = 'n';
        } else if (c < 0x20 && c != '\t') {
            flat[f++] = '?';
        } else {
            flat[f++] = (char)c;
        }
    }

    size_t rlen = 0;
    _cleanup_free_ char *red = al_redact(flat, f, &rlen);
    if (!red)
        return;

    char prefix[96];
    if (getenv("JOURNAL_STREAM")) {
        snprintf(prefix, sizeof(prefix), "<%d>", level_prio[level]);
    } else {
        struct timespec ts;
        struct tm tm;
        clock_gettime(CLOCK_REALTIME, &ts);
        gmtime_r(&ts.tv_sec, &tm);
        snprintf(prefix, sizeof(prefix), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s ",
                 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                 ts.tv_nsec / 1000000, level_names[level]);
    }

    _cleanup_free_ char *jobpart = NULL;
    if (job_id) {
        jobpart = al_redact(job_id, strlen(job_id), NULL);
    }

    char line[sizeof(flat) + 256];
    int ln = snprintf(line, sizeof(line), "%sjob=%s %s\n", prefix, jobpart ? jobpart : "-", red);
    if (!job_id)
        ln = snprintf(line, sizeof(line), "%s%s\n", prefix, red);
    if (ln < 0)
        return;
    size_t total = (size_t)ln < sizeof(line) ? (size_t)ln : sizeof(line) - 1;
    if (total > 0 && line[total - 1] != '\n')
        line[total - 1] = '\n';
    int fd = log_fd >= 0 ? log_fd : STDERR_FILENO;
    /* one write per line keeps lines whole when several processes share stderr */
    ssize_t w = write(fd, line, total);
    (void)w;
}
