#include "runner/base/util.h"

#include <ctype.h>
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>

#include "runner/base/hex.h"

int al_parse_int64(const char *s, int64_t min, int64_t max, int64_t *ret)
{
    if (!s || !*s)
        return -EINVAL;
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno == ERANGE)
        return -ERANGE;
    if (errno || end == s || *end != '\0')
        return -EINVAL;
    if (v < min || v > max)
        return -ERANGE;
    *ret = (int64_t)v;
    return 0;
}

int al_parse_int(const char *s, int min, int max, int *ret)
{
    int64_t v;
    int r = al_parse_int64(s, min, max, &v);
    if (r < 0)
        return r;
    *ret = (int)v;
    return 0;
}

int al_parse_uint64(const char *s, uint64_t max, uint64_t *ret)
{
    if (!s || !*s || *s == '-' || *s == '+')
        return -EINVAL;
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno == ERANGE)
        return -ERANGE;
    if (errno || end == s || *end != '\0')
        return -EINVAL;
    if (v > max)
        return -ERANGE;
    *ret = (uint64_t)v;
    return 0;
}

int al_parse_bool(const char *s, bool *ret)
{
    static const char *const yes[] = {"1", "yes", "true", "on"};
    static const char *const no[] = {"0", "no", "false", "off"};
    if (!s)
        return -EINVAL;
    for (size_t i = 0; i < ARRAY_SIZE(yes); i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *ret = true;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *ret = false;
            return 0;
        }
    }
    return -EINVAL;
}

int al_parse_host_port(const char *s, const char *what, char *host, size_t host_size, int *ret_port,
                       struct al_error **err)
{
    const char *colon;
    const char *h = s;
    size_t hlen;
    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (!end || end[1] != ':')
            return al_error_set(err, EINVAL, "%s \"%s\": expected [IPV6]:PORT", what, s);
        h = s + 1;
        hlen = (size_t)(end - h);
        colon = end + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon)
            return al_error_set(err, EINVAL, "%s \"%s\": expected HOST:PORT", what, s);
        hlen = (size_t)(colon - s);
    }
    if (hlen == 0 || hlen >= host_size)
        return al_error_set(err, EINVAL, "%s \"%s\": bad host", what, s);
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    if (al_parse_int(colon + 1, 0, 65535, ret_port) < 0)
        return al_error_set(err, EINVAL, "%s \"%s\": bad port", what, s);
    return 0;
}

/* Splits "123x" into number and one-letter suffix. */
static int split_suffix(const char *s, uint64_t *ret_n, char *ret_suffix)
{
    if (!s || !*s)
        return -EINVAL;
    size_t len = strlen(s);
    char num[32];
    char suffix = '\0';
    if (len >= sizeof(num))
        return -ERANGE;
    memcpy(num, s, len + 1);
    if (num[len - 1] < '0' || num[len - 1] > '9') {
        suffix = num[len - 1];
        num[len - 1] = '\0';
    }
    int r = al_parse_uint64(num, UINT64_MAX, ret_n);
    if (r < 0)
        return r;
    *ret_suffix = suffix;
    return 0;
}

struct unit {
    char suffix; /* '\0': none given */
    uint64_t mult;
};

/* "123x" with x one of the n units' suffixes: 123 times its multiplier,
 * at most max (else -ERANGE); -EINVAL for another suffix. */
static int parse_with_unit(const char *s, const struct unit *units, size_t n_units, uint64_t max,
                           uint64_t *ret)
{
    uint64_t n;
    char suffix;
    int r = split_suffix(s, &n, &suffix);
    if (r < 0)
        return r;
    for (size_t i = 0; i < n_units; i++) {
        if (units[i].suffix != suffix)
            continue;
        if (n > max / units[i].mult)
            return -ERANGE;
        *ret = n * units[i].mult;
        return 0;
    }
    return -EINVAL;
}

int al_parse_duration(const char *s, int64_t *ret_seconds)
{
    static const struct unit units[] = {
            {'\0', 1}, {'s', 1}, {'m', 60}, {'h', 3600}, {'d', 86400},
    };
    uint64_t v;
    int r = parse_with_unit(s, units, ARRAY_SIZE(units), INT64_MAX, &v);
    if (r < 0)
        return r;
    *ret_seconds = (int64_t)v;
    return 0;
}

