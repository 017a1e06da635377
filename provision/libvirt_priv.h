/* What the files of the libvirt backend share (libvirt_backend.c: ops,
 * connection and capacity; libvirt_channel.c: the guest channel, boot
 * watchdog and heartbeat; libvirt_provision.c: overlay, seed, domain and
 * batched injection; libvirt_remote.c: the remote transport's seed volume
 * and streams; libvirt_teardown.c: destroy and owned leftovers;
 * libvirt_hostinfo.c: what `agentlab host ls` shows).
 * Private to those files. */
#ifndef AL_LIBVIRT_PRIV_H
#define AL_LIBVIRT_PRIV_H

#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <libvirt/libvirt.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <libvirt/virterror.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "provision/accel.h"
#include "provision/backend.h"
#include "provision/channel.h"
#include "provision/cloudinit.h"
#include "provision/domain_xml.h"
#include "provision/guest_job.h"
#include "provision/guestfs_inject.h"
#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/base/xml.h"
#include "runner/base/hardlimits.h"
#include "runner/base/list.h"
#include "runner/loop/work.h"
#include "provision/seed_iso.h"
#include "provision/snapshot_manifest.h"

#define CONNECT_TIMEOUT_MS 15000
/* a lost connection is retried this often */
#define RECONNECT_MS 2000
/* a job whose image is being uploaded for another job looks again after */
#define IMAGES_WAIT_MS 250
/* the parent of a remote host's storage pool directory (libvirt's own) */
#define REMOTE_POOL_ROOT   "/var/lib/libvirt/images"
#define CONSOLE_TAIL_BYTES 1500
/* inject = guestfs: overlays ready within this window share one libguestfs
 * appliance (its launch is seconds, the window a rounding error) */
#define INJECT_WINDOW_MS 200
#define INJECT_BATCH_MAX 16

struct lv_vm;
struct lv_image_hold;
struct lv_snap_slot;
struct lv_console;

struct lv_backend {
    struct backend *b;
    virConnectPtr conn;
    int lifecycle_id;
    /* transport = remote (or auto on a remote connection): the channel and
     * console are libvirt streams, the seed a volume in the pool */
    bool remote;
    struct accel_result accel;
    /* accel describes another machine (a network URI): decided from that
     * host's libvirt, never from this machine's probe or its cache file */
    bool host_accel;
    /* a network URI is connected first in the background, like a
     * reconnect (a host that drops packets would hold the loop for the TCP
     * connect timeout): until it answers, its accelerator, size and pool
     * are not known and the backend is unhealthy ("connecting") */
    bool host_unknown;
    bool host_unknown_said; /* its first failure was logged */
    char *pool_name;
    char *pool_dir;
    char *vms_dir; /* <run_dir>/vms */
    int max_vms;
    int vcpus;
    uint64_t memory;
    char *gateway;       /* the network's IPv4 host address, for the egress filter */
    char **gateway6;     /* its IPv6 host addresses (NULL-terminated), dropped */
    struct al_list vms;  /* of lv_vm.link, newest first */
    bool conn_dead;      /* libvirtd closed the connection */
    uint64_t last_retry; /* ms, of the last reconnect attempt */
    char conn_error[160];
    char health[160];
    /* retries the connection while it is down; heap: closes after lb */
    uv_timer_t *reconnect_timer;
    /* the connection was lost; the reconnect sweeps what the host kept of
     * our VMs (teardowns meanwhile fail), and that sweep is running */
    bool host_lost;
    bool finish_lost;  /* its VMs are yet to be ended (reconnect timer) */
    bool reconnecting; /* a virConnectOpen() runs on the thread pool */
    bool host_sweep_running;
    /* remote transport: the image files' checksums (libvirt_images.c),
     * and one upload at a time into the pool; both under img_lock */
    pthread_mutex_t img_lock;
    struct lv_file_sum *sums;
    size_t n_sums;
    /* a sweep kept old image volumes a domain used: sweep again once a VM
     * of ours ended (set and cleared on workers, hence atomic) */
    atomic_bool sweep_pending;
    /* the image volumes VMs of ours boot from (libvirt_images.c's lock) */
    struct lv_image_hold *holds;
    size_t n_holds;
    /* inject = guestfs: overlays waiting for the next shared appliance */
    struct al_list inject_queue; /* of lv_vm.inject_link, FIFO */
    uv_timer_t *inject_timer;    /* the coalescing window; heap: closes after lb */
    bool inject_running;         /* one batch at a time */
    /* memory snapshots (libvirt_snapshot.c) */
    struct al_list snap_slots;    /* of lv_snap_slot.link */
    uv_timer_t *snap_timer;       /* starts waiting makers; heap: closes after lb */
    struct lv_hostinfo *hostinfo; /* libvirt_hostinfo.c's cache, or NULL */
    uint64_t qemu_version;
    uint64_t libvirt_version;
    char *cpu_model;
    /* close() waits for the snapshot makers' teardown */
    bool closing;
    unsigned clones_running; /* snapshot copies and removals on the thread pool */
    void (*close_done)(void *data);
    void *close_data;
};

