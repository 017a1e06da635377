#include "runner/sources/gitlab_cache.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "runner/base/buf.h"
#include "runner/base/macro.h"
#include "runner/base/sha256.h"
#include "runner/base/util.h"
#include "runner/sources/gitlab_artifacts.h"

#define TMP_PREFIX     ".tmp-"
#define TMP_MAX_AGE_S  3600
#define SUFFIX         ".zip"
#define MAX_ARCHIVES   100000 /* scanned per eviction; more are left alone */
#define PROJECT_DIR_SZ 24

struct gitlab_cache_store {
    char *dir;
    uint64_t max_bytes;
    pthread_mutex_t evict_lock; /* one eviction at a time in this process */
    _Atomic uint64_t bytes, archives, hits, misses, saves, evictions;
};

int gitlab_cache_store_new(const char *dir, uint64_t max_bytes, struct gitlab_cache_store **ret,
                           struct al_error **err)
{
    int r = al_mkdir_p(dir, 0700, err);
    if (r < 0)
        return r;
    struct gitlab_cache_store *s = calloc(1, sizeof(*s));
    if (!s || !(s->dir = strdup(dir))) {
        free(s);
        return al_error_set(err, ENOMEM, "out of memory");
    }
    s->max_bytes = max_bytes;
    pthread_mutex_init(&s->evict_lock, NULL);
    *ret = s;
    return 0;
}

struct gitlab_cache_store *gitlab_cache_store_free(struct gitlab_cache_store *s)
{
    if (!s)
        return NULL;
    pthread_mutex_destroy(&s->evict_lock);
    free(s->dir);
    free(s);
    return NULL;
}

void gitlab_cache_store_stats(struct gitlab_cache_store *s, struct gitlab_cache_stats *ret)
{
    *ret = (struct gitlab_cache_stats){
            .bytes = atomic_load(&s->bytes),
            .archives = atomic_load(&s->archives),
            .hits = atomic_load(&s->hits),
            .misses = atomic_load(&s->misses),
            .saves = atomic_load(&s->saves),
            .evictions = atomic_load(&s->evictions),
    };
}

/* ---- key names ---- */

/* The key as GitLab Runner reads it: escaped separators decoded, "." and
 * ".." resolved without leaving the key, trailing blanks of the last
 * components dropped; "" when nothing is left. */
static char *key_clean(const char *key)
{
    size_t n = strlen(key);
    _cleanup_free_ char *flat = malloc(n + 1);
    char *out = malloc(n + 1);
    if (!flat || !out) {
        free(out);
        return NULL;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (key[i] == '%' && i + 2 < n && key[i + 1] == '2' && strchr("fFeE", key[i + 2])) {
            flat[k++] = (key[i + 2] == 'f' || key[i + 2] == 'F') ? '/' : '.';
            i += 2;
        } else {
            flat[k++] = key[i] == '\\' ? '/' : key[i];
        }
    }
    flat[k] = '\0';
    /* components, each starting at out[start] */
    size_t len = 0;
    for (char *save = NULL, *c = strtok_r(flat, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
        if (streq(c, "."))
            continue;
        if (streq(c, "..")) {
            while (len > 0 && out[len - 1] != '/')
                len--;
            if (len > 0)
                len--; /* the separator */
            continue;
        }
        if (len)
            out[len++] = '/';
        size_t cl = strlen(c);
        memcpy(out + len, c, cl);
        len += cl;
    }
    /* trailing blanks, and components that were only blanks */
    for (;;) {
        while (len > 0 && (out[len - 1] == ' ' || (out[len - 1] >= '\t' && out[len - 1] <= '\r')))
            len--;
        if (len > 0 && out[len - 1] == '/') {
            len--;
            continue;
        }
        break;
    }
    out[len] = '\0';
    return out;
}

int gitlab_cache_key_name(const char *key, char **ret_name, struct al_error **err)
{
    _cleanup_free_ char *clean = key_clean(key);
    if (!clean)
        return al_error_set(err, ENOMEM, "out of memory");
    if (!*clean)
        return al_error_set(err, EINVAL, "cache key \"%s\" is empty once cleaned", key);
    struct al_buf b = {0};
    int r = 0;
    for (const unsigned char *p = (const unsigned char *)clean; *p && r == 0; p++) {
        bool plain = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                     (*p >= '0' && *p <= '9') || *p == '_' || *p == '-' ||
                     (*p == '.' && p != (const unsigned char *)clean);
        r = plain ? al_buf_append(&b, (const char *)p, 1) : al_buf_printf(&b, "%%%02X", *p);
    }
    if (r == 0 && b.len > GITLAB_CACHE_NAME_MAX) {
        char hex[AL_SHA256_HEX_SIZE];
        al_sha256_hex(clean, strlen(clean), hex);
        size_t keep = GITLAB_CACHE_NAME_MAX - 1 - (AL_SHA256_HEX_SIZE - 1);
        while (keep > 0 && b.data[keep - 1] == '%')
            keep--; /* never cut inside an escape */
        if (keep > 1 && b.data[keep - 2] == '%')
            keep -= 2;
        b.len = keep;
        r = al_buf_printf(&b, "~%s", hex);
    }
    if (r == 0)
        r = al_buf_append(&b, "", 1);
    if (r < 0) {
        al_buf_free(&b);
        return al_error_set(err, ENOMEM, "out of memory");
    }
    *ret_name = b.data;
    return 0;
}

/* DIR/<project>, and DIR/<project>/<name>.zip */
static int archive_path(const struct gitlab_cache_store *s, int64_t project, const char *key,
                        char **ret_dir, char **ret_path, struct al_error **err)
{
    _cleanup_free_ char *name = NULL;
    int r = gitlab_cache_key_name(key, &name, err);
    if (r < 0)
        return r;
    char pid[PROJECT_DIR_SZ];
    snprintf(pid, sizeof(pid), "%" PRId64, project);
    _cleanup_free_ char *dir = al_path_join(s->dir, pid);
    char *path = NULL;
    if (!dir || asprintf(&path, "%s/%s" SUFFIX, dir, name) < 0)
        return al_error_set(err, ENOMEM, "out of memory");
    if (ret_dir)
        *ret_dir = TAKE_PTR(dir);
    *ret_path = path;
    return 0;
}

/* ---- restore ---- */

static int copy_fd(int in, const char *dest, struct al_error **err)
{
    _cleanup_close_ int out =
            open(dest, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (out < 0)
        return al_error_set_errno(err, errno, "creating %s", dest);
    char buf[64 * 1024];
    for (;;) {
        ssize_t n = read(in, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            unlink(dest);
            return al_error_set_errno(err, e, "reading the cache archive");
        }
        if (n == 0)
            return 0;
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(out, buf + off, (size_t)(n - off));
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0) {
                int e = w < 0 ? errno : EIO;
                unlink(dest);
                return al_error_set_errno(err, e, "writing %s", dest);
            }
            off += w;
        }
    }
}