int al_parse_size(const char *s, uint64_t *ret_bytes)
{
    static const struct unit units[] = {
            {'\0', 1},         {'B', 1},          {'K', 1ull << 10}, {'k', 1ull << 10},
            {'M', 1ull << 20}, {'G', 1ull << 30}, {'T', 1ull << 40},
    };
    return parse_with_unit(s, units, ARRAY_SIZE(units), UINT64_MAX, ret_bytes);
}

/* Reads fd (opened from path, stat'ed as st) to its end, at most max
 * bytes. wipe: zero every buffer that held the contents before freeing it. */
static int read_fd(int fd, const char *path, const struct stat *st, size_t max, bool wipe,
                   char **ret_data, size_t *ret_len, struct al_error **err)
{
    if (S_ISDIR(st->st_mode))
        return al_error_set(err, EISDIR, "%s is a directory", path);
    if (S_ISREG(st->st_mode) && (uint64_t)st->st_size > max)
        return al_error_set(err, EFBIG, "%s is larger than %zu bytes", path, max);

    size_t cap = S_ISREG(st->st_mode) ? (size_t)st->st_size + 1 : 4096;
    char *data = malloc(cap);
    if (!data)
        return al_error_set(err, ENOMEM, "reading %s", path);
    size_t len = 0;
    int r = 0;
    for (;;) {
        if (len + 1 >= cap) {
            if (cap > max + 1) {
                r = al_error_set(err, EFBIG, "%s is larger than %zu bytes", path, max);
                break;
            }
            size_t ncap = cap * 2;
            char *n = malloc(ncap);
            if (!n) {
                r = al_error_set(err, ENOMEM, "reading %s", path);
                break;
            }
            memcpy(n, data, len);
            if (wipe)
                explicit_bzero(data, len);
            free(data);
            data = n;
            cap = ncap;
        }
        ssize_t k = read(fd, data + len, cap - len - 1);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            r = al_error_set_errno(err, errno, "reading %s", path);
            break;
        }
        if (k == 0)
            break;
        len += (size_t)k;
        if (len > max) {
            r = al_error_set(err, EFBIG, "%s is larger than %zu bytes", path, max);
            break;
        }
    }
    if (r < 0) {
        if (wipe)
            explicit_bzero(data, len);
        free(data);
        return r;
    }
    data[len] = '\0';
    *ret_data = data;
    if (ret_len)
        *ret_len = len;
    return 0;
}

int al_read_file(const char *path, size_t max, char **ret_data, size_t *ret_len,
                 struct al_error **err)
{
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return al_error_set_errno(err, errno, "opening %s", path);
    struct stat st;
    if (fstat(fd, &st) < 0)
        return al_error_set_errno(err, errno, "stat %s", path);
    return read_fd(fd, path, &st, max, false, ret_data, ret_len, err);
}

int al_read_secret_file(const char *path, const char *what, size_t max, char **ret_data,
                        size_t *ret_len, struct al_error **err)
{
    if (!path || !*path)
        return al_error_set(err, EINVAL, "no %s configured", what);
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return al_error_set_errno(err, errno, "%s %s", what, path);
    struct stat st;
    if (fstat(fd, &st) < 0)
        return al_error_set_errno(err, errno, "%s %s", what, path);
    /* checked on the file opened, not on the name: no race with a rename */
    if (st.st_mode & S_IROTH)
        return al_error_set(err, EPERM, "%s %s is readable by everyone; chmod o-r it first", what,
                            path);
    int r = read_fd(fd, path, &st, max, true, ret_data, ret_len, err);
    if (r < 0)
        return al_error_wrap(err, "%s", what);
    return 0;
}

