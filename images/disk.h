/* The disk and seal phases of an image build, with the libguestfs C API:
 * create a qcow2, make a labelled filesystem on the whole device, unpack
 * the rootfs tarball, seal it for cloning, and take out the kernel, the
 * initrd and the dpkg status. Blocking (about a minute under TCG); the
 * daemon runs it on a worker thread. */
#ifndef AL_IMAGES_DISK_H
#define AL_IMAGES_DISK_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "images/catalog.h"
#include "runner/base/error.h"

/* Shared with a canceller: `requested` is set and `pid` (the process doing
 * the work right now: mmdebstrap or the libguestfs appliance) is signalled.
 * Both fields are written with plain stores so a signal handler may do it;
 * see image_build_cancel_request(). */
struct image_cancel {
    volatile sig_atomic_t requested;
    volatile sig_atomic_t pid;      /* 0 = none */
    volatile sig_atomic_t pid_pgrp; /* signal the whole process group */
};

struct disk_seal {
    char *const *mask; /* units to mask (NULL-terminated, may be NULL) */
    const char *user;  /* job user (already created in the rootfs) */
    bool user_sudo;
    const char *hostname;
    const char *helper; /* host path of agentlab-guest */
    const char *unit;   /* host path of agentlab-guest.service */
};

struct disk_build_opts {
    const char *rootfs_tar;
    const char *disk;       /* qcow2 to create */
    uint64_t size;          /* virtual size */
    const char *filesystem; /* "ext4", ... */
    const char *label;
    bool force_tcg;
    /* an appliance that hangs under KVM is killed after a bound and the
     * build starts over under TCG (accel = auto) */
    bool tcg_fallback;
    struct disk_seal seal;
    const char *out_dir; /* receives vmlinuz, initrd.img and dpkg-status */
    /* called when the seal phase starts (the disk phase is the first) */
    void (*phase)(void *data, enum image_phase phase);
    void *phase_data;
    struct image_cancel *cancel; /* may be NULL */
};

struct disk_build_result {
    char *kernel_version;
    /* set when the appliance hung under KVM and the build went on under
     * TCG (tcg_fallback): why */
    char kvm_failure[256];
};

/* Runs the disk and seal phases. On success out_dir holds vmlinuz,
 * initrd.img (both 0644) and dpkg-status; *ret->kernel_version is owned by
 * the caller. -ECANCELED when cancelled. */
int disk_build(const struct disk_build_opts *o, struct disk_build_result *ret,
               struct al_error **err);

/* The text of the cloud-init drop-in the seal writes. */
extern const char disk_cloud_cfg[];

#endif