int gitlab_cache_store_get(struct gitlab_cache_store *s, int64_t project, const char *const *keys,
                           size_t n_keys, const char *dest, size_t *ret_index,
                           struct al_error **err)
{
    for (size_t i = 0; i < n_keys; i++) {
        _cleanup_free_ char *path = NULL;
        int r = archive_path(s, project, keys[i], NULL, &path, NULL);
        if (r == -EINVAL)
            continue; /* an unusable key is one the store cannot have */
        if (r < 0)
            return al_error_set(err, -r, "out of memory");
        /* opened first: an archive replaced or evicted from now on stays
         * readable through fd */
        _cleanup_close_ int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0 && errno == ENOENT)
            continue;
        if (fd < 0)
            return al_error_set_errno(err, errno, "opening %s", path);
        struct stat st;
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
            continue;
        if (link(path, dest) < 0) {
            r = copy_fd(fd, dest, err);
            if (r < 0)
                return r;
        }
        futimens(fd, NULL); /* its last use, for eviction; best effort */
        atomic_fetch_add(&s->hits, 1);
        *ret_index = i;
        return 0;
    }
    atomic_fetch_add(&s->misses, 1);
    return -ENOENT;
}

/* ---- save ---- */

int gitlab_cache_store_put(struct gitlab_cache_store *s, int64_t project, const char *key,
                           const char *dir, const struct gitlab_cache_spec *c, uint64_t *ret_bytes,
                           struct al_error **err)
{
    _cleanup_free_ char *pdir = NULL;
    _cleanup_free_ char *path = NULL;
    int r = archive_path(s, project, key, &pdir, &path, err);
    if (r < 0)
        return r;
    if ((r = al_mkdir_p(pdir, 0700, err)) < 0)
        return r;
    _cleanup_free_ char *rnd = al_random_hex(8);
    _cleanup_free_ char *tmp = NULL;
    if (!rnd || asprintf(&tmp, "%s/" TMP_PREFIX "%s" SUFFIX, pdir, rnd) < 0)
        return al_error_set(err, ENOMEM, "out of memory");
    struct gitlab_artifact a = {
            .paths = c->paths, .n_paths = c->n_paths, .untracked = c->untracked};
    struct gitlab_zip_result res;
    r = gitlab_artifacts_zip(dir, &a, tmp, s->max_bytes, &res, err);
    if (r < 0)
        return r; /* the zip is removed */
    if (res.files == 0) {
        *ret_bytes = 0;
        return 0;
    }
    _cleanup_close_ int fd = open(tmp, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 || fsync(fd) < 0 || rename(tmp, path) < 0) {
        int e = errno;
        unlink(tmp);
        return al_error_set_errno(err, e, "storing the cache archive %s", path);
    }
    _cleanup_close_ int dfd = open(pdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0)
        fsync(dfd); /* the rename, best effort */
    atomic_fetch_add(&s->saves, 1);
    *ret_bytes = res.bytes;
    return gitlab_cache_store_evict(s, NULL, err);
}