int al_write_file_atomic(const char *path, const void *data, size_t len, mode_t mode,
                         struct al_error **err)
{
    _cleanup_free_ char *tmp = NULL;
    if (asprintf(&tmp, "%s.tmp.%d", path, (int)getpid()) < 0)
        return al_error_set(err, ENOMEM, "writing %s", path);
    _cleanup_close_ int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0)
        return al_error_set_errno(err, errno, "creating %s", tmp);
    if (fchmod(fd, mode) < 0) {
        int e = errno;
        unlink(tmp);
        return al_error_set_errno(err, e, "chmod %s", tmp);
    }
    const char *p = data;
    size_t left = len;
    while (left) {
        ssize_t k = write(fd, p, left);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            unlink(tmp);
            return al_error_set_errno(err, e, "writing %s", tmp);
        }
        p += k;
        left -= (size_t)k;
    }
    if (fsync(fd) < 0) {
        int e = errno;
        unlink(tmp);
        return al_error_set_errno(err, e, "fsync %s", tmp);
    }
    if (rename(tmp, path) < 0) {
        int e = errno;
        unlink(tmp);
        return al_error_set_errno(err, e, "renaming %s to %s", tmp, path);
    }
    return 0;
}

int al_mkdir_p(const char *path, mode_t mode, struct al_error **err)
{
    _cleanup_free_ char *p = strdup(path);
    if (!p)
        return al_error_set(err, ENOMEM, "mkdir %s", path);
    size_t len = strlen(p);
    while (len > 1 && p[len - 1] == '/')
        p[--len] = '\0';
    for (char *s = p + 1;; s++) {
        bool last = *s == '\0';
        if (*s == '/' || last) {
            char saved = *s;
            *s = '\0';
            if (mkdir(p, mode) < 0) {
                if (errno != EEXIST)
                    return al_error_set_errno(err, errno, "creating directory %s", p);
                struct stat st;
                if (stat(p, &st) < 0)
                    return al_error_set_errno(err, errno, "stat %s", p);
                if (!S_ISDIR(st.st_mode))
                    return al_error_set(err, ENOTDIR, "%s exists and is not a directory", p);
            }
            *s = saved;
            if (last)
                break;
        }
    }
    return 0;
}