struct lv_vm {
    struct vm base;
    struct lv_backend *lb;
    struct al_list link;   /* on lb->vms */
    struct vm_request req; /* the strings belong to the caller */
    int inject;
    struct vm_image *image; /* our copy of the request's */
    char *run_dir;
    char *channel_path;
    char *seed_path;
    char *console_log; /* on this host: virtlogd's, or copied from the console stream */
    char *vol_name;
    char *vol_path;
    /* remote transport */
    char *seed_vol_name;
    char *seed_vol_path; /* the uploaded seed's path on the host */
    /* the image's volumes on the host: the overlay's backing file and
     * the direct boot's kernel and initrd (NULL: the image's local files) */
    char *host_disk;
    char *host_kernel;
    char *host_initrd;
    bool images_busy;         /* the worker found another job's upload running */
    bool images_wait;         /* ... and hb_timer queues it again */
    bool images_told;         /* ... which the job's log says once */
    virStreamPtr chan_stream; /* opened by the start worker, until the channel takes it */
    virStreamPtr con_stream;  /* ... until the console copier takes it */
    struct lv_console *console;
    char *meta_data;
    char *user_data;
    char *domain_xml;
    struct al_tlv_buf job;
    virDomainPtr dom;
    struct channel *ch;
    uv_timer_t hb_timer;
    bool hb_timer_open;
    uint64_t t0;
    uint64_t last_frame_ms;
    struct vm_result result;
    char *cmdline;
    enum accel_kind accel; /* what the domain is started under */
    uint64_t t_started;    /* ms (monotonic) the domain started, 0 before */
    bool alive;            /* the kernel wrote to the console */
    bool hello;
    bool assigned; /* a warm VM got its job */
    bool finished;
    bool worker_busy;
    bool injected;              /* inject = guestfs: the seed is in the overlay */
    struct al_list inject_link; /* on lb->inject_queue */
    /* memory snapshots: the slot this VM restores from or is saved into */
    struct lv_snap_slot *snap;
    bool snap_maker;     /* boots to be saved into snap */
    bool snap_saving;    /* being saved: its stop is no failure */
    bool restore;        /* restores from snap instead of booting */
    bool restored;       /* ... and did */
    char *restore_state; /* the slot's state file */
    char *snap_fallback; /* why it boots though it asked for a snapshot */
    int snap_fb;         /* enum snapshot_fallback to count, -1 = none */
    bool destroying;
    backend_done_cb destroy_done;
    void *destroy_data;
};

static inline const char *lv_libvirt_msg(void)
{
    const char *m = virGetLastErrorMessage();
    return m && *m ? m : "unknown libvirt error";
}

/* Milliseconds since the VM's launch, never 0. */
static inline uint64_t lv_since_ms(const struct lv_vm *v)
{
    uint64_t t = al_now_mono_ms() - v->t0;
    return t ? t : 1;
}

/* libvirt_backend.c */
/* The backend's launch(); snap_maker: the VM boots to be saved as a
 * memory snapshot (its kernel zeroes freed pages, so the state is small). */
int lv_launch_vm(struct backend *b, const struct vm_request *req, const struct vm_events *ev,
                 void *ev_data, bool snap_maker, struct vm **ret_vm, struct al_error **err);
struct lv_vm *lv_find_vm(struct lv_backend *lb, const char *name);
/* The last CONSOLE_TAIL_BYTES of the console log, or NULL. */
char *lv_console_tail(const struct lv_vm *v);
void lv_note_limit(struct lv_vm *v, enum al_limit l);
void lv_note_throttling(struct lv_vm *v);
/* Reports the VM's result once (ev->finished). */
void lv_finish(struct lv_vm *v, enum vm_outcome outcome, int exit_code, const char *fmt, ...)
        _printf_(4, 5);
