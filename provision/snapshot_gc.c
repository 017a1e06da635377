#include "provision/snapshot_gc.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runner/base/util.h"

/* A canonical decimal at *p (no sign, no leading zero but "0"), at most
 * max; *p moves past it. */
static bool parse_dec(const char **p, uint64_t max, uint64_t *ret)
{
    const char *s = *p;
    if (*s < '0' || *s > '9' || (s[0] == '0' && s[1] >= '0' && s[1] <= '9'))
        return false;
    uint64_t v = 0;
    for (; *s >= '0' && *s <= '9'; s++) {
        uint64_t d = (uint64_t)(*s - '0');
        if (v > (max - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *p = s;
    *ret = v;
    return true;
}

bool snapshot_gc_parse_size(const char *name, int *ret_cpus, uint64_t *ret_memory)
{
    const char *p = name;
    uint64_t cpus = 0, mib = 0;
    if (!parse_dec(&p, 4096, &cpus) || cpus == 0 || strncmp(p, "c-", 2) != 0)
        return false;
    p += 2;
    if (!parse_dec(&p, UINT64_MAX >> 20, &mib) || mib == 0 || !streq(p, "m"))
        return false;
    *ret_cpus = (int)cpus;
    *ret_memory = mib << 20;
    return true;
}

bool snapshot_gc_parse_slot(const char *name, int *ret_k)
{
    const char *p = name;
    uint64_t k = 0;
    if (strncmp(p, "slot-", 5) != 0)
        return false;
    p += 5;
    if (!parse_dec(&p, SNAPSHOT_GC_MAX_K, &k) || *p)
        return false;
    *ret_k = (int)k;
    return true;
}

static bool is_dir_at(int dfd, const char *name)
{
    struct stat st;
    return fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode);
}

void snapshot_gc_entries_free(struct snapshot_gc_entry *e, size_t n)
{
    for (size_t i = 0; e && i < n; i++) {
        free(e[i].dir);
        free(e[i].size_dir);
    }
    free(e);
}

static int list_size_dir(const char *size_dir, int cpus, uint64_t memory,
                         struct snapshot_gc_entry **v, size_t *n, struct al_error **err)
{
    DIR *d = opendir(size_dir);
    if (!d)
        return errno == ENOENT ? 0 : al_error_set_errno(err, errno, "listing %s", size_dir);
    int r = 0;
    struct dirent *de;
    while (r == 0 && *n < SNAPSHOT_GC_MAX_SLOTS && (de = readdir(d))) {
        int k = 0;
        if (!snapshot_gc_parse_slot(de->d_name, &k) || !is_dir_at(dirfd(d), de->d_name))
            continue;
        struct snapshot_gc_entry *nv = realloc(*v, (*n + 1) * sizeof(**v));
        if (!nv) {
            r = al_error_set(err, ENOMEM, "listing snapshots");
            break;
        }
        *v = nv;
        struct snapshot_gc_entry *e = &nv[*n];
        *e = (struct snapshot_gc_entry){.cpus = cpus, .memory = memory, .k = k};
        e->dir = al_path_join(size_dir, de->d_name);
        e->size_dir = strdup(size_dir);
        (*n)++;
        if (!e->dir || !e->size_dir)
            r = al_error_set(err, ENOMEM, "listing snapshots");
    }
    closedir(d);
    return r;
}

int snapshot_gc_list(const char *root, struct snapshot_gc_entry **ret, size_t *ret_n,
                     struct al_error **err)
{
    DIR *d = opendir(root);
    if (!d && errno != ENOENT)
        return al_error_set_errno(err, errno, "listing %s", root);
    struct snapshot_gc_entry *v = NULL;
    size_t n = 0;
    int r = 0;
    struct dirent *de;
    while (d && r == 0 && (de = readdir(d))) {
        int cpus = 0;
        uint64_t memory = 0;
        if (!snapshot_gc_parse_size(de->d_name, &cpus, &memory) || !is_dir_at(dirfd(d), de->d_name))
            continue;
        _cleanup_free_ char *size_dir = al_path_join(root, de->d_name);
        r = size_dir ? list_size_dir(size_dir, cpus, memory, &v, &n, err)
                     : al_error_set(err, ENOMEM, "listing snapshots");
    }
    if (d)
        closedir(d);
    if (r < 0) {
        snapshot_gc_entries_free(v, n);
        return r;
    }
    *ret = v;
    *ret_n = n;
    return 0;
}

const char *snapshot_gc_verdict_name(enum snapshot_gc_verdict v)
{
    static const char *const names[] = {"keep", "stale", "beyond_max_vms", "no_manifest"};
    return (unsigned)v < SNAPSHOT_GC_VERDICT_COUNT ? names[v] : "unknown";
}

enum snapshot_gc_verdict snapshot_gc_judge(int k, int max_vms, const struct snapshot_manifest *have,
                                           const struct snapshot_manifest *want, char *why,
                                           size_t size)
{
    if (k >= max_vms) {
        snprintf(why, size, "slot %d of max_vms %d", k, max_vms);
        return SNAPSHOT_GC_BEYOND_MAX;
    }
    if (!have) {
        snprintf(why, size, "no manifest");
        return SNAPSHOT_GC_NO_MANIFEST;
    }
    return snapshot_manifest_check(have, want, why, size) < 0 ? SNAPSHOT_GC_STALE
                                                              : SNAPSHOT_GC_KEEP;
}

/* The blocks of the dir's regular files that no other link keeps. */
static uint64_t freed_bytes(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    uint64_t sum = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        struct stat st;
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode) &&
            st.st_nlink == 1)
            sum += (uint64_t)st.st_blocks * 512u;
    }
    closedir(d);
    return sum;
}

int snapshot_gc_remove_slot(const char *dir, uint64_t *bytes, struct al_error **err)
{
    _cleanup_free_ char *manifest = al_path_join(dir, "manifest.json");
    if (!manifest)
        return al_error_set(err, ENOMEM, "removing a snapshot");
    uint64_t freed = freed_bytes(dir);
    if (unlink(manifest) < 0 && errno != ENOENT && errno != ENOTDIR)
        return al_error_set_errno(err, errno, "removing %s", manifest);
    int r = al_rm_rf(dir, err);
    if (r < 0)
        return r;
    *bytes += freed;
    return 0;
}
