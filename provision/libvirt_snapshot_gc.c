/* Garbage collection of memory snapshots (see libvirt_snapshot.c for what
 * a slot is). The rule:
 *
 * - A slot found stale when a job looks for one (lv_snapshot_choose():
 *   its manifest no longer matches the present image, QEMU, libvirt,
 *   accelerator, CPU model, agentlab or size) is removed at once, not kept
 *   until it is remade; it is remade as before, into an empty dir.
 * - Whenever the backend prepares an image's snapshots (lv_snapshot_prepare(),
 *   at daemon start and every 30 s for each pool with start = snapshot|auto)
 *   the image's whole snapshots/ dir is swept, every size in it: a slot goes
 *   when it is stale against the image's present identity (for the size
 *   its dir names), when its number is >= the backend's max_vms (never
 *   used), or when it has no readable manifest (a maker or copy that died
 *   mid-save). Then size dirs and snapshots/ itself go when empty.
 * - Valid snapshots of a size no pool uses now are kept: a job may ask for
 *   that size, and they are bounded (max_vms slots per size) and go once
 *   the image or QEMU changes. Images no snapshot pool uses are not swept.
 * - A slot a VM uses is never removed: one a job restores from (user), one
 *   being saved into (maker), one being copied into (cloning). Only names
 *   of our layout are touched (provision/snapshot_gc.h); unknown files stay.
 *
 * The removal runs on the thread pool like the saves and copies (a sweep
 * after a QEMU upgrade may free gigabytes: unlinking them is ms each on a
 * local file system, but not on every file system). Meanwhile the slot is
 * `removing`: it loads nothing, takes no maker and no copy; its struct
 * stays on lb->snap_slots so that no one makes a second one for its dir,
 * and is freed afterwards when it remembers nothing (no waiting maker, no
 * failures). Each removal is logged (info) and counted in
 * agentlab_snapshot_gc_slots_total and agentlab_snapshot_gc_bytes_total. */
#include "provision/libvirt_priv.h"

#include <unistd.h>

#include "provision/snapshot.h"
#include "provision/snapshot_gc.h"

struct gc_target {
    struct lv_snap_slot *s; /* loop side only */
    char *dir;
    int result;
};

struct gc_job {
    struct lv_backend *lb;
    char *root; /* <image dir>/snapshots */
    struct gc_target *t;
    size_t n;
    unsigned why[SNAPSHOT_GC_VERDICT_COUNT];
    uint64_t bytes;        /* worker -> loop */
    char first_error[200]; /* worker -> loop */
};

static void gc_job_free(struct gc_job *j)
{
    if (!j)
        return;
    for (size_t i = 0; i < j->n; i++)
        free(j->t[i].dir);
    free(j->t);
    free(j->root);
    free(j);
}

static struct gc_job *gc_job_new(struct lv_backend *lb, const char *root, size_t cap)
{
    struct gc_job *j = calloc(1, sizeof(*j));
    if (!j)
        return NULL;
    j->lb = lb;
    j->root = strdup(root);
    j->t = calloc(cap ? cap : 1, sizeof(*j->t));
    if (!j->root || !j->t) {
        gc_job_free(j);
        return NULL;
    }
    return j;
}

/* The slot goes: it forgets its manifest and loads none until removed. */
static void gc_job_add(struct gc_job *j, struct lv_snap_slot *s, enum snapshot_gc_verdict why)
{
    struct gc_target *t = &j->t[j->n];
    t->dir = strdup(s->dir);
    if (!t->dir)
        return;
    t->s = s;
    j->n++;
    j->why[why]++;
    s->removing = true;
    s->loaded = false;
    s->broken = false;
    snapshot_manifest_clear(&s->m);
}

static int gc_work(void *data, struct al_error **err)
{
    (void)err;
    struct gc_job *j = data;
    for (size_t i = 0; i < j->n; i++) {
        struct al_error *e = NULL;
        j->t[i].result = snapshot_gc_remove_slot(j->t[i].dir, &j->bytes, &e);
        if (e && !j->first_error[0])
            snprintf(j->first_error, sizeof(j->first_error), "%s", al_error_message(e));
        al_error_free(e);
    }
    return 0;
}

static bool under(const char *path, const char *dir)
{
    size_t n = strlen(dir);
    return strncmp(path, dir, n) == 0 && path[n] == '/';
}

/* Removes dir if it is empty and no slot under it is being written. */
static void prune_dir(struct lv_backend *lb, const char *dir)
{
    al_list_for_each(s, &lb->snap_slots, struct lv_snap_slot, link) {
        if (under(s->dir, dir) && (s->maker || s->cloning || s->removing))
            return;
    }
    rmdir(dir); /* ENOTEMPTY: a slot, or a file not ours */
}