/* ---- eviction ---- */

struct archive_file {
    char *path;
    uint64_t size;
    struct timespec used;
};

static int by_use(const void *a, const void *b)
{
    const struct archive_file *x = a, *y = b;
    if (x->used.tv_sec != y->used.tv_sec)
        return x->used.tv_sec < y->used.tv_sec ? -1 : 1;
    if (x->used.tv_nsec != y->used.tv_nsec)
        return x->used.tv_nsec < y->used.tv_nsec ? -1 : 1;
    return strcmp(x->path, y->path);
}

static bool has_suffix(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && streq(s + n - m, suffix);
}

/* Collects DIR/<project>/<name>.zip; removes stale temporary files. */
static int scan(const struct gitlab_cache_store *s, struct archive_file **ret, size_t *ret_n,
                struct al_error **err)
{
    DIR *top = opendir(s->dir);
    if (!top)
        return al_error_set_errno(err, errno, "reading %s", s->dir);
    struct archive_file *files = NULL;
    size_t n = 0, cap = 0;
    time_t now = time(NULL);
    int r = 0;
    struct dirent *pe;
    while (r == 0 && (pe = readdir(top))) {
        if (pe->d_name[0] == '.')
            continue;
        _cleanup_free_ char *pdir = al_path_join(s->dir, pe->d_name);
        DIR *d = pdir ? opendir(pdir) : NULL;
        if (!d)
            continue; /* not a directory, or gone */
        struct dirent *e;
        while (r == 0 && (e = readdir(d))) {
            bool tmp = strncmp(e->d_name, TMP_PREFIX, strlen(TMP_PREFIX)) == 0;
            if ((e->d_name[0] == '.' && !tmp) || !has_suffix(e->d_name, SUFFIX))
                continue;
            char *path = al_path_join(pdir, e->d_name);
            struct stat st;
            if (!path) {
                r = al_error_set(err, ENOMEM, "out of memory");
                break;
            }
            if (lstat(path, &st) < 0 || !S_ISREG(st.st_mode)) {
                free(path);
                continue;
            }
            if (tmp) {
                if (now - st.st_mtim.tv_sec > TMP_MAX_AGE_S)
                    unlink(path); /* left by a crash */
                free(path);
                continue;
            }
            if (n == MAX_ARCHIVES) {
                free(path);
                continue;
            }
            if (n == cap) {
                size_t nc = cap ? cap * 2 : 64;
                struct archive_file *nf = realloc(files, nc * sizeof(*nf));
                if (!nf) {
                    free(path);
                    r = al_error_set(err, ENOMEM, "out of memory");
                    break;
                }
                files = nf;
                cap = nc;
            }
            files[n++] = (struct archive_file){
                    .path = path, .size = (uint64_t)st.st_size, .used = st.st_mtim};
        }
        closedir(d);
    }
    closedir(top);
    if (r < 0) {
        for (size_t i = 0; i < n; i++)
            free(files[i].path);
        free(files);
        return r;
    }
    *ret = files;
    *ret_n = n;
    return 0;
}

int gitlab_cache_store_evict(struct gitlab_cache_store *s, uint64_t *ret_evicted,
                             struct al_error **err)
{
    pthread_mutex_lock(&s->evict_lock);
    struct archive_file *files = NULL;
    size_t n = 0;
    int r = scan(s, &files, &n, err);
    uint64_t evicted = 0;
    if (r == 0) {
        uint64_t total = 0;
        for (size_t i = 0; i < n; i++)
            total += files[i].size;
        if (n > 1)
            qsort(files, n, sizeof(*files), by_use);
        size_t left = n;
        for (size_t i = 0; i < n && total > s->max_bytes; i++) {
            /* ENOENT: another host or job removed or replaced it first */
            if (unlink(files[i].path) == 0 || errno == ENOENT) {
                total -= files[i].size;
                left--;
                evicted++;
            }
        }
        atomic_store(&s->bytes, total);
        atomic_store(&s->archives, left);
        atomic_fetch_add(&s->evictions, evicted);
    }
    for (size_t i = 0; i < n; i++)
        free(files[i].path);
    free(files);
    pthread_mutex_unlock(&s->evict_lock);
    if (r == 0 && ret_evicted)
        *ret_evicted = evicted;
    return r;
}