void lv_phase(struct lv_vm *v, enum vm_phase p);
/* True when the connection is up; when down, starts reconnecting in the
 * background (at most every RECONNECT_MS) and returns false. */
bool lv_ensure_conn(struct lv_backend *lb);
/* A close waiting for VMs of the backend's own: finishes it once none is
 * left. */
void lv_close_continue(struct lv_backend *lb);

/* libvirt_channel.c */
extern const struct channel_ops lv_channel_ops;
void lv_deliver(struct lv_vm *v, bool has_job);
void lv_kvm_unusable(struct lv_vm *v, const char *reason);
enum accel_kind lv_accel_now(struct lv_backend *lb);
void lv_on_heartbeat_check(uv_timer_t *t);

/* libvirt_provision.c */
int lv_ensure_pool(struct lv_backend *lb, struct al_error **err);
int lv_provision_work(void *data, struct al_error **err);
void lv_on_provisioned(void *data, int result, struct al_error *err);
void lv_on_inject_timer_closed(uv_handle_t *h);
/* Worker: replaces a restore's overlay by a fresh one on the image and
 * builds the boot XML (a restore that failed). */
int lv_boot_instead(struct lv_vm *v, struct al_error **err);

/* libvirt_remote.c */
/* Worker: uploads the seed ISO written at v->seed_path as the volume
 * v->seed_vol_name of the backend's pool and sets v->seed_vol_path. A
 * failed upload leaves no volume. */
int lv_seed_upload(struct lv_vm *v, struct al_error **err);
/* Worker, after the domain started: opens its console and channel as
 * non-blocking streams (v->con_stream, v->chan_stream). */
int lv_open_streams(struct lv_vm *v, struct al_error **err);
/* Loop: copies the console stream (taken from v->con_stream) into
 * v->console_log, which the boot watchdog and the console tail read. */
int lv_console_start(struct lv_vm *v, struct al_error **err);
/* Loop: stops copying and releases every stream v still holds. */
void lv_streams_stop(struct lv_vm *v);

/* libvirt_images.c */
/* Worker, remote transport: makes sure the host's pool holds v's image
 * (disk, kernel, initrd) as volumes, uploading what is missing or changed
 * (by sha256, computed here once per file version), and sets v->host_disk,
 * v->host_kernel and v->host_initrd to their paths on the host. Uploads
 * into one pool run one at a time: while another runs, returns 0 at once
 * with v->images_busy set, and the caller tries again later. */
int lv_images_ensure(struct lv_vm *v, struct al_error **err);
/* Worker, remote transport, after a VM of lb ended (its domain and
 * overlay gone): when an earlier sweep kept old image volumes a domain
 * used, sweeps again through conn, unless an upload holds the pool (the
 * flag then stays for the next VM's end). Logs, never fails. */
void lv_images_sweep_pending(struct lv_backend *lb, virConnectPtr conn, const char *job_id);
/* Any thread: v no longer boots from the image volumes its ensure handed
 * it (teardown: its domain is gone). */
void lv_images_release(struct lv_backend *lb, const struct lv_vm *v);
/* Frees the checksum cache and the holds (backend close). */
void lv_images_free(struct lv_backend *lb);
/* Loop: the connection came back after it was lost:
 * destroys the domains of ours the host kept and deletes their overlay and
 * seed volumes (VMs of no live attempt of this backend). */
void lv_host_sweep(struct lv_backend *lb);

/* libvirt_snapshot.c */
/* Reads what snapshots depend on from the connection (QEMU and libvirt
 * versions, host CPU model). Loop thread, at open. */
void lv_snapshot_probe(struct lv_backend *lb);
/* At launch of a job VM whose request asks for snapshots: takes a free valid
 * slot (then v->restore, and v's domain name is the slot's) or records why
 * not as a fallback, and starts making missing slots in the background. */
void lv_snapshot_choose(struct lv_vm *v);
/* Worker: restores v from its slot (overlay already created on the slot's
 * base); on failure falls back to booting a fresh overlay on the image. */