static void gc_done(void *data, int result, struct al_error *err)
{
    (void)result;
    al_error_free(err);
    struct gc_job *j = data;
    struct lv_backend *lb = j->lb;
    size_t removed = 0;
    for (size_t i = 0; i < j->n; i++) {
        struct lv_snap_slot *s = j->t[i].s;
        s->removing = false;
        removed += j->t[i].result == 0;
        if (!s->user && !s->maker && !s->cloning && !s->wait_img && !s->failures)
            lv_snap_slot_free(s);
    }
    for (size_t i = 0; i < j->n; i++) {
        char *slash = strrchr(j->t[i].dir, '/');
        if (slash) {
            *slash = '\0';
            prune_dir(lb, j->t[i].dir);
        }
    }
    prune_dir(lb, j->root);
    snapshot_count_gc(removed, j->bytes);
    if (removed)
        log_info(NULL,
                 "backend %s: removed %zu snapshot slot(s) under %s, %" PRIu64
                 " MiB (%u stale, %u numbered >= max_vms, %u without a manifest)",
                 lb->b->name, removed, j->root, j->bytes >> 20, j->why[SNAPSHOT_GC_STALE],
                 j->why[SNAPSHOT_GC_BEYOND_MAX], j->why[SNAPSHOT_GC_NO_MANIFEST]);
    if (removed < j->n)
        log_warn(NULL, "backend %s: removing %zu snapshot slot(s) under %s failed: %s", lb->b->name,
                 j->n - removed, j->root, j->first_error);
    gc_job_free(j);
    lv_snapshot_vm_left(lb); /* a maker waiting for a removed slot may start */
    lb->clones_running--;
    lv_close_continue(lb);
}

static void gc_queue(struct gc_job *j)
{
    struct lv_backend *lb = j->lb;
    if (!j->n) {
        gc_job_free(j);
        return;
    }
    lb->clones_running++;
    if (al_work_queue(lb->b->env.loop, gc_work, gc_done, j, NULL) < 0) {
        /* kept: the next sweep tries again */
        for (size_t i = 0; i < j->n; i++)
            j->t[i].s->removing = false;
        lb->clones_running--;
        gc_job_free(j);
    }
}

/* <dir of the slot's size dir>, i.e. the slot dir two levels up. */
static char *root_of(const char *slot_dir)
{
    const char *end = slot_dir + strlen(slot_dir);
    for (int up = 0; up < 2 && end > slot_dir; up++) {
        while (end > slot_dir && end[-1] != '/')
            end--;
        if (end > slot_dir)
            end--;
    }
    return end > slot_dir ? strndup(slot_dir, (size_t)(end - slot_dir)) : NULL;
}

static bool in_use(const struct lv_snap_slot *s)
{
    return s->user || s->maker || s->cloning || s->removing;
}

void lv_snapshot_gc_slot(struct lv_backend *lb, struct lv_snap_slot *s)
{
    if (lb->closing || in_use(s))
        return;
    _cleanup_free_ char *root = root_of(s->dir);
    struct gc_job *j = root ? gc_job_new(lb, root, 1) : NULL;
    if (!j)
        return;
    gc_job_add(j, s, SNAPSHOT_GC_STALE);
    gc_queue(j);
}

void lv_snapshot_sweep(struct lv_backend *lb, const struct vm_image *img)
{
    if (lb->closing)
        return;
    _cleanup_free_ char *idir = lv_snap_image_dir(img);
    _cleanup_free_ char *root = idir ? al_path_join(idir, "snapshots") : NULL;
    struct snapshot_gc_entry *e = NULL;
    size_t n = 0;
    struct al_error *err = NULL;
    if (!root || snapshot_gc_list(root, &e, &n, &err) < 0) {
        al_error_free(err);
        return;
    }
    struct gc_job *j = n ? gc_job_new(lb, root, n) : NULL;
    struct snapshot_manifest want = {0};
    const char *want_dir = NULL; /* want is for this size dir */
    for (size_t i = 0; j && i < n; i++) {
        struct lv_snap_slot *s = lv_snap_slot_get(lb, e[i].dir);
        if (!s || in_use(s))
            continue;
        if (!want_dir || !streq(want_dir, e[i].size_dir)) {
            snapshot_manifest_clear(&want);
            want_dir = NULL;
            if (lv_snap_conditions(lb, img, e[i].cpus, e[i].memory, &want) < 0)
                continue;
            want_dir = e[i].size_dir;
        }
        char why[200];
        enum snapshot_gc_verdict v = snapshot_gc_judge(
                e[i].k, lb->max_vms, lv_snap_slot_load(s) ? &s->m : NULL, &want, why, sizeof(why));
        if (v != SNAPSHOT_GC_KEEP)
            gc_job_add(j, s, v);
    }
    snapshot_manifest_clear(&want);
    snapshot_gc_entries_free(e, n);
    if (j)
        gc_queue(j);
}