static int rm_rf_at(int parent_fd, const char *name, dev_t dev, struct al_error **err)
{
    struct stat st;
    if (fstatat(parent_fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
        if (errno == ENOENT)
            return 0;
        return al_error_set_errno(err, errno, "stat %s", name);
    }
    if (S_ISDIR(st.st_mode)) {
        if (st.st_dev != dev)
            return al_error_set(err, EXDEV, "refusing to cross a mount point at %s", name);
        int fd = openat(parent_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
            return al_error_set_errno(err, errno, "opening %s", name);
        DIR *d = fdopendir(fd);
        if (!d) {
            int e = errno;
            close(fd);
            return al_error_set_errno(err, e, "opening %s", name);
        }
        struct dirent *de;
        int r = 0;
        while ((de = readdir(d))) {
            if (streq(de->d_name, ".") || streq(de->d_name, ".."))
                continue;
            r = rm_rf_at(dirfd(d), de->d_name, dev, err);
            if (r < 0)
                break;
        }
        closedir(d);
        if (r < 0)
            return al_error_wrap(err, "%s", name);
        if (unlinkat(parent_fd, name, AT_REMOVEDIR) < 0 && errno != ENOENT)
            return al_error_set_errno(err, errno, "removing directory %s", name);
        return 0;
    }
    if (unlinkat(parent_fd, name, 0) < 0 && errno != ENOENT)
        return al_error_set_errno(err, errno, "removing %s", name);
    return 0;
}

int al_rm_rf(const char *path, struct al_error **err)
{
    struct stat st;
    if (lstat(path, &st) < 0) {
        if (errno == ENOENT)
            return 0;
        return al_error_set_errno(err, errno, "stat %s", path);
    }
    return rm_rf_at(AT_FDCWD, path, st.st_dev, err);
}

char *al_path_join(const char *a, const char *b)
{
    char *s = NULL;
    size_t la = strlen(a);
    while (*b == '/')
        b++;
    bool slash = la > 0 && a[la - 1] == '/';
    if (asprintf(&s, "%s%s%s", a, slash ? "" : "/", b) < 0)
        return NULL;
    return s;
}

uint64_t al_now_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

uint64_t al_now_mono_ms(void)
{
    return al_now_mono_us() / 1000u;
}

int64_t al_now_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void al_format_time_ms(int64_t ms, char *buf, size_t size)
{
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    snprintf(buf, size, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
}

int al_random_bytes(void *buf, size_t n)
{
    char *p = buf;
    while (n) {
        ssize_t k = getrandom(p, n, 0);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

char *al_random_hex(size_t n)
{
    _cleanup_free_ unsigned char *raw = malloc(n ? n : 1);
    char *hex = malloc(2 * n + 1);
    if (!raw || !hex || al_random_bytes(raw, n) < 0) {
        free(hex);
        return NULL;
    }
    al_hex_encode(raw, n, hex);
    return hex;
}

char *al_random_uuid(void)
{
    uint8_t u[16];
    if (al_random_bytes(u, sizeof(u)) < 0)
        return NULL;
    u[6] = (uint8_t)((u[6] & 0x0f) | 0x40); /* version 4 */
    u[8] = (uint8_t)((u[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    char *s = NULL;
    if (asprintf(&s, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0],
                 u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13],
                 u[14], u[15]) < 0)
        return NULL;
    return s;
}

bool al_consttime_equal(const void *a, size_t alen, const void *b, size_t blen)
{
    if (alen != blen)
        return false;
    const volatile unsigned char *x = a;
    const volatile unsigned char *y = b;
    unsigned char diff = 0;
    for (size_t i = 0; i < alen; i++)
        diff |= (unsigned char)(x[i] ^ y[i]);
    return diff == 0;
}

int al_fd_set_nonblock(int fd, bool on)
{
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0)
        return -errno;
    int nf = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
    if (nf != flags && fcntl(fd, F_SETFL, nf) < 0)
        return -errno;
    return 0;
}

char *al_find_in_path(const char *name)
{
    const char *path = getenv("PATH");
    if (!path || !path[0])
        path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    _cleanup_free_ char *copy = strdup(path);
    if (!copy)
        return NULL;
    char *save = NULL;
    for (char *d = strtok_r(copy, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        char *p = al_path_join(d, name);
        if (p && access(p, X_OK) == 0)
            return p;
        free(p);
    }
    return NULL;
}

int al_open_dirs_nofollow(int dfd, const char *path, size_t n, uint64_t *budget)
{
    int cur = dup(dfd);
    if (cur < 0)
        return -errno;
    const char *c = path;
    while (c < path + n) {
        const char *slash = memchr(c, '/', (size_t)(path + n - c));
        size_t len = slash ? (size_t)(slash - c) : (size_t)(path + n - c);
        if (len && !(len == 1 && c[0] == '.')) {
            char comp[256];
            if (len >= sizeof(comp)) {
                close(cur);
                return -ENAMETOOLONG;
            }
            memcpy(comp, c, len);
            comp[len] = '\0';
            struct stat st;
            bool exists = fstatat(cur, comp, &st, AT_SYMLINK_NOFOLLOW) == 0;
            if (!exists && budget && *budget == 0) {
                close(cur);
                return -EDQUOT;
            }
            if (!exists && mkdirat(cur, comp, 0755) == 0) {
                if (budget)
                    (*budget)--;
            } else if (!exists && errno != EEXIST) {
                int e = errno;
                close(cur);
                return -e;
            }
            int next = openat(cur, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            int e = errno;
            close(cur);
            if (next < 0)
                return -e;
            cur = next;
        }
        c += len;
        while (c < path + n && *c == '/')
            c++;
    }
    return cur;
}

void al_wipe_free(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

uint64_t al_jitter_ms(uint64_t ms)
{
    uint32_t r = 0;
    if (al_random_bytes(&r, sizeof(r)) < 0)
        return ms;
    return ms + (ms / 4) * (r % 1000) / 1000;
}

bool al_first_vformat(char **dst, const char *fmt, va_list ap)
{
    if (*dst)
        return false;
    if (vasprintf(dst, fmt, ap) < 0)
        *dst = NULL;
    return true;
}

bool al_name_is_valid(const char *s)
{
    if (!s || !isalnum((unsigned char)s[0]))
        return false;
    size_t n = 0;
    for (const char *p = s; *p; p++, n++) {
        if (!isalnum((unsigned char)*p) && *p != '.' && *p != '_' && *p != '-')
            return false;
    }
    return n <= AL_NAME_MAX;
}

int al_usage_exit(void (*usage)(FILE *out), bool help)
{
    usage(help ? stdout : stderr);
    return help ? 0 : 2;
}