int lv_snapshot_restore_work(struct lv_vm *v, struct al_error **err);
/* Loop: the channel of a restored VM is open: freshen the guest, deliver. */
void lv_snapshot_restored(struct lv_vm *v);
/* Loop, once the VM runs: counts and tells the job why it booted instead
 * of restoring, if it asked for a snapshot and did. */
void lv_snapshot_fallen_back(struct lv_vm *v);
/* Loop: the guest of a snapshot maker answered SYNC. */
void lv_snapshot_synced(struct lv_vm *v);
/* The slot's frozen base disk. */
const char *lv_snapshot_base(const struct lv_snap_slot *s);
/* The domain name the slot's saved state carries. */
const char *lv_snapshot_domain(const struct lv_snap_slot *s);
/* The VM no longer holds its slot (teardown finished). */
void lv_snapshot_release(struct lv_vm *v);
/* Destroys the VMs being made into snapshots (backend close); each one's
 * end calls lv_close_continue(). */
void lv_snapshot_stop_makers(struct lv_backend *lb);
void lv_snapshot_prepare(struct lv_backend *lb, const struct vm_request *req);
/* A VM left lb->vms: a snapshot waiting for a free VM slot may start. */
void lv_snapshot_vm_left(struct lv_backend *lb);
/* Frees the slot list (backend close). */
void lv_snapshot_free_all(struct lv_backend *lb);
/* A name the guest gets as its host name. */
char *lv_make_hostname(const char *job_id);

/* One slot of a snapshot, known from disk or being made (libvirt_snapshot.c;
 * libvirt_snapshot_gc.c removes them). */
struct lv_snap_slot {
    struct al_list link; /* on lb->snap_slots */
    char *dir;
    char *state;
    char *base;
    char *manifest_path;
    struct snapshot_manifest m;
    bool loaded;         /* m is the manifest on disk */
    bool broken;         /* a restore from it failed: remade before use */
    struct lv_vm *user;  /* the job VM restored from it */
    struct lv_vm *maker; /* the VM being saved into it */
    bool cloning;        /* being copied from another slot */
    bool removing;       /* being removed (garbage): neither loaded nor made meanwhile */
    uint64_t failed_ms;  /* when making it last failed (monotonic), 0 = never */
    unsigned failures;   /* in a row */
    /* to be made once a VM slot is free (see maker_want()) */
    struct vm_image *wait_img;
    int wait_cpus;
    uint64_t wait_memory;
};

/* The slot of this dir from lb->snap_slots, added when new; NULL on ENOMEM. */
struct lv_snap_slot *lv_snap_slot_get(struct lv_backend *lb, const char *dir);
/* Reads the slot's manifest unless loaded; false when there is none, it is
 * unreadable, or the slot is being removed. */
bool lv_snap_slot_load(struct lv_snap_slot *s);
/* Unlinks and frees a slot; its VMs forget it. */
void lv_snap_slot_free(struct lv_snap_slot *s);
/* The present conditions for a VM of this image and size into *ret (the
 * caller clears it). Returns 0 or -ENOMEM. */
int lv_snap_conditions(struct lv_backend *lb, const struct vm_image *img, int cpus, uint64_t memory,
                       struct snapshot_manifest *ret);
/* The directory that holds the image's files, a new string or NULL. */
char *lv_snap_image_dir(const struct vm_image *img);

/* libvirt_snapshot_gc.c: garbage collection of snapshot slots */
/* Slot s (no VM uses it) was found stale: removes it on the thread pool. The slot stays in the
 * list, loading nothing until it is gone. */
void lv_snapshot_gc_slot(struct lv_backend *lb, struct lv_snap_slot *s);
/* Sweeps the image's snapshots/ dir: removes the slots no VM uses that are
 * stale, numbered >= max_vms, or without a manifest. */
void lv_snapshot_sweep(struct lv_backend *lb, const struct vm_image *img);

/* libvirt_hostinfo.c */
void lv_host_info(struct backend *b, struct backend_host_info *ret);
/* The backend closes: drops its hold on the cache (a read in flight keeps
 * it until it ends). */
void lv_hostinfo_release(struct lv_backend *lb);

/* libvirt_teardown.c */
void lv_destroy_continue(struct lv_vm *v);
void lv_on_hb_timer_closed(uv_handle_t *h);
int lv_list_owned(struct backend *b, backend_list_cb cb, void *data);
int lv_destroy_owned(struct backend *b, const char *name, backend_done_cb done, void *data);

#endif
