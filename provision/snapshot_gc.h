/* The files of memory-snapshot garbage collection (the decisions about the
 * slots in use are provision/libvirt_snapshot_gc.c's): which directories
 * under an image's snapshots/ dir are ours, which of them are garbage, and
 * their removal. Only names of the layout
 *
 *     <root>/<cpus>c-<MiB>m/slot-<K>/    (root: <image dir>/snapshots)
 *
 * are listed; anything else under root or a size dir is never touched. A
 * slot dir is wholly ours (a maker wipes it before saving into it).
 *
 * No libvirt, no loop: unit-tested on prepared directories. */
#ifndef AL_SNAPSHOT_GC_H
#define AL_SNAPSHOT_GC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "provision/snapshot_manifest.h"
#include "runner/base/error.h"

/* at most this many slot dirs are listed per image and sweep */
#define SNAPSHOT_GC_MAX_SLOTS 1024u
/* slot numbers above this are not ours */
#define SNAPSHOT_GC_MAX_K 9999

struct snapshot_gc_entry {
    char *dir;      /* <root>/<cpus>c-<MiB>m/slot-<K> */
    char *size_dir; /* <root>/<cpus>c-<MiB>m */
    int cpus;
    uint64_t memory; /* bytes */
    int k;
};

/* "<cpus>c-<MiB>m" in canonical decimal (no sign, no leading zero). */
bool snapshot_gc_parse_size(const char *name, int *ret_cpus, uint64_t *ret_memory);
/* "slot-<K>", K in 0..SNAPSHOT_GC_MAX_K in canonical decimal. */
bool snapshot_gc_parse_slot(const char *name, int *ret_k);

/* Lists the slot dirs (real directories, not symlinks) of our layout under
 * root, at most SNAPSHOT_GC_MAX_SLOTS. A missing root lists none. Returns 0
 * with *ret (free with snapshot_gc_entries_free()) and *ret_n, or a
 * negative errno with err. */
int snapshot_gc_list(const char *root, struct snapshot_gc_entry **ret, size_t *ret_n,
                     struct al_error **err);
void snapshot_gc_entries_free(struct snapshot_gc_entry *e, size_t n);

enum snapshot_gc_verdict {
    SNAPSHOT_GC_KEEP = 0,
    SNAPSHOT_GC_STALE,       /* its manifest does not match the present conditions */
    SNAPSHOT_GC_BEYOND_MAX,  /* slot K >= max_vms: never used */
    SNAPSHOT_GC_NO_MANIFEST, /* none, or unreadable: a save or copy that died */
    SNAPSHOT_GC_VERDICT_COUNT,
};

/* "keep", "stale", "beyond_max_vms", "no_manifest". */
const char *snapshot_gc_verdict_name(enum snapshot_gc_verdict v);

/* Whether slot k, which no VM uses, goes: have is its manifest (NULL when
 * it has none or it does not parse), want the present conditions for the
 * slot's size (the size is part of the comparison: a manifest that names
 * another size than its dir is stale). why gets the stale reason. */
enum snapshot_gc_verdict snapshot_gc_judge(int k, int max_vms, const struct snapshot_manifest *have,
                                           const struct snapshot_manifest *want, char *why,
                                           size_t size);

/* Removes a slot dir: its manifest first (a slot a crash left half removed
 * is never restored, and the next sweep collects it), then the rest. Adds
 * the bytes freed (blocks of files not linked elsewhere: the base a copy
 * shares counts with its last slot) to *bytes. A missing dir is no error.
 * Blocking: for a worker thread. Returns 0 or a negative errno with err. */
int snapshot_gc_remove_slot(const char *dir, uint64_t *bytes, struct al_error **err);

#endif
