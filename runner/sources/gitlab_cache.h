/* The GitLab source's cache store: GitLab's `cache:` kept on the host.
 *
 * One zip per project and key, `DIR/<project id>/<key name>.zip`, where the
 * key name is the key made safe for a file name (gitlab_cache_key_name()).
 * GitLab itself keeps protected and non-protected refs apart: it appends
 * "-protected" or "-non_protected" to the keys it sends (unless the project
 * shares its caches or the entry says `unprotect: true`), so they are
 * different keys here too.
 *
 * Archives are written to a temporary file in the same directory, synced
 * and renamed over the old one, so a reader sees the old archive or the
 * new one and a crash leaves no half archive (a stale temporary file is
 * removed by the next eviction). A restored archive is hard-linked (or,
 * across file systems, copied) out of the store before it is unpacked, so
 * a concurrent replacement or eviction does not disturb it. Several hosts
 * may point DIR at one shared file system (NFS): they rely on nothing but
 * rename(2) and unlink(2) being atomic, take no locks, and the last writer
 * of a key wins.
 *
 * The total size is capped: after each save the least recently used
 * archives (by mtime, which a restore refreshes) are removed until the
 * total fits. An archive larger than the cap is not stored.
 *
 * Every function but gitlab_cache_store_new/_free/_stats blocks on file
 * I/O: call them from a worker thread. They may run concurrently. */
#ifndef AL_GITLAB_CACHE_H
#define AL_GITLAB_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "runner/base/error.h"
#include "runner/sources/gitlab_job.h"

/* Longest key name; longer ones end in "~" and a hash of the key. */
#define GITLAB_CACHE_NAME_MAX 160

struct gitlab_cache_store;

struct gitlab_cache_stats {
    uint64_t bytes;     /* archives in the store after the last scan */
    uint64_t archives;  /* their number */
    uint64_t hits;      /* restores that found a key (or a fallback key) */
    uint64_t misses;    /* restores that found none */
    uint64_t saves;     /* archives written */
    uint64_t evictions; /* archives removed to stay within the cap */
};

/* A store in dir (created 0700 when missing) holding at most max_bytes. */
int gitlab_cache_store_new(const char *dir, uint64_t max_bytes, struct gitlab_cache_store **ret,
                           struct al_error **err);
/* Accepts NULL; returns NULL. */
struct gitlab_cache_store *gitlab_cache_store_free(struct gitlab_cache_store *s);
DEFINE_CLEANUP_FUNC(struct gitlab_cache_store, gitlab_cache_store_free)

void gitlab_cache_store_stats(struct gitlab_cache_store *s, struct gitlab_cache_stats *ret);

/* The file name (without ".zip") for a key: the key is cleaned as GitLab
 * Runner does (%2F and %2E decoded, '\' taken as '/', "." and ".." resolved
 * within the key, trailing white space of the last components dropped),
 * then every byte but [A-Za-z0-9_-] and non-leading '.' is written %XX; a
 * name over GITLAB_CACHE_NAME_MAX keeps its start and ends in "~" and the
 * SHA-256 of the cleaned key. -EINVAL when nothing is left of the key. */
int gitlab_cache_key_name(const char *key, char **ret_name, struct al_error **err);

/* Restores the first of keys[0..n) the store has for project into dest (a
 * new file) and refreshes its last use. *ret_index is the key found.
 * -ENOENT when the store has none of them (a miss); both are counted. */
int gitlab_cache_store_get(struct gitlab_cache_store *s, int64_t project, const char *const *keys,
                           size_t n_keys, const char *dest, size_t *ret_index,
                           struct al_error **err);

/* Saves the files under dir that c's paths match as the archive of key,
 * replacing the one before, then evicts. *ret_bytes is the archive's size,
 * 0 when nothing matched (then nothing is stored). -EFBIG when the archive
 * would exceed the cap. */
int gitlab_cache_store_put(struct gitlab_cache_store *s, int64_t project, const char *key,
                           const char *dir, const struct gitlab_cache_spec *c, uint64_t *ret_bytes,
                           struct al_error **err);

/* Removes the least recently used archives until the store is within its
 * cap, and temporary files older than an hour; refreshes the size in the
 * stats. *ret_evicted (may be NULL) is the number of archives removed. */
int gitlab_cache_store_evict(struct gitlab_cache_store *s, uint64_t *ret_evicted,
                             struct al_error **err);

#endif
